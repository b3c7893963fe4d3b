//! Stage 5: who may be banned, for how long.
//!
//! Before counting: addresses in `ignore` are never banned, and IPv6 addresses are aggregated to
//! their network (default /64: one host gets a whole /64 from its ISP), narrowed as far as needed
//! so that no ban ever covers an ignored address. After a jail's threshold: the ban time grows for
//! repeat offenders (`bantime * factor^(n-1)`, capped at `maxtime`, like fail2ban's
//! bantime.increment), and `recidive` bans an address that keeps coming back.
//!
//! Two times come in: a failure's own (placed) time, which windows count by, and the clock's
//! `now` (the wall clock in `run`, the file's clock in `test`), which bans start, end and are
//! checked at: a line's timestamp can never lift a ban or set when one ends.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;
use smallvec::SmallVec;

use crate::ports::Ports;
use crate::primitives::{ConfigError, Dur, Origin, error_in};

/// Escalation for repeat offenders.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Increment {
    /// Multiplier per earlier ban.
    pub factor: f64,
    /// Cap on a ban's length.
    pub maxtime: Dur,
}

/// The cross-jail rule for addresses banned again and again.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recidive {
    /// Bans (any jail) that trigger it ...
    pub bans: u32,
    /// ... within this period.
    pub findtime: Dur,
    /// Its ban time.
    pub bantime: Dur,
}

/// Policy settings of a pipeline file.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// First ban time (a jail may set its own).
    pub bantime: Dur,
    /// Escalation; none: every ban is `bantime`.
    pub increment: Option<Increment>,
    /// Recidive rule; none: off.
    pub recidive: Option<Recidive>,
    /// Addresses and networks never banned.
    pub ignore: Vec<String>,
    /// Reverse proxies whose `X-Forwarded-For` (a rule's `<FORWARDED>`) is believed: a failure
    /// reported by one of them is the client's in that list. Anyone can send the header, so
    /// without this the direct address is banned.
    pub trusted_proxies: Vec<String>,
    /// Prefix IPv6 bans are aggregated to.
    pub ipv6_prefix: u8,
    /// How long an address's ban history is remembered for escalation.
    pub forget: Dur,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            bantime: Dur(3600),
            increment: None,
            recidive: None,
            ignore: vec!["127.0.0.0/8".into(), "::1".into()],
            trusted_proxies: Vec::new(),
            ipv6_prefix: 64,
            forget: Dur(7 * 86400),
        }
    }
}

/// The longest ban anything may ask for (100 years): longer ones are refused, so ban ends
/// never overflow.
pub const MAX_BAN: u64 = Dur::PERMANENT.0;

/// Why a ban is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A jail's maxretry was reached.
    Threshold,
    /// The recidive rule.
    Recidive,
    /// An operator's `mailpipe ban`.
    Manual,
    /// Another node of the fleet decided it (`Decision::node` says which).
    Fleet,
}

impl Reason {
    /// `threshold`, `recidive`, `manual` or `fleet`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Threshold => "threshold",
            Reason::Recidive => "recidive",
            Reason::Manual => "manual",
            Reason::Fleet => "fleet",
        }
    }

    /// The reason a name stands for.
    pub fn from_name(name: &str) -> Option<Reason> {
        [Reason::Threshold, Reason::Recidive, Reason::Manual, Reason::Fleet]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// A ban as the policy remembers it, and the state file stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The address (/32, /128) or network banned.
    pub net: IpNet,
    /// The jail that made it (`recidive`, or the operator's for a manual ban).
    pub jail: Arc<str>,
    /// When it started, by the clock (Unix seconds).
    pub since: i64,
    /// When it ends, by the clock.
    pub until: i64,
    /// Why.
    pub reason: Reason,
    /// Which ban of this address it is (1 = first).
    pub offence: u32,
    /// The ports it drops.
    pub ports: Ports,
}

/// A ban to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The address (/32, /128) or network to ban.
    pub net: IpNet,
    /// Jail name (`recidive` for the recidive rule).
    pub jail: Arc<str>,
    /// Failures that led to it (bans, for recidive).
    pub failures: u32,
    /// Ban length in seconds.
    pub ban_for: u64,
    /// Which ban of this address this is (1 = first).
    pub offence: u32,
    /// Log time of the failure that triggered it (Unix seconds).
    pub time: i64,
    /// When the ban starts, by the clock (Unix seconds).
    pub since: i64,
    /// Why.
    pub reason: Reason,
    /// The IPv6 prefix the ban would have had, when it was narrowed to spare an ignored address.
    pub narrowed_from: Option<u8>,
    /// The ports it drops: the jail's; every port for recidive.
    pub ports: Ports,
    /// The log lines that counted toward it, oldest first, as far as the pipeline keeps them
    /// (only when a sink asks for them: `Pipeline::keep_evidence`).
    pub evidence: Arc<[Box<str>]>,
    /// A ban from the state file applied again at start (its reason and offence are the
    /// original ones).
    pub restored: bool,
    /// The fleet node that decided it, for a ban another node made (`Reason::Fleet`).
    pub node: Option<Arc<str>>,
}

/// What the nodes of a fleet tell each other: their own decisions, unbans and failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shared {
    /// A ban this node decided (threshold, recidive or manual).
    Ban(Decision),
    /// A ban lifted by an operator.
    Unban(IpNet),
    /// A failure this node counted (or will count when it comes back from the fleet).
    Failure(SharedFailure),
}

