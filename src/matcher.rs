//! Stage 3: every rule of every jail in one multi-pattern DFA.
//!
//! Rules are fail2ban-style regexes anchored at the start of the message. `<HOST>` (alias
//! `<ADDR>`) stands for an IPv4 or IPv6 address (IPv4-mapped IPv6 becomes IPv4; no DNS, ever),
//! `<USER>` for a user name. All failure and ignore rules are compiled once into one DFA (lazy
//! hybrid by default, dense optional) that reports, in one pass, which rules match; only then is
//! the matching rule's own regex run to extract `<HOST>`. regex-automata has no backtracking, so
//! no rule can take exponential time, and the anchoring means an address can only be taken from
//! where the rule says, never from text an attacker put further along the line.

use std::net::IpAddr;

use regex_automata::hybrid;
use regex_automata::dfa::{self, Automaton};
use regex_automata::meta;
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, PatternID, PatternSet};
use serde::Deserialize;

use crate::config::{Jail, Origin, ConfigError, jail_needles, regex_needles};
use crate::parse::Record;

/// IPv4, dotted quad.
const IPV4: &str = r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}";
/// IPv6, loosely (validated by the address parser), with an optional embedded IPv4 tail.
const IPV6: &str = r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3})?";

/// Matcher engine choice.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum Engine {
    /// Lazy DFA: builds in about a millisecond, states made on demand. The default.
    #[default]
    Hybrid,
    /// Fully compiled DFA, bounded in bytes; slightly faster on some rule sets.
    Dense {
        /// Upper bound on the DFA's size in bytes.
        size_limit: usize,
    },
}

/// Matcher-stage settings of a pipeline file.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MatcherConfig {
    /// Which DFA to build.
    pub engine: Engine,
}

/// Index of a jail in the compiled pipeline.
pub type JailId = u16;

/// What one rule found in one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'a> {
    /// A failure by this address.
    Failure {
        /// The offender, canonical (IPv4-mapped IPv6 is IPv4).
        ip: IpAddr,
        /// The `<USER>` text, if the rule has one.
        user: Option<&'a str>,
    },
    /// The jail's ignore rule `rule` matched: not a failure.
    Ignored,
    /// The rule matched but `<HOST>` is not an address (e.g. `999.1.1.1`): counted, dropped.
    BadHost(&'a str),
}

/// One jail's verdict on one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'a> {
    /// The jail.
    pub jail: JailId,
    /// Index of the failure (or, for `Ignored`, ignore) rule within the jail.
    pub rule: usize,
    /// What was found.
    pub found: Found<'a>,
}

#[derive(Debug)]
enum Dfa {
    Hybrid(hybrid::dfa::DFA, hybrid::dfa::Cache),
    Dense(dfa::dense::DFA<Vec<u32>>),
}

#[derive(Debug)]
struct Rule {
    jail: JailId,
    index: usize,
    ignore: bool,
    re: meta::Regex,
    caps: Captures,
    has_literal: bool,
}

/// A problem building the matcher (reported as `file:line:col`).
pub type MatcherError = ConfigError;

/// The compiled rules of all jails.
#[derive(Debug)]
pub struct Matcher {
    dfa: Dfa,
    rules: Vec<Rule>,
    programs: Vec<Option<meta::Regex>>,
    jail_names: Vec<String>,
    literals: Vec<Option<Vec<Vec<u8>>>>,
    /// Patterns checked on lines the prefilter skipped (rules without a literal).
    unliteral: Vec<PatternID>,
    set: PatternSet,
    // Per-line scratch, reused.
    allowed: Vec<bool>,
    ignored: Vec<bool>,
    done: Vec<bool>,
}

fn syntax_config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(false)
}

/// Expands `<HOST>`, `<ADDR>` and `<USER>` into named groups; `None` when there is no host.
fn expand(rule: &str) -> (String, usize) {
    let host = format!("(?P<host>{IPV4}|{IPV6})");
    let n = rule.matches("<HOST>").count() + rule.matches("<ADDR>").count();
    let s = rule.replace("<HOST>", &host).replace("<ADDR>", &host).replace("<USER>", r"(?P<user>[^\s,>)]*)");
    (s, n)
}

/// Turns a program glob (`postfix*/smtpd`) into an anchored regex.
fn glob_regex(globs: &[String]) -> String {
    let alts: Vec<String> = globs
        .iter()
        .map(|g| g.split('*').map(regex_syntax::escape).collect::<Vec<_>>().join(".*"))
        .collect();
    format!("^(?:{})$", alts.join("|"))
}

