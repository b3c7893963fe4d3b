//! `mailpipe test`: replay log files through a pipeline at full speed and report, like
//! fail2ban-regex, what matched, what was missed and which bans would be made.
//!
//! The JSON-lines output (`--json`, `--matches`, `--decisions`, `--missed`) is a contract:
//! every line is one object with a `kind` (`match`, `ignored`, `ban`, `missed`, `summary`), the
//! summary last. Fields may be added, never renamed.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::time::Instant;

use serde_json::json;

use crate::input::LineSplitter;
use crate::matcher::Found;
use crate::parse::rfc3339;
use crate::pipeline::{Event, Pipeline, Stats};
use crate::prefilter::Prefilter;
use crate::sink::decision_json;

/// What to print.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Summary as JSON instead of text.
    pub json: bool,
    /// One `match` object per failure (and `ignored` per ignore-rule hit).
    pub matches: bool,
    /// One `ban` object per decision.
    pub decisions: bool,
    /// One `missed` object per unmatched line that contains an address.
    pub missed: bool,
    /// Longest line; longer ones are cut and counted.
    pub max_line: usize,
}

/// Totals of a replay, beyond the pipeline's own counters.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Pipeline counters.
    pub stats: Stats,
    /// Lines cut at `max_line`.
    pub truncated: u64,
    /// Unmatched lines that contain an address (counted only with `missed`).
    pub missed_with_address: u64,
    /// Whether they were counted.
    pub missed: bool,
    /// Wall-clock seconds.
    pub elapsed: f64,
    /// The accounts failures were most often on, with about how many (most first).
    pub targeted: Vec<(String, u64)>,
}

/// One input to replay: a display name and its bytes.
pub struct Source<'a> {
    /// Name shown in output (`-` for stdin).
    pub name: String,
    /// The bytes.
    pub reader: Box<dyn Read + Send + 'a>,
    /// Their length, when known (files), for the progress bar.
    pub len: Option<u64>,
}

/// A progress bar on stderr for inputs of more than 64 MiB, only when stderr is a terminal.
fn progress(name: &str, len: Option<u64>) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    let len = len.filter(|&l| l > 64 << 20)?;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(name.to_string());
    Some(bar)
}

/// Reads `reader` in 1 MiB chunks into `full`, reusing the buffers that come back on `free`.
/// A block of input read ahead, with the literals the prefilter found in it.
#[derive(Default)]
struct Chunk {
    bytes: Vec<u8>,
    ahead: Ahead,
}

/// The literals found in a block, handed out line by line.
#[derive(Default)]
struct Ahead {
    /// (start, end, literal id), by start; valid when `scanned`.
    hits: Vec<(u32, u32, u32)>,
    scanned: bool,
    /// How far the lines have used `hits`.
    next: usize,
}

