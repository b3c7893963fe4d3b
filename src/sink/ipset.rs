//! The kernel sink: bans as ipset entries with per-entry timeouts, through libipset (the
//! `ipset` crate).
//!
//! That crate has known defects (see the README): `list()` panics on sets with timeouts and
//! hands a C buffer to Rust's allocator, and `Session` claims `Sync` though libipset sessions are
//! not thread-safe. So only `create`, `add`, `del` and `save` are used, never `list()`, and the
//! sessions are owned by the one sink thread.
//!
//! Each port scope (a jail's `ports`) has its own pair of sets, dropped on those ports only.
//!
//! The kernel is reconciled with mailpipe's bans every `reconcile` period: a set that is gone (a
//! reboot, `ipset destroy`) is created again, every ban missing from its set (`ipset del`, a new
//! set) is added again with the time it has left, the rules are put back (`rules.rs`), and a ban
//! longer than the kernel's longest timeout (about 24.8 days) is refreshed before its entry runs
//! out. What each set holds is read with one `save` (libipset writes it to an in-memory file).

#[cfg(feature = "ipset")]
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

#[cfg(feature = "ipset")]
use super::kernel::Entry;
use super::kernel::Repairs;
use crate::policy::Decision;
use crate::ports::Ports;
#[cfg(feature = "ipset")]
use ipset::Session;
#[cfg(feature = "ipset")]
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
    /// Keep the iptables rules that use the sets in place.
    pub rules: bool,
    /// Drop banned traffic forwarded to other hosts too (FORWARD chain).
    pub forward: bool,
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
    /// This build has no libipset (`--no-default-features`): use `Nftables`.
    #[error("this mailpipe was built without libipset (cargo feature `ipset`): use the Nftables sink")]
    Unavailable,
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

#[cfg(feature = "ipset")]
/// One pair of sets (IPv4 addresses, IPv6 networks) and their sessions.
struct Sets {
    n4: String,
    n6: String,
    maxelem: u32,
    v4: Session<HashIp>,
    v6: Session<HashNet>,
}

#[cfg(feature = "ipset")]
impl Sets {
    /// Creates the sets that are missing; how many were.
    fn ensure(&mut self) -> Result<usize, IpsetError> {
        let m = self.maxelem;
        let v4 = adopt(
            &self.n4,
            self.v4
                .create(|b| b.with_ipv6(false)?.with_timeout(3600)?.with_max_elem(m)?.build()),
        )?;
        let v6 = adopt(
            &self.n6,
            self.v6.create(|b| b.with_ipv6(true)?.with_timeout(3600)?.with_max_elem(m)?.build()),
        )?;
        Ok(usize::from(v4) + usize::from(v6))
    }

    /// What the kernel holds in both sets.
    fn members(&mut self) -> Result<std::collections::HashSet<IpNet>, IpsetError> {
        let mut all = save(&mut self.v4, &self.n4)?;
        all.extend(save(&mut self.v6, &self.n6)?);
        Ok(all)
    }

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
        let mut sets = Sets {
            n4: n4.into(),
            n6: n6.into(),
            maxelem,
            v4: Session::new(n4.into()),
            v6: Session::new(n6.into()),
        };
        sets.ensure()?;
        Ok(sets)
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

#[cfg(feature = "ipset")]
/// Open sessions on one pair of sets per port scope: `<set4>`/`<set6>` for the mail ports,
/// `<set>-all` for every port (recidive, manual bans), `<set>-25-465-587` and so on for the jails'
/// own ports.
pub struct Ipset {
    cfg: IpsetConfig,
    scopes: BTreeMap<Ports, Sets>,
    /// Every ban we put in the kernel, by (network, ports): a re-ban only ever lengthens a ban,
    /// and reconciliation knows what should be there.
    until: HashMap<(IpNet, Ports), Entry>,
    /// Size of `until` at which expired entries are next dropped.
    sweep_at: usize,
    /// Whether the rules are known to be in place for every scope (false after a failure, so
    /// the next ban tries again instead of filling a set no rule uses).
    rules_ok: bool,
}

#[cfg(feature = "ipset")]
impl std::fmt::Debug for Ipset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipset")
            .field("set4", &self.cfg.set4)
            .field("set6", &self.cfg.set6)
            .field("scopes", &self.scopes.len())
            .field("entries", &self.until.len())
            .finish()
    }
}

