//! Bans that reach the kernel, with real packets: two network namespaces joined by a veth pair,
//! mailpipe in the server one with a kernel sink and the shipped firewall rules (ipset +
//! iptables, and nftables), a client that
//! brute-forces SMTP AUTH. Its TCP connections to port 25 must succeed before the ban, time out
//! during it, and succeed again once the kernel has expired the entry; for IPv4 and for IPv6
//! (banned as its /64). Needs root, ip, ipset, iptables and python3; skips, saying why, without.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Need, Netns, Reaper};

fn ok(cmd: &[&str]) -> bool {
    common::try_run(cmd).is_ok()
}

/// Whether the client namespace can open a TCP connection to `addr`, port 25, within a second.
fn connects(cli: &str, addr: &str) -> bool {
    connects_port(cli, addr, 25)
}

/// The same on any port.
fn connects_port(cli: &str, addr: &str, port: u16) -> bool {
    let code = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()";
    ok(&["ip", "netns", "exec", cli, "python3", "-c", code, addr, &port.to_string()])
}

/// Polls `connects` until it answers `want`, at most `tries` one-second attempts.
fn until_connects(cli: &str, addr: &str, want: bool, tries: usize) -> bool {
    (0..tries).any(|_| connects(cli, addr) == want)
}

fn failure_line(ip: &str) -> String {
    let now = chrono::Utc::now().format("%b %e %H:%M:%S");
    format!("{now} mx1 postfix/smtpd[7]: warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6\n")
}

#[test]
fn ipset_and_iptables_drop_packets_while_banned() {
    let root = env!("CARGO_MANIFEST_DIR");
    bans_drop_packets_and_expire(
        "i",
        &["sh", &format!("{root}/contrib/firewall/iptables.sh")],
        "Ipset(set4: \"mailpipe4\", set6: \"mailpipe6\")",
    );
}

#[test]
fn nftables_drops_packets_while_banned() {
    if let Some(why) = common::missing(&[Need::Program("nft", "nftables")]) {
        return common::skip(&why);
    }
    let root = env!("CARGO_MANIFEST_DIR");
    bans_drop_packets_and_expire(
        "n",
        &["nft", "-f", &format!("{root}/contrib/firewall/mailpipe.nft")],
        "Nftables(table: \"mailpipe\")",
    );
}

/// The scenario, for one firewall: `setup` runs in the server namespace, `sink` is the pipeline's.
fn bans_drop_packets_and_expire(tag: &str, setup: &[&str], sink: &str) {
    let needs = [
        Need::IpsetNetns,
        Need::Program("iptables", "iptables"),
        Need::Program("ip6tables", "iptables"),
        Need::Program("python3", "python3"),
    ];
    if let Some(why) = common::missing(&needs) {
        return common::skip(&why);
    }
    // Declared first, dropped last: the children go before their namespaces.
    let (srv_ns, cli_ns) = (Netns::create(&format!("s{tag}")), Netns::create(&format!("c{tag}")));
    let (srv, cli) = (srv_ns.name.clone(), cli_ns.name.clone());
    let mut children = Vec::new();
    common::run(&[
        "ip", "-n", &srv, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", &cli,
    ]);
    for (ns, dev, v4, v6) in [
        (&srv, "vs", "192.0.2.1/24", "2001:db8:1::1/64"),
        (&cli, "vc", "192.0.2.2/24", "2001:db8:1::2/64"),
    ] {
        common::run(&["ip", "-n", ns, "addr", "add", v4, "dev", dev]);
        common::run(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
        common::run(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = vec!["ip", "netns", "exec", &srv];
    cmd.extend_from_slice(setup);
    common::run(&cmd);
    // Something to connect to: a dual-stack listener on port 25.
    children.push(Reaper(
        Command::new("ip")
            .args(["netns", "exec", &srv, "python3", "-c"])
            .arg("import socket, threading\ndef serve(port):\n    s = socket.socket(socket.AF_INET6)\n    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n    s.bind(('::', port))\n    s.listen(64)\n    while True:\n        c, _ = s.accept()\n        c.close()\nthreading.Thread(target=serve, args=(8080,), daemon=True).start()\nserve(25)")
            .spawn()
            .unwrap(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fw.ron");
    std::fs::write(
        &cfg,
        format!("Pipeline(include: [(file: \"{root}/pipelines/mail.ron\")], inputs: [Stdin], sink: {sink},\n policy: (bantime: \"3s\", recidive: Some((bans: 2, findtime: \"1h\", bantime: \"4s\")), ignore: [\"127.0.0.0/8\", \"::1\"]))"),
    )
    .unwrap();
    let mut mp = Command::new("ip")
        .args(["netns", "exec", &srv, env!("CARGO_BIN_EXE_mailpipe"), "run", "-c"])
        .arg(&cfg)
        .env("TZ", "UTC")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = mp.stdin.take().unwrap();
    let (tx, banned) = mpsc::channel();
    let err = mp.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    children.push(Reaper(mp));
    let wait_ban = |what: &str| loop {
        let line = banned.recv_timeout(Duration::from_secs(30)).expect("the ban is reported");
        assert!(!line.contains("error"), "{line}");
        if line.contains(&format!("banned {what}")) {
            return;
        }
    };

    for (addr, client, key) in [
        ("192.0.2.1", "192.0.2.2", "192.0.2.2/32"),
        ("2001:db8:1::1", "2001:db8:1::2", "2001:db8:1::/64"),
    ] {
        assert!(until_connects(&cli, addr, true, 20), "{addr}: connects before the ban");
        for _ in 0..5 {
            stdin.write_all(failure_line(client).as_bytes()).unwrap();
        }
        stdin.flush().unwrap();
        wait_ban(key);
        assert!(!connects(&cli, addr), "{addr}: dropped while {client} is banned");
        // The kernel expires the entry after the 3 s ban, mailpipe or not.
        assert!(
            until_connects(&cli, addr, true, 15),
            "{addr}: connects again once the ban has expired"
        );
    }
    // A second ban of the IPv4 client within the hour is recidive: every port is closed to it,
    // not only the mail ports, until the recidive ban expires.
    assert!(connects_port(&cli, "192.0.2.1", 8080), "a non-mail port is open before");
    for _ in 0..5 {
        stdin.write_all(failure_line("192.0.2.2").as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    wait_ban("192.0.2.2/32");
    wait_ban("192.0.2.2/32");
    assert!(!connects_port(&cli, "192.0.2.1", 8080), "recidive closes every port");
    assert!(
        (0..15).any(|_| connects_port(&cli, "192.0.2.1", 8080)),
        "open again once the recidive ban expired"
    );
    drop(stdin);
}
