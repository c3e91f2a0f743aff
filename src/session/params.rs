//! The settings a client expects its server to have (its startup parameters and `options`,
//! plus the pool's defaults for the parameters PostgreSQL reports), and the SQL that brings a
//! server connection in line before the client's request is forwarded (`sync_sql`, pure), and
//! `sync`, which runs it on a server unless the server already matches.

use std::collections::HashMap;

/// Parameters PostgreSQL reports with ParameterStatus that a client may set. For these the
/// server's report is the truth; other settings are tracked from what the proxy applied.
pub const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
];

fn reported_name(name: &str) -> Option<&'static str> {
    REPORTED.iter().copied().find(|r| r.eq_ignore_ascii_case(name))
}

/// How a setting's value is written: a configuration string (startup packet, `options`,
/// `set_config`) or the SQL text after `SET name TO` (a list, quoted identifiers, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Config(String),
    Sql(String),
}

impl Value {
    fn text(&self) -> &str {
        match self {
            Value::Config(s) | Value::Sql(s) => s,
        }
    }

    /// The form recorded in a server's `applied` map.
    fn encoded(&self) -> String {
        match self {
            Value::Config(s) => format!("c:{s}"),
            Value::Sql(s) => format!("s:{s}"),
        }
    }

    fn statement(&self, name: &str) -> String {
        match self {
            Value::Config(v) => {
                format!("SELECT pg_catalog.set_config({}, {}, false);", quote_literal(name), quote_literal(v))
            }
            Value::Sql(v) => format!("SET {} TO {v};", quote_ident(name)),
        }
    }
}

/// Settings one client wants on whatever server it is given.
#[derive(Clone, Debug, Default)]
pub struct ClientParams {
    want: Vec<(String, Value)>,
    /// The startup values of unreported settings: what RESET returns to.
    startup: Vec<(String, Value)>,
    /// A keyed hash of `want` (never 0 once computed): a server last synced to the same shape,
    /// and unchanged since, needs no sync (`ServerConn::synced`). Keyed with the proxy's
    /// random key (`with_key`), so no client can choose settings that hash like another's.
    shape: u64,
    key: std::collections::hash_map::RandomState,
}

impl PartialEq for ClientParams {
    fn eq(&self, other: &Self) -> bool {
        self.want == other.want && self.startup == other.startup
    }
}

impl Eq for ClientParams {}

impl ClientParams {
    /// The pool's defaults for reported parameters, overridden by the client's own settings.
    pub fn new(defaults: Option<&HashMap<String, String>>, settings: &[(String, String)]) -> ClientParams {
        let mut p = ClientParams::default();
        if let Some(d) = defaults {
            for r in REPORTED {
                if let Some(v) = d.get(*r) {
                    p.set(r, Value::Config(v.clone()));
                }
            }
        }
        for (k, v) in settings {
            p.set(k, Value::Config(v.clone()));
        }
        p.startup = p.want.iter().filter(|(k, _)| reported_name(k).is_none()).cloned().collect();
        p.reshape();
        p
    }

    /// What `ServerConn::synced` holds for a server that matches this client.
    pub fn shape(&self) -> u64 {
        self.shape
    }

    /// Shapes are comparable between clients given the same key (the proxy's, one per process).
    pub fn with_key(mut self, key: std::collections::hash_map::RandomState) -> ClientParams {
        self.key = key;
        self.reshape();
        self
    }

    fn reshape(&mut self) {
        use std::hash::BuildHasher;
        self.shape = self.key.hash_one(&self.want).max(1);
    }

    fn canonical(name: &str) -> String {
        reported_name(name).map(str::to_string).unwrap_or_else(|| name.to_ascii_lowercase())
    }

