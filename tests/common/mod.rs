//! Shared by the integration tests: prerequisites that fail under CI and skip visibly elsewhere,
//! signals without the `kill` program, children that never outlive a test, and the daemon
//! itself: start `mailpipe run` on a pipeline file, learn its ports from its stderr, read its bans
//! from stdout, stop it with SIGTERM.
// Each test crate uses a part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Upper bound on any wait for the daemon.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Whether this is a CI run (`CI=true`): there a missing prerequisite is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A prerequisite is missing. Under CI the test fails with `reason`; elsewhere it is skipped
/// and says so where `cargo test` shows it (libtest hides what a passing test prints with
/// `eprintln!`, but not a direct write to the stream).
pub fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    assert!(!in_ci(), "{test}: prerequisite missing, and CI=true makes that a failure: {reason}");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Something a test needs from the machine.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// Running as root.
    Root,
    /// A program on PATH or in /usr/sbin, and the Debian package that has it.
    Program(&'static str, &'static str),
    /// A file or directory of `../shared/`, relative to it.
    Shared(&'static str),
    /// Network namespaces with ipset support (implies root, ip and ipset).
    IpsetNetns,
}

/// Whether `program` can be run.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file())
}

/// The first of `needs` this machine lacks, as a reason; `None` when all are there.
pub fn missing(needs: &[Need]) -> Option<String> {
    needs.iter().find_map(|need| match *need {
        // SAFETY: geteuid has no preconditions.
        Need::Root => (unsafe { libc::geteuid() } != 0).then(|| "needs root".to_string()),
        Need::Program(p, pkg) => {
            (!have(p)).then(|| format!("{p} is not installed (Debian package {pkg}; contrib/deps.sh test installs it)"))
        }
        Need::Shared(rel) => {
            let path = shared(rel);
            (!path.exists()).then(|| format!("{} not found", path.display()))
        }
        Need::IpsetNetns => missing(&[Need::Root, Need::Program("ip", "iproute2"), Need::Program("ipset", "ipset")]).or_else(probe_ipset),
    })
}

/// `../shared/<rel>`, beside the checkout.
pub fn shared(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared").join(rel)
}

