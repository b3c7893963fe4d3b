//! The fleet: mail servers that share their bans and failures through Redis (or Valkey) streams.
//!
//! Two streams under `prefix`: `{prefix}:bans` (bans and unbans) and `{prefix}:failures`. Every
//! node appends its own events (XADD, an entry's field `e` holding one JSON event per line, the
//! stream trimmed to `retain` by ID, which is a time) and
//! reads everyone's with XREAD from the last ID it applied, which the state file keeps. No
//! consumer groups and no central mailpipe: reading again from a stored ID is harmless, so a
//! node that was down catches up, and an event is never applied twice (a ban already held is
//! not applied again).
//!
//! ```text
//! pipeline thread ──Shared──► writer task ──XADD──► Redis ──XREAD──► reader task ──► queue
//!        ▲                        │ unreachable: outbox (state file), own failures counted here │
//!        └────────────────────────┴──────────────── Msg::Fleet ─────────────────────────────────┘
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::policy::{Decision, MAX_BAN, Reason, Shared, SharedFailure};
use crate::ports::Ports;
use crate::primitives::Dur;
use crate::queue::{FleetIn, Msg, Queue, Received};
use crate::state::FLEET_CURSORS;

/// `fleet:` in a pipeline file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `redis://[user@]host:port/db`, or `rediss://` for TLS; never with a password in it.
    pub url: String,
    /// A file holding the password (its first line), readable by root only.
    #[serde(default)]
    pub password_file: Option<String>,
    /// This node's name in the fleet (default: the host name); unique per node.
    #[serde(default)]
    pub node: Option<String>,
    /// What this node shares (and takes from the others).
    #[serde(default = "default_share")]
    pub share: Vec<Share>,
    /// Start of the stream names: `{prefix}:bans`, `{prefix}:failures`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How much stream history Redis keeps.
    #[serde(default = "default_retain")]
    pub retain: Dur,
}

fn default_share() -> Vec<Share> {
    vec![Share::Bans]
}

fn default_prefix() -> String {
    "mailpipe".into()
}

fn default_retain() -> Dur {
    Dur(86400)
}

/// What a fleet shares.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum Share {
    /// Decisions, manual bans and unbans.
    Bans,
    /// Counted failures: every node counts the fleet's toward `maxretry`.
    Failures,
}

/// A fleet setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("fleet: {0}")]
pub struct FleetError(String);

/// How many unpublished events wait (in memory and in the state file) while Redis is
/// unreachable; beyond, the oldest go, counted.
const MAX_OUTBOX: usize = 100_000;
/// Entries one XREAD takes per stream.
const READ_BATCH: usize = 1000;
/// An event longer than this is not one of ours.
const MAX_EVENT: usize = 4096;
/// Failures a new node reads back when it has no cursor yet.
const FAILURES_BACKLOG_MS: u64 = 3600 * 1000;

/// The link's counters, for `status` and metrics.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Whether events can be published now.
    pub connected: AtomicBool,
    /// Events read from the other nodes.
    pub events_in: AtomicU64,
    /// Events published.
    pub events_out: AtomicU64,
    /// Events that were not ours to read: bad JSON, bad fields.
    pub malformed: AtomicU64,
    /// Events of another version or kind, or for a jail this node lacks.
    pub foreign: AtomicU64,
    /// Events waiting to be published.
    pub waiting: AtomicU64,
    /// Events dropped because too many waited.
    pub dropped: AtomicU64,
    /// Milliseconds between the last event read being published and read.
    pub lag_ms: AtomicU64,
    /// Connection attempts that failed, and commands that failed.
    pub errors: AtomicU64,
    /// The last error, while the link is down.
    pub last_error: Mutex<Option<String>>,
}

