//! Stage 6: where decisions go: printed (`DryRun`), into the kernel (`Ipset`, `Nftables`),
//! mailed to the admin (`Mail`); several at once with `sinks: [...]`.
//!
//! Each sink runs on its own thread behind its own bounded queue, so the pipeline never waits
//! for the firewall, and a slow or failing sink never delays another: a ban that cannot be
//! applied is retried with backoff, logged and counted there.

pub mod batch;
pub mod exec;
pub mod ipset;
pub mod kernel;
pub mod mail;
pub mod nft;
pub mod rules;

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use ipnet::IpNet;

use crate::policy::{Decision, Reason, Shared};
use crate::ports::Ports;

/// Sink settings of a pipeline file.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
pub enum SinkConfig {
    /// Print decisions as JSON lines on stdout; touch no firewall.
    #[default]
    DryRun,
    /// Add bans to ipsets with per-entry timeouts (`hash:ip` inet, `hash:net` inet6).
    Ipset {
        /// `hash:ip` set (family inet) for IPv4 addresses.
        #[serde(default = "ipset::default_set4")]
        set4: String,
        /// `hash:net` set (family inet6) for IPv6 networks.
        #[serde(default = "ipset::default_set6")]
        set6: String,
        /// Most entries per set.
        #[serde(default = "ipset::default_maxelem")]
        maxelem: u32,
        /// Keep the iptables/ip6tables rules that use the sets in place (chain `mailpipe`).
        #[serde(default = "yes")]
        rules: bool,
        /// Also drop banned traffic this host forwards (to containers, VMs): jump from FORWARD.
        #[serde(default)]
        forward: bool,
        /// How often the kernel is checked against the bans (sets, entries, rules).
        #[serde(default = "default_reconcile")]
        reconcile: crate::primitives::Dur,
    },
    /// Add bans to nftables sets with per-element timeouts (`nft -f -`).
    Nftables {
        /// `inet` table.
        #[serde(default = "default_nft_table")]
        table: String,
        /// IPv4 set.
        #[serde(default = "default_nft_set4")]
        set4: String,
        /// IPv6 set (networks).
        #[serde(default = "default_nft_set6")]
        set6: String,
        /// Keep the table's `input` chain (the drop rules) in place.
        #[serde(default = "yes")]
        rules: bool,
        /// Also drop banned traffic this host forwards (a `forward` chain).
        #[serde(default)]
        forward: bool,
        /// How often the kernel is checked against the bans (table, elements).
        #[serde(default = "default_reconcile")]
        reconcile: crate::primitives::Dur,
    },
    /// Mail the admin about bans through the local `sendmail`, one mail per batch.
    Mail {
        /// Recipients: one address or a list.
        #[serde(deserialize_with = "one_or_many")]
        to: Vec<String>,
        /// Sender (envelope and header).
        #[serde(default = "default_from")]
        from: String,
        /// The sendmail program.
        #[serde(default = "default_sendmail")]
        sendmail: String,
        /// Bans gathered into one mail: the first starts the clock.
        #[serde(default = "default_batch")]
        batch: crate::primitives::Dur,
        /// Log lines quoted per ban.
        #[serde(default = "default_lines")]
        lines: usize,
        /// Bans described one by one per mail (the rest are counted).
        #[serde(default = "default_max_bans")]
        max_bans: usize,
        /// A whois program summarising each banned network (first 20 per mail); none: no whois.
        #[serde(default)]
        whois: Option<String>,
    },
    /// POST bans and unbans as JSON, in batches (Alertmanager, chat bridges, ticket systems).
    Webhook {
        /// `https://` (rustls) or `http://`.
        url: String,
        /// Extra headers; a value `@/path` is read from that file (a token kept out of here).
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
        /// Events gathered into one POST: the first starts the clock.
        #[serde(default = "default_hook_batch")]
        batch: crate::primitives::Dur,
        /// The whole exchange at most; beyond, it failed (and is retried).
        #[serde(default = "default_hook_timeout")]
        timeout: crate::primitives::Dur,
    },
    /// Run a program with each batch of events as JSON on its standard input (abuse reports,
    /// a cloud firewall's API): directly, never through a shell, no event text in arguments.
    Command {
        /// The program.
        program: String,
        /// Its fixed arguments.
        #[serde(default)]
        args: Vec<String>,
        /// How long one run may take before it is killed (and the batch retried).
        #[serde(default = "default_command_timeout")]
        timeout: crate::primitives::Dur,
        /// Runs at once at most.
        #[serde(default = "default_max_running")]
        max_running: usize,
        /// Events gathered into one run.
        #[serde(default = "default_hook_batch")]
        batch: crate::primitives::Dur,
    },
}

