//! Syslog over the network: UDP, TCP (RFC 6587 framing) and Unix datagram sockets.
//!
//! Everything is bounded: frame length, connections (excess refused and counted), and the queue
//! to the pipeline. TCP waits when the queue is full, so backpressure reaches rsyslog's own
//! queue; UDP cannot wait, so it drops and counts. Content problems never end a connection; only
//! an octet count that is not a number does, on purpose, with a log line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use futures_util::StreamExt;
use ipnet::IpNet;
use tokio::net::{TcpListener, UdpSocket, UnixDatagram};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::Msg;
use super::frame::{Frame, SyslogFrames};

/// Counters of one input, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct InputStats {
    /// Messages handed to the pipeline.
    pub received: AtomicU64,
    /// Dropped because the pipeline's queue was full (UDP only; TCP waits).
    pub dropped_queue_full: AtomicU64,
    /// Frames longer than `max_frame`, skipped.
    pub dropped_oversized: AtomicU64,
    /// Connections closed for an octet count that is not a number.
    pub bad_count: AtomicU64,
    /// Datagrams or connections from senders outside `allow`.
    pub not_allowed: AtomicU64,
    /// Connections refused above `max_connections`.
    pub refused_connections: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections closed after `idle_timeout` of silence.
    pub idle_closed: AtomicU64,
    /// Datagrams the kernel dropped because the socket buffer was full (UDP, from /proc).
    pub kernel_drops: AtomicU64,
}

