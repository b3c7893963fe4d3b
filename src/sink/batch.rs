//! Sinks that hand batches of events to something outside: `Webhook` POSTs them as JSON,
//! `Command` runs a program with them on its standard input. Both gather bans and unbans for
//! `batch`, deliver in order, and keep what failed to retry with backoff, on their own thread:
//! a slow or dead endpoint delays no other sink and never the pipeline.

use std::collections::VecDeque;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Batches waiting for delivery at most; beyond, the oldest is dropped (and counted).
const MAX_WAITING: usize = 1000;
/// Events per batch at most (a flood becomes several batches).
const MAX_EVENTS: usize = 1000;

/// Where batches go.
pub enum Target {
    /// POST to a URL.
    Webhook {
        /// The endpoint.
        url: String,
        /// Extra headers (values read from their files already).
        headers: Vec<(String, String)>,
        /// The HTTP client (rustls, `timeout` over the whole exchange).
        agent: ureq::Agent,
    },
    /// Run a program, the batch on its standard input.
    Command {
        /// The program (run directly, never through a shell).
        program: String,
        /// Its fixed arguments: no event text ever goes there.
        args: Vec<String>,
        /// Instances running at once at most.
        max_running: usize,
        /// How long one may run before it is killed.
        timeout: Duration,
        /// The running ones: the child, when it started, its batch.
        running: Vec<(Child, Instant, String)>,
    },
}

impl std::fmt::Debug for Target {
    /// Never the headers: they hold the secrets read from their files.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Webhook { url, .. } => f.debug_struct("Webhook").field("url", url).finish_non_exhaustive(),
            Target::Command { program, args, .. } => f
                .debug_struct("Command")
                .field("program", program)
                .field("args", args)
                .finish_non_exhaustive(),
        }
    }
}

/// A batching sink: what waits, and where it goes.
#[derive(Debug)]
pub struct Batcher {
    target: Target,
    batch: Duration,
    host: String,
    /// Events of the batch being gathered, and when it is due.
    gathering: Vec<Value>,
    due: Option<Instant>,
    /// Bodies ready to deliver, oldest first, and when the first may be tried.
    ready: VecDeque<String>,
    retry_at: Option<Instant>,
    failures: u32,
    /// When to look at the running programs again.
    poll_at: Option<Instant>,
    /// Batches dropped because too many waited.
    pub dropped: u64,
}

/// What one delivery round did.
#[derive(Debug, Default)]
pub struct Round {
    /// Batches delivered.
    pub delivered: usize,
    /// Failures (each batch is kept and retried).
    pub errors: Vec<String>,
}

impl Batcher {
    /// A batcher for `target`, gathering for `batch`.
    pub fn new(target: Target, batch: Duration) -> Batcher {
        Batcher {
            target,
            batch,
            host: crate::primitives::host_name(),
            gathering: Vec::new(),
            due: None,
            ready: VecDeque::new(),
            retry_at: None,
            failures: 0,
            poll_at: None,
            dropped: 0,
        }
    }

    /// Adds an event (a decision's or an unban's JSON) to the batch being gathered.
    pub fn push(&mut self, event: Value) {
        self.gathering.push(event);
        self.due.get_or_insert_with(|| Instant::now() + self.batch);
        if self.gathering.len() >= MAX_EVENTS {
            self.seal();
        }
    }

    /// When the thread must act: a batch to send, a retry, a running program to check.
    pub fn due(&self) -> Option<Instant> {
        let retry = (!self.ready.is_empty()).then(|| self.retry_at.unwrap_or_else(Instant::now));
        [self.due, retry, self.poll_at].into_iter().flatten().min()
    }

    /// Delivers what is due (`all`: everything now, at shutdown).
    pub fn run(&mut self, all: bool) -> Round {
        let now = Instant::now();
        if self.due.is_some_and(|d| all || d <= now) {
            self.seal();
        }
        let mut round = Round::default();
        self.reap(&mut round, all);
        while let Some(body) = self.ready.front().cloned() {
            if !all && self.retry_at.is_some_and(|t| t > now) {
                break;
            }
            match self.start(&body) {
                // A webhook answered; a program started (its end is reaped later).
                Ok(true) => {
                    self.ready.pop_front();
                    if matches!(self.target, Target::Webhook { .. }) {
                        round.delivered += 1;
                        self.failures = 0;
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    round.errors.push(e);
                    self.backoff();
                    break;
                }
            }
        }
        if all {
            self.reap(&mut round, true);
        }
        // Programs still running are looked at again soon (their end, or their time limit).
        self.poll_at = match &self.target {
            Target::Command { running, .. } if !running.is_empty() => Some(Instant::now() + Duration::from_millis(20)),
            _ => None,
        };
        round
    }

    /// Closes the batch being gathered into a body ready to deliver.
    fn seal(&mut self) {
        self.due = None;
        if self.gathering.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.gathering);
        let body = json!({"host": self.host, "events": events}).to_string();
        if self.ready.len() >= MAX_WAITING {
            self.ready.pop_front();
            self.dropped += 1;
        }
        self.ready.push_back(body);
    }

