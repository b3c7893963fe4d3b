//! Wires the stages: raw line → prefilter → parse → matcher → policy/window → decisions.
//!
//! Synchronous and single-owner: one `Pipeline` per stream of lines, no locks, no channels.
//! It has two halves: the `front` (prefilter, parse, match) keeps no state across lines and can
//! run on other threads, a block at a time (`Front::block`); the counting half (clock, policy,
//! window) takes what it made, in order (`Pipeline::count`). The hot path reuses its scratch
//! vectors; a line the prefilter rejects costs one Aho-Corasick scan and no allocation.

mod front;

pub use front::{Front, Line, Scanned, Span, has_address};

use std::fmt::Write as _;

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;

use crate::clock::{Clock, Mode, Placed};
use crate::evidence::Evidence;
use crate::matcher::MatcherConfig;
use crate::matcher::{Found, JailId, Match, Matcher};
use crate::parse::ParseConfig;
use crate::parse::{Parser, Record, Zone};
use crate::policy::PolicyConfig;
use crate::policy::{Admit, Ban, Decision, History, Policy, SharedFailure, Trust};
use crate::ports::Ports;
use crate::prefilter::Prefilter;
use crate::primitives::{Count, Jail, Origin, error_in};
use crate::window::WindowConfig;
use crate::window::{Accounts, Mark, Threshold, Window};

/// Counters of everything the pipeline saw; the `test` summary and metrics read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lines in.
    pub lines: u64,
    /// Lines the prefilter skipped unparsed.
    pub skipped: u64,
    /// Lines parsed (they passed the prefilter).
    pub parsed: u64,
    /// Parsed lines without a usable time (the clock's time used).
    pub time_unparsed: u64,
    /// Parsed lines whose own time was too far from the clock (the clock's time used).
    pub time_clamped: u64,
    /// Lines that were not valid UTF-8 (matched on a lossy copy).
    pub invalid_utf8: u64,
    /// Lines matched by at least one jail's failure rule.
    pub matched_lines: u64,
    /// Lines no failure rule matched but some jail's ignore rule did.
    pub ignored_lines: u64,
    /// Per jail.
    pub jails: Vec<JailStats>,
    /// Decisions made.
    pub bans: u64,
}

/// Counters of one jail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JailStats {
    /// Failures per rule.
    pub rules: Vec<u64>,
    /// Lines dropped by the jail's ignore rules, per ignore rule.
    pub ignore_rules: Vec<u64>,
    /// Failures from addresses in the policy's `ignore`.
    pub ignored_ip: u64,
    /// Failures from addresses already banned.
    pub already_banned: u64,
    /// Matches whose `<HOST>` was not an address.
    pub bad_host: u64,
    /// Bans made.
    pub bans: u64,
    /// Successful logins seen (its `success` rules).
    pub successes: u64,
}

/// What happened to one line, for callers that report per line (`test`).
#[derive(Debug)]
pub enum Event<'a> {
    /// A jail's rule matched.
    Match {
        /// The match.
        m: Match<&'a str>,
        /// The time it counts at (the line's own, or the clock's when that is not trusted).
        time: i64,
    },
    /// A ban to apply.
    Decision(&'a Decision),
    /// A line that holds an address but matched no failure rule (only when the front was
    /// asked for them, `Front::set_missed`).
    Missed(&'a str),
}

/// The stages of one pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// Prefilter, parser and matcher; also the counting half's own (year inference, success
    /// users, reports).
    front: Front,
    /// The one line `process` runs through the front (reused).
    one: Scanned,
    clock: Clock,
    window: Window,
    policy: Policy,
    stats: Stats,
    matches: Vec<Match<&'static str>>,
    decisions: Vec<Decision>,
    /// Each jail's (rules, ignore rules) as written, for reports.
    texts: Vec<(Vec<String>, Vec<String>)>,
    /// When this pipeline started (kept across reloads), for rates.
    started: std::time::Instant,
    /// Recent counted lines and how many a decision quotes, when a sink wants them.
    evidence: Option<(Evidence, usize)>,
    /// Set when failures are shared with a fleet.
    fleet: Option<FleetCounting>,
    /// Each jail's way of counting accounts (`count`, `on_success`, weights).
    accounts_of: Vec<JailAccounts>,
    /// Credential stuffing: addresses per account.
    accounts: Accounts,
    /// The key account names are hashed with (random per process: an attacker cannot aim two
    /// names at one hash).
    account_key: std::collections::hash_map::RandomState,
    /// Trusted pairs made since the last `take_trusted` (for the state file).
    trusted_new: Vec<Trust>,
    /// The line's login address, its key and how long it is trusted: a login line matches
    /// one success rule per jail, all for the same address.
    login: Option<(std::net::IpAddr, IpNet, Option<i64>)>,
    /// The last account name hashed on this line: (address, length) of its slice, and hash.
    hashed: Option<((usize, usize), u64)>,
    /// The line's failing address and its key (`None`: ignored).
    admitted: Option<(std::net::IpAddr, Option<IpNet>)>,
    /// The accounts failures were most often on (bounded).
    targeted: Targeted,
}