impl FleetStats {
    /// The counters as JSON.
    pub fn summary(&self) -> Value {
        json!({
            "connected": self.connected.load(Relaxed),
            "events_in": self.events_in.load(Relaxed),
            "events_out": self.events_out.load(Relaxed),
            "malformed": self.malformed.load(Relaxed),
            "foreign": self.foreign.load(Relaxed),
            "waiting": self.waiting.load(Relaxed),
            "dropped": self.dropped.load(Relaxed),
            "lag_ms": self.lag_ms.load(Relaxed),
            "errors": self.errors.load(Relaxed),
            "last_error": *self.last_error.lock().expect("not poisoned"),
        })
    }

    fn failed(&self, what: &str, e: &redis::RedisError) {
        self.errors.fetch_add(1, Relaxed);
        let msg = format!("{what}: {e}");
        let mut last = self.last_error.lock().expect("not poisoned");
        if last.as_deref() != Some(msg.as_str()) {
            tracing::info!("fleet: {msg}; retrying (detection and banning go on here)");
        }
        *last = Some(msg);
    }
}

/// A fleet ready to join: its settings checked and its password read.
pub struct Fleet {
    info: redis::ConnectionInfo,
    /// The URL as shown: it never holds the password.
    url: String,
    node: Arc<str>,
    keys: [String; 2],
    share_bans: bool,
    share_failures: bool,
    retain_ms: u64,
    stats: Arc<FleetStats>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the connection info: it holds the password.
        f.debug_struct("Fleet").field("url", &self.url).field("node", &self.node).finish()
    }
}

/// A name a node or prefix may have: it ends up in keys and logs.
fn plain_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
}

impl Fleet {
    /// Checks `cfg` and reads the password file.
    pub fn new(cfg: &FleetConfig) -> Result<Fleet, FleetError> {
        let err = |s: String| FleetError(s);
        let info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| err(format!("url {:?}: {e}", cfg.url)))?;
        if info.redis_settings().password().is_some() {
            return Err(err(
                "the url holds a password: put it in password_file instead (a url shows in ps, logs and status)".into(),
            ));
        }
        let info = match &cfg.password_file {
            None => info,
            Some(path) => {
                let password = read_password(path).map_err(err)?;
                let settings = info.redis_settings().clone().set_password(password);
                info.set_redis_settings(settings)
            }
        };
        let node = match &cfg.node {
            Some(n) => n.clone(),
            None => crate::primitives::host_name(),
        };
        if !plain_name(&node) {
            return Err(err(format!("node {node:?}: 1 to 64 letters, digits and . _ - :")));
        }
        if !plain_name(&cfg.prefix) {
            return Err(err(format!("prefix {:?}: 1 to 64 letters, digits and . _ - :", cfg.prefix)));
        }
        if cfg.retain.secs() < 60 {
            return Err(err(format!("retain {} s: at least a minute", cfg.retain.secs())));
        }
        if cfg.share.is_empty() {
            return Err(err("share: name Bans, Failures or both".into()));
        }
        Ok(Fleet {
            info,
            url: cfg.url.clone(),
            node: node.into(),
            keys: [format!("{}:bans", cfg.prefix), format!("{}:failures", cfg.prefix)],
            share_bans: cfg.share.contains(&Share::Bans),
            share_failures: cfg.share.contains(&Share::Failures),
            retain_ms: cfg.retain.secs().saturating_mul(1000),
            stats: Arc::default(),
        })
    }

    /// The link's counters.
    pub fn stats(&self) -> Arc<FleetStats> {
        self.stats.clone()
    }

    /// Whether failures are shared (the pipeline then counts them through the fleet).
    pub fn shares_failures(&self) -> bool {
        self.share_failures
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Starts the writer and reader tasks on the current runtime: `outgoing` carries this
    /// node's events, `cursors` and `outbox` are what the state file kept. The writer ends once
    /// `outgoing` is closed, with the events Redis has not taken (for the state file).
    pub fn spawn(
        self,
        queue: Queue,
        outgoing: UnboundedReceiver<Shared>,
        cursors: [Option<String>; 2],
        outbox: Vec<String>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        tracing::info!(
            "fleet {} as node {:?}: sharing{}{}",
            self.url,
            self.node,
            if self.share_bans { " bans" } else { "" },
            if self.share_failures { " failures" } else { "" }
        );
        let fleet = Arc::new(self);
        tokio::spawn(read(fleet.clone(), queue.clone(), cursors, stop.clone()));
        tokio::spawn(write(fleet, queue, outgoing, outbox.into(), stop))
    }

    async fn connect(&self, response: Duration) -> redis::RedisResult<MultiplexedConnection> {
        let client = redis::Client::open(self.info.clone())?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(response));
        client.get_multiplexed_async_connection_with_config(&cfg).await
    }

    /// One event as it goes on the wire; `None` for what this fleet does not share.
    fn encode(&self, e: &Shared) -> Option<(usize, String)> {
        let (stream, wire) = match e {
            Shared::Ban(d) if self.share_bans => (0, Wire::ban(&self.node, d)),
            Shared::Unban(net) if self.share_bans => (0, Wire::new(&self.node, "unban", *net)),
            Shared::Failure(f) if self.share_failures => (1, Wire::failure(&self.node, f)),
            _ => return None,
        };
        Some((stream, serde_json::to_string(&wire).expect("plain fields")))
    }
}

