//! `mailpipe run`: the inputs feed one pipeline thread through a bounded queue; decisions go to
//! the sink from there.
//!
//! ```text
//! stdin thread ─┐
//! UDP task ─────┼─► bounded queue ─► pipeline thread (prefilter … policy) ─► sink
//! TCP tasks ────┤      (TCP, stdin, Unix wait; UDP drops and counts)
//! Unix task ────┘
//! ```
//!
//! Shutdown (SIGTERM/SIGINT, or EOF when stdin is the only input): inputs stop reading, a `Stop`
//! is queued behind everything already received, the pipeline drains up to it, the sink is
//! flushed.

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::input::net::{self, Allow, InputStats, TcpLimits};
use crate::input::{InputConfig, LineSplitter, Msg};
use crate::pipeline::{Event, Pipeline};
use crate::sink::{self, SinkConfig};

/// Queue slots between the inputs and the pipeline (each slot up to 256 messages or 256 KiB).
const QUEUE: usize = 1024;

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
    Sink(#[from] crate::sink::ipset::IpsetError),
    /// The state file cannot be used at all (another process has it, or it is not a file).
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The runtime could not start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Each input's name and counters, as the daemon ends.
pub type InputReport = Vec<(String, Arc<InputStats>)>;

fn wall_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

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
    reload: Option<crate::control::Reloader>,
    out: W,
    shutdown: impl Future<Output = ()>,
) -> Result<InputReport, DaemonError> {
    let (inputs, max_line) = (cfg.inputs.as_slice(), cfg.parse.max_line);
    let sink = if dry_run { &SinkConfig::DryRun } else { &cfg.sink };
    let control = cfg.control.as_deref().map(std::path::Path::new);
    // Bans still active after a restart go back to the policy and, in one batch, to the sink.
    let mut restored = Vec::new();
    let store = match cfg.state.as_deref() {
        Some(p) => {
            let t0 = std::time::Instant::now();
            let (store, loaded) = crate::state::Store::open(std::path::Path::new(p), wall_clock(), pipeline.forget_after())?;
            pipeline.restore(&loaded.bans, &loaded.history);
            eprintln!(
                "mailpipe: restored {} bans and {} histories in {} ms",
                loaded.bans.len(),
                loaded.history.len(),
                t0.elapsed().as_millis()
            );
            restored = loaded.bans;
            Some(store)
        }
        None => None,
    };
    if let Some(addr) = &cfg.metrics {
        let addr = parse_addr("metrics", addr)?;
        crate::telemetry::serve(addr).map_err(|reason| DaemonError::Config {
            input: "metrics".into(),
            reason,
        })?;
        eprintln!("mailpipe: listening on metrics {addr}");
    }
    let with_metrics = cfg.metrics.is_some();
    let mut sink = sink::spawn(sink, out, store)?;
    let sink_stats = sink.stats.clone();
    let now = wall_clock();
    sink.reapply(restored.iter().map(|b| restored_decision(b, now)).collect());
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);

    let worker = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || -> Result<(), DaemonError> {
            let mut splitter = LineSplitter::new(max_line);
            // A batch's decisions are saved in one transaction, then applied.
            let mut decided = Vec::new();
            let register = |p: &Pipeline| {
                let rules: Vec<usize> = (0..p.jail_names().len()).map(|j| p.rule_texts(j).0.len()).collect();
                crate::telemetry::PipelineMetrics::register(p.jail_names(), &rules)
            };
            let mut metrics = with_metrics.then(|| register(&pipeline));
            let mut published = std::time::Instant::now();
            let apply = |p: &mut Pipeline, line: &[u8], now: i64, decided: &mut Vec<crate::policy::Decision>| {
                p.process(line, now, |e| {
                    if let Event::Decision(d) = e {
                        decided.push(d.clone());
                    }
                });
            };
            let mut flushed = std::time::Instant::now();
            while let Some(msg) = rx.blocking_recv() {
                let arrived = std::time::Instant::now();
                // One clock read per batch: the wall clock bounds the lines' own times.
                let wall = wall_clock();
                let now = pipeline.tick(wall);
                match msg {
                    Msg::Stream(chunk) => splitter.feed(&chunk, |l| apply(&mut pipeline, l, wall, &mut decided)),
                    Msg::Frames(frames) => frames.iter().for_each(|f| apply(&mut pipeline, f, wall, &mut decided)),
                    Msg::Control(req, reply) => {
                        let reloading = req == crate::control::Request::Reload;
                        let _ = reply.send(crate::control::handle(&mut pipeline, &mut sink, reload.as_ref(), req, now));
                        // A reload may have changed the jails, and so the handles' labels.
                        if reloading && metrics.is_some() {
                            metrics = Some(register(&pipeline));
                        }
                    }
                    Msg::Stop => break,
                }
                sink.ban(std::mem::take(&mut decided), arrived);
                if flushed.elapsed() >= std::time::Duration::from_secs(1) {
                    flushed = std::time::Instant::now();
                    sink.flush_state();
                }
                // Counters reach the exporter at most ten times a second.
                if let Some(m) = &metrics
                    && (published.elapsed() >= std::time::Duration::from_millis(100) || rx.is_empty())
                {
                    published = std::time::Instant::now();
                    let (tracked, evicted) = pipeline.tracked();
                    let banned = pipeline.banned_per_jail();
                    m.publish(pipeline.stats(), tracked, evicted, &banned, arrived.elapsed().as_secs_f64());
                }
            }
            splitter.finish(|l| apply(&mut pipeline, l, wall_clock(), &mut decided));
            sink.ban(std::mem::take(&mut decided), std::time::Instant::now());
            let st = sink.finish();
            eprintln!("mailpipe: sink: {}", st.summary());
            Ok(())
        })
        .map_err(DaemonError::Runtime)?;

    let stats = rt.block_on(async {
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut stats = Vec::new();
        let stdin_only = inputs == [InputConfig::Stdin];
        let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
        let mut eof_tx = Some(eof_tx);
        for input in inputs {
            let st = Arc::new(InputStats::default());
            let name = match input {
                InputConfig::Stdin => {
                    let (tx, st, eof) = (tx.clone(), st.clone(), eof_tx.take());
                    std::thread::Builder::new()
                        .name("stdin".into())
                        .spawn(move || {
                            read_stdin(&tx, &st);
                            if let Some(eof) = eof {
                                let _ = eof.send(());
                            }
                        })
                        .map_err(DaemonError::Runtime)?;
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
                    let sock = bind_udp(parse_addr(&name, listen)?, *recv_buffer).map_err(|error| DaemonError::Input {
                        input: name.clone(),
                        error,
                    })?;
                    announce("udp", sock.local_addr());
                    tasks.spawn(net::udp(sock, allow, *max_frame, tx.clone(), st.clone(), stop.clone()));
                    name
                }
                InputConfig::Tcp {
                    listen,
                    allow,
                    max_frame,
                    max_connections,
                    idle_timeout,
                } => {
                    let name = format!("tcp {listen}");
                    let allow = allow_list(&name, allow)?;
                    let listener = tokio::net::TcpListener::bind(parse_addr(&name, listen)?)
                        .await
                        .map_err(|error| DaemonError::Input {
                            input: name.clone(),
                            error,
                        })?;
                    announce("tcp", listener.local_addr());
                    let limits = TcpLimits {
                        max_frame: *max_frame,
                        max_connections: *max_connections,
                        idle_timeout: std::time::Duration::from_secs(idle_timeout.secs().max(1)),
                    };
                    tasks.spawn(net::tcp(listener, allow, limits, tx.clone(), st.clone(), stop.clone()));
                    name
                }
                InputConfig::Unix { path, max_frame } => {
                    let name = format!("unix {path}");
                    let _ = std::fs::remove_file(path);
                    let sock = tokio::net::UnixDatagram::bind(path).map_err(|error| DaemonError::Input {
                        input: name.clone(),
                        error,
                    })?;
                    eprintln!("mailpipe: listening on unix {path}");
                    tasks.spawn(net::unix(sock, *max_frame, tx.clone(), st.clone(), stop.clone()));
                    name
                }
            };
            stats.push((name, st));
        }
        if let Some(path) = control {
            let listener = crate::control::bind(path).map_err(|error| DaemonError::Input {
                input: format!("control {}", path.display()),
                error,
            })?;
            eprintln!("mailpipe: listening on control {}", path.display());
            tokio::spawn(crate::control::serve(listener, tx.clone(), stats.clone(), stop.clone()));
        }
        if with_metrics {
            let (inputs, stop) = (stats.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => crate::telemetry::publish_edges(&inputs, &sink_stats),
                    }
                }
            });
        }
        // SIGHUP: reload, as `mailpipe reload` does; the answer goes to the log.
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            let (tx, stop) = (tx.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        s = hup.recv() => if s.is_none() { return },
                    }
                    let (rtx, rrx) = tokio::sync::oneshot::channel();
                    if tx.send(Msg::Control(crate::control::Request::Reload, rtx)).await.is_err() {
                        return;
                    }
                    match rrx.await {
                        Ok(v) if v["ok"] == true => eprintln!("mailpipe: reloaded: jails {}", v["jails"]),
                        Ok(v) => eprintln!(
                            "mailpipe: error: reload refused, the running pipeline stays: {}",
                            v["error"].as_str().unwrap_or("")
                        ),
                        Err(_) => return,
                    }
                }
            });
        }
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
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        // Everything received is queued before this; the pipeline drains up to it.
        let _ = tx.send(Msg::Stop).await;
        Ok::<_, DaemonError>(stats)
    })?;
    // The stdin thread may sit in read(); it is not waited for.
    rt.shutdown_background();
    worker
        .join()
        .map_err(|_| DaemonError::Runtime(std::io::Error::other("pipeline thread panicked")))??;
    Ok(stats)
}

/// A saved ban as a decision for the sink, with the time it has left.
fn restored_decision(b: &crate::policy::Ban, now: i64) -> crate::policy::Decision {
    crate::policy::Decision {
        net: b.net,
        jail: b.jail.clone(),
        failures: 0,
        ban_for: (b.until - now).max(1) as u64,
        offence: b.offence,
        time: b.since,
        since: now,
        reason: b.reason,
        narrowed_from: None,
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
        eprintln!("mailpipe: listening on {kind} {a}");
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

/// Reads stdin in chunks until EOF; waits when the queue is full.
fn read_stdin(tx: &mpsc::Sender<Msg>, stats: &InputStats) {
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut buf = vec![0u8; 256 << 10];
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Msg::Stream(buf)).is_err() {
                    return;
                }
                stats.received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                net::tracing_warn(&format!("reading stdin: {e}"));
                return;
            }
        }
    }
}