/// Creates a throwaway namespace and an ipset in it; the reason (with the tools' own stderr)
/// if that fails.
fn probe_ipset() -> Option<String> {
    let ns = Netns::new("probe");
    if let Err(e) = ns.try_create() {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    ns.exec(&["ipset", "create", "probe", "hash:ip", "timeout", "1"])
        .err()
        .map(|e| format!("no ipset in a network namespace: {e}"))
}

/// A name no other test or run uses at the same time: `mp<tag><pid>n<counter>`.
pub fn unique(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("mp{tag}{}n{n}", std::process::id())
}

/// Runs a command; its stderr (or why it could not start) on failure.
pub fn try_run(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", cmd[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs a command that must succeed.
pub fn run(cmd: &[&str]) -> String {
    try_run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// A network namespace, deleted (with what runs in it) when dropped.
pub struct Netns {
    /// Its name.
    pub name: String,
    created: std::cell::Cell<bool>,
}

impl Netns {
    /// A unique name; nothing is created yet.
    pub fn new(tag: &str) -> Netns {
        Netns {
            name: unique(tag),
            created: std::cell::Cell::new(false),
        }
    }

    /// Creates it, with loopback up.
    pub fn try_create(&self) -> Result<(), String> {
        try_run(&["ip", "netns", "add", &self.name])?;
        self.created.set(true);
        try_run(&["ip", "-n", &self.name, "link", "set", "lo", "up"]).map(drop)
    }

    /// Creates it or fails the test.
    pub fn create(tag: &str) -> Netns {
        let ns = Netns::new(tag);
        ns.try_create().unwrap_or_else(|e| panic!("{e}"));
        ns
    }

    /// Runs a command inside.
    pub fn exec(&self, cmd: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        try_run(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.created.get() {
            // Kill what still runs inside, then the namespace; never panic here.
            if let Ok(pids) = try_run(&["ip", "netns", "pids", &self.name]) {
                for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
                    signal(pid, libc::SIGKILL);
                }
            }
            let _ = try_run(&["ip", "netns", "del", &self.name]);
        }
    }
}

/// Sends `sig` to process `pid` (`libc::kill`: minimal images have no `kill` program).
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) with a pid we started and a valid signal number.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// A child process that is killed and reaped when dropped, however the test ends.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A running `mailpipe run`, killed if the test ends without stopping it.
pub struct Mailpipe {
    child: Reaper,
    /// Announced sockets: ("udp" | "tcp" | "unix" | "control" | "metrics", port; 0 for paths).
    pub ports: Vec<(String, u16)>,
    /// Decisions (bans, unbans) as they are printed.
    pub bans: mpsc::Receiver<serde_json::Value>,
    /// stderr lines as they are written.
    pub log: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Mailpipe {
    /// Starts the daemon on `cfg` and waits until it has announced `sockets` sockets.
    pub fn start(cfg: &Path, sockets: usize) -> Mailpipe {
        Self::spawn(cfg, sockets, Stdio::null(), &[]).0
    }

    /// Like `start`, with a pipe to its standard input.
    pub fn start_piped(cfg: &Path, sockets: usize) -> (Mailpipe, std::process::ChildStdin) {
        let (mp, stdin) = Self::spawn(cfg, sockets, Stdio::piped(), &[]);
        (mp, stdin.expect("piped stdin"))
    }

    /// Like `start`, with extra arguments after `run -c FILE`.
    pub fn start_with(cfg: &Path, sockets: usize, args: &[&str]) -> Mailpipe {
        Self::spawn(cfg, sockets, Stdio::null(), args).0
    }

    fn spawn(cfg: &Path, sockets: usize, stdin: Stdio, args: &[&str]) -> (Mailpipe, Option<std::process::ChildStdin>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
            .env("TZ", "UTC")
            .args(["run", "-c"])
            .arg(cfg)
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (port_tx, port_rx) = mpsc::channel();
        let (log_tx, log) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        // Collects stderr until the daemon exits; passes on the sockets as they are announced.
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some((kind, addr)) = line.strip_prefix("mailpipe: listening on ").and_then(|r| r.split_once(' ')) {
                    let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let _ = port_tx.send((kind.to_string(), port));
                }
                let _ = log_tx.send(line.clone());
                all.push_str(&(line + "\n"));
            }
            all
        });
        let input = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let child = Reaper(child);
        let ports = (0..sockets)
            .map(|_| port_rx.recv_timeout(LIMIT).expect("the daemon announces its sockets"))
            .collect();
        let (tx, bans) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                    let _ = tx.send(v);
                }
            }
        });
        (
            Mailpipe {
                child,
                ports,
                bans,
                log,
                stderr: Some(stderr),
            },
            input,
        )
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// SIGKILL: no drain, no flush, as in a crash.
    pub fn kill(mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// The port of the `nth` socket of `kind`.
    pub fn port(&self, kind: &str, nth: usize) -> u16 {
        self.ports.iter().filter(|(k, _)| k == kind).nth(nth).unwrap().1
    }

    /// The next ban, waiting at most `LIMIT`.
    pub fn next_ban(&self) -> serde_json::Value {
        self.bans.recv_timeout(LIMIT).expect("a ban within the time limit")
    }

    /// Waits (at most `LIMIT`) for a stderr line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("the daemon never logged {needle:?}"),
            }
        }
    }

    /// SIGTERM; asserts exit 0; returns everything it wrote on stderr.
    pub fn stop(mut self) -> String {
        signal(self.pid(), libc::SIGTERM);
        let status = self.child.0.wait().unwrap();
        let log = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        assert_eq!(status.code(), Some(0), "{log}");
        log
    }
}

/// A pipeline file in `dir` with mail.ron's jails and these inputs.
pub fn pipeline(dir: &Path, name: &str, inputs: &str) -> std::path::PathBuf {
    pipeline_with(dir, name, inputs, "")
}

/// The same with more top-level fields (`extra` is written after the inputs).
pub fn pipeline_with(dir: &Path, name: &str, inputs: &str, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join(name);
    std::fs::write(
        &cfg,
        format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")],\n inputs: [{inputs}],\n{extra})",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    cfg
}

/// A Postfix SASL failure from `ip`, stamped now (UTC), as a syslog file line.
pub fn sasl_line(ip: &str) -> String {
    let now = chrono::Utc::now().format("%b %e %H:%M:%S");
    format!("{now} mx1 postfix/smtpd[7]: warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6")
}

/// `mailpipe` with the arguments, talking to the control socket `socket`: (success, stdout, stderr).
pub fn cli(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The daemon's active bans (`mailpipe list --json`) through the control socket `socket`.
pub fn listed(socket: &Path) -> Vec<serde_json::Value> {
    let (ok, out, err) = cli(socket, &["list", "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["bans"]
        .as_array()
        .unwrap()
        .clone()
}
