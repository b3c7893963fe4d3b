//! Shared by the integration tests that run the daemon: start `mailpipe run` on a pipeline file,
//! learn its ports from its stderr, read its bans from stdout, stop it with SIGTERM.
// Each test crate uses a part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Upper bound on any wait for the daemon.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A running `mailpipe run`.
pub struct Mailpipe {
    child: Child,
    /// Announced sockets: ("udp" | "tcp" | "unix", port; 0 for unix).
    pub ports: Vec<(String, u16)>,
    /// Ban decisions as they are printed.
    pub bans: mpsc::Receiver<serde_json::Value>,
    stderr: std::thread::JoinHandle<String>,
}

impl Mailpipe {
    /// Starts the daemon on `cfg` and waits until it has announced `sockets` sockets.
    pub fn start(cfg: &Path, sockets: usize) -> Mailpipe {
        Self::spawn(cfg, sockets, Stdio::null()).0
    }

    /// Like `start`, with a pipe to its standard input.
    pub fn start_piped(cfg: &Path, sockets: usize) -> (Mailpipe, std::process::ChildStdin) {
        let (mp, stdin) = Self::spawn(cfg, sockets, Stdio::piped());
        (mp, stdin.expect("piped stdin"))
    }

    fn spawn(cfg: &Path, sockets: usize, stdin: Stdio) -> (Mailpipe, Option<std::process::ChildStdin>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailpipe"))
            .env("TZ", "UTC")
            .args(["run", "-c"])
            .arg(cfg)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (port_tx, port_rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        // Collects stderr until the daemon exits; passes on the sockets as they are announced.
        let stderr = std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some((kind, addr)) = line.strip_prefix("mailpipe: listening on ").and_then(|r| r.split_once(' ')) {
                    let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let _ = port_tx.send((kind.to_string(), port));
                }
                log.push_str(&(line + "\n"));
            }
            log
        });
        let input = child.stdin.take();
        let ports = (0..sockets)
            .map(|_| port_rx.recv_timeout(LIMIT).expect("the daemon announces its sockets"))
            .collect();
        let (tx, bans) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str::<serde_json::Value>(&l).unwrap());
            }
        });
        (
            Mailpipe {
                child,
                ports,
                bans,
                stderr,
            },
            input,
        )
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no drain, no flush, as in a crash.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The port of the `nth` socket of `kind`.
    pub fn port(&self, kind: &str, nth: usize) -> u16 {
        self.ports.iter().filter(|(k, _)| k == kind).nth(nth).unwrap().1
    }

    /// The next ban, waiting at most `LIMIT`.
    pub fn next_ban(&self) -> serde_json::Value {
        self.bans.recv_timeout(LIMIT).expect("a ban within the time limit")
    }

    /// SIGTERM; asserts exit 0; returns everything it wrote on stderr.
    pub fn stop(mut self) -> String {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert_eq!(self.child.wait().unwrap().code(), Some(0));
        self.stderr.join().unwrap()
    }
}

/// A pipeline file in `dir` with mail.ron's jails and these inputs.
pub fn pipeline(dir: &Path, name: &str, inputs: &str) -> std::path::PathBuf {
    let cfg = dir.join(name);
    std::fs::write(
        &cfg,
        format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")],\n inputs: [{inputs}])",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    cfg
}
