//! The command line as scripts use it: exit codes, error positions, `explain`, and `run`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

fn mailpipe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mailpipe"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env("TZ", "UTC");
    c
}

const SASL: &str = "Jun 17 03:14:07 mail postfix/smtpd[1]: warning: unknown[46.38.145.252]: SASL LOGIN authentication failed: UGFzc3dvcmQ6";

fn write_pipeline(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".ron").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn check_accepts_every_shipped_pipeline() {
    for f in ["mail", "postfix", "dovecot", "qmail", "roundcube", "all"] {
        let out = mailpipe().args(["check", "-c", &format!("pipelines/{f}.ron")]).output().unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!said.contains("warning"), "{f}: {said}");
    }
}

#[test]
fn check_reports_file_line_column_and_exits_2() {
    let cases = [
        (
            "Pipeline(\n  jails: [\n    Jail(name: \"a\", rules: [r\"x <HOST>\"], maxretry: 1, findtime: \"1m\", colour: 1),\n  ],\n)",
            3,
            "colour",
        ),
        (
            "Pipeline(jails: [\n  Jail(name: \"a\", rules: [\n    r\"warning (<HOST>\",\n  ], maxretry: 1, findtime: \"1m\"),\n])",
            3,
            "bad regex",
        ),
        (
            "Pipeline(jails: [\n  Jail(name: \"a\", rules: [\n    r\"no host here\",\n  ], maxretry: 1, findtime: \"1m\"),\n])",
            3,
            "exactly one <HOST>",
        ),
        (
            "Pipeline(jails: [\n  Jail(name: \"a\", rules: [r\"x <HOST>\"], maxretry: 1, findtime: \"soon\"),\n])",
            2,
            "bad duration",
        ),
        ("Pipeline(\n  include: [(file: \"missing.ron\")],\n)", 2, "cannot read include"),
        // Two errors: the first in the file is reported (a rule's, before a later jail's own).
        (
            "Pipeline(jails: [\n  Jail(name: \"a\", rules: [\n    r\"warning (<HOST>\",\n  ], maxretry: 1, findtime: \"1m\"),\n  Jail(name: \"b\", rules: [r\"x <HOST>\"], maxretry: 0, findtime: \"1m\"),\n])",
            3,
            "bad regex",
        ),
        // Lines are held in 32-bit offsets: a limit beyond 16 MiB is refused, not wrapped.
        (
            "Pipeline(\n  parse: (max_line: 99999999999),\n)",
            2,
            "parse.max_line must be between 1 and",
        ),
    ];
    for (text, line, reason) in cases {
        let f = write_pipeline(text);
        let out = mailpipe().args(["check", "-c"]).arg(f.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let prefix = format!("{}:{line}:", f.path().display());
        assert!(
            err.starts_with(&prefix) && err.contains(reason),
            "want {prefix}..{reason}, got {err}"
        );
    }
}

#[test]
fn unknown_jail_in_include_is_located() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("pipelines/postfix.ron", dir.path().join("postfix.ron")).unwrap();
    let main = dir.path().join("main.ron");
    std::fs::write(
        &main,
        "Pipeline(\n  include: [\n    (file: \"postfix.ron\", jails: [\"postfix-nope\"]),\n  ],\n)",
    )
    .unwrap();
    let out = mailpipe().args(["check", "-c"]).arg(&main).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("main.ron:3:") && err.contains("unknown jail \"postfix-nope\""),
        "{err}"
    );
}