/// One counted failure, as the fleet shares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFailure {
    /// The jail's name (the same jail on every node).
    pub jail: Arc<str>,
    /// The address, or its IPv6 network, as the policy counts it.
    pub net: IpNet,
    /// The failure's log time (Unix seconds).
    pub time: i64,
    /// Already counted by the node that saw it (the fleet was unreachable then): that node
    /// skips it when it comes back.
    pub counted: bool,
}

impl Decision {
    /// When the ban ends, by the clock.
    pub fn until(&self) -> i64 {
        self.since.saturating_add(self.ban_for as i64)
    }

    /// The ban the policy remembers for this decision.
    pub fn ban(&self) -> Ban {
        Ban {
            net: self.net,
            jail: self.jail.clone(),
            since: self.since,
            until: self.until(),
            reason: self.reason,
            offence: self.offence,
            ports: self.ports.clone(),
        }
    }
}

/// What the policy says of a failing address before counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Count it under this key (the address, or its IPv6 network).
    Count(IpNet),
    /// In `ignore`: never banned.
    Ignored,
    /// Already banned until later: the failure needs no counting.
    Banned,
}

/// An address's (or network's) ban history: (key, offences, last ban by the clock).
pub type History = (IpNet, u32, i64);

#[derive(Debug, Default)]
struct Offences {
    count: u32,
    last: i64,
    /// Ban times (by the clock) within the recidive period.
    recent: VecDeque<i64>,
}

/// The policy stage.
#[derive(Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    ignore: Vec<IpNet>,
    proxies: Vec<IpNet>,
    jails: Vec<JailPolicy>,
    recidive_name: Arc<str>,
    /// Every port, built once: the hot path only clones it (no allocation).
    every: Ports,
    history: HashMap<IpNet, Offences, foldhash::fast::RandomState>,
    /// Active bans per network, one per port scope: one address may be banned from the webmail
    /// by one jail and from SMTP by another.
    banned: HashMap<IpNet, SmallVec<[Ban; 2]>, foldhash::fast::RandomState>,
    /// Ban ends, soonest first; an entry whose ban was replaced or lifted is skipped when it
    /// comes up. Expiring costs only the bans that end, never a scan of all of them.
    ends: BinaryHeap<Reverse<(i64, IpNet, Ports)>>,
    /// Active bans per jail name, kept as bans come and go (metrics read it every batch).
    active: HashMap<Arc<str>, usize>,
    /// The clock at the last history sweep.
    swept: i64,
    /// (address, account) pairs known good, and until when (by the clock).
    trusted: HashMap<IpNet, TrustedAccounts, foldhash::fast::RandomState>,
    /// Pairs in `trusted`.
    trusted_pairs: usize,
}

/// Most (address, account) pairs trusted at once: a success needs a valid password, so only
/// the mail server's own users fill this; beyond it, expired pairs go and new ones wait.
const MAX_TRUSTED: usize = 1_000_000;
/// Longest account name kept for trust (longer names are not trusted).
const MAX_ACCOUNT: usize = 256;

/// The accounts an address is trusted for, and until when.
type TrustedAccounts = SmallVec<[(Box<str>, i64); 1]>;

/// A trusted pair, for the state file: account, address, until when.
pub type Trust = (Box<str>, IpNet, i64);

