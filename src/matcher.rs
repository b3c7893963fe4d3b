//! Stage 3: every rule of every jail in one multi-pattern DFA.
//!
//! Rules are fail2ban-style regexes anchored at the start of the message. `<HOST>` (alias
//! `<ADDR>`) stands for an IPv4 or IPv6 address (IPv4-mapped IPv6 becomes IPv4; no DNS, ever),
//! `<IP4>` and `<IP6>` for one family only (where a separator such as `:` would make an IPv6
//! address ambiguous),
//! `<USER>` for a user name. All failure and ignore rules are compiled once into one DFA (lazy
//! hybrid by default, dense optional) that reports, in one pass, which rules match; only then is
//! the matching rule's own regex run to extract `<HOST>`. regex-automata has no backtracking, so
//! no rule can take exponential time, and the anchoring means an address can only be taken from
//! where the rule says, never from text an attacker put further along the line.

use std::collections::HashMap;
use std::net::IpAddr;

use regex_automata::dfa::{self, Automaton};
use regex_automata::hybrid;
use regex_automata::meta;
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, PatternID};
use serde::Deserialize;

use crate::parse::Record;
use crate::primitives::{ConfigError, Jail, Origin, jail_needles, regex_needles};

/// IPv4, dotted quad.
const IPV4: &str = r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}";
/// IPv6, loosely (validated by the address parser), with an optional embedded IPv4 tail.
const IPV6: &str = r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3})?";

/// The largest dense DFA (and its determinization) a pipeline may ask for: a bound on the
/// memory and the time a compile takes.
pub const MAX_DENSE: usize = 128 << 20;
/// The lazy DFA's cache. A rule whose full DFA needs more than this cannot keep its states in
/// it: on long lines the cache is cleared again and again, a state built per byte, so `check`
/// reports such a rule as slow.
const CACHE: usize = 8 << 20;
/// The largest NFA one rule set compiles to.
const MAX_NFA: usize = 64 << 20;

/// Matcher engine choice.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
pub enum Engine {
    /// Lazy DFA: builds in about a millisecond, states made on demand. The default.
    #[default]
    Hybrid,
    /// Fully compiled DFA, bounded in bytes; slightly faster on some rule sets.
    Dense {
        /// Upper bound on the DFA's size in bytes (at most `MAX_DENSE`).
        size_limit: usize,
    },
}

/// Matcher-stage settings of a pipeline file.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MatcherConfig {
    /// Which DFA to build.
    pub engine: Engine,
}

/// Index of a jail in the compiled pipeline.
pub type JailId = u16;

/// What one rule found in one line; `S` is how its texts are held (`&str` of the line, or a
/// span of a block's text, `front::Span`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<S> {
    /// A failure by this address.
    Failure {
        /// The offender, canonical (IPv4-mapped IPv6 is IPv4).
        ip: IpAddr,
        /// The `<USER>` text, if the rule has one.
        user: Option<S>,
        /// The `<FORWARDED>` text (an `X-Forwarded-For` list), if the rule has one and the line
        /// carries it; the policy decides whether it is believed.
        forwarded: Option<S>,
    },
    /// The jail's ignore rule `rule` matched: not a failure.
    Ignored,
    /// The jail's success rule `rule` matched: this address logged in. The user is taken only
    /// when asked for (`Matcher::success_user`, or `want_user`): most logins change nothing.
    Success {
        /// The address, canonical.
        ip: IpAddr,
        /// The `<USER>` text, when it was taken.
        user: Option<S>,
    },
    /// The rule matched but `<HOST>` is not an address (e.g. `999.1.1.1`): counted, dropped.
    BadHost(S),
}

/// One jail's verdict on one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<S> {
    /// The jail.
    pub jail: JailId,
    /// Index of the failure (or, for `Ignored`, ignore; for `Success`, success) rule within the
    /// jail.
    pub rule: usize,
    /// What was found.
    pub found: Found<S>,
}

impl<S> Match<S> {
    /// The same match with its texts held as `f` makes them.
    pub fn map<T>(self, mut f: impl FnMut(S) -> T) -> Match<T> {
        let found = match self.found {
            Found::Failure { ip, user, forwarded } => Found::Failure {
                ip,
                user: user.map(&mut f),
                forwarded: forwarded.map(&mut f),
            },
            Found::Ignored => Found::Ignored,
            Found::Success { ip, user } => Found::Success { ip, user: user.map(f) },
            Found::BadHost(h) => Found::BadHost(f(h)),
        };
        Match {
            jail: self.jail,
            rule: self.rule,
            found,
        }
    }
}

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per core; the lazy DFA (the default) inline with its cache, a dense one shared
enum Dfa {
    Hybrid(hybrid::dfa::DFA, hybrid::dfa::Cache),
    Dense(std::sync::Arc<dfa::dense::DFA<Vec<u32>>>),
}

/// What a rule of a jail is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Failure,
    Ignore,
    Success,
}

#[derive(Debug, Clone)]
struct Rule {
    jail: JailId,
    index: usize,
    kind: Kind,
    /// The whole rule with its groups: for `<USER>`, and for `<HOST>` when `finder` is `None`.
    re: meta::Regex,
    caps: Captures,
    has_user: bool,
    /// The rule has `<FORWARDED>`: its text is captured with the host.
    has_forwarded: bool,
    finder: Option<HostFinder>,
    /// Finds `<USER>` without a capture search, where the rule allows (see `UserFinder`).
    user_finder: Option<UserFinder>,
    has_literal: bool,
    /// The rule as the rule DFA sees it (for `heavy_rules`).
    pattern: String,
    /// The first rule with the same text: jails of one service in several modes share rules,
    /// and a line is matched against each text once.
    same_as: usize,
}

/// Where a rule's groups are in the current line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spans {
    host: std::ops::Range<usize>,
    user: Option<std::ops::Range<usize>>,
    fwd: Option<std::ops::Range<usize>>,
}

/// What a rule text did on the current line (see `Rule::same_as`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Not tried on this line yet.
    No,
    /// It does not match.
    Miss,
    /// It matches, with the host when the finder saw it.
    Hit(Option<(std::ops::Range<usize>, IpAddr)>),
}

/// What `HostFinder` saw of a rule in a line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// The rule matches with this address (and its span).
    Host(std::ops::Range<usize>, IpAddr),
    /// The part before `<HOST>` matched but no address fits: the rule may still match with a
    /// non-address (`999.1.1.1`); the DFA and the capture search decide.
    BeforeHost,
    /// The rule cannot match.
    NoMatch,
}

/// Finds `<HOST>` without a capturing engine, and with it whether the rule matches.
///
/// The rule is split at `<HOST>` into a part before (P) and after (S), each a lazy DFA. Every
/// place P can end is a candidate host start; a candidate is the host when an address starts
/// there and S matches right after it. The last candidate wins, as a greedy `.*` in P would
/// have it. Two DFA scans cost a fraction of a backtracking capture search.
#[derive(Debug, Clone)]
struct HostFinder {
    /// `None` when the rule starts with `<HOST>`.
    pre: Option<(hybrid::dfa::DFA, hybrid::dfa::Cache)>,
    post: (hybrid::dfa::DFA, hybrid::dfa::Cache),
    family: Family,
}

