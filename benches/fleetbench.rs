//! The fleet's figures, on loopback with a real `redis-server` (Debian package redis-server):
//!
//!   cargo build --release && cargo run --release --example fleetbench -- [LOG]
//!
//! 1. Propagation: node A reads lines on stdin (a jail with maxretry 1: every line a ban, each
//!    from a new address), node B reads nothing and applies the fleet's bans to a dry-run sink.
//!    Latency is from writing the line to A to B printing the ban, at 100 bans/s for 10 s and for
//!    a burst of 10,000. Both ends are timed by this process.
//! 2. Redis memory for a day of 100,000 bans: the bytes the stream takes (MEMORY USAGE).
//! 3. With LOG (a generator log): `mailpipe run` on it with `share: [Bans, Failures]` against
//!    no fleet (medians of 3).
//!
//! Runs everything in a temporary directory and stops what it started.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The mailpipe binary built beside this example (`target/release/mailpipe`).
fn bin() -> std::path::PathBuf {
    let me = std::env::current_exe().unwrap();
    me.parent().and_then(|p| p.parent()).unwrap().join("mailpipe")
}

struct Kill(Child);

/// `mailpipe run -c cfg`, its stderr discarded.
fn node(cfg: &std::path::Path, stdin: Stdio, stdout: Stdio) -> Kill {
    Kill(
        Command::new(bin())
            .args(["run", "-c"])
            .arg(cfg)
            .env("TZ", "UTC")
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(dir: &std::path::Path) -> (Kill, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "yes",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let out = BufReader::new(c.stdout.take().unwrap());
    for l in out.lines().map_while(Result::ok) {
        if l.contains("Ready to accept connections") {
            break;
        }
    }
    (Kill(c), port)
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn pipeline(dir: &std::path::Path, name: &str, fleet: &str, inputs: &str, jails: &str) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.ron"));
    std::fs::write(&p, format!("Pipeline(inputs: [{inputs}], {fleet} {jails})")).unwrap();
    p
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn line(i: u32) -> String {
    format!(
        "Dec  1 10:00:00 mx1 postfix/smtpd[7]: warning: unknown[10.{}.{}.{}]: SASL LOGIN authentication failed: x\n",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    )
}

fn main() {
    let log = std::env::args().nth(1);
    let dir = tempfile::tempdir().unwrap();
    let (_redis, port) = redis(dir.path());
    let url = format!("redis://127.0.0.1:{port}/0");
    let jail = "jails: [(name: \"sasl\", programs: [\"postfix/*\"], maxretry: 1, findtime: \"10m\", rules: [\"warning: [^\\\\[]*\\\\[<HOST>\\\\]: SASL \\\\S+ authentication failed:\"])]";
    let a_cfg = pipeline(
        dir.path(),
        "a",
        &format!("fleet: Some((url: \"{url}\", node: \"a\")),"),
        "Stdin",
        jail,
    );
    let b_cfg = pipeline(dir.path(), "b", &format!("fleet: Some((url: \"{url}\", node: \"b\")),"), "", jail);
    // b prints the bans it learns; a is fed the failures.
    let mut b = node(&b_cfg, Stdio::null(), Stdio::piped());
    let mut a = node(&a_cfg, Stdio::piped(), Stdio::null());
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let out = b.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                let _ = tx.send((v["ip"].as_str().unwrap_or("").to_string(), Instant::now()));
            }
        }
    });
    let mut stdin = a.0.stdin.take().unwrap();
    // Both nodes connect at start; the first ban through says they have.
    stdin.write_all(line(0).as_bytes()).unwrap();
    stdin.flush().unwrap();
    rx.recv_timeout(Duration::from_secs(30)).expect("the fleet works");

    let mut run = |name: &str, from: u32, n: u32, rate: Option<u32>| {
        let mut sent = HashMap::new();
        let start = Instant::now();
        for k in 0..n {
            if let Some(r) = rate {
                let due = start + Duration::from_secs_f64(f64::from(k) / f64::from(r));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let i = from + k;
            let l = line(i);
            stdin.write_all(l.as_bytes()).unwrap();
            stdin.flush().unwrap();
            sent.insert(format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255), Instant::now());
        }
        let mut lat = Vec::new();
        while lat.len() < n as usize {
            let (ip, at) = rx.recv_timeout(Duration::from_secs(30)).expect("every ban arrives");
            if let Some(t) = sent.get(&ip) {
                lat.push(at.duration_since(*t).as_secs_f64() * 1000.0);
            }
        }
        println!(
            "| {name} | {n} | {:.2} | {:.2} | {:.2} |",
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99),
            percentile(&mut lat, 1.0)
        );
    };
    println!("| propagation, line on A to ban on B | bans | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    run("100 bans/s for 10 s", 1, 1000, Some(100));
    run("burst of 10,000", 10_000, 10_000, None);
    drop(stdin);
    drop(a);
    drop(b);

    // A day at 100,000 bans: events as the nodes write them, trimmed the same way.
    let before: u64 = cli(port, &["MEMORY", "USAGE", "mailpipe:bans"]).parse().unwrap_or(0);
    let ev = |i: u32| {
        format!(
            "{{\"v\":1,\"node\":\"mx1\",\"kind\":\"ban\",\"net\":\"10.{}.{}.{}/32\",\"jail\":\"postfix-sasl\",\"reason\":\"threshold\",\"offence\":1,\"failures\":5,\"time\":1796100000,\"since\":1796100000,\"ban_for\":3600,\"ports\":[[25,25],[465,465],[587,587]]}}",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        )
    };
    let mut feed = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        let w = feed.stdin.as_mut().unwrap();
        for i in 0..100_000 {
            let e = ev(i);
            let args = ["XADD", "mailpipe:day", "*", "e", e.as_str()];
            let mut cmd = format!("*{}\r\n", args.len());
            for a in args {
                cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            w.write_all(cmd.as_bytes()).unwrap();
        }
    }
    feed.wait().unwrap();
    let day: u64 = cli(port, &["MEMORY", "USAGE", "mailpipe:day"]).parse().unwrap_or(0);
    println!(
        "\nRedis memory for 100,000 bans (a day at retain: \"1d\"): {:.1} MiB in the stream ({} entries; the bans stream held {} bytes before)",
        day as f64 / (1 << 20) as f64,
        cli(port, &["XLEN", "mailpipe:day"]),
        before
    );

    let Some(log) = log else { return };
    let mail = format!("{}/pipelines/mail.ron", env!("CARGO_MANIFEST_DIR"));
    let plain = dir.path().join("plain.ron");
    std::fs::write(&plain, format!("Pipeline(include: [(file: \"{mail}\")], inputs: [Stdin])")).unwrap();
    // A stream of its own for each run: no run reads another's failures back.
    let shared: Vec<std::path::PathBuf> = (0..3)
        .map(|k| {
            let p = dir.path().join(format!("shared{k}.ron"));
            std::fs::write(
                &p,
                format!("Pipeline(include: [(file: \"{mail}\")], inputs: [Stdin], fleet: Some((url: \"{url}\", node: \"t\", prefix: \"run{k}\", share: [Bans, Failures])))"),
            )
            .unwrap();
            p
        })
        .collect();
    let lines = BufReader::new(std::fs::File::open(&log).unwrap()).lines().count();
    println!("\n| mailpipe run on {lines} lines | median s | lines/s |\n|---|---:|---:|");
    for (name, cfgs) in [("no fleet", vec![plain; 3]), ("share: [Bans, Failures]", shared)] {
        let mut t: Vec<f64> = cfgs
            .iter()
            .map(|cfg| {
                let start = Instant::now();
                let st = Command::new(bin())
                    .args(["run", "--dry-run", "-c"])
                    .arg(cfg)
                    .stdin(std::fs::File::open(&log).unwrap())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                assert!(st.success());
                start.elapsed().as_secs_f64()
            })
            .collect();
        let m = percentile(&mut t, 0.5);
        println!("| {name} | {m:.3} | {:.0} |", lines as f64 / m);
    }
}