impl Matcher {
    /// Compiles all jails' rules; errors point at the offending rule in its file.
    pub fn new(jails: &[Jail], origins: &[Origin], cfg: &MatcherConfig) -> Result<Matcher, MatcherError> {
        let mut patterns = Vec::new();
        let mut rules = Vec::new();
        let mut literals = Vec::new();
        let mut programs = Vec::new();
        for (j, (jail, origin)) in jails.iter().zip(origins).enumerate() {
            let jid = JailId::try_from(j).map_err(|_| origin.error_at(&[], "too many jails"))?;
            if jail.rules.is_empty() {
                return Err(origin.error_at(&[&jail_needles(jail)], format!("jail {:?} has no rules", jail.name)));
            }
            if jail.maxretry == 0 {
                return Err(origin.error_at(&[&jail_needles(jail)], format!("jail {:?}: maxretry must be at least 1", jail.name)));
            }
            programs.push(if jail.programs.is_empty() {
                None
            } else {
                Some(meta::Regex::builder().syntax(syntax_config()).build(&glob_regex(&jail.programs)).map_err(|e| {
                    origin.error_at(&[&jail_needles(jail)], format!("jail {:?}: bad program glob: {e}", jail.name))
                })?)
            });
            let all = jail.rules.iter().map(|r| (r, false)).chain(jail.ignore.iter().map(|r| (r, true)));
            let mut counts = [0usize; 2];
            for (text, ignore) in all {
                let index = counts[ignore as usize];
                counts[ignore as usize] += 1;
                let what = if ignore { "ignore rule" } else { "rule" };
                let needles = regex_needles(text);
                let at = |reason: String| {
                    origin.error_at(&[&needles[0], &needles[1], &jail_needles(jail)], format!("jail {:?} {what} {index}: {reason}", jail.name))
                };
                let full = format!("{}{text}", jail.prefix.as_deref().unwrap_or(""));
                let (pattern, hosts) = expand(&full);
                if !ignore && hosts != 1 {
                    return Err(at(format!("a rule needs exactly one <HOST> (found {hosts})")));
                }
                let hir = regex_syntax::ParserBuilder::new()
                    .unicode(false)
                    .utf8(false)
                    .build()
                    .parse(&pattern)
                    .map_err(|e| at(format!("bad regex: {}", one_line(&e.to_string()))))?;
                let re = meta::Regex::builder()
                    .syntax(syntax_config())
                    .build(&pattern)
                    .map_err(|e| at(format!("bad regex: {}", one_line(&e.to_string()))))?;
                let lits = crate::prefilter::required_literals(&hir);
                rules.push(Rule { jail: jid, index, ignore, caps: re.create_captures(), re, has_literal: lits.is_some() });
                literals.push(lits);
                patterns.push(pattern);
            }
        }
        let dfa = build_dfa(&patterns, cfg.engine).map_err(|e| {
            origins.first().map_or_else(
                || ConfigError { file: "<none>".into(), line: 1, col: 1, reason: e.clone() },
                |o| o.error_at(&["engine"], e.clone()),
            )
        })?;
        let unliteral = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.has_literal && !r.ignore)
            .map(|(i, _)| PatternID::new_unchecked(i))
            .collect();
        let n = jails.len();
        Ok(Matcher {
            dfa,
            set: PatternSet::new(patterns.len()),
            rules,
            programs,
            jail_names: jails.iter().map(|j| j.name.clone()).collect(),
            literals,
            unliteral,
            allowed: vec![false; n],
            ignored: vec![false; n],
            done: vec![false; n],
        })
    }

    /// Each rule's required literals, in pattern order (for the prefilter).
    pub fn literal_sets(&self) -> &[Option<Vec<Vec<u8>>>] {
        &self.literals
    }

    /// Whether some failure rule has no literal and so must see lines the prefilter skips.
    pub fn has_unliteral_rules(&self) -> bool {
        !self.unliteral.is_empty()
    }

    /// Rules without a usable literal, as `(jail, rule index)`.
    pub fn unliteral_rules(&self) -> impl Iterator<Item = (&str, usize)> {
        self.unliteral.iter().map(|p| {
            let r = &self.rules[p.as_usize()];
            (self.jail_names[r.jail as usize].as_str(), r.index)
        })
    }

    /// Jail names by id.
    pub fn jail_names(&self) -> &[String] {
        &self.jail_names
    }

    /// Pushes one `Match` per jail whose rules match `rec` into `out`. With `only_unliteral`
    /// (the prefilter found no literal) only the rules without literals are tried.
    pub fn find<'a>(&mut self, rec: &Record<'a>, only_unliteral: bool, out: &mut Vec<Match<'a>>) {
        let msg = rec.msg.as_bytes();
        self.set.clear();
        if only_unliteral {
            for i in 0..self.unliteral.len() {
                let pid = self.unliteral[i];
                self.search(Input::new(msg).anchored(Anchored::Pattern(pid)));
            }
        } else {
            self.search(Input::new(msg).anchored(Anchored::Yes));
        }
        if self.set.is_empty() {
            return;
        }
        for j in 0..self.programs.len() {
            self.allowed[j] = self.programs[j].as_ref().is_none_or(|re| re.is_match(rec.program));
            self.ignored[j] = false;
            self.done[j] = false;
        }
        for pid in self.set.iter() {
            let r = &self.rules[pid.as_usize()];
            if r.ignore && self.allowed[r.jail as usize] && !self.ignored[r.jail as usize] {
                self.ignored[r.jail as usize] = true;
                out.push(Match { jail: r.jail, rule: r.index, found: Found::Ignored });
            }
        }
        // Patterns come in rule order, so each jail reports its first matching rule.
        for pid in self.set.iter() {
            let r = &mut self.rules[pid.as_usize()];
            let j = r.jail as usize;
            if r.ignore || !self.allowed[j] || self.ignored[j] || self.done[j] {
                continue;
            }
            self.done[j] = true;
            r.re.search_captures(&Input::new(msg).anchored(Anchored::Yes), &mut r.caps);
            let text = |name| r.caps.get_group_by_name(name).map(|s| &rec.msg[s.range()]);
            let Some(host) = text("host") else { continue };
            let found = match host.parse::<IpAddr>() {
                Ok(ip) => Found::Failure { ip: ip.to_canonical(), user: text("user") },
                Err(_) => Found::BadHost(host),
            };
            out.push(Match { jail: r.jail, rule: r.index, found });
        }
    }

    fn search(&mut self, input: Input<'_>) {
        let res = match &mut self.dfa {
            Dfa::Hybrid(dfa, cache) => dfa.try_which_overlapping_matches(cache, &input, &mut self.set),
            Dfa::Dense(dfa) => dfa.try_which_overlapping_matches(&input, &mut self.set),
        };
        // Neither quits (no Unicode word boundaries) nor gives up (no clear limit set).
        debug_assert!(res.is_ok(), "{res:?}");
    }
}

