//! What the kernel sinks (ipset, nftables) share: the kernel's timeout limit, the bans they keep
//! there, how a port scope's sets are named, and what a reconciliation put right.

use crate::ports::Ports;

/// The kernel's largest per-entry timeout (about 24.8 days).
pub const MAX_TIMEOUT: u64 = 2_147_483;
/// An entry whose kernel timeout ends sooner than this, but whose ban does not, is refreshed.
const REFRESH: i64 = 86_400;

/// A ban the kernel should hold: when it ends, and when the kernel's entry does (sooner for a
/// ban longer than `MAX_TIMEOUT`; never for a permanent one, held without a timeout).
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// When the ban ends (Unix seconds).
    pub until: i64,
    /// When the kernel's entry ends.
    pub kernel_until: i64,
}

impl Entry {
    /// A ban of `ban_for` seconds from `now`, and the timeout the kernel gets for it.
    pub fn new(now: i64, ban_for: u64) -> (Entry, u64) {
        let ban_for = ban_for.max(1);
        if permanent(ban_for) {
            let e = Entry {
                until: i64::MAX,
                kernel_until: i64::MAX,
            };
            return (e, 0);
        }
        let timeout = ban_for.min(MAX_TIMEOUT);
        let e = Entry {
            until: now.saturating_add(ban_for as i64),
            kernel_until: now + timeout as i64,
        };
        (e, timeout)
    }

    /// About to end anyway: the kernel may already have let it go.
    pub fn ending(&self, now: i64) -> bool {
        self.until - now < 2
    }

    /// The kernel's entry runs out soon while the ban goes on.
    pub fn needs_refresh(&self, now: i64) -> bool {
        self.kernel_until < self.until && self.kernel_until - now < REFRESH
    }

    /// Put in the kernel again at `now`: the timeout it gets (noted; 0: none, permanent).
    pub fn renew(&mut self, now: i64) -> u64 {
        if self.until == i64::MAX {
            return 0;
        }
        let timeout = ((self.until - now).max(1) as u64).min(MAX_TIMEOUT);
        self.kernel_until = now + timeout as i64;
        timeout
    }
}

/// The name of the set holding bans on `ports`: `base` for the mail ports (the sets bans always
/// went to), `base<sep>all` for every port, `base<sep>25<sep>465<sep>587` otherwise, or, where
/// that is longer than `max` bytes, `base<sep>p<hash of the ports>`.
pub fn scope_set(base: &str, ports: &Ports, sep: char, max: usize) -> String {
    let Some(label) = ports.label(sep) else {
        return base.to_string();
    };
    let name = format!("{base}{sep}{label}");
    if name.len() <= max {
        return name;
    }
    // FNV-1a: stable across versions and hosts, unlike the std hasher.
    let hash = ports
        .to_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{base}{sep}p{:08x}", hash as u32)
}

/// A ban of `ban_for` seconds is permanent (`bantime: "permanent"`): no kernel timeout.
pub fn permanent(ban_for: u64) -> bool {
    ban_for >= crate::policy::MAX_BAN
}

/// What a reconciliation found and put right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repairs {
    /// Bans checked.
    pub checked: usize,
    /// Bans missing from the kernel, added again.
    pub entries: usize,
    /// Sets that were gone, created again.
    pub sets: usize,
    /// Address families whose rules were missing or changed, put back.
    pub rules: usize,
    /// Bans longer than the kernel's timeout, refreshed.
    pub refreshed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_bans_get_the_kernels_longest_timeout_and_are_refreshed() {
        let (mut e, timeout) = Entry::new(0, 100 * 86_400);
        assert_eq!((timeout, e.until), (MAX_TIMEOUT, 8_640_000));
        assert!(!e.needs_refresh(0));
        let late = MAX_TIMEOUT as i64 - 3600;
        assert!(e.needs_refresh(late));
        assert_eq!(e.renew(late), MAX_TIMEOUT);
        assert!(!e.needs_refresh(late));
        let (short, t) = Entry::new(0, 60);
        assert_eq!(t, 60);
        assert!(!short.needs_refresh(30) && short.ending(59));
    }

    #[test]
    fn a_permanent_ban_has_no_kernel_timeout() {
        let (mut e, timeout) = Entry::new(1000, crate::policy::MAX_BAN);
        assert_eq!(timeout, 0);
        assert!(!e.needs_refresh(1000) && !e.ending(i64::MAX / 2));
        assert_eq!(e.renew(5000), 0);
    }

    #[test]
    fn scope_sets_are_named_after_their_ports() {
        use crate::ports::PortSpec;
        let ports = |s: &str| Ports::resolve(&[PortSpec::Name(s.into())], |_| None).unwrap();
        assert_eq!(scope_set("mailpipe4", &Ports::mail(), '-', 31), "mailpipe4");
        assert_eq!(scope_set("mailpipe4", &Ports::every(), '-', 31), "mailpipe4-all");
        assert_eq!(scope_set("banned4", &ports("80,443"), '_', 64), "banned4_80_443");
        let long = scope_set("mailpipe4", &ports("1,3,5,7,9,11,13,15,17,19,21"), '-', 31);
        assert!(long.len() <= 31 && long.starts_with("mailpipe4-p"), "{long}");
    }
}
