//! Bans that reach the kernel, with real packets: two network namespaces joined by a veth pair,
//! mailpipe in the server one with a kernel sink and the rules it puts in place (ipset +
//! iptables, and nftables), a client that brute-forces SMTP AUTH or the webmail. Its TCP
//! connections must succeed before the ban, time out during it on the ports of the jail that
//! banned it (and only those), and succeed again once the kernel has expired the entry; for IPv4
//! and for IPv6 (banned as its /64). A third namespace behind the server, which forwards to it,
//! shows the FORWARD option. Needs root, ip, ipset, iptables, nft and python3; skips, saying why,
//! without.

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
    // The sink puts its sets and iptables rules in place itself.
    bans_drop_packets_and_expire("i", &["true"], "Ipset(set4: \"mailpipe4\", set6: \"mailpipe6\")");
}

#[test]
fn nftables_drops_packets_while_banned() {
    if let Some(why) = common::missing(&[Need::Program("nft", "nftables")]) {
        return common::skip(&why);
    }
    bans_drop_packets_and_expire("n", &["true"], "Nftables(table: \"mailpipe\")");
}

/// Python serving dual-stack TCP listeners on `ports` (accept, close), in namespace `ns`.
fn listen(ns: &str, ports: &[u16]) -> Reaper {
    let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let code = format!(
        "import socket, threading\ndef serve(port):\n    s = socket.socket(socket.AF_INET6)\n    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n    s.bind(('::', port))\n    s.listen(64)\n    while True:\n        c, _ = s.accept()\n        c.close()\nfor p in [{list}][1:]:\n    threading.Thread(target=serve, args=(p,), daemon=True).start()\nserve([{list}][0])"
    );
    Reaper(
        Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &code])
            .spawn()
            .unwrap(),
    )
}

/// Two namespaces joined by a veth pair: a server (192.0.2.1, 2001:db8:1::1) listening on
/// ports 25 and 8080, and a client (192.0.2.2, 2001:db8:1::2); mailpipe runs in the server.
/// Fields drop in order: processes first, then the namespaces.
struct Testbed {
    children: Vec<Reaper>,
    srv: Netns,
    cli: Netns,
    _dir: tempfile::TempDir,
}