impl SinkConfig {
    /// The kind, for logs, metrics and `status`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::DryRun => "dry-run",
            SinkConfig::Ipset { .. } => "ipset",
            SinkConfig::Nftables { .. } => "nftables",
            SinkConfig::Mail { .. } => "mail",
            SinkConfig::Webhook { .. } => "webhook",
            SinkConfig::Command { .. } => "command",
        }
    }

    /// Whether it may drop decisions rather than make the pipeline wait: those that tell
    /// people and programs (the bans themselves are in the firewall and the state file).
    fn lossy(&self) -> bool {
        matches!(
            self,
            SinkConfig::Mail { .. } | SinkConfig::Webhook { .. } | SinkConfig::Command { .. }
        )
    }
}

fn default_hook_batch() -> crate::primitives::Dur {
    crate::primitives::Dur(5)
}
fn default_hook_timeout() -> crate::primitives::Dur {
    crate::primitives::Dur(10)
}
fn default_command_timeout() -> crate::primitives::Dur {
    crate::primitives::Dur(30)
}
fn default_max_running() -> usize {
    1
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}
fn default_from() -> String {
    "root".into()
}
fn default_sendmail() -> String {
    "/usr/sbin/sendmail".into()
}
fn default_batch() -> crate::primitives::Dur {
    crate::primitives::Dur(600)
}
fn default_lines() -> usize {
    10
}
fn default_max_bans() -> usize {
    100
}

fn yes() -> bool {
    true
}
fn default_reconcile() -> crate::primitives::Dur {
    crate::primitives::Dur(60)
}

fn default_nft_table() -> String {
    "mailpipe".into()
}
fn default_nft_set4() -> String {
    "banned4".into()
}
fn default_nft_set6() -> String {
    "banned6".into()
}

/// Decisions waiting for the sink thread, at most; beyond, the pipeline waits.
const QUEUE: usize = 65_536;

/// Counters of the sink thread.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Bans applied.
    pub applied: AtomicU64,
    /// Attempts that failed (each is retried).
    pub errors: AtomicU64,
    /// Decisions given up after every retry.
    pub dropped: AtomicU64,
    /// Times the pipeline waited for room in the queue (a ban burst faster than the firewall).
    pub waited: AtomicU64,
    /// Reconciliations of the kernel with the bans.
    pub reconciled: AtomicU64,
    /// How long the last one took, in microseconds.
    pub reconcile_us: AtomicU64,
    /// Line arrival to ban applied, for first attempts.
    pub latency: std::sync::Mutex<Latency>,
}

/// A bounded sample of latencies (the first 100,000), in microseconds.
#[derive(Debug, Default)]
pub struct Latency(Vec<u32>);

impl Latency {
    fn record(&mut self, d: Duration) {
        if self.0.len() < 100_000 {
            self.0.push(d.as_micros().min(u128::from(u32::MAX)) as u32);
        }
    }

    /// The `q` quantile (0..=1) in microseconds, if any were recorded.
    pub fn quantile(&self, q: f64) -> Option<u32> {
        let mut v = self.0.clone();
        v.sort_unstable();
        v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied()
    }
}

/// What the sink thread is asked to do.
#[derive(Debug, Clone)]
pub enum SinkCmd {
    /// Apply a ban; the instant its line arrived, for the ban-latency figures.
    Ban(Decision, Instant),
    /// Apply a ban saved before a restart (the firewall needs it again; nobody needs telling).
    Restore(Decision),
    /// Lift a ban (`mailpipe unban`).
    Unban(IpNet),
}