/// Which addresses a host placeholder takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `<HOST>`, `<ADDR>`: IPv4 or IPv6.
    Any,
    /// `<IP4>`.
    V4,
    /// `<IP6>`.
    V6,
}

/// The host placeholders, what the rule DFA and the capture see for each, and their family.
const PLACEHOLDERS: [(&str, &str, Family); 4] = [
    ("<HOST>", LOOSE_HOST, Family::Any),
    ("<ADDR>", LOOSE_HOST, Family::Any),
    ("<IP4>", "[0-9.]+", Family::V4),
    ("<IP6>", LOOSE_HOST, Family::V6),
];

impl Family {
    fn takes(self, ip: &IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        }
    }
}

/// A lazy DFA (and its cache) for one half of a rule split at a placeholder, reporting every
/// place it can end (`MatchKind::All`); `None` when the half does not compile alone.
fn half_dfa(pattern: &str) -> Option<(hybrid::dfa::DFA, hybrid::dfa::Cache)> {
    let dfa = hybrid::dfa::DFA::builder()
        .syntax(syntax_config())
        .configure(
            hybrid::dfa::Config::new()
                .match_kind(MatchKind::All)
                .minimum_cache_clear_count(None),
        )
        .build(pattern)
        .ok()?;
    let cache = dfa.create_cache();
    Some((dfa, cache))
}

impl HostFinder {
    /// `None` when the halves do not compile alone (`<HOST>` inside a group): captures are used.
    fn new(before: &str, after: &str, family: Family) -> Option<HostFinder> {
        let pre = if before.is_empty() { None } else { Some(half_dfa(before)?) };
        Some(HostFinder {
            pre,
            post: half_dfa(after)?,
            family,
        })
    }

    /// The host's span in `msg`, and whether the part before `<HOST>` matched at all.
    fn find(&mut self, msg: &[u8]) -> Probe {
        let Some((pre, cache)) = &mut self.pre else {
            return Self::host_span(&mut self.post, self.family, msg, 0).map_or(Probe::BeforeHost, |(s, ip)| Probe::Host(s, ip));
        };
        let input = Input::new(msg).anchored(Anchored::Yes);
        // The longest P first (MatchKind::All reports the last end): when the host is there, it
        // is the last candidate, the one wanted. Usually P ends in exactly one place anyway.
        let last = match pre.try_search_fwd(cache, &input) {
            Ok(Some(m)) => m.offset(),
            Ok(None) => return Probe::NoMatch,
            Err(_) => return Probe::BeforeHost,
        };
        if let Some((span, ip)) = Self::host_span(&mut self.post, self.family, msg, last) {
            return Probe::Host(span, ip);
        }
        let mut state = regex_automata::hybrid::dfa::OverlappingState::start();
        let mut probe = Probe::BeforeHost;
        loop {
            if pre.try_search_overlapping_fwd(cache, &input, &mut state).is_err() {
                return Probe::BeforeHost;
            }
            let Some(m) = state.get_match() else { break };
            if let Some((span, ip)) = Self::host_span(&mut self.post, self.family, msg, m.offset()) {
                probe = Probe::Host(span, ip);
            }
        }
        probe
    }

    /// The longest address starting at `at` after which S matches.
    fn host_span(
        post: &mut (hybrid::dfa::DFA, hybrid::dfa::Cache),
        family: Family,
        msg: &[u8],
        at: usize,
    ) -> Option<(std::ops::Range<usize>, IpAddr)> {
        let run = msg[at..]
            .iter()
            .take(45)
            .take_while(|b| b.is_ascii_hexdigit() || **b == b':' || **b == b'.')
            .count();
        (2..=run).rev().find_map(|len| {
            // The run is ASCII, so this cannot fail.
            let ip = std::str::from_utf8(&msg[at..at + len])
                .ok()?
                .parse::<IpAddr>()
                .ok()
                .filter(|ip| family.takes(ip))?;
            let after = Input::new(msg).range(at + len..).anchored(Anchored::Yes).earliest(true);
            matches!(post.0.try_search_fwd(&mut post.1, &after), Ok(Some(_))).then_some((at..at + len, ip))
        })
    }
}

/// Finds `<USER>` the way `HostFinder` finds the host, for rules where `<USER>` stands alone
/// (not inside a group): every place the part before it (P) can end is a candidate start; the
/// user is the longest run of `<USER>` characters there after which the rest (S) matches. The
/// last candidate wins, as a greedy `.*` in P would have it. When it finds nothing, the capture
/// search decides.
#[derive(Debug, Clone)]
struct UserFinder {
    pre: (hybrid::dfa::DFA, hybrid::dfa::Cache),
    post: (hybrid::dfa::DFA, hybrid::dfa::Cache),
    /// S up to the host, when the host comes after `<USER>`: with the host already found, S
    /// need only be checked up to it, not to the end of the line.
    mid: Option<(hybrid::dfa::DFA, hybrid::dfa::Cache)>,
}

impl UserFinder {
    fn new(rule: &str) -> Option<UserFinder> {
        // `(?:<USER>|.*)` (a name, or whatever an attacker wrote) prefers the name: the finder
        // looks for that; when there is none, the capture search takes the rest.
        let mut rule = rule.replace("(?:<USER>|.*)", "<USER>");
        // `(?: user=<<USER>>,)?`: the finder looks for the line that has the user.
        while let Some(r) = unwrap_optional(&rule) {
            rule = r;
        }
        let (i, rest) = (rule.find("<USER>")?, rule.len() - "<USER>".len());
        if rule[i + 6..].contains("<USER>") || i == 0 || i == rest {
            return None;
        }
        let dfa = |p: &str| half_dfa(&expand_for_dfa(p));
        let post = &rule[i + 6..];
        Some(UserFinder {
            pre: dfa(&rule[..i])?,
            post: dfa(post)?,
            mid: split_at_host(post).and_then(|(mid, _, _)| half_dfa(&mid)),
        })
    }

    /// The user's span in `msg`; `host` is where the host starts, when it is known.
    fn find(&mut self, msg: &[u8], host: Option<usize>) -> Option<std::ops::Range<usize>> {
        let input = Input::new(msg).anchored(Anchored::Yes);
        // The longest P first (MatchKind::All reports the last end): usually the only one.
        let last = self.pre.0.try_search_fwd(&mut self.pre.1, &input).ok()??.offset();
        if let Some(u) = self.user_at(msg, last, host) {
            return Some(u);
        }
        let mut state = regex_automata::hybrid::dfa::OverlappingState::start();
        let mut found = None;
        loop {
            self.pre.0.try_search_overlapping_fwd(&mut self.pre.1, &input, &mut state).ok()?;
            let Some(m) = state.get_match() else { break };
            found = self.user_at(msg, m.offset(), host).or(found);
        }
        found
    }

