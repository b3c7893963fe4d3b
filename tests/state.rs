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
        .map(|_| {
            let d = mp.next_ban();
            // Marked as restored, with the reason and offence they were made with.
            assert_eq!(
                (d["restored"].as_bool(), d["reason"].as_str(), d["offence"].as_u64()),
                (Some(true), Some("threshold"), Some(1)),
                "{d}"
            );
            d["ip"].as_str().unwrap().to_string()
        })
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

/// The daemon on a state file `state` with a control socket and stdin.
fn daemon(dir: &std::path::Path, state: &std::path::Path, name: &str) -> (Mailpipe, std::process::ChildStdin, std::path::PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let extra = format!("control: \"{}\", state: \"{}\",", socket.display(), state.display());
    let cfg = common::pipeline_with(dir, &format!("{name}.ron"), "Stdin", &extra);
    let (mp, stdin) = Mailpipe::start_piped(&cfg, 1);
    (mp, stdin, socket)
}

#[test]
fn a_damaged_state_file_is_moved_aside_and_the_daemon_protects() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    let (mp, mut stdin, _) = daemon(dir.path(), &state, "a");
    stdin.write_all(failures("198.51.100.1", 5).as_bytes()).unwrap();
    stdin.flush().unwrap();
    mp.next_ban();
    drop(stdin);
    mp.stop();
    // Every byte flipped in the middle of the file, then the file cut short.
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid - 2048..mid + 2048] {
        *b ^= 0xff;
    }
    bytes.truncate(bytes.len() * 3 / 4);
    std::fs::write(&state, &bytes).unwrap();
    let (mp, mut stdin, _) = daemon(dir.path(), &state, "b");
    let log = mp.wait_log("state file");
    assert!(log.contains("moved aside to") && log.contains(".damaged-"), "{log}");
    stdin.write_all(failures("198.51.100.2", 5).as_bytes()).unwrap();
    stdin.flush().unwrap();
    assert_eq!(mp.next_ban()["ip"], "198.51.100.2", "it still bans");
    drop(stdin);
    mp.stop();
}

#[test]
fn a_full_disk_loses_no_ban_once_space_is_back() {
    if let Some(why) = common::missing(&[common::Need::Root, common::Need::Program("mount", "mount")]) {
        return common::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    common::run(&["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", disk.to_str().unwrap()]);
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = common::try_run(&["umount", "-l", self.0.to_str().unwrap_or("")]);
        }
    }
    let _unmount = Unmount(disk.clone());
    let state = disk.join("state.redb");
    let (mp, mut stdin, socket) = daemon(dir.path(), &state, "c");
    stdin.write_all(failures("198.51.100.1", 5).as_bytes()).unwrap();
    stdin.flush().unwrap();
    mp.next_ban();
    // The disk fills up; bans go on being made and applied.
    let filler = disk.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 4 << 20]);
    let attackers: Vec<String> = (0..300).map(|i| format!("198.18.{}.{}", i / 256, i % 256)).collect();
    for ip in &attackers {
        stdin.write_all(failures(ip, 5).as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    for _ in &attackers {
        mp.next_ban();
    }
    mp.wait_log("changes wait in memory");
    let (_, status, _) = common::cli(&socket, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(v["state"]["pending"].as_u64().unwrap() > 0, "{v}");
    // Space comes back: the file catches up by itself.
    std::fs::remove_file(&filler).unwrap();
    mp.wait_log("is written again");
    drop(stdin);
    mp.stop();
    // Restarted: every ban made while the disk was full is restored.
    let (mp, stdin, socket) = daemon(dir.path(), &state, "d");
    let restored: Vec<String> = common::listed(&socket)
        .iter()
        .map(|b| b["ip"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = attackers.iter().filter(|ip| !restored.contains(ip)).collect();
    assert!(lost.is_empty(), "lost across the full disk: {lost:?}");
    drop(stdin);
    mp.stop();
}