/// One entry of an address list: an address or network; `@FILE`, a file of them (one per line,
/// `#` comments); or a host name, resolved now (at start and at each reload, never per line).
/// A name that does not resolve is reported and skipped: it must not stop the protection.
fn expand(entry: &str, names: bool) -> Result<Vec<IpNet>, String> {
    let one = |s: &str| s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
    if let Ok(n) = one(entry) {
        return Ok(vec![n]);
    }
    if let Some(path) = entry.strip_prefix('@') {
        // Absolute: a daemon's working directory is `/`, not the file's. A regular file of at
        // most 1 MiB: a FIFO or a device would hang or fill the start.
        if !path.starts_with('/') {
            return Err(format!("{path:?}: an allow-list file is written with its absolute path"));
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.len() <= 1 << 20 => {}
            Ok(_) => return Err(format!("{path} is not a regular file of at most 1 MiB")),
            Err(e) => return Err(format!("cannot read {path}: {e}")),
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        return text
            .lines()
            .enumerate()
            .map(|(i, l)| (i, l.split('#').next().unwrap_or("").trim()))
            .filter(|(_, l)| !l.is_empty())
            .map(|(i, l)| one(l).map_err(|_| format!("{path}:{}: {l:?} is not an address or CIDR network", i + 1)))
            .collect();
    }
    let name_like = !entry.is_empty()
        && entry.len() <= 253
        && entry.bytes().any(|b| b.is_ascii_alphabetic())
        && entry.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !name_like {
        return Err(format!("{entry:?} is not an address, a CIDR network, @FILE or a host name"));
    }
    if !names {
        // Whoever answers the DNS query would choose whose X-Forwarded-For is believed.
        return Err(format!("{entry:?}: write addresses or networks here, not host names"));
    }
    use std::net::ToSocketAddrs;
    match (entry, 0).to_socket_addrs() {
        Ok(addrs) => Ok(addrs.map(|a| IpNet::from(a.ip())).collect()),
        Err(e) => {
            tracing::warn!("{entry} does not resolve ({e}); it is not in the list until a reload resolves it");
            Ok(Vec::new())
        }
    }
}

/// Names bans go by besides the jails': the recidive rule's and the operators'.
pub const BAN_NAMES: [&str; 2] = ["recidive", "manual"];

/// What the policy needs of a jail.
#[derive(Debug, Clone)]
pub struct JailPolicy {
    /// Its name.
    pub name: Arc<str>,
    /// Its first ban time, in seconds.
    pub bantime: u64,
    /// The ports its bans drop.
    pub ports: Ports,
}

/// `net`'s address as bits, for prefix arithmetic (IPv4 in the top 32 bits, unused here).
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Policy {
    /// Builds the policy for jails given as (name, own bantime, ports).
    /// `files` are the files the settings may have come from, most important first (for error
    /// positions).
    pub fn new(cfg: &PolicyConfig, jails: &[(String, Option<Dur>, Ports)], files: &[Origin]) -> Result<Policy, ConfigError> {
        let nets = |list: &[String], field: &str| -> Result<Vec<IpNet>, ConfigError> {
            let mut out = Vec::new();
            for entry in list {
                let at = |why: String| error_in(files, &[&format!("\"{entry}\"")], format!("{field}: {why}"));
                for n in expand(entry, field == "ignore").map_err(at)? {
                    out.push(
                        match n.addr().to_canonical() {
                            // `::ffff:192.0.2.1` is an IPv4 address, and so is its ignore entry.
                            IpAddr::V4(v4) if n.addr().is_ipv6() => IpNet::new(v4.into(), n.prefix_len().saturating_sub(96)).unwrap_or(n),
                            _ => n,
                        }
                        .trunc(),
                    );
                }
            }
            Ok(out)
        };
        let ignore = nets(&cfg.ignore, "ignore")?;
        let proxies = nets(&cfg.trusted_proxies, "trusted_proxies")?;
        if !(1..=128).contains(&cfg.ipv6_prefix) {
            return Err(error_in(files, &["ipv6_prefix"], "ipv6_prefix must be 1..=128"));
        }
        if let Some(inc) = cfg.increment
            && !(inc.factor >= 1.0 && inc.factor.is_finite())
        {
            return Err(error_in(files, &["factor"], "increment factor must be a number >= 1"));
        }
        let lengths = [("bantime", Some(cfg.bantime)), ("maxtime", cfg.increment.map(|i| i.maxtime))]
            .into_iter()
            .chain(cfg.recidive.iter().map(|r| ("bantime", Some(r.bantime))))
            .chain(jails.iter().map(|(_, b, _)| ("bantime", *b)));
        for (field, d) in lengths {
            if let Some(d) = d
                && !(1..=MAX_BAN).contains(&d.secs())
            {
                return Err(error_in(
                    files,
                    &[field],
                    format!("{field}: a ban lasts from 1 s to 100 years (got {} s)", d.secs()),
                ));
            }
        }
        let jails = jails
            .iter()
            .map(|(n, b, ports)| JailPolicy {
                name: Arc::from(n.as_str()),
                bantime: b.unwrap_or(cfg.bantime).secs(),
                ports: ports.clone(),
            })
            .collect();
        Ok(Policy {
            cfg: cfg.clone(),
            ignore,
            proxies,
            jails,
            recidive_name: Arc::from("recidive"),
            every: Ports::every(),
            history: HashMap::default(),
            banned: HashMap::default(),
            ends: BinaryHeap::new(),
            active: HashMap::new(),
            swept: i64::MIN,
            trusted: HashMap::default(),
            trusted_pairs: 0,
        })
    }

    /// The key `ip` is counted and banned under (itself, or its IPv6 network).
    pub fn key_of(&self, ip: IpAddr) -> IpNet {
        self.key(ip.to_canonical()).0
    }

    /// Remembers `key` as a known-good address of `account` until `until`; false when nothing
    /// changed (already trusted as long, or no room).
    pub fn trust(&mut self, account: &str, key: IpNet, until: i64, now: i64) -> bool {
        if account.is_empty() || account.len() > MAX_ACCOUNT {
            return false;
        }
        if let Some(pairs) = self.trusted.get_mut(&key)
            && let Some(p) = pairs.iter_mut().find(|(a, _)| &**a == account)
        {
            let longer = until > p.1;
            p.1 = p.1.max(until);
            return longer;
        }
        if self.trusted_pairs >= MAX_TRUSTED {
            self.trusted.retain(|_, pairs| {
                pairs.retain(|(_, t)| *t > now);
                !pairs.is_empty()
            });
            self.trusted_pairs = self.trusted.values().map(|p| p.len()).sum();
            if self.trusted_pairs >= MAX_TRUSTED {
                return false;
            }
        }
        self.trusted.entry(key).or_default().push((account.into(), until));
        self.trusted_pairs += 1;
        true
    }

    /// Until when `key`'s longest-trusted account is trusted, if any is.
    pub fn trusted_until(&self, key: IpNet) -> Option<i64> {
        self.trusted.get(&key)?.iter().map(|(_, t)| *t).max()
    }

    /// Whether `key` is a known-good address of `account` at `now`.
    pub fn is_trusted(&self, account: &str, key: IpNet, now: i64) -> bool {
        self.trusted
            .get(&key)
            .is_some_and(|pairs| pairs.iter().any(|(a, t)| &**a == account && *t > now))
    }

    /// Every trusted pair still good at `now` (a reload carries them over).
    pub fn trusts(&self, now: i64) -> Vec<Trust> {
        self.trusted
            .iter()
            .flat_map(|(k, pairs)| pairs.iter().filter(|(_, t)| *t > now).map(|(a, t)| (a.clone(), *k, *t)))
            .collect()
    }

    /// Ignore check and aggregation, before a failure for `jail` is counted; `now` is the clock.
    pub fn admit(&mut self, ip: IpAddr, jail: u16, now: i64) -> Admit {
        self.expire(now);
        self.verdict(ip, jail)
    }

    /// `admit` in two steps, for a line several jails match: the key `ip` is counted under
    /// (`None`: ignored), once; then, per jail, whether a ban already holds it (`banned_in`).
    pub fn admit_key(&mut self, ip: IpAddr, now: i64) -> Option<IpNet> {
        self.expire(now);
        self.counted_as(ip)
    }

    /// The key `ip` is counted under; `None` when it is ignored.
    fn counted_as(&self, ip: IpAddr) -> Option<IpNet> {
        let ip = ip.to_canonical();
        (!self.is_ignored(ip)).then(|| self.key(ip).0)
    }

    /// Whether a ban already drops `jail`'s ports for `key`.
    pub fn banned_in(&self, key: IpNet, jail: u16) -> bool {
        self.banned_for(key, &self.jails[jail as usize].ports)
    }

    /// `admit` without expiring anything (for `explain`). An address is already banned for a
    /// jail when a ban on its ports, or on every port, holds it.
    pub fn verdict(&self, ip: IpAddr, jail: u16) -> Admit {
        match self.counted_as(ip) {
            None => Admit::Ignored,
            Some(key) if self.banned_in(key, jail) => Admit::Banned,
            Some(key) => Admit::Count(key),
        }
    }

    /// Whether a ban on `key` already drops `ports`.
    fn banned_for(&self, key: IpNet, ports: &Ports) -> bool {
        // One lookup on the hot path, then the network's few bans.
        self.banned.get(&key).is_some_and(|v| v.iter().any(|b| b.ports.covers(ports)))
    }

    /// The ports `jail`'s bans drop.
    pub fn jail_ports(&self, jail: u16) -> &Ports {
        &self.jails[jail as usize].ports
    }

    /// The jails a ban on `ports` covers (their counting for the address can stop).
    pub fn jails_covered(&self, ports: &Ports) -> impl Iterator<Item = u16> + '_ {
        let ports = ports.clone();
        self.jails
            .iter()
            .enumerate()
            .filter(move |(_, j)| ports.covers(&j.ports))
            .map(|(i, _)| i as u16)
    }

    /// Who a failure is: `direct`, or, when `direct` is a trusted proxy, the client it names in
    /// `forwarded`: the list is read from its end, where each trusted proxy appended the address
    /// it saw, skipping trusted proxies; what a client wrote itself (the list's start) is never
    /// reached. `None` when a trusted proxy names no usable client: banning the proxy would shut
    /// out everyone behind it.
    pub fn client(&self, direct: IpAddr, forwarded: Option<&str>) -> Option<IpAddr> {
        let trusted = |ip: &IpAddr| self.proxies.iter().any(|n| n.contains(ip));
        if !trusted(&direct) {
            return Some(direct);
        }
        let list = forwarded?;
        for entry in list.rsplit(',').map(str::trim) {
            let ip = entry.parse::<IpAddr>().ok()?.to_canonical();
            if !trusted(&ip) {
                return Some(ip);
            }
        }
        None
    }

    /// How long ban history is kept, in seconds.
    pub fn forget_after(&self) -> i64 {
        self.cfg.forget.secs() as i64
    }

    /// The first ban time.
    pub fn bantime(&self) -> u64 {
        self.cfg.bantime.secs()
    }

    /// Whether `ip` is in `ignore`.
    pub fn is_ignored(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ignore.iter().any(|n| n.contains(&ip))
    }

    /// The key an address is counted and banned under: itself for IPv4; for IPv6 its network
    /// of `ipv6_prefix` bits, or a longer one if that would hold an ignored address or
    /// network (then also the prefix it was narrowed from).
    fn key(&self, ip: IpAddr) -> (IpNet, Option<u8>) {
        let IpAddr::V6(_) = ip else {
            return (IpNet::from(ip), None);
        };
        let wanted = self.cfg.ipv6_prefix;
        let mut prefix = wanted;
        for n in self.ignore.iter().filter(|n| n.addr().is_ipv6() && !n.contains(&ip)) {
            // The network of length p around `ip` holds `n` exactly when p <= the bits they share.
            let shared = (bits(ip) ^ bits(n.network())).leading_zeros().min(u32::from(n.prefix_len())) as u8;
            if shared >= prefix {
                prefix = shared + 1;
            }
        }
        let net = IpNet::new(ip, prefix).map_or(IpNet::from(ip), |n| n.trunc());
        (net, (prefix != wanted).then_some(wanted))
    }

    /// A jail's threshold was reached for `key` at line time `time`, clock `now`: the ban, and a
    /// recidive ban if due.
    pub fn decide(&mut self, jail: u16, key: IpNet, failures: u32, time: i64, now: i64, out: &mut Vec<Decision>) {
        self.expire(now);
        let JailPolicy {
            name,
            bantime: base,
            ports,
        } = self.jails[jail as usize].clone();
        let offence = self.offend(key, now);
        let ban_for = match self.cfg.increment {
            // A permanent ban is not shortened to `maxtime`.
            Some(_) if base >= MAX_BAN => base,
            Some(inc) => {
                let f = inc.factor.powi(offence.saturating_sub(1).min(64) as i32);
                ((base as f64 * f).min(inc.maxtime.secs() as f64)) as u64
            }
            None => base,
        };
        let narrowed_from = match key.addr() {
            IpAddr::V6(_) if key.prefix_len() != self.cfg.ipv6_prefix => Some(self.cfg.ipv6_prefix),
            _ => None,
        };
        let mut decision = Decision {
            net: key,
            jail: name,
            failures,
            ban_for,
            offence,
            time,
            since: now,
            reason: Reason::Threshold,
            narrowed_from,
            ports,
            evidence: Arc::default(),
            restored: false,
            node: None,
        };
        if let Some(r) = self.cfg.recidive {
            let h = self.history.get_mut(&key).expect("offend inserted it");
            h.recent.push_back(now);
            while h.recent.front().is_some_and(|&t| t <= now - r.findtime.secs() as i64) {
                h.recent.pop_front();
            }
            if h.recent.len() as u32 >= r.bans {
                let bans = h.recent.len() as u32;
                h.recent.clear();
                // Both bans are applied and saved; remember both, as a restart would.
                self.insert(decision.ban());
                out.push(decision.clone());
                decision = Decision {
                    jail: self.recidive_name.clone(),
                    failures: bans,
                    ban_for: r.bantime.secs().max(ban_for),
                    reason: Reason::Recidive,
                    ports: self.every.clone(),
                    ..decision
                };
            }
        }
        self.insert(decision.ban());
        out.push(decision);
    }

    /// `key`'s ban history at `now`: started over when older than `forget`.
    fn history_of(&mut self, key: IpNet, now: i64) -> &mut Offences {
        let forget = self.forget_after();
        let h = self.history.entry(key).or_default();
        if h.count > 0 && now - h.last > forget {
            *h = Offences::default();
        }
        h
    }

    /// Counts one more offence of `key` at `now` (history older than `forget` starts over).
    fn offend(&mut self, key: IpNet, now: i64) -> u32 {
        let h = self.history_of(key, now);
        h.count += 1;
        h.last = now;
        h.count
    }

    /// An operator's ban of `ip` (its IPv6 network) for `ban_for` seconds from `now`, on the
    /// ports of the jail it names, or every port; refused for an address in `ignore` unless
    /// `force`, which then bans that one address only.
    pub fn manual_ban(&mut self, ip: IpAddr, jail: &str, ban_for: u64, now: i64, force: bool) -> Result<Decision, String> {
        if !(1..=MAX_BAN).contains(&ban_for) {
            return Err(format!("a ban lasts from 1 s to 100 years (asked for {ban_for} s)"));
        }
        let ip = ip.to_canonical();
        let (key, narrowed_from) = match (self.is_ignored(ip), force) {
            (true, false) => return Err(format!("{ip} is in policy.ignore: never banned (use --force to ban it anyway)")),
            (true, true) => (IpNet::from(ip), None),
            (false, _) => self.key(ip),
        };
        self.expire(now);
        let offence = self.offend(key, now);
        let d = Decision {
            net: key,
            jail: Arc::from(jail),
            failures: 0,
            ban_for,
            offence,
            time: now,
            since: now,
            reason: Reason::Manual,
            narrowed_from,
            ports: self
                .jails
                .iter()
                .find(|j| &*j.name == jail)
                .map_or_else(|| self.every.clone(), |j| j.ports.clone()),
            evidence: Arc::default(),
            restored: false,
            node: None,
        };
        self.insert(d.ban());
        Ok(d)
    }

    /// A ban another node of the fleet decided: recorded with its history, so that escalation
    /// and recidive here see it. False when this node already holds that ban (its own decision
    /// on the same failures, or the event seen twice), when it is over, or when it would cover
    /// an address this node never bans: nothing to apply.
    pub fn fleet_ban(&mut self, d: &Decision, now: i64) -> bool {
        self.expire(now);
        let until = d.until();
        let covers_ignored = self
            .ignore
            .iter()
            .any(|i| i.contains(&d.net.network()) || d.net.contains(&i.network()));
        if until <= now
            || covers_ignored
            || self
                .banned
                .get(&d.net)
                .is_some_and(|bans| bans.iter().any(|b| b.ports == d.ports && b.until >= until))
        {
            return false;
        }
        // Recidive counts the jails' bans, not its own.
        let for_recidive = d.jail != self.recidive_name && self.cfg.recidive.is_some();
        let h = self.history_of(d.net, now);
        h.count = h.count.max(d.offence);
        h.last = now;
        if for_recidive {
            h.recent.push_back(d.since);
        }
        self.insert(d.ban());
        true
    }

    /// Records an active ban (replacing one of the same network and ports).
    fn insert(&mut self, ban: Ban) {
        self.ends.push(Reverse((ban.until, ban.net, ban.ports.clone())));
        *self.active.entry(ban.jail.clone()).or_default() += 1;
        let bans = self.banned.entry(ban.net).or_default();
        match bans.iter_mut().find(|b| b.ports == ban.ports) {
            Some(old) => {
                let old = std::mem::replace(old, ban);
                self.forget_active(&old.jail);
            }
            None => bans.push(ban),
        }
    }

    fn forget_active(&mut self, jail: &Arc<str>) {
        if let Some(n) = self.active.get_mut(jail) {
            *n = n.saturating_sub(1);
        }
    }

    /// Lifts the bans on `ip`, on every port scope: those of the network it is counted under,
    /// or else of any network holding it. The network lifted, if there was one.
    pub fn unban(&mut self, ip: IpAddr) -> Option<IpNet> {
        let ip = ip.to_canonical();
        let key = self.key(ip).0;
        let net = if self.banned.contains_key(&key) {
            key
        } else {
            *self.banned.keys().find(|n| n.contains(&ip))?
        };
        for old in self.banned.remove(&net).into_iter().flatten() {
            self.forget_active(&old.jail);
        }
        Some(net)
    }

    /// Ends the bans whose time is up at `now`; sweeps forgotten histories once an hour.
    pub fn expire(&mut self, now: i64) {
        while let Some(Reverse((until, _, _))) = self.ends.peek() {
            if *until > now {
                break;
            }
            let Reverse((until, net, ports)) = self.ends.pop().expect("just seen");
            let Some(bans) = self.banned.get_mut(&net) else { continue };
            if let Some(i) = bans.iter().position(|b| b.ports == ports && b.until == until) {
                let old = bans.swap_remove(i);
                if bans.is_empty() {
                    self.banned.remove(&net);
                }
                self.forget_active(&old.jail);
            }
        }
        // The file's clock may go back (a second file): sweep from there on.
        if now >= self.swept.saturating_add(3600) || now < self.swept {
            self.swept = now;
            let forget = self.forget_after();
            self.history.retain(|_, h| now - h.last <= forget);
        }
    }

    /// Takes back bans and ban history saved before a restart (or carried over a reload).
    pub fn restore(&mut self, bans: &[Ban], history: &[History]) {
        for b in bans {
            self.insert(b.clone());
        }
        for &(net, count, last) in history {
            let h = self.history.entry(net).or_default();
            h.count = h.count.max(count);
            h.last = h.last.max(last);
        }
    }

    /// Every remembered ban history, for a reload.
    pub fn histories(&self) -> Vec<History> {
        self.history.iter().map(|(&net, h)| (net, h.count, h.last)).collect()
    }

    /// Active bans per jail name (cheap: kept as bans come and go; `expire` first).
    pub fn active(&self, jail: &str) -> usize {
        self.active.get(jail).copied().unwrap_or(0)
    }

    /// Every active ban (`expire` first), soonest end first.
    pub fn bans(&self) -> Vec<&Ban> {
        let mut v: Vec<&Ban> = self.banned.values().flatten().collect();
        v.sort_by_key(|b| (b.until, b.net));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(cfg: PolicyConfig) -> Policy {
        let origin = Origin {
            file: "t".into(),
            text: "".into(),
        };
        Policy::new(&cfg, &[("j".into(), None, Ports::mail())], std::slice::from_ref(&origin)).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ignoring(list: &[&str]) -> PolicyConfig {
        PolicyConfig {
            ignore: list.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ignore_and_ipv6_aggregation() {
        let mut p = policy(ignoring(&["127.0.0.0/8", "::1", "192.0.2.0/24"]));
        assert_eq!(p.admit(ip("127.0.0.2"), 0, 0), Admit::Ignored);
        assert_eq!(p.admit(ip("::1"), 0, 0), Admit::Ignored);
        assert_eq!(p.admit(ip("192.0.2.200"), 0, 0), Admit::Ignored);
        assert_eq!(p.admit(ip("::ffff:192.0.2.200"), 0, 0), Admit::Ignored, "IPv4-mapped is IPv4");
        assert_eq!(p.admit(ip("2001:db8:1:0:aa::5"), 0, 0), Admit::Count(net("2001:db8:1::/64")));
        assert_eq!(p.admit(ip("198.51.100.1"), 0, 0), Admit::Count(net("198.51.100.1/32")));
    }

    #[test]
    fn a_prefix_ban_never_covers_an_ignored_address() {
        let mut p = policy(ignoring(&["2001:db8:1:2::10", "2001:db8:7::/48"]));
        // The /64 holds ::10: narrowed to the largest network around ::99 that does not.
        let Admit::Count(key) = p.admit(ip("2001:db8:1:2::99"), 0, 0) else {
            panic!()
        };
        assert_eq!(key, net("2001:db8:1:2::80/121"));
        assert!(!key.contains(&ip("2001:db8:1:2::10")));
        // Down to the single address when they differ only in the last bit.
        let Admit::Count(key) = p.admit(ip("2001:db8:1:2::11"), 0, 0) else {
            panic!()
        };
        assert_eq!(key, net("2001:db8:1:2::11/128"));
        // An ignored network wider than the /64 is ignored outright; one inside a /64 narrows.
        assert_eq!(p.admit(ip("2001:db8:7:5::1"), 0, 0), Admit::Ignored);
        let mut out = Vec::new();
        p.decide(0, net("2001:db8:1:2::80/121"), 5, 0, 0, &mut out);
        assert_eq!(out[0].narrowed_from, Some(64));
        // The operator's ban narrows the same way, and an IPv4-mapped address is IPv4.
        let d = p.manual_ban(ip("2001:db8:1:2::99"), "manual", 60, 0, false).unwrap();
        assert_eq!((d.net, d.narrowed_from), (net("2001:db8:1:2::80/121"), Some(64)));
        let d = p.manual_ban(ip("::ffff:198.51.100.99"), "manual", 60, 0, false).unwrap();
        assert_eq!(d.net, net("198.51.100.99/32"));
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        let p = policy(PolicyConfig {
            trusted_proxies: vec!["10.0.0.0/8".into()],
            ..Default::default()
        });
        // A proxy we trust: the client it saw, past further trusted proxies, never what the
        // client wrote at the start of the list itself.
        assert_eq!(p.client(ip("10.0.0.2"), Some("2.42.23.100")), Some(ip("2.42.23.100")));
        assert_eq!(
            p.client(ip("10.0.0.2"), Some("6.6.6.6, 198.51.100.40, 10.0.0.3")),
            Some(ip("198.51.100.40"))
        );
        assert_eq!(p.client(ip("10.0.0.2"), Some("10.0.0.3")), None, "never the proxy itself");
        assert_eq!(p.client(ip("10.0.0.2"), None), None);
        assert_eq!(p.client(ip("10.0.0.2"), Some("garbage, 198.51.100.40")), Some(ip("198.51.100.40")));
        // Anyone else: the header is theirs to write, so the direct address counts.
        assert_eq!(p.client(ip("198.51.100.9"), Some("192.0.2.1")), Some(ip("198.51.100.9")));
    }

    #[test]
    fn escalation_and_cap() {
        let mut p = policy(PolicyConfig {
            increment: Some(Increment {
                factor: 2.0,
                maxtime: Dur(5 * 3600),
            }),
            ..Default::default()
        });
        let mut out = Vec::new();
        for (n, t) in [0i64, 10_000, 20_000, 30_000, 40_000].into_iter().enumerate() {
            let t = t + 86_400 * n as i64;
            p.decide(0, net("198.51.100.1/32"), 5, t, t, &mut out);
        }
        let bans: Vec<_> = out.iter().map(|d| (d.offence, d.ban_for)).collect();
        assert_eq!(bans, vec![(1, 3600), (2, 7200), (3, 14400), (4, 18000), (5, 18000)]);
    }

    #[test]
    fn fleet_bans_count_for_escalation_and_are_applied_once() {
        let mut p = policy(PolicyConfig {
            increment: Some(Increment {
                factor: 2.0,
                maxtime: Dur(86400),
            }),
            ignore: vec!["192.0.2.0/24".into()],
            ..Default::default()
        });
        let mut out = Vec::new();
        p.decide(0, net("198.51.100.1/32"), 5, 0, 0, &mut out);
        let mut fleet = Decision {
            offence: 3,
            since: 4000,
            reason: Reason::Fleet,
            node: Some("mx2".into()),
            ..out.pop().unwrap()
        };
        assert!(p.fleet_ban(&fleet, 4000));
        assert!(!p.fleet_ban(&fleet, 4001), "held already");
        assert_eq!(p.admit(ip("198.51.100.1"), 0, 4001), Admit::Banned);
        // Its next ban here is the fourth: the fleet's third counted.
        p.decide(0, net("198.51.100.1/32"), 5, 9000, 9000, &mut out);
        assert_eq!((out[0].offence, out[0].ban_for), (4, 8 * 3600));
        fleet.net = net("192.0.2.0/23");
        assert!(!p.fleet_ban(&fleet, 9000), "never over an ignored address");
        fleet.net = net("203.0.113.0/24");
        fleet.since = 0;
        assert!(!p.fleet_ban(&fleet, 9000), "over already");
    }

    #[test]
    fn bans_follow_the_clock_not_the_line() {
        let mut p = policy(PolicyConfig::default());
        let mut out = Vec::new();
        // Triggered by a line two hours old: the ban still runs an hour from now.
        p.decide(0, net("198.51.100.1/32"), 5, 100 - 7200, 100, &mut out);
        assert_eq!((out[0].since, out[0].until(), out[0].time), (100, 3700, 100 - 7200));
        assert_eq!(p.admit(ip("198.51.100.1"), 0, 200), Admit::Banned);
        assert_eq!(p.active("j"), 1);
        assert_eq!(p.admit(ip("198.51.100.1"), 0, 3700), Admit::Count(net("198.51.100.1/32")));
        assert_eq!(p.active("j"), 0, "expired bans leave the count");
    }

    #[test]
    fn manual_ban_respects_ignore_bounds_and_unban_lifts() {
        let mut p = policy(PolicyConfig::default());
        assert!(p.manual_ban(ip("127.0.0.1"), "manual", 60, 0, false).is_err());
        assert!(p.manual_ban(ip("127.0.0.1"), "manual", 60, 0, true).is_ok());
        assert!(p.manual_ban(ip("192.0.2.1"), "manual", 0, 0, false).is_err(), "0 s is no ban");
        assert!(
            p.manual_ban(ip("192.0.2.1"), "manual", u64::MAX, 0, false).is_err(),
            "no overflow into the past"
        );
        let d = p.manual_ban(ip("2001:db8::7"), "manual", 60, 0, false).unwrap();
        assert_eq!((d.net, d.reason), (net("2001:db8::/64"), Reason::Manual));
        assert_eq!(p.admit(ip("2001:db8::9"), 0, 10), Admit::Banned);
        assert_eq!(p.bans().len(), 2);
        assert_eq!(p.unban(ip("2001:db8::1")), Some(net("2001:db8::/64")));
        assert_eq!(p.admit(ip("2001:db8::9"), 0, 10), Admit::Count(net("2001:db8::/64")));
    }

    #[test]
    fn each_jail_bans_on_its_own_ports() {
        let origin = Origin {
            file: "t".into(),
            text: "".into(),
        };
        let web = Ports::resolve(&[crate::ports::PortSpec::Name("http,https".into())], |_| None).unwrap();
        let smtp = Ports::resolve(&[crate::ports::PortSpec::Number(25)], |_| None).unwrap();
        let jails = [("web".into(), None, web.clone()), ("smtp".into(), None, smtp.clone())];
        let mut p = Policy::new(&PolicyConfig::default(), &jails, std::slice::from_ref(&origin)).unwrap();
        let mut out = Vec::new();
        p.decide(0, net("198.51.100.1/32"), 5, 0, 0, &mut out);
        assert_eq!(out[0].ports, web);
        // Banned from the webmail, still counted (and bannable) for SMTP.
        assert_eq!(p.admit(ip("198.51.100.1"), 0, 1), Admit::Banned);
        assert_eq!(p.admit(ip("198.51.100.1"), 1, 1), Admit::Count(net("198.51.100.1/32")));
        p.decide(1, net("198.51.100.1/32"), 5, 1, 1, &mut out);
        assert_eq!((out[1].ports.clone(), p.bans().len()), (smtp.clone(), 2));
        assert_eq!(p.jails_covered(&smtp).collect::<Vec<_>>(), vec![1]);
        // A manual ban names a jail's ports, or takes every port; unban lifts every scope.
        assert_eq!(p.manual_ban(ip("192.0.2.9"), "web", 60, 2, false).unwrap().ports, web);
        let all = p.manual_ban(ip("192.0.2.8"), "manual", 60, 2, false).unwrap();
        assert!(all.ports.is_every());
        assert_eq!(p.admit(ip("192.0.2.8"), 1, 3), Admit::Banned);
        assert_eq!(p.unban(ip("198.51.100.1")), Some(net("198.51.100.1/32")));
        assert_eq!(p.bans().len(), 2);
    }

    #[test]
    fn recidive_after_n_bans() {
        let mut p = policy(PolicyConfig {
            recidive: Some(Recidive {
                bans: 3,
                findtime: Dur(86_400),
                bantime: Dur(86_400),
            }),
            ..Default::default()
        });
        let mut out = Vec::new();
        for t in [0, 4000, 8000] {
            p.decide(0, net("198.51.100.1/32"), 5, t, t, &mut out);
        }
        let last: Vec<_> = out.iter().map(|d| (&*d.jail, d.reason)).collect();
        assert_eq!(
            last,
            vec![
                ("j", Reason::Threshold),
                ("j", Reason::Threshold),
                ("j", Reason::Threshold),
                ("recidive", Reason::Recidive)
            ]
        );
        assert_eq!(out[3].ban_for, 86_400);
        assert!(out[3].ports.is_every(), "recidive bans every port");
    }

    #[test]
    fn ignore_lists_take_files_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("allow.txt");
        std::fs::write(&file, "# the office\n192.0.2.0/24\n\n2001:db8::1 # admin\n").unwrap();
        let got = expand(&format!("@{}", file.display()), true).unwrap();
        assert_eq!(got, vec![net("192.0.2.0/24"), net("2001:db8::1/128")]);
        assert!(expand("localhost", true).unwrap().iter().any(|n| n.addr().is_loopback()));
        assert!(expand("@/nonexistent/allow.txt", true).unwrap_err().contains("cannot read"));
        std::fs::write(&file, "192.0.2.0/24\nnot an address\n").unwrap();
        assert!(expand(&format!("@{}", file.display()), true).unwrap_err().contains("allow.txt:2:"));
        assert!(expand("no such thing!", true).is_err());
        assert!(expand("localhost", false).unwrap_err().contains("not host names"));
        assert!(expand("@allow.txt", true).unwrap_err().contains("absolute"));
        assert!(expand("@/dev/zero", true).unwrap_err().contains("regular file"));
    }

    #[test]
    fn bad_values_are_config_errors() {
        let origin = Origin {
            file: "p.ron".into(),
            text: "Pipeline(policy: (ignore: [\"10.0.0/8\"]))".into(),
        };
        let e = Policy::new(&ignoring(&["10.0.0/8"]), &[], std::slice::from_ref(&origin)).unwrap_err();
        assert_eq!((e.line, e.col), (1, 28));
        let long = PolicyConfig {
            bantime: Dur(MAX_BAN + 1),
            ..Default::default()
        };
        assert!(
            Policy::new(&long, &[], std::slice::from_ref(&origin))
                .unwrap_err()
                .reason
                .contains("100 years")
        );
    }
}
