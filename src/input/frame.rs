//! Syslog framing for stream sockets (RFC 6587): octet-counted (`123 <13>...`) and LF-delimited,
//! chosen per frame on the same connection. Only a valid count (a non-zero digit first, at most
//! ten digits) followed by a space is octet framing; anything else, such as a Dovecot log line
//! that starts with `2026-11-23 10:00:00`, is an LF-delimited line.
//!
//! `FramedRead` ends the stream after any decoder error, so content problems are never errors:
//! an oversized frame is skipped without buffering it whole and reported as
//! `Frame::Oversized`; invalid UTF-8 is passed on as bytes. The only error is the socket's.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// One decoded unit.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A message, without its trailing LF/CR.
    Msg(BytesMut),
    /// A message longer than the maximum, skipped.
    Oversized,
}

/// The socket failed (the only error: content problems are frames).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FrameError(#[from] std::io::Error);

/// Decoder for RFC 6587 octet-counted and LF-delimited syslog frames.
#[derive(Debug)]
pub struct SyslogFrames {
    max: usize,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    /// Skipping the rest of an oversized octet-counted frame.
    SkipBytes(usize),
    /// Skipping an oversized LF-delimited frame up to its LF.
    SkipLine,
}

/// Longest octet count accepted as a number: 10 digits is far beyond any max frame.
const MAX_COUNT_DIGITS: usize = 10;

impl SyslogFrames {
    /// A decoder that skips frames longer than `max` bytes.
    pub fn new(max: usize) -> SyslogFrames {
        SyslogFrames {
            max: max.max(1),
            state: State::Start,
        }
    }
}

/// `Some(count, digits)` when `buf` starts with a complete `COUNT SP`; `Err(())` when it may
/// still become one (only digits so far); `Ok(None)` when it is no count.
fn count_prefix(buf: &[u8]) -> Result<Option<(usize, usize)>, ()> {
    if !buf.first().is_some_and(|c| (b'1'..=b'9').contains(c)) {
        return Ok(None);
    }
    let digits = buf.iter().take(MAX_COUNT_DIGITS + 1).take_while(|c| c.is_ascii_digit()).count();
    match buf.get(digits) {
        None if digits <= MAX_COUNT_DIGITS => Err(()),
        Some(b' ') if digits <= MAX_COUNT_DIGITS => Ok(Some((buf[..digits].iter().fold(0, |n, d| n * 10 + usize::from(d - b'0')), digits))),
        _ => Ok(None),
    }
}

fn trim_end(mut b: BytesMut) -> BytesMut {
    while b.last().is_some_and(|&c| c == b'\n' || c == b'\r') {
        b.truncate(b.len() - 1);
    }
    b
}

