//! Temporary stand-in (replaced by the real classifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Primary,
    Replica,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnControl {
    Begin { read_only: bool, serializable: bool, deferrable: bool },
    Commit,
    Rollback,
    Savepoint,
    Other,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub route: Route,
    pub txn: Option<TxnControl>,
}
pub struct ClassifyCache;
impl ClassifyCache {
    pub fn new(_c: usize) -> Self {
        ClassifyCache
    }
    pub fn classify(&mut self, _sql: &str, _w: &[String]) -> Classification {
        Classification { route: Route::Primary, txn: None }
    }
}
