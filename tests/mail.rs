//! The ban mail, with a real program standing in for sendmail that records its arguments and
//! the message it reads, and one standing in for whois: one mail per batch however many bans,
//! the lines that counted, attacker text kept out of the headers, a failing sendmail reported.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A program at `dir/name` running `body` under /bin/sh.
fn program(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A sendmail that keeps each message as `mail.N` and its arguments as `args.N`.
fn recorder(dir: &Path) -> PathBuf {
    let out = dir.display();
    program(
        dir,
        "sendmail",
        // Renamed into place whole, so a reader never sees half a message.
        &format!("n=$$; printf '%s\\n' \"$@\" > {out}/args.$n; cat > {out}/part.$n && mv {out}/part.$n {out}/mail.$n"),
    )
}

/// The messages recorded, with their arguments.
fn mails(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("mail."))
        .map(|p| {
            let args = p.with_file_name(p.file_name().unwrap().to_string_lossy().replace("mail.", "args."));
            (std::fs::read_to_string(&args).unwrap(), std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// Runs mailpipe over `lines` on stdin with this sink, until their end; its stderr.
fn run(dir: &Path, sink: &str, lines: &[String]) -> String {
    let cfg = dir.join("p.ron");
    std::fs::write(
        &cfg,
        format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")], sinks: [{sink}])",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["run", "-c"])
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

/// mailpipe running on mail.ron's jails with `sinks`, stdin piped (kept open by the caller).
fn running(dir: &Path, sinks: &str, stdout: Stdio) -> common::Reaper {
    let cfg = dir.join("p.ron");
    std::fs::write(
        &cfg,
        format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")], sinks: [{sinks}])",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    common::Reaper(
        Command::new(env!("CARGO_BIN_EXE_mailpipe"))
            .args(["run", "-c"])
            .arg(&cfg)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn failures(ip: &str, n: usize) -> Vec<String> {
    (0..n).map(|_| common::sasl_line(ip)).collect()
}

#[test]
fn one_mail_per_batch_with_the_lines_behind_each_ban() {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = recorder(dir.path());
    let whois = program(
        dir.path(),
        "whois",
        "printf '%% a comment\\ninetnum: 192.0.2.0 - 192.0.2.255\\nnetname: TEST-NET-1\\nremarks: noise\\ncountry: ZZ\\n'",
    );
    let mut lines = failures("192.0.2.10", 4);
    // The client writes the SASL response: it tries to add a header and to end the message (a
    // line feed would end the log line itself; carriage returns and the like stay in it).
    lines.push(common::sasl_line("192.0.2.10").replace("UGFzc3dvcmQ6", "x\rBcc: victim@example.net\r.\u{1b}[2J"));
    lines.extend(failures("2001:db8:5::1", 5));
    let sink = format!(
        "Mail(to: \"admin@example.org\", from: \"mailpipe@example.org\", sendmail: \"{}\", batch: \"1h\", whois: Some(\"{}\"))",
        sendmail.display(),
        whois.display()
    );
    let log = run(dir.path(), &sink, &lines);
    assert!(log.contains("mailed 2 bans"), "{log}");
    let sent = mails(dir.path());
    assert_eq!(sent.len(), 1, "one mail for the batch: {sent:?}");
    let (args, mail) = &sent[0];
    assert_eq!(args, "-oi\n-f\nmailpipe@example.org\n--\nadmin@example.org\n");
    let (head, body) = mail.split_once("\n\n").unwrap();
    assert!(
        head.contains("Subject: [mailpipe] ") && head.contains(": 2 bans (postfix-sasl: 2)"),
        "{head}"
    );
    assert!(head.contains("To: admin@example.org") && !head.contains("Bcc"), "{head}");
    for want in [
        "192.0.2.10/32: banned by jail postfix-sasl for 1h (offence 1, threshold, 5 failures), on 25,465,587",
        "2001:db8:5::/64: banned by jail postfix-sasl",
        "netname: TEST-NET-1",
        "country: ZZ",
    ] {
        assert!(body.contains(want), "{want:?} missing from:\n{body}");
    }
    assert!(!body.contains("remarks"), "whois is summarised");
    // Five lines counted for each ban, all quoted; the hostile one on a line of its own.
    assert_eq!(body.matches("SASL LOGIN authentication failed").count(), 10, "{body}");
    assert!(body.contains("failed: x?Bcc: victim@example.net?.?[2J"), "{body}");
    assert!(!body.lines().any(|l| l == "." || l.starts_with("Bcc")), "{body}");
}

#[test]
fn a_ban_storm_is_one_bounded_mail() {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = recorder(dir.path());
    let lines: Vec<String> = (0..300)
        .flat_map(|i| failures(&format!("198.51.{}.{}", 100 + i / 200, i % 200 + 1), 5))
        .collect();
    let sink = format!(
        "Mail(to: [\"a@example.org\", \"b@example.org\"], sendmail: \"{}\", max_bans: 50, lines: 2)",
        sendmail.display()
    );
    run(dir.path(), &sink, &lines);
    let sent = mails(dir.path());
    assert_eq!(sent.len(), 1);
    let (args, mail) = &sent[0];
    assert!(args.ends_with("--\na@example.org\nb@example.org\n"), "{args}");
    assert!(mail.contains("300 bans (postfix-sasl: 300)"));
    assert_eq!(mail.matches(": banned by jail").count(), 50);
    assert_eq!(mail.matches("SASL LOGIN").count(), 100, "two lines per listed ban");
    assert!(mail.contains("... and 250 more bans"));
    assert!(mail.len() < 64 << 10, "{} bytes", mail.len());
}

#[test]
fn a_failing_sendmail_is_reported_and_mailpipe_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let broken = program(
        dir.path(),
        "sendmail",
        "cat >/dev/null; echo 'sendmail: fatal: queue file write error' >&2; exit 75",
    );
    let log = run(
        dir.path(),
        &format!("Mail(to: \"root\", sendmail: \"{}\"), DryRun", broken.display()),
        &failures("192.0.2.20", 5),
    );
    assert!(log.contains("error: ban mail:") && log.contains("queue file write error"), "{log}");
}

#[test]
fn bad_mail_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.ron");
    std::fs::write(
        &cfg,
        format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")], sinks: [Mail(to: \"-oQ/tmp/x\")])",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(["run", "-c"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a mail address"));
}

#[test]
fn a_batch_goes_out_when_its_time_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let sendmail = recorder(dir.path());
    let mut child = running(
        dir.path(),
        &format!("Mail(to: \"root\", sendmail: \"{}\", batch: \"1s\")", sendmail.display()),
        Stdio::null(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    for l in failures("192.0.2.30", 5).iter().chain(&failures("192.0.2.31", 5)) {
        writeln!(stdin, "{l}").unwrap();
    }
    stdin.flush().unwrap();
    // Still running, stdin open: the mail goes out a second after the first ban.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while mails(dir.path()).is_empty() && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    let sent = mails(dir.path());
    assert_eq!(sent.len(), 1, "one mail for both bans");
    assert!(sent[0].1.contains("2 bans"), "{}", sent[0].1);
    drop(stdin);
}

/// A sendmail that hangs holds up neither the pipeline nor the other sinks: bans go on being
/// printed while it hangs.
#[test]
fn a_hanging_sendmail_delays_no_other_sink() {
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let hang = program(dir.path(), "sendmail", &format!("touch {}; exec sleep 60", started.display()));
    let mut child = running(
        dir.path(),
        &format!("Mail(to: \"root\", sendmail: \"{}\", batch: \"1s\"), DryRun", hang.display()),
        Stdio::piped(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut next_ban = || {
        let mut l = String::new();
        std::io::BufRead::read_line(&mut out, &mut l).unwrap();
        assert!(l.contains("\"kind\":\"ban\""), "{l}");
    };
    for l in failures("192.0.2.40", 5) {
        writeln!(stdin, "{l}").unwrap();
    }
    stdin.flush().unwrap();
    next_ban();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !started.exists() && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(started.exists(), "the mail batch was never sent");
    // sendmail now hangs; 200 more bans still come out of the other sink.
    for i in 0..200 {
        for l in failures(&format!("198.51.100.{}", i + 1), 5) {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    stdin.flush().unwrap();
    for _ in 0..200 {
        next_ban();
    }
}