/// The first line of `path`, which must be readable by its owner only.
fn read_password(path: &str) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("password_file {path}: {e}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "password_file {path}: readable by others (mode {:o}): chmod 600 it",
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("password_file {path}: {e}"))?;
    let line = text.lines().next().unwrap_or("").trim_end();
    if line.is_empty() {
        return Err(format!("password_file {path}: empty"));
    }
    Ok(line.to_string())
}

/// An event on the wire: the `e` field of a stream entry, as JSON. Readers ignore fields they
/// do not know, so later versions may add some; `v` changes only when meanings do.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    v: u32,
    node: String,
    /// `ban`, `unban` or `failure`.
    kind: String,
    net: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offence: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ban_for: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ports: Option<Vec<(u16, u16)>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    counted: bool,
}

/// Why an event is not applied.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Malformed,
    Foreign,
}

impl Wire {
    fn new(node: &str, kind: &str, net: IpNet) -> Wire {
        Wire {
            v: 1,
            node: node.into(),
            kind: kind.into(),
            net: net.to_string(),
            jail: None,
            reason: None,
            offence: None,
            failures: None,
            time: None,
            since: None,
            ban_for: None,
            ports: None,
            counted: false,
        }
    }

    fn ban(node: &str, d: &Decision) -> Wire {
        Wire {
            jail: Some(d.jail.to_string()),
            reason: Some(d.reason.name().into()),
            offence: Some(d.offence),
            failures: Some(d.failures),
            time: Some(d.time),
            since: Some(d.since),
            ban_for: Some(d.ban_for),
            ports: Some(d.ports.ranges().to_vec()),
            ..Wire::new(node, "ban", d.net)
        }
    }

    fn failure(node: &str, f: &SharedFailure) -> Wire {
        Wire {
            jail: Some(f.jail.to_string()),
            time: Some(f.time),
            counted: f.counted,
            ..Wire::new(node, "failure", f.net)
        }
    }

