//! Detection that understands accounts, end to end with the shipped defaults (mail.ron), on a
//! log written here with its ground truth: slow password spraying, credential stuffing that
//! spares the owner's trusted address, the user whose phone keeps an old password, and the
//! attacker who logs in to its own account between bursts. Through `mailpipe test --decisions`
//! and `mailpipe run --dry-run`, which must agree.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;

/// A log being written: (time, line), sorted before use.
#[derive(Default)]
struct Log(Vec<(i64, String)>);

impl Log {
    fn line(&mut self, t: i64, msg: String) {
        let stamp = chrono::DateTime::from_timestamp(t, 0).unwrap().format("%Y-%m-%dT%H:%M:%S+00:00");
        self.0.push((t, format!("{stamp} mx1 dovecot: {msg}")));
    }

    /// A failed IMAP login, as Dovecot's login process logs it.
    fn fail(&mut self, t: i64, ip: &str, user: &str) {
        self.line(
            t,
            format!("imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<{user}>, method=PLAIN, rip={ip}, lip=192.0.2.10, TLS, session=<s{t}>"),
        );
    }

    /// A successful one.
    fn ok(&mut self, t: i64, ip: &str, user: &str) {
        self.line(
            t,
            format!("imap-login: Login: user=<{user}>, method=PLAIN, rip={ip}, lip=192.0.2.10, mpid={t}, TLS, session=<s{t}>"),
        );
    }

    fn text(mut self) -> String {
        self.0.sort_by_key(|(t, _)| *t);
        self.0.into_iter().map(|(_, l)| l + "\n").collect()
    }
}

/// The scenarios, from `t0` on (26 hours of log); the addresses that must be banned, each with
/// the jail that must do it (`None`: any), and those that must not.
fn scenarios(t0: i64) -> (String, BTreeMap<String, Option<&'static str>>, BTreeSet<String>) {
    let mut log = Log::default();
    let mut banned = BTreeMap::new();
    let mut spared = BTreeSet::new();
    let day = t0 + 86_400;

    // Slow spraying: one address, 20 accounts, one attempt every 4 minutes. dovecot-auth (7 in
    // 15 minutes) never sees more than 4.
    for i in 0..20 {
        log.fail(day + 240 * i, "203.0.113.1", &format!("user{i}@example.com"));
    }
    banned.insert("203.0.113.1".into(), Some("dovecot-spray"));

    // Stuffing: 60 addresses, two attempts each on one account within four minutes. The owner
    // logged in the day before from 198.51.100.200, and mistypes once during the attack.
    log.ok(t0, "198.51.100.200", "ceo@example.com");
    for i in 0..60 {
        let ip = format!("10.1.0.{}", i + 1);
        log.fail(day + 3600 + 2 * i, &ip, "ceo@example.com");
        log.fail(day + 3600 + 2 * i + 120, &ip, "ceo@example.com");
        banned.insert(ip, None);
    }
    log.fail(day + 3660, "198.51.100.200", "ceo@example.com");
    spared.insert("198.51.100.200".to_string());

    // The mistyping user: every hour for a day, four failures, a success, four more failures.
    // The control: the same eight failures without the success, banned as fail2ban would.
    for h in 0..24 {
        let at = t0 + 3600 * h;
        for k in 0..4 {
            log.fail(at + 30 * k, "192.0.2.50", "phone@example.com");
            log.fail(at + 300 + 30 * k, "192.0.2.50", "phone@example.com");
        }
        log.ok(at + 200, "192.0.2.50", "phone@example.com");
    }
    spared.insert("192.0.2.50".to_string());
    for k in 0..8 {
        log.fail(t0 + 7200 + 60 * k, "192.0.2.51", "tablet@example.com");
    }
    banned.insert("192.0.2.51".into(), Some("dovecot-auth"));

    // The interleaving attacker: four failures on other accounts, then a success on its own,
    // again and again. Its success resets only its own account's failures.
    for b in 0..3 {
        let at = day + 7200 + 300 * b;
        for k in 0..4 {
            log.fail(at + 10 * k, "203.0.113.9", &format!("victim{k}@example.com"));
        }
        log.ok(at + 60, "203.0.113.9", "mine@example.com");
    }
    banned.insert("203.0.113.9".into(), Some("dovecot-auth"));
    (log.text(), banned, spared)
}

/// The bans in `mailpipe`'s JSON lines: address and jail.
fn bans(out: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "ban")
        .map(|v| (v["ip"].as_str().unwrap().to_string(), v["jail"].as_str().unwrap().to_string()))
        .collect()
}

fn check(got: &BTreeMap<String, String>, banned: &BTreeMap<String, Option<&str>>, spared: &BTreeSet<String>) {
    for (ip, jail) in banned {
        let by = got.get(ip).unwrap_or_else(|| panic!("{ip} should be banned: {got:?}"));
        if let Some(j) = jail {
            assert_eq!(by, j, "{ip}");
        }
    }
    for ip in spared {
        assert!(!got.contains_key(ip), "{ip} must not be banned: {got:?}");
    }
    assert_eq!(got.len(), banned.len(), "nothing else banned: {got:?}");
}

#[test]
fn accounts_spraying_stuffing_mistypes_and_interleaving() {
    let now = chrono::Utc::now().timestamp();
    let t0 = now - 26 * 3600;
    let (log, banned, spared) = scenarios(t0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mail.log");
    std::fs::write(&path, &log).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["test", "--decisions"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check(&bans(&out.stdout), &banned, &spared);
    let summary: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    // The phone's 192 failures, the attacked account's 121 (the spray's accounts: one each).
    let top: Vec<(String, u64)> = summary["targeted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["user"].as_str().unwrap().to_string(), t["failures"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        top[..2],
        [("phone@example.com".into(), 192), ("ceo@example.com".into(), 121)],
        "{summary}"
    );

    // The daemon on the same lines: its clock trusts lines up to three days old here.
    let cfg = common::pipeline_with(dir.path(), "p.ron", "Stdin", "parse: (backlog: \"3d\")");
    let run = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["run", "--dry-run", "-c"])
        .arg(&cfg)
        .stdin(std::fs::File::open(&path).unwrap())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(run.status.success());
    check(&bans(&run.stdout), &banned, &spared);
}

#[test]
fn a_trusted_pair_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    let cfg = common::pipeline_with(dir.path(), "p.ron", "Stdin", &format!("state: \"{}\"", state.display()));
    let now = chrono::Utc::now().timestamp();
    let run = |log: Log| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
            .args(["run", "--dry-run", "-c"])
            .arg(&cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), log.text().as_bytes()).unwrap();
        drop(child.stdin.take());
        bans(&child.wait_with_output().unwrap().stdout)
    };
    let mut first = Log::default();
    first.ok(now - 60, "198.51.100.200", "ceo@example.com");
    assert!(run(first).is_empty());
    // After the restart, a stuffing attack on the account: the owner's address mistypes too.
    let mut second = Log::default();
    for i in 0..12 {
        second.fail(now - 30 + i, &format!("10.2.0.{}", i + 1), "ceo@example.com");
    }
    second.fail(now - 10, "198.51.100.200", "ceo@example.com");
    let got = run(second);
    assert_eq!(got.len(), 12, "{got:?}");
    assert!(!got.contains_key("198.51.100.200"), "{got:?}");
}
