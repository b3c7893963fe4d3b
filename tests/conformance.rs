//! The peer's test suite: fail2ban's annotated mail logs, replayed through the jail of the same
//! mode; every `failJSON` must agree (match or not, host, time). The corpus is GPL data kept in
//! `../shared/corpus/fail2ban`; without it this test fails under CI and skips, visibly, elsewhere.
//!
//! Deliberate disagreements (also in the README): TAI64N labels are read like daemontools'
//! tai64nlocal (minus the 10 s TAI offset), so those times are 10 s earlier than fail2ban's; a
//! `<HOST>` that is a host name, or an address with leading zeros, is never a failure.

mod common;

use mailpipe::clock::Mode;
use mailpipe::config::Config;
use mailpipe::matcher::Found;
use mailpipe::parse::{Zone, local_iso};
use mailpipe::pipeline::{Event, Pipeline};
use serde_json::Value;

/// fail2ban's tests run in Europe/Zurich with "now" at 2005-08-14 10:00:00 local.
const NOW: i64 = 1_124_006_400;

/// The jail that plays fail2ban's filter `file` in `mode`: the exceptions below, else the jail
/// named after the file (default and `normal` modes) or `<file>-<mode>`.
fn jail_for(file: &str, mode: &str) -> String {
    // The journal's copy of the sshd corpus is the sshd filter's.
    let file = if file == "sshd-journal" { "sshd" } else { file };
    let known = match (file, mode) {
        ("postfix", "" | "more" | "normal") => "postfix-reject",
        ("postfix", "auth") => "postfix-sasl",
        ("dovecot", "" | "normal") => "dovecot-auth",
        ("qmail", "") => "qmail-rbl",
        (file, "" | "normal") => file,
        _ => "",
    };
    if known.is_empty() {
        format!("{file}-{mode}")
    } else {
        known.to_string()
    }
}

/// `2005-03-7T02:09:33` → `2005-03-07T02:09:33` (the corpus does not always pad).
fn normalize_time(t: &str) -> String {
    let (date, time) = t.split_once('T').unwrap_or((t, ""));
    let d: Vec<u32> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let time = time.split('.').next().unwrap();
    format!("{:04}-{:02}-{:02}T{time}", d[0], d[1], d[2])
}

struct Case {
    file: &'static str,
    lineno: usize,
    mode: String,
    /// fail2ban's `logtype`: `journal` lines are a journal's message with host and tag, no time.
    logtype: String,
    expect: Value,
    line: String,
}