    /// The user starting at `at`, if S matches after it: up to exactly `host` when the host is
    /// known and comes after the user, else to the end of the line.
    fn user_at(&mut self, msg: &[u8], at: usize, host: Option<usize>) -> Option<std::ops::Range<usize>> {
        let end = at + msg[at..].iter().take_while(|&&b| is_user_byte(b)).count();
        let ok = match (&mut self.mid, host) {
            (Some((mid, cache)), Some(h)) if end <= h => {
                // MatchKind::All reports the last place S can end in the range: the host's start.
                let upto = Input::new(msg).range(end..h).anchored(Anchored::Yes);
                matches!(mid.try_search_fwd(cache, &upto), Ok(Some(m)) if m.offset() == h)
            }
            _ => {
                let after = Input::new(msg).range(end..).anchored(Anchored::Yes).earliest(true);
                matches!(self.post.0.try_search_fwd(&mut self.post.1, &after), Ok(Some(_)))
            }
        };
        ok.then_some(at..end)
    }
}

/// `rule` with the optional non-capturing group `(?:...)?` that holds `<USER>` innermost made
/// plain; `None` when `<USER>` is in no such group.
fn unwrap_optional(rule: &str) -> Option<String> {
    let at = rule.find("<USER>")?;
    let b = rule.as_bytes();
    let (mut open, mut i, mut class) = (Vec::new(), 0, false);
    let mut group = None;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !class => class = true,
            b']' if class => class = false,
            b'(' if !class => open.push(i),
            b')' if !class => {
                let start = open.pop()?;
                if start < at && i > at && group.is_none() {
                    group = Some((start, i));
                }
            }
            _ => {}
        }
        if i == at && group.is_none() && open.is_empty() {
            return None;
        }
        i += 1;
    }
    let (start, end) = group?;
    (rule[start..].starts_with("(?:") && b.get(end + 1) == Some(&b'?') && b.get(end + 2) != Some(&b'?'))
        .then(|| format!("{}{}{}", &rule[..start], &rule[start + 3..end], &rule[end + 2..]))
}

/// A byte `<USER>` (`[^\s,>)]`) takes.
fn is_user_byte(b: u8) -> bool {
    !(b.is_ascii_whitespace() || b"\x0b,>)".contains(&b))
}

/// A problem building the matcher (reported as `file:line:col`).
pub type MatcherError = ConfigError;

/// The compiled rules of all jails. A clone shares the compiled automata and has caches of its
/// own, for another thread.
#[derive(Debug, Clone)]
pub struct Matcher {
    dfa: Dfa,
    rules: Vec<Rule>,
    programs: Vec<Option<meta::Regex>>,
    jail_names: Vec<String>,
    literals: Vec<Option<Vec<Vec<u8>>>>,
    /// Extract `<USER>` too (costs a capture search; for reports, not for banning).
    want_user: bool,
    /// Each jail's ignore rules (pattern ids): tried only once a failure rule of the jail matched.
    ignores: Vec<Vec<u32>>,
    /// Each jail's success rules (pattern ids), for `success_user`.
    successes: Vec<Vec<u32>>,
    /// Jails that count by user or act on successes: their matches always carry `<USER>`.
    user_jails: Vec<bool>,
    /// Which jails each program may feed, by program name; bounded, rebuilt when full.
    program_cache: HashMap<Box<str>, Box<[bool]>>,
    /// Per-line scratch, reused: each jail's state on the current line.
    jail_state: Vec<JailState>,
    /// Per-line scratch, reused: what each rule text did (indexed by `Rule::same_as`), and
    /// which entries to reset after the line.
    seen: Vec<Seen>,
    seen_set: Vec<usize>,
    /// Per-line scratch, reused: each rule text's groups once searched (indexed like `seen`).
    spans: Vec<Option<Spans>>,
    spans_set: Vec<usize>,
}

/// Where a jail stands on the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JailState {
    /// Its program filter passed and no rule has matched yet.
    Allowed,
    /// Decided (matched, ignored, or another program): skip its other rules.
    Done,
}

fn syntax_config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(false)
}

/// `<USER>`: a user name as logs print it.
const USER: &str = r"[^\s,>)]*";
/// `<FORWARDED>`: an `X-Forwarded-For` list. Its start is whatever the client sent (letters, a
/// `)`), so it takes anything: what follows it in the rule must be the server's own text, and
/// the policy reads the list from its end, where the proxies wrote.
const FORWARDED: &str = r".*";

/// `<HOST>` in the rule DFA: any run of address characters. The exact address grammar
/// (counted repetitions, IPv4 inside IPv6) multiplies DFA states wherever a rule has `\S*`
/// before the host; the address itself is checked when it is extracted.
const LOOSE_HOST: &str = "[0-9A-Fa-f:.]+";

/// The rule as the multi-pattern DFA sees it: no groups, loose host.
fn expand_for_dfa(rule: &str) -> String {
    PLACEHOLDERS.iter().fold(plain(rule), |r, (p, loose, _)| r.replace(p, loose))
}

/// `<USER>` and `<FORWARDED>` as plain regexes, without groups.
fn plain(rule: &str) -> String {
    rule.replace("<USER>", USER).replace("<FORWARDED>", FORWARDED)
}

/// Expands the host placeholders and `<USER>` into named groups; also returns how many hosts.
fn expand(rule: &str) -> (String, usize) {
    let n = PLACEHOLDERS.iter().map(|(p, _, _)| rule.matches(p).count()).sum();
    let s = PLACEHOLDERS.iter().fold(
        rule.replace("<USER>", &format!("(?P<user>{USER})"))
            .replace("<FORWARDED>", &format!("(?P<fwd>{FORWARDED})")),
        |r, (p, _, family)| {
            let grammar = match family {
                Family::Any => format!("{IPV4}|{IPV6}"),
                Family::V4 => IPV4.to_string(),
                Family::V6 => IPV6.to_string(),
            };
            r.replace(p, &format!("(?P<host>{grammar})"))
        },
    );
    (s, n)
}

/// A parse error in `rule` (as written): what is wrong, and where in the rule.
fn regex_error(rule: &str, e: &regex_syntax::Error) -> String {
    let (span, kind) = match e {
        regex_syntax::Error::Parse(x) => (*x.span(), x.kind().to_string()),
        regex_syntax::Error::Translate(x) => (*x.span(), x.kind().to_string()),
        _ => return format!("bad regex: {}", one_line(&e.to_string())),
    };
    let text = rule.get(span.start.offset..span.end.offset.max(span.start.offset)).unwrap_or("");
    format!(
        "bad regex: {kind}, at {text:?} (character {} of the rule)",
        rule[..span.start.offset.min(rule.len())].chars().count() + 1
    )
}

/// fail2ban's syntax pasted into a rule: `%(name)s` interpolation, `<F-USER>` groups, its
/// `^%(__prefix_line)s` prefix; what to write instead.
fn fail2ban_syntax(rule: &str) -> Option<String> {
    let found = |what: &str| rule.contains(what);
    let which = if found("%(") && found(")s") {
        "`%(name)s` interpolation"
    } else if found("<F-") || found("</F-") {
        "a `<F-...>` capture group (write <USER> for the user name)"
    } else if found("<SKIPLINES>") || found("<HOST_") {
        "a fail2ban tag"
    } else {
        return None;
    };
    Some(format!(
        "this is fail2ban syntax: {which}; a rule starts at the message (no `^%(__prefix_line)s`), \
         and `mailpipe import fail2ban` converts a whole fail2ban configuration"
    ))
}

