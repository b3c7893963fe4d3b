//! Prometheus metrics (`metrics` + `metrics-exporter-prometheus`).
//!
//! Every handle is registered once at start, labels included; the hot path does not touch them.
//! The pipeline thread copies its plain counters into the handles once per batch
//! (`Counter::absolute`), so per-line work stays a `u64` increment, and what it publishes costs
//! the same whatever the number of bans (kept per jail as bans come and go). Histograms have
//! explicit buckets: without them the exporter would render summaries.
//!
//! `/metrics` is served by hyper on a thread of its own, bounded so that no client can starve
//! the inputs: at most `MAX_SCRAPERS` connections at once (more wait in the kernel's backlog,
//! holding no descriptor of ours), a request head within `HEADER_TIMEOUT` and 8 KiB, a whole
//! exchange within `EXCHANGE_TIMEOUT`, one request per connection.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::input::net::InputStats;
use crate::pipeline::Stats;
use crate::sink::SinkStats;

/// Buckets of the latency histograms, in seconds.
const LATENCY_BUCKETS: &[f64] = &[1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Scrapes served at once.
pub const MAX_SCRAPERS: usize = 8;
/// Time for a client to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole request and answer.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);

/// Installs the recorder and starts the `/metrics` listener on its own thread (so a busy
/// pipeline never stalls a scrape); the address it is bound to.
pub fn serve(addr: SocketAddr) -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("metrics on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    gauge!("mailpipe_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match rt {
                Ok(rt) => rt.block_on(http(listener, handle)),
                Err(e) => tracing::error!("metrics: {e}"),
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(bound)
}

/// Serves `GET /metrics` within the bounds above; keeps the exporter's upkeep going.
async fn http(listener: std::net::TcpListener, handle: PrometheusHandle) {
    use hyper::{Response, StatusCode};
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let permit = tokio::select! {
            _ = upkeep.tick() => { handle.run_upkeep(); continue }
            p = slots.clone().acquire_owned() => p.expect("never closed"),
        };
        let stream = tokio::select! {
            _ = upkeep.tick() => { handle.run_upkeep(); continue }
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let reply = if req.uri().path() == "/metrics" {
                    Response::new(http_body_util::Full::new(bytes::Bytes::from(handle.render())))
                } else {
                    let mut r = Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"see /metrics\n")));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                };
                async move { Ok::<_, std::convert::Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(8192)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, conn).await;
        });
    }
}

/// Handles for one jail.
struct JailHandles {
    matches: Vec<Counter>,
    ignored: Counter,
    ignored_ip: Counter,
    bans: Counter,
    /// The bans of its `count` kind (shared by the jails of that kind).
    by_count: usize,
    currently_banned: Gauge,
}

