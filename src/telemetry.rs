//! Prometheus metrics (`metrics` + `metrics-exporter-prometheus`).
//!
//! Every handle is registered once at start, labels included; the hot path does not touch them.
//! The pipeline thread copies its plain counters into the handles once per batch
//! (`Counter::absolute`), so per-line work stays a `u64` increment. Histograms have explicit
//! buckets: without them the exporter would render summaries.

use std::net::SocketAddr;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::input::net::InputStats;
use crate::pipeline::Stats;
use crate::sink::SinkStats;

/// Buckets of the latency histograms, in seconds.
const LATENCY_BUCKETS: &[f64] = &[1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Starts the `/metrics` HTTP listener on its own thread (so a busy pipeline never stalls a scrape).
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("metrics on {addr}: {e}"))?;
    gauge!("mailpipe_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(())
}

/// Handles for one jail.
struct JailHandles {
    matches: Vec<Counter>,
    ignored: Counter,
    ignored_ip: Counter,
    bans: Counter,
    currently_banned: Gauge,
}

/// The pipeline's counters as Prometheus handles.
pub struct PipelineMetrics {
    lines: Counter,
    skipped: Counter,
    parsed: Counter,
    time_unparsed: Counter,
    invalid_utf8: Counter,
    tracked: Gauge,
    evicted: Counter,
    batch: Histogram,
    jails: Vec<JailHandles>,
}

impl PipelineMetrics {
    /// Registers every handle: `rules[j]` is the number of rules of jail `names[j]`.
    pub fn register(names: &[String], rules: &[usize]) -> PipelineMetrics {
        let jails = names
            .iter()
            .zip(rules)
            .map(|(n, &r)| JailHandles {
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
            invalid_utf8: counter!("mailpipe_lines_invalid_utf8_total"),
            tracked: gauge!("mailpipe_tracked_addresses"),
            evicted: counter!("mailpipe_evicted_total"),
            batch: histogram!("mailpipe_batch_seconds"),
            jails,
        }
    }

    /// Copies the counters (once per batch). `banned[j]` is jail j's active bans.
    pub fn publish(&self, s: &Stats, tracked: usize, evicted: u64, banned: &[usize], batch_secs: f64) {
        self.lines.absolute(s.lines);
        self.skipped.absolute(s.skipped);
        self.parsed.absolute(s.parsed);
        self.time_unparsed.absolute(s.time_unparsed);
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
    }
}

/// Copies the inputs' and the sink's counters (the daemon calls it every second).
pub fn publish_edges(inputs: &[(String, std::sync::Arc<InputStats>)], sink: &SinkStats) {
    use std::sync::atomic::Ordering::Relaxed;
    for (name, st) in inputs {
        counter!("mailpipe_input_messages_total", "input" => name.clone()).absolute(st.received.load(Relaxed));
        for (reason, v) in [
            ("queue_full", &st.dropped_queue_full),
            ("oversized", &st.dropped_oversized),
            ("bad_count", &st.bad_count),
            ("not_allowed", &st.not_allowed),
            ("too_many_connections", &st.refused_connections),
            ("kernel", &st.kernel_drops),
        ] {
            counter!("mailpipe_input_dropped_total", "input" => name.clone(), "reason" => reason).absolute(v.load(Relaxed));
        }
    }
    counter!("mailpipe_sink_applied_total").absolute(sink.applied.load(Relaxed));
    counter!("mailpipe_sink_errors_total").absolute(sink.errors.load(Relaxed));
}
