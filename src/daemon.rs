//! `mailpipe run`: the inputs feed one pipeline thread through a queue bounded in bytes;
//! decisions go to the sink from there.
//!
//! ```text
//! stdin task ───┐
//! UDP task ─────┼─► queue (byte budget) ─► pipeline thread (prefilter … policy) ─► sink thread
//! TCP tasks ────┤     TCP, stdin, Unix wait their turn; UDP drops and counts
//! Unix task ────┤
//! control ──────┘   (requests; a reload is compiled off this thread, then swapped in)
//! ```
//!
//! Shutdown (SIGTERM/SIGINT, or EOF when stdin is the only input): listeners close, open
//! connections are read until drained (bounded by `daemon.drain`), a `Stop` is queued behind
//! everything received, the pipeline drains up to it, the sink is flushed.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::wall_clock;
use crate::input::net::{self, Allow, InputStats, Shutdown, TcpLimits};
use crate::input::{InputConfig, LineSplitter};
use crate::pipeline::{Event, Pipeline};
use crate::policy::{Ban, Decision, Shared};
use crate::queue::{Budget, FleetIn, Msg, Queue, Received};
pub use crate::queue::{DaemonConfig, Reloader};
use crate::sink::{self, SinkConfig, SinkHandle};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// An input could not be set up.
    #[error("input {input}: {error}")]
    Input {
        /// Which input.
        input: String,
        /// Why.
        error: std::io::Error,
    },
    /// An input's setting is invalid.
    #[error("input {input}: {reason}")]
    Config {
        /// Which input.
        input: String,
        /// Why.
        reason: String,
    },
    /// The sink could not be opened.
    #[error(transparent)]
    Sink(#[from] crate::sink::OpenError),
    /// The state file cannot be used at all (another process has it, or it is not a file).
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The runtime could not start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Each input's name and counters, as the daemon ends.
pub type InputReport = Vec<(String, Arc<InputStats>)>;

fn allow_list(input: &str, allow: &[String]) -> Result<Allow, DaemonError> {
    allow
        .iter()
        .map(|a| {
            a.parse::<IpNet>()
                .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| DaemonError::Config {
                    input: input.into(),
                    reason: format!("allow: {a:?} is not an address or CIDR network"),
                })
        })
        .collect::<Result<_, _>>()
        .map(Allow)
}

/// An I/O error of the input `name`.
fn input_error(name: &str) -> impl Fn(std::io::Error) -> DaemonError + '_ {
    move |error| DaemonError::Input {
        input: name.to_string(),
        error,
    }
}

fn parse_addr(input: &str, listen: &str) -> Result<SocketAddr, DaemonError> {
    listen.parse().map_err(|_| DaemonError::Config {
        input: input.into(),
        reason: format!("listen: {listen:?} is not ADDR:PORT"),
    })
}