    /// Records a value the client set (or that a startup setting asks for).
    pub fn set(&mut self, name: &str, value: Value) {
        let name = Self::canonical(name);
        match self.want.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.want.push((name, value)),
        }
        self.reshape();
    }

    /// RESET name: back to the startup value, or to the server's default.
    pub fn reset(&mut self, name: &str) {
        let name = Self::canonical(name);
        if reported_name(&name).is_some() {
            return;
        }
        self.want.retain(|(k, _)| *k != name);
        if let Some((_, v)) = self.startup.iter().find(|(k, _)| *k == name) {
            self.want.push((name, v.clone()));
        }
        self.reshape();
    }

    /// RESET ALL / DISCARD ALL: unreported settings back to their startup values (reported ones
    /// follow the server's ParameterStatus).
    pub fn reset_all(&mut self) {
        self.want.retain(|(k, _)| reported_name(k).is_some());
        self.want.extend(self.startup.iter().cloned());
        self.reshape();
    }

    /// Every setting that can change a result, sorted by name, for the result cache's key
    /// (application_name is left out: only functions the cache refuses can read it).
    pub fn key_settings(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> =
            self.want.iter().filter(|(k, _)| k != "application_name").map(|(k, v)| (k.clone(), v.encoded())).collect();
        v.sort();
        v
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.want.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.text())
    }

    /// A server reported a parameter while this client held it (the client ran SET).
    pub fn on_parameter_status(&mut self, name: &str, value: &str) {
        if reported_name(name).is_some() {
            self.set(name, Value::Config(value.to_string()));
        }
    }

    /// After a sync, adopt the server's spelling of reported values ("iso" → "ISO, MDY") so
    /// the next comparison matches.
    pub fn adopt_reported(&mut self, server_params: &HashMap<String, String>) {
        for (k, v) in self.want.iter_mut() {
            if let Some(r) = reported_name(k) {
                if let Some(sv) = server_params.get(r) {
                    *v = Value::Config(sv.clone());
                }
            }
        }
        self.reshape();
    }

    /// SQL that makes a server match this client, or None if it already does. `applied` holds
    /// the unreported settings set on that server for its current or previous client (encoded
    /// with `record_applied`); those this client does not want are reset. Returns the new
    /// `applied` map to record once the SQL succeeds.
    pub fn sync_sql(
        &self,
        server_params: &HashMap<String, String>,
        applied: &HashMap<String, String>,
    ) -> Option<(String, HashMap<String, String>)> {
        let mut sql = String::new();
        let mut next = HashMap::new();
        for (k, v) in &self.want {
            let differs = match reported_name(k) {
                Some(r) => server_params.get(r).map(String::as_str) != Some(v.text()),
                None => {
                    let enc = v.encoded();
                    let differs = applied.get(k) != Some(&enc);
                    next.insert(k.clone(), enc);
                    differs
                }
            };
            if differs {
                sql.push_str(&v.statement(k));
            }
        }
        let mut resets: Vec<&String> = applied.keys().filter(|k| !next.contains_key(*k)).collect();
        resets.sort();
        for k in resets {
            sql.push_str(&format!("RESET {};", quote_ident(k)));
        }
        (!sql.is_empty()).then_some((sql, next))
    }
}

/// Brings `server` in line with `params`: nothing when it was last synced to settings of the
/// same shape and nothing changed them since. Ok(Some(err)): the server refused the settings
/// (the caller decides what the client is told and whether the server can be kept).
pub async fn sync(
    params: &ClientParams,
    server: &mut crate::server::ServerConn,
) -> Result<Option<crate::wire::backend::ErrorFields>, crate::server::ServerError> {
    if server.synced == params.shape() {
        return Ok(None);
    }
    if let Some((sql, next)) = params.sync_sql(&server.params, &server.applied) {
        match Box::pin(server.run_control(&sql)).await? {
            None => server.applied = next,
            Some(err) => return Ok(Some(err)),
        }
    }
    server.synced = params.shape();
    Ok(None)
}

/// Records on a server's `applied` map that the client itself set `name` there.
pub fn record_applied(applied: &mut HashMap<String, String>, name: &str, value: &Value) {
    if reported_name(name).is_none() {
        applied.insert(name.to_ascii_lowercase(), value.encoded());
    }
}

