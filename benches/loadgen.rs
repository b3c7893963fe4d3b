//! Load generator for mailpipe's network inputs: sends N syslog messages to a loopback address
//! over UDP or TCP (octet-counted), as fast as it can or at a fixed rate, and says how long it
//! took. Bounded in count; refuses non-loopback targets.
//!
//!   cargo run --release --example loadgen -- udp 127.0.0.1:5514 1000000 [RATE]
//!   cargo run --release --example loadgen -- tcp 127.0.0.1:5514 5000000
//!
//! Messages received and dropped are in mailpipe's exit summary (stderr).

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [proto, addr, count, rest @ ..] = args.as_slice() else {
        eprintln!("usage: loadgen udp|tcp ADDR:PORT COUNT [RATE per second]");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR:PORT");
    assert!(addr.ip().is_loopback(), "loopback targets only");
    let count: u64 = count.parse().expect("COUNT");
    let rate: Option<u64> = rest.first().map(|r| r.parse().expect("RATE"));
    // Quiet traffic with one attacker in every 100 messages, as a mail server sends it.
    let msg = |i: u64| -> Vec<u8> {
        if i.is_multiple_of(100) {
            format!(
                "<22>Jun 17 03:14:07 mx1 postfix/smtpd[1]: warning: unknown[198.51.{}.{}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
                (i / 256) % 256,
                i % 256
            )
            .into_bytes()
        } else {
            format!("<22>Jun 17 03:14:07 mx1 postfix/smtpd[1]: disconnect from mail{i}.example.net[192.0.2.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5").into_bytes()
        }
    };
    let start = Instant::now();
    let pace = |i: u64| {
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / r as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    };
    match proto.as_str() {
        "udp" => {
            let s = UdpSocket::bind(if addr.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" }).unwrap();
            s.connect(addr).unwrap();
            // sendmmsg: 64 datagrams per system call, so the sender is not the bottleneck.
            let mut i = 0;
            while i < count {
                if i % 1024 == 0 {
                    pace(i);
                }
                let n = (count - i).min(64);
                let bufs: Vec<Vec<u8>> = (i..i + n).map(msg).collect();
                send_batch(&s, &bufs);
                i += n;
            }
        }
        "tcp" => {
            let mut s = std::io::BufWriter::with_capacity(1 << 20, TcpStream::connect(addr).unwrap());
            for i in 0..count {
                if i % 1000 == 0 {
                    pace(i);
                }
                let m = msg(i);
                write!(s, "{} ", m.len()).unwrap();
                s.write_all(&m).unwrap();
            }
            s.flush().unwrap();
        }
        _ => panic!("udp or tcp"),
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {count} messages over {proto} in {secs:.3} s: {:.0} messages/s",
        count as f64 / secs
    );
}

/// Sends every buffer as its own datagram on a connected socket, with as few system calls as
/// the kernel allows.
fn send_batch(s: &UdpSocket, bufs: &[Vec<u8>]) {
    use std::os::fd::AsRawFd;
    let mut iovs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero msghdr is valid; the fields set point into live buffers.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let mut sent = 0;
    while sent < msgs.len() {
        // SAFETY: msgs[sent..] are initialised headers whose buffers outlive the call.
        let n = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs[sent..].as_mut_ptr(), (msgs.len() - sent) as u32, 0) };
        if n <= 0 {
            // ENOBUFS/EAGAIN under load: try again; a datagram refused here was never sent.
            std::thread::yield_now();
            continue;
        }
        sent += n as usize;
    }
}