/// The pipeline's counters as Prometheus handles.
pub struct PipelineMetrics {
    lines: Counter,
    skipped: Counter,
    parsed: Counter,
    time_unparsed: Counter,
    time_clamped: Counter,
    invalid_utf8: Counter,
    tracked: Gauge,
    evicted: Counter,
    batch: Histogram,
    jails: Vec<JailHandles>,
    /// `mailpipe_decisions_total` per `count` kind, and its label.
    counts: Vec<(&'static str, Counter)>,
    /// Active bans of no configured jail: `recidive`, and operators' `manual` ones.
    others: [Gauge; 2],
}

impl PipelineMetrics {
    /// Registers every handle: `rules[j]` is the number of rules of jail `names[j]`, `counts[j]`
    /// what it counts (`Count::name`).
    pub fn register(names: &[String], rules: &[usize], counts: &[&'static str]) -> PipelineMetrics {
        let mut kinds: Vec<&'static str> = counts.to_vec();
        kinds.sort_unstable();
        kinds.dedup();
        let jails = names
            .iter()
            .zip(rules)
            .zip(counts)
            .map(|((n, &r), c)| JailHandles {
                by_count: kinds.iter().position(|k| k == c).unwrap_or(0),
                matches: (0..r)
                    .map(|i| counter!("mailpipe_matches_total", "jail" => n.clone(), "rule" => i.to_string()))
                    .collect(),
                ignored: counter!("mailpipe_ignored_total", "jail" => n.clone(), "reason" => "rule"),
                ignored_ip: counter!("mailpipe_ignored_total", "jail" => n.clone(), "reason" => "address"),
                bans: counter!("mailpipe_bans_total", "jail" => n.clone()),
                currently_banned: gauge!("mailpipe_banned", "jail" => n.clone()),
            })
            .collect();
        PipelineMetrics {
            lines: counter!("mailpipe_lines_total"),
            skipped: counter!("mailpipe_lines_skipped_total"),
            parsed: counter!("mailpipe_lines_parsed_total"),
            time_unparsed: counter!("mailpipe_lines_time_unparsed_total"),
            time_clamped: counter!("mailpipe_lines_time_clamped_total"),
            invalid_utf8: counter!("mailpipe_lines_invalid_utf8_total"),
            tracked: gauge!("mailpipe_tracked_addresses"),
            evicted: counter!("mailpipe_evicted_total"),
            batch: histogram!("mailpipe_batch_seconds"),
            jails,
            counts: kinds
                .into_iter()
                .map(|k| (k, counter!("mailpipe_decisions_total", "count" => k)))
                .collect(),
            others: crate::policy::BAN_NAMES.map(|n| gauge!("mailpipe_banned", "jail" => n)),
        }
    }

    /// Copies the counters (once per batch). `banned[j]` is jail j's active bans, then those of
    /// each of `policy::BAN_NAMES`.
    pub fn publish(&self, s: &Stats, tracked: usize, evicted: u64, banned: &[usize], batch_secs: f64) {
        for (g, &b) in self.others.iter().zip(&banned[s.jails.len().min(banned.len())..]) {
            g.set(b as f64);
        }
        self.lines.absolute(s.lines);
        self.skipped.absolute(s.skipped);
        self.parsed.absolute(s.parsed);
        self.time_unparsed.absolute(s.time_unparsed);
        self.time_clamped.absolute(s.time_clamped);
        self.invalid_utf8.absolute(s.invalid_utf8);
        self.tracked.set(tracked as f64);
        self.evicted.absolute(evicted);
        self.batch.record(batch_secs);
        for ((h, js), &b) in self.jails.iter().zip(&s.jails).zip(banned) {
            for (c, &n) in h.matches.iter().zip(&js.rules) {
                c.absolute(n);
            }
            h.ignored.absolute(js.ignore_rules.iter().sum());
            h.ignored_ip.absolute(js.ignored_ip);
            h.bans.absolute(js.bans);
            h.currently_banned.set(b as f64);
        }
        for (k, (_, c)) in self.counts.iter().enumerate() {
            c.absolute(
                self.jails
                    .iter()
                    .zip(&s.jails)
                    .filter(|(h, _)| h.by_count == k)
                    .map(|(_, js)| js.bans)
                    .sum(),
            );
        }
    }
}

/// How far the state file is behind.
pub fn publish_state(lag: &crate::state::Lag) {
    gauge!("mailpipe_state_pending").set(lag.pending as f64);
    gauge!("mailpipe_state_failing").set(if lag.error.is_some() { 1.0 } else { 0.0 });
}

/// Copies the inputs' and the sink's counters, and the bytes queued for the pipeline (the
/// daemon calls it every second).
pub fn publish_edges(
    inputs: &[(String, std::sync::Arc<InputStats>)],
    sinks: &[(String, std::sync::Arc<SinkStats>)],
    queued: usize,
    fleet: Option<&crate::fleet::FleetStats>,
) {
    gauge!("mailpipe_queue_bytes").set(queued as f64);
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(f) = fleet {
        gauge!("mailpipe_fleet_connected").set(if f.connected.load(Relaxed) { 1.0 } else { 0.0 });
        gauge!("mailpipe_fleet_lag_seconds").set(f.lag_ms.load(Relaxed) as f64 / 1000.0);
        gauge!("mailpipe_fleet_waiting").set(f.waiting.load(Relaxed) as f64);
        counter!("mailpipe_fleet_events_total", "direction" => "in").absolute(f.events_in.load(Relaxed));
        counter!("mailpipe_fleet_events_total", "direction" => "out").absolute(f.events_out.load(Relaxed));
        for (reason, v) in [("malformed", &f.malformed), ("foreign", &f.foreign), ("outbox_full", &f.dropped)] {
            counter!("mailpipe_fleet_dropped_total", "reason" => reason).absolute(v.load(Relaxed));
        }
        counter!("mailpipe_fleet_errors_total").absolute(f.errors.load(Relaxed));
    }
    for (name, st) in inputs {
        counter!("mailpipe_input_messages_total", "input" => name.clone()).absolute(st.received.load(Relaxed));
        for (reason, v) in [
            ("queue_full", &st.dropped_queue_full),
            ("oversized", &st.dropped_oversized),
            ("not_allowed", &st.not_allowed),
            ("too_many_connections", &st.refused_connections),
            ("evicted", &st.evicted),
            ("kernel", &st.kernel_drops),
        ] {
            counter!("mailpipe_input_dropped_total", "input" => name.clone(), "reason" => reason).absolute(v.load(Relaxed));
        }
    }
    for (name, st) in sinks {
        counter!("mailpipe_sink_applied_total", "sink" => name.clone()).absolute(st.applied.load(Relaxed));
        counter!("mailpipe_sink_errors_total", "sink" => name.clone()).absolute(st.errors.load(Relaxed));
    }
}
