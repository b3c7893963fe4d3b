//! A line's timestamp is written by whoever sent it, and what an admin protects must stay
//! protected: forged dates, late backlogs and IPv6 prefix bans, through the command line.

mod common;

use std::io::Write;
use std::process::Command;

use common::{Mailpipe, cli};

/// A SASL failure from `ip` stamped `at` (UTC, traditional syslog format).
fn failure_at(ip: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{} mx1 postfix/smtpd[7]: warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6\n",
        at.format("%b %e %H:%M:%S")
    )
}

/// The same, dated 2099 with an explicit year (rsyslog's ISO file format).
fn failure_2099(ip: &str) -> String {
    format!("2099-01-01T00:00:00+00:00 mx1 postfix/smtpd[7]: warning: unknown[{ip}]: SASL LOGIN authentication failed: x\n")
}

fn find<'a>(bans: &'a [serde_json::Value], ip: &str) -> Option<&'a serde_json::Value> {
    bans.iter().find(|b| b["ip"] == ip)
}

#[test]
fn forged_and_late_dates_neither_stop_lift_nor_stretch_bans() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let extra = format!(
        "control: \"{}\", state: \"{}\",",
        socket.display(),
        dir.path().join("state.redb").display()
    );
    let cfg = common::pipeline_with(dir.path(), "t.ron", "Stdin", &extra);
    let (mp, mut stdin) = Mailpipe::start_piped(&cfg, 1);
    let now = chrono::Utc::now();
    let mut send = |text: String| {
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    };
    // One forged line between an attacker's failures: the attacker is still banned.
    send(failure_at("198.51.100.1", now).repeat(3) + &failure_2099("203.0.113.250") + &failure_at("198.51.100.1", now).repeat(2));
    assert_eq!(mp.next_ban()["ip"], "198.51.100.1");
    // Another forged line does not lift that ban.
    send(failure_2099("203.0.113.251"));
    // Failures all dated 2099 count now: an hour's ban, not one that ends in 2099.
    send(failure_2099("203.0.113.99").repeat(5));
    assert_eq!(mp.next_ban()["ip"], "203.0.113.99");
    // A backlog two hours late still bans, for an hour from now.
    send(failure_at("198.51.100.2", now - chrono::Duration::hours(2)).repeat(5));
    assert_eq!(mp.next_ban()["ip"], "198.51.100.2");
    let bans = common::listed(&socket);
    for ip in ["198.51.100.1", "203.0.113.99", "198.51.100.2"] {
        let b = find(&bans, ip).unwrap_or_else(|| panic!("{ip} is not listed: {bans:?}"));
        let left = b["left_s"].as_i64().unwrap();
        assert!((3000..=3600).contains(&left), "{ip} has {left} s left: {b}");
    }
    drop(stdin);
    let log = mp.stop();
    assert!(log.contains("mailpipe: restored 0 bans"), "{log}");

    // Restarted: the same three bans come back, each with at most an hour left.
    let cfg = common::pipeline_with(dir.path(), "u.ron", "Udp(listen: \"127.0.0.1:0\")", &extra);
    let mp = Mailpipe::start(&cfg, 2);
    let bans = common::listed(&socket);
    for ip in ["198.51.100.1", "203.0.113.99", "198.51.100.2"] {
        let left = find(&bans, ip).unwrap_or_else(|| panic!("{ip} was not restored: {bans:?}"))["left_s"]
            .as_i64()
            .unwrap();
        assert!((3000..=3600).contains(&left), "{ip} restored with {left} s left");
    }
    mp.stop();
}

#[test]
fn one_outlier_line_does_not_reset_a_replayed_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    let t = chrono::DateTime::parse_from_rfc3339("2024-06-17T03:00:00Z").unwrap().to_utc();
    let text = failure_at("198.51.100.1", t).repeat(3) + &failure_2099("203.0.113.250") + &failure_at("198.51.100.1", t).repeat(2);
    std::fs::write(&log, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .env("TZ", "UTC")
        .args(["test", "--decisions", "--now", "2024-06-18T00:00:00Z"])
        .arg(&log)
        .output()
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["kind"].as_str(), first["ip"].as_str()),
        (Some("ban"), Some("198.51.100.1")),
        "{out}"
    );
}

#[test]
fn a_prefix_ban_spares_ignored_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let extra = format!(
        "control: \"{}\", policy: (ignore: [\"127.0.0.0/8\", \"::1\", \"2001:db8:1:2::10\"]),",
        socket.display()
    );
    let cfg = common::pipeline_with(dir.path(), "p.ron", "Stdin", &extra);
    let (mp, mut stdin) = Mailpipe::start_piped(&cfg, 1);
    stdin
        .write_all(failure_at("2001:db8:1:2::99", chrono::Utc::now()).repeat(5).as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    let ban = mp.next_ban();
    assert_eq!(
        (ban["ip"].as_str(), ban["prefix"].as_u64(), ban["narrowed_from"].as_u64()),
        (Some("2001:db8:1:2::80"), Some(121), Some(64)),
        "{ban}"
    );
    // The operator's ban narrows the same way; an IPv4-mapped address is banned as IPv4.
    let (ok, out, err) = cli(&socket, &["ban", "2001:db8:1:2::3"]);
    assert!(ok && out.contains("banned 2001:db8:1:2::/124"), "{out}{err}");
    let (ok, out, err) = cli(&socket, &["ban", "::ffff:198.51.100.99"]);
    assert!(ok && out.contains("banned 198.51.100.99/32"), "{out}{err}");
    // Lengths that are no ban, or would overflow into the past, are refused.
    for bad in ["0s", "1000000y"] {
        let (ok, _, err) = cli(&socket, &["ban", "198.51.100.98", "--for", bad]);
        assert!(!ok && err.contains("100 years"), "--for {bad}: {err}");
    }
    drop(stdin);
    mp.stop();
}

#[test]
fn forwarded_addresses_count_only_behind_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("errors.log");
    let now = chrono::Utc::now().format("%d-%b-%Y %H:%M:%S +0000");
    let line = |list: &str| {
        format!(
            "[{now}]: <3lq5onb8> Failed login for postmaster from 10.0.0.2 (X-Forwarded-For: {list}) in session 3lq5onb87b7oqnc7 (error: 1)\n"
        )
    };
    // The client wrote the first address itself; the proxies appended the rest.
    std::fs::write(&log, line("6.6.6.6, 198.51.100.40, 10.0.0.3").repeat(5)).unwrap();
    let banned = |policy: &str| {
        let cfg = dir.path().join("p.ron");
        std::fs::write(
            &cfg,
            format!(
                "Pipeline(include: [(file: \"{}/pipelines/roundcube.ron\")], policy: ({policy}))",
                env!("CARGO_MANIFEST_DIR")
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
            .env("TZ", "UTC")
            .args(["test", "--decisions", "-c"])
            .arg(&cfg)
            .arg(&log)
            .output()
            .unwrap();
        let out = String::from_utf8(out.stdout).unwrap();
        let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        first["ip"].as_str().unwrap_or("none").to_string()
    };
    assert_eq!(banned("trusted_proxies: [\"10.0.0.0/8\"]"), "198.51.100.40");
    // What the client wrote cannot hide it either: letters, a `)` and a fake tail.
    std::fs::write(&log, line("zz) in session x (error: 1, 6.6.6.6, 198.51.100.41").repeat(5)).unwrap();
    assert_eq!(banned("trusted_proxies: [\"10.0.0.0/8\"]"), "198.51.100.41");
    // Without trusting the proxy, its own address: a header never plants one.
    assert_eq!(banned(""), "10.0.0.2");
}
