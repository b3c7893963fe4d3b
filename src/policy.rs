//! Stage 5: who may be banned, for how long.
//!
//! Before counting: addresses in `ignore` are never banned, and IPv6 addresses are aggregated to
//! their network (default /64: one host gets a whole /64 from its ISP). After a jail's threshold:
//! the ban time grows for repeat offenders (`bantime * factor^(n-1)`, capped at `maxtime`, like
//! fail2ban's bantime.increment), and `recidive` bans an address that keeps coming back.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::{ConfigError, Dur, Origin};

/// Escalation for repeat offenders.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Increment {
    /// Multiplier per earlier ban.
    pub factor: f64,
    /// Cap on a ban's length.
    pub maxtime: Dur,
}

/// The cross-jail rule for addresses banned again and again.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
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
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
            ipv6_prefix: 64,
            forget: Dur(7 * 86400),
        }
    }
}

/// Why a ban is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A jail's maxretry was reached.
    Threshold,
    /// The recidive rule.
    Recidive,
    /// An operator's `mailpipe ban`.
    Manual,
}

/// An active ban as the policy remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// When it ends (Unix seconds).
    pub until: i64,
    /// The jail that made it.
    pub jail: Arc<str>,
}

/// A ban to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The address, or for aggregated IPv6 the network address.
    pub ip: IpAddr,
    /// Prefix length (32 for IPv4, `ipv6_prefix` for IPv6).
    pub prefix: u8,
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
    /// Why.
    pub reason: Reason,
}

/// What the policy says of a failing address before counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Count it under this key (the address, or its IPv6 network).
    Count(IpAddr),
    /// In `ignore`: never banned.
    Ignored,
    /// Already banned until later: the failure needs no counting.
    Banned,
}

#[derive(Debug, Default)]
struct History {
    offences: u32,
    last: i64,
    /// Ban times within the recidive period.
    recent: VecDeque<i64>,
}

/// The policy stage.
#[derive(Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    ignore: Vec<IpNet>,
    jails: Vec<(Arc<str>, u64)>,
    recidive_name: Arc<str>,
    history: HashMap<IpAddr, History, foldhash::fast::RandomState>,
    banned: HashMap<IpAddr, Ban, foldhash::fast::RandomState>,
    next_sweep: i64,
}

impl Policy {
    /// Builds the policy for jails given as (name, own bantime).
    pub fn new(cfg: &PolicyConfig, jails: &[(String, Option<Dur>)], origin: &Origin) -> Result<Policy, ConfigError> {
        let ignore = cfg
            .ignore
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| origin.error_at(&[&format!("\"{s}\"")], format!("ignore: {s:?} is not an address or CIDR network")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !(1..=128).contains(&cfg.ipv6_prefix) {
            return Err(origin.error_at(&["ipv6_prefix"], "ipv6_prefix must be 1..=128"));
        }
        if let Some(inc) = cfg.increment
            && !(inc.factor >= 1.0 && inc.factor.is_finite())
        {
            return Err(origin.error_at(&["factor"], "increment factor must be a number >= 1"));
        }
        let jails = jails
            .iter()
            .map(|(n, b)| (Arc::from(n.as_str()), b.unwrap_or(cfg.bantime).secs()))
            .collect();
        Ok(Policy {
            cfg: cfg.clone(),
            ignore,
            jails,
            recidive_name: Arc::from("recidive"),
            history: HashMap::default(),
            banned: HashMap::default(),
            next_sweep: i64::MIN,
        })
    }

    /// Ignore check and aggregation, before a failure is counted.
    pub fn admit(&self, ip: IpAddr, time: i64) -> Admit {
        if self.ignore.iter().any(|n| n.contains(&ip)) {
            return Admit::Ignored;
        }
        let key = self.key(ip);
        match self.banned.get(&key) {
            Some(b) if b.until > time => Admit::Banned,
            _ => Admit::Count(key),
        }
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
        self.ignore.iter().any(|n| n.contains(&ip))
    }

    fn key(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(_) => IpNet::new(ip, self.cfg.ipv6_prefix).map_or(ip, |n| n.network()),
        }
    }

