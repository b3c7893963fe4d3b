//! A fleet of `mailpipe run` processes sharing bans and failures through a real `redis-server`
//! on a loopback port: a ban reaches every node and a bouncer, an unban anywhere lifts it
//! everywhere, failures spread over three nodes ban once, a node killed with -9 catches up
//! without applying anything twice, and Redis stopped mid-flood loses nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};

use common::{Mailpipe, Need, Reaper, cli, missing, sasl_line, skip};
use serde_json::Value;

/// A `redis-server` with its own directory, append-only file on, on a port the OS picked.
struct Redis {
    dir: PathBuf,
    port: u16,
    acl: Option<PathBuf>,
    child: Option<Reaper>,
}

impl Redis {
    fn start(dir: &Path, acl: Option<PathBuf>) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Redis {
            dir: dir.to_path_buf(),
            port,
            acl,
            child: None,
        };
        r.restart();
        r
    }

    /// Starts the server (again, on the same port and files) and waits until it serves.
    fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--appendonly",
            "yes",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if let Some(acl) = &self.acl {
            cmd.arg("--aclfile").arg(acl);
        }
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if l.contains("Ready to accept connections") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(common::LIMIT).expect("redis-server gets ready");
        self.child = Some(Reaper(child));
    }

    /// SIGTERM: Redis writes its append-only file and exits, as an operator's restart does.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            common::signal(c.0.id(), libc::SIGTERM);
            let _ = c.0.wait();
        }
    }

    fn url(&self, user: Option<&str>) -> String {
        match user {
            Some(u) => format!("redis://{u}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }
}

/// One node: `mailpipe run` on stdin, with a control socket, a state file and the fleet.
struct Node {
    mp: Mailpipe,
    stdin: Option<ChildStdin>,
    socket: PathBuf,
}

fn start_node(dir: &Path, name: &str, fleet: &str, inputs: &str) -> Node {
    let socket = dir.join(format!("{name}.sock"));
    let cfg = dir.join(format!("{name}.ron"));
    std::fs::write(
        &cfg,
        format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")], inputs: [{inputs}], control: \"{}\", state: \"{}\",\n fleet: Some(({fleet}, node: \"{name}\")))",
            env!("CARGO_MANIFEST_DIR"),
            socket.display(),
            dir.join(format!("{name}.state")).display(),
        ),
    )
    .unwrap();
    let (mp, stdin) = Mailpipe::start_piped(&cfg, 1);
    mp.wait_log("fleet: connected");
    Node {
        mp,
        stdin: Some(stdin),
        socket,
    }
}

impl Node {
    /// `n` Postfix SASL failures from `ip`.
    fn fail(&mut self, ip: &str, n: usize) {
        let stdin = self.stdin.as_mut().expect("a node with stdin");
        for _ in 0..n {
            writeln!(stdin, "{}", sasl_line(ip)).unwrap();
        }
        stdin.flush().unwrap();
    }

    /// The next decision that is not a ban restored from the state file.
    fn next(&self) -> Value {
        loop {
            let v = self.mp.next_ban();
            if v["restored"] != true {
                return v;
            }
        }
    }

    /// The addresses of the next `n` decisions, sorted.
    fn next_addresses(&self, n: usize) -> Vec<String> {
        sorted((0..n).map(|_| what(&self.next()).1).collect())
    }

    fn status(&self) -> Value {
        let (ok, out, err) = cli(&self.socket, &["status", "--json"]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Whatever else this node decided, without waiting.
    fn rest(&self) -> Vec<Value> {
        self.mp.bans.try_iter().filter(|v| v["restored"] != true).collect()
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn needs() -> bool {
    match missing(&[Need::Program("redis-server", "redis-server")]) {
        Some(reason) => {
            skip(&reason);
            false
        }
        None => true,
    }
}

/// A test's directory and its own redis-server (no ACL); `None` (skipped) without redis-server.
fn redis() -> Option<(tempfile::TempDir, Redis)> {
    if !needs() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path(), None);
    Some((dir, redis))
}

fn what(v: &Value) -> (String, String, String, String) {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    (s("kind"), s("ip"), s("reason"), s("node"))
}

#[test]
fn a_ban_reaches_every_node_and_an_unban_anywhere_lifts_it_everywhere() {
    if !needs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The ACL the README shows: a user that can touch only the fleet's keys.
    let secret = "fleet-s3cret-do-not-leak";
    let acl = dir.path().join("users.acl");
    std::fs::write(
        &acl,
        format!("user default off\nuser mailpipe on >{secret} ~mailpipe:* resetchannels -@all +xadd +xread +ping +hello +select\n"),
    )
    .unwrap();
    let redis = Redis::start(dir.path(), Some(acl));
    let pass = dir.path().join("redis.pass");
    std::fs::write(&pass, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let fleet = format!(
        "url: \"{}\", password_file: Some(\"{}\"), share: [Bans, Failures]",
        redis.url(Some("mailpipe")),
        pass.display()
    );
    let mut a = start_node(dir.path(), "a", &fleet, "Stdin");
    let b = start_node(dir.path(), "b", &fleet, "Stdin");
    // A bouncer: it reads no log, it applies the fleet's bans.
    let c = start_node(dir.path(), "c", &fleet.replace("Bans, Failures", "Bans"), "");

    a.fail("203.0.113.5", 5);
    assert_eq!(
        what(&a.next()),
        ("ban".into(), "203.0.113.5".into(), "threshold".into(), String::new())
    );
    for n in [&b, &c] {
        let ban = n.next();
        assert_eq!(what(&ban), ("ban".into(), "203.0.113.5".into(), "fleet".into(), "a".into()));
        assert_eq!(
            (ban["jail"].as_str(), ban["ports"].clone()),
            (Some("postfix-sasl"), serde_json::json!([25, 465, 587]))
        );
    }

    let (ok, out, err) = cli(&b.socket, &["unban", "203.0.113.5"]);
    assert!(ok, "{out}{err}");
    for n in [&a, &b, &c] {
        assert_eq!(
            what(&n.next()),
            ("unban".into(), "203.0.113.5".into(), String::new(), String::new())
        );
        assert!(common::listed(&n.socket).is_empty());
    }

    // A manual ban is the fleet's too.
    let (ok, _, err) = cli(&c.socket, &["ban", "198.51.100.77", "--for", "1h"]);
    assert!(ok, "{err}");
    for n in [&a, &b] {
        assert_eq!(what(&n.next()), ("ban".into(), "198.51.100.77".into(), "fleet".into(), "c".into()));
    }

    for n in [&a, &b, &c] {
        let st = n.status();
        assert_eq!(st["fleet"]["connected"], true, "{st}");
        assert!(!st.to_string().contains(secret));
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", n.mp.pid())).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains(secret));
    }
    assert_eq!(c.status()["fleet"]["events_out"], 1);
    let (_, text, _) = cli(&a.socket, &["status"]);
    assert!(text.contains("fleet: connected, events in 2 out"), "{text}");
    for n in [a, b, c] {
        let log = n.mp.stop();
        assert!(!log.contains(secret), "{log}");
    }
}

#[test]
fn failures_spread_over_three_nodes_ban_once() {
    let Some((dir, redis)) = redis() else { return };
    let fleet = format!("url: \"{}\", share: [Bans, Failures]", redis.url(None));
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| start_node(dir.path(), n, &fleet, "Stdin")).collect();
    // Two attempts on each host: under every host's maxretry (5), six in the fleet.
    for n in &mut nodes {
        n.fail("192.0.2.66", 2);
    }
    let decided: Vec<Value> = nodes.iter().map(Node::next).collect();
    let deciders: Vec<&Value> = decided.iter().filter(|d| d["reason"] == "threshold").collect();
    assert_eq!(deciders.len(), 1, "one ban per attacker per fleet: {decided:?}");
    let by = nodes.iter().position(|n| n.status()["bans"] == 1).unwrap();
    let name = ["a", "b", "c"][by];
    for d in &decided {
        assert_eq!(d["ip"], "192.0.2.66");
        if d["reason"] == "fleet" {
            assert_eq!(d["node"], name, "{d}");
        }
    }
    for n in nodes {
        assert!(n.rest().is_empty());
        n.mp.stop();
    }
}

#[test]
fn a_node_killed_mid_flood_catches_up_without_applying_twice() {
    let Some((dir, redis)) = redis() else { return };
    let fleet = format!("url: \"{}\", share: [Bans, Failures]", redis.url(None));
    let mut a = start_node(dir.path(), "a", &fleet, "Stdin");
    let b = start_node(dir.path(), "b", &fleet, "Stdin");
    a.fail("203.0.113.10", 5);
    a.next();
    assert_eq!(what(&b.next()).1, "203.0.113.10");
    b.mp.kill();
    // While it is down: bans it must learn of on its return.
    let down: Vec<String> = (11..31).map(|i| format!("203.0.113.{i}")).collect();
    for ip in &down {
        a.fail(ip, 5);
        assert_eq!(what(&a.next()).1, *ip);
    }
    let b = start_node(dir.path(), "b", &fleet, "Stdin");
    assert_eq!(
        b.next_addresses(down.len()),
        sorted(down.clone()),
        "every ban made while it was down, once"
    );
    // The one it had before is back from its state file, not applied again from the stream.
    let (ok, out, _) = cli(&b.socket, &["list", "--json"]);
    assert!(ok && out.contains("203.0.113.10"), "{out}");
    a.fail("203.0.113.99", 5);
    a.next();
    assert_eq!(what(&b.next()).1, "203.0.113.99");
    assert!(b.rest().is_empty());
    a.mp.stop();
    b.mp.stop();
}

#[test]
fn redis_stopped_mid_flood_loses_nothing() {
    let Some((dir, mut redis)) = redis() else { return };
    let fleet = format!("url: \"{}\", share: [Bans, Failures]", redis.url(None));
    let mut a = start_node(dir.path(), "a", &fleet, "Stdin");
    let b = start_node(dir.path(), "b", &fleet, "Stdin");
    let batch = |from: u8| (from..from + 10).map(|i| format!("198.51.100.{i}")).collect::<Vec<_>>();
    let flood = |a: &mut Node, ips: &[String]| {
        for ip in ips {
            a.fail(ip, 5);
            assert_eq!(what(&a.next()).1, *ip, "A bans on its own, reachable or not");
        }
    };
    flood(&mut a, &batch(1));
    redis.stop();
    // Detection and banning go on; the bans wait, in the state file too.
    flood(&mut a, &batch(20));
    let st = a.status();
    assert_eq!(st["fleet"]["connected"], false, "{st}");
    assert!(st["fleet"]["waiting"].as_u64().unwrap() >= 10, "{st}");
    // Stopped meanwhile, A keeps them in its state file and publishes them when back.
    let log = a.mp.stop();
    assert!(log.contains("events wait for the fleet in the state file"), "{log}");
    redis.restart();
    let mut a = start_node(dir.path(), "a", &fleet, "Stdin");
    flood(&mut a, &batch(40));
    assert_eq!(b.next_addresses(30), sorted([batch(1), batch(20), batch(40)].concat()));
    assert!(b.rest().is_empty());
    assert_eq!(a.status()["fleet"]["waiting"], 0);
    a.mp.stop();
    b.mp.stop();
}

#[test]
fn what_is_not_a_fleet_event_is_counted_and_never_applied() {
    let Some((dir, redis)) = redis() else { return };
    let a = start_node(dir.path(), "a", &format!("url: \"{}\"", redis.url(None)), "");
    let ban = |net: &str, v: u32| {
        format!(
            "{{\"v\":{v},\"node\":\"x\",\"kind\":\"ban\",\"net\":\"{net}\",\"jail\":\"postfix-sasl\",\"reason\":\"threshold\",\"offence\":1,\"time\":1,\"since\":1,\"ban_for\":3600,\"ports\":[[25,25]]}}"
        )
    };
    let xadd = |fields: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "XADD", "mailpipe:bans", "*"])
            .args(fields)
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    let planted = ban("0.0.0.0/0", 1);
    let later = ban("192.0.2.1/32", 2);
    let batch = format!("not json\n{planted}\n{later}");
    xadd(&["e", &batch]);
    xadd(&["other", "field"]);
    // Stream order: once this one is applied, those before it were read.
    let good = ban("203.0.113.200/32", 1).replace("\"since\":1", &format!("\"since\":{}", chrono::Utc::now().timestamp()));
    xadd(&["e", &good]);
    let v = a.next();
    assert_eq!(what(&v), ("ban".into(), "203.0.113.200".into(), "fleet".into(), "x".into()));
    assert_eq!(v["ports"], serde_json::json!([25]));
    let st = a.status();
    assert_eq!(
        (st["fleet"]["malformed"].as_u64(), st["fleet"]["foreign"].as_u64()),
        (Some(3), Some(1)),
        "{st}"
    );
    assert!(a.rest().is_empty());
    a.mp.stop();
}
