//! Authentication primitives, pure and I/O-free: SCRAM-SHA-256 (server side, client side with a
//! password or pass-through keys) and MD5, exactly as PostgreSQL computes them. The session and
//! server modules drive the exchanges over their connections.

pub mod md5;
pub mod scram;
