//! Sinks beyond the firewall, against a real HTTP server on loopback and real programs: a
//! webhook gets each ban with its secret header; one that fails is retried; one that hangs
//! delays no other sink; a command gets batches on stdin, a failing one is retried, a hanging
//! one is killed; contrib/actions/abuseipdb-report reports through a Command sink.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;

use common::{Mailpipe, sasl_line};
use serde_json::Value;

/// One request the server took: its head and body.
#[derive(Debug)]
struct Request {
    head: String,
    body: String,
}

/// How the server answers the nth request (0-based).
type Answer = fn(usize) -> Option<u16>;

/// An HTTP/1.1 server on a port the OS picks: each request goes to `requests`; `answer` says
/// the status, or `None` to hold the connection open without answering (until the test ends).
fn server(answer: Answer) -> (u16, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let Some(req) = read_request(&mut stream) else { continue };
            if tx.send(req).is_err() {
                return;
            }
            match answer(n) {
                Some(code) => {
                    let _ = write!(stream, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
                None => held.push(stream),
            }
        }
    });
    (port, rx)
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn next(rx: &mpsc::Receiver<Request>) -> Request {
    rx.recv_timeout(common::LIMIT).expect("a request within the time limit")
}

/// A daemon on stdin with mail.ron's jails, a dry-run sink and `sink`.
fn daemon(dir: &std::path::Path, sink: &str) -> (Mailpipe, std::process::ChildStdin) {
    let cfg = common::pipeline_with(
        dir,
        "a.ron",
        "Stdin, Udp(listen: \"127.0.0.1:0\")",
        &format!("sinks: [DryRun, {sink}],"),
    );
    Mailpipe::start_piped(&cfg, 1)
}

fn attack(stdin: &mut std::process::ChildStdin, ip: &str) {
    for _ in 0..5 {
        writeln!(stdin, "{}", sasl_line(ip)).unwrap();
    }
    stdin.flush().unwrap();
}

fn events(body: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(body).unwrap();
    v["events"].as_array().unwrap().clone()
}

#[test]
fn a_webhook_gets_bans_with_its_secret_and_a_failing_one_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "Bearer s3cret\n").unwrap();
    // The first POST fails (503), the retry is taken.
    let (port, rx) = server(|n| Some(if n == 0 { 503 } else { 200 }));
    let sink = format!(
        "Webhook(url: \"http://127.0.0.1:{port}/hook\", headers: {{\"Authorization\": \"@{}\"}}, batch: \"1s\", timeout: \"5s\")",
        dir.path().join("token").display()
    );
    let (mp, mut stdin) = daemon(dir.path(), &sink);
    attack(&mut stdin, "198.51.100.9");
    assert_eq!(mp.next_ban()["ip"], "198.51.100.9");
    let first = next(&rx);
    assert!(first.head.starts_with("POST /hook HTTP/1.1"), "{}", first.head);
    assert!(
        first.head.to_ascii_lowercase().contains("authorization: bearer s3cret"),
        "{}",
        first.head
    );
    let again = next(&rx);
    assert_eq!(again.body, first.body, "the same batch, retried");
    let ev = events(&again.body);
    assert_eq!((ev[0]["kind"].as_str(), ev[0]["ip"].as_str()), (Some("ban"), Some("198.51.100.9")));
    drop(stdin);
    let log = mp.stop();
    assert!(log.contains("HTTP 503") && log.contains("kept for a retry"), "{log}");
}

#[test]
fn a_hanging_webhook_delays_no_other_sink() {
    let dir = tempfile::tempdir().unwrap();
    let (port, rx) = server(|_| None);
    let sink = format!("Webhook(url: \"http://127.0.0.1:{port}/\", batch: \"0s\", timeout: \"30s\")");
    let (mp, mut stdin) = daemon(dir.path(), &sink);
    attack(&mut stdin, "198.51.100.10");
    assert_eq!(mp.next_ban()["ip"], "198.51.100.10");
    // The webhook has the first batch and gets no answer ...
    next(&rx);
    // ... while the dry-run sink goes on.
    attack(&mut stdin, "198.51.100.11");
    assert_eq!(mp.next_ban()["ip"], "198.51.100.11");
    assert!(rx.try_recv().is_err(), "the webhook is still waiting for its answer");
    drop(stdin);
    common::signal(mp.pid(), libc::SIGKILL);
}

#[test]
fn a_command_gets_batches_on_stdin_a_failing_one_is_retried_a_hanging_one_killed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Fails the first time, then keeps each batch; never through a shell: the script is the
    // program, its arguments are fixed.
    let script = dir.path().join("keep");
    std::fs::write(
        &script,
        "#!/bin/sh\nset -e\nif [ ! -e \"$1/tried\" ]; then touch \"$1/tried\"; echo 'first try fails' >&2; exit 3; fi\ncat > \"$1/batch.$$\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sink = format!(
        "Command(program: \"{}\", args: [\"{}\"], batch: \"0s\", timeout: \"10s\", max_running: 2)",
        script.display(),
        out.display()
    );
    let (mp, mut stdin) = daemon(dir.path(), &sink);
    attack(&mut stdin, "198.51.100.12");
    assert_eq!(mp.next_ban()["ip"], "198.51.100.12");
    drop(stdin);
    // A stop delivers what waits: the retry within its time limit.
    let log = mp.stop();
    assert!(log.contains("first try fails") && log.contains("kept for a retry"), "{log}");
    let kept: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("batch."))
        .collect();
    assert_eq!(kept.len(), 1, "{log}");
    let ev = events(&std::fs::read_to_string(kept[0].path()).unwrap());
    assert_eq!(ev[0]["ip"], "198.51.100.12");

    // A program that hangs is killed at its time limit.
    let sink = "Command(program: \"/bin/sleep\", args: [\"600\"], batch: \"0s\", timeout: \"1s\")";
    let (mp, mut stdin) = daemon(dir.path(), sink);
    attack(&mut stdin, "198.51.100.13");
    assert_eq!(mp.next_ban()["ip"], "198.51.100.13");
    mp.wait_log("no answer within 1 s, killed");
    drop(stdin);
    common::signal(mp.pid(), libc::SIGKILL);
}

#[test]
fn the_abuseipdb_action_reports_each_ban() {
    if let Some(why) = common::missing(&[common::Need::Program("python3", "python3")]) {
        return common::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "k3y\n").unwrap();
    let (port, rx) = server(|_| Some(200));
    let sink = format!(
        "Command(program: \"{}/contrib/actions/abuseipdb-report\", args: [\"--key-file\", \"{}\", \"--endpoint\", \"http://127.0.0.1:{port}/api/v2/report\"], batch: \"0s\")",
        env!("CARGO_MANIFEST_DIR"),
        key.display()
    );
    let (mp, mut stdin) = daemon(dir.path(), &sink);
    // 192.0.2.0/24 is documentation space, not global: the action skips it; this one is global.
    attack(&mut stdin, "8.8.8.8");
    assert_eq!(mp.next_ban()["ip"], "8.8.8.8");
    let r = next(&rx);
    assert!(
        r.head.starts_with("POST /api/v2/report") && r.head.to_ascii_lowercase().contains("key: k3y"),
        "{}",
        r.head
    );
    assert!(r.body.contains("ip=8.8.8.8") && r.body.contains("categories=18"), "{}", r.body);
    drop(stdin);
    let log = mp.stop();
    assert!(!log.contains("mailpipe: error"), "{log}");
}