/// The rule's text before and after its one host placeholder, and the placeholder's family,
/// for `HostFinder`.
fn split_at_host(rule: &str) -> Option<(String, String, Family)> {
    let (i, p, family) = PLACEHOLDERS
        .iter()
        .filter_map(|(p, _, f)| rule.find(p).map(|i| (i, p, *f)))
        .min_by_key(|(i, _, _)| *i)?;
    Some((plain(&rule[..i]), plain(&rule[i + p.len()..]), family))
}

/// Turns a program glob (`postfix*/smtpd`) into an anchored regex.
fn glob_regex(globs: &[String]) -> String {
    let alts: Vec<String> = globs
        .iter()
        .map(|g| g.split('*').map(regex_syntax::escape).collect::<Vec<_>>().join(".*"))
        .collect();
    format!("^(?:{})$", alts.join("|"))
}

/// One rule text, compiled.
struct Compiled {
    re: meta::Regex,
    lits: Option<Vec<Vec<u8>>>,
    finder: Option<HostFinder>,
    user_finder: Option<UserFinder>,
    has_user: bool,
    has_forwarded: bool,
}

/// Checks and compiles one rule text (prefix included); the reason when it is wrong.
fn compile(full: &str, kind: Kind) -> Result<Compiled, String> {
    if let Some(hint) = fail2ban_syntax(full) {
        return Err(hint);
    }
    let ignore = kind == Kind::Ignore;
    let (pattern, hosts) = expand(full);
    if !ignore && hosts != 1 {
        return Err(format!("a rule needs exactly one <HOST> (found {hosts})"));
    }
    if kind == Kind::Success && !full.contains("<USER>") {
        return Err("a success rule needs <USER>: a success resets or trusts one account".into());
    }
    // Placeholders are plain text to the parser: an error in the rule is shown under the rule
    // as written, not under the expanded <HOST> grammar.
    let parser = || regex_syntax::ParserBuilder::new().unicode(false).utf8(false).build();
    parser().parse(full).map_err(|e| regex_error(full, &e))?;
    let hir = parser()
        .parse(&pattern)
        .map_err(|e| format!("bad regex: {}", one_line(&e.to_string())))?;
    let re = meta::Regex::builder()
        .syntax(syntax_config())
        .build(&pattern)
        .map_err(|e| format!("bad regex: {}", one_line(&e.to_string())))?;
    Ok(Compiled {
        re,
        lits: crate::prefilter::required_literals(&hir),
        finder: if ignore {
            None
        } else {
            split_at_host(full).and_then(|(b, a, family)| HostFinder::new(&b, &a, family))
        },
        user_finder: if ignore { None } else { UserFinder::new(full) },
        has_user: full.contains("<USER>"),
        has_forwarded: full.contains("<FORWARDED>"),
    })
}

/// A rule as its jail has it, before compiling.
struct Written<'j> {
    jail: usize,
    /// Its index among the jail's rules of its kind.
    index: usize,
    kind: Kind,
    /// As written (for error positions).
    text: &'j str,
    /// With the jail's prefix.
    full: String,
    /// The first rule of the same kind and full text (itself when none is earlier): jails of
    /// one service in several modes share many.
    same_as: usize,
}

impl Written<'_> {
    /// The reason this rule does not compile, at its place in its file.
    fn error(&self, jails: &[Jail], origins: &[Origin], reason: &str) -> MatcherError {
        let jail = &jails[self.jail];
        let what = match self.kind {
            Kind::Failure => "rule",
            Kind::Ignore => "ignore rule",
            Kind::Success => "success rule",
        };
        let needles = regex_needles(self.text);
        origins[self.jail].error_at(
            &[&needles[0], &needles[1], &jail_needles(jail)],
            format!("jail {:?} {what} {}: {reason}", jail.name, self.index),
        )
    }
}

/// An ignore rule only matters where one of its jail's failure rules can match, so one without
/// a literal of its own takes theirs.
fn inherit_literals(rules: &[Rule], literals: &mut [Option<Vec<Vec<u8>>>]) {
    for i in 0..rules.len() {
        if rules[i].kind == Kind::Ignore && literals[i].is_none() {
            let jail = rules[i].jail;
            let theirs: Option<Vec<Vec<u8>>> = rules
                .iter()
                .zip(literals.iter())
                .filter(|(r, _)| r.jail == jail && r.kind == Kind::Failure)
                .map(|(_, l)| l.clone())
                .collect::<Option<Vec<_>>>()
                .map(|v| v.concat());
            literals[i] = theirs;
        }
    }
}

/// Checks a jail and compiles its program filter (`None`: every program).
fn program_filter(jail: &Jail, origin: &Origin) -> Result<Option<meta::Regex>, MatcherError> {
    let err = |reason: String| origin.error_at(&[&jail_needles(jail)], reason);
    if jail.rules.is_empty() {
        return Err(err(format!("jail {:?} has no rules", jail.name)));
    }
    if jail.maxretry == 0 {
        return Err(err(format!("jail {:?}: maxretry must be at least 1", jail.name)));
    }
    if jail.programs.is_empty() {
        return Ok(None);
    }
    let re = meta::Regex::builder().syntax(syntax_config()).build(&glob_regex(&jail.programs));
    re.map(Some)
        .map_err(|e| err(format!("jail {:?}: bad program glob: {e}", jail.name)))
}

/// Every jail's rules (failure, ignore, success), in pattern order.
fn written_rules<'j>(jails: &'j [Jail], origins: &[Origin]) -> Result<Vec<Written<'j>>, MatcherError> {
    let mut written: Vec<Written<'j>> = Vec::new();
    for (j, (jail, origin)) in jails.iter().zip(origins).enumerate() {
        JailId::try_from(j).map_err(|_| origin.error_at(&[], "too many jails"))?;
        let all = (jail.rules.iter().map(|r| (r.text.as_str(), Kind::Failure)))
            .chain(jail.ignore.iter().map(|r| (r.as_str(), Kind::Ignore)))
            .chain(jail.success.iter().map(|r| (r.as_str(), Kind::Success)));
        let mut counts = [0usize; 3];
        for (text, kind) in all {
            let index = counts[kind as usize];
            counts[kind as usize] += 1;
            // The prefix is the failures' (fail2ban's prefregex); a success line is another.
            let prefix = if kind == Kind::Success {
                ""
            } else {
                jail.prefix.as_deref().unwrap_or("")
            };
            let full = format!("{prefix}{text}");
            let same_as = written
                .iter()
                .position(|w| w.kind == kind && w.full == full)
                .unwrap_or(written.len());
            written.push(Written {
                jail: j,
                index,
                kind,
                text,
                full,
                same_as,
            });
        }
    }
    Ok(written)
}

