//! `mailpipe import fail2ban`: Debian's stock fail2ban configuration (the `fail2ban` package,
//! which `contrib/deps.sh test` installs with its service disabled) plus a `jail.local` enabling
//! postfix (mode=auth), dovecot, sshd (mode=aggressive) and recidive with numbers of its own and
//! an `ignoreip`, imported and replayed: on fail2ban's own test logs (`../shared/corpus/fail2ban`)
//! the imported pipeline must match the lines `fail2ban-regex` matches, with the same addresses,
//! but for differences each listed with its reason.
//!
//! Twice: once as the importer maps the stock filters (onto mailpipe's shipped jails), once with
//! an empty `filter.d/NAME.local` beside each filter, which makes the importer convert fail2ban's
//! regexes themselves. A converted jail must never match a line fail2ban does not (or take
//! another address); where it cannot run a rule of fail2ban's, it matches less and says so.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use mailpipe::config::Config;

/// What the test's administrator writes beside Debian's `jail.conf`.
const JAIL_LOCAL: &str = "\
[DEFAULT]
ignoreip = 127.0.0.1/8 ::1 192.0.2.0/24
bantime = 1h
bantime.increment = true
bantime.maxtime = 1w

[postfix]
enabled = true
mode = auth
maxretry = 3
findtime = 1h

[postfix-reject]
enabled = true
filter = postfix[mode=more]
port = smtp

[dovecot]
enabled = true
maxretry = 4

[sshd]
enabled = true
mode = aggressive
bantime = 2h
port = ssh,2222

[recidive]
enabled = true
maxretry = 3
";

/// (corpus file, fail2ban filter as fail2ban-regex takes it, mapped jail, converted jail).
const CASES: &[(&str, &str, &str, &str)] = &[
    ("postfix", "postfix[mode=auth]", "postfix-sasl", "postfix"),
    ("postfix", "postfix[mode=more]", "postfix-reject", "postfix-reject"),
    ("dovecot", "dovecot[mode=normal]", "dovecot-auth", "dovecot"),
    ("sshd", "sshd[mode=aggressive]", "sshd-aggressive", "sshd"),
];

/// Why the lines below are not matched as fail2ban-regex (Debian's 1.0.2) matches them:
/// (corpus file, line, reason). Each is checked to be a difference still.
const LISTED: &[(&str, usize, &str)] = &[
    // `Failed password for invalid user test from 127.0.0.1 port 58946 ssh2: from 10.10.1.2 port
    // 55555 ssh2` is what a user name ending in `ssh2:` from 10.10.1.2 writes (README, "Deliberate
    // differences"): mailpipe takes 10.10.1.2, fail2ban 127.0.0.1.
    (
        "sshd",
        147,
        "an address written before the end of a user name is the client's to choose",
    ),
    // fail2ban decides these from earlier lines of the same sshd process (README, "Cross-line
    // decisions"; tests/conformance.rs, ACROSS_LINES): the line itself is no failure, or the
    // earlier ones make it one.
    ("sshd", 103, ACROSS),
    ("sshd", 118, ACROSS),
    ("sshd", 218, ACROSS),
    ("sshd", 250, ACROSS),
    ("sshd", 252, ACROSS),
    ("sshd", 262, ACROSS),
    ("sshd", 354, ACROSS),
    // The second of two equal `Connection closed by 192.0.2.111 [preauth]` lines: after
    // `Disconnecting: Too many authentication failures` fail2ban takes the first as no failure.
    ("sshd", 175, ACROSS),
];

const ACROSS: &str = "fail2ban decides it from earlier lines of the same process; mailpipe reads one line at a time";

