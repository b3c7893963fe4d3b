//! The edge where bytes come in: standard input, and syslog over UDP, TCP and Unix sockets.
//!
//! A stream is cut into lines by `LineSplitter`, which never fails: CR before LF is dropped, an
//! over-long line is cut at `max_line` (the rest up to its LF is skipped and the line counted),
//! and a last line without LF is still a line. Lines wholly inside a chunk are handed out as
//! slices of it; only a line split across chunks is copied. `Blocks` cuts a stream into blocks
//! of whole lines instead, for the lines to be split on other threads, with the same result.

pub mod frame;
pub mod journal;
pub mod net;

use serde::Deserialize;

/// An input of a pipeline file.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub enum InputConfig {
    /// Lines on standard input (`tail -F /var/log/maillog | mailpipe run`).
    Stdin,
    /// Syslog datagrams (RFC 3164 or 5424), one message each, as rsyslog's omfwd sends them.
    Udp {
        /// `ADDR:PORT` to bind, IPv4 or IPv6 (`[::1]:5514`); port 0 picks one (it is logged).
        listen: String,
        /// Sender networks allowed; empty: anyone.
        #[serde(default)]
        allow: Vec<String>,
        /// Longest datagram accepted.
        #[serde(default = "default_max_frame")]
        max_frame: usize,
        /// Kernel receive buffer (SO_RCVBUF) in bytes: room for bursts.
        #[serde(default = "default_recv_buffer")]
        recv_buffer: usize,
    },
    /// Syslog over TCP: LF-delimited or RFC 6587 octet-counted frames, told apart per frame.
    Tcp {
        /// `ADDR:PORT` to bind; port 0 picks one (it is logged).
        listen: String,
        /// Sender networks allowed; empty: anyone.
        #[serde(default)]
        allow: Vec<String>,
        /// Longest frame; longer ones are skipped and counted.
        #[serde(default = "default_max_frame")]
        max_frame: usize,
        /// Most connections at once. When all are taken, a sender holding several gives up its
        /// oldest to a newcomer; otherwise the newcomer is refused and counted.
        #[serde(default = "default_max_connections")]
        max_connections: usize,
        /// Most connections from one address at once; more are refused and counted.
        #[serde(default = "default_max_per_source")]
        max_per_source: usize,
        /// A connection silent this long is closed, so idle ones cannot hold every slot.
        #[serde(default = "default_idle_timeout")]
        idle_timeout: crate::primitives::Dur,
    },
    /// Syslog datagrams on a Unix socket (`logger -u PATH`, rsyslog's omuxsock).
    Unix {
        /// Socket path: a stale socket there is replaced; anything else there is an error.
        path: String,
        /// Longest datagram accepted.
        #[serde(default = "default_max_frame")]
        max_frame: usize,
    },
    /// The systemd journal (`journalctl --follow --output=json` as a child), resumed after the
    /// last entry processed when a state file keeps its cursor.
    Journal {
        /// Units to read (`_SYSTEMD_UNIT`, e.g. `"dovecot.service"`).
        #[serde(default)]
        units: Vec<String>,
        /// Syslog identifiers to read (`SYSLOG_IDENTIFIER`, e.g. `"postfix/submission/smtpd"`);
        /// with `units` empty too: the whole journal.
        #[serde(default)]
        identifiers: Vec<String>,
        /// A journal directory instead of the system's.
        #[serde(default)]
        directory: Option<String>,
        /// The journalctl program.
        #[serde(default = "default_journalctl")]
        journalctl: String,
        /// Without a saved cursor, how far back to start.
        #[serde(default = "default_lookback")]
        lookback: crate::primitives::Dur,
        /// Longest entry line (JSON) accepted.
        #[serde(default = "default_journal_frame")]
        max_frame: usize,
    },
}

fn default_journalctl() -> String {
    "journalctl".into()
}
fn default_lookback() -> crate::primitives::Dur {
    crate::primitives::Dur(600)
}
fn default_journal_frame() -> usize {
    64 << 10
}