#[cfg(feature = "ipset")]
impl Ipset {
    /// Creates the sets with timeouts for each of `scopes` and for every port, or adopts them if
    /// they exist, and (with `rules`) the iptables rules that use them.
    pub fn open(cfg: &IpsetConfig, scopes: &[Ports]) -> Result<Ipset, IpsetError> {
        let mut s = Ipset {
            cfg: cfg.clone(),
            scopes: BTreeMap::new(),
            until: HashMap::new(),
            sweep_at: 1024,
            rules_ok: false,
        };
        for ports in scopes.iter().cloned().chain([Ports::every()]) {
            s.open_scope(&ports)?;
        }
        s.ensure_rules()?;
        Ok(s)
    }

    /// Opens (creates or adopts) a scope's sets the first time it is seen; whether it was new.
    fn open_scope(&mut self, ports: &Ports) -> Result<bool, IpsetError> {
        if self.scopes.contains_key(ports) {
            return Ok(false);
        }
        let name = |base: &str| super::kernel::scope_set(base, ports, '-', 31);
        let sets = Sets::open(&name(&self.cfg.set4), &name(&self.cfg.set6), self.cfg.maxelem)?;
        tracing::info!("bans on {ports} go to ipsets {} and {}", sets.n4, sets.n6);
        self.scopes.insert(ports.clone(), sets);
        Ok(true)
    }

    /// Puts the rules for every known scope in place; how many families needed repair.
    fn ensure_rules(&mut self) -> Result<usize, IpsetError> {
        if !self.cfg.rules {
            return Ok(0);
        }
        self.rules_ok = false;
        let scopes: Vec<_> = self
            .scopes
            .iter()
            .map(|(p, s)| super::rules::Scope {
                set4: &s.n4,
                set6: &s.n6,
                ports: p,
            })
            .collect();
        let repaired = super::rules::ensure(&scopes, self.cfg.forward).map_err(|reason| IpsetError::Create {
            set: self.cfg.set4.clone(),
            reason: format!("its iptables rules: {reason}"),
        })?;
        self.rules_ok = true;
        Ok(repaired)
    }

    /// Puts the kernel in line with the bans: missing sets, entries and rules come back, and
    /// entries about to outlive the kernel's timeout are refreshed.
    pub fn reconcile(&mut self, now: i64) -> Result<Repairs, IpsetError> {
        let mut r = Repairs::default();
        let mut held = HashMap::new();
        for (ports, sets) in &mut self.scopes {
            r.sets += sets.ensure()?;
            held.insert(ports.clone(), sets.members()?);
        }
        r.rules = self.ensure_rules()?;
        self.until.retain(|_, e| e.until > now);
        for ((net, ports), e) in &mut self.until {
            if e.ending(now) {
                continue;
            }
            r.checked += 1;
            let refresh = e.needs_refresh(now);
            if refresh || !held.get(ports).is_some_and(|h| h.contains(net)) {
                let sets = self.scopes.get_mut(ports).expect("a ban's scope is opened before it is added");
                sets.add(*net, e.renew(now) as u32)?;
                if refresh { r.refreshed += 1 } else { r.entries += 1 }
            }
        }
        Ok(r)
    }