impl SinkStats {
    /// The counters as JSON, for `status`.
    pub fn summary(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lat = self.latency.lock().expect("not poisoned");
        serde_json::json!({"applied": n(&self.applied), "errors": n(&self.errors), "given_up": n(&self.dropped), "waited": n(&self.waited),
                           "reconciled": n(&self.reconciled), "reconcile_last_ms": n(&self.reconcile_us) as f64 / 1000.0,
                           "latency_us_p50": lat.quantile(0.5), "latency_us_p99": lat.quantile(0.99)})
    }
}

/// One sink's thread, as the pipeline sees it.
#[derive(Debug)]
struct Worker {
    name: String,
    /// A sink that may lose decisions rather than hold up the pipeline (the ban mail: the bans
    /// themselves are in the firewall and the state file).
    lossy: bool,
    tx: Option<mpsc::SyncSender<SinkCmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<SinkStats>,
}

/// The pipeline's end of the sink threads.
#[derive(Debug)]
pub struct SinkHandle {
    workers: Vec<Worker>,
    /// Bans are written here before they are applied.
    pub store: Option<crate::state::Store>,
    /// This node's own bans and unbans go to its fleet here too (never those the fleet brought).
    pub fleet: Option<tokio::sync::mpsc::UnboundedSender<Shared>>,
}

/// Each sink's name and counters.
pub type SinkReport = Vec<(String, Arc<SinkStats>)>;