/// Compiles each first text (`Written::same_as` itself) on every core, beside the automaton of
/// all `patterns`: most of start-up. Texts are dealt out in turn, as neighbours (one service's
/// rules) cost alike. The results are in the texts' order.
fn compile_all(written: &[Written<'_>], patterns: &[String], engine: Engine) -> (Result<Dfa, String>, Vec<Result<Compiled, String>>) {
    let firsts: Vec<usize> = (0..written.len()).filter(|&i| written[i].same_as == i).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    std::thread::scope(|scope| {
        let dfa = scope.spawn(|| build_dfa(patterns, engine));
        let parts: Vec<_> = (0..threads)
            .map(|t| {
                let firsts = &firsts;
                scope.spawn(move || {
                    let mine = firsts.iter().skip(t).step_by(threads);
                    mine.map(|&i| (i, compile(&written[i].full, written[i].kind))).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut compiled: Vec<_> = parts.into_iter().flat_map(|h| h.join().expect("compiling never panics")).collect();
        compiled.sort_unstable_by_key(|(i, _)| *i);
        let dfa = dfa.join().expect("compiling never panics");
        (dfa, compiled.into_iter().map(|(_, c)| c).collect())
    })
}

impl Matcher {
    /// Compiles all jails' rules; errors point at the offending rule in its file.
    pub fn new(jails: &[Jail], origins: &[Origin], cfg: &MatcherConfig) -> Result<Matcher, MatcherError> {
        // Errors are reported in file order: a jail's own before its rules', both before the
        // next jail's.
        let mut checks = jails.iter().zip(origins).map(|(j, o)| program_filter(j, o));
        let mut programs = Vec::with_capacity(jails.len());
        let written = written_rules(jails, origins)?;
        let patterns: Vec<String> = written.iter().map(|w| expand_for_dfa(&w.full)).collect();
        let (dfa, compiled) = compile_all(&written, &patterns, cfg.engine);
        let mut compiled = compiled.into_iter();
        let mut rules: Vec<Rule> = Vec::new();
        let mut literals: Vec<Option<Vec<Vec<u8>>>> = Vec::new();
        for (i, w) in written.iter().enumerate() {
            while programs.len() <= w.jail {
                programs.push(checks.next().expect("a check per jail")?);
            }
            let (jail, index, kind, same_as) = (w.jail as JailId, w.index, w.kind, w.same_as);
            if same_as < i {
                // Checked and compiled as its first: matched through it.
                let r: &Rule = &rules[same_as];
                let twin = Rule {
                    jail,
                    index,
                    caps: r.re.create_captures(),
                    re: r.re.clone(),
                    finder: None,
                    user_finder: None,
                    pattern: r.pattern.clone(),
                    same_as,
                    ..*r
                };
                rules.push(twin);
                literals.push(literals[same_as].clone());
                continue;
            }
            let c = compiled
                .next()
                .expect("one result per first text")
                .map_err(|reason| w.error(jails, origins, &reason))?;
            rules.push(Rule {
                jail,
                index,
                kind,
                caps: c.re.create_captures(),
                re: c.re,
                has_user: c.has_user,
                has_forwarded: c.has_forwarded,
                finder: c.finder,
                user_finder: c.user_finder,
                has_literal: c.lits.is_some(),
                pattern: patterns[i].clone(),
                same_as,
            });
            literals.push(c.lits);
        }
        for check in checks {
            programs.push(check?);
        }
        inherit_literals(&rules, &mut literals);
        let dfa = dfa.map_err(|e| {
            origins.first().map_or_else(
                || ConfigError {
                    file: "<none>".into(),
                    line: 1,
                    col: 1,
                    reason: e.clone(),
                },
                |o| o.error_at(&["engine"], e.clone()),
            )
        })?;
        let (mut ignores, mut successes) = (vec![Vec::new(); jails.len()], vec![Vec::new(); jails.len()]);
        for (pid, r) in rules.iter().enumerate() {
            match r.kind {
                Kind::Ignore => ignores[r.jail as usize].push(pid as u32),
                Kind::Success => successes[r.jail as usize].push(pid as u32),
                Kind::Failure => {}
            }
        }
        let user_jails = jails
            .iter()
            .map(|j| j.count != crate::primitives::Count::Failures || !j.success.is_empty())
            .collect();
        Ok(Matcher {
            dfa,
            want_user: false,
            programs,
            jail_names: jails.iter().map(|j| j.name.clone()).collect(),
            literals,
            ignores,
            successes,
            user_jails,
            program_cache: HashMap::new(),
            jail_state: vec![JailState::Done; jails.len()],
            seen: vec![Seen::No; rules.len()],
            seen_set: Vec::new(),
            spans: vec![None; rules.len()],
            spans_set: Vec::new(),
            rules,
        })
    }

    /// Each rule's required literals, in pattern order (for the prefilter).
    pub fn literal_sets(&self) -> &[Option<Vec<Vec<u8>>>] {
        &self.literals
    }

    /// Rules without a usable literal, as `(jail, rule index, is an ignore rule)`.
    pub fn unliteral_rules(&self) -> impl Iterator<Item = (&str, usize, bool)> {
        self.rules
            .iter()
            .filter(|r| !r.has_literal)
            .map(|r| (self.jail_names[r.jail as usize].as_str(), r.index, r.kind == Kind::Ignore))
    }

    /// Rules whose own automaton needs more than `CACHE` bytes as a full DFA, as `(jail, rule
    /// index, is an ignore rule)`. The lazy DFA builds states as lines need them; for such a
    /// rule a long line can build one per byte (`.*a.{20}\[<HOST>\]`: 117 lines/s on 16 KB
    /// lines, against millions for the others), so `check` warns about them. Bounded: each
    /// build stops at the limit.
    pub fn heavy_rules(&self) -> Vec<(&str, usize, bool)> {
        self.rules
            .iter()
            .filter(|r| {
                dfa::dense::Builder::new()
                    .syntax(syntax_config())
                    .configure(
                        dfa::dense::Config::new()
                            .start_kind(regex_automata::dfa::StartKind::Anchored)
                            .dfa_size_limit(Some(CACHE))
                            .determinize_size_limit(Some(CACHE)),
                    )
                    .build(&r.pattern)
                    .is_err()
            })
            .map(|r| (self.jail_names[r.jail as usize].as_str(), r.index, r.kind == Kind::Ignore))
            .collect()
    }

    /// Whether matches report `<USER>` (off by default: banning needs only the host).
    pub fn set_want_user(&mut self, on: bool) {
        self.want_user = on;
    }

    /// Jail names by id.
    pub fn jail_names(&self) -> &[String] {
        &self.jail_names
    }

    /// Pushes one `Match` per jail whose rules match `rec` into `out`. Only the rules in
    /// `candidates` (pattern ids, ascending, from the prefilter) are tried: each with an anchored,
    /// earliest search of that one pattern, which stops as soon as it matches or dies.
    pub fn find<'a>(&mut self, rec: &Record<'a>, candidates: &[u32], out: &mut Vec<Match<&'a str>>) {
        let msg = rec.msg.as_bytes();
        self.allowed_jails(rec.program);
        for &pid in candidates {
            let r = &self.rules[pid as usize];
            let j = r.jail as usize;
            if r.kind == Kind::Ignore || self.jail_state[j] != JailState::Allowed {
                continue;
            }
            let host = match self.try_rule(msg, pid) {
                Seen::Hit(host) => host,
                _ => continue,
            };
            self.jail_state[j] = JailState::Done;
            if self.rules[pid as usize].kind == Kind::Success {
                let r = &self.rules[pid as usize];
                match (&host, self.want_user) {
                    (Some((_, ip)), false) => out.push(Match {
                        jail: r.jail,
                        rule: r.index,
                        found: Found::Success {
                            ip: ip.to_canonical(),
                            user: None,
                        },
                    }),
                    _ => out.extend(self.extract(rec, pid as usize, host)),
                }
                continue;
            }
            // An ignore rule only matters once a failure rule matched: most lines pay nothing;
            // and only where the prefilter saw its literal.
            let mut ignored = None;
            for k in 0..self.ignores[j].len() {
                let ig = self.ignores[j][k];
                if candidates.binary_search(&ig).is_ok() && self.ignore_hit(msg, ig) {
                    ignored = Some(ig);
                    break;
                }
            }
            out.push(match ignored {
                Some(ig) => Match {
                    jail: j as JailId,
                    rule: self.rules[ig as usize].index,
                    found: Found::Ignored,
                },
                None => match self.extract(rec, pid as usize, host) {
                    Some(m) => m,
                    None => continue,
                },
            });
        }
        for first in self.seen_set.drain(..) {
            self.seen[first] = Seen::No;
        }
        for first in self.spans_set.drain(..) {
            self.spans[first] = None;
        }
    }

    /// Whether failure rule `pid` matches `msg`, and the host if the finder saw it; each rule
    /// text is tried once per line (the caller resets `seen` after the line).
    fn try_rule(&mut self, msg: &[u8], pid: u32) -> Seen {
        let first = self.rules[pid as usize].same_as;
        if self.seen[first] != Seen::No {
            return self.seen[first].clone();
        }
        // With a finder, one pass over the line both decides the match and finds the host;
        // the rule DFA is only asked when the finder cannot tell.
        let seen = match self.rules[first].finder.as_mut().map(|f| f.find(msg)) {
            Some(Probe::Host(span, ip)) => Seen::Hit(Some((span, ip))),
            Some(Probe::NoMatch) => Seen::Miss,
            Some(Probe::BeforeHost) | None if self.matches(msg, first as u32) => Seen::Hit(None),
            Some(Probe::BeforeHost) | None => Seen::Miss,
        };
        self.seen[first] = seen.clone();
        self.seen_set.push(first);
        seen
    }

    /// Whether ignore rule `pid` matches `msg`; each text tried once per line, like `try_rule`.
    fn ignore_hit(&mut self, msg: &[u8], pid: u32) -> bool {
        let first = self.rules[pid as usize].same_as;
        if self.seen[first] == Seen::No {
            self.seen[first] = if self.matches(msg, first as u32) {
                Seen::Hit(None)
            } else {
                Seen::Miss
            };
            self.seen_set.push(first);
        }
        self.seen[first] != Seen::Miss
    }

    /// The user of `jail`'s success rule `rule` in `msg` (a line it matched).
    pub fn success_user<'a>(&mut self, msg: &'a str, jail: JailId, rule: usize) -> Option<&'a str> {
        let pid = *self.successes.get(jail as usize)?.get(rule)?;
        let first = self.rules[pid as usize].same_as;
        let r = &mut self.rules[first];
        if let Some(u) = r
            .user_finder
            .as_mut()
            .and_then(|uf| uf.find(msg.as_bytes(), None))
            .and_then(|u| msg.get(u))
        {
            return Some(u);
        }
        r.re.search_captures(&Input::new(msg.as_bytes()).anchored(Anchored::Yes), &mut r.caps);
        r.caps.get_group_by_name("user").map(|s| &msg[s.range()])
    }

    /// Sets each jail's state for a line from `program`: `Allowed` or `Done`.
    fn allowed_jails(&mut self, program: &str) {
        if let Some(mask) = self.program_cache.get(program) {
            for (st, &ok) in self.jail_state.iter_mut().zip(mask.iter()) {
                *st = if ok { JailState::Allowed } else { JailState::Done };
            }
            return;
        }
        let mask: Box<[bool]> = self
            .programs
            .iter()
            .map(|re| re.as_ref().is_none_or(|re| re.is_match(program)))
            .collect();
        for (st, &ok) in self.jail_state.iter_mut().zip(mask.iter()) {
            *st = if ok { JailState::Allowed } else { JailState::Done };
        }
        // Program names are few (postfix/smtpd, dovecot, ...); a flood of odd ones only costs
        // the glob checks again.
        if self.program_cache.len() >= 1024 {
            self.program_cache.clear();
        }
        self.program_cache.insert(program.into(), mask);
    }

    /// Whether pattern `pid` matches at the start of `msg`.
    fn matches(&mut self, msg: &[u8], pid: u32) -> bool {
        let input = Input::new(msg)
            .anchored(Anchored::Pattern(PatternID::new_unchecked(pid as usize)))
            .earliest(true);
        let res = match &mut self.dfa {
            Dfa::Hybrid(dfa, cache) => dfa.try_search_fwd(cache, &input),
            Dfa::Dense(dfa) => dfa.try_search_fwd(&input),
        };
        // Neither engine can fail here: no Unicode word boundaries, no cache-clear limit.
        debug_assert!(res.is_ok(), "{res:?}");
        matches!(res, Ok(Some(_)))
    }

    /// What matching rule `i` found in `rec`; `host` is what the finder already has.
    fn extract<'a>(&mut self, rec: &Record<'a>, i: usize, host: Option<(std::ops::Range<usize>, IpAddr)>) -> Option<Match<&'a str>> {
        let want_user = (self.want_user || self.user_jails[self.rules[i].jail as usize]) && self.rules[i].has_user;
        let r = &mut self.rules[i];
        if let (Some((_, ip)), false, false) = (&host, want_user, r.has_forwarded) {
            return Some(Match {
                jail: r.jail,
                rule: r.index,
                found: Found::Failure {
                    ip: ip.to_canonical(),
                    user: None,
                    forwarded: None,
                },
            });
        }
        let (jail, index, kind) = (r.jail, r.index, r.kind);
        // No address where the rule wants one (e.g. `999.1.1.1`), or `<USER>` wanted.
        let spans = self.spans(rec.msg, self.rules[i].same_as, host.as_ref())?;
        let text = |s: &Option<std::ops::Range<usize>>| s.clone().map(|s| &rec.msg[s]);
        let host = &rec.msg[spans.host.clone()];
        let found = match host.parse::<IpAddr>() {
            Ok(ip) if kind == Kind::Success => Found::Success {
                ip: ip.to_canonical(),
                user: text(&spans.user),
            },
            Ok(ip) => Found::Failure {
                ip: ip.to_canonical(),
                user: if want_user { text(&spans.user) } else { None },
                forwarded: text(&spans.fwd),
            },
            Err(_) => Found::BadHost(host),
        };
        Some(Match { jail, rule: index, found })
    }

    /// Where rule text `first` (a `Rule::same_as`) put its groups in `msg`, `host` being what
    /// its finder saw: found once per rule text and line, however many jails share the text;
    /// by the user finder's two DFA passes where it can, else by a capture search.
    fn spans(&mut self, msg: &str, first: usize, host: Option<&(std::ops::Range<usize>, IpAddr)>) -> Option<Spans> {
        if let Some(s) = &self.spans[first] {
            return Some(s.clone());
        }
        let r = &mut self.rules[first];
        let quick = match (host, r.user_finder.as_mut(), r.has_forwarded) {
            (Some((span, _)), Some(uf), false) => uf
                .find(msg.as_bytes(), Some(span.start))
                .filter(|u| msg.get(u.clone()).is_some())
                .map(|u| Spans {
                    host: span.clone(),
                    user: Some(u),
                    fwd: None,
                }),
            _ => None,
        };
        let spans = match quick {
            Some(s) => s,
            None => {
                r.re.search_captures(&Input::new(msg.as_bytes()).anchored(Anchored::Yes), &mut r.caps);
                let group = |name| r.caps.get_group_by_name(name).map(|s| s.range());
                Spans {
                    host: group("host")?,
                    user: group("user"),
                    fwd: group("fwd"),
                }
            }
        };
        self.spans[first] = Some(spans.clone());
        self.spans_set.push(first);
        Some(spans)
    }
}

