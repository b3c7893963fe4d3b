//! The peer's test suite: fail2ban's annotated mail logs, replayed through the jail of the same
//! mode; every `failJSON` must agree (match or not, host, time). The corpus is GPL data kept in
//! `../shared/corpus/fail2ban`; without it this test fails under CI and skips, visibly, elsewhere.
//!
//! Deliberate disagreements (also in the README): TAI64N labels are read like daemontools'
//! tai64nlocal (minus the 10 s TAI offset), so those times are 10 s earlier than fail2ban's.

mod common;

use mailpipe::clock::Mode;
use mailpipe::config::Config;
use mailpipe::matcher::Found;
use mailpipe::parse::{Zone, local_iso};
use mailpipe::pipeline::{Event, Pipeline};
use serde_json::Value;

/// fail2ban's tests run in Europe/Zurich with "now" at 2005-08-14 10:00:00 local.
const NOW: i64 = 1_124_006_400;

/// The jail that plays fail2ban's filter `file` in `mode`.
fn jail_for(file: &str, mode: &str) -> &'static str {
    match (file, mode) {
        ("postfix", "" | "more" | "normal") => "postfix-reject",
        ("postfix", "rbl") => "postfix-rbl",
        ("postfix", "auth") => "postfix-sasl",
        ("postfix", "ddos") => "postfix-ddos",
        ("postfix", "errors") => "postfix-errors",
        ("postfix", "aggressive") => "postfix-aggressive",
        ("dovecot", "" | "normal") => "dovecot-auth",
        ("dovecot", "aggressive") => "dovecot-aggressive",
        ("roundcube-auth", "") => "roundcube-auth",
        ("qmail", "") => "qmail-rbl",
        other => panic!("no jail for {other:?}"),
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
    expect: Value,
    line: String,
}

fn cases(dir: &std::path::Path, file: &'static str) -> Vec<Case> {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    let mut modes = vec![String::new()];
    let mut pending: Option<Value> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let directive = line.trim_start_matches('#').trim_start();
        if line.starts_with('#') {
            if let Some(j) = directive.strip_prefix("filterOptions:") {
                let v: Value = serde_json::from_str(j.trim()).unwrap();
                let sets = if v.is_array() { v.as_array().unwrap().clone() } else { vec![v] };
                modes = sets
                    .iter()
                    .map(|s| s.get("mode").and_then(Value::as_str).unwrap_or("").to_string())
                    .collect();
            } else if let Some(j) = directive.strip_prefix("failJSON:") {
                pending = Some(serde_json::from_str(j.trim()).unwrap());
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        if let Some(expect) = pending.take() {
            for mode in &modes {
                out.push(Case {
                    file,
                    lineno: i + 1,
                    mode: mode.clone(),
                    expect: expect.clone(),
                    line: line.to_string(),
                });
            }
        }
    }
    out
}

#[test]
fn fail2ban_corpus_agrees() {
    if let Some(why) = common::missing(&[common::Need::Shared("corpus/fail2ban")]) {
        return common::skip(&why);
    }
    let dir = common::shared("corpus/fail2ban");
    let mut cfg = Config::builtin_named("all.ron").unwrap();
    cfg.parse.timezone = Some("Europe/Zurich".into());
    cfg.policy.ignore.clear();
    // The corpus's lines are months from its reference time: trust them all.
    cfg.parse.backlog = mailpipe::config::Dur(mailpipe::policy::MAX_BAN);
    cfg.parse.future_skew = mailpipe::config::Dur(mailpipe::policy::MAX_BAN);
    let zone = Zone::resolve(Some("Europe/Zurich")).unwrap();
    // One pipeline for all lines: in Live mode a line's year does not depend on earlier lines,
    // and matches are reported whatever the window and policy make of them.
    let mut p = Pipeline::new(&cfg, Mode::Live).unwrap();
    let names = p.jail_names().to_vec();
    let mut failures = Vec::new();
    let mut total = 0;
    for file in ["postfix", "dovecot", "roundcube-auth", "qmail"] {
        for case in cases(&dir, file) {
            total += 1;
            let jail = jail_for(file, &case.mode);
            let mut got = None;
            p.process(case.line.as_bytes(), NOW, |e| {
                if let Event::Match { m, time } = e
                    && let (true, Found::Failure { ip, .. }) = (names[m.jail as usize] == jail, m.found)
                {
                    got = Some((ip.to_string(), local_iso(zone, time)));
                }
            });
            let want_match = case.expect["match"].as_bool().unwrap();
            let problem = match (&got, want_match) {
                (None, true) => Some("no match".to_string()),
                (Some(g), false) => Some(format!("unexpected match {g:?}")),
                (Some((host, time)), true) => {
                    let mut p = None;
                    if let Some(h) = case.expect["host"].as_str()
                        && h != host
                    {
                        p = Some(format!("host {host}, want {h}"));
                    }
                    if let Some(t) = case.expect["time"].as_str() {
                        let mut want = normalize_time(t);
                        if case.line.starts_with('@') {
                            // tai64nlocal semantics: 10 s before fail2ban's reading.
                            let naive = chrono::NaiveDateTime::parse_from_str(&want, "%Y-%m-%dT%H:%M:%S").unwrap();
                            want = (naive - chrono::Duration::seconds(10)).format("%Y-%m-%dT%H:%M:%S").to_string();
                        }
                        if &want != time {
                            p = Some(format!("time {time}, want {want}"));
                        }
                    }
                    p
                }
                (None, false) => None,
            };
            if let Some(why) = problem {
                failures.push(format!(
                    "{}:{} mode {:?} jail {jail}: {why}\n    {}",
                    case.file, case.lineno, case.mode, case.line
                ));
            }
        }
    }
    println!("fail2ban corpus: {} of {total} cases agree", total - failures.len());
    assert!(
        failures.is_empty(),
        "{} of {total} cases disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