/// The prerequisites: Debian's fail2ban (its configuration and fail2ban-regex) and the corpus.
fn prerequisites() -> Option<String> {
    common::missing(&[
        common::Need::Program("fail2ban-regex", "fail2ban"),
        common::Need::Shared("corpus/fail2ban"),
    ])
    .or_else(|| {
        (!Path::new("/etc/fail2ban/jail.conf").is_file())
            .then(|| "/etc/fail2ban/jail.conf not found (Debian package fail2ban; contrib/deps.sh test installs it)".to_string())
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else if src.is_file() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A copy of /etc/fail2ban with the test's jail.local; with `convert`, an empty `.local` beside
/// each filter under test.
fn configuration(root: &Path, convert: bool) -> PathBuf {
    let dir = root.join(if convert { "converted" } else { "stock" });
    copy_dir(Path::new("/etc/fail2ban"), &dir);
    std::fs::write(dir.join("jail.local"), JAIL_LOCAL).unwrap();
    if convert {
        for f in ["postfix", "dovecot", "sshd"] {
            std::fs::write(dir.join(format!("filter.d/{f}.local")), "[Definition]\n").unwrap();
        }
    }
    dir
}

/// Python's `repr` of fail2ban's match list, `[('', 'Jan 1 ...', ' host prog: ...'), ...]`: each
/// element's strings joined (the line as it was read).
fn python_lines(repr: &str) -> Vec<String> {
    let chars: Vec<char> = repr.chars().collect();
    let (mut out, mut cur, mut depth, mut i) = (Vec::new(), String::new(), 0, 0);
    while i < chars.len() {
        match chars[i] {
            '[' | '(' => depth += 1,
            ')' => {
                depth -= 1;
                out.push(std::mem::take(&mut cur));
            }
            ']' => depth -= 1,
            q @ ('\'' | '"') => {
                let mut s = String::new();
                i += 1;
                while i < chars.len() && chars[i] != q {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                        let hex = |n: usize, i: &mut usize| {
                            let v: String = chars[*i + 1..*i + 1 + n].iter().collect();
                            *i += n;
                            char::from_u32(u32::from_str_radix(&v, 16).unwrap()).unwrap()
                        };
                        s.push(match chars[i] {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            'x' => hex(2, &mut i),
                            'u' => hex(4, &mut i),
                            'U' => hex(8, &mut i),
                            c => c,
                        });
                    } else {
                        s.push(chars[i]);
                    }
                    i += 1;
                }
                if depth >= 2 {
                    cur.push_str(&s);
                } else {
                    out.push(s);
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The lines of `log` fail2ban-regex finds a failure with an address (or a name) in, with it:
/// line number → host. `-o matches` gives each failure's lines (the last is the one read when it
/// was found), `-o ip` its address, in the same order.
fn fail2ban(conf: &Path, log: &Path, filter: &str) -> BTreeMap<usize, String> {
    let run = |out: &str| -> Vec<String> {
        let o = Command::new("fail2ban-regex")
            .args(["-c"])
            .arg(conf)
            .args(["-r", "-o", out])
            .arg(log)
            .arg(filter)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "fail2ban-regex {filter}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect()
    };
    let (ips, matches) = (run("ip"), run("matches"));
    assert_eq!(
        ips.len(),
        matches.len(),
        "fail2ban-regex -o ip and -o matches disagree on {}",
        log.display()
    );
    let text = std::fs::read(log).unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&text)
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    let mut found = BTreeMap::new();
    let mut cursor = 0;
    for (ip, m) in ips.iter().zip(&matches) {
        let current = python_lines(m).pop().unwrap_or_default();
        let Some(k) = (cursor..lines.len()).find(|&k| lines[k] == current) else {
            panic!("fail2ban-regex matched a line not found in order in {}: {current:?}", log.display());
        };
        cursor = k;
        if ip != "None" {
            found.insert(k + 1, ip.clone());
        }
    }
    found
}

/// `mailpipe test --json --matches`: per jail, line → host.
fn mailpipe(pipeline: &Path, log: &Path) -> BTreeMap<String, BTreeMap<usize, String>> {
    let o = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["test", "--json", "--matches", "-c"])
        .arg(pipeline)
        .arg(log)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(o.status.success(), "mailpipe test: {}", String::from_utf8_lossy(&o.stderr));
    let mut out: BTreeMap<String, BTreeMap<usize, String>> = BTreeMap::new();
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["kind"] == "match" {
            out.entry(v["jail"].as_str().unwrap().to_string())
                .or_default()
                .insert(v["line"].as_u64().unwrap() as usize, v["host"].as_str().unwrap().to_string());
        }
    }
    out
}

/// The corpus's annotation of each line (fail2ban 1.1's expectation) for filter `mode` (the
/// filter's default mode is also the corpus's `{}`): line → (match, host). Lines the mode is not
/// tested with (their `filterOptions`, a `constraint`) have none.
fn annotations(log: &Path, mode: &str, default_mode: &str) -> Annotations {
    let text = std::fs::read_to_string(log).unwrap();
    let mut out = Annotations::default();
    let mut pending: Option<serde_json::Value> = None;
    let mut modes: Vec<String> = vec![String::new()];
    let mut logtype = String::new();
    for (i, line) in text.lines().enumerate() {
        let directive = line.trim_start_matches('#').trim_start();
        if line.starts_with('#') {
            if let Some(j) = directive.strip_prefix("filterOptions:") {
                let v: serde_json::Value = serde_json::from_str(j.trim()).unwrap();
                let sets = if v.is_array() { v.as_array().unwrap().clone() } else { vec![v] };
                modes = sets.iter().map(|s| s["mode"].as_str().unwrap_or("").to_string()).collect();
                logtype = sets.iter().find_map(|s| s["logtype"].as_str()).unwrap_or("").to_string();
            } else if let Some(j) = directive.strip_prefix("failJSON:") {
                pending = Some(serde_json::from_str(j.trim()).unwrap());
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        if !logtype.is_empty() && logtype != "file" {
            out.logtype.insert(i + 1, logtype.clone());
        }
        let Some(v) = pending.take() else { continue };
        let tested = modes.iter().any(|m| m == mode || (m.is_empty() && mode == default_mode));
        let quoted = |s: &str| s.trim().trim_matches('\'').to_string();
        let constraint = match v["constraint"].as_str() {
            None => true,
            Some(c) => match (c.strip_prefix("opts.get('mode') == "), c.strip_prefix("opts.get('mode') != ")) {
                (Some(m), _) => quoted(m) == mode,
                (_, Some(m)) => quoted(m) != mode,
                _ => true,
            },
        };
        if tested && constraint {
            out.expect
                .insert(i + 1, (v["match"].as_bool().unwrap_or(false), v["host"].as_str().map(String::from)));
        }
    }
    out
}

/// What the corpus says of its lines.
#[derive(Default)]
struct Annotations {
    /// line → (a failure?, its host), for the mode under test.
    expect: BTreeMap<usize, (bool, Option<String>)>,
    /// Lines fail2ban's test reads with another `logtype` than `file`.
    logtype: BTreeMap<usize, String>,
}

fn same_host(a: &str, b: &str) -> bool {
    let canon = |s: &str| {
        s.parse::<IpAddr>().ok().map(|ip| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        })
    };
    a == b || (canon(a).is_some() && canon(a) == canon(b))
}

/// Why mailpipe's verdict on a line differs from fail2ban-regex's, if the reason is one the README
/// lists: `None` for a difference nothing explains.
fn explain(file: &str, group: &[usize], text: &str, f2b: Option<&String>, ours: Option<&String>, notes: &Annotations) -> Option<String> {
    if let Some((_, _, why)) = LISTED.iter().find(|(f, l, _)| *f == file && group.contains(l)) {
        return Some(why.to_string());
    }
    if let Some(h) = f2b {
        if h.parse::<IpAddr>().is_err() && ours.is_none() {
            return Some(if h.chars().all(|c| c.is_ascii_digit() || c == '.') {
                "an address with leading zeros is not read".to_string()
            } else {
                "a host name is never resolved".to_string()
            });
        }
        if !text.contains(h.as_str()) && ours.is_none() {
            return Some(ACROSS.to_string());
        }
    }
    // Debian's fail2ban (1.0.2) against the corpus of fail2ban 1.1, whose expectation mailpipe's
    // shipped jails follow.
    if f2b.is_none()
        && let Some(lt) = group.iter().find_map(|l| notes.logtype.get(l))
    {
        return Some(format!(
            "fail2ban reads this line with logtype = {lt} only; mailpipe's parser reads every format it knows"
        ));
    }
    if let Some((want, host)) = group.iter().find_map(|l| notes.expect.get(l)) {
        let agrees = match ours {
            Some(h) => *want && host.as_deref().is_none_or(|w| same_host(w, h)),
            None => !*want,
        };
        if agrees {
            return Some(format!(
                "fail2ban 1.1's own test expects this ({}), Debian's fail2ban 1.0.2 does not",
                if *want { "a failure" } else { "no failure" }
            ));
        }
    }
    None
}

struct Compared {
    agree: usize,
    explained: BTreeMap<String, usize>,
    unexplained: Vec<String>,
    /// Lines mailpipe matches that fail2ban does not, or with another address.
    looser: Vec<String>,
    /// Lines fail2ban matches that mailpipe does not.
    missing: Vec<usize>,
    /// The lines (with those of equal text) of every difference.
    differing: Vec<Vec<usize>>,
}

/// Compares per line; lines of the same text are one group (fail2ban-regex's output names a
/// line by its text, so of two equal lines it cannot tell which matched): its matches pair up by
/// address. `converted`: a line without a syslog host may differ (module doc of `import`).
fn compare(
    file: &str,
    filter: &str,
    log: &Path,
    f2b: &BTreeMap<usize, String>,
    ours: &BTreeMap<usize, String>,
    converted: bool,
) -> Compared {
    let text = std::fs::read(log).unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&text).lines().map(String::from).collect();
    let mode = filter.split_once("[mode=").map_or("", |(_, m)| m.trim_end_matches(']'));
    let notes = annotations(log, mode, if file == "postfix" { "more" } else { "normal" });
    let mut c = Compared {
        agree: 0,
        explained: BTreeMap::new(),
        unexplained: Vec::new(),
        looser: Vec::new(),
        missing: Vec::new(),
        differing: Vec::new(),
    };
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &line in f2b.keys().chain(ours.keys()) {
        let g = groups.entry(lines[line - 1].as_str()).or_default();
        if !g.contains(&line) {
            g.push(line);
        }
    }
    let parser = mailpipe::parse::Parser::new(mailpipe::parse::Zone::resolve(Some("UTC")).unwrap());
    for (text, group) in groups {
        let mut theirs: Vec<(usize, &String)> = group.iter().filter_map(|l| f2b.get(l).map(|h| (*l, h))).collect();
        let mut mine: Vec<(usize, &String)> = group.iter().filter_map(|l| ours.get(l).map(|h| (*l, h))).collect();
        theirs.sort();
        mine.sort();
        // Pair equal addresses, the same line first.
        let mut k = 0;
        while k < mine.len() {
            let pos = theirs
                .iter()
                .position(|t| t.0 == mine[k].0 && same_host(t.1, mine[k].1))
                .or_else(|| theirs.iter().position(|t| same_host(t.1, mine[k].1)));
            match pos {
                Some(p) => {
                    theirs.remove(p);
                    mine.remove(k);
                    c.agree += 1;
                }
                None => k += 1,
            }
        }
        let mut left: Vec<(usize, Option<&String>, Option<&String>)> = Vec::new();
        for (l, h) in &theirs {
            match mine.iter().position(|m| m.0 == *l) {
                Some(p) => left.push((*l, Some(h), Some(mine.remove(p).1))),
                None => left.push((*l, Some(h), None)),
            }
        }
        left.extend(mine.iter().map(|(l, h)| (*l, None, Some(*h))));
        for (line, a, b) in left {
            let shown = format!("{file}:{line}: fail2ban {a:?}, mailpipe {b:?}: {text}");
            c.differing.push(group.clone());
            if b.is_some() {
                c.looser.push(shown.clone());
            } else {
                c.missing.push(line);
            }
            let hostless = converted && b.is_none() && parser.parse(text).host.is_none();
            let why = explain(file, &group, text, a, b, &notes).or_else(|| {
                hostless.then(|| "a line without a syslog host: fail2ban's prefix line takes its first word (a program or not) as the host; the converted jail needs the filter's _daemon as the program".to_string())
            });
            match why {
                Some(why) => *c.explained.entry(why).or_default() += 1,
                None => c.unexplained.push(shown),
            }
        }
    }
    c
}

/// Imports `conf`, checks the pipeline loads, writes it beside the configuration.
fn import(conf: &Path) -> (PathBuf, mailpipe::import::Import) {
    let imp = mailpipe::import::fail2ban(conf).unwrap_or_else(|e| panic!("{e}"));
    Config::from_text("imported.ron", &imp.pipeline, Path::new("/nonexistent")).unwrap_or_else(|e| panic!("{e}\n{}", imp.pipeline));
    let path = conf.join("imported.ron");
    std::fs::write(&path, &imp.pipeline).unwrap();
    (path, imp)
}

#[test]
fn stock_configuration_maps_onto_the_shipped_jails_and_matches_what_fail2ban_matches() {
    if let Some(why) = prerequisites() {
        return common::skip(&why);
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = configuration(tmp.path(), false);
    let (pipeline, imp) = import(&conf);
    let cfg = Config::load(&pipeline).unwrap();
    let names: Vec<&str> = cfg.jails.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        ["sshd-aggressive", "postfix-sasl", "postfix-reject", "dovecot-auth"],
        "{}",
        imp.pipeline
    );
    // The administrator's numbers.
    let jail = |n: &str| cfg.jails.iter().find(|j| j.name == n).unwrap();
    assert_eq!((jail("postfix-sasl").maxretry, jail("postfix-sasl").findtime.secs()), (3, 3600));
    assert_eq!(jail("postfix-sasl").bantime.map(|b| b.secs()), Some(3600));
    assert_eq!((jail("dovecot-auth").maxretry, jail("dovecot-auth").findtime.secs()), (4, 600));
    assert_eq!(jail("sshd-aggressive").bantime.map(|b| b.secs()), Some(7200));
    let ports = cfg.jail_ports().unwrap();
    let sshd = names.iter().position(|n| *n == "sshd-aggressive").unwrap();
    assert_eq!(ports[sshd].ranges(), [(22, 22), (2222, 2222)]);
    let dovecot = names.iter().position(|n| *n == "dovecot-auth").unwrap();
    assert_eq!(
        ports[dovecot].ranges(),
        [(110, 110), (143, 143), (465, 465), (587, 587), (993, 993), (995, 995), (4190, 4190)]
    );
    // The policy: ignoreip, bantime.increment, recidive.
    for net in ["127.0.0.1/8", "::1", "192.0.2.0/24"] {
        assert!(cfg.policy.ignore.iter().any(|i| i == net), "{net} in {:?}", cfg.policy.ignore);
    }
    assert_eq!(cfg.policy.bantime.secs(), 3600);
    let inc = cfg.policy.increment.expect("bantime.increment");
    assert_eq!((inc.factor, inc.maxtime.secs()), (2.0, 7 * 86400));
    let rec = cfg.policy.recidive.expect("recidive");
    assert_eq!((rec.bans, rec.findtime.secs(), rec.bantime.secs()), (3, 86400, 7 * 86400));
    // Every note is in the file, located.
    for n in &imp.notes {
        assert!(imp.pipeline.contains(&n.to_string()), "{n}");
    }
    let corpus = common::shared("corpus/fail2ban");
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for &(file, filter, jail, _) in CASES {
        let log = corpus.join(file);
        let f2b = fail2ban(&conf, &log, filter);
        let ours = mailpipe(&pipeline, &log).remove(jail).unwrap_or_default();
        let c = compare(file, filter, &log, &f2b, &ours, false);
        report.push(format!(
            "{file} ({filter} / {jail}): {} lines agree, {} differ for a listed reason: {:?}",
            c.agree,
            c.explained.values().sum::<usize>(),
            c.explained
        ));
        failures.extend(c.unexplained);
        for (f, l, _) in LISTED.iter().filter(|(f, _, _)| *f == file) {
            if !c.differing.iter().any(|g| g.contains(l)) {
                failures.push(format!("{f}:{l} is listed as a difference but agrees now"));
            }
        }
        if c.agree < 5 {
            failures.push(format!("{file}: only {} lines agree", c.agree));
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} differences without a listed reason:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn converted_filters_never_match_more_than_fail2ban() {
    if let Some(why) = prerequisites() {
        return common::skip(&why);
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = configuration(tmp.path(), true);
    let (pipeline, imp) = import(&conf);
    let cfg = Config::load(&pipeline).unwrap();
    let names: Vec<&str> = cfg.jails.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["sshd", "postfix", "dovecot", "postfix-reject"], "{}", imp.pipeline);
    // postfix's look-ahead became an ignore rule, and the report says so, at its line.
    let postfix = cfg.jails.iter().find(|j| j.name == "postfix").unwrap();
    assert_eq!(postfix.ignore.len(), 1, "{postfix:?}");
    assert!(
        postfix.ignore[0]
            .ends_with("authentication failed:(?: Connection lost to authentication server| Invalid authentication mechanism)"),
        "{postfix:?}"
    );
    let lookahead = imp
        .notes
        .iter()
        .find(|n| n.message.contains("[postfix] the negative look-ahead"))
        .expect("a note on the look-ahead");
    let written = std::fs::read_to_string(conf.join(&lookahead.file)).unwrap();
    assert!(
        written.lines().nth(lookahead.line - 1).unwrap().contains("(?! Connection lost"),
        "{lookahead}"
    );
    // What sshd's filter needs rewritten, and what cannot be, is reported at the filter's lines:
    // its `Failed` rule's conditionals and tempered tokens are rewritten, `__alg_match`'s
    // look-ahead in a repetition cannot be.
    let sshd_note = |line: usize, what: &str| {
        imp.notes
            .iter()
            .any(|n| n.file == "filter.d/sshd.conf" && n.line == line && n.message.contains(what))
    };
    assert!(sshd_note(44, "tempered token"), "{:#?}", imp.notes);
    assert!(sshd_note(32, "look-around inside a group or repetition"), "{:#?}", imp.notes);
    let corpus = common::shared("corpus/fail2ban");
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for &(file, filter, _, jail) in CASES {
        let log = corpus.join(file);
        let f2b = fail2ban(&conf, &log, filter);
        let ours = mailpipe(&pipeline, &log).remove(jail).unwrap_or_default();
        let c = compare(file, filter, &log, &f2b, &ours, true);
        // Never looser: no line fail2ban does not count, no other address.
        let looser: Vec<&String> = c.looser.iter().filter(|l| c.unexplained.contains(l)).collect();
        failures.extend(looser.iter().map(|l| format!("looser than fail2ban: {l}")));
        // postfix and dovecot convert completely: only host names differ.
        if file != "sshd" {
            failures.extend(c.unexplained.iter().map(|l| format!("converted jail differs: {l}")));
        }
        report.push(format!(
            "{file} converted ({filter}): {} lines agree, {} fail2ban matches not made; differences for a listed reason: {} {:?}{}",
            c.agree,
            c.missing.len(),
            c.explained.values().sum::<usize>(),
            c.explained,
            c.unexplained
                .iter()
                .map(|u| format!("\n    not made (a rule left out, see the notes): {u}"))
                .collect::<String>()
        ));
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every jail of Debian's jail.conf enabled, once as shipped and once with every filter
/// customised (an empty `.local`, so all of them are converted): the import never fails, what
/// it writes loads and compiles, and every jail is in it or in a note saying why not.
#[test]
fn every_stock_jail_is_converted_or_reported() {
    if let Some(why) = prerequisites() {
        return common::skip(&why);
    }
    let tmp = tempfile::tempdir().unwrap();
    for customised in [false, true] {
        let dir = tmp.path().join(customised.to_string());
        copy_dir(Path::new("/etc/fail2ban"), &dir);
        std::fs::write(dir.join("jail.local"), "[DEFAULT]\nenabled = true\n").unwrap();
        if customised {
            for e in std::fs::read_dir(dir.join("filter.d")).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "conf") {
                    std::fs::write(p.with_extension("local"), "[Definition]\n").unwrap();
                }
            }
        }
        let (_, imp) = import(&dir);
        let text = std::fs::read_to_string(dir.join("jail.conf")).unwrap();
        let jails: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix('[')?.strip_suffix(']'))
            .filter(|n| !["INCLUDES", "DEFAULT"].contains(n))
            .collect();
        assert!(jails.len() > 50, "{jails:?}");
        let (mut written, mut refused) = (0, 0);
        for j in &jails {
            if imp.pipeline.contains(&format!("//   [{j}] → ")) {
                written += 1;
            } else if imp.notes.iter().any(|n| n.message.starts_with(&format!("[{j}] not converted: "))) {
                refused += 1;
            } else {
                panic!("[{j}] is neither converted nor reported:\n{}", imp.pipeline);
            }
        }
        println!(
            "{} jails, customised filters {customised}: {written} converted or mapped, {refused} refused with a reason",
            jails.len()
        );
        if !customised {
            // The mail jails map onto the shipped ones.
            for (j, to) in [
                ("[postfix-sasl]", "postfix.ron's postfix-sasl"),
                ("[dovecot]", "dovecot.ron's dovecot-auth"),
                ("[roundcube-auth]", "roundcube.ron's roundcube-auth"),
                ("[sshd]", "sshd.ron's sshd"),
            ] {
                assert!(imp.pipeline.contains(&format!("//   {j} → {to}")), "{j}: {}", imp.pipeline);
            }
        }
    }
}