/// Runs `pipeline` on `cfg`'s inputs until `shutdown` resolves (or stdin ends, when it is the
/// only input); decisions go to `cfg`'s sink (or, with `dry_run`, as JSON lines to `out`).
/// Returns the inputs' counters.
pub fn run<W: Write + Send + 'static>(
    cfg: &crate::config::Config,
    dry_run: bool,
    mut pipeline: Pipeline,
    reload: Option<Reloader>,
    out: W,
    shutdown: impl Future<Output = ()>,
) -> Result<InputReport, DaemonError> {
    let fleet = cfg
        .fleet
        .as_ref()
        .map(crate::fleet::Fleet::new)
        .transpose()
        .map_err(|e| DaemonError::Config {
            input: "fleet".into(),
            reason: e.to_string(),
        })?;
    let (store, loaded) = restore_state(cfg, &mut pipeline)?;
    let restored = loaded.bans;
    if let Some(addr) = &cfg.metrics {
        let addr = parse_addr("metrics", addr)?;
        let bound = crate::telemetry::serve(addr).map_err(|reason| DaemonError::Config {
            input: "metrics".into(),
            reason,
        })?;
        tracing::info!("listening on metrics {bound}");
    }
    let sinks = if dry_run { &[SinkConfig::DryRun][..] } else { &cfg.sinks };
    // A mail sink quotes the lines behind each ban: the pipeline keeps recent ones for it.
    let quoted = sinks
        .iter()
        .map(|s| match s {
            SinkConfig::Mail { lines, .. } => *lines,
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    pipeline.keep_evidence(quoted);
    let mut scopes = cfg.jail_ports().map_err(|e| DaemonError::Config {
        input: "ports".into(),
        reason: e.to_string(),
    })?;
    // Restored bans may be on scopes no jail has any more: their rules go in place with the rest.
    scopes.extend(restored.iter().map(|b| b.ports.clone()));
    scopes.sort();
    scopes.dedup();
    let mut sink = sink::spawn(sinks, out, store, &scopes)?;
    // The fleet hears this node's decisions, unbans and (when shared) failures.
    let (fleet_stats, fleet_tx, fleet_start) = match fleet {
        Some(f) => {
            let (tx, rx) = mpsc::unbounded_channel();
            sink.fleet = Some(tx.clone());
            if f.shares_failures() {
                pipeline.share_failures();
            }
            (Some(f.stats()), Some(tx), Some((f, rx, loaded.fleet_cursors, loaded.fleet_outbox)))
        }
        None => (None, None, None),
    };
    let now = wall_clock();
    sink.reapply(restored.iter().map(|b| restored_decision(b, now)).collect());
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let (tx, rx) = mpsc::unbounded_channel::<Msg>();
    let queue = Queue {
        tx,
        budget: Budget::new(cfg.daemon.queue_bytes.max(1 << 20)),
    };
    let edges = Edges {
        sinks: sink.stats(),
        budget: queue.budget.clone(),
        journal_cursor: loaded.journal_cursor,
        backlog: cfg.parse.backlog.secs(),
        fleet: fleet_stats,
    };
    let worker = spawn_pipeline(pipeline, sink, rx, cfg.parse.max_line, cfg.metrics.is_some(), fleet_tx)?;
    let (stats, writer) = rt.block_on(serve(cfg, queue, reload, edges, fleet_start, shutdown))?;
    let store = worker
        .join()
        .map_err(|_| DaemonError::Runtime(std::io::Error::other("pipeline thread panicked")))?;
    // The pipeline is gone, so the fleet's writer has had its last event: what Redis did not
    // take waits in the state file for the next start.
    if let Some(writer) = writer {
        let left = rt.block_on(writer).unwrap_or_default();
        if let Some(mut s) = store {
            tracing::info!("fleet: {} events wait for the fleet in the state file", left.len());
            s.fleet_outbox(left);
            s.flush();
        }
    }
    // A stdin read may still sit in the blocking pool; it is not waited for.
    rt.shutdown_background();
    Ok(stats)
}

/// The fleet, this node's events for it, and the cursors and outbox the state file kept.
type FleetStart = (
    crate::fleet::Fleet,
    mpsc::UnboundedReceiver<Shared>,
    [Option<String>; 2],
    Vec<String>,
);

/// Opens the state file (if any) and gives its bans and history back to the pipeline; the
/// store, and what else it held.
fn restore_state(
    cfg: &crate::config::Config,
    pipeline: &mut Pipeline,
) -> Result<(Option<crate::state::Store>, crate::state::Loaded), DaemonError> {
    let Some(path) = cfg.state.as_deref() else {
        return Ok((None, crate::state::Loaded::default()));
    };
    let t0 = Instant::now();
    let (store, loaded) = crate::state::Store::open(std::path::Path::new(path), wall_clock(), pipeline.forget_after())?;
    pipeline.restore(&loaded.bans, &loaded.history);
    pipeline.restore_trust(&loaded.trust, wall_clock());
    tracing::info!(
        "restored {} bans and {} histories in {} ms",
        loaded.bans.len(),
        loaded.history.len(),
        t0.elapsed().as_millis()
    );
    Ok((Some(store), loaded))
}

/// What the edges report alongside the pipeline's own counters.
#[derive(Debug, Clone)]
struct Edges {
    sinks: crate::sink::SinkReport,
    budget: Budget,
    /// Where the journal input starts (from the state file).
    journal_cursor: Option<String>,
    /// `parse.backlog` in seconds: an older saved cursor is not resumed.
    backlog: u64,
    /// The fleet link's counters, when there is a fleet.
    fleet: Option<Arc<crate::fleet::FleetStats>>,
}

/// The pipeline thread: takes messages until `Stop`, hands each batch's decisions to the sink.
fn spawn_pipeline(
    mut pipeline: Pipeline,
    mut sink: SinkHandle,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    max_line: usize,
    with_metrics: bool,
    fleet: Option<mpsc::UnboundedSender<Shared>>,
) -> Result<std::thread::JoinHandle<Option<crate::state::Store>>, DaemonError> {
    let register = |p: &Pipeline| {
        let rules: Vec<usize> = (0..p.jail_names().len()).map(|j| p.rule_texts(j).0.len()).collect();
        crate::telemetry::PipelineMetrics::register(p.jail_names(), &rules, &p.count_kinds())
    };
    std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            let mut splitter = LineSplitter::new(max_line);
            // A batch's decisions are saved in one transaction, then applied.
            let mut decided = Vec::new();
            let mut metrics = with_metrics.then(|| register(&pipeline));
            let (mut published, mut flushed) = (Instant::now(), Instant::now());
            // systemd's watchdog is fed from this thread: a pipeline that hangs is restarted.
            let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
            let mut fed = Instant::now();
            let apply = |p: &mut Pipeline, line: &[u8], now: i64, decided: &mut Vec<Decision>| {
                p.process(line, now, |e| {
                    if let Event::Decision(d) = e {
                        decided.push(d.clone());
                    }
                });
            };
            while let Some(msg) = rx.blocking_recv() {
                let arrived = Instant::now();
                // One clock read per batch: the wall clock bounds the lines' own times.
                let wall = wall_clock();
                let now = pipeline.tick(wall);
                match msg {
                    Msg::Stream(chunk, _lease) => splitter.feed(&chunk, |l| apply(&mut pipeline, l, wall, &mut decided)),
                    Msg::Frames(frames, _lease) => frames.iter().for_each(|f| apply(&mut pipeline, f, wall, &mut decided)),
                    Msg::Journal(frames, _lease) => {
                        frames.iter().for_each(|f| apply(&mut pipeline, f, wall, &mut decided));
                        // Processed: a restart resumes after this entry.
                        if let (Some(s), Some(c)) = (&mut sink.store, frames.last().and_then(|f| crate::input::journal::cursor_of(f))) {
                            s.journal_cursor(c);
                        }
                    }
                    Msg::Control(work, reply) => {
                        let _ = reply.send(work(&mut pipeline, &mut sink, now));
                    }
                    Msg::Swap(mut next, reply) => {
                        std::mem::swap(&mut pipeline, &mut next);
                        next.carry_over(&mut pipeline);
                        tracing::info!("reloaded: jails {:?}", pipeline.jail_names());
                        // The jails, and so the handles' labels, may have changed.
                        if metrics.is_some() {
                            metrics = Some(register(&pipeline));
                        }
                        let _ = reply.send(serde_json::json!({"ok": true, "jails": pipeline.jail_names()}));
                    }
                    Msg::Fleet(m) => fleet_in(&mut pipeline, &mut sink, m, now, &mut decided),
                    Msg::Tick => {
                        if let Some(every) = watchdog
                            && fed.elapsed() >= every
                        {
                            fed = Instant::now();
                            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                        }
                    }
                    Msg::Stop => break,
                }
                hand_over(&mut pipeline, &mut sink, fleet.as_ref());
                sink.ban(std::mem::take(&mut decided), arrived);
                if flushed.elapsed() >= Duration::from_secs(1) {
                    flushed = Instant::now();
                    sink.flush_state();
                }
                // Counters reach the exporter at most ten times a second.
                if let Some(m) = &metrics
                    && (published.elapsed() >= Duration::from_millis(100) || rx.is_empty())
                {
                    published = Instant::now();
                    let (tracked, evicted) = pipeline.tracked();
                    m.publish(
                        pipeline.stats(),
                        tracked,
                        evicted,
                        &pipeline.banned_per_jail(),
                        arrived.elapsed().as_secs_f64(),
                    );
                    if let Some(s) = &sink.store {
                        crate::telemetry::publish_state(&s.lag());
                    }
                }
            }
            splitter.finish(|l| apply(&mut pipeline, l, wall_clock(), &mut decided));
            hand_over(&mut pipeline, &mut sink, fleet.as_ref());
            sink.ban(std::mem::take(&mut decided), Instant::now());
            // What waits (the journal's cursor among it) is written before the end.
            sink.flush_state();
            let store = sink.store.take();
            for (name, st) in sink.finish() {
                tracing::info!("sink {name}: {}", st.summary());
            }
            store
        })
        .map_err(DaemonError::Runtime)
}

