//! The shipped service files are valid where their tools exist (a missing tool fails under CI and skips, visibly, elsewhere).

mod common;

use std::process::Command;

use common::Need;

#[test]
fn systemd_units_verify() {
    if let Some(why) = common::missing(&[Need::Program("systemd-analyze", "systemd"), Need::Program("kill", "procps")]) {
        return common::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for unit in ["mailpipe.service", "mailpipe-firewall.service"] {
        let text = std::fs::read_to_string(format!("{}/contrib/systemd/{unit}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        // Point the units at the binary under test, so `verify` can check the commands exist.
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace("/usr/local/sbin/mailpipe", env!("CARGO_BIN_EXE_mailpipe"))).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze").arg("verify").args(&paths).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Only complaints about these units count; the host's own units are not ours to judge.
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("mailpipe") || l.contains(&*dir.path().to_string_lossy()))
        .collect();
    assert!(ours.is_empty(), "{err}");
}

#[test]
fn prometheus_alerts_check() {
    if let Some(why) = common::missing(&[Need::Program("promtool", "prometheus")]) {
        return common::skip(&why);
    }
    let out = Command::new("promtool")
        .args([
            "check",
            "rules",
            concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus/alerts.yml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grafana_dashboard_is_json_with_panels() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/mailpipe.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let titles: Vec<&str> = v["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Lines/s",
        "Matches/s per jail",
        "Bans per hour per jail",
        "Active bans",
        "Drops per input",
        "Ban latency (line to firewall)",
    ] {
        assert!(titles.contains(&want), "{titles:?}");
    }
}

/// Each guide's set-up as a pipeline file (`contrib/guides/`) is valid, and the README shows it
/// as it is shipped.
#[test]
fn guide_pipelines_check_and_match_the_readme() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(format!("{root}/contrib/guides"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "one per guide");
    for f in files {
        let out = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
            .arg("check")
            .arg("-c")
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(readme.contains(&text), "README.md does not show {} as shipped", f.display());
    }
}

/// `Type=notify`: READY once the inputs are bound, WATCHDOG from the pipeline thread while it
/// runs, STOPPING at SIGTERM, on the socket systemd names in NOTIFY_SOCKET.
#[test]
fn the_daemon_tells_systemd_it_is_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(common::LIMIT)).unwrap();
    let cfg = common::pipeline(dir.path(), "n.ron", "Udp(listen: \"127.0.0.1:0\")");
    let child = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["run", "-c"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = common::Reaper(child);
    let next = || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification within the time limit");
        String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
    };
    assert_eq!(next(), "READY=1");
    assert_eq!(next(), "WATCHDOG=1");
    assert!(common::signal(child.0.id(), libc::SIGTERM));
    // Watchdog pings may still come first.
    assert!((0..10).any(|_| next() == "STOPPING=1"));
    assert!(child.0.wait().unwrap().success());
}