    fn backoff(&mut self) {
        let wait = Duration::from_secs(1 << self.failures.min(8)).min(Duration::from_secs(300));
        self.failures += 1;
        self.retry_at = Some(Instant::now() + wait);
    }

    /// Hands `body` on: true when it went (a webhook's 2xx, a program started), false when a
    /// program must wait for a free slot.
    fn start(&mut self, body: &str) -> Result<bool, String> {
        match &mut self.target {
            Target::Webhook { url, headers, agent } => {
                let mut req = agent.post(url.as_str()).header("Content-Type", "application/json");
                for (k, v) in headers.iter() {
                    req = req.header(k.as_str(), v.as_str());
                }
                let resp = req.send(body.as_bytes()).map_err(|e| format!("POST {url}: {e}"))?;
                let status = resp.status();
                if status.is_success() {
                    Ok(true)
                } else {
                    Err(format!("POST {url}: HTTP {status}"))
                }
            }
            Target::Command {
                program,
                args,
                max_running,
                running,
                ..
            } => {
                if running.len() >= *max_running {
                    return Ok(false);
                }
                let mut child = Command::new(program.as_str())
                    .args(args.iter())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("{program}: cannot run it: {e}"))?;
                if let Some(mut stdin) = child.stdin.take() {
                    let bytes = body.as_bytes().to_vec();
                    // A program that reads nothing is judged by its exit status.
                    std::thread::spawn(move || {
                        let _ = std::io::Write::write_all(&mut stdin, &bytes);
                    });
                }
                running.push((child, Instant::now(), body.to_string()));
                Ok(true)
            }
        }
    }

    /// Collects the programs that ended (or ran out of time): a failure puts its batch back
    /// first in line. `wait`: wait for every one (each within its time limit).
    fn reap(&mut self, round: &mut Round, wait: bool) {
        let Target::Command {
            program, running, timeout, ..
        } = &mut self.target
        else {
            return;
        };
        let mut failed = Vec::new();
        let mut i = 0;
        while i < running.len() {
            let (child, started, _) = &mut running[i];
            let status = if wait {
                use wait_timeout::ChildExt;
                child.wait_timeout(timeout.saturating_sub(started.elapsed())).ok().flatten()
            } else {
                child.try_wait().ok().flatten()
            };
            let outcome = match status {
                Some(s) if s.success() => Ok(()),
                Some(s) => Err(format!("{program}: {s}{}", first_line(child))),
                None if started.elapsed() >= *timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Err(format!("{program}: no answer within {} s, killed", timeout.as_secs()))
                }
                None => {
                    i += 1;
                    continue;
                }
            };
            let (_, _, body) = running.swap_remove(i);
            match outcome {
                Ok(()) => {
                    round.delivered += 1;
                    self.failures = 0;
                }
                Err(e) => {
                    round.errors.push(e);
                    failed.push(body);
                }
            }
        }
        if !failed.is_empty() {
            for body in failed.into_iter().rev() {
                self.ready.push_front(body);
            }
            self.backoff();
        }
    }
}

/// `: ` and the first line a failed program wrote on stderr, if any.
fn first_line(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(e) = child.stderr.as_mut() {
        let _ = std::io::Read::read_to_string(&mut std::io::Read::take(e, 4096), &mut err);
    }
    err.lines().next().map(|l| format!(": {l}")).unwrap_or_default()
}

/// Header values as written: `@/path` is read from that file (its first line), so a token
/// need not sit in the pipeline file.
pub fn read_headers(headers: &std::collections::BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    headers
        .iter()
        .map(|(k, v)| {
            let value = match v.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("header {k}: {path}: {e}"))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
                None => v.clone(),
            };
            Ok((k.clone(), value))
        })
        .collect()
}

/// The HTTP client of a webhook: rustls, `timeout` over the whole exchange, any status returned
/// (a 5xx is judged by the caller).
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .new_agent()
}
