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
