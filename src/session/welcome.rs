//! The welcome cache: for each (database, user, startup settings) seen before, the parameter
//! report a login gets and the settings it will need on its servers. It lets transaction-mode
//! logins complete without checking a server out. Bounded; entries are recomputed on demand.

use std::collections::HashMap;
use std::sync::Mutex;

use super::params::ClientParams;
use super::Login;

/// Entries kept before the cache is emptied and refilled.
const MAX_ENTRIES: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WelcomeKey {
    database: String,
    user: String,
    settings: Vec<(String, String)>,
}

impl WelcomeKey {
    pub fn new(login: &Login) -> WelcomeKey {
        WelcomeKey { database: login.database.clone(), user: login.user.clone(), settings: login.settings.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct Welcome {
    /// ParameterStatus (name, value) pairs, sorted.
    pub report: Vec<(String, String)>,
    pub client: ClientParams,
}

#[derive(Default)]
pub struct WelcomeCache {
    map: Mutex<HashMap<WelcomeKey, Welcome>>,
}

impl WelcomeCache {
    pub fn get(&self, key: &WelcomeKey) -> Option<Welcome> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Forgets every welcome (the servers behind them may have changed).
    pub fn clear(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn put(&self, key: WelcomeKey, w: Welcome) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(key, w);
    }
}
