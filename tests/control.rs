//! The control socket of a running daemon, through the CLI as an operator uses it: `ban`,
//! `list`, `status`, `unban`; ignored addresses refused without `--force`; the socket is 0600.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Mailpipe, cli};

#[test]
fn operator_bans_lists_and_unbans() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/control.sock");
    let cfg = dir.path().join("ctl.ron");
    std::fs::write(
        &cfg,
        format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")], inputs: [Udp(listen: \"127.0.0.1:0\")], control: \"{}\")",
            env!("CARGO_MANIFEST_DIR"),
            socket.display()
        ),
    )
    .unwrap();
    let mp = Mailpipe::start(&cfg, 2);
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);

    let (ok, out, _) = cli(&socket, &["ban", "203.0.113.9", "--for", "2h"]);
    assert!(ok && out.contains("banned 203.0.113.9/32 for 7200 s"), "{out}");
    let ban = mp.next_ban();
    assert_eq!(
        (ban["ip"].as_str(), ban["reason"].as_str(), ban["ban_for_s"].as_u64()),
        (Some("203.0.113.9"), Some("manual"), Some(7200))
    );

    let (ok, _, err) = cli(&socket, &["ban", "127.0.0.1"]);
    assert!(!ok && err.contains("policy.ignore"), "{err}");
    // A made-up jail is refused (it would become a metrics label), and so is a 0 s ban.
    let (ok, _, err) = cli(&socket, &["ban", "203.0.113.10", "--jail", "nosuchjail"]);
    assert!(!ok && err.contains("no jail \"nosuchjail\""), "{err}");
    let (ok, _, err) = cli(&socket, &["ban", "203.0.113.10", "--for", "0s"]);
    assert!(!ok && err.contains("1 s"), "{err}");
    let (ok, _, err) = cli(&socket, &["list", "--jail", "nosuch"]);
    assert!(!ok && err.contains("no jail"), "{err}");
    let (ok, _, _) = cli(&socket, &["ban", "127.0.0.1", "--force", "--for", "1m"]);
    assert!(ok);
    mp.next_ban();

    let (ok, out, _) = cli(&socket, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ips: Vec<&str> = v["bans"].as_array().unwrap().iter().map(|b| b["ip"].as_str().unwrap()).collect();
    assert!(ok && ips.contains(&"203.0.113.9") && ips.contains(&"127.0.0.1"), "{out}");

    let (ok, out, _) = cli(&socket, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        ok && v["currently_banned"] == 2 && v["jails"].as_array().unwrap().len() == 4,
        "{out}"
    );
    assert!(v["inputs"][0]["name"].as_str().unwrap().starts_with("udp"), "{out}");

    let (ok, out, _) = cli(&socket, &["unban", "203.0.113.9"]);
    assert!(ok && out.contains("unbanned 203.0.113.9/32"), "{out}");
    let (ok, _, err) = cli(&socket, &["unban", "203.0.113.9"]);
    assert!(!ok && err.contains("not banned"), "{err}");
    let (ok, out, _) = cli(&socket, &["unban", "--all"]);
    assert!(ok && out.contains("127.0.0.1/32"), "{out}");
    let (_, out, _) = cli(&socket, &["list"]);
    assert!(out.trim().is_empty(), "{out}");
    mp.stop();
}