pub fn is_reported(name: &str) -> bool {
    reported_name(name).is_some()
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_shape_follows_every_change() {
        let key = std::collections::hash_map::RandomState::new();
        let mut p = ClientParams::new(Some(&map(&[("DateStyle", "ISO, MDY")])), &[("search_path".into(), "a".into())])
            .with_key(key.clone());
        let q = ClientParams::new(Some(&map(&[("DateStyle", "ISO, MDY")])), &[("search_path".into(), "a".into())])
            .with_key(key);
        assert_eq!(p.shape(), q.shape(), "same settings and key, same shape");
        let other_key = q.clone().with_key(Default::default());
        assert_ne!(other_key.shape(), q.shape(), "another key, another shape");
        let start = p.shape();
        p.set("search_path", Value::Sql("b".into()));
        assert_ne!(p.shape(), start);
        p.reset("search_path");
        assert_eq!(p.shape(), start, "back to the startup value");
        p.on_parameter_status("DateStyle", "German");
        assert_ne!(p.shape(), start);
        p.adopt_reported(&map(&[("DateStyle", "ISO, MDY")]));
        assert_eq!(p.shape(), start);
        assert_ne!(ClientParams::default().shape(), start);
    }

    #[test]
    fn defaults_then_client_settings() {
        let d = map(&[("TimeZone", "UTC"), ("application_name", ""), ("server_version", "15")]);
        let p = ClientParams::new(
            Some(&d),
            &[("application_name".into(), "psql".into()), ("datestyle".into(), "iso".into())],
        );
        assert_eq!(p.get("timezone"), Some("UTC"));
        assert_eq!(p.get("application_name"), Some("psql"));
        assert_eq!(p.get("DateStyle"), Some("iso"));
        assert_eq!(p.get("server_version"), None);
    }

    #[test]
    fn sync_sets_only_differences_and_resets_leftovers() {
        let p =
            ClientParams::new(None, &[("application_name".into(), "a'b".into()), ("search_path".into(), "s1".into())]);
        let server = map(&[("application_name", "a'b")]);
        let (sql, next) = p.sync_sql(&server, &map(&[("extra_float_digits", "c:3")])).unwrap();
        assert_eq!(sql, "SELECT pg_catalog.set_config('search_path', 's1', false);RESET \"extra_float_digits\";");
        assert_eq!(next, map(&[("search_path", "c:s1")]));
        assert_eq!(p.sync_sql(&server, &next), None);
        let other = map(&[("application_name", "x")]);
        assert_eq!(
            p.sync_sql(&other, &next).unwrap().0,
            "SELECT pg_catalog.set_config('application_name', 'a''b', false);"
        );
    }

    #[test]
    fn adopts_server_spelling_and_tracks_client_sets() {
        let mut p = ClientParams::new(None, &[("DateStyle".into(), "iso".into())]);
        p.adopt_reported(&map(&[("DateStyle", "ISO, MDY")]));
        assert_eq!(p.get("DateStyle"), Some("ISO, MDY"));
        p.on_parameter_status("TimeZone", "Europe/Paris");
        p.on_parameter_status("server_version", "16");
        assert_eq!(p.get("TimeZone"), Some("Europe/Paris"));
        assert_eq!(p.get("server_version"), None);
    }

    #[test]
    fn client_sets_resets_and_sql_values() {
        let mut p = ClientParams::new(None, &[("search_path".into(), "a".into())]);
        p.set("search_path", Value::Sql("s1, \"B\"".into()));
        let (sql, next) = p.sync_sql(&HashMap::new(), &HashMap::new()).unwrap();
        assert_eq!(sql, "SET \"search_path\" TO s1, \"B\";");
        let mut applied = next.clone();
        assert_eq!(p.sync_sql(&HashMap::new(), &applied), None);
        p.reset("search_path");
        assert_eq!(p.get("search_path"), Some("a"), "RESET returns to the startup value");
        p.set("app.user_id", Value::Config("7".into()));
        record_applied(&mut applied, "app.user_id", &Value::Config("7".into()));
        p.reset_all();
        assert_eq!(p.get("app.user_id"), None);
        let (sql, _) = p.sync_sql(&HashMap::new(), &applied).unwrap();
        assert!(
            sql.contains("set_config('search_path', 'a', false)") && sql.contains("RESET \"app.user_id\""),
            "{sql}"
        );
    }

    #[test]
    fn literals_are_quoted_safely() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
