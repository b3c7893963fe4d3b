//! Stage 4: failures per (jail, address) within the jail's `findtime`.
//!
//! Failures count by their lines' (placed) times, so replaying an old file behaves like the live
//! run and a backlog delivered late still adds up; the clock (`now`) bounds what a line dated
//! ahead of it can do: it never expires failures early. Memory is bounded: expired entries are
//! swept as the clock advances, and past `max_tracked` entries the least recently failing eighth
//! is evicted (and counted).

use std::collections::HashMap;

use ipnet::IpNet;

use serde::Deserialize;

use crate::matcher::JailId;

/// Window-stage settings of a pipeline file.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Most (jail, address) pairs tracked at once; beyond, the least recently failing go.
    pub max_tracked: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig { max_tracked: 1_000_000 }
    }
}

/// Per-jail thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Threshold {
    /// Failures that earn a ban.
    pub maxretry: u32,
    /// Seconds they must fall within.
    pub findtime: i64,
}

/// The failure times of one (jail, address), oldest first; at most `maxretry` kept, the first
/// four inline: a botnet of a million addresses with a failure or two each costs no heap
/// allocation per address.
#[derive(Debug, Default)]
struct Entry {
    times: smallvec::SmallVec<[i64; 4]>,
}

/// The windowed counters.
#[derive(Debug)]
pub struct Window {
    thresholds: Vec<Threshold>,
    max_tracked: usize,
    entries: HashMap<(JailId, IpNet), Entry, foldhash::fast::RandomState>,
    longest: i64,
    /// The clock at the last sweep.
    swept: i64,
    /// The oldest line time recorded since the last sweep: while a backlog is being delivered,
    /// what it is still adding up must not be swept.
    low_water: i64,
    evicted: u64,
}

impl Window {
    /// A window for jails with these thresholds.
    pub fn new(thresholds: Vec<Threshold>, cfg: &WindowConfig) -> Window {
        let longest = thresholds.iter().map(|t| t.findtime).max().unwrap_or(0);
        Window {
            thresholds,
            max_tracked: cfg.max_tracked.max(1),
            entries: HashMap::default(),
            longest,
            swept: i64::MIN,
            low_water: i64::MAX,
            evicted: 0,
        }
    }

    /// Records a failure at line time `time`, clock `now`; returns the number of failures in the
    /// window when it reaches `maxretry` (the entry is then cleared: the next ban needs fresh
    /// failures).
    pub fn record(&mut self, jail: JailId, key: IpNet, time: i64, now: i64) -> Option<u32> {
        self.low_water = self.low_water.min(time);
        self.sweep(now);
        let th = self.thresholds[jail as usize];
        if !self.entries.contains_key(&(jail, key)) && self.entries.len() >= self.max_tracked {
            self.evict();
        }
        let e = self.entries.entry((jail, key)).or_default();
        // Lines may arrive slightly out of order: keep times sorted.
        let pos = e.times.partition_point(|&t| t <= time);
        e.times.insert(pos, time);
        // Counted back from the newest failure, but never from beyond the clock.
        let newest = (*e.times.last().expect("just inserted")).min(now);
        let expired = e.times.partition_point(|&t| t <= newest - th.findtime);
        e.times.drain(..expired);
        let n = e.times.len() as u32;
        if n >= th.maxretry {
            self.entries.remove(&(jail, key));
            Some(n)
        } else {
            None
        }
    }

    /// Forgets an address in a jail (it was banned by other means).
    pub fn forget(&mut self, jail: JailId, key: IpNet) {
        self.entries.remove(&(jail, key));
    }

    /// Pairs currently tracked.
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    /// Every tracked (jail, key) and its failure times, for a reload.
    pub fn export(&self) -> Vec<(JailId, IpNet, Vec<i64>)> {
        self.entries.iter().map(|((j, ip), e)| (*j, *ip, e.times.to_vec())).collect()
    }

    /// Takes back failure times (a reload), unless the jail's threshold is already reached.
    pub fn import(&mut self, jail: JailId, key: IpNet, times: &[i64]) {
        if times.len() < self.thresholds[jail as usize].maxretry as usize {
            self.entries.insert(
                (jail, key),
                Entry {
                    times: times.iter().copied().collect(),
                },
            );
        }
    }

    /// Addresses tracked per jail, for `status`.
    pub fn per_jail(&self, jails: usize) -> Vec<usize> {
        let mut v = vec![0; jails];
        for (j, _) in self.entries.keys() {
            v[*j as usize] += 1;
        }
        v
    }

    /// Pairs evicted by the cap so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Failures currently counted for (jail, key), for `status`-like views.
    pub fn failures(&self, jail: JailId, key: IpNet) -> usize {
        self.entries.get(&(jail, key)).map_or(0, |e| e.times.len())
    }

