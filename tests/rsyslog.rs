//! The real client: rsyslogd forwards Postfix lines (injected with `logger -u`) to mailpipe over
//! UDP, TCP with LF framing and TCP octet-counted, in both forwarding templates; and, with the
//! shipped queue settings (`contrib/rsyslog/mailpipe.conf`), nothing is lost while mailpipe is
//! down. Without rsyslogd or logger it fails under CI and skips, visibly, elsewhere.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{LIMIT, Mailpipe, Need, Reaper};

/// rsyslogd and logger, or why not.
fn missing() -> Option<String> {
    common::missing(&[Need::Program("rsyslogd", "rsyslog"), Need::Program("logger", "bsdutils")])
}

fn start_mailpipe(dir: &Path, inputs: &str) -> Mailpipe {
    let cfg = common::pipeline(dir, &format!("mp-{}.ron", inputs.len()), inputs);
    Mailpipe::start(&cfg, inputs.matches("listen").count())
}

fn start_rsyslog(dir: &Path, conf: &str) -> Reaper {
    let path = dir.join("rsyslog.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Reaper(
        Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&path)
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // rsyslogd creates its sockets after reading the config; wait for them (bounded).
    for sock in conf
        .match_indices("Socket=\"")
        .map(|(i, _)| &conf[i + 8..])
        .map(|s| &s[..s.find('"').unwrap()])
    {
        let deadline = std::time::Instant::now() + LIMIT;
        while !Path::new(sock).exists() {
            assert!(std::time::Instant::now() < deadline, "rsyslogd did not create {sock}");
            std::thread::yield_now();
        }
    }
    child
}

fn inject(sock: &Path, ip: &str, n: usize) {
    for _ in 0..n {
        let st = Command::new("logger")
            .arg("-u")
            .arg(sock)
            .args(["-p", "mail.info", "-t", "postfix/smtpd", "--id=4242"])
            .arg(format!("warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6"))
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn header(dir: &Path) -> String {
    format!(
        "global(workDirectory=\"{d}\" parser.permitSlashInProgramName=\"on\")\nmodule(load=\"imuxsock\" SysSock.Use=\"off\")\n",
        d = dir.display()
    )
}

fn input(dir: &Path, name: &str) -> String {
    format!(
        "input(type=\"imuxsock\" Socket=\"{}/{name}.sock\" Ruleset=\"{name}\" RateLimit.Interval=\"0\")\n",
        dir.display()
    )
}

#[test]
fn rsyslog_forwards_over_every_transport() {
    if let Some(why) = missing() {
        return common::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mp = start_mailpipe(
        d,
        "Udp(listen: \"127.0.0.1:0\"), Tcp(listen: \"127.0.0.1:0\"), Udp(listen: \"[::1]:0\")",
    );
    let (udp, tcp, udp6) = (mp.port("udp", 0), mp.port("tcp", 0), mp.port("udp", 1));
    let cases = [
        (
            "udp3164",
            format!("protocol=\"udp\" target=\"127.0.0.1\" port=\"{udp}\" template=\"RSYSLOG_TraditionalForwardFormat\""),
            "198.51.100.11",
        ),
        (
            "udp5424",
            format!("protocol=\"udp\" target=\"::1\" port=\"{udp6}\" template=\"RSYSLOG_SyslogProtocol23Format\""),
            "198.51.100.12",
        ),
        (
            "tcplf",
            format!("protocol=\"tcp\" target=\"127.0.0.1\" port=\"{tcp}\" template=\"RSYSLOG_TraditionalForwardFormat\""),
            "198.51.100.13",
        ),
        (
            "tcpoc",
            format!(
                "protocol=\"tcp\" target=\"127.0.0.1\" port=\"{tcp}\" TCP_Framing=\"octet-counted\" template=\"RSYSLOG_SyslogProtocol23Format\""
            ),
            "198.51.100.14",
        ),
        (
            "tcpoc3164",
            format!(
                "protocol=\"tcp\" target=\"127.0.0.1\" port=\"{tcp}\" TCP_Framing=\"octet-counted\" template=\"RSYSLOG_TraditionalForwardFormat\""
            ),
            "198.51.100.15",
        ),
    ];
    let mut conf = header(d);
    for (name, action, _) in &cases {
        conf += &input(d, name);
        // A selector line must end its line: the closing brace goes on the next.
        conf += &format!("ruleset(name=\"{name}\") {{\nmail.* action(type=\"omfwd\" {action})\n}}\n");
    }
    let rs = start_rsyslog(d, &conf);
    for (name, _, ip) in &cases {
        inject(&d.join(format!("{name}.sock")), ip, 5);
    }
    let mut banned: Vec<String> = (0..cases.len())
        .map(|_| mp.next_ban()["ip"].as_str().unwrap().to_string())
        .collect();
    banned.sort();
    let mut want: Vec<String> = cases.iter().map(|c| c.2.to_string()).collect();
    want.sort();
    assert_eq!(banned, want);
    drop(rs);
    let _ = mp.stop();
}

#[test]
fn shipped_queue_settings_lose_nothing_across_a_restart() {
    if let Some(why) = missing() {
        return common::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mp = start_mailpipe(d, "Tcp(listen: \"127.0.0.1:0\")");
    let port = mp.port("tcp", 0);
    // The shipped action, pointed at this test's port.
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/rsyslog/mailpipe.conf")).unwrap();
    let action: String = shipped
        .lines()
        .skip_while(|l| !l.starts_with("mail.*"))
        .take_while(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
        .replace("port=\"5514\"", &format!("port=\"{port}\""));
    let conf = header(d) + &input(d, "q") + &format!("ruleset(name=\"q\") {{\n{action}\n}}\n");
    let rs = start_rsyslog(d, &conf);
    // A line while mailpipe is up (rsyslog holds a connection), then mailpipe stops and all five
    // failures are sent while it is down: windows live in memory, so only lines that reach the
    // new process count (persistence of state comes with the kernel sink).
    inject(&d.join("q.sock"), "198.51.100.99", 1);
    let _ = mp.stop();
    inject(&d.join("q.sock"), "198.51.100.21", 5);
    // Back on the same port: the queued lines arrive and the address is banned.
    let mp = start_mailpipe(d, &format!("Tcp(listen: \"127.0.0.1:{port}\")"));
    let ban = mp.next_ban();
    assert_eq!(ban["ip"], "198.51.100.21");
    drop(rs);
    let _ = mp.stop();
}
