//! Session state a client builds on its server, tracked from the statements that complete:
//! settings (kept and replayed on whatever server the client gets next, with transaction and
//! savepoint semantics: a SET rolled back is forgotten) and the state that cannot be replayed,
//! which pins the client to its server until it ends (temp tables, LISTEN, session advisory
//! locks, WITH HOLD cursors, SQL-level PREPARE, LOAD, currval/lastval, SET ROLE, settings the
//! proxy cannot read). Pure bookkeeping: the caller runs nothing here.

use std::collections::{HashMap, HashSet};

use super::params::{is_reported, record_applied, ClientParams, Value};
use super::stmts::ClientStatements;
use crate::route::session_sql::Effect;
use crate::server::prepared::PreparedCache;

/// Why a client is pinned, counted per reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pins {
    temp: HashSet<String>,
    listen: HashSet<String>,
    advisory: u32,
    cursors: HashSet<String>,
    sql_prepared: HashSet<String>,
    load: bool,
    sequence: bool,
    role: bool,
    unreplayable: bool,
}

impl Pins {
    pub fn any(&self) -> bool {
        !self.temp.is_empty()
            || !self.listen.is_empty()
            || self.advisory > 0
            || !self.cursors.is_empty()
            || !self.sql_prepared.is_empty()
            || self.load
            || self.sequence
            || self.role
            || self.unreplayable
    }

    /// The reasons in force, for logs and metrics.
    pub fn reasons(&self) -> Vec<&'static str> {
        let mut r = Vec::new();
        let flags = [
            (!self.temp.is_empty(), "temp_table"),
            (!self.listen.is_empty(), "listen"),
            (self.advisory > 0, "advisory_lock"),
            (!self.cursors.is_empty(), "hold_cursor"),
            (!self.sql_prepared.is_empty(), "sql_prepare"),
            (self.load, "load"),
            (self.sequence, "sequence"),
            (self.role, "role"),
            (self.unreplayable, "unreplayable_setting"),
        ];
        for (on, name) in flags {
            if on {
                r.push(name);
            }
        }
        r
    }

    /// State that outlives even DISCARD ALL: the server must be closed, not pooled.
    pub fn poisons_server(&self) -> bool {
        self.load
    }
}

/// What an effect would pin, if anything (to enforce the cap before running it).
pub fn pins_for(effect: &Effect) -> Option<&'static str> {
    Some(match effect {
        Effect::CreateTemp { on_commit_drop: false, .. } => "temp_table",
        Effect::Listen { .. } => "listen",
        Effect::AdvisoryLock => "advisory_lock",
        Effect::DeclareHold { .. } => "hold_cursor",
        Effect::SqlPrepare { .. } => "sql_prepare",
        Effect::Load => "load",
        Effect::SequenceState => "sequence",
        Effect::SetRole => "role",
        Effect::Unreplayable => "unreplayable_setting",
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Set(String, Value),
    Reset(String),
    ResetAll,
    Savepoint(String),
}

/// The server-side records a completed statement may change.
pub struct ServerSide<'a> {
    pub applied: &'a mut HashMap<String, String>,
    pub prepared: &'a mut PreparedCache,
}

#[derive(Debug, Default)]
pub struct SessionState {
    in_block: bool,
    pending: Vec<Pending>,
    pub pins: Pins,
    /// Pins as they were when the block began: a rollback undoes temp tables, LISTEN, WITH
    /// HOLD cursors and SET ROLE made inside it (advisory locks and SQL PREPARE survive it).
    pins_at_begin: Option<Pins>,
}

impl SessionState {
    /// A statement with `effects` completed with CommandComplete `tag`.
    pub fn completed(
        &mut self,
        effects: &[Effect],
        tag: &str,
        params: &mut ClientParams,
        stmts: &mut ClientStatements,
        server: &mut ServerSide<'_>,
    ) {
        for e in effects {
            self.apply(e, tag, params, stmts, server);
        }
    }