impl Testbed {
    /// The namespaces, or `None` after reporting what is missing.
    fn new(tag: &str) -> Option<Testbed> {
        let needs = [
            Need::IpsetNetns,
            Need::Program("iptables", "iptables"),
            Need::Program("ip6tables", "iptables"),
            Need::Program("python3", "python3"),
        ];
        if let Some(why) = common::missing(&needs) {
            common::skip(&why);
            return None;
        }
        let (srv, cli) = (Netns::create(&format!("s{tag}")), Netns::create(&format!("c{tag}")));
        common::run(&[
            "ip", "-n", &srv.name, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", &cli.name,
        ]);
        for (ns, dev, v4, v6) in [
            (&srv.name, "vs", "192.0.2.1/24", "2001:db8:1::1/64"),
            (&cli.name, "vc", "192.0.2.2/24", "2001:db8:1::2/64"),
        ] {
            common::run(&["ip", "-n", ns, "addr", "add", v4, "dev", dev]);
            common::run(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            common::run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        // Something to connect to: mail, the webmail, and a port no jail protects.
        let listener = listen(&srv.name, &[25, 443, 8080]);
        Some(Testbed {
            children: vec![listener],
            srv,
            cli,
            _dir: tempfile::tempdir().unwrap(),
        })
    }

    /// Runs `cmd` in the server namespace.
    fn server(&self, cmd: &[&str]) {
        self.srv.exec(cmd).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts mailpipe in the server with mail.ron's jails and these other fields; its stdin,
    /// and its stderr line by line.
    fn mailpipe(&mut self, fields: &str) -> (std::process::ChildStdin, mpsc::Receiver<String>) {
        let ns = self.srv.name.clone();
        self.mailpipe_in(&ns, "mail.ron", fields)
    }

    /// Starts mailpipe in namespace `ns` with `pipeline`'s jails and these other fields.
    fn mailpipe_in(&mut self, ns: &str, pipeline: &str, fields: &str) -> (std::process::ChildStdin, mpsc::Receiver<String>) {
        let cfg = self._dir.path().join("fw.ron");
        let root = env!("CARGO_MANIFEST_DIR");
        std::fs::write(
            &cfg,
            format!("Pipeline(include: [(file: \"{root}/pipelines/{pipeline}\")], inputs: [Stdin],\n{fields})"),
        )
        .unwrap();
        let mut mp = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_mailpipe"), "run", "-c"])
            .arg(&cfg)
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = mp.stdin.take().unwrap();
        let (tx, log) = mpsc::channel();
        let err = mp.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        self.children.push(Reaper(mp));
        (stdin, log)
    }
}

/// Waits for a log line containing `what`; fails on an error line.
fn wait_log(log: &mpsc::Receiver<String>, what: &str) {
    loop {
        let line = log
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("never logged {what:?}"));
        assert!(!line.contains("error"), "{line}");
        if line.contains(what) {
            return;
        }
    }
}

fn fail5(stdin: &mut std::process::ChildStdin, ip: &str) {
    for _ in 0..5 {
        stdin.write_all(failure_line(ip).as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
}

/// The scenario, for one firewall: `setup` runs in the server namespace, `sink` is the pipeline's.
fn bans_drop_packets_and_expire(tag: &str, setup: &[&str], sink: &str) {
    let Some(mut bed) = Testbed::new(tag) else { return };
    bed.server(setup);
    let (mut stdin, log) = bed.mailpipe(&format!(
        "sink: {sink}, policy: (bantime: \"3s\", recidive: Some((bans: 2, findtime: \"1h\", bantime: \"4s\")), ignore: [\"127.0.0.0/8\", \"::1\"])"
    ));
    let cli = bed.cli.name.clone();
    for (addr, client, key) in [
        ("192.0.2.1", "192.0.2.2", "192.0.2.2/32"),
        ("2001:db8:1::1", "2001:db8:1::2", "2001:db8:1::/64"),
    ] {
        assert!(until_connects(&cli, addr, true, 20), "{addr}: connects before the ban");
        fail5(&mut stdin, client);
        wait_log(&log, &format!("banned {key}"));
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
    fail5(&mut stdin, "192.0.2.2");
    wait_log(&log, "banned 192.0.2.2/32");
    wait_log(&log, "banned 192.0.2.2/32");
    assert!(!connects_port(&cli, "192.0.2.1", 8080), "recidive closes every port");
    assert!(
        (0..15).any(|_| connects_port(&cli, "192.0.2.1", 8080)),
        "open again once the recidive ban expired"
    );
    drop(stdin);
}

/// The webmail's failures (roundcube-auth bans 80 and 443) and SMTP AUTH failures (postfix-sasl:
/// 25, 465, 587), from two clients: each is shut out of the service it attacked only.
fn each_jail_bans_its_own_ports(tag: &str, sink: &str) {
    let Some(mut bed) = Testbed::new(tag) else { return };
    let ns = bed.srv.name.clone();
    let (mut stdin, log) = bed.mailpipe_in(&ns, "all.ron", &format!("sink: {sink}"));
    let cli = bed.cli.name.clone();
    let both = |addr: &str| (connects_port(&cli, addr, 25), connects_port(&cli, addr, 443));
    assert!((0..20).any(|_| both("192.0.2.1") == (true, true)), "open before");
    for _ in 0..5 {
        let line =
            "[17-Jun-2024 06:14:40 +0200]: <3lq5onb8> Failed login for postmaster from 192.0.2.2 in session 3lq5onb87b7oqnc7 (error: 1)\n";
        stdin.write_all(line.as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    wait_log(&log, "banned 192.0.2.2/32 for 3600 s on 80,443 (jail roundcube-auth");
    assert_eq!(
        both("192.0.2.1"),
        (true, false),
        "the webmail's attacker still reaches SMTP, not 443"
    );
    fail5(&mut stdin, "2001:db8:1::2");
    wait_log(&log, "banned 2001:db8:1::/64 for 3600 s on 25,465,587 (jail postfix-sasl");
    assert_eq!(both("2001:db8:1::1"), (false, true), "the SMTP attacker still reaches the webmail");
    drop(stdin);
}

#[test]
fn ipset_bans_each_jails_own_ports() {
    each_jail_bans_its_own_ports("p", "Ipset()");
}

#[test]
fn nftables_bans_each_jails_own_ports() {
    if let Some(why) = common::missing(&[Need::Program("nft", "nftables")]) {
        return common::skip(&why);
    }
    each_jail_bans_its_own_ports("o", "Nftables()");
}

/// A host that forwards to the mail service (a container behind it, here a third namespace at
/// 198.51.100.2): with `forward: true` its bans hold for forwarded traffic too.
fn forwarded_traffic_is_dropped(tag: &str, sink: &str) {
    let Some(mut bed) = Testbed::new(tag) else { return };
    let inner = Netns::create(&format!("f{tag}"));
    let (srv, cli) = (bed.srv.name.clone(), bed.cli.name.clone());
    common::run(&[
        "ip",
        "-n",
        &srv,
        "link",
        "add",
        "vr",
        "type",
        "veth",
        "peer",
        "name",
        "vi",
        "netns",
        &inner.name,
    ]);
    common::run(&["ip", "-n", &srv, "addr", "add", "198.51.100.1/24", "dev", "vr"]);
    common::run(&["ip", "-n", &srv, "link", "set", "vr", "up"]);
    common::run(&["ip", "-n", &inner.name, "addr", "add", "198.51.100.2/24", "dev", "vi"]);
    common::run(&["ip", "-n", &inner.name, "link", "set", "vi", "up"]);
    common::run(&["ip", "-n", &inner.name, "route", "add", "default", "via", "198.51.100.1"]);
    common::run(&["ip", "-n", &cli, "route", "add", "198.51.100.0/24", "via", "192.0.2.1"]);
    bed.server(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    bed.children.push(listen(&inner.name, &[25]));
    let (mut stdin, log) = bed.mailpipe(&format!("sink: {sink}"));
    assert!(
        until_connects(&cli, "198.51.100.2", true, 20),
        "the inner host is reachable through the server"
    );
    fail5(&mut stdin, "192.0.2.2");
    wait_log(&log, "banned 192.0.2.2/32");
    assert!(!connects(&cli, "198.51.100.2"), "forwarded SMTP dropped while banned");
    assert!(!connects(&cli, "192.0.2.1"), "and the server's own");
    drop(stdin);
    drop(bed);
    drop(inner);
}

#[test]
fn ipset_forward_drops_forwarded_traffic() {
    forwarded_traffic_is_dropped("w", "Ipset(forward: true)");
}

#[test]
fn nftables_forward_drops_forwarded_traffic() {
    if let Some(why) = common::missing(&[Need::Program("nft", "nftables")]) {
        return common::skip(&why);
    }
    forwarded_traffic_is_dropped("v", "Nftables(forward: true)");
}

#[test]
fn bans_lost_from_ipsets_come_back() {
    let losses: &[&[&[&str]]] = &[
        &[&["ipset", "del", "mailpipe4-25-465-587", "192.0.2.2"]],
        &[&["iptables", "-F", "mailpipe"], &["ipset", "destroy", "mailpipe4-25-465-587"]],
        &[
            &["iptables", "-D", "INPUT", "-j", "mailpipe"],
            &["iptables", "-F", "mailpipe"],
            &["iptables", "-X", "mailpipe"],
        ],
    ];
    lost_bans_come_back(
        "r",
        "Ipset(set4: \"mailpipe4\", set6: \"mailpipe6\", reconcile: \"1s\")",
        losses,
        &["ipset", "list", "mailpipe4-all"],
        "192.0.2.77 timeout 2147",
        |shown| shown.contains("192.0.2.78 timeout 0"),
    );
}

#[test]
fn bans_lost_from_nftables_come_back() {
    if let Some(why) = common::missing(&[Need::Program("nft", "nftables")]) {
        return common::skip(&why);
    }
    let losses: &[&[&[&str]]] = &[
        &[&["nft", "delete element inet mailpipe banned4_25_465_587 { 192.0.2.2 }"]],
        &[&["nft", "delete table inet mailpipe"]],
    ];
    lost_bans_come_back(
        "q",
        "Nftables(table: \"mailpipe\", reconcile: \"1s\")",
        losses,
        &["nft", "list", "set", "inet", "mailpipe", "banned4_all"],
        "192.0.2.77 timeout 24d",
        |shown| shown.contains("192.0.2.78") && !shown.contains("192.0.2.78 timeout"),
    );
}

/// Bans deleted behind mailpipe's back (each of `losses`, run in the server) are dropped again
/// after the next reconciliation; a 100-day ban shows `long` in what `show` prints (the kernel's
/// longest timeout) while `list` shows 100 days; a permanent ban is held without a timeout
/// (`permanent` judges what `show` prints).
fn lost_bans_come_back(tag: &str, sink: &str, losses: &[&[&[&str]]], show: &[&str], long: &str, permanent: fn(&str) -> bool) {
    let Some(mut bed) = Testbed::new(tag) else { return };
    let socket = bed._dir.path().join("control.sock");
    let (mut stdin, log) = bed.mailpipe(&format!("sink: {sink}, control: \"{}\"", socket.display()));
    let cli = bed.cli.name.clone();
    assert!(until_connects(&cli, "192.0.2.1", true, 20), "connects before the ban");
    fail5(&mut stdin, "192.0.2.2");
    wait_log(&log, "banned 192.0.2.2/32");
    assert!(!connects(&cli, "192.0.2.1"), "dropped while banned");
    for loss in losses {
        for cmd in *loss {
            bed.server(cmd);
        }
        wait_log(&log, "the kernel had lost bans or rules");
        assert!((0..20).any(|_| !connects(&cli, "192.0.2.1")), "dropped again after {loss:?}");
    }
    let mailpipe = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &bed.srv.name, env!("CARGO_BIN_EXE_mailpipe")])
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    mailpipe(&["ban", "192.0.2.77", "--for", "100d"]);
    wait_log(&log, "banned 192.0.2.77/32");
    let shown = bed.srv.exec(show).unwrap();
    assert!(shown.contains(long), "{shown}");
    let v: serde_json::Value = serde_json::from_str(&mailpipe(&["list", "--json"])).unwrap();
    let left = v["bans"].as_array().unwrap().iter().find(|b| b["ip"] == "192.0.2.77").unwrap()["left_s"]
        .as_i64()
        .unwrap();
    assert!(left > 8_600_000, "{v}");
    mailpipe(&["ban", "192.0.2.78", "--for", "permanent"]);
    wait_log(&log, "banned 192.0.2.78/32");
    let shown = bed.srv.exec(show).unwrap();
    assert!(permanent(&shown), "{shown}");
    assert!(
        mailpipe(&["list"])
            .lines()
            .any(|l| l.starts_with("192.0.2.78/32") && l.contains("permanent"))
    );
    drop(stdin);
}