/// Every annotated line of `file`, once per option set in force (`fileOptions` merged into each
/// `filterOptions` set): its mode and log type.
fn cases(dir: &std::path::Path, file: &'static str) -> Vec<Case> {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    let mut file_opts = serde_json::Map::new();
    let mut sets = vec![Value::Object(Default::default())];
    let mut pending: Option<Value> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let directive = line.trim_start_matches('#').trim_start();
        if line.starts_with('#') {
            if let Some(j) = directive.strip_prefix("fileOptions:") {
                file_opts = serde_json::from_str::<Value>(j.trim()).unwrap().as_object().unwrap().clone();
            } else if let Some(j) = directive.strip_prefix("filterOptions:") {
                let v: Value = serde_json::from_str(j.trim()).unwrap();
                sets = if v.is_array() { v.as_array().unwrap().clone() } else { vec![v] };
            } else if let Some(j) = directive.strip_prefix("failJSON:") {
                pending = Some(serde_json::from_str(j.trim()).unwrap());
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        if let Some(expect) = pending.take() {
            for set in &sets {
                let opt = |k: &str| {
                    set.get(k)
                        .or_else(|| file_opts.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                out.push(Case {
                    file,
                    lineno: i + 1,
                    mode: opt("mode"),
                    logtype: opt("logtype"),
                    expect: expect.clone(),
                    line: line.to_string(),
                });
            }
        }
    }
    out
}

/// The corpus files: every log file beside the README and the filters.
fn corpus_files(dir: &std::path::Path) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file() && !e.file_name().to_string_lossy().ends_with(".md"))
        .map(|e| &*Box::leak(e.file_name().to_string_lossy().into_owned().into_boxed_str()))
        .collect();
    v.sort_unstable();
    v
}

/// Why mailpipe deliberately disagrees with an expected verdict, if it does: a `<HOST>` that is a
/// host name (mailpipe never resolves names from a log line: whoever controls the name's DNS
/// would choose whom to ban) or an address with leading zeros (octal to some parsers, decimal to
/// others), which mailpipe counts as a bad host, never a failure.
/// sshd cases fail2ban decides from earlier lines of the same process (its multi-line
/// matching): the line itself carries no address, or no sign of a failure. mailpipe reads one
/// line at a time and counts the lines that carry both (sshd writes them for each attempt).
/// (file, line, modes where it applies: empty for all.)
const ACROSS_LINES: &[(&str, usize, &[&str])] = &[
    ("sshd", 103, &[]),
    ("sshd", 118, &[]),
    ("sshd", 218, &[]),
    ("sshd", 173, &[]),
    ("sshd", 182, &["", "normal"]),
    ("sshd", 203, &[]),
    ("sshd", 208, &[]),
    ("sshd", 250, &[]),
    ("sshd", 252, &[]),
    ("sshd", 262, &[]),
    ("sshd", 289, &[]),
    ("sshd", 295, &[]),
    ("sshd", 301, &[]),
    ("sshd", 322, &[]),
    ("sshd", 324, &[]),
    ("sshd", 354, &["ddos", "aggressive"]),
    ("sshd", 359, &[]),
    ("sshd", 388, &[]),
    ("sshd", 390, &[]),
    ("sshd", 396, &[]),
    ("sshd-journal", 101, &[]),
    ("sshd-journal", 116, &[]),
    ("sshd-journal", 216, &[]),
    ("sshd-journal", 171, &[]),
    ("sshd-journal", 180, &["", "normal"]),
    ("sshd-journal", 201, &[]),
    ("sshd-journal", 206, &[]),
    ("sshd-journal", 242, &[]),
    ("sshd-journal", 244, &[]),
    ("sshd-journal", 254, &[]),
    ("sshd-journal", 277, &[]),
    ("sshd-journal", 283, &[]),
    ("sshd-journal", 289, &[]),
    ("sshd-journal", 329, &[]),
    ("sshd-journal", 331, &[]),
    ("sshd-journal", 337, &[]),
];

/// Sendmail cases fail2ban decides from an earlier line with the same queue id (`No such user
/// here`, then `from=..., nrcpts=0, relay=[ADDR]`); the second line alone is no failure.
const SAME_QUEUE_ID: &[(&str, usize)] = &[("sendmail-reject", 93), ("sendmail-reject", 103)];

/// fail2ban's `constraint`: whether the case applies to this option set (the forms the corpus
/// uses; another is an error, so a new corpus cannot pass unnoticed).
fn applies(case: &Case) -> bool {
    let Some(c) = case.expect["constraint"].as_str() else { return true };
    let name = if case.file == "sshd-journal" { "sshd" } else { case.file };
    let quoted = |s: &str| s.trim().trim_matches('\'').to_string();
    if let Some(v) = c.strip_prefix("opts.get('mode') == ") {
        return case.mode == quoted(v);
    }
    if let Some(v) = c.strip_prefix("opts.get('mode') != ") {
        return case.mode != quoted(v);
    }
    if let Some(v) = c.strip_prefix("name == ") {
        return name == quoted(v);
    }
    panic!("{}:{}: unknown constraint {c:?}", case.file, case.lineno);
}

/// (why, the address mailpipe takes instead: none for no failure at all).
fn deliberate(case: &Case) -> Option<(&'static str, Option<&'static str>)> {
    let (file, expect) = (case.file, &case.expect);
    if ACROSS_LINES
        .iter()
        .any(|&(f, l, modes)| f == file && l == case.lineno && (modes.is_empty() || modes.contains(&case.mode.as_str())))
    {
        return Some(("fail2ban decides it from earlier lines of the same sshd process", None));
    }
    if SAME_QUEUE_ID.contains(&(file, case.lineno)) {
        return Some(("fail2ban decides it from an earlier line of the same message", None));
    }
    let host = expect["host"].as_str()?;
    if file.starts_with("sshd") && host == "127.0.0.1" && case.line.contains("ssh2: from 10.10.1.2 port 55555 ssh2") {
        // A user name `test from 127.0.0.1 port 58946 ssh2:` from 10.10.1.2 writes exactly this
        // line; a password login never adds text after `ssh2`.
        return Some(("the address before a user name's end is the client's to write", Some("10.10.1.2")));
    }
    if file == "sogo-auth" && host == "192.0.2.16" {
        // `Login from '192.0.2.16, 10.0.0.1'`: fail2ban takes the list's first entry, which the
        // client wrote; mailpipe the last, which the proxy did.
        return Some(("the first entry of a forwarded list is the client's to write", Some("10.0.0.1")));
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    Some((
        if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
            "an address with leading zeros is not read"
        } else {
            "a host name is never resolved"
        },
        None,
    ))
}

/// What mailpipe made of one case: the host and local time of the jail's failure, if any.
fn run_case(p: &mut Pipeline, names: &[String], jail: &str, line: &str, zone: Zone) -> Option<(String, String)> {
    let mut got = None;
    p.process(line.as_bytes(), NOW, |e| {
        if let Event::Match { m, time } = e
            && let (true, Found::Failure { ip, .. }) = (names[m.jail as usize] == jail, m.found)
        {
            got = Some((ip.to_string(), local_iso(zone, time)));
        }
    });
    got
}

/// The disagreement of one case, if any.
fn judge(case: &Case, got: Option<&(String, String)>) -> Option<String> {
    let want_match = case.expect["match"].as_bool().unwrap();
    match (got, want_match) {
        (None, true) => Some("no match".to_string()),
        (Some(g), false) => Some(format!("unexpected match {g:?}")),
        (None, false) => None,
        (Some((host, time)), true) => {
            // Compared as addresses: `2001:DB8::1` is `2001:db8::1`.
            let same = |a: &str, b: &str| a == b || a.parse::<std::net::IpAddr>().ok().is_some_and(|x| b.parse().ok() == Some(x));
            if let Some(h) = case.expect["host"].as_str()
                && !same(h, host)
            {
                return Some(format!("host {host}, want {h}"));
            }
            // Journal lines carry no time; fail2ban takes the journal's.
            let t = case.expect["time"].as_str().filter(|_| case.logtype != "journal")?;
            let mut want = normalize_time(t);
            if case.line.starts_with('@') {
                // tai64nlocal semantics: 10 s before fail2ban's reading.
                let naive = chrono::NaiveDateTime::parse_from_str(&want, "%Y-%m-%dT%H:%M:%S").unwrap();
                want = (naive - chrono::Duration::seconds(10)).format("%Y-%m-%dT%H:%M:%S").to_string();
            }
            (&want != time).then(|| format!("time {time}, want {want}"))
        }
    }
}

/// Every corpus file, every annotated line, every option set. `CORPUS=exim,sshd` restricts the
/// run to those files (for work on one service); CI runs them all.
#[test]
fn fail2ban_corpus_agrees() {
    if let Some(why) = common::missing(&[common::Need::Shared("corpus/fail2ban")]) {
        return common::skip(&why);
    }
    let dir = common::shared("corpus/fail2ban");
    // all.ron, and the jail it leaves out on purpose (OpenWebMail logs an address the client
    // chooses: shipped in webmail.ron for hosts that strip those headers).
    let root = env!("CARGO_MANIFEST_DIR");
    let text = format!(
        "Pipeline(include: [(file: \"{root}/pipelines/all.ron\"), (file: \"{root}/pipelines/webmail.ron\", jails: [\"openwebmail\"])])"
    );
    let mut cfg = Config::from_text("conformance.ron", &text, std::path::Path::new(root)).unwrap();
    cfg.parse.timezone = Some("Europe/Zurich".into());
    cfg.policy.ignore.clear();
    // The corpus's lines are months from its reference time: trust them all.
    cfg.parse.backlog = mailpipe::config::Dur(mailpipe::policy::MAX_BAN);
    cfg.parse.future_skew = mailpipe::config::Dur(mailpipe::policy::MAX_BAN);
    let zone = Zone::resolve(Some("Europe/Zurich")).unwrap();
    // One pipeline for all lines: in Live mode a line's year does not depend on earlier lines,
    // and matches are reported whatever the window and policy make of them.
    let mut p = Pipeline::new(&cfg.stages().unwrap(), Mode::Live).unwrap();
    let names = p.jail_names().to_vec();
    let only: Option<Vec<String>> = std::env::var("CORPUS").ok().map(|v| v.split(',').map(String::from).collect());
    let (mut failures, mut deliberate_n, mut report) = (Vec::new(), 0, Vec::new());
    let mut total = 0;
    for file in corpus_files(&dir) {
        if only.as_ref().is_some_and(|o| !o.iter().any(|f| f == file)) {
            continue;
        }
        let (mut n, mut bad) = (0, 0);
        for case in cases(&dir, file) {
            total += 1;
            n += 1;
            let jail = jail_for(file, &case.mode);
            if !names.contains(&jail) {
                bad += 1;
                failures.push(format!("{file}:{} mode {:?}: no jail {jail} in all.ron", case.lineno, case.mode));
                continue;
            }
            let got = run_case(&mut p, &names, &jail, &case.line, zone);
            if !applies(&case) {
                continue;
            }
            if let Some((why, ours)) = deliberate(&case) {
                deliberate_n += 1;
                if got.as_ref().map(|g| g.0.as_str()) != ours {
                    bad += 1;
                    failures.push(format!(
                        "{file}:{} jail {jail}: {why}: want {ours:?}, got {got:?}\n    {}",
                        case.lineno, case.line
                    ));
                }
                continue;
            }
            if let Some(why) = judge(&case, got.as_ref()) {
                bad += 1;
                failures.push(format!(
                    "{}:{} mode {:?} jail {jail}: {why}\n    {}",
                    case.file, case.lineno, case.mode, case.line
                ));
            }
        }
        report.push(format!("{file}: {} of {n}", n - bad));
    }
    println!(
        "fail2ban corpus: {} of {total} cases agree ({deliberate_n} of them deliberately different, see the README); {}",
        total - failures.len(),
        report.join(", ")
    );
    assert!(
        failures.is_empty(),
        "{} of {total} cases disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