    /// Reads and checks one entry's `e`: every field a node could have got wrong or a stranger
    /// could have written.
    fn decode(text: &[u8], me: &str) -> Result<(bool, Shared), Refused> {
        if text.len() > MAX_EVENT {
            return Err(Refused::Malformed);
        }
        let w: Wire = serde_json::from_slice(text).map_err(|_| Refused::Malformed)?;
        if w.v != 1 {
            return Err(Refused::Foreign);
        }
        if !plain_name(&w.node) {
            return Err(Refused::Malformed);
        }
        let net: IpNet = w.net.parse().map_err(|_| Refused::Malformed)?;
        // No fleet event may ban a whole address family's worth at once.
        let widest = if net.addr().is_ipv4() { 8 } else { 16 };
        if net.prefix_len() < widest || net != net.trunc() {
            return Err(Refused::Malformed);
        }
        let jail = || -> Result<Arc<str>, Refused> {
            let j = w.jail.as_deref().ok_or(Refused::Malformed)?;
            if !plain_name(j) {
                return Err(Refused::Malformed);
            }
            Ok(Arc::from(j))
        };
        let own = w.node == me;
        let event = match w.kind.as_str() {
            "unban" => Shared::Unban(net),
            "failure" => Shared::Failure(SharedFailure {
                jail: jail()?,
                net,
                time: w.time.ok_or(Refused::Malformed)?,
                counted: w.counted,
            }),
            "ban" => {
                let ban_for = w.ban_for.filter(|b| (1..=MAX_BAN).contains(b)).ok_or(Refused::Malformed)?;
                let ports = w.ports.and_then(Ports::from_pairs).ok_or(Refused::Malformed)?;
                Reason::from_name(w.reason.as_deref().unwrap_or("")).ok_or(Refused::Malformed)?;
                Shared::Ban(Decision {
                    net,
                    jail: jail()?,
                    failures: w.failures.unwrap_or(0),
                    ban_for,
                    offence: w.offence.unwrap_or(1).max(1),
                    time: w.time.ok_or(Refused::Malformed)?,
                    since: w.since.ok_or(Refused::Malformed)?,
                    reason: Reason::Fleet,
                    narrowed_from: None,
                    ports,
                    evidence: Arc::default(),
                    restored: false,
                    node: Some(Arc::from(w.node.as_str())),
                })
            }
            _ => return Err(Refused::Foreign),
        };
        Ok((own, event))
    }
}

/// Backoff between connection attempts: 0.1 s doubling to 5 s.
fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(Duration::from_secs(5))
}

/// Publishes this node's events; while Redis is unreachable they wait in the outbox (and the
/// state file), and this node's failures are counted here at once. Ends when the pipeline is
/// gone (every sender dropped), with the events still waiting, for the state file.
async fn write(
    fleet: Arc<Fleet>,
    queue: Queue,
    mut rx: UnboundedReceiver<Shared>,
    outbox: VecDeque<String>,
    stop: CancellationToken,
) -> Vec<String> {
    let mut w = Outbox {
        stored: !outbox.is_empty(),
        events: outbox,
        fleet,
        queue,
        told: std::time::Instant::now(),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        // Shutting down, no new connection: what is left waits in the state file.
        let conn = tokio::select! {
            _ = stop.cancelled() => None,
            c = w.fleet.connect(Duration::from_secs(5)) => Some(c),
        };
        let mut conn = match conn {
            Some(Ok(c)) => c,
            failed => {
                if let Some(Err(e)) = failed {
                    w.fleet.stats.failed("connect", &e);
                }
                let wait = tokio::time::sleep(backoff);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait, if !stop.is_cancelled() => break,
                        e = rx.recv() => match e {
                            Some(e) => w.park(vec![e]),
                            None => return w.events.into(),
                        },
                    }
                }
                w.tell(true);
                backoff = next_backoff(backoff);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // What waited goes first, in order.
        while !w.events.is_empty() {
            let batch: Vec<String> = w.events.iter().take(READ_BATCH).cloned().collect();
            if let Err(e) = publish(&w.fleet, &mut conn, batch.iter().map(|s| stream_of(s))).await {
                w.fleet.stats.failed("publish", &e);
                break;
            }
            w.events.drain(..batch.len());
            w.fleet.stats.waiting.store(w.events.len() as u64, Relaxed);
        }
        if !w.events.is_empty() {
            continue;
        }
        w.tell(true);
        *w.fleet.stats.last_error.lock().expect("not poisoned") = None;
        w.fleet.stats.connected.store(true, Relaxed);
        let _ = w.queue.tx.send(Msg::Fleet(FleetIn::Link(true)));
        tracing::info!("fleet: connected to {}", w.fleet.url);
        // Connected, this goes on through a shutdown until the pipeline's last event is out.
        loop {
            let Some(first) = rx.recv().await else {
                return Vec::new();
            };
            let mut batch = vec![first];
            while batch.len() < READ_BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            let encoded: Vec<(usize, String)> = batch.iter().filter_map(|e| w.fleet.encode(e)).collect();
            if let Err(e) = publish(&w.fleet, &mut conn, encoded.iter().map(|(s, t)| (*s, t.as_str()))).await {
                w.fleet.stats.failed("publish", &e);
                w.fleet.stats.connected.store(false, Relaxed);
                let _ = w.queue.tx.send(Msg::Fleet(FleetIn::Link(false)));
                w.park(batch);
                w.tell(true);
                break;
            }
        }
    }
}

