//! The pipeline's first half: prefilter, parse and match. It keeps nothing from one line to the
//! next (a year-less date waits for the clock, see `parse::Stamp`), so blocks of lines can go
//! through copies of it on several threads while one thread counts their results in order
//! (`Pipeline::count`).
//!
//! What it hands on is owned and flat: the texts a match refers to are copied into the block's
//! `text` and referred to by spans, and only for lines that matched (or hold an address, when
//! those are asked for).

use crate::matcher::{Match, Matcher};
use crate::parse::{JournalScratch, Parser, Stamp};
use crate::prefilter::Prefilter;

/// Where a text is in a block's `text`: (start, end).
pub type Span = (u32, u32);

/// A line that passed the prefilter, or one that holds an address when those are asked for
/// (`Front::set_missed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Its index in the block (0-based), for line numbers.
    pub index: u32,
    /// It passed the prefilter and was parsed and matched (else it is there for its address).
    pub parsed: bool,
    /// Its time as written.
    pub stamp: Option<Stamp>,
    /// It was not UTF-8: its text is the lossy copy.
    pub invalid_utf8: bool,
    /// The line and its message, when it matched or holds an address.
    pub text: Span,
    /// The message part (a journal entry's is not inside its line).
    pub msg: Span,
    /// Its matches, a range of the block's `matches`.
    pub matches: std::ops::Range<u32>,
    /// The line holds an address (looked for only when asked, `Front::set_missed`): whether it
    /// is missed is the counting half's to say, once a trusted proxy's failure may have come to
    /// nothing.
    pub has_address: bool,
}

/// What the front made of a block of lines (reused from block to block).
#[derive(Debug, Default)]
pub struct Scanned {
    /// Lines in the block.
    pub lines_read: u64,
    /// Lines cut at the longest line allowed.
    pub truncated: u64,
    /// The lines worth counting, in order.
    pub lines: Vec<Line>,
    /// Their matches.
    pub matches: Vec<Match<Span>>,
    /// The texts spans refer to.
    pub text: String,
}

impl Scanned {
    /// Empties it, keeping its allocations.
    pub fn clear(&mut self) {
        self.lines_read = 0;
        self.truncated = 0;
        self.lines.clear();
        self.matches.clear();
        self.text.clear();
    }

    /// The text at `span`.
    pub fn text(&self, (start, end): Span) -> &str {
        &self.text[start as usize..end as usize]
    }

    /// Copies `s` in; its span.
    fn keep(&mut self, s: &str) -> Span {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        (start, self.text.len() as u32)
    }
}

/// The stages that need no state across lines: prefilter, parser, matcher, and their scratch.
/// A clone works on another thread.
#[derive(Debug, Clone)]
pub struct Front {
    pub(super) prefilter: Prefilter,
    pub(super) parser: Parser,
    pub(super) matcher: Matcher,
    /// Look for an address in each line (`Line::has_address`), for `test --missed`.
    missed: bool,
    journal: JournalScratch,
    lossy: String,
    candidates: Vec<u32>,
    known: Vec<u32>,
    hits: Vec<(u32, u32, u32)>,
    found: Vec<Match<&'static str>>,
}

impl Front {
    /// The first half of a pipeline made of these stages.
    pub fn new(prefilter: Prefilter, parser: Parser, matcher: Matcher) -> Front {
        Front {
            prefilter,
            parser,
            matcher,
            missed: false,
            journal: JournalScratch::default(),
            lossy: String::new(),
            candidates: Vec::new(),
            known: Vec::new(),
            hits: Vec::new(),
            found: Vec::new(),
        }
    }

    /// Look for an address in each line, so that the counting half can report the lines no
    /// failure rule took (`Event::Missed`). It costs more than the rest of the front on an
    /// ordinary line.
    pub fn set_missed(&mut self, on: bool) {
        self.missed = on;
    }