/// Hands on what a batch left besides decisions: the failures the pipeline counted to the
/// fleet (when it shares them), new trusted pairs to the state file.
fn hand_over(pipeline: &mut Pipeline, sink: &mut SinkHandle, fleet: Option<&mpsc::UnboundedSender<Shared>>) {
    if let Some(tx) = fleet {
        for f in pipeline.take_shared() {
            let _ = tx.send(Shared::Failure(f));
        }
    }
    let trusted = pipeline.take_trusted();
    if let (false, Some(s)) = (trusted.is_empty(), &mut sink.store) {
        s.trust(trusted);
    }
}

/// Applies what the fleet brings, on the pipeline thread: other nodes' bans and unbans go to
/// the sinks (not back to the fleet), failures are counted (this node's own may decide a ban,
/// into `decided`), and the streams' positions and the outbox go to the state file.
fn fleet_in(pipeline: &mut Pipeline, sink: &mut SinkHandle, m: FleetIn, now: i64, decided: &mut Vec<Decision>) {
    match m {
        FleetIn::Events(cursor, events) => {
            let mut bans = Vec::new();
            let last = events.last().map(|e| e.id.clone());
            for Received { own, event, .. } in events {
                match event {
                    Shared::Ban(d) if !own => {
                        if pipeline.fleet_ban(&d, now) {
                            bans.push(d);
                        }
                    }
                    Shared::Unban(net) if !own => {
                        if pipeline.unban(net.addr()).is_some() {
                            sink.unban_here(net);
                        }
                    }
                    // Counted by this node already, when the fleet was out of reach.
                    Shared::Failure(f) if own && f.counted => {}
                    Shared::Failure(f) => {
                        pipeline.fleet_failure(&f, own, now, decided);
                    }
                    Shared::Ban(_) | Shared::Unban(_) => {}
                }
            }
            sink.ban(bans, Instant::now());
            if let (Some(s), Some(id)) = (&mut sink.store, last) {
                s.fleet_cursor(cursor, &id);
            }
        }
        FleetIn::Link(up) => pipeline.fleet_link(up),
        FleetIn::CountHere(failures) => {
            for f in failures {
                pipeline.fleet_failure(&f, true, now, decided);
            }
        }
        FleetIn::Outbox(events) => {
            if let Some(s) = &mut sink.store {
                s.fleet_outbox(events);
            }
        }
    }
}