    fn prefix(&self, key: IpAddr) -> u8 {
        if key.is_ipv4() { 32 } else { self.cfg.ipv6_prefix }
    }

    /// A jail's threshold was reached for `key` at `time`: the ban, and a recidive ban if due.
    pub fn decide(&mut self, jail: u16, key: IpAddr, failures: u32, time: i64, out: &mut Vec<Decision>) {
        self.sweep(time);
        let (name, base) = self.jails[jail as usize].clone();
        let forget = self.cfg.forget.secs() as i64;
        let h = self.history.entry(key).or_default();
        if h.offences > 0 && time - h.last > forget {
            *h = History::default();
        }
        h.offences += 1;
        h.last = time;
        let ban_for = match self.cfg.increment {
            Some(inc) => {
                let f = inc.factor.powi(h.offences.saturating_sub(1).min(64) as i32);
                ((base as f64 * f).min(inc.maxtime.secs() as f64)) as u64
            }
            None => base,
        };
        let offence = h.offences;
        let mut decision = Decision {
            ip: key,
            prefix: self.prefix(key),
            jail: name,
            failures,
            ban_for,
            offence,
            time,
            reason: Reason::Threshold,
        };
        if let Some(r) = self.cfg.recidive {
            let h = self.history.get_mut(&key).expect("inserted above");
            h.recent.push_back(time);
            while h.recent.front().is_some_and(|&t| t <= time - r.findtime.secs() as i64) {
                h.recent.pop_front();
            }
            if h.recent.len() as u32 >= r.bans {
                let bans = h.recent.len() as u32;
                h.recent.clear();
                out.push(decision.clone());
                decision = Decision {
                    jail: self.recidive_name.clone(),
                    failures: bans,
                    ban_for: r.bantime.secs().max(ban_for),
                    reason: Reason::Recidive,
                    ..decision
                };
            }
        }
        let ban = Ban {
            until: time.saturating_add(decision.ban_for as i64),
            jail: decision.jail.clone(),
        };
        self.banned.insert(key, ban);
        out.push(decision);
    }

    /// An operator's ban of `ip` (its IPv6 network) for `ban_for` seconds; refused for an
    /// address in `ignore` unless `force`.
    pub fn manual_ban(&mut self, ip: IpAddr, jail: &str, ban_for: u64, now: i64, force: bool) -> Result<Decision, String> {
        if self.is_ignored(ip) && !force {
            return Err(format!("{ip} is in policy.ignore: never banned (use --force to ban it anyway)"));
        }
        let key = self.key(ip);
        let prefix = self.prefix(key);
        let h = self.history.entry(key).or_default();
        h.offences += 1;
        h.last = now;
        let offence = h.offences;
        let jail: Arc<str> = Arc::from(jail);
        self.banned.insert(
            key,
            Ban {
                until: now.saturating_add(ban_for as i64),
                jail: jail.clone(),
            },
        );
        Ok(Decision {
            ip: key,
            prefix,
            jail,
            failures: 0,
            ban_for,
            offence,
            time: now,
            reason: Reason::Manual,
        })
    }

    /// Lifts the ban on `ip` (its IPv6 network); the key and prefix if there was one.
    pub fn unban(&mut self, ip: IpAddr) -> Option<(IpAddr, u8)> {
        let key = self.key(ip);
        self.banned.remove(&key).map(|_| (key, self.prefix(key)))
    }

    /// Takes back bans and ban history saved before a restart.
    pub fn restore(&mut self, bans: &[crate::state::StoredBan], history: &[(IpAddr, u32, i64)]) {
        for b in bans {
            self.banned.insert(
                b.ip,
                Ban {
                    until: b.until,
                    jail: Arc::from(b.jail.as_str()),
                },
            );
        }
        for &(ip, offences, last) in history {
            let h = self.history.entry(ip).or_default();
            h.offences = h.offences.max(offences);
            h.last = h.last.max(last);
        }
    }

    /// Every remembered ban history, for a reload: (address, offences, last ban).
    pub fn histories(&self) -> Vec<crate::state::History> {
        self.history.iter().map(|(&ip, h)| (ip, h.offences, h.last)).collect()
    }

