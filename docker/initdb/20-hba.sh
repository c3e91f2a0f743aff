#!/bin/sh
# Let the replica stream from the compose network.
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
