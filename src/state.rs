//! State that survives restarts: active bans and each address's ban history (for escalation),
//! in an embedded redb file. redb is pure Rust (no C library beside libipset), transactional and
//! crash-safe: a commit is durable when it returns, so a `kill -9` at any moment loses no ban
//! that was applied, since bans are written before they reach the sink.

use std::net::IpAddr;
use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use crate::policy::Decision;

/// address bytes → (until, prefix, jail)
const BANS: TableDefinition<&[u8], (i64, u8, &str)> = TableDefinition::new("bans");
/// address bytes → (offences, last ban time)
const HISTORY: TableDefinition<&[u8], (u32, i64)> = TableDefinition::new("history");

/// A problem with the state file.
#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {reason}")]
pub struct StateError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// A ban read back at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBan {
    /// Address or network.
    pub ip: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// Jail that made it.
    pub jail: String,
    /// When it ends (Unix seconds).
    pub until: i64,
}

/// Ban history of an address: (address or network, offences, last ban time).
pub type History = (IpAddr, u32, i64);

/// The open state file.
pub struct Store {
    db: Database,
    path: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ip_of(k: &[u8]) -> Option<IpAddr> {
    match k.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(k).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(k).ok()?)),
        _ => None,
    }
}

impl Store {
    /// Opens (or creates) the state file.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        let p = path.display().to_string();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let db = Database::create(path).map_err(|e| StateError {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        Ok(Store { db, path: p })
    }

    fn err(&self, e: impl std::fmt::Display) -> StateError {
        StateError {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Records bans (and their offence counts) in one durable transaction.
    pub fn save(&self, bans: &[Decision]) -> Result<(), StateError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut b = w.open_table(BANS).map_err(|e| self.err(e))?;
            let mut h = w.open_table(HISTORY).map_err(|e| self.err(e))?;
            for d in bans {
                let k = key(d.ip);
                b.insert(k.as_slice(), (d.time.saturating_add(d.ban_for as i64), d.prefix, &*d.jail))
                    .map_err(|e| self.err(e))?;
                h.insert(k.as_slice(), (d.offence, d.time)).map_err(|e| self.err(e))?;
            }
        }
        w.commit().map_err(|e| self.err(e))
    }

    /// Forgets an active ban (the history stays).
    pub fn remove(&self, ip: IpAddr) -> Result<(), StateError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut b = w.open_table(BANS).map_err(|e| self.err(e))?;
            b.remove(key(ip).as_slice()).map_err(|e| self.err(e))?;
        }
        w.commit().map_err(|e| self.err(e))
    }

    /// Active bans and the history younger than `forget` seconds; everything older is purged,
    /// so the file does not grow without bound.
    pub fn load(&self, now: i64, forget: i64) -> Result<(Vec<StoredBan>, Vec<History>), StateError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut bans = Vec::new();
        let mut history = Vec::new();
        {
            let mut b = w.open_table(BANS).map_err(|e| self.err(e))?;
            let mut expired = Vec::new();
            for e in b.iter().map_err(|e| self.err(e))? {
                let (k, v) = e.map_err(|e| self.err(e))?;
                let (until, prefix, jail) = v.value();
                match ip_of(k.value()) {
                    Some(ip) if until > now => bans.push(StoredBan {
                        ip,
                        prefix,
                        jail: jail.to_string(),
                        until,
                    }),
                    _ => expired.push(k.value().to_vec()),
                }
            }
            for k in expired {
                b.remove(k.as_slice()).map_err(|e| self.err(e))?;
            }
            let mut h = w.open_table(HISTORY).map_err(|e| self.err(e))?;
            let mut old = Vec::new();
            for e in h.iter().map_err(|e| self.err(e))? {
                let (k, v) = e.map_err(|e| self.err(e))?;
                let (offences, last) = v.value();
                match ip_of(k.value()) {
                    Some(ip) if now - last <= forget => history.push((ip, offences, last)),
                    _ => old.push(k.value().to_vec()),
                }
            }
            for k in old {
                h.remove(k.as_slice()).map_err(|e| self.err(e))?;
            }
        }
        w.commit().map_err(|e| self.err(e))?;
        Ok((bans, history))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Reason;

    #[test]
    fn bans_and_history_round_trip_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let d = |ip: &str, time, ban_for, offence| Decision {
            ip: ip.parse().unwrap(),
            prefix: if ip.contains(':') { 64 } else { 32 },
            jail: "j".into(),
            failures: 5,
            ban_for,
            offence,
            time,
            reason: Reason::Threshold,
        };
        s.save(&[d("192.0.2.1", 100, 3600, 2), d("2001:db8::", 100, 10, 1)]).unwrap();
        drop(s);
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let (bans, history) = s.load(200, 86_400).unwrap();
        assert_eq!(
            bans,
            vec![StoredBan {
                ip: "192.0.2.1".parse().unwrap(),
                prefix: 32,
                jail: "j".into(),
                until: 3700
            }]
        );
        assert_eq!(history.len(), 2);
        s.remove("192.0.2.1".parse().unwrap()).unwrap();
        assert!(s.load(200, 86_400).unwrap().0.is_empty());
        assert!(s.load(100_000, 86_400).unwrap().1.is_empty(), "old history is purged");
    }
}
