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
#[derive(Debug, Clone, Copy, Default)]
pub struct Threshold {
    /// Failures that earn a ban.
    pub maxretry: u32,
    /// Seconds they must fall within.
    pub findtime: i64,
    /// Count distinct accounts (`Mark::user`), not failures: password spraying.
    pub distinct: bool,
    /// The threshold for failures on accounts this address is trusted for, if they have one.
    pub trusted_maxretry: Option<u32>,
}

/// One failure in a window: its line time, the account it was on (a keyed 23-bit hash of
/// `<USER>`, 0 for none) and whether the (address, account) pair is trusted, in 8 bytes: a
/// botnet's million entries cost no more than bare times did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(i64);

impl Mark {
    const USER: i64 = (1 << 23) - 1;
    const TRUSTED: i64 = 1 << 23;

    /// A failure at `time` on account `user` (`user_mark`), trusted or not.
    pub fn new(time: i64, user: u32, trusted: bool) -> Mark {
        Mark((time << 24) | (i64::from(trusted) * Mark::TRUSTED) | (i64::from(user) & Mark::USER))
    }

    /// A failure with no account.
    pub fn at(time: i64) -> Mark {
        Mark::new(time, 0, false)
    }

    /// Its line time.
    pub fn time(self) -> i64 {
        self.0 >> 24
    }

    fn user(self) -> u32 {
        (self.0 & Mark::USER) as u32
    }

    fn trusted(self) -> bool {
        self.0 & Mark::TRUSTED != 0
    }
}

/// The failures of one (jail, address), oldest first; at most the threshold kept, the first
/// four inline: a botnet of a million addresses with a failure or two each costs no heap
/// allocation per address.
#[derive(Debug, Default)]
struct Entry {
    times: smallvec::SmallVec<[Mark; 4]>,
}

