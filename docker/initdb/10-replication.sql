-- A replication role for the compose replica.
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD 'replicator';
