//! End to end against ground truth: the shared generator writes a realistic mail log and says
//! which addresses attack; `mailpipe test --decisions` and `mailpipe run --dry-run` must ban
//! exactly the addresses mail.ron's per-address jails call for, never a legitimate one, and
//! beyond those only attackers its account jails (spraying, stuffing) caught.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::process::{Command, Stdio};

use serde_json::Value;

/// mail.ron's jails as the truth file's failure kinds: (kinds, maxretry, findtime).
const JAILS: &[(&[&str], usize, i64)] = &[(&["sasl"], 5, 900), (&["dovecot_login", "dovecot_auth"], 7, 900)];

/// The ban key: IPv6 is banned per /64.
fn key(ip: &str) -> String {
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0).to_string()
        }
    }
}

fn banned_keys(decisions: &str) -> BTreeSet<String> {
    bans(decisions).into_iter().map(|(ip, _)| ip).collect()
}

/// (address, jail) of every ban.
fn bans(decisions: &str) -> BTreeSet<(String, String)> {
    decisions
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "ban")
        .map(|v| (v["ip"].as_str().unwrap().to_string(), v["jail"].as_str().unwrap().to_string()))
        .collect()
}

/// The jails that count accounts, not failures per address: the truth file knows nothing of them.
const ACCOUNT_JAILS: [&str; 2] = ["dovecot-spray", "dovecot-stuffing"];

#[test]
fn bans_exactly_the_attackers() {
    let needs = [
        common::Need::Shared("bench/gen_maillog.py"),
        common::Need::Program("python3", "python3"),
    ];
    if let Some(why) = common::missing(&needs) {
        return common::skip(&why);
    }
    let gen_path = common::shared("bench/gen_maillog.py");
    let dir = tempfile::tempdir().unwrap();
    let (log, truth) = (dir.path().join("maillog"), dir.path().join("truth.jsonl"));
    // About 2.8 hours of log ending about 10 minutes ago: `run` trusts those times (its clock
    // would count lines older than a day at their arrival instead).
    let start = (chrono::Utc::now() - chrono::Duration::hours(3))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let st = Command::new("python3")
        .arg(&gen_path)
        .args(["--seed", "3", "--lines", "200000", "--start", &start, "--out"])
        .arg(&log)
        .arg("--truth")
        .arg(&truth)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());

    let text = std::fs::read_to_string(&truth).unwrap();
    let mut lines = text.lines();
    let meta: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let mut expected = BTreeSet::new();
    let mut legit = BTreeSet::new();
    let mut attackers = BTreeSet::new();
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap();
        let ip = v["ip"].as_str().unwrap();
        if v["class"] == "legit" {
            legit.insert(key(ip));
        } else {
            attackers.insert(key(ip));
        }
        let mut by_kind: HashMap<&str, Vec<i64>> = HashMap::new();
        for (t, k) in v["fail"].as_array().unwrap().iter().zip(v["kinds"].as_array().unwrap()) {
            by_kind.entry(k.as_str().unwrap()).or_default().push(t.as_i64().unwrap());
        }
        for (kinds, maxretry, findtime) in JAILS {
            let mut ts: Vec<i64> = kinds.iter().flat_map(|k| by_kind.get(k).cloned().unwrap_or_default()).collect();
            ts.sort();
            if ts.windows(*maxretry).any(|w| w[maxretry - 1] - w[0] < *findtime) {
                expected.insert(key(ip));
            }
        }
    }
    assert!(expected.len() > 20, "the generated log should contain attackers");

    let end = meta["meta"]["end_epoch"].as_i64().unwrap();
    let now = chrono::DateTime::from_timestamp(end + 3600, 0).unwrap().to_rfc3339();
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .env("TZ", "UTC")
        .args(["test", "--decisions", "--now", &now])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success());
    // Both paths against the ground truth: every address it names, and beyond it only
    // attackers, and only by an account jail. They need not make the very same account-jail
    // bans: `run` bans until the wall clock moves on, `test` until the log's does, so an
    // address banned early in the log is counted again later only by `test`.
    let check = |how: &str, decisions: &str| {
        let got = banned_keys(decisions);
        for (ip, jail) in bans(decisions).into_iter().filter(|(ip, _)| !expected.contains(ip)) {
            assert!(
                attackers.contains(&ip) && ACCOUNT_JAILS.contains(&jail.as_str()),
                "{how}: {ip} banned by {jail} but should not be"
            );
        }
        assert_eq!(
            expected.difference(&got).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{how}: should be banned but was not"
        );
        assert!(got.is_disjoint(&legit), "{how}: a legitimate user was banned");
    };
    assert!(!legit.is_empty(), "the generated log should contain mistyping users");
    check("test", &String::from_utf8(out.stdout).unwrap());

    let run = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .env("TZ", "UTC")
        .args(["run", "--dry-run"])
        .stdin(std::fs::File::open(&log).unwrap())
        .output()
        .unwrap();
    assert!(run.status.success());
    check("run", &String::from_utf8(run.stdout).unwrap());
}
