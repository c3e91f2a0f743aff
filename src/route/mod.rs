//! Pure classification of SQL text: a tokenizer (`lexer`) and what a statement does to session
//! state (`session_sql`). No I/O, no pools, no caches; later layers add the read/write split,
//! cache and shard decisions here.

pub mod cache;
pub mod classify;
pub mod lexer;
pub mod session_sql;
pub mod skeleton;