impl InputStats {
    /// One line for logs: every non-zero counter.
    pub fn summary(&self) -> String {
        let f = |n: &str, v: &AtomicU64| {
            let v = v.load(Ordering::Relaxed);
            (v > 0).then(|| format!("{n} {v}"))
        };
        let parts: Vec<String> = [
            f("received", &self.received),
            f("connections", &self.connections),
            f("dropped (queue full)", &self.dropped_queue_full),
            f("dropped (oversized)", &self.dropped_oversized),
            f("closed (bad octet count)", &self.bad_count),
            f("refused (not allowed)", &self.not_allowed),
            f("refused (too many connections)", &self.refused_connections),
            f("closed (idle)", &self.idle_closed),
            f("dropped by the kernel", &self.kernel_drops),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            "nothing received".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Who may send: empty means anyone.
#[derive(Debug, Clone, Default)]
pub struct Allow(pub Vec<IpNet>);

impl Allow {
    fn permits(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n.contains(&ip.to_canonical()))
    }
}

/// Frames handed on in one queue slot, at most.
const BATCH: usize = 256;

/// Receives datagrams until `stop`: one datagram, one message. Up to `BATCH` datagrams are
/// taken per system call (recvmmsg) and handed on in one queue slot.
pub async fn udp(sock: UdpSocket, allow: Allow, max: usize, tx: mpsc::Sender<Msg>, stats: Arc<InputStats>, stop: CancellationToken) {
    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    // One byte more than `max`, so an oversized datagram shows as truncated.
    let mut rx = Mmsg::new(64, (max + 1).min(65_536));
    let mut drops_read = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = sock.readable() => if r.is_err() { break },
        }
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            match sock.try_io(tokio::io::Interest::READABLE, || rx.recv(&sock)) {
                Ok(n) => {
                    for i in 0..n {
                        let (data, peer, truncated) = rx.get(i);
                        if truncated {
                            stats.dropped_oversized.fetch_add(1, Ordering::Relaxed);
                        } else {
                            accept_datagram(data, peer, &allow, max, &stats, &mut batch);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing_warn(&format!("udp recv: {e}"));
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match tx.try_send(Msg::Frames(batch)) {
                Ok(()) => {
                    stats.received.fetch_add(n, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    stats.dropped_queue_full.fetch_add(n, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        // /proc/net/udp is a few system calls and a parse: once a second is plenty.
        if drops_read.elapsed() >= std::time::Duration::from_secs(1) {
            drops_read = std::time::Instant::now();
            if let Some(d) = kernel_udp_drops(port) {
                stats.kernel_drops.store(d, Ordering::Relaxed);
            }
        }
    }
    if let Some(d) = kernel_udp_drops(port) {
        stats.kernel_drops.store(d, Ordering::Relaxed);
    }
}

/// Buffers for recvmmsg: `slots` datagrams of up to `size` bytes and their senders.
struct Mmsg {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<(usize, bool, libc::socklen_t)>,
}

impl Mmsg {
    fn new(slots: usize, size: usize) -> Mmsg {
        // SAFETY: an all-zero sockaddr_storage is a valid (unspecified) address.
        let zero: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Mmsg {
            bufs: vec![vec![0; size]; slots],
            addrs: vec![zero; slots],
            lens: vec![(0, false, 0); slots],
        }
    }

    /// One recvmmsg without waiting; the number of datagrams received.
    fn recv(&mut self, sock: &UdpSocket) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(self.addrs.iter_mut())
            .map(|(iov, addr)| {
                // SAFETY: an all-zero mmsghdr is valid; the pointers set are to live buffers.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h
            })
            .collect();
        // SAFETY: hdrs, iovs, bufs and addrs outlive the call; lengths match the buffers.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().take(n).enumerate() {
            self.lens[i] = (
                h.msg_len as usize,
                h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                h.msg_hdr.msg_namelen,
            );
        }
        Ok(n)
    }

    /// Datagram `i` of the last `recv`: its bytes, sender, and whether it was cut.
    fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>, bool) {
        let (len, truncated, _) = self.lens[i];
        (&self.bufs[i][..len.min(self.bufs[i].len())], sockaddr(&self.addrs[i]), truncated)
    }
}

/// The address in a `sockaddr_storage` the kernel filled.
fn sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((a.sin6_addr.s6_addr, u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}

fn accept_datagram(d: &[u8], peer: Option<SocketAddr>, allow: &Allow, max: usize, stats: &InputStats, batch: &mut Vec<BytesMut>) {
    if let Some(p) = peer
        && !allow.permits(p.ip())
    {
        stats.not_allowed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut end = d.len();
    while end > 0 && matches!(d[end - 1], b'\n' | b'\r' | 0) {
        end -= 1;
    }
    if end > max {
        stats.dropped_oversized.fetch_add(1, Ordering::Relaxed);
    } else if end > 0 {
        batch.push(BytesMut::from(&d[..end]));
    }
}

/// Receives datagrams on a Unix socket (`logger -u`, rsyslog's omuxsock) until `stop`.
pub async fn unix(sock: UnixDatagram, max: usize, tx: mpsc::Sender<Msg>, stats: Arc<InputStats>, stop: CancellationToken) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let r = tokio::select! {
            _ = stop.cancelled() => break,
            r = sock.recv(&mut buf) => r,
        };
        let mut batch = Vec::new();
        match r {
            Ok(n) => accept_datagram(&buf[..n], None, &Allow::default(), max, &stats, &mut batch),
            Err(e) => tracing_warn(&format!("unix recv: {e}")),
        }
        if !batch.is_empty() {
            // A local sender can wait: like TCP, backpressure instead of loss.
            if tx.send(Msg::Frames(batch)).await.is_err() {
                break;
            }
            stats.received.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// TCP limits.
#[derive(Debug, Clone)]
pub struct TcpLimits {
    /// Longest frame.
    pub max_frame: usize,
    /// Most connections at once.
    pub max_connections: usize,
    /// Silence after which a connection is closed.
    pub idle_timeout: std::time::Duration,
}

/// Accepts connections until `stop`; each is read until EOF, an unrecoverable framing error, or
/// `stop`.
pub async fn tcp(
    listener: TcpListener,
    allow: Allow,
    limits: TcpLimits,
    tx: mpsc::Sender<Msg>,
    stats: Arc<InputStats>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing_warn(&format!("tcp accept: {e}"));
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !allow.permits(peer.ip()) {
            stats.not_allowed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused_connections.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (tx, stats, stop, max, idle) = (tx.clone(), stats.clone(), stop.clone(), limits.max_frame, limits.idle_timeout);
        conns.spawn(async move {
            let _permit = permit;
            let mut frames = FramedRead::new(stream, SyslogFrames::new(max)).ready_chunks(BATCH);
            loop {
                let chunk = tokio::select! {
                    _ = stop.cancelled() => break,
                    c = tokio::time::timeout(idle, frames.next()) => match c {
                        Ok(Some(c)) => c,
                        Ok(None) => break,
                        Err(_) => {
                            stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    },
                };
                let mut batch = Vec::with_capacity(chunk.len());
                let mut fatal = None;
                for f in chunk {
                    match f {
                        Ok(Frame::Msg(m)) if !m.is_empty() => batch.push(m),
                        Ok(Frame::Msg(_)) => {}
                        Ok(Frame::Oversized) => {
                            stats.dropped_oversized.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => fatal = Some(e),
                    }
                }
                let n = batch.len() as u64;
                if n > 0 {
                    if tx.send(Msg::Frames(batch)).await.is_err() {
                        break;
                    }
                    stats.received.fetch_add(n, Ordering::Relaxed);
                }
                if let Some(e) = fatal {
                    stats.bad_count.fetch_add(1, Ordering::Relaxed);
                    tracing_warn(&format!("tcp {peer}: {e}; closing the connection"));
                    break;
                }
            }
        });
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}

/// Kernel-side drops of the UDP socket bound to `port` (`/proc/net/udp{,6}`, last column).
pub fn kernel_udp_drops(port: u16) -> Option<u64> {
    let mut total = None;
    for f in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                let drops: u64 = cols.last().and_then(|d| d.parse().ok()).unwrap_or(0);
                total = Some(total.unwrap_or(0) + drops);
            }
        }
    }
    total
}

/// A warning on stderr (the daemon's log goes to the journal from there).
pub fn tracing_warn(msg: &str) {
    eprintln!("mailpipe: warning: {msg}");
}