/// An account's mark in a window: 23 bits of its hash, never 0 (0 is "no account").
fn user_mark(h: u64) -> u32 {
    ((h & 0x7f_ffff) as u32).max(1)
}

/// A trust younger than this is not renewed by another login from the same address (renewing
/// costs taking the user from the line); a second account logging in from that address within
/// it is trusted at its next login after.
const TRUST_RENEWAL: i64 = 3600;

/// How one jail counts accounts.
#[derive(Debug, Clone)]
struct JailAccounts {
    count: Count,
    reset: bool,
    /// Seconds a success trusts its pair for.
    trust: Option<i64>,
    /// Whether trust matters to its counting (`trusted_maxretry`, or stuffing).
    checks_trust: bool,
    /// Each failure rule's weight.
    weights: Vec<u32>,
}

/// The most targeted accounts, counted in bounded memory (Misra-Gries: at most `TARGETED`
/// names; a name failed on more than 1/TARGETED of the time is always among them).
#[derive(Debug, Default)]
struct Targeted(HashMap<Box<str>, u64>);

/// Names `Targeted` keeps.
const TARGETED: usize = 256;

impl Targeted {
    fn add(&mut self, user: &str) {
        // Shown on terminals (`top`, `status`): an attacker's escape sequences go no further,
        // and a name is kept to 128 characters.
        let shown: std::borrow::Cow<'_, str> = if user.len() <= 128 && !user.chars().any(char::is_control) {
            user.into()
        } else {
            user.chars()
                .take(128)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect::<String>()
                .into()
        };
        if let Some(n) = self.0.get_mut(&*shown) {
            *n += 1;
        } else if self.0.len() < TARGETED {
            self.0.insert(shown.into_owned().into(), 1);
        } else {
            self.0.retain(|_, n| {
                *n -= 1;
                *n > 0
            });
        }
    }

    /// The `k` most failed-on accounts, most first.
    fn top(&self, k: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.0.iter().map(|(u, n)| (u.to_string(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }
}

/// How a pipeline counts when its failures are shared with a fleet. While the fleet is
/// reachable, a failure is counted when it comes back from the fleet's stream, where every node
/// sees every failure in the same order: they agree on which failure reaches `maxretry`, and
/// only the node that saw that one bans (one ban per attacker per fleet). While it is not,
/// failures are counted at once, as without a fleet, and shared later.
#[derive(Debug, Default)]
struct FleetCounting {
    link_up: bool,
    /// Failures to publish.
    outgoing: Vec<SharedFailure>,
    /// The jails' names, for the events.
    names: Vec<Arc<str>>,
}

/// What a pipeline is compiled from: the stages' part of a pipeline file, its includes applied
/// (`config::Config::stages` makes one).
#[derive(Debug, Clone)]
pub struct Stages {
    /// The jails.
    pub jails: Vec<Jail>,
    /// Where each jail was written, for error positions.
    pub origins: Vec<Origin>,
    /// Each jail's port scope.
    pub ports: Vec<Ports>,
    /// Parse settings.
    pub parse: ParseConfig,
    /// Matcher settings.
    pub matcher: MatcherConfig,
    /// Window settings.
    pub window: WindowConfig,
    /// The ban policy.
    pub policy: PolicyConfig,
    /// The files the settings came from, most important first (for error positions).
    pub files: Vec<Origin>,
}

/// A pipeline that cannot be built.
pub type BuildError = crate::primitives::ConfigError;

/// How long compiling a pipeline may take (`reload`, `check`); beyond, it is refused. Memory is
/// bounded by the matcher's size limits.
pub const COMPILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Compiles `cfg` on a thread of its own, giving up after `timeout` (the thread then finishes,
/// within the matcher's size limits, and its result is dropped).
pub fn build_within(cfg: Stages, mode: Mode, timeout: std::time::Duration) -> Result<Pipeline, BuildError> {
    let file = cfg.origins.first().map_or_else(|| "<none>".to_string(), |o| o.file.clone());
    let refuse = |reason: String| crate::primitives::ConfigError {
        file: file.clone(),
        line: 1,
        col: 1,
        reason,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("compile".into())
        .spawn(move || {
            let _ = tx.send(Pipeline::new(&cfg, mode));
        })
        .map_err(|e| refuse(format!("cannot start compiling: {e}")))?;
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(refuse(format!(
            "compiling the pipeline took longer than {} s: refused (simplify the rules, or use engine: Hybrid)",
            timeout.as_secs()
        )))
    })
}

impl Pipeline {
    /// Compiles every stage of `cfg`; `mode` says where the clock comes from (`Live` for `run`,
    /// `Replay` for `test`).
    pub fn new(cfg: &Stages, mode: Mode) -> Result<Pipeline, BuildError> {
        let zone = Zone::resolve(cfg.parse.timezone.as_deref()).map_err(|e| error_in(&cfg.files, &["timezone"], e.to_string()))?;
        if !(1..=crate::parse::MAX_LINE_LIMIT).contains(&cfg.parse.max_line) {
            let limit = crate::parse::MAX_LINE_LIMIT;
            return Err(error_in(
                &cfg.files,
                &["max_line"],
                format!("parse.max_line must be between 1 and {limit} bytes"),
            ));
        }
        let matcher = Matcher::new(&cfg.jails, &cfg.origins, &cfg.matcher)?;
        let prefilter = Prefilter::new(matcher.literal_sets());
        let thresholds: Vec<Threshold> = cfg
            .jails
            .iter()
            .map(|j| Threshold {
                maxretry: j.maxretry,
                findtime: j.findtime.secs() as i64,
                distinct: j.count == Count::DistinctUsers,
                trusted_maxretry: j.trusted_maxretry,
            })
            .collect();
        let window = Window::new(thresholds.clone(), &cfg.window);
        let accounts = Accounts::new(thresholds, &cfg.window);
        let accounts_of = cfg
            .jails
            .iter()
            .map(|j| JailAccounts {
                count: j.count,
                reset: j.on_success.is_some_and(|o| o.reset),
                trust: j.on_success.and_then(|o| o.trust).map(|d| d.secs() as i64),
                checks_trust: j.trusted_maxretry.is_some() || j.count == Count::DistinctAddresses,
                weights: j.rules.iter().map(|r| r.weight).collect(),
            })
            .collect();
        let names: Vec<_> = cfg
            .jails
            .iter()
            .zip(&cfg.ports)
            .map(|(j, ports)| (j.name.clone(), j.bantime, ports.clone()))
            .collect();
        let policy = Policy::new(&cfg.policy, &names, &cfg.files)?;
        let stats = Stats {
            jails: cfg
                .jails
                .iter()
                .map(|j| JailStats {
                    rules: vec![0; j.rules.len()],
                    ignore_rules: vec![0; j.ignore.len()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Ok(Pipeline {
            front: Front::new(prefilter, Parser::new(zone), matcher),
            one: Scanned::default(),
            clock: Clock::new(mode, cfg.parse.future_skew.secs(), cfg.parse.backlog.secs()),
            window,
            policy,
            stats,
            matches: Vec::new(),
            decisions: Vec::new(),
            texts: cfg
                .jails
                .iter()
                .map(|j| (j.rules.iter().map(|r| r.text.clone()).collect(), j.ignore.clone()))
                .collect(),
            started: std::time::Instant::now(),
            evidence: None,
            fleet: None,
            accounts_of,
            accounts,
            account_key: Default::default(),
            trusted_new: Vec::new(),
            login: None,
            hashed: None,
            admitted: None,
            targeted: Targeted::default(),
        })
    }

    /// Trusted (account, address) pairs made since the last call, for the state file.
    pub fn take_trusted(&mut self) -> Vec<Trust> {
        std::mem::take(&mut self.trusted_new)
    }

    /// Takes back trusted pairs (from the state file, or a reload) still good at `now`.
    pub fn restore_trust(&mut self, pairs: &[Trust], now: i64) {
        for (account, key, until) in pairs {
            if *until > now {
                self.policy.trust(account, *key, *until, now);
            }
        }
    }

    /// The `k` addresses with the most failures counting now, most first.
    pub fn most_failing(&self, k: usize) -> Vec<(IpNet, usize)> {
        self.window.top(k)
    }

    /// What each jail counts (`Count::name`), for metrics labels.
    pub fn count_kinds(&self) -> Vec<&'static str> {
        self.accounts_of.iter().map(|a| a.count.name()).collect()
    }

    /// The `k` accounts failures were most often on, with about how many.
    pub fn most_targeted(&self, k: usize) -> Vec<(String, u64)> {
        self.targeted.top(k)
    }

    /// A keyed 64-bit hash of an account name; the line's jails usually all ask for the same
    /// slice of it, which is hashed once.
    fn account_hash(&mut self, user: &str) -> u64 {
        use std::hash::BuildHasher;
        let at = (user.as_ptr() as usize, user.len());
        match self.hashed {
            Some((a, h)) if a == at => h,
            _ => {
                let h = self.account_key.hash_one(user);
                self.hashed = Some((at, h));
                h
            }
        }
    }

    /// Shares counted failures with a fleet (see `FleetCounting`); the fleet starts unreachable.
    pub fn share_failures(&mut self) {
        let names = self.jail_names().iter().map(|n| Arc::from(n.as_str())).collect();
        self.fleet = Some(FleetCounting {
            names,
            ..FleetCounting::default()
        });
    }

    /// The fleet became reachable, or stopped being.
    pub fn fleet_link(&mut self, up: bool) {
        if let Some(f) = &mut self.fleet {
            f.link_up = up;
        }
    }

    /// The failures to publish since the last call.
    pub fn take_shared(&mut self) -> Vec<SharedFailure> {
        self.fleet.as_mut().map(|f| std::mem::take(&mut f.outgoing)).unwrap_or_default()
    }

    /// A failure from the fleet's stream, at clock `now`: `own` when this node published it.
    /// Counted like a line's failure; a ban it brings about is decided (into `out`) only when
    /// it is this node's own failure, else the count starts over as the deciding node's does.
    /// False for a jail this pipeline does not have.
    pub fn fleet_failure(&mut self, f: &SharedFailure, own: bool, now: i64, out: &mut Vec<Decision>) -> bool {
        let Some(jail) = self.jail_names().iter().position(|n| **n == *f.jail) else {
            return false;
        };
        let jail = jail as JailId;
        if let Admit::Count(key) = self.policy.admit(f.net.addr(), jail, now) {
            if own {
                self.record(jail, key, Mark::at(f.time), 1, now);
            } else if self.window.record(jail, key, f.time, now).is_some() {
                self.window.forget(jail, key);
            }
        }
        out.append(&mut self.decisions);
        true
    }

    /// A ban another node decided, at clock `now`: true when it is new here (to be applied).
    pub fn fleet_ban(&mut self, d: &Decision, now: i64) -> bool {
        if !self.policy.fleet_ban(d, now) {
            return false;
        }
        for j in self.policy.jails_covered(&d.ports) {
            self.window.forget(j, d.net);
        }
        true
    }

    /// Makes each decision carry up to `lines` of the log lines that counted toward it (for the
    /// ban mail); 0 turns it off.
    pub fn keep_evidence(&mut self, lines: usize) {
        self.evidence = (lines > 0).then(|| (Evidence::default(), lines));
    }

    /// Whether matches report `<USER>` (for reports; banning needs only the host).
    pub fn set_want_user(&mut self, on: bool) {
        self.front.matcher.set_want_user(on);
    }

    /// The front half (`Front::block`), for other threads: a copy, as configured now.
    pub fn front(&self) -> Front {
        self.front.clone()
    }

    /// Seconds since the daemon's pipeline started (reloads included).
    pub fn uptime(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Jail names by id.
    pub fn jail_names(&self) -> &[String] {
        self.front.matcher.jail_names()
    }

    /// A jail's failure and ignore rules as written.
    pub fn rule_texts(&self, jail: usize) -> (&[String], &[String]) {
        let (r, i) = &self.texts[jail];
        (r, i)
    }

    /// The prefilter's literals as text.
    pub fn literal_texts(&self) -> Vec<String> {
        self.front
            .prefilter
            .literals()
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    /// Rules without a usable literal, as (jail, rule index, is an ignore rule): every line is
    /// parsed for them.
    pub fn unliteral_rules(&self) -> Vec<(&str, usize, bool)> {
        self.front.matcher.unliteral_rules().collect()
    }

    /// Rules whose worst case is far slower than the others' (`Matcher::heavy_rules`).
    pub fn heavy_rules(&self) -> Vec<(&str, usize, bool)> {
        self.front.matcher.heavy_rules()
    }

    /// The zone naive times are read in.
    pub fn zone(&self) -> Zone {
        self.front.parser.zone()
    }

    /// The clock's time for a batch that arrived at `arrival` (the wall clock); ends the bans
    /// whose time is up.
    pub fn tick(&mut self, arrival: i64) -> i64 {
        let now = self.clock.now(arrival);
        self.policy.expire(now);
        now
    }

    /// An operator's ban (`mailpipe ban`) at clock `now`; `ban_for` defaults to the policy's
    /// bantime.
    pub fn manual_ban(
        &mut self,
        ip: std::net::IpAddr,
        jail: &str,
        ban_for: Option<u64>,
        now: i64,
        force: bool,
    ) -> Result<Decision, String> {
        let d = self
            .policy
            .manual_ban(ip, jail, ban_for.unwrap_or_else(|| self.policy.bantime()), now, force)?;
        for j in self.policy.jails_covered(&d.ports) {
            self.window.forget(j, d.net);
        }
        Ok(d)
    }

    /// Hands this pipeline's state to `next` (a reload): bans, ban history, the failures counted
    /// so far and the counters, matched by jail name; jails that are gone take theirs with them.
    pub fn carry_over(self, next: &mut Pipeline) {
        let bans: Vec<Ban> = self.policy.bans().into_iter().cloned().collect();
        next.policy.restore(&bans, &self.policy.histories());
        let now = self.clock.now(crate::clock::wall_clock());
        next.restore_trust(&self.policy.trusts(now), now);
        next.clock = self.clock.clone();
        if let Some(f) = &self.fleet {
            next.share_failures();
            next.fleet_link(f.link_up);
        }
        let old = self.front.matcher.jail_names();
        let new_id = |j: JailId| {
            next.front
                .matcher
                .jail_names()
                .iter()
                .position(|n| *n == old[j as usize])
                .map(|i| i as JailId)
        };
        for (j, ip, times) in self.window.export() {
            if let Some(k) = new_id(j) {
                next.window.import(k, ip, &times);
            }
        }
        next.started = self.started;
        // Jail ids name the lines' jails: the ring is kept only when they mean the same.
        next.evidence = self.evidence.map(|(ring, n)| {
            let same = old == next.front.matcher.jail_names();
            (if same { ring } else { Evidence::default() }, n)
        });
        let jails = std::mem::take(&mut next.stats.jails);
        next.stats = Stats {
            jails,
            ..self.stats.clone()
        };
        for (j, js) in self.stats.jails.iter().enumerate() {
            if let Some(k) = new_id(j as JailId) {
                let mine = &mut next.stats.jails[k as usize];
                // Rule counts are per rule text position; keep totals that still fit.
                mine.bans = js.bans;
                mine.ignored_ip = js.ignored_ip;
                mine.already_banned = js.already_banned;
                mine.bad_host = js.bad_host;
                if mine.rules.len() == js.rules.len() {
                    mine.rules.clone_from(&js.rules);
                }
            }
        }
    }

    /// Takes back bans and history saved before a restart.
    pub fn restore(&mut self, bans: &[Ban], history: &[History]) {
        self.policy.restore(bans, history);
    }

    /// The policy's history retention, in seconds.
    pub fn forget_after(&self) -> i64 {
        self.policy.forget_after()
    }

    /// Lifts a ban: the address or network, if there was one.
    pub fn unban(&mut self, ip: std::net::IpAddr) -> Option<IpNet> {
        self.policy.unban(ip)
    }

    /// Active bans (as of the last `tick`), soonest end first.
    pub fn bans(&self) -> Vec<&Ban> {
        self.policy.bans()
    }

    /// Active bans per jail, in jail order, then under `policy::BAN_NAMES` (recidive,
    /// manual) (cheap: for metrics on every batch).
    pub fn banned_per_jail(&self) -> Vec<usize> {
        self.jail_names()
            .iter()
            .map(String::as_str)
            .chain(crate::policy::BAN_NAMES)
            .map(|n| self.policy.active(n))
            .collect()
    }

    /// Addresses currently counting failures, per jail.
    pub fn failing_per_jail(&self) -> Vec<usize> {
        self.window.per_jail(self.stats.jails.len())
    }

    /// (jail, address) pairs in the windows, and how many were evicted by the cap.
    pub fn tracked(&self) -> (usize, u64) {
        (self.window.tracked(), self.window.evicted())
    }

    /// Runs one line through every stage; `arrival` (Unix seconds) is the wall clock when it
    /// arrived (`run`) or the reference time (`test`). Calls `on` for each match and decision.
    /// Returns whether some jail's failure rule matched.
    pub fn process(&mut self, line: &[u8], arrival: i64, mut on: impl FnMut(Event<'_>)) -> bool {
        let mut one = std::mem::take(&mut self.one);
        one.clear();
        self.front.line(line, None, &mut one);
        let matched = self.count(&one, arrival, |_, e| on(e));
        self.one = one;
        matched > 0
    }

    /// Counts, in order, the lines the front made of a block; `arrival` as for `process`.
    /// Calls `on` with each line's index in the block and its events. Returns how many lines
    /// some jail's failure rule matched.
    pub fn count(&mut self, block: &Scanned, arrival: i64, mut on: impl FnMut(u32, Event<'_>)) -> u64 {
        let parsed = block.lines.iter().filter(|l| l.parsed).count() as u64;
        self.stats.lines += block.lines_read;
        self.stats.parsed += parsed;
        self.stats.skipped += block.lines_read - parsed;
        let before = self.stats.matched_lines;
        for line in &block.lines {
            let text = block.text(line.text);
            if !line.parsed {
                on(line.index, Event::Missed(text));
                continue;
            }
            self.stats.invalid_utf8 += u64::from(line.invalid_utf8);
            self.stats.time_unparsed += u64::from(line.stamp.is_none());
            let (reference, follow) = self.clock.year_reference(arrival);
            let stamp = line.stamp.map(|s| self.front.parser.unix(s, reference, follow));
            let placed = self.clock.place(stamp, arrival);
            self.stats.time_clamped += u64::from(placed.clamped);
            let at = line.matches.start as usize..line.matches.end as usize;
            // The scratch vector outlives the block; reuse its allocation under its lifetime.
            let mut matches: Vec<Match<&str>> = std::mem::take(&mut self.matches).into_iter().map(|_| unreachable!()).collect();
            matches.extend(block.matches[at].iter().map(|m| m.map(|s| block.text(s))));
            let matched = self.count_line(&mut matches, placed, text, block.text(line.msg), &mut |e| on(line.index, e));
            if !matched && line.has_address {
                on(line.index, Event::Missed(text));
            }
            matches.clear();
            self.matches = matches.into_iter().map(|_| unreachable!()).collect();
        }
        self.stats.matched_lines - before
    }

    /// Counts one line's matches at `placed`; whether a failure rule matched.
    fn count_line(&mut self, matches: &mut [Match<&str>], placed: Placed, text: &str, msg: &str, on: &mut dyn FnMut(Event<'_>)) -> bool {
        for m in matches.iter_mut() {
            self.resolve_client(m);
        }
        // The account a line failed on, once however many jails took it.
        if let Some(u) = matches.iter().find_map(|m| match m.found {
            Found::Failure { user: Some(u), .. } if !u.is_empty() => Some(u),
            _ => None,
        }) {
            self.targeted.add(u);
        }
        let mut matched = false;
        (self.login, self.hashed, self.admitted) = (None, None, None);
        for m in matches.iter() {
            matched |= self.account(*m, placed.time, placed.now, text, msg);
            on(Event::Match { m: *m, time: placed.time });
        }
        let ignored = !matched && matches.iter().any(|m| m.found == Found::Ignored);
        self.stats.ignored_lines += u64::from(ignored);
        for d in &self.decisions {
            on(Event::Decision(d));
        }
        self.stats.matched_lines += u64::from(matched);
        self.decisions.clear();
        matched
    }

    /// A failure reported by a trusted proxy becomes the client's; one whose proxy names no
    /// usable client is a bad host (the list is what was found).
    fn resolve_client(&self, m: &mut Match<&str>) {
        if let Found::Failure { ip, forwarded, .. } = &mut m.found {
            match self.policy.client(*ip, *forwarded) {
                Some(client) => *ip = client,
                None => m.found = Found::BadHost(forwarded.unwrap_or("")),
            }
        }
    }

    /// Counts one match at line time `time`, clock `now`, through policy and window; true for a
    /// failure.
    fn account(&mut self, m: Match<&str>, time: i64, now: i64, line: &str, msg: &str) -> bool {
        let js = &mut self.stats.jails[m.jail as usize];
        let (ip, user) = match m.found {
            Found::Ignored => {
                js.ignore_rules[m.rule] += 1;
                return false;
            }
            Found::BadHost(_) => {
                js.bad_host += 1;
                return false;
            }
            Found::Success { ip, user } => {
                js.successes += 1;
                self.success(m, ip, user, msg, now);
                return false;
            }
            Found::Failure { ip, user, .. } => (ip, user.filter(|u| !u.is_empty())),
        };
        js.rules[m.rule] += 1;
        match self.admit(ip, m.jail, now) {
            Admit::Ignored => self.stats.jails[m.jail as usize].ignored_ip += 1,
            Admit::Banned => self.stats.jails[m.jail as usize].already_banned += 1,
            Admit::Count(key) => {
                if let Some((ev, _)) = &mut self.evidence {
                    ev.record(m.jail, key, line);
                }
                let acc = &self.accounts_of[m.jail as usize];
                let (count, weight) = (acc.count, acc.weights[m.rule]);
                let trusted = acc.checks_trust && user.is_some_and(|u| self.policy.is_trusted(u, key, now));
                match (count, user) {
                    (Count::Failures, _) => {
                        if let Some(f) = &mut self.fleet {
                            for _ in 0..weight {
                                f.outgoing.push(SharedFailure {
                                    jail: f.names[m.jail as usize].clone(),
                                    net: key,
                                    time,
                                    counted: !f.link_up,
                                });
                            }
                            if f.link_up {
                                return true;
                            }
                        }
                        let mark = Mark::new(time, user.map_or(0, |u| user_mark(self.account_hash(u))), trusted);
                        self.record(m.jail, key, mark, weight, now);
                    }
                    // Each account counted once; the owner's own mistakes not at all. A name the
                    // rule could not take (an attacker's spaces or brackets) counts as a new one
                    // each time: odd names cannot hide a spray.
                    (Count::DistinctUsers, _) if !trusted => {
                        let h = self.account_hash(user.unwrap_or(line));
                        self.record(m.jail, key, Mark::new(time, user_mark(h), false), 1, now);
                    }
                    (Count::DistinctAddresses, Some(u)) if !trusted => {
                        let mut hit = Vec::new();
                        let h = self.account_hash(u);
                        self.accounts.record(m.jail, h, key, time, now, &mut hit);
                        for k in hit {
                            self.stuffed(m.jail, k, time, now);
                        }
                    }
                    // Counted by user, and no user (or a trusted one) in the line.
                    _ => {}
                }
            }
        }
        true
    }

    /// `Policy::admit`, with the address's ignore check and key taken once per line: a failure
    /// line matches several jails (three in mail.ron). Bans are checked per jail: an earlier
    /// jail's ban on this line may cover this one's ports.
    fn admit(&mut self, ip: std::net::IpAddr, jail: JailId, now: i64) -> Admit {
        let key = match self.admitted {
            Some((i, key)) if i == ip => key,
            _ => {
                let key = self.policy.admit_key(ip, now);
                self.admitted = Some((ip, key));
                key
            }
        };
        match key {
            None => Admit::Ignored,
            Some(key) if self.policy.banned_in(key, jail) => Admit::Banned,
            Some(key) => Admit::Count(key),
        }
    }

    /// A successful login from `ip` (match `m` of message `msg`): its failures on that account
    /// no longer count (`Reset`), and the pair may become trusted. Most logins change nothing
    /// (no failures of that address to reset, its trust renewed within the hour): the user is
    /// taken from the line only when one would.
    fn success(&mut self, m: Match<&str>, ip: std::net::IpAddr, user: Option<&str>, msg: &str, now: i64) {
        let jail = m.jail;
        let acc = &self.accounts_of[jail as usize];
        let (reset, trust, count) = (acc.reset, acc.trust, acc.count);
        let (key, until) = match self.login {
            Some((i, key, until)) if i == ip => (key, until),
            _ => {
                let key = self.policy.key_of(ip);
                let until = self.policy.trusted_until(key);
                self.login = Some((ip, key, until));
                (key, until)
            }
        };
        let renew = trust.is_some_and(|t| until.is_none_or(|u| u < now + t - TRUST_RENEWAL));
        let resets = reset
            && match count {
                Count::DistinctAddresses => trust.is_none(),
                _ => self.window.tracks(jail, key),
            };
        if !(renew || resets) {
            return;
        }
        let Some(user) = user
            .or_else(|| self.front.matcher.success_user(msg, jail, m.rule))
            .filter(|u| !u.is_empty())
        else {
            return;
        };
        let h = self.account_hash(user);
        if reset {
            self.window.reset(jail, key, user_mark(h));
            self.accounts.forget(jail, h, key);
        }
        if let Some(t) = trust {
            let until = now.saturating_add(t);
            if self.policy.trust(user, key, until, now) {
                self.trusted_new.push((user.into(), key, until));
                self.login = None;
            }
            self.accounts.forget(jail, h, key);
        }
    }

    /// A stuffed account's failing address `key`: banned unless it is already.
    fn stuffed(&mut self, jail: JailId, key: IpNet, time: i64, now: i64) {
        if let Admit::Count(key) = self.policy.admit(key.addr(), jail, now) {
            let before = self.decisions.len();
            self.policy.decide(jail, key, 1, time, now, &mut self.decisions);
            self.banned(jail, key, before);
        }
    }

    /// Counts a failure of `key` in `jail` and decides the bans it brings about.
    fn record(&mut self, jail: JailId, key: IpNet, mark: Mark, weight: u32, now: i64) {
        let Some(n) = self.window.add(jail, key, mark, weight, now) else {
            return;
        };
        let before = self.decisions.len();
        self.policy.decide(jail, key, n, mark.time(), now, &mut self.decisions);
        if let Some((ev, max)) = &self.evidence {
            // No more than the failures that counted: a flood's scan stays short.
            let lines = ev.lines(jail, key, (*max).min(n as usize));
            for d in &mut self.decisions[before..] {
                d.evidence = lines.clone();
            }
        }
        self.banned(jail, key, before);
    }

    /// Counts the decisions from `before` on, and stops the jails whose ports they drop from
    /// counting `key` (the others, another service's ports, go on).
    fn banned(&mut self, jail: JailId, key: IpNet, before: usize) {
        self.stats.jails[jail as usize].bans += 1;
        self.stats.bans += (self.decisions.len() - before) as u64;
        for d in &self.decisions[before..] {
            for j in self.policy.jails_covered(&d.ports) {
                self.window.forget(j, key);
            }
        }
    }

    /// Each stage's view of one line, for `mailpipe explain`.
    pub fn explain(&mut self, line: &[u8], now: i64) -> String {
        let mut o = String::new();
        let text = String::from_utf8_lossy(line).into_owned();
        let lits = self.front.prefilter.hits(line);
        let mut scratch = Vec::new();
        let selected = self.front.prefilter.select(line, None, &mut scratch).map(<[u32]>::to_vec);
        let any = selected
            .as_ref()
            .is_some_and(|c| c.len() > self.front.prefilter.candidates(false).len());
        let candidates = selected.unwrap_or_default();
        let _ = writeln!(o, "line:      {text:?}");
        let (reference, follow) = self.clock.year_reference(now);
        let mut journal = crate::parse::JournalScratch::default();
        let rec: Record<'_> = self.front.parser.parse_any(&text, &mut journal);
        let time = rec.time.map(|s| self.front.parser.unix(s, reference, follow));
        let placed = self.clock.place(time, now);
        let _ = writeln!(
            o,
            "parse:     time={} host={:?} program={:?}",
            time.map_or("none (the clock's time is used)".into(), |t| {
                format!(
                    "{} ({} local){}",
                    crate::parse::rfc3339(t),
                    crate::parse::local_iso(self.front.parser.zone(), t),
                    if placed.clamped {
                        format!(
                            "; too far from the clock ({}): counted at the clock's time",
                            crate::parse::rfc3339(placed.now)
                        )
                    } else {
                        String::new()
                    }
                )
            }),
            rec.host.unwrap_or(""),
            rec.program
        );
        let _ = writeln!(o, "           format: {}", rec.format.name());
        let _ = writeln!(o, "           msg={:?}", rec.msg);
        if any {
            let _ = writeln!(o, "prefilter: pass, literals found: {lits:?}; {} candidate rules", candidates.len());
        } else if self.front.prefilter.has_unliteral() {
            let _ = writeln!(o, "prefilter: no literal found; only rules without literals are tried");
        } else {
            let _ = writeln!(
                o,
                "prefilter: skip (no rule's literal occurs in the line; the line would not even be parsed)"
            );
        }
        let mut matches = Vec::new();
        self.front.matcher.set_want_user(true);
        self.front.matcher.find(&rec, &candidates, &mut matches);
        for m in &mut matches {
            self.resolve_client(m);
        }
        if matches.is_empty() {
            let _ = writeln!(o, "matcher:   no rule of any jail matches (rules are anchored at the start of msg)");
        }
        for m in &matches {
            let jail = &self.front.matcher.jail_names()[m.jail as usize];
            match m.found {
                Found::Ignored => {
                    let _ = writeln!(o, "matcher:   jail {jail}: ignore rule {} matches: not a failure", m.rule);
                }
                Found::Success { ip, user } => {
                    let _ = writeln!(
                        o,
                        "matcher:   jail {jail}: success rule {} matches: {:?} logged in from {ip}",
                        m.rule,
                        user.unwrap_or("")
                    );
                }
                Found::BadHost(h) => {
                    let _ = writeln!(
                        o,
                        "matcher:   jail {jail}: rule {} matches but <HOST> {h:?} is not an address",
                        m.rule
                    );
                }
                Found::Failure { ip, user, .. } => {
                    let _ = writeln!(
                        o,
                        "matcher:   jail {jail}: rule {} matches, host {ip}{}",
                        m.rule,
                        user.map(|u| format!(", user {u:?}")).unwrap_or_default()
                    );
                    let ports = self.policy.jail_ports(m.jail);
                    let verdict = match self.policy.verdict(ip, m.jail) {
                        Admit::Ignored => "ignored: the address is in policy.ignore, never banned".to_string(),
                        Admit::Banned => format!("already banned on {ports}"),
                        Admit::Count(key) if key.prefix_len() == key.max_prefix_len() => {
                            format!("counted as {} toward maxretry; a ban drops {ports}", key.addr())
                        }
                        Admit::Count(key) => format!("counted as {key} toward maxretry; a ban drops {ports}"),
                    };
                    let _ = writeln!(o, "policy:    {verdict}");
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targeted_names_are_counted_once_and_shown_harmless() {
        let mut t = Targeted::default();
        for _ in 0..3 {
            t.add("evil\x1b[2Jname");
        }
        t.add("alice");
        assert_eq!(t.top(5), [("evil?[2Jname".to_string(), 3), ("alice".to_string(), 1)]);
    }

    #[test]
    fn five_sasl_failures_ban_once() {
        let mut p = Pipeline::new(&crate::config::Config::builtin().stages().unwrap(), Mode::Live).unwrap();
        let mut bans = Vec::new();
        for i in 0..6 {
            let line = format!(
                "Jun 17 03:14:0{i} mail postfix/smtpd[1]: warning: unknown[46.38.145.252]: SASL LOGIN authentication failed: UGFzc3dvcmQ6"
            );
            p.process(line.as_bytes(), 1_781_700_000, |e| {
                if let Event::Decision(d) = e {
                    bans.push(d.clone());
                }
            });
        }
        assert_eq!(bans.len(), 1);
        assert_eq!(
            (bans[0].net.addr().to_string().as_str(), &*bans[0].jail, bans[0].failures),
            ("46.38.145.252", "postfix-sasl", 5)
        );
        assert_eq!(p.stats().jails[0].already_banned, 1);
    }

    #[test]
    fn skipped_lines_are_counted() {
        let mut p = Pipeline::new(&crate::config::Config::builtin().stages().unwrap(), Mode::Live).unwrap();
        assert!(!p.process(b"Jun 17 03:14:07 mail postfix/smtpd[1]: connect from x[192.0.2.1]", 0, |_| {}));
        assert_eq!((p.stats().lines, p.stats().skipped), (1, 1));
    }
}
