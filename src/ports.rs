//! Port scopes: the ports a ban drops, so that each jail bans only the service it protects (a
//! Roundcube brute-forcer loses 80/443, not port 25 of the mail it may legitimately send).
//!
//! A leaf: the policy stamps a scope on each ban, the sinks turn scopes into sets and rules.

use std::fmt;
use std::sync::Arc;

pub use crate::primitives::PortSpec;

/// TCP ports a ban applies to: sorted, merged ranges; empty means every port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ports(Arc<[(u16, u16)]>);

/// The services mail servers run, by the names `/etc/services` and fail2ban's jails use, so a
/// pipeline means the same on a host without `/etc/services` (a minimal container).
const SERVICES: &[(&str, u16)] = &[
    ("smtp", 25),
    ("smtps", 465),
    ("submissions", 465),
    ("urd", 465),
    ("submission", 587),
    ("pop3", 110),
    ("pop3s", 995),
    ("imap", 143),
    ("imap2", 143),
    ("imaps", 993),
    ("sieve", 4190),
    ("managesieve", 4190),
    ("http", 80),
    ("www", 80),
    ("https", 443),
    ("ssh", 22),
    ("lmtp", 24),
    ("http-alt", 8080),
];

/// The ports bans dropped before jails had their own: every mail protocol.
const MAIL: &[u16] = &[25, 110, 143, 465, 587, 993, 995, 4190];

/// iptables' multiport match takes at most 15 ports, a range counting as two.
const MULTIPORT_SLOTS: usize = 15;

impl Ports {
    /// Every port (recidive, manual bans, `ports: []`).
    pub fn every() -> Ports {
        Ports(Arc::from([]))
    }

    /// The mail ports: what a jail without `ports` bans.
    pub fn mail() -> Ports {
        Ports::from_ranges(MAIL.iter().map(|&p| (p, p)).collect())
    }

    /// Whether this is every port.
    pub fn is_every(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges, sorted and merged (empty: every port).
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    fn from_ranges(mut v: Vec<(u16, u16)>) -> Ports {
        v.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        // 0-65535 is every port, written the short way.
        if merged == [(0, u16::MAX)] || merged == [(1, u16::MAX)] {
            merged.clear();
        }
        Ports(merged.into())
    }

    /// Resolves what a pipeline file wrote; `lookup` finds service names this module does not
    /// know (the system's `/etc/services`). The error names the entry.
    pub fn resolve(specs: &[PortSpec], lookup: impl Fn(&str) -> Option<u16>) -> Result<Ports, String> {
        let mut ranges = Vec::new();
        for spec in specs {
            match spec {
                PortSpec::Number(0) => return Err("port 0 is not a port".into()),
                PortSpec::Number(p) => ranges.push((*p, *p)),
                PortSpec::Name(text) => {
                    for item in text.split(',').map(str::trim) {
                        ranges.push(range(item, &lookup)?);
                    }
                }
            }
        }
        if specs.is_empty() {
            return Ok(Ports::every());
        }
        Ok(Ports::from_ranges(ranges))
    }

    /// Whether a ban on these ports also blocks everything `other` covers.
    pub fn covers(&self, other: &Ports) -> bool {
        if self.is_every() {
            return true;
        }
        !other.is_every() && other.0.iter().all(|&(lo, hi)| self.0.iter().any(|&(a, b)| a <= lo && hi <= b))
    }

    /// iptables `--dports` arguments, each within multiport's 15 slots (`25,465,1000:2000`).
    pub fn multiport(&self) -> Vec<String> {
        let mut out: Vec<(usize, String)> = Vec::new();
        for &(lo, hi) in self.0.iter() {
            let (slots, text) = if lo == hi { (1, lo.to_string()) } else { (2, format!("{lo}:{hi}")) };
            match out.last_mut() {
                Some((used, s)) if *used + slots <= MULTIPORT_SLOTS => {
                    *used += slots;
                    s.push(',');
                    s.push_str(&text);
                }
                _ => out.push((slots, text)),
            }
        }
        out.into_iter().map(|(_, s)| s).collect()
    }

    /// The ports as an nftables set expression (`{ 25, 465, 1000-2000 }`).
    pub fn nft(&self) -> String {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") })
            .collect();
        format!("{{ {} }}", items.join(", "))
    }

    /// A name for sets of this scope, after the set's base name: nothing for the mail ports (the
    /// sets bans always went to), `all`, or the ports joined by `sep`.
    pub fn label(&self, sep: char) -> Option<String> {
        if *self == Ports::mail() {
            return None;
        }
        if self.is_every() {
            return Some("all".into());
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}to{hi}") })
            .collect();
        Some(parts.join(&sep.to_string()))
    }

    /// The ports as JSON: numbers, and `"lo-hi"` for ranges; `[]` is every port.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.0
            .iter()
            .map(|&(lo, hi)| if lo == hi { lo.into() } else { format!("{lo}-{hi}").into() })
            .collect()
    }