/// A failure a trusted proxy reports without a usable client is no failure of anyone's: with
/// `--missed`, its line is listed as missed, as any unmatched line with an address.
#[test]
fn a_proxy_failure_without_a_client_is_listed_as_missed() {
    let f = write_pipeline(&format!(
        "Pipeline(include: [(file: \"{}/pipelines/roundcube.ron\")], policy: (trusted_proxies: [\"10.0.0.0/8\"]))",
        env!("CARGO_MANIFEST_DIR")
    ));
    let mut log = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        log,
        "Jun 17 00:00:01 mx1 roundcube: FAILED login for alice from 10.0.0.5 (X-Forwarded-For: 10.0.0.7) in session abc (error: 49)"
    )
    .unwrap();
    writeln!(
        log,
        "Jun 17 00:00:02 mx1 roundcube: FAILED login for alice from 10.0.0.5 (X-Forwarded-For: 192.0.2.7) in session abc (error: 49)"
    )
    .unwrap();
    let out = mailpipe()
        .args(["test", "--json", "--matches", "--missed", "--now", "2026-06-20T00:00:00Z", "-c"])
        .arg(f.path())
        .arg(log.path())
        .output()
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<(String, u64)> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] != "summary")
        .map(|v| (v["kind"].as_str().unwrap().to_string(), v["line"].as_u64().unwrap()))
        .collect();
    assert!(
        kinds.contains(&("missed".into(), 1)) && kinds.contains(&("match".into(), 2)),
        "{out}"
    );
    assert!(out.contains("\"missed_with_address\":1"), "{out}");
}