#[test]
fn reload_keeps_counts_and_refuses_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let cfg = dir.path().join("r.ron");
    let write = |jails: &str| {
        std::fs::write(
            &cfg,
            format!(
                "Pipeline(include: [{jails}], inputs: [Udp(listen: \"127.0.0.1:0\")], control: \"{}\")",
                socket.display()
            ),
        )
        .unwrap()
    };
    let root = env!("CARGO_MANIFEST_DIR");
    write(&format!("(file: \"{root}/pipelines/mail.ron\")"));
    let mp = Mailpipe::start(&cfg, 2);
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |n: usize| {
        for _ in 0..n {
            let line = format!(
                "{} mx1 postfix/smtpd[7]: warning: unknown[198.51.100.77]: SASL LOGIN authentication failed: x",
                chrono::Utc::now().format("%b %e %H:%M:%S")
            );
            u.send_to(line.as_bytes(), ("127.0.0.1", mp.port("udp", 0))).unwrap();
        }
    };
    send(3);
    // A status round trip is answered after the datagrams already queued: they are counted.
    let status = |s: &std::path::Path| -> serde_json::Value { serde_json::from_str(&cli(s, &["status", "--json"]).1).unwrap() };
    assert_eq!(status(&socket)["jails"][0]["currently_failing"], 1);

    // A new jail comes in; postfix-sasl keeps its three failures.
    write(&format!(
        "(file: \"{root}/pipelines/mail.ron\"), (file: \"{root}/pipelines/postfix.ron\", jails: [\"postfix-rbl\"])"
    ));
    let (ok, out, err) = cli(&socket, &["reload"]);
    assert!(ok && out.contains("postfix-rbl") && !out.contains("restart"), "{out}{err}");
    // A changed input is not taken by a reload, and the operator is told so.
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("127.0.0.1:0", "127.0.0.1:1")).unwrap();
    let (ok, out, err) = cli(&socket, &["reload"]);
    assert!(ok && out.contains("applied only by a restart: inputs"), "{out}{err}");
    let v = status(&socket);
    assert_eq!(
        (v["jails"].as_array().unwrap().len(), &v["jails"][0]["currently_failing"]),
        (5, &serde_json::json!(1)),
        "{v}"
    );

    // A bad file is refused with its position; the running pipeline stays.
    std::fs::write(&cfg, "Pipeline(\n  jails: [Jail(name: 3)],\n)").unwrap();
    let (ok, _, err) = cli(&socket, &["reload"]);
    assert!(!ok && err.contains("r.ron:2:"), "{err}");
    send(2);
    let ban = mp.next_ban();
    assert_eq!((ban["ip"].as_str(), ban["failures"].as_u64()), (Some("198.51.100.77"), Some(5)));

    // SIGHUP reloads too: back to mail.ron's four jails (each status is a round trip through
    // the queue).
    write(&format!("(file: \"{root}/pipelines/mail.ron\")"));
    assert!(common::signal(mp.pid(), libc::SIGHUP));
    assert!(
        (0..500).any(|_| status(&socket)["jails"].as_array().unwrap().len() == 4),
        "SIGHUP reloaded the file"
    );
    let log = mp.stop();
    assert!(log.contains("mailpipe: reloaded"), "{log}");
}

#[test]
fn an_endless_request_is_refused_not_buffered() {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let cfg = common::pipeline_with(
        dir.path(),
        "c.ron",
        "Udp(listen: \"127.0.0.1:0\")",
        &format!("control: \"{}\",", socket.display()),
    );
    let mp = Mailpipe::start(&cfg, 2);
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(common::LIMIT)).unwrap();
    // 1 MiB and no newline: answered with an error once past the limit, then closed.
    let _ = s.write_all(&vec![b'{'; 1 << 20]);
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(line.contains("bad request"), "{line}");
    // The daemon still answers others.
    let (ok, out, _) = cli(&socket, &["status", "--json"]);
    assert!(ok && out.contains("\"ok\":true"), "{out}");
    mp.stop();
}

#[test]
fn a_slow_reload_never_stops_detection() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let cfg = common::pipeline_with(
        dir.path(),
        "r.ron",
        "Udp(listen: \"127.0.0.1:0\")",
        &format!("control: \"{}\",", socket.display()),
    );
    let mp = Mailpipe::start(&cfg, 2);
    // A pipeline whose dense DFA takes seconds to build (and then exceeds its size limit).
    std::fs::write(
        &cfg,
        format!(
            "Pipeline(include: [(file: \"{}/pipelines/mail.ron\")], inputs: [Udp(listen: \"127.0.0.1:0\")], control: \"{}\",
             matcher: (engine: Dense(size_limit: 134217728)),
             jails: [Jail(name: \"slow\", rules: [r\".*a.{{24}}\\[<HOST>\\]\"], maxretry: 5, findtime: \"10m\")])",
            env!("CARGO_MANIFEST_DIR"),
            socket.display()
        ),
    )
    .unwrap();
    let reload = {
        let socket = socket.clone();
        std::thread::spawn(move || cli(&socket, &["reload"]))
    };
    // Meanwhile lines are read, matched and banned, well within the 20 s the compile may take
    // (compiled on the pipeline thread, it held the ban back for a minute).
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..5 {
        u.send_to(common::sasl_line("198.51.100.55").as_bytes(), ("127.0.0.1", mp.port("udp", 0)))
            .unwrap();
    }
    let ban = mp
        .bans
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a ban while the reload compiles");
    assert_eq!(ban["ip"], "198.51.100.55");
    let (ok, _, err) = reload.join().unwrap();
    assert!(!ok && (err.contains("longer than") || err.contains("dense rule DFA")), "{err}");
    mp.stop();
}