    /// Every ban, expired or not, for a reload.
    pub fn all_bans(&self) -> Vec<crate::state::StoredBan> {
        self.banned
            .iter()
            .map(|(&ip, b)| crate::state::StoredBan {
                ip,
                prefix: self.prefix(ip),
                jail: b.jail.to_string(),
                until: b.until,
            })
            .collect()
    }

    /// Active bans at `now`: (address or network, prefix, ban).
    pub fn bans(&self, now: i64) -> Vec<(IpAddr, u8, &Ban)> {
        let mut v: Vec<_> = self
            .banned
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(&ip, b)| (ip, self.prefix(ip), b))
            .collect();
        v.sort_by_key(|(ip, _, b)| (b.until, *ip));
        v
    }

    /// Drops expired bans and forgotten histories; at most every hour of log time.
    fn sweep(&mut self, now: i64) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now.saturating_add(3600);
        let forget = self.cfg.forget.secs() as i64;
        self.banned.retain(|_, b| b.until > now);
        self.history.retain(|_, h| now - h.last <= forget);
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
        Policy::new(&cfg, &[("j".into(), None)], &origin).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ignore_and_ipv6_aggregation() {
        let p = policy(PolicyConfig {
            ignore: vec!["127.0.0.0/8".into(), "::1".into(), "192.0.2.0/24".into()],
            ..Default::default()
        });
        assert_eq!(p.admit(ip("127.0.0.2"), 0), Admit::Ignored);
        assert_eq!(p.admit(ip("::1"), 0), Admit::Ignored);
        assert_eq!(p.admit(ip("192.0.2.200"), 0), Admit::Ignored);
        assert_eq!(p.admit(ip("2001:db8:1:0:aa::5"), 0), Admit::Count(ip("2001:db8:1::")));
        assert_eq!(p.admit(ip("198.51.100.1"), 0), Admit::Count(ip("198.51.100.1")));
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
            p.decide(0, ip("198.51.100.1"), 5, t + 86_400 * n as i64, &mut out);
        }
        let bans: Vec<_> = out.iter().map(|d| (d.offence, d.ban_for)).collect();
        assert_eq!(bans, vec![(1, 3600), (2, 7200), (3, 14400), (4, 18000), (5, 18000)]);
    }

    #[test]
    fn banned_addresses_are_not_counted_again() {
        let mut p = policy(PolicyConfig::default());
        let mut out = Vec::new();
        p.decide(0, ip("198.51.100.1"), 5, 100, &mut out);
        assert_eq!(p.admit(ip("198.51.100.1"), 200), Admit::Banned);
        assert_eq!(p.admit(ip("198.51.100.1"), 100 + 3600), Admit::Count(ip("198.51.100.1")));
    }

    #[test]
    fn manual_ban_respects_ignore_and_unban_lifts() {
        let mut p = policy(PolicyConfig::default());
        assert!(p.manual_ban(ip("127.0.0.1"), "manual", 60, 0, false).is_err());
        assert!(p.manual_ban(ip("127.0.0.1"), "manual", 60, 0, true).is_ok());
        let d = p.manual_ban(ip("2001:db8::7"), "manual", 60, 0, false).unwrap();
        assert_eq!((d.ip, d.prefix, d.reason), (ip("2001:db8::"), 64, Reason::Manual));
        assert_eq!(p.admit(ip("2001:db8::9"), 10), Admit::Banned);
        assert_eq!(p.bans(10).len(), 2);
        assert_eq!(p.unban(ip("2001:db8::1")), Some((ip("2001:db8::"), 64)));
        assert_eq!(p.admit(ip("2001:db8::9"), 10), Admit::Count(ip("2001:db8::")));
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
            p.decide(0, ip("198.51.100.1"), 5, t, &mut out);
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
    }

    #[test]
    fn bad_cidr_is_a_config_error() {
        let origin = Origin {
            file: "p.ron".into(),
            text: "Pipeline(policy: (ignore: [\"10.0.0/8\"]))".into(),
        };
        let cfg = PolicyConfig {
            ignore: vec!["10.0.0/8".into()],
            ..Default::default()
        };
        let e = Policy::new(&cfg, &[], &origin).unwrap_err();
        assert_eq!((e.line, e.col), (1, 28));
    }
}