    /// The ranges as bytes (4 per range, little-endian), for the state file.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0
            .iter()
            .flat_map(|&(lo, hi)| [lo.to_le_bytes(), hi.to_le_bytes()].concat())
            .collect()
    }

    /// Ports from (low, high) ranges another node sent; `None` when one is upside down.
    pub fn from_pairs(v: Vec<(u16, u16)>) -> Option<Ports> {
        v.iter().all(|&(lo, hi)| lo <= hi).then(|| Ports::from_ranges(v))
    }

    /// Reads `to_bytes` back; `None` for anything else.
    pub fn from_bytes(b: &[u8]) -> Option<Ports> {
        if !b.len().is_multiple_of(4) {
            return None;
        }
        let v: Vec<(u16, u16)> = b
            .chunks_exact(4)
            .map(|c| (u16::from_le_bytes([c[0], c[1]]), u16::from_le_bytes([c[2], c[3]])))
            .collect();
        v.iter().all(|&(lo, hi)| lo <= hi).then(|| Ports::from_ranges(v))
    }
}

impl fmt::Display for Ports {
    /// `every port`, or `25,465,587`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_every() {
            return f.write_str("every port");
        }
        f.write_str(&self.multiport().join(","))
    }
}

/// One entry: `465`, `submission`, `8000:8080` or `8000-8080`.
fn range(item: &str, lookup: &impl Fn(&str) -> Option<u16>) -> Result<(u16, u16), String> {
    let port = |s: &str| -> Result<u16, String> {
        let p = match s.parse::<u16>() {
            Ok(p) => p,
            Err(_) if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() => return Err(format!("{s:?} is not a port (1-65535)")),
            Err(_) => service(s)
                .or_else(|| lookup(s))
                .ok_or_else(|| format!("unknown service {s:?} (write the port number, or a name from /etc/services)"))?,
        };
        if p == 0 {
            return Err("port 0 is not a port".into());
        }
        Ok(p)
    };
    match item.split_once([':', '-']) {
        // `imap-ssl`-style names contain a dash: a range only when both sides are numbers.
        Some((a, b)) if a.parse::<u16>().is_ok() && b.parse::<u16>().is_ok() => {
            let (lo, hi) = (port(a)?, port(b)?);
            if lo > hi {
                return Err(format!("{item:?}: the range runs backwards"));
            }
            Ok((lo, hi))
        }
        _ => port(item).map(|p| (p, p)),
    }
}

/// The port of a service this module knows by name.
fn service(name: &str) -> Option<u16> {
    SERVICES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, p)| p)
}

/// The system's services file, read at configuration time only: the TCP port of `name`.
pub fn etc_services(name: &str) -> Option<u16> {
    let text = std::fs::read_to_string("/etc/services").ok()?;
    text.lines().map(|l| l.split('#').next().unwrap_or("")).find_map(|l| {
        let mut f = l.split_whitespace();
        let (svc, port) = (f.next()?, f.next()?);
        let (num, proto) = port.split_once('/')?;
        (proto == "tcp" && (svc == name || f.any(|alias| alias == name)))
            .then(|| num.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(specs: &[PortSpec]) -> Result<Ports, String> {
        Ports::resolve(specs, |_| None)
    }

    fn name(s: &str) -> PortSpec {
        PortSpec::Name(s.into())
    }

    #[test]
    fn names_numbers_ranges_and_lists() {
        let p = ports(&[name("smtp"), PortSpec::Number(465), name("submission")]).unwrap();
        assert_eq!(p.ranges(), &[(25, 25), (465, 465), (587, 587)]);
        assert_eq!(ports(&[name("smtp,465,submission")]).unwrap(), p, "fail2ban's one-string list");
        let r = ports(&[name("8000:8080"), name("8081-8090"), PortSpec::Number(80)]).unwrap();
        assert_eq!(r.ranges(), &[(80, 80), (8000, 8090)], "adjacent ranges merge");
        assert!(ports(&[]).unwrap().is_every());
        assert!(ports(&[name("1:65535")]).unwrap().is_every());
        for bad in ["nosuch", "70000", "0", "90:80", ""] {
            assert!(ports(&[name(bad)]).is_err(), "{bad}");
        }
        assert_eq!(
            Ports::resolve(&[name("ldap")], |n| (n == "ldap").then_some(389)).unwrap().ranges(),
            &[(389, 389)]
        );
    }

    #[test]
    fn scopes_cover_and_render() {
        let sasl = ports(&[name("smtp,465,submission")]).unwrap();
        assert!(Ports::every().covers(&sasl) && Ports::mail().covers(&sasl));
        assert!(!sasl.covers(&Ports::mail()) && !sasl.covers(&Ports::every()));
        assert_eq!(sasl.label('-').as_deref(), Some("25-465-587"));
        assert_eq!(Ports::mail().label('-'), None);
        assert_eq!(Ports::every().label('_').as_deref(), Some("all"));
        assert_eq!(sasl.nft(), "{ 25, 465, 587 }");
        let many = ports(&(1..=20).map(|p| PortSpec::Number(p * 2)).collect::<Vec<_>>()).unwrap();
        let m = many.multiport();
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|s| s.split(',').count() <= 15));
        assert_eq!(Ports::from_bytes(&many.to_bytes()), Some(many));
        assert_eq!(Ports::from_bytes(&[1, 0, 0]), None);
    }
}