    /// Drops entries whose newest failure has left every window; runs at most every
    /// `longest/4` seconds of the clock, so its cost is spread thin.
    fn sweep(&mut self, now: i64) {
        // The file's clock may go back (a second file): sweep from there on.
        if now < self.swept.saturating_add((self.longest / 4).max(1)) && now >= self.swept {
            return;
        }
        let horizon = self.low_water.min(now);
        self.swept = now;
        self.low_water = i64::MAX;
        let th = &self.thresholds;
        self.entries
            .retain(|(j, _), e| e.times.last().is_some_and(|&t| t > horizon - th[*j as usize].findtime));
    }

    /// Evicts the least recently failing eighth of the entries.
    fn evict(&mut self) {
        let mut newest: Vec<i64> = self.entries.values().map(|e| e.times.last().copied().unwrap_or(i64::MIN)).collect();
        let k = (newest.len() / 8).max(1).min(newest.len() - 1);
        let (_, &mut cut, _) = newest.select_nth_unstable(k);
        let before = self.entries.len();
        self.entries.retain(|_, e| e.times.last().copied().unwrap_or(i64::MIN) > cut);
        self.evicted += (before - self.entries.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpNet {
        IpNet::from(s.parse::<std::net::IpAddr>().unwrap())
    }

    #[test]
    fn bans_at_maxretry_within_findtime() {
        let mut w = Window::new(vec![Threshold { maxretry: 3, findtime: 60 }], &WindowConfig::default());
        assert_eq!(w.record(0, ip("192.0.2.1"), 0, 0), None);
        assert_eq!(w.record(0, ip("192.0.2.1"), 30, 30), None);
        assert_eq!(w.record(0, ip("192.0.2.1"), 59, 59), Some(3));
        assert_eq!(w.tracked(), 0);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut w = Window::new(vec![Threshold { maxretry: 3, findtime: 60 }], &WindowConfig::default());
        w.record(0, ip("192.0.2.1"), 0, 0);
        w.record(0, ip("192.0.2.1"), 30, 30);
        // Exactly findtime after the first: the first no longer counts (strict window).
        assert_eq!(w.record(0, ip("192.0.2.1"), 60, 60), None);
        assert_eq!(w.failures(0, ip("192.0.2.1")), 2);
    }

    #[test]
    fn expired_entries_are_swept() {
        let mut w = Window::new(vec![Threshold { maxretry: 5, findtime: 60 }], &WindowConfig::default());
        for i in 0..100 {
            w.record(0, IpNet::from(std::net::IpAddr::from([192, 0, 2, i])), 0, 0);
        }
        // Swept once the lines (not only the clock) have moved on: until then a late backlog
        // may still be adding to them.
        w.record(0, ip("198.51.100.1"), 1000, 1000);
        w.record(0, ip("198.51.100.1"), 1020, 1020);
        assert_eq!(w.tracked(), 1);
    }

    #[test]
    fn a_line_dated_ahead_of_the_clock_expires_nothing() {
        let mut w = Window::new(vec![Threshold { maxretry: 3, findtime: 60 }], &WindowConfig::default());
        w.record(0, ip("192.0.2.1"), 100, 100);
        w.record(0, ip("192.0.2.1"), 110, 110);
        // Forged far ahead (the clock bounds it in practice): the two earlier failures still count.
        assert_eq!(w.record(0, ip("192.0.2.1"), 10_000, 120), Some(3));
    }

    #[test]
    fn a_late_backlog_still_adds_up() {
        let mut w = Window::new(vec![Threshold { maxretry: 3, findtime: 60 }], &WindowConfig::default());
        let now = 100_000;
        // Two hours late, and the clock keeps running (sweeps happen) while it is delivered.
        assert_eq!(w.record(0, ip("192.0.2.1"), now - 7200, now), None);
        assert_eq!(w.record(0, ip("192.0.2.9"), now - 7190, now + 100), None);
        assert_eq!(w.record(0, ip("192.0.2.1"), now - 7195, now + 200), None);
        assert_eq!(w.record(0, ip("192.0.2.1"), now - 7190, now + 300), Some(3));
    }

    #[test]
    fn cap_evicts_oldest_and_counts() {
        let mut w = Window::new(
            vec![Threshold {
                maxretry: 5,
                findtime: 1_000_000,
            }],
            &WindowConfig { max_tracked: 16 },
        );
        for i in 0..64u8 {
            w.record(0, IpNet::from(std::net::IpAddr::from([192, 0, 2, i])), i64::from(i), i64::from(i));
        }
        assert!(w.tracked() <= 16);
        assert!(w.evicted() >= 48);
        assert_eq!(w.failures(0, ip("192.0.2.63")), 1, "the newest survive");
    }
}
