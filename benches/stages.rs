//! Micro-benchmarks per stage and one end to end, on realistic lines (`contrib/sample/maillog`,
//! made by the shared generator). `cargo bench`; `benches/compare.sh` measures whole commands.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mailpipe::clock::Mode;
use mailpipe::config::Config;
use mailpipe::matcher::Matcher;
use mailpipe::parse::{Parser, Zone};
use mailpipe::pipeline::Pipeline;
use mailpipe::prefilter::Prefilter;
use mailpipe::window::{Threshold, Window, WindowConfig};

const SASL: &str =
    "Jun 17 03:14:07 mx1 postfix/smtpd[175371]: warning: unknown[46.38.145.252]: SASL LOGIN authentication failed: UGFzc3dvcmQ6";
const DOVECOT: &str = "Jun 17 03:14:08 mx1 dovecot: imap-login: Disconnected (auth failed, 3 attempts in 12 secs): user=<info@example.org>, method=PLAIN, rip=203.0.113.50, lip=192.0.2.10, TLS, session=<x>";
const QUIET: &str = "Jun 17 03:14:09 mx1 postfix/smtpd[175371]: disconnect from mail-a.example.net[198.51.100.20] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5";
const RFC5424: &str = "<20>1 2026-11-22T21:59:13.053111+00:00 vm postfix/smtpd 175371 - -  warning: unknown[46.38.145.252]: SASL LOGIN authentication failed: x";

fn cfg() -> Config {
    let mut c = Config::builtin();
    c.parse.timezone = Some("UTC".into());
    c
}

fn stages(c: &mut Criterion) {
    let cfg = cfg();
    let zone = Zone::resolve(Some("UTC")).unwrap();
    let parser = Parser::new(zone);
    let mut g = c.benchmark_group("parse");
    g.bench_function("rfc3164_fast_path", |b| b.iter(|| black_box(parser.parse(black_box(SASL)))));
    g.bench_function("rfc5424_syslog_loose", |b| b.iter(|| black_box(parser.parse(black_box(RFC5424)))));
    g.finish();

    let mut matcher = Matcher::new(&cfg.jails, &cfg.origins, &cfg.matcher).unwrap();
    let prefilter = Prefilter::new(matcher.literal_sets());
    let mut g = c.benchmark_group("prefilter");
    g.bench_function("reject_quiet_line", |b| {
        b.iter(|| black_box(prefilter.is_candidate(black_box(QUIET.as_bytes()))))
    });
    g.bench_function("pass_attack_line", |b| {
        b.iter(|| black_box(prefilter.is_candidate(black_box(SASL.as_bytes()))))
    });
    g.finish();

    let mut g = c.benchmark_group("matcher");
    let all = prefilter.candidates(true).to_vec();
    for (name, line) in [("postfix_sasl", SASL), ("dovecot_login", DOVECOT)] {
        let rec = parser.parse(line);
        let mut out = Vec::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                matcher.find(black_box(&rec), &all, &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("window");
    let mut w = Window::new(
        vec![Threshold {
            maxretry: 5,
            findtime: 900,
            ..Threshold::default()
        }],
        &WindowConfig::default(),
    );
    let mut i = 0u32;
    g.bench_function("record_100k_addresses", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let ip = ipnet::IpNet::from(IpAddr::from((0xC633_0000u32 + (i % 100_000)).to_be_bytes()));
            let t = i64::from(i / 100);
            black_box(w.record(0, ip, t, t))
        })
    });
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let sample = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/sample/maillog")).unwrap();
    let lines: Vec<&[u8]> = sample.split(|&b| b == b'\n').collect();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("sample_maillog_mail_ron", |b| {
        let mut p = Pipeline::new(&cfg().stages().unwrap(), Mode::Replay).unwrap();
        b.iter(|| {
            for l in &lines {
                p.process(l, 1_781_700_000, |_| {});
            }
        })
    });
    g.finish();
}

criterion_group!(benches, stages, end_to_end);
criterion_main!(benches);
