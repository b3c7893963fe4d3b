//! The journal input against a real systemd-journald, started by the test in a mount namespace
//! of its own (its /run and /var/log/journal are private tmpfs: the host's journal, if any, is
//! untouched). Entries are written with systemd-cat; mailpipe runs inside the namespace.
//! Needs root, unshare/nsenter and systemd's journald; fails under CI without them, skips
//! (saying why) elsewhere.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Need, Reaper};

const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// A journald in its own mount namespace; killed (and the namespace gone) on drop.
struct Journald {
    ns: Reaper,
}

impl Journald {
    fn start() -> Option<Journald> {
        let needs = [
            Need::Root,
            Need::Program("unshare", "util-linux"),
            Need::Program("nsenter", "util-linux"),
            Need::Program("systemd-cat", "systemd"),
            Need::Program("journalctl", "systemd"),
        ];
        if let Some(why) = common::missing(&needs) {
            common::skip(&why);
            return None;
        }
        if !Path::new(JOURNALD).exists() {
            common::skip(&format!("{JOURNALD} is missing (apt-get install systemd)"));
            return None;
        }
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal /run/log/journal && \
             {{ [ ! -d /var/log/journal ] || mount -t tmpfs tmpfs /var/log/journal; }} && exec {JOURNALD}"
        );
        let ns = Reaper(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--fork", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let jd = Journald { ns };
        let deadline = Instant::now() + common::LIMIT;
        while !jd.run(&["test", "-S", "/run/systemd/journal/socket"]) {
            assert!(Instant::now() < deadline, "journald never opened its socket");
            std::thread::yield_now();
        }
        Some(jd)
    }

    /// `cmd` inside the namespace (with the target's root directory, so a chroot stays one).
    fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.ns.0.id().to_string(), "-m", "-r", "-w", "--"]).args(cmd);
        c
    }

    fn run(&self, cmd: &[&str]) -> bool {
        self.command(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Writes one entry per line under `ident`, and waits until the journal shows them.
    fn log(&self, ident: &str, lines: &[String]) {
        let before = self.count(ident);
        let mut c = self.command(&["systemd-cat", "-t", ident]).stdin(Stdio::piped()).spawn().unwrap();
        let mut stdin = c.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
        drop(stdin);
        assert!(c.wait().unwrap().success());
        let deadline = Instant::now() + common::LIMIT;
        while self.count(ident) < before + lines.len() {
            assert!(Instant::now() < deadline, "journald never stored the entries");
            std::thread::yield_now();
        }
    }

    fn count(&self, ident: &str) -> usize {
        let out = self
            .command(&["journalctl", "--no-pager", "-q", "-o", "cat", &format!("SYSLOG_IDENTIFIER={ident}")])
            .output()
            .unwrap();
        out.stdout.iter().filter(|&&b| b == b'\n').count()
    }
}

fn failure(ip: &str) -> String {
    format!("warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6")
}

/// mailpipe inside the namespace: its stdout (decisions) line by line, and its control socket.
struct Running {
    child: Reaper,
    bans: std::sync::mpsc::Receiver<String>,
}

fn start(jd: &Journald, cfg: &Path) -> Running {
    let mut child = Reaper(
        jd.command(&[env!("CARGO_BIN_EXE_mailpipe"), "run", "-c", cfg.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let (tx, bans) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    Running { child, bans }
}

/// Lines the running pipeline has processed, once it has processed `n` (bounded wait).
fn wait_lines(socket: &Path, n: u64) -> u64 {
    let deadline = Instant::now() + common::LIMIT;
    loop {
        if socket.exists()
            && let Ok(out) = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
                .args(["status", "--json", "--socket"])
                .arg(socket)
                .output()
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            && let Some(lines) = v["lines"].as_u64()
            && lines >= n
        {
            return lines;
        }
        assert!(Instant::now() < deadline, "mailpipe never processed {n} lines");
        std::thread::yield_now();
    }
}

fn stop(r: Running) -> Vec<String> {
    common::signal(r.child.0.id(), libc::SIGTERM);
    let mut r = r;
    assert!(r.child.0.wait().unwrap().success());
    r.bans.try_iter().collect()
}

#[test]
fn a_restart_neither_loses_nor_recounts_journal_entries() {
    let Some(jd) = Journald::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (socket, state) = (dir.path().join("c.sock"), dir.path().join("state.redb"));
    let cfg = dir.path().join("p.ron");
    std::fs::write(
        &cfg,
        format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")], inputs: [Journal(identifiers: [\"postfix/smtpd\"], lookback: \"1h\")], \
             sink: DryRun, state: \"{}\", control: \"{}\")",
            env!("CARGO_MANIFEST_DIR"),
            state.display(),
            socket.display()
        ),
    )
    .unwrap();
    // Before the first start: three failures (read through the lookback), and another program's
    // entry the identifier match leaves out.
    jd.log("postfix/smtpd", &vec![failure("198.51.100.50"); 3]);
    jd.log("dovecot", &["auth: Info: unrelated".to_string()]);
    let first = start(&jd, &cfg);
    assert_eq!(wait_lines(&socket, 3), 3);
    assert!(stop(first).is_empty(), "3 failures ban nobody");

    // Written while mailpipe is down: read after the restart, and only they (the three before
    // are behind the saved cursor: read again, they would make five and a ban).
    jd.log(
        "postfix/smtpd",
        &[failure("198.51.100.50"), failure("198.51.100.50"), failure("198.51.100.51")],
    );
    let second = start(&jd, &cfg);
    assert_eq!(wait_lines(&socket, 3), 3, "exactly the entries written while it was down");
    // The counting goes on from there: three more for .50 (2 + 3 = maxretry 5) ban it.
    jd.log("postfix/smtpd", &vec![failure("198.51.100.50"); 3]);
    let ban = second.bans.recv_timeout(common::LIMIT).expect("a ban");
    assert!(ban.contains("\"ip\":\"198.51.100.50\""), "{ban}");
    assert_eq!(wait_lines(&socket, 6), 6);
    stop(second);
}

#[test]
fn a_journalctl_that_dies_is_started_again_after_the_last_entry() {
    let Some(jd) = Journald::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("c.sock");
    let cfg = dir.path().join("p.ron");
    std::fs::write(
        &cfg,
        format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")], inputs: [Journal(identifiers: [\"postfix/smtpd\"])], control: \"{}\")",
            env!("CARGO_MANIFEST_DIR"),
            socket.display()
        ),
    )
    .unwrap();
    let running = start(&jd, &cfg);
    jd.log("postfix/smtpd", &vec![failure("198.51.100.60"); 2]);
    assert_eq!(wait_lines(&socket, 2), 2);
    // Kill mailpipe's journalctl (a child of it, in the namespace).
    let pid = running.child.0.id().to_string();
    assert!(jd.run(&["pkill", "-KILL", "-P", &pid, "journalctl"]));
    jd.log("postfix/smtpd", &vec![failure("198.51.100.60"); 3]);
    let ban = running
        .bans
        .recv_timeout(common::LIMIT)
        .expect("a ban after the restart of journalctl");
    assert!(ban.contains("198.51.100.60"), "{ban}");
    assert_eq!(wait_lines(&socket, 5), 5, "nothing read twice");
    stop(running);
}