/// The events waiting for Redis, oldest first: `b` or `f` (the stream) and the event's text.
struct Outbox {
    events: VecDeque<String>,
    fleet: Arc<Fleet>,
    queue: Queue,
    /// Whether the state file holds some (and must be told when they are gone).
    stored: bool,
    /// When the state file was last told.
    told: std::time::Instant,
}

impl Outbox {
    /// Keeps events that could not be published; this node's failures the pipeline has not
    /// counted yet go back to it to be counted now (and wait as counted).
    fn park(&mut self, events: Vec<Shared>) {
        let mut here = Vec::new();
        for e in events {
            let e = match e {
                Shared::Failure(mut f) if !f.counted => {
                    f.counted = true;
                    here.push(f.clone());
                    Shared::Failure(f)
                }
                e => e,
            };
            let Some((stream, text)) = self.fleet.encode(&e) else { continue };
            if self.events.len() >= MAX_OUTBOX {
                self.events.pop_front();
                self.fleet.stats.dropped.fetch_add(1, Relaxed);
            }
            self.events.push_back(format!("{}{text}", ["b", "f"][stream]));
        }
        self.fleet.stats.waiting.store(self.events.len() as u64, Relaxed);
        if !here.is_empty() {
            let _ = self.queue.tx.send(Msg::Fleet(FleetIn::CountHere(here)));
        }
        self.tell(false);
    }

    /// Hands the state file what waits: at most once a second unless `now` (a kill -9 loses at
    /// most that second), and once more when nothing waits any longer.
    fn tell(&mut self, now: bool) {
        if !(now || self.told.elapsed() >= Duration::from_secs(1)) || (self.events.is_empty() && !self.stored) {
            return;
        }
        let _ = self
            .queue
            .tx
            .send(Msg::Fleet(FleetIn::Outbox(self.events.iter().cloned().collect())));
        self.stored = !self.events.is_empty();
        self.told = std::time::Instant::now();
    }
}

/// An outbox entry's stream and text.
fn stream_of(entry: &str) -> (usize, &str) {
    match entry.split_at_checked(1) {
        Some(("f", text)) => (1, text),
        Some((_, text)) => (0, text),
        None => (0, entry),
    }
}

