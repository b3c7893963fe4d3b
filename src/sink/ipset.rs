//! The kernel sink: bans as ipset entries with per-entry timeouts, through libipset (the
//! `ipset` crate).
//!
//! That crate has known defects (see the README): `list()` panics on sets with timeouts and
//! hands a C buffer to Rust's allocator, and `Session` claims `Sync` though libipset sessions are
//! not thread-safe. So only `create`, `add` and `del` are used, never `list()`, and both
//! sessions are owned by the one sink thread.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::policy::Decision;
use ipset::Session;
use ipset::types::{AddOption, HashIp, HashNet, NetDataType};

/// The sets the ipset sink writes to (from `SinkConfig::Ipset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsetConfig {
    /// `hash:ip` set (family inet) for IPv4 addresses.
    pub set4: String,
    /// `hash:net` set (family inet6) for IPv6 networks.
    pub set6: String,
    /// Most entries per set.
    pub maxelem: u32,
}

pub(crate) fn default_set4() -> String {
    "mailpipe4".into()
}
pub(crate) fn default_set6() -> String {
    "mailpipe6".into()
}
pub(crate) fn default_maxelem() -> u32 {
    1 << 20
}

/// The kernel's largest per-entry timeout (about 24.8 days).
const MAX_TIMEOUT: u64 = 2_147_483;

/// Why the ipset sink failed.
#[derive(Debug, thiserror::Error)]
pub enum IpsetError {
    /// Sets could not be created or adopted.
    #[error("cannot create ipset {set}: {reason} (needs root or CAP_NET_ADMIN, and the kernel's ip_set module)")]
    Create {
        /// The set.
        set: String,
        /// libipset's message.
        reason: String,
    },
    /// A ban could not be applied (retried by the caller).
    #[error("ipset {set}: cannot add {ip}: {reason}")]
    Add {
        /// The set.
        set: String,
        /// The address.
        ip: IpAddr,
        /// libipset's message.
        reason: String,
    },
}

/// Open sessions on both sets.
pub struct Ipset {
    cfg: IpsetConfig,
    v4: Session<HashIp>,
    v6: Session<HashNet>,
    /// When each entry we added expires (Unix seconds): a re-ban only ever lengthens a ban.
    until: HashMap<(IpAddr, u8), i64>,
    /// Size of `until` at which expired entries are next dropped.
    sweep_at: usize,
}

impl std::fmt::Debug for Ipset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipset")
            .field("cfg", &self.cfg)
            .field("entries", &self.until.len())
            .finish()
    }
}

impl Ipset {
    /// Creates both sets with timeouts, or adopts them if they exist.
    pub fn open(cfg: &IpsetConfig) -> Result<Ipset, IpsetError> {
        for name in [&cfg.set4, &cfg.set6] {
            // Session::new panics on a NUL byte; the kernel takes at most 31 bytes.
            if name.is_empty() || name.len() > 31 || name.contains('\0') {
                return Err(IpsetError::Create {
                    set: name.clone(),
                    reason: "a set name is 1 to 31 bytes, no NUL".into(),
                });
            }
        }
        let mut v4: Session<HashIp> = Session::new(cfg.set4.clone());
        adopt(
            &cfg.set4,
            v4.create(|b| b.with_ipv6(false)?.with_timeout(3600)?.with_max_elem(cfg.maxelem)?.build()),
        )?;
        let mut v6: Session<HashNet> = Session::new(cfg.set6.clone());
        adopt(
            &cfg.set6,
            v6.create(|b| b.with_ipv6(true)?.with_timeout(3600)?.with_max_elem(cfg.maxelem)?.build()),
        )?;
        Ok(Ipset {
            cfg: cfg.clone(),
            v4,
            v6,
            until: HashMap::new(),
            sweep_at: 1024,
        })
    }

    /// Adds the decision's address (or network) with its ban time as the entry's timeout; an
    /// entry already there is replaced only when the new ban ends later.
    pub fn apply(&mut self, d: &Decision, now: i64) -> Result<(), IpsetError> {
        let timeout = d.ban_for.clamp(1, MAX_TIMEOUT) as u32;
        let until = now + i64::from(timeout);
        let key = (d.ip, d.prefix);
        if self.until.get(&key).is_some_and(|&u| u >= until) {
            return Ok(());
        }
        let opts = [AddOption::Timeout(timeout)];
        let (set, res) = match d.ip {
            IpAddr::V4(_) => (&self.cfg.set4, add_or_replace(&mut self.v4, || d.ip, &opts)),
            IpAddr::V6(_) => (
                &self.cfg.set6,
                add_or_replace(&mut self.v6, || NetDataType::new(d.ip, d.prefix), &opts),
            ),
        };
        res.map_err(|e| IpsetError::Add {
            set: set.clone(),
            ip: d.ip,
            reason: clean(&e),
        })?;
        self.until.insert(key, until);
        // Forget expired entries now and then, not on every ban.
        if self.until.len() >= self.sweep_at {
            self.until.retain(|_, &mut u| u > now);
            self.sweep_at = (self.until.len() * 2).max(1024);
        }
        Ok(())
    }
}

impl Ipset {
    /// Deletes an entry (absent is fine: the kernel may have expired it).
    pub fn remove(&mut self, ip: IpAddr, prefix: u8) -> Result<(), IpsetError> {
        self.until.remove(&(ip, prefix));
        let (set, res) = match ip {
            IpAddr::V4(_) => (&self.cfg.set4, self.v4.del(ip)),
            IpAddr::V6(_) => (&self.cfg.set6, self.v6.del(NetDataType::new(ip, prefix))),
        };
        res.map(|_| ()).map_err(|e| IpsetError::Add {
            set: set.clone(),
            ip,
            reason: clean(&e),
        })
    }
}

/// A set that already exists is adopted (the firewall script may have created it first).
fn adopt(set: &str, created: Result<bool, ipset::types::Error>) -> Result<(), IpsetError> {
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("already exists") => Ok(()),
        Err(e) => Err(IpsetError::Create {
            set: set.into(),
            reason: clean(&e),
        }),
    }
}

/// libipset's message without the crate's `Cmd:['...', true` wrapping.
fn clean(e: &ipset::types::Error) -> String {
    let s = e.to_string();
    let s = s.trim_start_matches("Cmd:['").trim_start_matches("DataSet:['");
    s.split("\n").next().unwrap_or(s).trim().trim_end_matches(['\'', ',']).to_string()
}

/// `ipset add -exist` with a new timeout: libipset refuses to add what is there, so delete first.
fn add_or_replace<T, D>(s: &mut Session<T>, data: impl Fn() -> D, opts: &[AddOption]) -> Result<(), ipset::types::Error>
where
    T: ipset::types::SetType,
    D: Into<T::DataType>,
{
    if !s.add(data(), opts)? {
        s.del(data())?;
        s.add(data(), opts)?;
    }
    Ok(())
}