impl SinkHandle {
    /// Queues a command for every sink; never waits.
    ///
    /// Only a full queue makes it wait (counted): a ban is never dropped for lack of room. A
    /// failing sink does not fill its queue, since its thread keeps taking decisions while it
    /// retries the failed ones.
    fn send(&self, cmd: &SinkCmd) {
        for w in &self.workers {
            let Some(tx) = &w.tx else { continue };
            if let Err(mpsc::TrySendError::Full(cmd)) = tx.try_send(cmd.clone()) {
                if w.lossy {
                    w.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                w.stats.waited.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(cmd);
            }
        }
    }

    /// Each sink's name and counters.
    pub fn stats(&self) -> SinkReport {
        self.workers.iter().map(|w| (w.name.clone(), w.stats.clone())).collect()
    }

    /// Records `bans` in the state file (one transaction), then queues them for the firewall;
    /// `arrived` is when their lines came in.
    pub fn ban(&mut self, bans: Vec<Decision>, arrived: Instant) {
        if bans.is_empty() {
            return;
        }
        // Banning matters more than remembering: a store that cannot write keeps the bans in
        // memory, says so, and retries; they are applied now either way.
        if let Some(s) = &mut self.store {
            s.record(&bans);
        }
        for d in bans {
            if let Some(f) = &self.fleet
                && d.reason != Reason::Fleet
            {
                let _ = f.send(Shared::Ban(d.clone()));
            }
            self.send(&SinkCmd::Ban(d, arrived));
        }
    }

    /// Re-applies bans read back from the state file, without writing them again.
    pub fn reapply(&self, bans: Vec<Decision>) {
        for d in bans {
            // Restored bans go to the firewall again, not to the admin's mailbox again.
            self.send(&SinkCmd::Restore(d));
        }
    }

    /// Forgets a ban in the state file and lifts it in the firewall, here and in the fleet.
    pub fn unban(&mut self, net: IpNet) {
        if let Some(f) = &self.fleet {
            let _ = f.send(Shared::Unban(net));
        }
        self.unban_here(net);
    }

    /// `unban` on this node only: the fleet's own unban.
    pub fn unban_here(&mut self, net: IpNet) {
        if let Some(s) = &mut self.store {
            s.remove(net);
        }
        self.send(&SinkCmd::Unban(net));
    }

    /// Retries writing what the state file still lacks (the daemon calls it every second).
    pub fn flush_state(&mut self) {
        if let Some(s) = &mut self.store {
            s.flush();
        }
    }

    /// Lets every sink apply what is queued (a mail sink sends its batch), then stops them.
    pub fn finish(mut self) -> SinkReport {
        let report = self.stats();
        for w in &mut self.workers {
            w.tx.take();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        report
    }
}

/// Opens every sink (creating ipsets for each port scope, which may fail with a clear reason)
/// and starts a thread for each; `out` is the dry-run sink's writer (one dry-run sink at most).
pub fn spawn<W: Write + Send + 'static>(
    cfgs: &[SinkConfig],
    out: W,
    store: Option<crate::state::Store>,
    scopes: &[Ports],
) -> Result<SinkHandle, OpenError> {
    if cfgs.is_empty() {
        return Err(OpenError::Config(
            "sinks: [] would send decisions nowhere (write DryRun for that)".into(),
        ));
    }
    // Two sinks of one kind would fight over the same chain (iptables) or table (nftables).
    let kernel = |k: &str| cfgs.iter().filter(|c| c.kind() == k).count();
    if kernel("ipset") > 1 {
        return Err(OpenError::Config(
            "more than one Ipset sink: they would share chain `mailpipe`".into(),
        ));
    }
    let mut tables: Vec<&str> = cfgs
        .iter()
        .filter_map(|c| match c {
            SinkConfig::Nftables { table, .. } => Some(table.as_str()),
            _ => None,
        })
        .collect();
    tables.sort_unstable();
    if tables.windows(2).any(|w| w[0] == w[1]) {
        return Err(OpenError::Config("two Nftables sinks on one table".into()));
    }
    let mut out = Some(out);
    let mut workers = Vec::new();
    for (i, cfg) in cfgs.iter().enumerate() {
        let writer = match cfg {
            SinkConfig::DryRun => Some(
                out.take()
                    .ok_or_else(|| OpenError::Config("only one DryRun sink can print decisions".into()))?,
            ),
            _ => None,
        };
        let (mut sink, period) = open(cfg, writer, scopes)?;
        let name = match cfgs.iter().filter(|c| c.kind() == cfg.kind()).count() {
            1 => cfg.kind().to_string(),
            _ => format!("{}-{}", cfg.kind(), i + 1),
        };
        let stats = Arc::new(SinkStats::default());
        let (tx, rx) = mpsc::sync_channel::<SinkCmd>(QUEUE);
        let (st, label) = (stats.clone(), name.clone());
        let thread = std::thread::Builder::new()
            .name(format!("sink {name}"))
            .spawn(move || run(&mut sink, &rx, &st, period, &label))
            .expect("spawning a sink thread");
        workers.push(Worker {
            lossy: cfg.lossy(),
            name,
            tx: Some(tx),
            thread: Some(thread),
            stats,
        });
    }
    Ok(SinkHandle {
        workers,
        store,
        fleet: None,
    })
}

/// Opens a sink: sets of each port scope (and rules) created or adopted; and how often to
/// reconcile it. `out` is where a dry-run sink prints (nothing: it prints nowhere).
pub fn open<W: Write>(cfg: &SinkConfig, out: Option<W>, scopes: &[Ports]) -> Result<(Sink<W>, Option<Duration>), OpenError> {
    Ok(match cfg {
        SinkConfig::DryRun => (Sink::DryRun(out), None),
        SinkConfig::Mail {
            to,
            from,
            sendmail,
            batch,
            lines,
            max_bans,
            whois,
        } => {
            let c = mail::MailConfig {
                to: to.clone(),
                from: from.clone(),
                sendmail: sendmail.clone(),
                batch: Duration::from_secs(batch.secs()),
                lines: *lines,
                max_bans: *max_bans,
                whois: whois.clone(),
            };
            c.check().map_err(OpenError::Config)?;
            (Sink::Mail(Box::new(mail::Mailer::new(c))), None)
        }
        SinkConfig::Webhook {
            url,
            headers,
            batch,
            timeout,
        } => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(OpenError::Config(format!("webhook url {url:?}: http:// or https://")));
            }
            let target = batch::Target::Webhook {
                url: url.clone(),
                headers: batch::read_headers(headers).map_err(OpenError::Config)?,
                agent: batch::agent(Duration::from_secs(timeout.secs().max(1))),
            };
            (
                Sink::Batch(Box::new(batch::Batcher::new(target, Duration::from_secs(batch.secs())))),
                None,
            )
        }
        SinkConfig::Command {
            program,
            args,
            timeout,
            max_running,
            batch,
        } => {
            if *max_running == 0 {
                return Err(OpenError::Config(format!("command {program}: max_running is at least 1")));
            }
            let target = batch::Target::Command {
                program: program.clone(),
                args: args.clone(),
                max_running: *max_running,
                timeout: Duration::from_secs(timeout.secs().max(1)),
                running: Vec::new(),
            };
            (
                Sink::Batch(Box::new(batch::Batcher::new(target, Duration::from_secs(batch.secs())))),
                None,
            )
        }
        SinkConfig::Ipset {
            set4,
            set6,
            maxelem,
            rules,
            forward,
            reconcile,
        } => {
            let c = ipset::IpsetConfig {
                set4: set4.clone(),
                set6: set6.clone(),
                maxelem: *maxelem,
                rules: *rules,
                forward: *forward,
            };
            (
                Sink::Ipset(Box::new(ipset::Ipset::open(&c, scopes)?)),
                Some(Duration::from_secs(reconcile.secs().max(1))),
            )
        }
        SinkConfig::Nftables {
            table,
            set4,
            set6,
            rules,
            forward,
            reconcile,
        } => {
            let c = nft::NftConfig {
                table: table.clone(),
                set4: set4.clone(),
                set6: set6.clone(),
                rules: *rules,
                forward: *forward,
            };
            let sink = nft::Nft::open(&c, scopes)?;
            (Sink::Nft(sink), Some(Duration::from_secs(reconcile.secs().max(1))))
        }
    })
}