    fn apply(
        &mut self,
        e: &Effect,
        tag: &str,
        params: &mut ClientParams,
        stmts: &mut ClientStatements,
        server: &mut ServerSide<'_>,
    ) {
        let pins = &mut self.pins;
        match e {
            // Reported parameters follow the server's ParameterStatus (which PostgreSQL also
            // sends when a rollback reverts them).
            Effect::Set { name, .. } | Effect::SetConfig { name, .. } | Effect::Reset { name } if is_reported(name) => {
            }
            Effect::Set { name, value } => {
                self.setting(Pending::Set(name.clone(), Value::Sql(value.clone())), params, server)
            }
            Effect::SetConfig { name, value } => {
                self.setting(Pending::Set(name.clone(), Value::Config(value.clone())), params, server)
            }
            Effect::Reset { name } => self.setting(Pending::Reset(name.clone()), params, server),
            Effect::ResetAll => {
                pins.unreplayable = false;
                self.setting(Pending::ResetAll, params, server);
            }
            Effect::SetRole => pins.role = true,
            Effect::ResetRole => pins.role = false,
            Effect::DiscardAll => {
                let load = pins.load;
                *pins = Pins { load, ..Pins::default() };
                stmts.clear();
                server.prepared.clear();
                server.applied.clear();
                params.reset_all();
                self.pending.clear();
                self.in_block = false;
            }
            Effect::DiscardTemp => pins.temp.clear(),
            Effect::SqlPrepare { name } => {
                pins.sql_prepared.insert(name.clone());
            }
            Effect::SqlDeallocate { name } => {
                pins.sql_prepared.remove(name);
            }
            Effect::SqlDeallocateAll => {
                // Protocol-level statements share the namespace: all of them are gone too.
                pins.sql_prepared.clear();
                stmts.clear();
                server.prepared.clear();
            }
            Effect::Listen { channel } => {
                pins.listen.insert(channel.clone());
            }
            Effect::Unlisten { channel } => {
                pins.listen.remove(channel);
            }
            Effect::UnlistenAll => pins.listen.clear(),
            Effect::CreateTemp { name, on_commit_drop } => {
                if !on_commit_drop {
                    pins.temp.insert(name.clone());
                }
            }
            Effect::Drop { names } => {
                for n in names {
                    pins.temp.remove(n);
                }
            }
            Effect::DeclareHold { name } => {
                pins.cursors.insert(name.clone());
            }
            Effect::CloseCursor { name } => {
                pins.cursors.remove(name);
            }
            Effect::CloseAllCursors => pins.cursors.clear(),
            Effect::Load => pins.load = true,
            // A call may take one lock per row, or none (pg_try_*): only unlock_all (or DISCARD
            // ALL) is known to release them all.
            Effect::AdvisoryLock => pins.advisory += 1,
            Effect::AdvisoryUnlock => {}
            Effect::AdvisoryUnlockAll => pins.advisory = 0,
            Effect::SequenceState => pins.sequence = true,
            Effect::Unreplayable => pins.unreplayable = true,
            Effect::Begin => {
                self.in_block = true;
                self.pending.clear();
                self.pins_at_begin = Some(self.pins.clone());
            }
            Effect::Commit => {
                // COMMIT of a failed transaction completes with the tag ROLLBACK.
                if tag.starts_with("COMMIT") {
                    for p in std::mem::take(&mut self.pending) {
                        apply_setting(p, params, server.applied);
                    }
                    self.pins_at_begin = None;
                }
                self.end_block();
            }
            Effect::Rollback => self.end_block(),
            Effect::Savepoint { name } => {
                if self.in_block {
                    self.pending.push(Pending::Savepoint(name.clone()));
                }
            }
            Effect::RollbackTo { name } => {
                if let Some(at) = self.pending.iter().rposition(|p| *p == Pending::Savepoint(name.clone())) {
                    self.pending.truncate(at + 1);
                }
            }
            Effect::Release { name } => {
                if let Some(at) = self.pending.iter().rposition(|p| *p == Pending::Savepoint(name.clone())) {
                    let later: Vec<Pending> =
                        self.pending.drain(at..).filter(|p| !matches!(p, Pending::Savepoint(_))).collect();
                    self.pending.extend(later);
                }
            }
        }
    }

