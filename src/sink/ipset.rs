//! The kernel sink: bans as ipset entries with per-entry timeouts, through libipset (the
//! `ipset` crate).
//!
//! That crate has known defects (see the README): `list()` panics on sets with timeouts and
//! hands a C buffer to Rust's allocator, and `Session` claims `Sync` though libipset sessions are
//! not thread-safe. So only `create`, `add` and `del` are used, never `list()`, and both
//! sessions are owned by the one sink thread.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

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

/// One pair of sets (IPv4 addresses, IPv6 networks) and their sessions.
struct Sets {
    n4: String,
    n6: String,
    v4: Session<HashIp>,
    v6: Session<HashNet>,
}

impl Sets {
    fn open(n4: &str, n6: &str, maxelem: u32) -> Result<Sets, IpsetError> {
        for name in [n4, n6] {
            // Session::new panics on a NUL byte; the kernel takes at most 31 bytes.
            if name.is_empty() || name.len() > 31 || name.contains('\0') {
                return Err(IpsetError::Create {
                    set: name.into(),
                    reason: "a set name is 1 to 31 bytes, no NUL".into(),
                });
            }
        }
        let mut v4: Session<HashIp> = Session::new(n4.into());
        adopt(
            n4,
            v4.create(|b| b.with_ipv6(false)?.with_timeout(3600)?.with_max_elem(maxelem)?.build()),
        )?;
        let mut v6: Session<HashNet> = Session::new(n6.into());
        adopt(
            n6,
            v6.create(|b| b.with_ipv6(true)?.with_timeout(3600)?.with_max_elem(maxelem)?.build()),
        )?;
        Ok(Sets {
            n4: n4.into(),
            n6: n6.into(),
            v4,
            v6,
        })
    }

    fn add(&mut self, net: IpNet, timeout: u32) -> Result<(), IpsetError> {
        let opts = [AddOption::Timeout(timeout)];
        let (ip, prefix) = (net.addr(), net.prefix_len());
        let (set, res) = match ip {
            IpAddr::V4(_) => (&self.n4, add_or_replace(&mut self.v4, || ip, &opts)),
            IpAddr::V6(_) => (&self.n6, add_or_replace(&mut self.v6, || NetDataType::new(ip, prefix), &opts)),
        };
        res.map_err(|e| IpsetError::Add {
            set: set.clone(),
            ip,
            reason: clean(&e),
        })
    }

    fn del(&mut self, net: IpNet) -> Result<(), IpsetError> {
        let (ip, prefix) = (net.addr(), net.prefix_len());
        let (set, res) = match ip {
            IpAddr::V4(_) => (&self.n4, self.v4.del(ip)),
            IpAddr::V6(_) => (&self.n6, self.v6.del(NetDataType::new(ip, prefix))),
        };
        res.map(|_| ()).map_err(|e| IpsetError::Add {
            set: set.clone(),
            ip,
            reason: clean(&e),
        })
    }
}

/// Open sessions on the mail-port sets and on the all-ports sets (`<name>-all`, for recidive).
pub struct Ipset {
    mail: Sets,
    all: Sets,
    /// When each entry we added expires (Unix seconds): a re-ban only ever lengthens a ban.
    until: HashMap<(IpNet, bool), i64>,
    /// Size of `until` at which expired entries are next dropped.
    sweep_at: usize,
}

impl std::fmt::Debug for Ipset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipset")
            .field("set4", &self.mail.n4)
            .field("set6", &self.mail.n6)
            .field("entries", &self.until.len())
            .finish()
    }
}

impl Ipset {
    /// Creates the sets with timeouts, or adopts them if they exist: `set4`/`set6` for bans on
    /// the mail ports, `set4-all`/`set6-all` for recidive bans on every port.
    pub fn open(cfg: &IpsetConfig) -> Result<Ipset, IpsetError> {
        let mail = Sets::open(&cfg.set4, &cfg.set6, cfg.maxelem)?;
        let all = Sets::open(&format!("{}-all", cfg.set4), &format!("{}-all", cfg.set6), cfg.maxelem)?;
        Ok(Ipset {
            mail,
            all,
            until: HashMap::new(),
            sweep_at: 1024,
        })
    }

    /// Adds the decision's address (or network) with its ban time as the entry's timeout; an
    /// entry already there is replaced only when the new ban ends later. Recidive bans go to the
    /// all-ports sets.
    pub fn apply(&mut self, d: &Decision, now: i64) -> Result<(), IpsetError> {
        let timeout = d.ban_for.clamp(1, MAX_TIMEOUT) as u32;
        let until = now + i64::from(timeout);
        let every_port = d.reason == crate::policy::Reason::Recidive;
        let key = (d.net, every_port);
        if self.until.get(&key).is_some_and(|&u| u >= until) {
            return Ok(());
        }
        let sets = if every_port { &mut self.all } else { &mut self.mail };
        sets.add(d.net, timeout)?;
        self.until.insert(key, until);
        // Forget expired entries now and then, not on every ban.
        if self.until.len() >= self.sweep_at {
            self.until.retain(|_, &mut u| u > now);
            self.sweep_at = (self.until.len() * 2).max(1024);
        }
        Ok(())
    }

    /// Deletes the entry from both kinds of sets (absent is fine: the kernel may have expired it).
    pub fn remove(&mut self, net: IpNet) -> Result<(), IpsetError> {
        self.until.remove(&(net, false));
        self.until.remove(&(net, true));
        self.mail.del(net)?;
        self.all.del(net)
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