/// Appends events to their streams in one round trip, trimming what is older than `retain`.
/// A run of events for the same stream is one entry, one event per line: a flood of failures
/// costs Redis one XADD per batch, not one per failure.
async fn publish<'a>(
    fleet: &Fleet,
    conn: &mut MultiplexedConnection,
    events: impl Iterator<Item = (usize, &'a str)>,
) -> redis::RedisResult<()> {
    let oldest = now_ms().saturating_sub(fleet.retain_ms);
    let mut entries: Vec<(usize, String)> = Vec::new();
    let mut n = 0;
    for (stream, text) in events {
        match entries.last_mut() {
            Some((s, entry)) if *s == stream => {
                entry.push('\n');
                entry.push_str(text);
            }
            _ => entries.push((stream, text.to_string())),
        }
        n += 1;
    }
    if n == 0 {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (stream, entry) in &entries {
        pipe.cmd("XADD")
            .arg(&fleet.keys[*stream])
            .arg("MINID")
            .arg("~")
            .arg(oldest)
            .arg("*")
            .arg("e")
            .arg(entry)
            .ignore();
    }
    pipe.query_async::<()>(conn).await?;
    fleet.stats.events_out.fetch_add(n, Relaxed);
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The milliseconds part of a stream ID.
fn id_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// Reads the fleet's streams from where this node stands and queues the events for the
/// pipeline, which stores the new position once it has applied them.
async fn read(fleet: Arc<Fleet>, queue: Queue, cursors: [Option<String>; 2], stop: CancellationToken) {
    let wanted = [fleet.share_bans, fleet.share_failures];
    // A new node takes the bans still retained, and the last hour's failures.
    let start = [String::from("0"), format!("{}", now_ms().saturating_sub(FAILURES_BACKLOG_MS))];
    let mut at: Vec<(usize, String)> = (0..2)
        .filter(|&s| wanted[s])
        .map(|s| (s, cursors[s].clone().unwrap_or_else(|| start[s].clone())))
        .collect();
    let mut backoff = Duration::from_millis(100);
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = fleet.connect(Duration::from_secs(10)) => c,
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(_) => {
                // The writer reports connection errors; this one only waits.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = next_backoff(backoff);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(READ_BATCH).arg("BLOCK").arg(2000).arg("STREAMS");
            for (s, _) in &at {
                cmd.arg(&fleet.keys[*s]);
            }
            for (_, id) in &at {
                cmd.arg(id);
            }
            let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> = tokio::select! {
                _ = stop.cancelled() => return,
                r = cmd.query_async(&mut conn) => r,
            };
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    fleet.stats.failed("read", &e);
                    break;
                }
            };
            for key in reply.into_iter().flat_map(|r| r.keys) {
                let Some(slot) = at.iter().position(|(s, _)| fleet.keys[*s] == key.key) else {
                    continue;
                };
                let Some(last) = key.ids.last() else { continue };
                let last = last.id.clone();
                let events = received(&fleet, key.ids);
                if let Some(ms) = id_ms(&last) {
                    fleet.stats.lag_ms.store(now_ms().saturating_sub(ms), Relaxed);
                }
                // Bounded like any input: wait for room in the pipeline's queue.
                let lease = queue.budget.take(events.len() * 256).await;
                if queue
                    .tx
                    .send(Msg::Fleet(FleetIn::Events(FLEET_CURSORS[at[slot].0], events)))
                    .is_err()
                {
                    return;
                }
                drop(lease);
                at[slot].1 = last;
            }
        }
    }
}