impl Ahead {
    /// The literals found inside `line` (a slice of `block`, lines in order) into `out`; false
    /// when the line is not one the scan saw whole (it spans blocks).
    fn literals_of(&mut self, block: &[u8], line: &[u8], out: &mut Vec<u32>) -> bool {
        let from = (line.as_ptr() as usize).wrapping_sub(block.as_ptr() as usize);
        if !self.scanned || from > block.len() || from + line.len() > block.len() {
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

/// Reads blocks and finds the prefilter's literals in them, on its own thread: the matching
/// thread then only looks at the lines that hold one.
fn read_chunks(
    mut reader: Box<dyn Read + Send + '_>,
    prefilter: &Prefilter,
    full: &std::sync::mpsc::SyncSender<Chunk>,
    free: &std::sync::mpsc::Receiver<Chunk>,
) -> std::io::Result<()> {
    loop {
        let mut c = free.try_recv().unwrap_or_default();
        c.bytes.resize(1 << 20, 0);
        let n = match reader.read(&mut c.bytes) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        c.bytes.truncate(n);
        c.ahead.scanned = prefilter.scan_block(&c.bytes, &mut c.ahead.hits);
        c.ahead.next = 0;
        if full.send(c).is_err() {
            return Ok(());
        }
    }
}

/// Replays `sources` through `pipeline`; `reference` (Unix seconds) is the clock until the log
/// itself has given one (it places the first year-less date, and lines without a time).
pub fn run(
    pipeline: &mut Pipeline,
    sources: Vec<Source<'_>>,
    reference: i64,
    opts: Options,
    out: &mut dyn Write,
) -> std::io::Result<Report> {
    let start = Instant::now();
    let names = pipeline.jail_names().to_vec();
    pipeline.set_want_user(opts.matches);
    let mut report = Report {
        missed: opts.missed,
        ..Report::default()
    };
    let mut err = Ok(());
    for src in sources {
        let mut splitter = LineSplitter::new(opts.max_line.max(1));
        let mut lineno = 0u64;
        let file = src.name.clone();
        let prefilter = pipeline.prefilter().clone();
        let mut on_line = |line: &[u8], known: Option<&[u32]>| {
            lineno += 1;
            let matched = pipeline.process_scanned(line, known, reference, |e| {
                let v = match e {
                    Event::Match { m, time } if opts.matches => match m.found {
                        Found::Failure { ip, user, .. } => {
                            let mut v = json!({"kind": "match", "file": file, "line": lineno, "jail": names[m.jail as usize], "rule": m.rule, "host": ip.to_string(), "time": rfc3339(time)});
                            if let Some(u) = user {
                                v["user"] = u.into();
                            }
                            v
                        }
                        Found::Ignored => json!({"kind": "ignored", "file": file, "line": lineno, "jail": names[m.jail as usize], "ignore_rule": m.rule}),
                        Found::Success { ip, user } => json!({"kind": "success", "file": file, "line": lineno, "jail": names[m.jail as usize], "success_rule": m.rule, "host": ip.to_string(), "user": user}),
                        Found::BadHost(h) => json!({"kind": "bad_host", "file": file, "line": lineno, "jail": names[m.jail as usize], "rule": m.rule, "host": h}),
                    },
                    Event::Decision(d) if opts.decisions => {
                        let mut v = decision_json(d);
                        v["file"] = file.clone().into();
                        v["line"] = lineno.into();
                        v
                    }
                    _ => return,
                };
                if err.is_ok() {
                    err = writeln!(out, "{v}");
                }
            });
            // Looking for an address costs more than the whole pipeline on an ordinary line:
            // only when asked.
            if !matched && opts.missed && has_address(line) {
                report.missed_with_address += 1;
                let v = json!({"kind": "missed", "file": file, "line": lineno, "text": String::from_utf8_lossy(line)});
                if err.is_ok() {
                    err = writeln!(out, "{v}");
                }
            }
        };
        // Reading and scanning for literals on a second core while this one matches.
        let Source { name, reader, len } = src;
        let bar = progress(&name, len);
        let mut known = Vec::new();
        std::thread::scope(|scope| {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Chunk>(4);
            let (free_tx, free_rx) = std::sync::mpsc::channel::<Chunk>();
            let read = scope.spawn(move || read_chunks(reader, &prefilter, &full_tx, &free_rx));
            for mut chunk in full_rx {
                let Chunk { bytes, ahead } = &mut chunk;
                splitter.feed(bytes, |line| {
                    let seen = ahead.literals_of(bytes, line, &mut known);
                    on_line(line, seen.then_some(&known[..]));
                });
                if let Some(b) = &bar {
                    b.inc(chunk.bytes.len() as u64);
                }
                let _ = free_tx.send(chunk);
            }
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            read.join().expect("reader thread")
        })
        .map_err(|e| std::io::Error::new(e.kind(), format!("{name}: {e}")))?;
        splitter.finish(|line| on_line(line, None));
        report.truncated += splitter.truncated;
        std::mem::replace(&mut err, Ok(()))?;
    }
    report.stats = pipeline.stats().clone();
    report.targeted = pipeline.most_targeted(10);
    report.elapsed = start.elapsed().as_secs_f64();
    if opts.json || opts.matches || opts.decisions || opts.missed {
        writeln!(out, "{}", summary_json(&report, &names))?;
    } else {
        out.write_all(summary_text(&report, &names, pipeline).as_bytes())?;
    }
    Ok(report)
}

/// A rule for a one-line listing.
fn shorten(rule: &str) -> String {
    if rule.len() <= 90 {
        return rule.to_string();
    }
    let cut = (0..=87).rev().find(|&i| rule.is_char_boundary(i)).unwrap_or(0);
    format!("{}...", &rule[..cut])
}

fn lines_per_s(r: &Report) -> f64 {
    if r.elapsed > 0.0 { r.stats.lines as f64 / r.elapsed } else { 0.0 }
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

/// Lines no failure rule matched and no ignore rule claimed.
fn missed(r: &Report) -> u64 {
    r.stats.lines - r.stats.matched_lines - r.stats.ignored_lines
}

/// The summary object (`kind: "summary"`).
pub fn summary_json(r: &Report, names: &[String]) -> serde_json::Value {
    let s = &r.stats;
    json!({
        "kind": "summary",
        "lines": s.lines,
        "skipped_by_prefilter": s.skipped,
        "parsed": s.parsed,
        "time_unparsed": s.time_unparsed,
        "invalid_utf8": s.invalid_utf8,
        "truncated": r.truncated,
        "matched": s.matched_lines,
        "ignored": s.ignored_lines,
        "missed": missed(r),
        // Counted only with --missed; null otherwise (not 0: nobody looked).
        "missed_with_address": r.missed.then_some(r.missed_with_address),
        "bans": s.bans,
        "jails": s.jails.iter().zip(names).map(|(j, n)| json!({
            "name": n,
            "matched": j.rules.iter().sum::<u64>(),
            "rules": j.rules,
            "ignore_rules": j.ignore_rules,
            "ignored_ip": j.ignored_ip,
            "already_banned": j.already_banned,
            "bad_host": j.bad_host,
            "bans": j.bans,
            "successes": j.successes,
        })).collect::<Vec<_>>(),
        "targeted": r.targeted.iter().map(|(u, n)| json!({"user": u, "failures": n})).collect::<Vec<_>>(),
        "elapsed_s": (r.elapsed * 1e6).round() / 1e6,
        "lines_per_s": lines_per_s(r).round(),
    })
}

/// The human summary.
fn summary_text(r: &Report, names: &[String], p: &Pipeline) -> String {
    let s = &r.stats;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Lines:   {} total, {} matched, {} ignored, {} missed{}",
        s.lines,
        s.matched_lines,
        s.ignored_lines,
        missed(r),
        if r.missed {
            format!(" ({} of them with an address, listed above)", r.missed_with_address)
        } else {
            " (--missed lists those with an address)".to_string()
        }
    );
    let _ = writeln!(
        o,
        "         {} parsed; the other {} held no rule's literal and were not read further; {} without a usable time, {} invalid UTF-8, {} truncated",
        s.parsed, s.skipped, s.time_unparsed, s.invalid_utf8, r.truncated
    );
    let _ = writeln!(o, "\nJails:");
    for (jid, (j, name)) in s.jails.iter().zip(names).enumerate() {
        let (rules, ignores) = p.rule_texts(jid);
        let _ = writeln!(
            o,
            "  {name}: {} matched, {} ignored by rule, {} from ignored addresses, {} while banned, {} bad host, {} bans",
            j.rules.iter().sum::<u64>(),
            j.ignore_rules.iter().sum::<u64>(),
            j.ignored_ip,
            j.already_banned,
            j.bad_host,
            j.bans
        );
        for (i, n) in j.rules.iter().enumerate() {
            let _ = writeln!(o, "    rule {i:<3} {n:>10}  {}", shorten(&rules[i]));
        }
        for (i, n) in j.ignore_rules.iter().enumerate() {
            let _ = writeln!(o, "    ignore {i:<3} {n:>8}  {}", shorten(&ignores[i]));
        }
        if j.successes > 0 {
            let _ = writeln!(o, "    successful logins {:>6}", j.successes);
        }
    }
    if !r.targeted.is_empty() {
        let top: Vec<String> = r.targeted.iter().map(|(u, n)| format!("{u:?} ({n})")).collect();
        let _ = writeln!(o, "\nAccounts most failed on: {}", top.join(", "));
    }
    let (tracked, evicted) = p.tracked();
    let _ = writeln!(o, "\nBans:    {} (list them with --decisions)", s.bans);
    let _ = writeln!(o, "Windows: {tracked} addresses still counting, {evicted} evicted by max_tracked");
    let _ = writeln!(o, "Elapsed: {:.3} s, {:.0} lines/s", r.elapsed, lines_per_s(r));
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Mode;
    use crate::config::Config;

    /// Hands out `n` bytes per read, so lines span blocks.
    struct Dribble<'a>(&'a [u8], usize);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn replayed(log: &[u8], block: usize, max_line: usize) -> String {
        let mut p = Pipeline::new(&Config::builtin_named("all.ron").unwrap().stages().unwrap(), Mode::Replay).unwrap();
        let src = Source {
            name: "log".into(),
            reader: Box::new(Dribble(log, block)),
            len: None,
        };
        let opts = Options {
            matches: true,
            decisions: true,
            max_line,
            ..Options::default()
        };
        let mut out = Vec::new();
        run(&mut p, vec![src], 1_781_654_400, opts, &mut out).unwrap();
        // Everything but the summary's timing.
        String::from_utf8(out)
            .unwrap()
            .lines()
            .filter(|l| !l.contains("\"kind\":\"summary\""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn literals_found_ahead_agree_with_each_line_alone() {
        let mut log = Vec::new();
        for i in 0..40 {
            log.extend_from_slice(
                format!(
                    "Jun 17 00:00:{i:02} mx1 postfix/smtpd[1]: warning: unknown[192.0.2.{i}]: SASL LOGIN authentication failed: x\n\
                     Jun 17 00:00:{i:02} mx1 dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<a>, method=PLAIN, rip=198.51.100.{}, lip=192.0.2.10\r\n\
                     Jun 17 00:00:{i:02} mx1 postfix/smtpd[1]: connect from unknown[192.0.2.{i}]\n",
                    i % 3
                )
                .as_bytes(),
            );
        }
        let whole = replayed(&log, 1 << 20, 4096);
        assert!(whole.matches("\"kind\":\"match\"").count() >= 80, "{whole}");
        for block in [1, 7, 100, 333] {
            assert_eq!(replayed(&log, block, 4096), whole, "blocks of {block} bytes");
        }
        // Cut lines: a literal past the cut is not the line's.
        let cut = replayed(&log, 1 << 20, 90);
        assert_eq!(replayed(&log, 61, 90), cut);
        assert!(!cut.contains("\"kind\":\"match\""), "{cut}");
    }
    #[test]
    fn an_address_is_an_address_and_a_time_is_not() {
        for (line, want) in [
            ("Jun 17 00:00:00 mx1 postfix/qmgr[1]: removed", false),
            ("connect from unknown[192.0.2.1]", true),
            ("rip=2001:db8::7, lip=::1", true),
            ("version 1.2.3.4.5 of x", false),
            ("at 12:34:56.789", false),
            ("user:a ip:192.0.2.1 auth:failed", true),
            ("relay=mx.example.net[198.51.100.1]:25, delay=1", true),
        ] {
            assert_eq!(super::has_address(line.as_bytes()), want, "{line}");
        }
    }
}