impl Decoder for SyslogFrames {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            match self.state {
                State::SkipBytes(left) => {
                    let n = left.min(buf.len());
                    buf.advance(n);
                    if n < left {
                        self.state = State::SkipBytes(left - n);
                        return Ok(None);
                    }
                    self.state = State::Start;
                    return Ok(Some(Frame::Oversized));
                }
                State::SkipLine => match memchr::memchr(b'\n', buf) {
                    Some(i) => {
                        buf.advance(i + 1);
                        self.state = State::Start;
                        return Ok(Some(Frame::Oversized));
                    }
                    None => {
                        buf.clear();
                        return Ok(None);
                    }
                },
                State::Start => {}
            }
            // Stray separators between frames (a trailing LF after an octet-counted frame).
            let skip = buf.iter().take_while(|&&c| c == b'\n' || c == b'\r' || c == 0).count();
            buf.advance(skip);
            if buf.is_empty() {
                return Ok(None);
            }
            let Ok(count) = count_prefix(buf) else {
                // Only digits so far: a count or a line, the next byte tells.
                return Ok(None);
            };
            if let Some((count, digits)) = count {
                if count > self.max {
                    buf.advance(digits + 1);
                    self.state = State::SkipBytes(count);
                    continue;
                }
                if buf.len() < digits + 1 + count {
                    buf.reserve(digits + 1 + count - buf.len());
                    return Ok(None);
                }
                buf.advance(digits + 1);
                return Ok(Some(Frame::Msg(trim_end(buf.split_to(count)))));
            }
            match memchr::memchr(b'\n', buf) {
                Some(i) if i <= self.max + 1 => {
                    let line = trim_end(buf.split_to(i + 1));
                    if line.len() > self.max {
                        return Ok(Some(Frame::Oversized));
                    }
                    return Ok(Some(Frame::Msg(line)));
                }
                Some(i) => {
                    buf.advance(i + 1);
                    return Ok(Some(Frame::Oversized));
                }
                None if buf.len() > self.max + 1 => {
                    // Over-long and no end in sight: drop what we have, skip to the LF.
                    buf.clear();
                    self.state = State::SkipLine;
                    return Ok(None);
                }
                None => return Ok(None),
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(f) = self.decode(buf)? {
            return Ok(Some(f));
        }
        // A last LF-less line is still a message; a partial octet frame is lost with the peer.
        let partial = self.state == State::Start && !buf.is_empty() && !matches!(count_prefix(buf), Ok(Some(_)));
        let rest = buf.split();
        self.state = State::Start;
        Ok(partial.then(|| Frame::Msg(trim_end(rest))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(max: usize, chunks: &[&[u8]]) -> (Vec<Frame>, Option<String>) {
        let mut d = SyslogFrames::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(f)) => out.push(f),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e.to_string())),
                }
            }
        }
        while let Ok(Some(f)) = d.decode_eof(&mut buf) {
            out.push(f);
        }
        (out, None)
    }

    fn msg(s: &str) -> Frame {
        Frame::Msg(BytesMut::from(s))
    }

    #[test]
    fn octet_and_lf_frames_mix_on_one_stream() {
        let (f, e) = decode_all(100, &[b"6 <1>ab", b"c\n<2>x\r\n9 <3>hello\n\n6 <4>", b"end"]);
        assert_eq!(f, vec![msg("<1>abc"), msg("<2>x"), msg("<3>hello"), msg("<4>end")]);
        assert!(e.is_none());
    }

    #[test]
    fn oversized_octet_frame_is_skipped_without_buffering() {
        let mut d = SyslogFrames::new(8);
        let mut buf = BytesMut::from(&b"5000 "[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[b'x'; 4000]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "skipped bytes are not kept");
        buf.extend_from_slice(&[b'x'; 1000]);
        buf.extend_from_slice(b"3 abc<1>ok\n");
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::Oversized));
        assert_eq!(d.decode(&mut buf).unwrap(), Some(msg("abc")));
        assert_eq!(d.decode(&mut buf).unwrap(), Some(msg("<1>ok")));
    }

    #[test]
    fn oversized_line_is_skipped_to_its_lf() {
        let long = vec![b'y'; 50];
        let (f, _) = decode_all(8, &[&long, &long, b"\n<1>ok\n"]);
        assert_eq!(f, vec![Frame::Oversized, msg("<1>ok")]);
    }

    #[test]
    fn only_a_valid_count_and_a_space_is_octet_framing() {
        // Dovecot's own log over TCP, a line starting with digits: lines, not counts.
        let (f, e) = decode_all(
            100,
            &[b"2026-11-23 10:00:00 imap-login: x\n12a <1>x\n0 zero\n99999999999999 x\n", b"2026"],
        );
        assert_eq!(
            f,
            vec![
                msg("2026-11-23 10:00:00 imap-login: x"),
                msg("12a <1>x"),
                msg("0 zero"),
                msg("99999999999999 x"),
                msg("2026")
            ]
        );
        assert!(e.is_none());
        let (f, e) = decode_all(100, &[b"<1>\xff\xfe bytes\n"]);
        assert_eq!((f.len(), e), (1, None), "invalid UTF-8 passes as bytes");
    }
}