    /// Runs a block of whole lines (the last may lack its LF) through, each without its CR and
    /// cut at `max_line` bytes (as `LineSplitter` hands them out), into `out` (cleared first).
    /// The block's literals are found in one scan; a line without one is only counted.
    pub fn block(&mut self, block: &[u8], max_line: usize, out: &mut Scanned) {
        out.clear();
        let mut hits = std::mem::take(&mut self.hits);
        let mut known = std::mem::take(&mut self.known);
        let scanned = self.prefilter.scan_block(block, &mut hits);
        // Every line goes through when some rule has no literal, or lines without one are
        // wanted; a JSON line goes through anyway (an escape may hide a literal).
        let every = !scanned || self.missed || self.prefilter.has_unliteral();
        let mut ahead = Ahead { hits: &hits, next: 0 };
        let mut start = 0;
        while start < block.len() {
            let end = memchr::memchr(b'\n', &block[start..]).map_or(block.len(), |i| start + i);
            let whole = &block[start..end];
            start = end + 1;
            let mut line = whole.strip_suffix(b"\r").unwrap_or(whole);
            if line.len() > max_line {
                out.truncated += 1;
                line = &line[..max_line];
            }
            if every || line.first() == Some(&b'{') || ahead.found_before(end) {
                let seen = scanned && ahead.literals_of(block, line, &mut known);
                self.line(line, seen.then_some(&known[..]), out);
            } else {
                out.lines_read += 1;
            }
        }
        (self.hits, self.known) = (hits, known);
    }

    /// Runs one line through; `known` is the literals a scan ahead found in it. Appends to `out`.
    /// A line beyond `MAX_LINE_LIMIT` (a frame of a network input whose `max_frame` was set
    /// higher) is read up to it: its texts are held in 32-bit offsets.
    pub fn line(&mut self, line: &[u8], known: Option<&[u32]>, out: &mut Scanned) {
        let line = &line[..line.len().min(crate::parse::MAX_LINE_LIMIT)];
        let index = out.lines_read as u32;
        out.lines_read += 1;
        let mut scratch = std::mem::take(&mut self.candidates);
        let Some(candidates) = self.prefilter.select(line, known, &mut scratch) else {
            if self.missed && has_address(line) {
                let text = out.keep(&String::from_utf8_lossy(line));
                let at = out.matches.len() as u32;
                out.lines.push(Line {
                    index,
                    parsed: false,
                    stamp: None,
                    invalid_utf8: false,
                    text,
                    msg: text,
                    matches: at..at,
                    has_address: true,
                });
            }
            self.candidates = scratch;
            return;
        };
        let mut lossy = std::mem::take(&mut self.lossy);
        // simdutf8: the same check as std's, several times faster on ASCII logs.
        let (text, invalid_utf8) = match simdutf8::basic::from_utf8(line) {
            Ok(s) => (s, false),
            Err(_) => {
                lossy.clear();
                for chunk in line.utf8_chunks() {
                    lossy.push_str(chunk.valid());
                    if !chunk.invalid().is_empty() {
                        lossy.push(char::REPLACEMENT_CHARACTER);
                    }
                }
                (lossy.as_str(), true)
            }
        };
        let mut journal = std::mem::take(&mut self.journal);
        let rec = self.parser.parse_any(text, &mut journal);
        // The scratch vector outlives the line; reuse its allocation under the line's lifetime.
        let mut found: Vec<Match<&str>> = std::mem::take(&mut self.found).into_iter().map(|_| unreachable!()).collect();
        self.matcher.find(&rec, candidates, &mut found);
        let addressed = self.missed && has_address(line);
        let at = out.matches.len() as u32;
        let (mut text_span, mut msg_span) = ((0, 0), (0, 0));
        if !found.is_empty() || addressed {
            text_span = out.keep(text);
            msg_span = within(text, text_span, rec.msg).unwrap_or_else(|| out.keep(rec.msg));
            for m in found.drain(..) {
                let m = m.map(|s| {
                    within(text, text_span, s)
                        .or_else(|| within(rec.msg, msg_span, s))
                        .unwrap_or_else(|| out.keep(s))
                });
                out.matches.push(m);
            }
        }
        out.lines.push(Line {
            index,
            parsed: true,
            stamp: rec.time,
            invalid_utf8,
            text: text_span,
            msg: msg_span,
            matches: at..out.matches.len() as u32,
            has_address: addressed,
        });
        self.found = found.into_iter().map(|_| unreachable!()).collect();
        self.candidates = scratch;
        self.lossy = lossy;
        self.journal = journal;
    }
}