fn default_max_frame() -> usize {
    16384
}
fn default_recv_buffer() -> usize {
    8 << 20
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_per_source() -> usize {
    16
}
fn default_idle_timeout() -> crate::primitives::Dur {
    crate::primitives::Dur(600)
}

/// Cuts a byte stream into lines.
#[derive(Debug)]
pub struct LineSplitter {
    max_line: usize,
    carry: Vec<u8>,
    /// Inside an over-long line whose head was already emitted: skip to its LF.
    skipping: bool,
    /// Lines cut at `max_line`.
    pub truncated: u64,
}

impl LineSplitter {
    /// A splitter that cuts lines at `max_line` bytes.
    pub fn new(max_line: usize) -> LineSplitter {
        LineSplitter {
            max_line: max_line.max(1),
            carry: Vec::new(),
            skipping: false,
            truncated: 0,
        }
    }

    /// Feeds a chunk; calls `f` for each complete line in it.
    pub fn feed(&mut self, mut data: &[u8], mut f: impl FnMut(&[u8])) {
        while !data.is_empty() {
            let nl = memchr::memchr(b'\n', data);
            let (part, rest, complete) = match nl {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if self.skipping {
                self.skipping = !complete;
                continue;
            }
            if self.carry.is_empty() && complete {
                self.emit(part, &mut f);
                continue;
            }
            // Two bytes beyond max_line are kept: without its LF yet, a line of max_line + 1
            // bytes may be one of exactly max_line and its CR; one of max_line + 2 is too long.
            let room = (self.max_line + 2).saturating_sub(self.carry.len());
            self.carry.extend_from_slice(&part[..part.len().min(room)]);
            let carry = std::mem::take(&mut self.carry);
            if complete {
                self.emit(&carry, &mut f);
            } else if carry.len() > self.max_line + 1 {
                // Over-long and still going: emit its head now, skip the rest.
                self.emit(&carry, &mut f);
                self.skipping = true;
            } else {
                self.carry = carry;
                continue;
            }
            self.carry = carry;
            self.carry.clear();
        }
    }

    /// Hands one line to `f`, without its CR and cut at `max_line` (counted).
    fn emit(&mut self, line: &[u8], f: &mut impl FnMut(&[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max_line {
            self.truncated += 1;
            f(&line[..self.max_line]);
        } else {
            f(line);
        }
    }

    /// End of stream: a last line without LF is a line too.
    pub fn finish(&mut self, mut f: impl FnMut(&[u8])) {
        if !self.carry.is_empty() {
            let carry = std::mem::take(&mut self.carry);
            self.emit(&carry, &mut f);
        }
        self.skipping = false;
    }
}

/// Reads a stream as blocks of whole lines (the last may lack its LF), so that each block can be
/// split into lines on its own: a line across two reads is carried into the next block, and an
/// over-long one is cut the way `LineSplitter` cuts it (its head, then nothing up to its LF).
#[derive(Debug)]
pub struct Blocks {
    max_line: usize,
    /// The start of a line the last block did not finish.
    tail: Vec<u8>,
    /// Inside an over-long line whose head was already handed out: skip to its LF.
    skipping: bool,
    /// The stream has ended.
    eof: bool,
}

impl Blocks {
    /// Blocks whose lines are cut at `max_line` bytes.
    pub fn new(max_line: usize) -> Blocks {
        Blocks {
            max_line: max_line.max(1),
            tail: Vec::new(),
            skipping: false,
            eof: false,
        }
    }

    /// Fills `block` with the next whole lines, reading up to `read` bytes at a time; false at
    /// the end of the stream (reached once: a terminal is not asked for a second end).
    pub fn next(&mut self, reader: &mut dyn std::io::Read, block: &mut Vec<u8>, read: usize) -> std::io::Result<bool> {
        block.clear();
        if self.eof {
            return Ok(false);
        }
        block.append(&mut self.tail);
        // `block[..filled]` is read; at the top of the loop it holds no LF (one line so far).
        let mut filled = block.len();
        loop {
            if block.len() < filled + read {
                block.resize(filled + read, 0);
            }
            let n = loop {
                match reader.read(&mut block[filled..]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            if n == 0 {
                self.eof = true;
                block.truncate(filled);
                return Ok(!block.is_empty());
            }
            let new = filled;
            filled += n;
            if self.skipping {
                match memchr::memchr(b'\n', &block[new..filled]) {
                    Some(i) => {
                        block.copy_within(new + i + 1..filled, new);
                        filled -= i + 1;
                        self.skipping = false;
                    }
                    None => {
                        filled = new;
                        continue;
                    }
                }
            }
            // Only what was just read is searched: a long line is not scanned again each read.
            match memchr::memrchr(b'\n', &block[new..filled]) {
                Some(i) => {
                    let end = new + i + 1;
                    self.tail.extend_from_slice(&block[end..filled]);
                    block.truncate(end);
                    if self.tail.len() > self.max_line + 1 {
                        self.cut(block, true);
                    }
                    return Ok(true);
                }
                None if filled > self.max_line + 1 => {
                    block.truncate(filled);
                    self.tail = std::mem::take(block);
                    self.cut(block, false);
                    return Ok(true);
                }
                None => {}
            }
        }
    }

    /// Hands out the head of the over-long line in `tail` as a line of its own (after `block`'s
    /// lines when `after`), and skips the rest of it up to its LF.
    fn cut(&mut self, block: &mut Vec<u8>, after: bool) {
        if !after {
            block.clear();
        }
        // Two bytes beyond max_line, as `LineSplitter` keeps: told from "max_line + CR".
        block.extend_from_slice(&self.tail[..self.max_line + 2]);
        block.push(b'\n');
        self.tail.clear();
        self.skipping = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, u64) {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l| out.push(l.to_vec()));
        }
        s.finish(|l| out.push(l.to_vec()));
        (out, s.truncated)
    }

    #[test]
    fn lines_across_chunks_crlf_and_tail() {
        let (l, t) = split(100, &[b"ab\r\ncd", b"e\n\nlast"]);
        assert_eq!(l, vec![b"ab".to_vec(), b"cde".to_vec(), b"".to_vec(), b"last".to_vec()]);
        assert_eq!(t, 0);
    }

    #[test]
    fn long_line_is_cut_and_next_line_survives() {
        let long = [b'x'; 50];
        let (l, t) = split(10, &[&long[..20], &long[20..], b"\nok\n"]);
        assert_eq!(l, vec![vec![b'x'; 10], b"ok".to_vec()]);
        assert_eq!(t, 1);
        let (l, t) = split(10, &[&[&long[..], b"\nok"].concat()]);
        assert_eq!(l, vec![vec![b'x'; 10], b"ok".to_vec()]);
        assert_eq!(t, 1);
    }

    /// `Blocks` then `LineSplitter` per block gives what `LineSplitter` gives on the stream,
    /// and so does `LineSplitter` fed in pieces: however the reads fall.
    #[test]
    fn blocks_split_like_the_splitter() {
        let mut seed = 7u64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..400 {
            let stream: Vec<u8> = (0..rand(300)).map(|_| [b'a', b'b', b'\r', b'\n'][rand(4) as usize]).collect();
            let max = 1 + rand(12) as usize;
            let want = split(max, &[&stream]);
            let cut = 1 + rand(40) as usize;
            assert_eq!(split(max, &stream.chunks(cut).collect::<Vec<_>>()), want, "pieces of {cut}");
            // Reads of random sizes, as a pipe hands them out.
            let sizes: Vec<usize> = (0..64).map(|_| 1 + rand(40) as usize).collect();
            let mut reader = Chopped(&stream, sizes.into_iter().cycle());
            let mut blocks = Blocks::new(max);
            let (mut got, mut truncated, mut block) = (Vec::new(), 0, Vec::new());
            while blocks.next(&mut reader, &mut block, 1 + rand(30) as usize).unwrap() {
                let (lines, t) = split(max, &[&block]);
                got.extend(lines);
                truncated += t;
            }
            assert_eq!((got, truncated), want, "{:?} max {max}", String::from_utf8_lossy(&stream));
        }
    }

    /// A terminal's Ctrl-D ends the stream once: a last line without LF is not followed by a
    /// second read that would wait for another.
    #[test]
    fn the_end_of_a_stream_is_read_once() {
        struct Terminal(&'static [u8], u32);
        impl std::io::Read for Terminal {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                self.1 += u32::from(n == 0);
                assert!(self.1 <= 1, "read again after the end");
                Ok(n)
            }
        }
        let (mut t, mut blocks, mut block) = (Terminal(b"first\nlast", 0), Blocks::new(100), Vec::new());
        assert!(blocks.next(&mut t, &mut block, 4).unwrap());
        assert_eq!(block, b"first\n");
        assert!(blocks.next(&mut t, &mut block, 4).unwrap());
        assert_eq!(block, b"last");
        assert!(!blocks.next(&mut t, &mut block, 4).unwrap());
    }

    /// A reader that hands out at most the next size at a time.
    struct Chopped<'a, I>(&'a [u8], I);

    impl<I: Iterator<Item = usize>> std::io::Read for Chopped<'_, I> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.next().unwrap_or(1).min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn exact_length_line_is_not_truncated() {
        let (l, t) = split(3, &[b"abc\r\nabc\n"]);
        assert_eq!(l, vec![b"abc".to_vec(), b"abc".to_vec()]);
        assert_eq!(t, 0);
    }
}