impl Entry {
    fn newest(&self) -> Option<i64> {
        self.times.last().map(|m| m.time())
    }
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
        self.add(jail, key, Mark::at(time), 1, now)
    }

    /// `record` for a failure that counts `weight` times, on an account: a distinct jail counts
    /// each account once (its newest failure), and a jail with `trusted_maxretry` counts the
    /// failures on trusted accounts toward that threshold only.
    pub fn add(&mut self, jail: JailId, key: IpNet, mark: Mark, weight: u32, now: i64) -> Option<u32> {
        let time = mark.time();
        self.low_water = self.low_water.min(time);
        self.sweep(now);
        let th = self.thresholds[jail as usize];
        if !self.entries.contains_key(&(jail, key)) && self.entries.len() >= self.max_tracked {
            self.evict();
        }
        let e = self.entries.entry((jail, key)).or_default();
        if th.distinct {
            e.times.retain(|m| m.user() != mark.user());
        }
        // Lines may arrive slightly out of order: keep times sorted.
        let pos = e.times.partition_point(|m| m.time() <= time);
        let copies = if th.distinct { 1 } else { weight.clamp(1, th.maxretry.max(1)) };
        e.times.insert_many(pos, std::iter::repeat_n(mark, copies as usize));
        // Counted back from the newest failure, but never from beyond the clock.
        let newest = e.newest().expect("just inserted").min(now);
        let expired = e.times.partition_point(|m| m.time() <= newest - th.findtime);
        e.times.drain(..expired);
        let all = e.times.len() as u32;
        let reached = match th.trusted_maxretry {
            Some(high) => all >= high || e.times.iter().filter(|m| !m.trusted()).count() as u32 >= th.maxretry,
            None => all >= th.maxretry,
        };
        if reached {
            self.entries.remove(&(jail, key));
            Some(all)
        } else {
            None
        }
    }

    /// Forgets the failures `key` made on account `user` in `jail` (a successful login).
    pub fn reset(&mut self, jail: JailId, key: IpNet, user: u32) {
        if let Some(e) = self.entries.get_mut(&(jail, key)) {
            e.times.retain(|m| m.user() != user);
            if e.times.is_empty() {
                self.entries.remove(&(jail, key));
            }
        }
    }

    /// Whether `key` has failures counting in `jail`.
    pub fn tracks(&self, jail: JailId, key: IpNet) -> bool {
        self.entries.contains_key(&(jail, key))
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
    pub fn export(&self) -> Vec<(JailId, IpNet, Vec<Mark>)> {
        self.entries.iter().map(|((j, ip), e)| (*j, *ip, e.times.to_vec())).collect()
    }

    /// Takes back failures (a reload), unless the jail's threshold is already reached.
    pub fn import(&mut self, jail: JailId, key: IpNet, times: &[Mark]) {
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

    /// The `k` addresses with the most failures counting now (every jail's), most first.
    pub fn top(&self, k: usize) -> Vec<(IpNet, usize)> {
        let mut per: HashMap<IpNet, usize> = HashMap::new();
        for ((_, key), e) in &self.entries {
            *per.entry(*key).or_default() += e.times.len();
        }
        let mut v: Vec<(IpNet, usize)> = per.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
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
            .retain(|(j, _), e| e.newest().is_some_and(|t| t > horizon - th[*j as usize].findtime));
    }

    /// Evicts the least recently failing eighth of the entries.
    fn evict(&mut self) {
        let mut newest: Vec<i64> = self.entries.values().map(|e| e.newest().unwrap_or(i64::MIN)).collect();
        let k = (newest.len() / 8).max(1).min(newest.len() - 1);
        let (_, &mut cut, _) = newest.select_nth_unstable(k);
        let before = self.entries.len();
        self.entries.retain(|_, e| e.newest().unwrap_or(i64::MIN) > cut);
        self.evicted += (before - self.entries.len()) as u64;
    }
}

/// Credential stuffing: the distinct addresses failing on one account within `findtime`. Once
/// `maxretry` of them have, every one is banned, and so is each new one for another `findtime`
/// (the account is under attack). Accounts are keyed by a keyed 64-bit hash of `<USER>`, never
/// by the name an attacker chose; at most `maxretry` addresses are kept per account, and at most
/// `max_tracked` accounts: beyond, expired ones go first, then those only one address failed on
/// (a spraying flood's noise), never the ones under attack.
#[derive(Debug)]
pub struct Accounts {
    thresholds: Vec<Threshold>,
    max_tracked: usize,
    entries: HashMap<(JailId, u64), Account, foldhash::fast::RandomState>,
    evicted: u64,
}

#[derive(Debug, Default)]
struct Account {
    /// Each failing address and its newest failure, oldest first (one inline: most accounts a
    /// flood of made-up names creates see one address).
    addrs: smallvec::SmallVec<[(IpNet, i64); 1]>,
    /// Until when (by the clock) every new failing address is banned at once.
    attacked_until: i64,
}

impl Accounts {
    /// Accounts for jails with these thresholds: at most a quarter of `max_tracked` (the
    /// accounts under attack at once are far fewer than the addresses).
    pub fn new(thresholds: Vec<Threshold>, cfg: &WindowConfig) -> Accounts {
        Accounts {
            thresholds,
            max_tracked: (cfg.max_tracked / 4).max(1),
            entries: HashMap::default(),
            evicted: 0,
        }
    }

    /// A failure of `key` on account `user` at line time `time`, clock `now`: the addresses to
    /// ban now, into `out` (empty until the account reaches `maxretry` addresses).
    pub fn record(&mut self, jail: JailId, user: u64, key: IpNet, time: i64, now: i64, out: &mut Vec<IpNet>) {
        let th = self.thresholds[jail as usize];
        if !self.entries.contains_key(&(jail, user)) && self.entries.len() >= self.max_tracked {
            self.evict(now);
        }
        let a = self.entries.entry((jail, user)).or_default();
        if now < a.attacked_until {
            out.push(key);
            return;
        }
        a.addrs.retain(|(k, _)| *k != key);
        let pos = a.addrs.partition_point(|(_, t)| *t <= time);
        a.addrs.insert(pos, (key, time));
        let newest = a.addrs.last().map_or(time, |(_, t)| *t).min(now);
        let expired = a.addrs.partition_point(|(_, t)| *t <= newest - th.findtime);
        a.addrs.drain(..expired);
        if a.addrs.len() as u32 >= th.maxretry {
            out.extend(a.addrs.drain(..).map(|(k, _)| k));
            a.attacked_until = now.saturating_add(th.findtime);
        }
    }

    /// Forgets `key`'s failures on `user` (it logged in: the owner, not an attacker).
    pub fn forget(&mut self, jail: JailId, user: u64, key: IpNet) {
        if let Some(a) = self.entries.get_mut(&(jail, user)) {
            a.addrs.retain(|(k, _)| *k != key);
        }
    }

    /// Accounts tracked.
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    /// Accounts evicted by the cap so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn evict(&mut self, now: i64) {
        let before = self.entries.len();
        let th = &self.thresholds;
        let live = |(j, _): &(JailId, u64), a: &Account| {
            now < a.attacked_until || a.addrs.last().is_some_and(|(_, t)| *t > now - th[*j as usize].findtime)
        };
        self.entries.retain(|k, a| live(k, a));
        if self.entries.len() * 8 > self.max_tracked * 7 {
            self.entries.retain(|_, a| now < a.attacked_until || a.addrs.len() > 1);
        }
        if self.entries.len() * 8 > self.max_tracked * 7 {
            // Only multi-address accounts left: the oldest half of them goes.
            let mut newest: Vec<i64> = self
                .entries
                .values()
                .map(|a| a.addrs.last().map_or(i64::MIN, |(_, t)| *t))
                .collect();
            let k = newest.len() / 2;
            let (_, &mut cut, _) = newest.select_nth_unstable(k);
            self.entries
                .retain(|_, a| now < a.attacked_until || a.addrs.last().is_some_and(|(_, t)| *t > cut));
        }
        self.evicted += (before - self.entries.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpNet {
        IpNet::from(s.parse::<std::net::IpAddr>().unwrap())
    }

    /// One jail's window.
    fn window(maxretry: u32, findtime: i64) -> Window {
        let th = Threshold {
            maxretry,
            findtime,
            ..Threshold::default()
        };
        Window::new(vec![th], &WindowConfig::default())
    }

    #[test]
    fn bans_at_maxretry_within_findtime() {
        let mut w = window(3, 60);
        assert_eq!(w.record(0, ip("192.0.2.1"), 0, 0), None);
        assert_eq!(w.record(0, ip("192.0.2.1"), 30, 30), None);
        assert_eq!(w.record(0, ip("192.0.2.1"), 59, 59), Some(3));
        assert_eq!(w.tracked(), 0);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut w = window(3, 60);
        w.record(0, ip("192.0.2.1"), 0, 0);
        w.record(0, ip("192.0.2.1"), 30, 30);
        // Exactly findtime after the first: the first no longer counts (strict window).
        assert_eq!(w.record(0, ip("192.0.2.1"), 60, 60), None);
        assert_eq!(w.failures(0, ip("192.0.2.1")), 2);
    }

    #[test]
    fn expired_entries_are_swept() {
        let mut w = window(5, 60);
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
        let mut w = window(3, 60);
        w.record(0, ip("192.0.2.1"), 100, 100);
        w.record(0, ip("192.0.2.1"), 110, 110);
        // Forged far ahead (the clock bounds it in practice): the two earlier failures still count.
        assert_eq!(w.record(0, ip("192.0.2.1"), 10_000, 120), Some(3));
    }

    #[test]
    fn a_late_backlog_still_adds_up() {
        let mut w = window(3, 60);
        let now = 100_000;
        // Two hours late, and the clock keeps running (sweeps happen) while it is delivered.
        assert_eq!(w.record(0, ip("192.0.2.1"), now - 7200, now), None);
        assert_eq!(w.record(0, ip("192.0.2.9"), now - 7190, now + 100), None);
        assert_eq!(w.record(0, ip("192.0.2.1"), now - 7195, now + 200), None);
        assert_eq!(w.record(0, ip("192.0.2.1"), now - 7190, now + 300), Some(3));
    }

    #[test]
    fn accounts_ban_every_address_that_failed_then_each_new_one() {
        let th = Threshold {
            maxretry: 3,
            findtime: 600,
            ..Threshold::default()
        };
        let mut a = Accounts::new(vec![th], &WindowConfig::default());
        let mut out = Vec::new();
        a.record(0, 7, ip("192.0.2.1"), 0, 0, &mut out);
        a.record(0, 7, ip("192.0.2.1"), 10, 10, &mut out);
        a.record(0, 8, ip("192.0.2.2"), 20, 20, &mut out);
        a.record(0, 7, ip("192.0.2.2"), 30, 30, &mut out);
        assert!(out.is_empty(), "two addresses on account 7, one on 8");
        a.forget(0, 7, ip("192.0.2.1"));
        a.record(0, 7, ip("192.0.2.3"), 40, 40, &mut out);
        assert!(out.is_empty(), "the address that logged in no longer counts");
        a.record(0, 7, ip("192.0.2.4"), 50, 50, &mut out);
        assert_eq!(out, [ip("192.0.2.2"), ip("192.0.2.3"), ip("192.0.2.4")]);
        out.clear();
        a.record(0, 7, ip("192.0.2.5"), 60, 60, &mut out);
        assert_eq!(out, [ip("192.0.2.5")], "under attack: each new one at once");
    }

    #[test]
    fn spraying_counts_accounts_and_a_success_resets_only_its_own() {
        let th = Threshold {
            maxretry: 3,
            findtime: 600,
            distinct: true,
            ..Threshold::default()
        };
        let mut w = Window::new(vec![th], &WindowConfig::default());
        let k = ip("192.0.2.1");
        assert_eq!(w.add(0, k, Mark::new(0, 1, false), 1, 0), None);
        assert_eq!(w.add(0, k, Mark::new(1, 1, false), 1, 1), None, "the same account again");
        assert_eq!(w.add(0, k, Mark::new(2, 2, false), 1, 2), None);
        w.reset(0, k, 9);
        assert_eq!(
            w.add(0, k, Mark::new(3, 3, false), 1, 3),
            Some(3),
            "a success on another account resets nothing"
        );
    }

    #[test]
    fn weights_and_trusted_thresholds() {
        let th = Threshold {
            maxretry: 4,
            findtime: 600,
            trusted_maxretry: Some(8),
            ..Threshold::default()
        };
        let mut w = Window::new(vec![th], &WindowConfig::default());
        let k = ip("192.0.2.1");
        assert_eq!(w.add(0, k, Mark::new(0, 1, false), 3, 0), None);
        assert_eq!(w.add(0, k, Mark::new(1, 1, false), 1, 1), Some(4), "weight 3 and 1");
        for t in 0..7 {
            assert_eq!(w.add(0, k, Mark::new(t, 1, true), 1, t), None, "trusted: 8 allowed");
        }
        assert_eq!(w.add(0, k, Mark::new(7, 1, true), 1, 7), Some(8));
    }

    #[test]
    fn cap_evicts_oldest_and_counts() {
        let mut w = Window::new(
            vec![Threshold {
                maxretry: 5,
                findtime: 1_000_000,
                ..Threshold::default()
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
