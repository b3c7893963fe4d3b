//! Syslog over the network, with raw sockets: every framing the daemon accepts, and malformed
//! input that must not stop it serving others. Loopback only; ports picked by the OS.

mod common;

use std::io::Write;
use std::net::{TcpStream, UdpSocket};

use common::Mailpipe;

/// The daemon with one UDP, one TCP (with `extra_tcp` settings) and one Unix input.
struct Daemon {
    mp: Mailpipe,
    udp: u16,
    tcp: u16,
    unix: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn sasl(ip: &str) -> String {
    format!("warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6")
}

impl Daemon {
    fn start(extra_tcp: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let unix = dir.path().join("log.sock");
        let inputs = format!(
            "Udp(listen: \"127.0.0.1:0\"), Tcp(listen: \"127.0.0.1:0\"{extra_tcp}), Unix(path: \"{}\")",
            unix.display()
        );
        let mp = Mailpipe::start(&common::pipeline(dir.path(), "net.ron", &inputs), 3);
        Daemon {
            udp: mp.port("udp", 0),
            tcp: mp.port("tcp", 0),
            mp,
            unix,
            _dir: dir,
        }
    }

    fn next_ban(&self) -> serde_json::Value {
        self.mp.next_ban()
    }

    fn stop(self) -> String {
        self.mp.stop()
    }
}

fn rfc3164(msg: &str) -> String {
    format!("<20>Nov 22 21:59:13 vm postfix/smtpd[175371]: {msg}")
}

fn rfc5424(msg: &str) -> String {
    format!("<20>1 2026-11-22T21:59:13.053111+00:00 vm postfix/smtpd 175371 - -  {msg}")
}

#[test]
fn udp_tcp_and_unix_each_ban() {
    let d = Daemon::start("");
    // UDP, traditional format, no LF (as rsyslog sends it).
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..5 {
        u.send_to(rfc3164(&sasl("198.51.100.1")).as_bytes(), ("127.0.0.1", d.udp)).unwrap();
    }
    assert_eq!(d.next_ban()["ip"], "198.51.100.1");
    // TCP, octet-counted RFC 5424 and LF-framed traditional, mixed on one connection.
    let mut t = TcpStream::connect(("127.0.0.1", d.tcp)).unwrap();
    for i in 0..5 {
        let m = if i % 2 == 0 {
            rfc5424(&sasl("198.51.100.2")) + "\n"
        } else {
            rfc3164(&sasl("198.51.100.2")) + "\n"
        };
        if i % 2 == 0 {
            write!(t, "{} {m}", m.len()).unwrap();
        } else {
            t.write_all(m.as_bytes()).unwrap();
        }
    }
    t.flush().unwrap();
    assert_eq!(d.next_ban()["ip"], "198.51.100.2");
    // Unix datagrams, as `logger -u` sends them (no host field).
    let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for _ in 0..5 {
        s.send_to(
            format!("<20>Nov 22 21:59:13 postfix/smtpd[9]: {}", sasl("198.51.100.3")).as_bytes(),
            &d.unix,
        )
        .unwrap();
    }
    assert_eq!(d.next_ban()["ip"], "198.51.100.3");
    let err = d.stop();
    assert!(err.contains("input udp 127.0.0.1:0: received 5"), "{err}");
    assert!(err.contains("input unix"), "{err}");
}

#[test]
fn malformed_frames_do_not_stop_the_daemon() {
    let d = Daemon::start(", max_frame: 4096");
    // A connection that never sends anything, and 1,000 idle ones: others are still served.
    let silent = TcpStream::connect(("127.0.0.1", d.tcp)).unwrap();
    let idle: Vec<TcpStream> = (0..1000).filter_map(|_| TcpStream::connect(("127.0.0.1", d.tcp)).ok()).collect();
    assert!(idle.len() >= 900, "could open {} idle connections", idle.len());
    // An oversized octet-counted frame is skipped, the frame after it is read.
    let mut a = TcpStream::connect(("127.0.0.1", d.tcp)).unwrap();
    write!(a, "10000 ").unwrap();
    a.write_all(&vec![b'x'; 10_000]).unwrap();
    // A 10 MB LF-framed line, then good lines on the same connection.
    a.write_all(&vec![b'y'; 10 << 20]).unwrap();
    a.write_all(b"\n").unwrap();
    for _ in 0..5 {
        writeln!(a, "{}", rfc3164(&sasl("198.51.100.4"))).unwrap();
    }
    a.flush().unwrap();
    assert_eq!(d.next_ban()["ip"], "198.51.100.4");
    // Digits that are no valid count are an ordinary line: the connection goes on.
    let mut b = TcpStream::connect(("127.0.0.1", d.tcp)).unwrap();
    b.write_all(b"12a <13>garbage\n0 zero\n99999999999999 <13>x\n").unwrap();
    for _ in 0..5 {
        writeln!(b, "{}", rfc3164(&sasl("198.51.100.3"))).unwrap();
    }
    assert_eq!(d.next_ban()["ip"], "198.51.100.3");
    // Others are still served, over UDP too (invalid UTF-8 and all).
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(b"\xff\xfe\x00 garbage datagram", ("127.0.0.1", d.udp)).unwrap();
    for _ in 0..5 {
        u.send_to(rfc3164(&sasl("198.51.100.5")).as_bytes(), ("127.0.0.1", d.udp)).unwrap();
    }
    assert_eq!(d.next_ban()["ip"], "198.51.100.5");
    drop((silent, idle, a, b));
    let err = d.stop();
    assert!(err.contains("dropped (oversized) 2"), "{err}");
}

#[test]
fn allow_list_refuses_other_senders() {
    let d = Daemon::start(", allow: [\"192.0.2.0/24\"]");
    let mut t = TcpStream::connect(("127.0.0.1", d.tcp)).unwrap();
    for _ in 0..5 {
        let _ = writeln!(t, "{}", rfc3164(&sasl("198.51.100.6")));
    }
    drop(t);
    // UDP is open to all here: its ban proves the TCP lines were refused, not slow.
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..5 {
        u.send_to(rfc3164(&sasl("198.51.100.7")).as_bytes(), ("127.0.0.1", d.udp)).unwrap();
    }
    assert_eq!(d.next_ban()["ip"], "198.51.100.7");
    let err = d.stop();
    assert!(err.contains("refused (not allowed) 1"), "{err}");
}

/// A connection from `local` (any 127.0.0.0/8 address is this machine) to the daemon.
fn connect_from(local: &str, port: u16) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&format!("{local}:0").parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    s.into()
}