/// The edges, on the runtime: inputs, control, SIGHUP and the metrics ticker, until
/// `shutdown` (or stdin's end); then they drain and `Stop` is queued.
async fn serve(
    cfg: &crate::config::Config,
    queue: Queue,
    reload: Option<Reloader>,
    edges: Edges,
    fleet: Option<FleetStart>,
    shutdown: impl Future<Output = ()>,
) -> Result<(InputReport, Option<tokio::task::JoinHandle<Vec<String>>>), DaemonError> {
    let stop = CancellationToken::new();
    let ends = Shutdown {
        stop: stop.clone(),
        drain: Duration::from_secs(cfg.daemon.drain.secs()),
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut stats = Vec::new();
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    let mut eof_tx = Some(eof_tx);
    if cfg.inputs.iter().filter(|i| matches!(i, InputConfig::Journal { .. })).count() > 1 {
        // One cursor is kept: two journal inputs would resume after each other's entries.
        return Err(DaemonError::Config {
            input: "journal".into(),
            reason: "at most one Journal input (list every unit and identifier in it)".into(),
        });
    }
    for input in &cfg.inputs {
        let st = Arc::new(InputStats::default());
        let name = start_input(input, &queue, &st, &ends, &mut tasks, &mut eof_tx, &edges).await?;
        stats.push((name, st));
    }
    let writer = fleet.map(|(fleet, rx, cursors, outbox)| fleet.spawn(queue.clone(), rx, cursors, outbox, stop.clone()));
    if let Some(path) = cfg.control.as_deref().map(std::path::Path::new) {
        let listener = crate::control::bind(path).map_err(input_error(&format!("control {}", path.display())))?;
        tracing::info!("listening on control {}", path.display());
        tokio::spawn(crate::control::serve(
            listener,
            queue.clone(),
            reload.clone(),
            stats.clone(),
            edges.fleet.clone(),
            stop.clone(),
        ));
    }
    if cfg.metrics.is_some() {
        let (inputs, stop) = (stats.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => crate::telemetry::publish_edges(&inputs, &edges.sinks, edges.budget.used(), edges.fleet.as_deref()),
                }
            }
        });
    }
    tokio::spawn(reload_on_hangup(queue.clone(), reload, stop.clone()));
    // Under systemd (Type=notify): every input is bound and the sinks are open.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let (tx, tick_stop) = (queue.tx.clone(), stop.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick_stop.cancelled() => return,
                _ = tick.tick() => if tx.send(Msg::Tick).is_err() { return },
            }
        }
    });
    let stdin_only = cfg.inputs == [InputConfig::Stdin];
    let stdin_done = async {
        match (stdin_only, eof_rx.await) {
            (true, Ok(())) => {}
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = stdin_done => {}
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    stop.cancel();
    // Each input drains what its senders already wrote, within the deadline.
    while tasks.join_next().await.is_some() {}
    // Everything received is queued before this; the pipeline drains up to it.
    let _ = queue.tx.send(Msg::Stop);
    Ok((stats, writer))
}

/// Binds and starts one input; its name.
async fn start_input(
    input: &InputConfig,
    queue: &Queue,
    st: &Arc<InputStats>,
    ends: &Shutdown,
    tasks: &mut tokio::task::JoinSet<()>,
    eof_tx: &mut Option<tokio::sync::oneshot::Sender<()>>,
    edges: &Edges,
) -> Result<String, DaemonError> {
    let (q, st) = (queue.clone(), st.clone());
    Ok(match input {
        InputConfig::Stdin => {
            let (ends, eof) = (ends.clone(), eof_tx.take());
            tasks.spawn(async move {
                read_stdin(&q, &st, &ends).await;
                if let Some(eof) = eof {
                    let _ = eof.send(());
                }
            });
            "stdin".to_string()
        }
        InputConfig::Udp {
            listen,
            allow,
            max_frame,
            recv_buffer,
        } => {
            let name = format!("udp {listen}");
            let allow = allow_list(&name, allow)?;
            let sock = bind_udp(parse_addr(&name, listen)?, *recv_buffer).map_err(input_error(&name))?;
            announce("udp", sock.local_addr());
            tasks.spawn(net::udp(sock, allow, *max_frame, q, st, ends.stop.clone()));
            name
        }
        InputConfig::Tcp {
            listen,
            allow,
            max_frame,
            max_connections,
            max_per_source,
            idle_timeout,
        } => {
            let name = format!("tcp {listen}");
            let allow = allow_list(&name, allow)?;
            let listener = tokio::net::TcpListener::bind(parse_addr(&name, listen)?)
                .await
                .map_err(input_error(&name))?;
            announce("tcp", listener.local_addr());
            let limits = TcpLimits {
                max_frame: *max_frame,
                max_connections: (*max_connections).max(1),
                max_per_source: (*max_per_source).max(1),
                idle_timeout: Duration::from_secs(idle_timeout.secs().max(1)),
            };
            tasks.spawn(net::tcp(listener, allow, limits, q, st, ends.clone()));
            name
        }
        InputConfig::Journal {
            units,
            identifiers,
            directory,
            journalctl,
            lookback,
            max_frame,
        } => {
            let cfg = crate::input::journal::JournalConfig {
                units: units.clone(),
                identifiers: identifiers.clone(),
                directory: directory.clone(),
                journalctl: journalctl.clone(),
                lookback: Duration::from_secs(lookback.secs()),
                backlog: Duration::from_secs(edges.backlog),
                max_frame: *max_frame,
            };
            tasks.spawn(crate::input::journal::run(
                cfg,
                edges.journal_cursor.clone(),
                q,
                st,
                ends.stop.clone(),
            ));
            "journal".to_string()
        }
        InputConfig::Unix { path, max_frame } => {
            let name = format!("unix {path}");
            net::prepare_socket_path(std::path::Path::new(path)).map_err(input_error(&name))?;
            let sock = tokio::net::UnixDatagram::bind(path).map_err(input_error(&name))?;
            tracing::info!("listening on unix {path}");
            tasks.spawn(net::unix(sock, *max_frame, q, st, ends.stop.clone()));
            name
        }
    })
}

/// SIGHUP: reload, as `mailpipe reload` does; the outcome goes to the log.
async fn reload_on_hangup(queue: Queue, reload: Option<Reloader>, stop: CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            s = hup.recv() => if s.is_none() { return },
        }
        let v = crate::control::reload(reload.as_ref(), &queue).await;
        if v["ok"] != true {
            tracing::error!("reload refused, the running pipeline stays: {}", v["error"].as_str().unwrap_or(""));
        }
    }
}