fn build_dfa(patterns: &[String], engine: Engine) -> Result<Dfa, String> {
    let thompson = regex_automata::nfa::thompson::Config::new();
    match engine {
        Engine::Hybrid => {
            let dfa = hybrid::dfa::DFA::builder()
                .syntax(syntax_config())
                .thompson(thompson)
                .configure(
                    hybrid::dfa::Config::new()
                        .match_kind(MatchKind::All)
                        .starts_for_each_pattern(true)
                        .cache_capacity(8 << 20)
                        .minimum_cache_clear_count(None),
                )
                .build_many(patterns)
                .map_err(|e| format!("cannot build the rule DFA: {e}"))?;
            let cache = dfa.create_cache();
            Ok(Dfa::Hybrid(dfa, cache))
        }
        Engine::Dense { size_limit } => {
            let dfa = dfa::dense::Builder::new()
                .syntax(syntax_config())
                .thompson(thompson)
                .configure(
                    dfa::dense::Config::new()
                        .match_kind(MatchKind::All)
                        .starts_for_each_pattern(true)
                        .dfa_size_limit(Some(size_limit))
                        .determinize_size_limit(Some(size_limit)),
                )
                .build_many(patterns)
                .map_err(|e| format!("cannot build the dense rule DFA within {size_limit} bytes: {e} (use engine: Hybrid)"))?;
            Ok(Dfa::Dense(dfa))
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn jail(name: &str, programs: &[&str], rules: &[&str], ignore: &[&str]) -> Jail {
        Jail {
            name: name.into(),
            programs: programs.iter().map(|s| s.to_string()).collect(),
            prefix: None,
            rules: rules.iter().map(|s| s.to_string()).collect(),
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
            maxretry: 1,
            findtime: Dur(60),
            bantime: None,
        }
    }

    fn matcher(jails: &[Jail]) -> Matcher {
        let origins = vec![Origin { file: "t.ron".into(), text: "".into() }; jails.len()];
        Matcher::new(jails, &origins, &MatcherConfig::default()).unwrap()
    }

    fn rec<'a>(program: &'a str, msg: &'a str) -> Record<'a> {
        Record { time: None, host: None, program, msg }
    }

    const SASL: &str = r"warning: [^\[\s]*\[<HOST>\](?::\d+)?: SASL (?i:LOGIN|PLAIN|(?:CRAM|DIGEST)-MD5) authentication failed:";

    #[test]
    fn host_and_program_filter() {
        let mut m = matcher(&[jail("sasl", &["postfix*/smtpd"], &[SASL], &[r"\S+ SASL \S+ authentication failed: Connection lost"])]);
        let mut out = Vec::new();
        m.find(&rec("postfix/submission/smtpd", "warning: unknown[192.0.2.1]:25: SASL login authentication failed: x"), false, &mut out);
        assert_eq!(out, vec![Match { jail: 0, rule: 0, found: Found::Failure { ip: "192.0.2.1".parse().unwrap(), user: None } }]);
        out.clear();
        m.find(&rec("postfix/smtp", "warning: unknown[192.0.2.1]: SASL LOGIN authentication failed: x"), false, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn mapped_ipv6_becomes_ipv4_and_v6_works() {
        let mut m = matcher(&[jail("d", &[], &[r"x rip=<HOST>,"], &[])]);
        let mut out = Vec::new();
        m.find(&rec("", "x rip=::ffff:192.0.2.7, lip"), false, &mut out);
        m.find(&rec("", "x rip=2001:db8::1, lip"), false, &mut out);
        m.find(&rec("", "x rip=999.1.1.1, lip"), false, &mut out);
        let ips: Vec<_> = out.iter().map(|m| m.found).collect();
        assert_eq!(ips, vec![
            Found::Failure { ip: "192.0.2.7".parse().unwrap(), user: None },
            Found::Failure { ip: "2001:db8::1".parse().unwrap(), user: None },
            Found::BadHost("999.1.1.1"),
        ]);
    }

    #[test]
    fn anchored_so_attacker_text_cannot_plant_a_host() {
        let mut m = matcher(&[jail("sasl", &[], &[SASL], &[])]);
        let mut out = Vec::new();
        m.find(&rec("postfix/smtpd", "NOQUEUE: helo=<warning: x[6.6.6.6]: SASL LOGIN authentication failed:>"), false, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn ignore_rule_wins_and_rules_need_one_host() {
        let mut m = matcher(&[jail("sasl", &[], &[SASL], &[r"warning: \S+: SASL \S+ authentication failed: Connection lost"])]);
        let mut out = Vec::new();
        m.find(&rec("p", "warning: unknown[192.0.2.1]: SASL LOGIN authentication failed: Connection lost to authentication server"), false, &mut out);
        assert_eq!(out, vec![Match { jail: 0, rule: 0, found: Found::Ignored }]);
        let origins = vec![Origin { file: "t.ron".into(), text: "".into() }];
        let e = Matcher::new(&[jail("a", &[], &["no host here"], &[])], &origins, &MatcherConfig::default()).unwrap_err();
        assert!(e.reason.contains("exactly one <HOST>"), "{e}");
        let e = Matcher::new(&[jail("a", &[], &["(<HOST>"], &[])], &origins, &MatcherConfig::default()).unwrap_err();
        assert!(e.reason.contains("bad regex"), "{e}");
    }

    #[test]
    fn several_jails_one_pass_and_dense_agrees() {
        let jails = [jail("a", &[], &[SASL], &[]), jail("b", &[], &[r"warning: [^\[]*\[<HOST>\]"], &[])];
        let origins = vec![Origin { file: "t.ron".into(), text: "".into() }; 2];
        for engine in [Engine::Hybrid, Engine::Dense { size_limit: 1 << 26 }] {
            let mut m = Matcher::new(&jails, &origins, &MatcherConfig { engine }).unwrap();
            let mut out = Vec::new();
            m.find(&rec("p", "warning: h[192.0.2.9]: SASL PLAIN authentication failed:"), false, &mut out);
            assert_eq!(out.iter().map(|m| m.jail).collect::<Vec<_>>(), vec![0, 1]);
        }
    }

    #[test]
    fn unliteral_rules_are_checked_alone() {
        let mut m = matcher(&[jail("a", &[], &[r"\S+ <HOST>"], &[]), jail("b", &[], &[SASL], &[])]);
        assert!(m.has_unliteral_rules());
        let mut out = Vec::new();
        m.find(&rec("p", "x 192.0.2.3"), true, &mut out);
        assert_eq!(out.len(), 1);
    }
}