#[test]
fn lines_starting_with_digits_are_lines() {
    // Dovecot's own log over TCP: `2026-11-23 10:00:00 imap-login: ...` once closed the connection.
    let d = Daemon::start("");
    let mut t = TcpStream::connect(("127.0.0.1", d.tcp)).unwrap();
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S");
    for _ in 0..7 {
        writeln!(
            t,
            "{now} imap-login: Info: Aborted login (auth failed, 1 attempts in 2 secs): user=<a>, method=PLAIN, rip=198.51.100.8, lip=192.0.2.10"
        )
        .unwrap();
    }
    assert_eq!(d.next_ban()["ip"], "198.51.100.8");
    drop(t);
    d.stop();
}

#[test]
fn one_sender_cannot_hold_every_slot() {
    let d = Daemon::start(", max_connections: 16, idle_timeout: \"1h\"");
    // One address takes every slot and keeps each connection alive.
    let mut held: Vec<TcpStream> = (0..16).map(|_| connect_from("127.0.0.1", d.tcp)).collect();
    for h in &mut held {
        h.write_all(b"x\n").unwrap();
    }
    // A second sender still gets in (the first gives up its oldest connection).
    let mut other = connect_from("127.0.0.2", d.tcp);
    for _ in 0..5 {
        writeln!(other, "{}", rfc3164(&sasl("198.51.100.9"))).unwrap();
    }
    assert_eq!(d.next_ban()["ip"], "198.51.100.9");
    drop((held, other));
    let err = d.stop();
    assert!(err.contains("closed (room for another sender) 1"), "{err}");
}

#[test]
fn sigterm_reads_what_was_already_written() {
    let d = Daemon::start("");
    let mut t = TcpStream::connect(("127.0.0.1", d.tcp)).unwrap();
    // A flood: every line is in the kernel's buffers (or read) once write_all returns.
    let line = rfc3164("connect from unknown[192.0.2.1]") + "\n";
    let n = 300_000;
    t.write_all(line.repeat(n).as_bytes()).unwrap();
    // Stopped with the connection still open: the daemon reads it dry before it exits.
    let err = d.stop();
    assert!(err.contains(&format!("tcp 127.0.0.1:0: received {n},")), "{err}");
    drop(t);
}

#[test]
fn a_flood_of_long_lines_stays_within_the_queue_budget() {
    let d = Daemon::start("");
    // Long lines that pass the prefilter and are matched to their end, so the pipeline falls
    // behind twelve senders and the queue fills up.
    let line = rfc3164(&format!("warning: {} SASL LOGIN authentication failed: x", "A".repeat(15_000))) + "\n";
    let senders: Vec<_> = (0..12)
        .map(|_| {
            let (port, line) = (d.tcp, line.clone());
            std::thread::spawn(move || {
                let mut t = TcpStream::connect(("127.0.0.1", port)).unwrap();
                for _ in 0..2_000 {
                    t.write_all(line.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    // Not a speed figure: an unbounded queue took 1 GB here; the budget is 32 MiB.
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.mp.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kib < 128 << 10, "peak {peak_kib} KiB");
    let err = d.stop();
    assert!(err.contains("received 24000"), "{err}");
}
