//! State across restarts: `kill -9` during a flood loses no ban that was applied, and an
//! address's ban history (escalation) survives.

mod common;

use std::io::Write;
use std::net::UdpSocket;
use std::process::Command;

use common::Mailpipe;

fn failures(ip: &str, n: usize) -> String {
    let now = chrono::Utc::now().format("%b %e %H:%M:%S");
    (0..n)
        .map(|_| format!("{now} mx1 postfix/smtpd[7]: warning: unknown[{ip}]: SASL LOGIN authentication failed: x\n"))
        .collect()
}

#[test]
fn kill_9_loses_no_ban_and_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let (state, socket) = (dir.path().join("state.redb"), dir.path().join("control.sock"));
    let cfg = |name: &str, inputs: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")], inputs: [{inputs}], control: \"{}\", state: \"{}\")",
                env!("CARGO_MANIFEST_DIR"),
                socket.display(),
                state.display()
            ),
        )
        .unwrap();
        path
    };

    // A flood of 400 attackers; kill -9 once 100 bans have been applied.
    let (mp, mut stdin) = Mailpipe::start_piped(&cfg("a.ron", "Stdin"), 1);
    let flood: String = (0..400).map(|i| failures(&format!("198.18.{}.{}", i / 256, i % 256), 5)).collect();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(flood.as_bytes());
    });
    let applied: Vec<String> = (0..100).map(|_| mp.next_ban()["ip"].as_str().unwrap().to_string()).collect();
    mp.kill();
    let _ = writer.join();

    // Back up: every ban applied before the kill is active again.
    let mp = Mailpipe::start(&cfg("b.ron", "Udp(listen: \"127.0.0.1:0\")"), 2);
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["list", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = v["bans"].as_array().unwrap().iter().map(|b| b["ip"].as_str().unwrap()).collect();
    let lost: Vec<&String> = applied.iter().filter(|ip| !listed.contains(&ip.as_str())).collect();
    assert!(lost.is_empty(), "bans lost across kill -9: {lost:?}");
    // The restored bans are applied again (dry run: printed) before anything else.
    let reapplied: Vec<String> = (0..listed.len())
        .map(|_| mp.next_ban()["ip"].as_str().unwrap().to_string())
        .collect();
    assert!(applied.iter().all(|ip| reapplied.contains(ip)));

    // History: unbanned and failing again, the first address gets its second, doubled ban.
    let first = &applied[0];
    let ok = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["unban", first, "--socket"])
        .arg(&socket)
        .status()
        .unwrap();
    assert!(ok.success());
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    for line in failures(first, 5).lines() {
        u.send_to(line.as_bytes(), ("127.0.0.1", mp.port("udp", 0))).unwrap();
    }
    let ban = loop {
        let b = mp.next_ban();
        if b["kind"] == "ban" && b["ip"] == first.as_str() {
            break b;
        }
    };
    assert_eq!((ban["offence"].as_u64(), ban["ban_for_s"].as_u64()), (Some(2), Some(7200)), "{ban}");
    mp.stop();
}