/// The entries of one stream as events; what is not an event of this fleet is counted.
fn received(fleet: &Fleet, ids: Vec<redis::streams::StreamId>) -> Vec<Received> {
    let mut out = Vec::with_capacity(ids.len());
    for entry in ids {
        let Some(redis::Value::BulkString(text)) = entry.map.get("e") else {
            fleet.stats.malformed.fetch_add(1, Relaxed);
            continue;
        };
        for line in text.split(|&b| b == b'\n').take(READ_BATCH) {
            match Wire::decode(line, &fleet.node) {
                Ok((own, event)) => {
                    if !own {
                        fleet.stats.events_in.fetch_add(1, Relaxed);
                    }
                    out.push(Received {
                        id: entry.id.clone(),
                        own,
                        event,
                    });
                }
                Err(Refused::Malformed) => {
                    fleet.stats.malformed.fetch_add(1, Relaxed);
                }
                Err(Refused::Foreign) => {
                    fleet.stats.foreign.fetch_add(1, Relaxed);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision() -> Decision {
        Decision {
            net: "198.51.100.7/32".parse().unwrap(),
            jail: "postfix-sasl".into(),
            failures: 5,
            ban_for: 3600,
            offence: 2,
            time: 1_700_000_000,
            since: 1_700_000_001,
            reason: Reason::Threshold,
            narrowed_from: None,
            ports: Ports::mail(),
            evidence: Arc::default(),
            restored: false,
            node: None,
        }
    }

    #[test]
    fn a_ban_travels_and_arrives_as_the_fleets() {
        let text = serde_json::to_string(&Wire::ban("mx1", &decision())).unwrap();
        let (own, e) = Wire::decode(text.as_bytes(), "mx2").unwrap();
        assert!(!own);
        let Shared::Ban(d) = e else { panic!("{e:?}") };
        assert_eq!(d.reason, Reason::Fleet);
        assert_eq!(d.node.as_deref(), Some("mx1"));
        assert_eq!((d.net, d.ports, d.offence, d.ban_for, d.since), {
            let o = decision();
            (o.net, o.ports, o.offence, o.ban_for, o.since)
        });
        assert!(Wire::decode(text.as_bytes(), "mx1").unwrap().0, "own");
    }

    #[test]
    fn hostile_events_are_refused() {
        let good = serde_json::to_value(Wire::ban("mx1", &decision())).unwrap();
        let with = |k: &str, v: Value| {
            let mut w = good.clone();
            w[k] = v;
            w.to_string()
        };
        for (text, why) in [
            ("not json".to_string(), Refused::Malformed),
            (with("v", 2.into()), Refused::Foreign),
            (with("kind", "nuke".into()), Refused::Foreign),
            (with("net", "0.0.0.0/0".into()), Refused::Malformed),
            (with("net", "::/8".into()), Refused::Malformed),
            (with("net", "198.51.100.7/16".into()), Refused::Malformed),
            (with("net", "example.org".into()), Refused::Malformed),
            (with("node", "mx1\n2026-01-01 fake log line".into()), Refused::Malformed),
            (with("jail", "../../etc".into()), Refused::Malformed),
            (with("ban_for", 0.into()), Refused::Malformed),
            (with("ban_for", u64::MAX.into()), Refused::Malformed),
            (with("ports", json!([[587, 25]])), Refused::Malformed),
            (with("reason", "because".into()), Refused::Malformed),
            (format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_EVENT)), Refused::Malformed),
        ] {
            assert_eq!(Wire::decode(text.as_bytes(), "mx2").err(), Some(why), "{text}");
        }
    }

    #[test]
    fn failures_and_unbans_round_trip() {
        let f = SharedFailure {
            jail: "dovecot-auth".into(),
            net: "2001:db8::/64".parse().unwrap(),
            time: 5,
            counted: true,
        };
        let text = serde_json::to_string(&Wire::failure("mx1", &f)).unwrap();
        assert_eq!(Wire::decode(text.as_bytes(), "mx1").unwrap(), (true, Shared::Failure(f)));
        let net: IpNet = "192.0.2.0/24".parse().unwrap();
        let text = serde_json::to_string(&Wire::new("mx1", "unban", net)).unwrap();
        assert_eq!(Wire::decode(text.as_bytes(), "mx2").unwrap(), (false, Shared::Unban(net)));
    }

    #[test]
    fn config_refuses_what_would_leak_or_collide() {
        let cfg = |url: &str| FleetConfig {
            url: url.into(),
            password_file: None,
            node: Some("mx1".into()),
            share: vec![Share::Bans],
            prefix: "mailpipe".into(),
            retain: Dur(86400),
        };
        let e = Fleet::new(&cfg("redis://mailpipe:secret@127.0.0.1:6379/0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("password_file") && !e.contains("secret"), "{e}");
        assert!(Fleet::new(&cfg("redis://127.0.0.1:6379/0")).is_ok());
        let bad_node = FleetConfig {
            node: Some("mx 1".into()),
            ..cfg("redis://127.0.0.1/")
        };
        assert!(Fleet::new(&bad_node).is_err());
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "s3cret\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
        let with_file = FleetConfig {
            password_file: Some(pass.display().to_string()),
            ..cfg("redis://mailpipe@127.0.0.1/")
        };
        assert!(Fleet::new(&with_file).unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = Fleet::new(&with_file).unwrap();
        assert!(!format!("{f:?}").contains("s3cret"));
    }
}