/// The span of `s` when it lies inside `outer`, which was kept at `at`.
fn within(outer: &str, at: Span, s: &str) -> Option<Span> {
    let from = (s.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    (from + s.len() <= outer.len()).then(|| (at.0 + from as u32, at.0 + (from + s.len()) as u32))
}

/// The literals a block scan found, handed out line by line.
struct Ahead<'h> {
    /// (start, end, literal id), by start.
    hits: &'h [(u32, u32, u32)],
    /// How far the lines have used `hits`.
    next: usize,
}

impl Ahead<'_> {
    /// Whether a literal not yet handed out starts before `end` (the end of the next line).
    fn found_before(&self, end: usize) -> bool {
        self.hits.get(self.next).is_some_and(|h| (h.0 as usize) < end)
    }

    /// The literals found inside `line` (a slice of `block`, lines in order) into `out`; false
    /// when the line is not a slice of the block.
    fn literals_of(&mut self, block: &[u8], line: &[u8], out: &mut Vec<u32>) -> bool {
        let from = (line.as_ptr() as usize).wrapping_sub(block.as_ptr() as usize);
        if from > block.len() || from + line.len() > block.len() {
            return false;
        }
        let to = from + line.len();
        out.clear();
        while let Some(&(start, end, lit)) = self.hits.get(self.next) {
            if start as usize >= to {
                break;
            }
            self.next += 1;
            // Before `from`: the unseen tail of a line cut at `max_line`.
            if start as usize >= from && end as usize <= to {
                out.push(lit);
            }
        }
        true
    }
}