    /// Adds the decision's address (or network) to its scope's set with its ban time as the
    /// entry's timeout; an entry already there is replaced only when the new ban ends later.
    /// Longer bans than the kernel's timeout get the longest it takes and are refreshed.
    pub fn apply(&mut self, d: &Decision, now: i64) -> Result<(), IpsetError> {
        let (entry, timeout) = Entry::new(now, d.ban_for);
        let key = (d.net, d.ports.clone());
        if self.until.get(&key).is_some_and(|e| e.until >= entry.until) {
            return Ok(());
        }
        // A reload or a restored ban may bring a scope the start did not know.
        if self.open_scope(&d.ports)? || (self.cfg.rules && !self.rules_ok) {
            self.ensure_rules()?;
        }
        let sets = self.scopes.get_mut(&d.ports).expect("opened above");
        sets.add(d.net, timeout as u32)?;
        self.until.insert(key, entry);
        // Forget expired entries now and then, not on every ban.
        if self.until.len() >= self.sweep_at {
            self.until.retain(|_, e| e.until > now);
            self.sweep_at = (self.until.len() * 2).max(1024);
        }
        Ok(())
    }

    /// Deletes the entry from every scope's sets (absent is fine: the kernel may have expired it).
    pub fn remove(&mut self, net: IpNet) -> Result<(), IpsetError> {
        self.until.retain(|(n, _), _| *n != net);
        // Every scope is tried; the first failure is reported.
        let mut result = Ok(());
        for sets in self.scopes.values_mut() {
            if let Err(e) = sets.del(net) {
                result = result.and(Err(e));
            }
        }
        result
    }
}

#[cfg(feature = "ipset")]
/// The members of one set: libipset saves it (`add SET MEMBER timeout N` lines) to an in-memory
/// file, read back here.
fn save<T: ipset::types::SetType>(s: &mut Session<T>, set: &str) -> Result<std::collections::HashSet<IpNet>, IpsetError> {
    use std::io::{Read, Seek};
    use std::os::fd::FromRawFd;
    let fail = |reason: String| IpsetError::Create { set: set.into(), reason };
    // SAFETY: memfd_create with a valid, NUL-terminated name; the descriptor is owned by `file`.
    let fd = unsafe { libc::memfd_create(c"mailpipe-ipset".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(fail(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    s.save(format!("/proc/self/fd/{fd}")).map_err(|e| fail(clean(&e)))?;
    let mut text = String::new();
    file.rewind()
        .and_then(|()| file.read_to_string(&mut text))
        .map_err(|e| fail(e.to_string()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("add "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|m| m.parse::<IpNet>().ok().or_else(|| m.parse::<IpAddr>().ok().map(IpNet::from)))
        .collect())
}

#[cfg(feature = "ipset")]
/// A set that already exists is adopted (the boot unit may have created it first); whether it
/// had to be created.
fn adopt(set: &str, created: Result<bool, ipset::types::Error>) -> Result<bool, IpsetError> {
    match created {
        Ok(_) => Ok(true),
        Err(e) if e.to_string().contains("already exists") => Ok(false),
        Err(e) => Err(IpsetError::Create {
            set: set.into(),
            reason: clean(&e),
        }),
    }
}

#[cfg(feature = "ipset")]
/// libipset's message without the crate's `Cmd:['...', true` wrapping.
fn clean(e: &ipset::types::Error) -> String {
    let s = e.to_string();
    let s = s.trim_start_matches("Cmd:['").trim_start_matches("DataSet:['");
    s.split("\n").next().unwrap_or(s).trim().trim_end_matches(['\'', ',']).to_string()
}

#[cfg(feature = "ipset")]
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

/// The ipset sink of a build without libipset: it cannot be opened.
#[cfg(not(feature = "ipset"))]
#[derive(Debug)]
pub struct Ipset(std::convert::Infallible);

#[cfg(not(feature = "ipset"))]
impl Ipset {
    /// Always `IpsetError::Unavailable`.
    pub fn open(_: &IpsetConfig, _: &[Ports]) -> Result<Ipset, IpsetError> {
        Err(IpsetError::Unavailable)
    }

    /// Never called: there is no such sink.
    pub fn reconcile(&mut self, _: i64) -> Result<Repairs, IpsetError> {
        match self.0 {}
    }

    /// Never called: there is no such sink.
    pub fn apply(&mut self, _: &Decision, _: i64) -> Result<(), IpsetError> {
        match self.0 {}
    }

    /// Never called: there is no such sink.
    pub fn remove(&mut self, _: IpNet) -> Result<(), IpsetError> {
        match self.0 {}
    }
}
