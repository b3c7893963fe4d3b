//! The real metrics endpoint, scraped over HTTP after a run: the counters equal what was sent.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

use common::Mailpipe;

fn scrape(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// The value of the sample whose name and labels are exactly `series`.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn counters_equal_what_was_sent() {
    // A port the OS picked, handed to the daemon.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.ron");
    std::fs::write(
        &cfg,
        format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")], inputs: [Udp(listen: \"127.0.0.1:0\")], metrics: \"127.0.0.1:{port}\")",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let mp = Mailpipe::start(&cfg, 2);
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let now = chrono::Utc::now().format("%b %e %H:%M:%S");
    for _ in 0..5 {
        let l = format!("<22>{now} mx1 postfix/smtpd[7]: warning: unknown[198.51.100.9]: SASL LOGIN authentication failed: x");
        u.send_to(l.as_bytes(), ("127.0.0.1", mp.port("udp", 0))).unwrap();
    }
    for _ in 0..2 {
        let l = format!("<22>{now} mx1 postfix/smtpd[7]: connect from mail.example.net[192.0.2.1]");
        u.send_to(l.as_bytes(), ("127.0.0.1", mp.port("udp", 0))).unwrap();
    }
    assert_eq!(mp.next_ban()["ip"], "198.51.100.9");
    // The edges' counters are published every second: scrape until they are in (bounded).
    let input = "mailpipe_input_messages_total{input=\"udp 127.0.0.1:0\"}";
    let deadline = std::time::Instant::now() + common::LIMIT;
    let body = loop {
        let b = scrape(port);
        if value(&b, input) == Some(7.0) && value(&b, "mailpipe_sink_applied_total{sink=\"dry-run\"}") == Some(1.0) {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "metrics never showed the 7 lines:\n{b}");
        std::thread::yield_now();
    };
    for (series, want) in [
        ("mailpipe_lines_total", 7.0),
        ("mailpipe_lines_skipped_total", 2.0),
        ("mailpipe_lines_parsed_total", 5.0),
        ("mailpipe_matches_total{jail=\"postfix-sasl\",rule=\"0\"}", 5.0),
        ("mailpipe_bans_total{jail=\"postfix-sasl\"}", 1.0),
        ("mailpipe_banned{jail=\"postfix-sasl\"}", 1.0),
        ("mailpipe_input_dropped_total{input=\"udp 127.0.0.1:0\",reason=\"queue_full\"}", 0.0),
        ("mailpipe_ban_latency_seconds_count", 1.0),
        (
            "mailpipe_bans_applied_total{jail=\"postfix-sasl\",reason=\"threshold\",sink=\"dry-run\"}",
            1.0,
        ),
    ] {
        assert_eq!(value(&body, series), Some(want), "{series}\n{body}");
    }
    // Histograms have buckets (not summaries), and the build is identified.
    assert!(body.contains("mailpipe_ban_latency_seconds_bucket{le=\"0.001\"}"), "{body}");
    assert!(body.contains("mailpipe_build_info{version=\""), "{body}");

    // The dashboard and the alerts ask only for metrics this binary really exports.
    for file in ["contrib/grafana/mailpipe.json", "contrib/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let names: std::collections::BTreeSet<&str> = text
            .match_indices("mailpipe_")
            .map(|(i, _)| {
                &text[i..i + text[i..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(text.len() - i)]
            })
            .collect();
        for name in names {
            assert!(
                body.lines().any(|l| l.starts_with(name)),
                "{file} uses {name}, which /metrics does not have"
            );
        }
    }
    mp.stop();
}

#[test]
fn half_open_scrapers_cannot_starve_the_inputs() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::pipeline_with(
        dir.path(),
        "m.ron",
        "Tcp(listen: \"127.0.0.1:0\")",
        &format!("metrics: \"127.0.0.1:{port}\","),
    );
    let mp = Mailpipe::start(&cfg, 2);
    // Hundreds of connections to /metrics that never send a request.
    // Once the listen backlog is full, connecting hangs: give up on those quickly.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(20)).ok())
        .collect();
    let mut t = TcpStream::connect(("127.0.0.1", mp.port("tcp", 0))).unwrap();
    for _ in 0..5 {
        writeln!(t, "{}", common::sasl_line("198.51.100.66")).unwrap();
    }
    assert_eq!(mp.next_ban()["ip"], "198.51.100.66");
    // The endpoint holds a few of them; the rest wait in the kernel, not in our descriptors.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", mp.pid())).unwrap().count();
    assert!(fds < 64, "{fds} descriptors open with {} idle scrapers", idle.len());
    drop((idle, t));
    mp.stop();
}
