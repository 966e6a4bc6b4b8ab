//! The per-scenario key/value store, persisted as one JSON file per scenario
//! in the host's state directory and capped in total size.

use crate::bindings::CapError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct StateCap {
    path: Option<PathBuf>,
    cap: u64,
    inner: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    map: BTreeMap<String, Vec<u8>>,
    size: u64,
    dirty: bool,
}

fn entry_size(k: &str, v: &[u8]) -> u64 {
    (k.len() + v.len()) as u64
}

impl StateCap {
    /// An in-memory store that is never persisted (for `inspect` and tests).
    pub fn ephemeral(cap: u64) -> Self {
        StateCap {
            path: None,
            cap,
            inner: Mutex::default(),
        }
    }

    /// Keeps changes in memory only: `persist` writes nothing (plan mode).
    pub fn never_persist(&mut self) {
        self.path = None;
    }

    /// Loads the store of `scenario` from `dir` (missing file: empty store).
    pub fn load(dir: &Path, scenario: &str, cap: u64) -> Result<Self, StateError> {
        let safe: String = scenario
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join("state").join(format!("{safe}.json"));
        let mut store = Store::default();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let map: BTreeMap<String, String> =
                    serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                for (k, v) in map {
                    let v = hex::decode(&v).map_err(|e| StateError::Corrupt {
                        path: path.clone(),
                        message: format!("value of {k:?}: {e}"),
                    })?;
                    store.size += entry_size(&k, &v);
                    store.map.insert(k, v);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateError::Io { path, source }),
        }
        Ok(StateCap {
            path: Some(path),
            cap,
            inner: Mutex::new(store),
        })
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.lock().ok()?.map.get(key).cloned()
    }

    pub fn set(&self, key: &str, value: Vec<u8>) -> Result<(), CapError> {
        let mut s = self
            .inner
            .lock()
            .map_err(|_| CapError::Unavailable("state store poisoned".into()))?;
        let old = s.map.get(key).map(|v| entry_size(key, v)).unwrap_or(0);
        let new_size = s.size - old + entry_size(key, &value);
        if new_size > self.cap {
            return Err(CapError::TooLarge(format!(
                "state store would hold {new_size} bytes, over its cap of {} (raise [limits] state-bytes)",
                self.cap
            )));
        }
        s.size = new_size;
        s.map.insert(key.to_string(), value);
        s.dirty = true;
        Ok(())
    }

    pub fn delete(&self, key: &str) -> bool {
        let Ok(mut s) = self.inner.lock() else {
            return false;
        };
        match s.map.remove(key) {
            Some(v) => {
                s.size -= entry_size(key, &v);
                s.dirty = true;
                true
            }
            None => false,
        }
    }

    pub fn keys(&self) -> Vec<String> {
        self.inner
            .lock()
            .map(|s| s.map.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Writes the store back if it changed (atomically: temp file + rename).
    pub fn persist(&self) -> Result<(), StateError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let Ok(mut s) = self.inner.lock() else {
            return Ok(());
        };
        if !s.dirty {
            return Ok(());
        }
        let map: BTreeMap<&String, String> =
            s.map.iter().map(|(k, v)| (k, hex::encode(v))).collect();
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&map).unwrap_or_default();
        std::fs::write(&tmp, body).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        s.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_persist_between_loads() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateCap::load(dir.path(), "demo", 1024).unwrap();
        s.set("a", b"1".to_vec()).unwrap();
        s.persist().unwrap();
        let s2 = StateCap::load(dir.path(), "demo", 1024).unwrap();
        assert_eq!(s2.get("a"), Some(b"1".to_vec()));
    }

    #[test]
    fn the_cap_counts_keys_and_values() {
        let s = StateCap::ephemeral(10);
        s.set("k", vec![0; 9]).unwrap();
        assert!(matches!(s.set("j", vec![0; 1]), Err(CapError::TooLarge(_))));
        // Replacing a value frees the old one's room.
        s.set("k", vec![0; 8]).unwrap();
        s.set("j", vec![]).unwrap();
    }
}