/// Whether a line holds an IP address: a run of hex digits, dots and colons that parses as one
/// (a time such as `00:00:00` does not).
pub fn has_address(line: &[u8]) -> bool {
    let is_part = |b: &u8| b.is_ascii_hexdigit() || *b == b'.' || *b == b':';
    let is_ip = |t: &[u8]| std::str::from_utf8(t).is_ok_and(|t| t.parse::<std::net::IpAddr>().is_ok());
    line.split(|b| !is_part(b)).any(|tok| {
        // `ip:192.0.2.1`, `[192.0.2.1]:25`, `192.0.2.1.`: punctuation around, a port after.
        let tok = tok.trim_ascii_start();
        let start = tok.iter().position(|b| b.is_ascii_hexdigit()).unwrap_or(tok.len());
        let tok = &tok[start..];
        let end = tok.iter().rposition(|b| b.is_ascii_hexdigit()).map_or(0, |i| i + 1);
        let tok = &tok[..end];
        tok.len() >= 7
            && (is_ip(tok)
                || (tok.iter().filter(|&&b| b == b'.').count() == 3
                    && tok.iter().rposition(|&b| b == b':').is_some_and(|c| is_ip(&tok[..c]))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Mode;
    use crate::config::Config;
    use crate::input::LineSplitter;

    fn front(missed: bool) -> Front {
        let stages = Config::builtin_named("all.ron").unwrap().stages().unwrap();
        let mut f = crate::pipeline::Pipeline::new(&stages, Mode::Replay).unwrap().front();
        f.set_missed(missed);
        f
    }

    /// A frame longer than any line allowed (a network input's `max_frame` set beyond
    /// `MAX_LINE_LIMIT`) is read up to the limit, not wrapped in the 32-bit offsets.
    #[test]
    fn a_frame_beyond_the_limit_is_read_up_to_it() {
        let mut line = b"Jun 17 00:00:01 mx1 postfix/smtpd[1]: warning: unknown[192.0.2.7]: SASL LOGIN authentication failed: ".to_vec();
        line.resize(crate::parse::MAX_LINE_LIMIT + 10, b'a');
        let (mut f, mut out) = (front(false), Scanned::default());
        f.line(&line, None, &mut out);
        assert_eq!(out.lines.len(), 1);
        assert_eq!(out.text(out.lines[0].text).len(), crate::parse::MAX_LINE_LIMIT);
    }

    /// What a block made, line by line, with its texts resolved: comparable across blocks.
    fn seen(s: &Scanned) -> Vec<String> {
        s.lines
            .iter()
            .map(|l| {
                let ms = s.matches[l.matches.start as usize..l.matches.end as usize].iter();
                let ms: Vec<Match<&str>> = ms.map(|m| m.map(|sp| s.text(sp))).collect();
                let (text, msg) = (s.text(l.text), s.text(l.msg));
                format!(
                    "{} {} {:?} {} {text:?} {msg:?} {ms:?} {}",
                    l.index, l.parsed, l.stamp, l.invalid_utf8, l.has_address
                )
            })
            .collect()
    }

    /// A block at once gives what its lines one by one give, whatever is in it: CRLF, lines cut
    /// at `max_line` with a literal beyond the cut, a journal entry whose escape hides a literal,
    /// bytes that are not UTF-8, an empty line, a last line without LF; with `missed` too.
    #[test]
    fn a_block_at_once_is_its_lines_one_by_one() {
        let sasl = "Jun 17 00:00:01 mx1 postfix/smtpd[1]: warning: unknown[192.0.2.7]: SASL LOGIN authentication failed: x";
        let long = format!(
            "Jun 17 00:00:02 mx1 postfix/smtpd[1]: warning: {}[192.0.2.8]: SASL LOGIN authentication failed: x",
            "y".repeat(300)
        );
        let json = r#"{"__REALTIME_TIMESTAMP":"1781654401000000","_HOSTNAME":"mx1","SYSLOG_IDENTIFIER":"postfix/smtpd","_PID":"1","MESSAGE":"warning: unknown[192.0.2.9]: SASL LOGIN authentic\u0061tion failed: x"}"#;
        let mut block = Vec::new();
        for l in [
            sasl,
            "",
            &long,
            json,
            "Jun 17 00:00:03 mx1 postfix/qmgr[2]: connect to 198.51.100.4 refused",
        ] {
            block.extend_from_slice(l.as_bytes());
            block.extend_from_slice(b"\r\n");
        }
        block.extend_from_slice(b"Jun 17 00:00:04 mx1 dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<\xff>, method=PLAIN, rip=203.0.113.5, lip=192.0.2.10");
        for missed in [false, true] {
            for max_line in [16384, 200] {
                let mut f = front(missed);
                let mut at_once = Scanned::default();
                f.block(&block, max_line, &mut at_once);
                let mut one_by_one = Scanned::default();
                let mut splitter = LineSplitter::new(max_line);
                splitter.feed(&block, |l| f.line(l, None, &mut one_by_one));
                splitter.finish(|l| f.line(l, None, &mut one_by_one));
                assert_eq!(seen(&at_once), seen(&one_by_one), "missed {missed}, max_line {max_line}");
                assert_eq!((at_once.lines_read, at_once.truncated), (6, u64::from(max_line == 200)));
                let matched = at_once.lines.iter().filter(|l| !l.matches.is_empty()).count();
                assert_eq!(matched, if max_line == 200 { 3 } else { 4 }, "missed {missed}, max_line {max_line}");
            }
        }
    }
}