    fn setting(&mut self, p: Pending, params: &mut ClientParams, server: &mut ServerSide<'_>) {
        if self.in_block {
            // Until the block's outcome is known the server's value is unknown: a sync will
            // SET or RESET these names whatever happens.
            match &p {
                Pending::Set(name, _) | Pending::Reset(name) => {
                    server.applied.insert(name.to_ascii_lowercase(), UNKNOWN.to_string());
                }
                Pending::ResetAll => {
                    for v in server.applied.values_mut() {
                        *v = UNKNOWN.to_string();
                    }
                }
                Pending::Savepoint(_) => {}
            }
            self.pending.push(p);
        } else {
            apply_setting(p, params, server.applied);
        }
    }

    /// ReadyForQuery arrived. Idle while a block was open means it ended without a COMMIT we
    /// saw succeed: its settings are forgotten, as PostgreSQL forgot them.
    pub fn ready(&mut self, status: u8) {
        if status == b'I' && self.in_block {
            self.end_block();
        }
    }

    /// The block is over; unless it committed (`pins_at_begin` taken), undo what a rollback
    /// undoes.
    fn end_block(&mut self) {
        if let Some(before) = self.pins_at_begin.take() {
            self.pins.temp = before.temp;
            self.pins.listen = before.listen;
            self.pins.cursors = before.cursors;
            self.pins.role = before.role;
            self.pins.unreplayable = before.unreplayable;
        }
        self.pending.clear();
        self.in_block = false;
    }
}

/// An `applied` value that matches nothing: the server's setting is not known.
const UNKNOWN: &str = "?";