fn build_dfa(patterns: &[String], engine: Engine) -> Result<Dfa, String> {
    let thompson = regex_automata::nfa::thompson::Config::new().nfa_size_limit(Some(MAX_NFA));
    match engine {
        Engine::Hybrid => {
            let dfa = hybrid::dfa::DFA::builder()
                .syntax(syntax_config())
                .thompson(thompson)
                .configure(
                    hybrid::dfa::Config::new()
                        .starts_for_each_pattern(true)
                        .cache_capacity(CACHE)
                        .minimum_cache_clear_count(None),
                )
                .build_many(patterns)
                .map_err(|e| format!("cannot build the rule DFA: {e}"))?;
            let cache = dfa.create_cache();
            Ok(Dfa::Hybrid(dfa, cache))
        }
        Engine::Dense { size_limit } if size_limit > MAX_DENSE => Err(format!(
            "engine: Dense size_limit {size_limit} is above the {} MiB any pipeline may use",
            MAX_DENSE >> 20
        )),
        Engine::Dense { size_limit } => {
            let dfa = dfa::dense::Builder::new()
                .syntax(syntax_config())
                .thompson(thompson)
                .configure(
                    dfa::dense::Config::new()
                        .starts_for_each_pattern(true)
                        .dfa_size_limit(Some(size_limit))
                        .determinize_size_limit(Some(size_limit)),
                )
                .build_many(patterns)
                .map_err(|e| format!("cannot build the dense rule DFA within {size_limit} bytes: {e} (use engine: Hybrid)"))?;
            Ok(Dfa::Dense(std::sync::Arc::new(dfa)))
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::Dur;

    fn jail(name: &str, programs: &[&str], rules: &[&str], ignore: &[&str]) -> Jail {
        Jail {
            name: name.into(),
            programs: programs.iter().map(|s| s.to_string()).collect(),
            prefix: None,
            rules: rules.iter().map(|&s| s.into()).collect(),
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
            maxretry: 1,
            findtime: Dur(60),
            ..Jail::default()
        }
    }

    fn matcher(jails: &[Jail]) -> Matcher {
        let origins = vec![
            Origin {
                file: "t.ron".into(),
                text: "".into()
            };
            jails.len()
        ];
        Matcher::new(jails, &origins, &MatcherConfig::default()).unwrap()
    }

    fn rec<'a>(program: &'a str, msg: &'a str) -> Record<'a> {
        Record {
            time: None,
            host: None,
            program,
            msg,
            format: crate::parse::Format::Bare,
        }
    }

    /// Every rule a candidate, as if every literal occurred.
    fn every(m: &Matcher) -> Vec<u32> {
        (0..m.rules.len() as u32).collect()
    }

    /// What every rule of `m` finds in one message.
    fn found<'a>(m: &mut Matcher, program: &'a str, msg: &'a str) -> Vec<Match<&'a str>> {
        let mut out = Vec::new();
        let all = every(m);
        m.find(&rec(program, msg), &all, &mut out);
        out
    }

    const SASL: &str = r"warning: [^\[\s]*\[<HOST>\](?::\d+)?: SASL (?i:LOGIN|PLAIN|(?:CRAM|DIGEST)-MD5) authentication failed:";

    #[test]
    fn the_user_finder_agrees_with_the_capture_search() {
        assert_eq!(
            unwrap_optional(r"a(?: u=<(?:x|<USER>)>,)? b"),
            None,
            "the innermost group is an alternation"
        );
        assert_eq!(unwrap_optional(r"a(?: u=<<USER>>,)? (c)"), Some(r"a u=<<USER>>, (c)".to_string()));
        let rules = [
            r"x(?: user=<(?:<USER>|.*)>,)? rip=<HOST>$",
            r"Login: user=<<USER>>, method=\S+, rip=<HOST>,",
            r"auth: \w+\(<USER>,<HOST>\): Password mismatch",
            r".*user=<USER> from <HOST>$",
            r"x(?: user=<(?:<USER>|.*)>,)?(?: method=\S+,)? rip=<HOST>(?:, lip=\S+)?$",
        ];
        let lines = [
            "Login: user=<alice@example.org>, method=PLAIN, rip=192.0.2.1, lip=::1",
            "Login: user=<>, method=PLAIN, rip=192.0.2.2,",
            "Login: user=<a>b>, method=PLAIN, rip=192.0.2.3,",
            "auth: sql(bob,192.0.2.4): Password mismatch",
            "auth: sql(bob,x,192.0.2.5): Password mismatch",
            "auth: sql(b\u{e9}b,192.0.2.6): Password mismatch",
            "x user=mallory from 192.0.2.7 user=eve from 192.0.2.8",
            "user=\u{e9}\u{e9} from 192.0.2.9",
            "x user=<bob>, rip=192.0.2.10",
            "x user=<john smith>, rip=192.0.2.11",
            "x rip=192.0.2.12",
            "x user=<eve>, method=PLAIN, rip=192.0.2.13, lip=::1",
            "x user=<a>, rip=198.51.100.1>, method=PLAIN, rip=192.0.2.14",
            "x user=<a>, method=P, rip=198.51.100.2, lip=b>, method=PLAIN, rip=192.0.2.15, lip=::1",
        ];
        for rule in rules {
            let mut with = matcher(&[Jail {
                success: vec![rule.to_string()],
                count: crate::primitives::Count::DistinctUsers,
                ..jail("j", &[], &[rule], &[])
            }]);
            for line in lines {
                let fast = found(&mut with, "dovecot", line);
                // The capture search alone: the same rule where the finder cannot split it.
                let grouped = format!("(?:{rule})");
                let mut slow_m = matcher(&[Jail {
                    count: crate::primitives::Count::DistinctUsers,
                    ..jail("j", &[], &[grouped.as_str()], &[])
                }]);
                assert!(slow_m.rules[0].user_finder.is_none());
                let slow = found(&mut slow_m, "dovecot", line);
                let fast_failure: Vec<_> = fast.iter().filter(|m| matches!(m.found, Found::Failure { .. })).collect();
                assert_eq!(fast_failure.len(), slow.len(), "{rule} on {line}");
                for (a, b) in fast_failure.iter().zip(&slow) {
                    assert_eq!(a.found, b.found, "{rule} on {line}");
                }
            }
        }
    }

    #[test]
    fn host_and_program_filter() {
        let mut m = matcher(&[jail(
            "sasl",
            &["postfix*/smtpd"],
            &[SASL],
            &[r"\S+ SASL \S+ authentication failed: Connection lost"],
        )]);
        let out = found(
            &mut m,
            "postfix/submission/smtpd",
            "warning: unknown[192.0.2.1]:25: SASL login authentication failed: x",
        );
        assert_eq!(
            out,
            vec![Match {
                jail: 0,
                rule: 0,
                found: Found::Failure {
                    ip: "192.0.2.1".parse().unwrap(),
                    user: None,
                    forwarded: None
                }
            }]
        );
        assert!(
            found(
                &mut m,
                "postfix/smtp",
                "warning: unknown[192.0.2.1]: SASL LOGIN authentication failed: x"
            )
            .is_empty()
        );
    }

    #[test]
    fn mapped_ipv6_becomes_ipv4_and_v6_works() {
        let mut m = matcher(&[jail("d", &[], &[r"x rip=<HOST>,"], &[])]);
        let ips: Vec<_> = ["x rip=::ffff:192.0.2.7, lip", "x rip=2001:db8::1, lip", "x rip=999.1.1.1, lip"]
            .into_iter()
            .flat_map(|msg| found(&mut m, "", msg))
            .map(|m| m.found)
            .collect();
        assert_eq!(
            ips,
            vec![
                Found::Failure {
                    ip: "192.0.2.7".parse().unwrap(),
                    user: None,
                    forwarded: None
                },
                Found::Failure {
                    ip: "2001:db8::1".parse().unwrap(),
                    user: None,
                    forwarded: None
                },
                Found::BadHost("999.1.1.1"),
            ]
        );
    }

    #[test]
    fn ip4_takes_ipv4_only() {
        // `sql(user:IP)`: after the last colon, only an IPv4 address is unambiguous.
        let mut m = matcher(&[jail("d", &[], &[r"sql\([^\s\)]*:<IP4>\): Password mismatch"], &[])]);
        let hosts: Vec<_> = [
            "sql(u@d:192.0.2.1): Password mismatch",
            "sql(x:6.6.6.6:192.0.2.2): Password mismatch",
            "sql(u@d:2001:db8::5): Password mismatch",
        ]
        .into_iter()
        .flat_map(|msg| found(&mut m, "", msg))
        .map(|m| m.found)
        .collect();
        assert_eq!(
            hosts,
            vec![
                Found::Failure {
                    ip: "192.0.2.1".parse().unwrap(),
                    user: None,
                    forwarded: None
                },
                Found::Failure {
                    ip: "192.0.2.2".parse().unwrap(),
                    user: None,
                    forwarded: None
                },
            ]
        );
    }

    #[test]
    fn anchored_so_attacker_text_cannot_plant_a_host() {
        let mut m = matcher(&[jail("sasl", &[], &[SASL], &[])]);
        assert!(
            found(
                &mut m,
                "postfix/smtpd",
                "NOQUEUE: helo=<warning: x[6.6.6.6]: SASL LOGIN authentication failed:>"
            )
            .is_empty()
        );
    }

    #[test]
    fn ignore_rule_wins_and_rules_need_one_host() {
        let mut m = matcher(&[jail(
            "sasl",
            &[],
            &[SASL],
            &[r"warning: \S+: SASL \S+ authentication failed: Connection lost"],
        )]);
        let out = found(
            &mut m,
            "p",
            "warning: unknown[192.0.2.1]: SASL LOGIN authentication failed: Connection lost to authentication server",
        );
        assert_eq!(
            out,
            vec![Match {
                jail: 0,
                rule: 0,
                found: Found::Ignored
            }]
        );
        let origins = vec![Origin {
            file: "t.ron".into(),
            text: "".into(),
        }];
        let e = Matcher::new(&[jail("a", &[], &["no host here"], &[])], &origins, &MatcherConfig::default()).unwrap_err();
        assert!(e.reason.contains("exactly one <HOST>"), "{e}");
        let e = Matcher::new(&[jail("a", &[], &["(<HOST>"], &[])], &origins, &MatcherConfig::default()).unwrap_err();
        assert!(
            e.reason.contains("unclosed group") && e.reason.contains("character 1 of the rule"),
            "shown as written: {e}"
        );
        assert!(!e.reason.contains("(?P<host>"), "not the expanded grammar: {e}");
        for pasted in [r"^%(__prefix_line)sfailed from <HOST>", r"for <F-USER>.+</F-USER> from <HOST>"] {
            let e = Matcher::new(&[jail("a", &[], &[pasted], &[])], &origins, &MatcherConfig::default()).unwrap_err();
            assert!(e.reason.contains("fail2ban syntax") && e.reason.contains("import fail2ban"), "{e}");
        }
    }

    #[test]
    fn several_jails_one_pass_and_dense_agrees() {
        let jails = [jail("a", &[], &[SASL], &[]), jail("b", &[], &[r"warning: [^\[]*\[<HOST>\]"], &[])];
        let origins = vec![
            Origin {
                file: "t.ron".into(),
                text: "".into()
            };
            2
        ];
        for engine in [Engine::Hybrid, Engine::Dense { size_limit: 1 << 26 }] {
            let mut m = Matcher::new(&jails, &origins, &MatcherConfig { engine }).unwrap();
            let mut out = Vec::new();
            m.find(
                &rec("p", "warning: h[192.0.2.9]: SASL PLAIN authentication failed:"),
                &every(&m),
                &mut out,
            );
            assert_eq!(out.iter().map(|m| m.jail).collect::<Vec<_>>(), vec![0, 1]);
        }
    }

    #[test]
    fn only_candidates_are_tried() {
        let mut m = matcher(&[jail("a", &[], &[r"\S+ <HOST>"], &[]), jail("b", &[], &[SASL], &[r"\S+ nope"])]);
        assert_eq!(m.unliteral_rules().collect::<Vec<_>>(), vec![("a", 0, false)]);
        assert!(m.literal_sets()[1].is_some(), "the ignore rule takes its jail's literals");
        let mut out = Vec::new();
        m.find(&rec("p", "x 192.0.2.3"), &[0], &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        m.find(
            &rec("p", "warning: h[192.0.2.9]: SASL PLAIN authentication failed:"),
            &[0],
            &mut out,
        );
        assert!(out.is_empty(), "jail b was no candidate, jail a does not match");
    }
}
