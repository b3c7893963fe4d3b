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
