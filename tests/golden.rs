//! Golden files for `mailpipe test`: its output on the logs in `tests/golden/` must not change
//! unless on purpose. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the `.out` files; review
//! the diff before committing it.

use std::path::Path;
use std::process::Command;

/// (golden name, pipeline, log, extra flags)
const CASES: &[(&str, &str, &str, &[&str])] = &[
    ("postfix.matches", "pipelines/all.ron", "postfix.log", &["--matches"]),
    ("dovecot.matches", "pipelines/all.ron", "dovecot.log", &["--matches"]),
    ("other.matches", "pipelines/all.ron", "other.log", &["--matches"]),
    ("guides.matches", "pipelines/all.ron", "guides.log", &["--matches", "--missed"]),
    (
        "bad-input.missed",
        "pipelines/mail.ron",
        "bad-input.log",
        &["--matches", "--missed"],
    ),
    ("bans.decisions", "pipelines/mail.ron", "bans.log", &["--decisions"]),
    ("bans.summary", "pipelines/mail.ron", "bans.log", &[]),
    ("postfix.summary", "pipelines/all.ron", "postfix.log", &[]),
];

/// Timing differs run to run; everything else must be identical.
fn normalize(out: &str) -> String {
    out.lines()
        .map(|l| {
            if l.starts_with("Elapsed:") {
                "Elapsed: <timing>".to_string()
            } else if let Some(i) = l.find(",\"elapsed_s\":") {
                format!("{},<timing>}}", &l[..i])
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect()
}

#[test]
fn test_command_output_is_unchanged() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut diffs = Vec::new();
    for (name, pipeline, log, flags) in CASES {
        let out = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
            .current_dir(root)
            .env("TZ", "UTC")
            .args(["test", "-c", pipeline, "--now", "2024-07-01T00:00:00Z"])
            .args(*flags)
            .arg(format!("tests/golden/{log}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let got = normalize(&String::from_utf8(out.stdout).unwrap());
        let path = root.join(format!("tests/golden/{name}.out"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            let first = got
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(got.lines().count().min(want.lines().count()));
            diffs.push(format!(
                "{name}: differs at line {}\n  got:  {}\n  want: {}",
                first + 1,
                got.lines().nth(first).unwrap_or("<end>"),
                want.lines().nth(first).unwrap_or("<end>")
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 to accept):\n{}",
        diffs.join("\n")
    );
}