#[test]
fn max_line_beyond_the_limit_is_a_usage_error() {
    let out = mailpipe()
        .args(["test", "--max-line", "99999999999", "contrib/sample/maillog"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a number of bytes from 1 to 16777216"));
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1() {
    assert_eq!(mailpipe().args(["test"]).output().unwrap().status.code(), Some(2));
    assert_eq!(mailpipe().args(["frobnicate"]).output().unwrap().status.code(), Some(2));
    let out = mailpipe().args(["test", "/nonexistent/maillog"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/maillog"));
}

#[test]
fn explain_shows_every_stage() {
    let out = mailpipe()
        .args(["explain", "--now", "2024-07-01T00:00:00Z", SASL])
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    for want in [
        "time=2024-06-17T03:14:07Z",
        "program=\"postfix/smtpd\"",
        "literals found: [\" authentication failed:\"",
        "jail postfix-sasl: rule 0 matches, host 46.38.145.252",
        "counted as 46.38.145.252",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    let s = String::from_utf8(
        mailpipe()
            .args(["explain", "Jun 17 03:14:07 mail postfix/smtpd[1]: connect from x[192.0.2.1]"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(s.contains("prefilter: skip"), "{s}");
    let s = String::from_utf8(
        mailpipe()
            .args(["explain", &SASL.replace("46.38.145.252", "127.0.0.1")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(s.contains("ignored: the address is in policy.ignore"), "{s}");
}

/// `mailpipe run --dry-run` with pipes to its stdin and stdout.
fn spawn_dry_run() -> std::process::Child {
    mailpipe()
        .args(["run", "--dry-run"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Five SASL failures from one address, a second apart.
fn five_failures(end: &str) -> String {
    (0..5).map(|i| SASL.replace("03:14:07", &format!("03:14:0{i}")) + end).collect()
}

fn run_with_stdin(input: &[u8]) -> (String, Option<i32>) {
    let mut child = spawn_dry_run();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (String::from_utf8(out.stdout).unwrap(), out.status.code())
}

#[test]
fn run_bans_from_stdin_and_exits_0_at_eof() {
    let lines = five_failures("\n");
    let (out, code) = run_with_stdin(lines.as_bytes());
    assert_eq!(code, Some(0));
    let bans: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(bans.len(), 1, "{out}");
    assert_eq!(bans[0]["ip"], "46.38.145.252");
    assert_eq!(bans[0]["jail"], "postfix-sasl");
    assert_eq!(bans[0]["ban_for_s"], 3600);
}

#[test]
fn run_survives_bad_input() {
    let mut input = Vec::new();
    input.extend_from_slice(b"\xff\xfe\x00garbage\r\n\n\n");
    input.extend_from_slice(&vec![b'A'; 2 << 20]);
    input.push(b'\n');
    input.extend_from_slice(five_failures("\r\n").as_bytes());
    input.truncate(input.len() - 2); // last line without LF
    let (out, code) = run_with_stdin(&input);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn sigterm_drains_and_exits_0() {
    let mut child = spawn_dry_run();
    let mut stdin = child.stdin.take().unwrap();
    let lines = five_failures("\n");
    stdin.write_all(lines.as_bytes()).unwrap();
    stdin.flush().unwrap();
    // Read the ban as it is printed: proof the lines went through before the signal.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ban = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut ban).unwrap();
    assert!(ban.contains("46.38.145.252"), "{ban}");
    // stdin stays open: only the signal can end the run.
    assert!(common::signal(child.id(), libc::SIGTERM));
    let status = child.wait().unwrap();
    drop(stdin);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn pipeline_files_that_could_hang_the_daemon_are_refused() {
    let cases = [
        ("Pipeline(include: [(file: \"/dev/zero\")])", "not a regular file"),
        (
            "Pipeline(include: [(file: \"MAIL\")], matcher: (engine: Dense(size_limit: 100000000000)))",
            "above the 128 MiB",
        ),
    ];
    for (text, reason) in cases {
        let text = text.replace("MAIL", concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/mail.ron"));
        let f = write_pipeline(&text);
        // At most 2 GiB of address space: a regression fails here instead of exhausting the machine.
        let mut cmd = mailpipe();
        // SAFETY: only setrlimit, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                let lim = libc::rlimit {
                    rlim_cur: 2 << 30,
                    rlim_max: 2 << 30,
                };
                libc::setrlimit(libc::RLIMIT_AS, &lim);
                Ok(())
            });
        }
        let out = cmd.args(["check", "-c"]).arg(f.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(2) && err.contains(reason), "{text}: {err}");
    }
}

#[test]
fn check_warns_about_rules_whose_worst_case_is_far_slower() {
    let f = write_pipeline(
        "Pipeline(jails: [Jail(name: \"slow\", rules: [r\".*a.{20}\\[<HOST>\\]\", r\"fine \\[<HOST>\\]\"], maxretry: 5, findtime: \"10m\")])",
    );
    let out = mailpipe().args(["check", "-c"]).arg(f.path()).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("warning: jail slow rule 0:"), "{said}");
    assert!(!said.contains("rule 1:"), "{said}");
}

#[test]
fn socket_paths_never_replace_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    for field in [
        format!("inputs: [Unix(path: \"{}\")]", precious.display()),
        format!("inputs: [Stdin], control: \"{}\"", precious.display()),
    ] {
        let f = write_pipeline(&format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")], {field})",
            env!("CARGO_MANIFEST_DIR")
        ));
        // It must refuse at once; a daemon that took the path instead is stopped after a while.
        let child = mailpipe()
            .args(["run", "-c"])
            .arg(f.path())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let watchdog = std::thread::spawn(move || {
            std::thread::park_timeout(std::time::Duration::from_secs(30));
            common::signal(pid, libc::SIGKILL);
        });
        let out = child.wait_with_output().unwrap();
        watchdog.thread().unpark();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("is not a socket"), "{field}: {err}");
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    }
}

#[test]
fn stdin_counts_lines() {
    let mut child = mailpipe()
        .args(["run", "--dry-run"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all("x\n".repeat(5000).as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("input stdin: received 5000"), "{err}");
}

/// `check --print` writes the effective pipeline as one file that loads as the same pipeline.
#[test]
fn check_print_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let mp = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailpipe"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    for file in ["pipelines/all.ron", "contrib/guides/004-qmail-roundcube.ron"] {
        let path = format!("{root}/{file}");
        let printed = mp(&["check", "--print", "-c", &path]);
        let copy = dir.path().join("effective.ron");
        std::fs::write(&copy, &printed).unwrap();
        assert_eq!(mp(&["check", "-c", copy.to_str().unwrap()]), mp(&["check", "-c", &path]), "{file}");
        assert_eq!(
            mp(&["check", "--print", "-c", copy.to_str().unwrap()]),
            printed,
            "{file}: printing is stable"
        );
    }
}

/// `mailpipe run --dry-run | head -1`: once the reader is gone, mailpipe exits quietly.
#[test]
fn dry_run_into_a_closed_pipe_exits_quietly() {
    use std::io::{BufRead, Write};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["run", "--dry-run"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let now = chrono::Utc::now().format("%b %e %H:%M:%S").to_string();
    let writer = std::thread::spawn(move || {
        for i in 0..2000 {
            for _ in 0..5 {
                let l = format!(
                    "{now} mx1 postfix/smtpd[7]: warning: unknown[198.18.{}.{}]: SASL LOGIN authentication failed: x\n",
                    i / 256,
                    i % 256
                );
                if stdin.write_all(l.as_bytes()).is_err() {
                    return;
                }
            }
        }
    });
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("\"kind\":\"ban\""), "{first}");
    drop(out);
    let status = child.wait().unwrap();
    let _ = writer.join();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("retrying"), "{err}");
}

/// The system layout: mailpipe.ron, then conf.d/*.ron in name order, each later file over the
/// earlier; the CLI finds the control socket there.
#[test]
fn system_layout_layers_conf_d_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path();
    std::fs::create_dir(etc.join("conf.d")).unwrap();
    let sock = etc.join("ctl.sock");
    std::fs::write(
        etc.join("mailpipe.ron"),
        format!(
            "Pipeline(include: [(file: \"mail.ron\")], control: \"{}\", policy: (bantime: \"2h\"))",
            sock.display()
        ),
    )
    .unwrap();
    std::fs::write(
        etc.join("conf.d/10-sasl.ron"),
        r#"Pipeline(set: {"postfix-sasl": (maxretry: 3), "dovecot-auth": (enabled: false)}, policy: (ignore: ["192.0.2.0/24"], bantime: "3h"))"#,
    )
    .unwrap();
    std::fs::write(
        etc.join("conf.d/20-local.ron"),
        r#"Pipeline(policy: (bantime: "4h", ignore: ["198.51.100.7"]))"#,
    )
    .unwrap();
    std::fs::write(etc.join("conf.d/README"), "not a pipeline").unwrap();
    let mp = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mailpipe"))
            .env("MAILPIPE_CONFIG_DIR", etc)
            .args(args)
            .output()
            .unwrap()
    };
    let out = mp(&["check", "--print"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.contains("bantime: \"4h\""),
        "20-local.ron wins over 10-sasl.ron and mailpipe.ron:\n{printed}"
    );
    assert!(printed.contains("maxretry: 3") && !printed.contains("dovecot-auth"), "{printed}");
    for net in ["127.0.0.0/8", "192.0.2.0/24", "198.51.100.7"] {
        assert!(printed.contains(net), "ignore lists add up: {net}\n{printed}");
    }
    let out = mp(&["status"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&*sock.to_string_lossy()),
        "the socket comes from the configuration"
    );
}

/// A bad setting is reported in the file that wrote it, not the file that included it.
#[test]
fn a_bad_setting_points_at_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sub.ron"), "Pipeline(\n  policy: (ignore: [\"10.0.0/8\"]),\n)").unwrap();
    std::fs::write(
        dir.path().join("top.ron"),
        format!(
            "Pipeline(include: [(file: \"sub.ron\"), (file: \"{}/pipelines/mail.ron\")])",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["check", "-c"])
        .arg(dir.path().join("top.ron"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("sub.ron:2:") && err.contains("10.0.0/8"), "{err}");
}

/// Read as root, a pipeline file that someone else may write is refused: it names programs
/// the daemon runs.
#[test]
fn a_pipeline_file_others_may_write_is_refused_as_root() {
    if let Some(why) = common::missing(&[common::Need::Root]) {
        return common::skip(&why);
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.ron");
    std::fs::write(&file, "Pipeline(sinks: [Mail(to: \"root\", sendmail: \"/tmp/evil\")])").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by no one else"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Log levels: `--log-level` (or RUST_LOG) chooses what shows; under systemd each line carries
/// its syslog priority for journald.
#[test]
fn log_levels_and_journald_priorities() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = mailpipe();
        c.args(args)
            .arg("run")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(b"x\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let info = run(&[], &[]);
    assert!(info.contains("mailpipe: input stdin: received 1"), "{info}");
    assert!(run(&["--log-level", "warn"], &[]).is_empty());
    assert!(run(&[], &[("RUST_LOG", "mailpipe=error")]).is_empty());
    let journal = run(&[], &[("JOURNAL_STREAM", "8:1234")]);
    assert!(journal.lines().all(|l| l.starts_with("<6>mailpipe: ")), "{journal}");
    let out = mailpipe().args(["--log-level", "loud", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
