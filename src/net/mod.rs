//! Transport only: a byte stream that is plain TCP or TLS (either side), TLS configuration for
//! the client side (we are the server) and the server side (we are the client), and a cheap
//! liveness probe for idle connections. Knows nothing of the PostgreSQL protocol.

pub mod stream;
pub mod tls;

pub use stream::{is_idle_and_open, Stream};