/// Retries: 0.1 s doubling to 30 s, at most this many attempts before a decision is given up.
const ATTEMPTS: u32 = 12;

/// A sink thread: applies what comes, retries what failed, reconciles the kernel every `period`,
/// sends a mail batch when it is due; when the queue closes, a last attempt for what waits.
fn run<W: Write>(sink: &mut Sink<W>, rx: &mpsc::Receiver<SinkCmd>, stats: &SinkStats, period: Option<Duration>, name: &str) {
    let mut retry: VecDeque<(Decision, u32, Instant)> = VecDeque::new();
    let mut arrived = Instant::now();
    // Registered once; a no-op when no metrics exporter is installed.
    let ban_latency = metrics::histogram!("mailpipe_ban_latency_seconds");
    let mut reconcile_at = period.map(|p| Instant::now() + p);
    let mut mail_failures = 0u32;
    loop {
        if let (Some(at), Some(p)) = (reconcile_at, period)
            && Instant::now() >= at
        {
            reconcile(sink, stats);
            reconcile_at = Some(Instant::now() + p);
        }
        if let Sink::Mail(m) = sink
            && m.due().is_some_and(|d| d <= Instant::now())
        {
            send_mail(m, stats, &mut mail_failures, false);
        }
        if let Sink::Batch(b) = sink
            && b.due().is_some_and(|d| d <= Instant::now())
        {
            deliver(b, stats, name, false);
        }
        let due = retry
            .front()
            .map(|(_, _, d)| *d)
            .into_iter()
            .chain(reconcile_at)
            .chain(sink.due())
            .min();
        let next = match due {
            Some(due) => rx
                .recv_timeout(due.saturating_duration_since(Instant::now()))
                .map_err(|e| e == mpsc::RecvTimeoutError::Disconnected),
            None => rx.recv().map_err(|_| true),
        };
        let (d, tries) = match next {
            Ok(SinkCmd::Ban(d, at)) => {
                arrived = at;
                (d, 0)
            }
            Ok(SinkCmd::Restore(d)) => {
                arrived = Instant::now();
                if matches!(sink, Sink::Mail(_) | Sink::Batch(_)) {
                    continue;
                }
                (d, 0)
            }
            Ok(SinkCmd::Unban(net)) => {
                // An unban whose address is waiting for a retry: drop the retry too.
                retry.retain(|(d, _, _)| d.net != net);
                metrics::counter!("mailpipe_unbans_total").increment(1);
                if let Err(e) = sink.remove(net) {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("unban {net}: {e}");
                }
                continue;
            }
            Err(false) => match retry.front() {
                Some((_, _, due)) if *due <= Instant::now() => {
                    let (d, tries, _) = retry.pop_front().expect("just seen");
                    (d, tries)
                }
                // A reconciliation or a mail was due: it runs at the top of the loop.
                _ => continue,
            },
            // Closed: one last attempt for what waits, then stop.
            Err(true) => {
                for (d, _, _) in retry.drain(..) {
                    if sink.apply(&d).is_err() {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Sink::Mail(m) = sink {
                    // What waits goes now: a failed message, then the batch so far.
                    for _ in 0..2 {
                        send_mail(m, stats, &mut mail_failures, true);
                    }
                }
                if let Sink::Batch(b) = sink {
                    deliver(b, stats, name, true);
                }
                return;
            }
        };
        match sink.apply(&d) {
            // `mailpipe run --dry-run | head`: whoever read the decisions is gone.
            Err(ApplyError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            Ok(()) => {
                stats.applied.fetch_add(1, Ordering::Relaxed);
                // Per (jail, reason): bans are rare, so this lookup is off the hot path.
                metrics::counter!("mailpipe_bans_applied_total", "jail" => d.jail.to_string(), "reason" => d.reason.name(), "sink" => name.to_string()).increment(1);
                // A mail or a batch waits by design: its latency says nothing.
                if tries == 0 && !matches!(sink, Sink::Mail(_) | Sink::Batch(_)) {
                    let took = arrived.elapsed();
                    ban_latency.record(took.as_secs_f64());
                    stats.latency.lock().expect("not poisoned").record(took);
                }
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if tries + 1 >= ATTEMPTS {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("{e}; giving up on {} after {ATTEMPTS} attempts", d.net);
                } else {
                    let wait = Duration::from_millis(100 << tries.min(8)).min(Duration::from_secs(30));
                    tracing::warn!("{e}; retrying in {wait:?}");
                    retry.push_back((d, tries + 1, Instant::now() + wait));
                }
            }
        }
    }
}

/// Sends what the mail sink has due (`all`: everything, at shutdown); a failure keeps the
/// message and tries again later (10 s doubling to 10 min).
fn send_mail(m: &mut mail::Mailer, stats: &SinkStats, failures: &mut u32, all: bool) {
    match m.send(all) {
        Ok(0) => {}
        Ok(n) => {
            *failures = 0;
            tracing::info!("mailed {n} bans");
        }
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            let wait = Duration::from_secs(10 << (*failures).min(6)).min(Duration::from_secs(600));
            *failures += 1;
            tracing::error!("ban mail: {e}; retrying in {wait:?}");
            m.retry_in(wait);
        }
    }
}

/// Delivers what a batching sink has due (`all`: everything, at shutdown); failures are
/// counted and logged, their batches kept for the retry.
fn deliver(b: &mut batch::Batcher, stats: &SinkStats, name: &str, all: bool) {
    let round = b.run(all);
    for e in &round.errors {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!("sink {name}: {e}; kept for a retry");
    }
    stats.dropped.store(b.dropped, Ordering::Relaxed);
}

/// One reconciliation of the kernel with the bans: its cost and repairs to metrics, repairs to
/// the log.
fn reconcile<W: Write>(sink: &mut Sink<W>, stats: &SinkStats) {
    let now = crate::clock::wall_clock();
    let t0 = Instant::now();
    let result = match sink {
        Sink::DryRun(_) | Sink::Mail(_) | Sink::Batch(_) => return,
        Sink::Ipset(s) => s.reconcile(now).map_err(ApplyError::from),
        Sink::Nft(s) => s.reconcile(now).map_err(ApplyError::from),
    };
    metrics::histogram!("mailpipe_reconcile_seconds").record(t0.elapsed().as_secs_f64());
    stats.reconcile_us.store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
    match result {
        Ok(r) => {
            for (what, n) in [("entry", r.entries), ("set", r.sets), ("rules", r.rules), ("refresh", r.refreshed)] {
                metrics::counter!("mailpipe_reconcile_repairs_total", "what" => what).increment(n as u64);
            }
            stats.reconciled.fetch_add(1, Ordering::Relaxed);
            if r.entries + r.sets + r.rules > 0 {
                tracing::warn!(
                    "the kernel had lost bans or rules: {} bans added again, {} sets and {} rule sets restored ({} bans checked in {} ms)",
                    r.entries,
                    r.sets,
                    r.rules,
                    r.checked,
                    t0.elapsed().as_millis()
                );
            }
        }
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("reconciling the firewall: {e}");
        }
    }
}

/// A decision as the JSON object scripts read (`kind: "ban"`); `narrowed_from` only when the ban
/// was narrowed to spare an ignored address.
pub fn decision_json(d: &Decision) -> serde_json::Value {
    let mut v = serde_json::json!({
        "kind": "ban",
        "ip": d.net.addr().to_string(),
        "prefix": d.net.prefix_len(),
        "jail": &*d.jail,
        "failures": d.failures,
        "ban_for_s": d.ban_for,
        "offence": d.offence,
        "reason": d.reason.name(),
        "ports": d.ports.json(),
        "time": crate::parse::rfc3339(d.time),
    });
    if let Some(p) = d.narrowed_from {
        v["narrowed_from"] = p.into();
    }
    if kernel::permanent(d.ban_for) {
        v["permanent"] = true.into();
    }
    if d.restored {
        v["restored"] = true.into();
    }
    if let Some(n) = &d.node {
        v["node"] = (**n).into();
    }
    v
}

/// A running sink.
#[derive(Debug)]
pub enum Sink<W: Write> {
    /// Decisions printed to a writer (or nowhere).
    DryRun(Option<W>),
    /// Decisions added to ipsets.
    Ipset(Box<ipset::Ipset>),
    /// Decisions added to nftables sets.
    Nft(nft::Nft),
    /// Decisions mailed in batches.
    Mail(Box<mail::Mailer>),
    /// Decisions and unbans posted to a webhook or handed to a program, in batches.
    Batch(Box<batch::Batcher>),
}

/// Why a sink could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Its sets or rules could not be made.
    #[error(transparent)]
    Ipset(#[from] ipset::IpsetError),
    /// Its nftables table could not be made.
    #[error("nftables table: {0}")]
    Nft(#[from] nft::NftError),
    /// Its settings are wrong.
    #[error("sink: {0}")]
    Config(String),
}

/// Why a decision could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Writing the JSON line failed.
    #[error("writing decisions: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused the entry.
    #[error(transparent)]
    Ipset(#[from] ipset::IpsetError),
    /// nft refused the element.
    #[error(transparent)]
    Nft(#[from] nft::NftError),
}

/// Writes one JSON line and flushes it, so a reader sees it as it happens.
fn print(w: &mut impl Write, v: &serde_json::Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, v).map_err(std::io::Error::from)?;
    w.write_all(b"\n")?;
    w.flush()
}

impl<W: Write> Sink<W> {
    /// When this sink next needs its thread without a command (a mail batch).
    fn due(&self) -> Option<Instant> {
        match self {
            Sink::Mail(m) => m.due(),
            Sink::Batch(b) => b.due(),
            _ => None,
        }
    }

    /// Lifts a ban.
    pub fn remove(&mut self, net: IpNet) -> Result<(), ApplyError> {
        match self {
            Sink::DryRun(w) => {
                if let Some(w) = w {
                    print(
                        w,
                        &serde_json::json!({"kind": "unban", "ip": net.addr().to_string(), "prefix": net.prefix_len()}),
                    )?;
                }
            }
            Sink::Ipset(s) => {
                s.remove(net)?;
                tracing::info!("unbanned {net}");
            }
            Sink::Nft(s) => {
                s.remove(net)?;
                tracing::info!("unbanned {net}");
            }
            Sink::Mail(_) => {}
            Sink::Batch(b) => b.push(serde_json::json!({"kind": "unban", "ip": net.addr().to_string(), "prefix": net.prefix_len()})),
        }
        Ok(())
    }

    /// Applies one decision. Dry-run lines are flushed so a reader sees bans as they happen;
    /// kernel bans are logged on stderr; mail bans wait for their batch.
    pub fn apply(&mut self, d: &Decision) -> Result<(), ApplyError> {
        let now = crate::clock::wall_clock();
        match self {
            Sink::DryRun(w) => {
                if let Some(w) = w {
                    print(w, &decision_json(d))?;
                }
                return Ok(());
            }
            Sink::Mail(m) => {
                m.push(d);
                return Ok(());
            }
            Sink::Batch(b) => {
                b.push(decision_json(d));
                return Ok(());
            }
            Sink::Ipset(s) => s.apply(d, now)?,
            Sink::Nft(s) => s.apply(d, now)?,
        }
        // One line per ban: address, length, ports, jail, offence, reason (and the deciding node).
        tracing::info!(
            "{} {} for {} s on {} (jail {}, offence {}, {}{}{})",
            if d.restored { "restored the ban of" } else { "banned" },
            d.net,
            d.ban_for,
            d.ports,
            d.jail,
            d.offence,
            d.reason.name(),
            d.node.as_deref().map(|n| format!(" by {n}")).unwrap_or_default(),
            d.narrowed_from
                .map(|p| format!(", narrowed from /{p} to spare an ignored address"))
                .unwrap_or_default()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(ip: &str, prefix: u8, jail: &str, failures: u32, ban_for: u64) -> Decision {
        Decision {
            net: IpNet::new(ip.parse().unwrap(), prefix).unwrap(),
            jail: jail.into(),
            failures,
            ban_for,
            offence: 1,
            time: 0,
            since: 0,
            reason: crate::policy::Reason::Threshold,
            narrowed_from: None,
            ports: Ports::resolve(&[crate::ports::PortSpec::Name("imap,imaps".into())], |_| None).unwrap(),
            evidence: Arc::default(),
            restored: false,
            node: None,
        }
    }

    #[test]
    fn dry_run_prints_json_lines() {
        let d = decision("2001:db8:1::", 64, "dovecot-auth", 7, 3600);
        let mut s = Sink::DryRun(Some(Vec::new()));
        s.apply(&d).unwrap();
        let Sink::DryRun(Some(out)) = s else { unreachable!() };
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"kind\":\"ban\",\"ip\":\"2001:db8:1::\",\"prefix\":64,\"jail\":\"dovecot-auth\",\"failures\":7,\"ban_for_s\":3600,\"offence\":1,\"reason\":\"threshold\",\"ports\":[143,993],\"time\":\"1970-01-01T00:00:00Z\"}\n"
        );
    }

    /// Fails its first `n` writes, like a firewall that refuses for a while.
    struct Flaky {
        n: usize,
        out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Flaky {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.n > 0 {
                self.n -= 1;
                return Err(std::io::Error::other("refused"));
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_refused_ban_is_retried_and_counted() {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut h = spawn(&[SinkConfig::DryRun], Flaky { n: 2, out: out.clone() }, None, &[]).unwrap();
        h.ban(vec![decision("192.0.2.1", 32, "j", 5, 60)], Instant::now());
        // The retries come 0.1 s and 0.2 s later; wait for the outcome, with a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.stats()[0].1.applied.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let st = h.finish().remove(0).1;
        assert_eq!((st.applied.load(Ordering::Relaxed), st.errors.load(Ordering::Relaxed)), (1, 2));
        assert!(String::from_utf8(out.lock().unwrap().clone()).unwrap().contains("192.0.2.1"));
    }
}