/// A saved ban as a decision for the sink, with the time it has left.
fn restored_decision(b: &Ban, now: i64) -> Decision {
    Decision {
        net: b.net,
        jail: b.jail.clone(),
        failures: 0,
        // A permanent ban stays permanent; another gets the time it has left.
        ban_for: if crate::sink::kernel::permanent(b.until.saturating_sub(b.since) as u64) {
            crate::policy::MAX_BAN
        } else {
            (b.until - now).max(1) as u64
        },
        offence: b.offence,
        time: b.since,
        since: now,
        reason: b.reason,
        narrowed_from: None,
        ports: b.ports.clone(),
        evidence: Default::default(),
        restored: true,
        node: None,
    }
}

/// Each TCP connection is a descriptor: lift the soft limit (often 1024) to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Ports may be 0 (tests): say which one the kernel picked.
fn announce(kind: &str, addr: std::io::Result<SocketAddr>) {
    if let Ok(a) = addr {
        tracing::info!("listening on {kind} {a}");
    }
}

fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<tokio::net::UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    if let Err(e) = s.set_recv_buffer_size(recv_buffer) {
        net::tracing_warn(&format!("udp {addr}: cannot set SO_RCVBUF to {recv_buffer}: {e}"));
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// Reads stdin in chunks until EOF (or, once stopping, until it is quiet or the drain deadline
/// passes); waits for room in the budget. Counts lines, not reads.
async fn read_stdin(q: &Queue, stats: &InputStats, ends: &Shutdown) {
    const CHUNK: usize = 256 << 10;
    let mut stdin = tokio::io::stdin();
    let mut deadline: Option<Instant> = None;
    let mut tail = false;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let read = async {
            match deadline {
                None => Some(stdin.read(&mut buf).await),
                Some(_) => tokio::time::timeout(Duration::from_millis(200), stdin.read(&mut buf)).await.ok(),
            }
        };
        let r = tokio::select! {
            _ = ends.stop.cancelled(), if deadline.is_none() => {
                deadline = Some(Instant::now() + ends.drain);
                continue;
            }
            r = read => r,
        };
        let n = match r {
            Some(Ok(0)) | None => break,
            Some(Ok(n)) => n,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Some(Err(e)) => {
                net::tracing_warn(&format!("reading stdin: {e}"));
                break;
            }
        };
        // A pipe hands over 64 KiB a read: the queue's budget counts bytes, so the buffer must
        // hold no more than it got (else 32 MiB of budget held 128 MiB).
        buf.truncate(n);
        buf.shrink_to_fit();
        let lines = memchr::memchr_iter(b'\n', &buf).count();
        tail = buf.last() != Some(&b'\n');
        let lease = q.budget.take(n).await;
        if q.tx.send(Msg::Stream(buf, lease)).is_err() {
            return;
        }
        stats.received.fetch_add(lines as u64, std::sync::atomic::Ordering::Relaxed);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    // A last line without LF is a line too.
    stats.received.fetch_add(u64::from(tail), std::sync::atomic::Ordering::Relaxed);
}