/// A setting change took effect on the server (and for the client).
fn apply_setting(p: Pending, params: &mut ClientParams, applied: &mut HashMap<String, String>) {
    match p {
        Pending::Set(name, v) => {
            record_applied(applied, &name, &v);
            params.set(&name, v);
        }
        Pending::Reset(name) => {
            applied.remove(&name.to_ascii_lowercase());
            params.reset(&name);
        }
        Pending::ResetAll => {
            applied.clear();
            params.reset_all();
        }
        Pending::Savepoint(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::session_sql::effects;

    struct Fixture {
        st: SessionState,
        params: ClientParams,
        stmts: ClientStatements,
        applied: HashMap<String, String>,
        prepared: PreparedCache,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                st: SessionState::default(),
                params: ClientParams::new(None, &[]),
                stmts: ClientStatements::new(10, 1 << 20),
                applied: HashMap::new(),
                prepared: PreparedCache::new(10),
            }
        }

        fn run(&mut self, sql: &str, tag: &str) {
            let fx = effects(sql);
            let mut side = ServerSide { applied: &mut self.applied, prepared: &mut self.prepared };
            self.st.completed(&fx, tag, &mut self.params, &mut self.stmts, &mut side);
        }
    }

    #[test]
    fn set_outside_a_block_sticks() {
        let mut f = Fixture::new();
        f.run("SET search_path = s1", "SET");
        assert_eq!(f.params.get("search_path"), Some("s1"));
        assert_eq!(f.applied.get("search_path").map(String::as_str), Some("s:s1"));
    }

    #[test]
    fn rolled_back_set_is_forgotten_and_committed_one_kept() {
        let mut f = Fixture::new();
        f.run("BEGIN", "BEGIN");
        f.run("SET search_path = s1", "SET");
        f.run("ROLLBACK", "ROLLBACK");
        assert_eq!(f.params.get("search_path"), None);
        f.run("BEGIN", "BEGIN");
        f.run("SET search_path = s2", "SET");
        f.run("COMMIT", "COMMIT");
        assert_eq!(f.params.get("search_path"), Some("s2"));
        // COMMIT of a failed transaction reports ROLLBACK.
        f.run("BEGIN", "BEGIN");
        f.run("SET search_path = s3", "SET");
        f.run("COMMIT", "ROLLBACK");
        assert_eq!(f.params.get("search_path"), Some("s2"));
    }

    #[test]
    fn a_rolled_back_change_leaves_the_server_value_unknown() {
        let mut f = Fixture::new();
        f.run("SET app.tenant = '7'", "SET");
        f.run("BEGIN", "BEGIN");
        f.run("RESET app.tenant", "RESET");
        f.run("ROLLBACK", "ROLLBACK");
        // The server still has 7: the next sync must not trust a missing entry.
        assert_eq!(f.applied.get("app.tenant").map(String::as_str), Some("?"));
        assert_eq!(f.params.get("app.tenant"), Some("'7'"));
    }

    #[test]
    fn savepoints() {
        let mut f = Fixture::new();
        f.run("BEGIN", "BEGIN");
        f.run("SET app.a = '1'", "SET");
        f.run("SAVEPOINT sp", "SAVEPOINT");
        f.run("SET app.b = '2'", "SET");
        f.run("ROLLBACK TO SAVEPOINT sp", "ROLLBACK");
        f.run("SAVEPOINT sp2", "SAVEPOINT");
        f.run("SET app.c = '3'", "SET");
        f.run("RELEASE sp2", "RELEASE");
        f.run("COMMIT", "COMMIT");
        assert_eq!(f.params.get("app.a"), Some("'1'"));
        assert_eq!(f.params.get("app.b"), None);
        assert_eq!(f.params.get("app.c"), Some("'3'"));
    }

    #[test]
    fn pins_come_and_go() {
        let mut f = Fixture::new();
        f.run("CREATE TEMP TABLE t(x int)", "CREATE TABLE");
        assert_eq!(f.st.pins.reasons(), vec!["temp_table"]);
        f.run("DROP TABLE t", "DROP TABLE");
        assert!(!f.st.pins.any());
        f.run("LISTEN ch", "LISTEN");
        f.run("SELECT pg_advisory_lock(1)", "SELECT 1");
        assert_eq!(f.st.pins.reasons(), vec!["listen", "advisory_lock"]);
        f.run("UNLISTEN *", "UNLISTEN");
        f.run("SELECT pg_advisory_unlock(1)", "SELECT 1");
        assert!(f.st.pins.any(), "one unlock may not release every lock taken");
        f.run("SELECT pg_advisory_unlock_all()", "SELECT 1");
        assert!(!f.st.pins.any());
        f.run("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DECLARE CURSOR");
        f.run("SET ROLE app", "SET");
        f.run("SET search_path = x", "SET");
        assert!(f.st.pins.any());
        f.run("DISCARD ALL", "DISCARD ALL");
        assert!(!f.st.pins.any());
        assert_eq!(f.params.get("search_path"), None);
        assert!(f.applied.is_empty());
    }

    #[test]
    fn rollback_undoes_transactional_pins_only() {
        let mut f = Fixture::new();
        f.run("BEGIN", "BEGIN");
        f.run("CREATE TEMP TABLE t(x int)", "CREATE TABLE");
        f.run("LISTEN ch", "LISTEN");
        assert!(f.st.pins.any());
        f.run("ROLLBACK", "ROLLBACK");
        assert!(!f.st.pins.any());
        f.run("BEGIN", "BEGIN");
        f.run("SELECT pg_advisory_lock(5)", "SELECT 1");
        f.run("ROLLBACK", "ROLLBACK");
        assert_eq!(f.st.pins.reasons(), vec!["advisory_lock"], "session locks survive a rollback");
        f.run("BEGIN", "BEGIN");
        f.run("CREATE TEMP TABLE t2(x int)", "CREATE TABLE");
        f.run("COMMIT", "COMMIT");
        assert!(f.st.pins.reasons().contains(&"temp_table"));
    }

    #[test]
    fn reset_all_does_not_unpin_state() {
        let mut f = Fixture::new();
        f.run("CREATE TEMPORARY TABLE t(x int)", "CREATE TABLE");
        f.run("RESET ALL", "RESET");
        assert!(f.st.pins.any());
    }

    #[test]
    fn block_ended_without_commit_forgets_settings() {
        let mut f = Fixture::new();
        f.run("BEGIN", "BEGIN");
        f.run("SET app.x = 1", "SET");
        f.st.ready(b'I');
        assert_eq!(f.params.get("app.x"), None);
    }
}
