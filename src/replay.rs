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

use crate::input::Blocks;
use crate::matcher::Found;
use crate::parse::rfc3339;
use crate::pipeline::{Event, Front, Pipeline, Scanned, Stats};
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

/// Bytes read into a block (plus the line it ends in). With one block waiting at each end of
/// each worker, the blocks in flight stay a few MiB: a flood of matching lines makes each
/// block's results about as large as the block.
const BLOCK: usize = 512 << 10;

/// A block of whole lines, and what the front made of it.
#[derive(Default)]
struct Block {
    bytes: Vec<u8>,
    scanned: Scanned,
}

/// Reads `reader` in blocks of whole lines, runs them through `fronts` (one per core, each on
/// a thread of its own), and hands `count` the results in order, on this thread, with the
/// block's size. Block k goes to worker k mod n and comes back from it: the order needs no
/// sorting.
fn scan_blocks(
    mut reader: Box<dyn Read + Send + '_>,
    fronts: &mut [Front],
    max_line: usize,
    mut count: impl FnMut(&Scanned, usize),
) -> std::io::Result<()> {
    use std::sync::mpsc::{channel, sync_channel};
    let n = fronts.len();
    std::thread::scope(|scope| {
        let (free_tx, free_rx) = channel::<Block>();
        let (mut to, mut from) = (Vec::new(), Vec::new());
        for front in fronts.iter_mut() {
            let (in_tx, in_rx) = sync_channel::<Block>(1);
            let (out_tx, out_rx) = sync_channel::<Block>(1);
            scope.spawn(move || {
                for mut b in in_rx {
                    front.block(&b.bytes, max_line, &mut b.scanned);
                    if out_tx.send(b).is_err() {
                        return;
                    }
                }
            });
            to.push(in_tx);
            from.push(out_rx);
        }
        let read = scope.spawn(move || {
            let mut blocks = Blocks::new(max_line);
            for k in 0.. {
                let mut b = free_rx.try_recv().unwrap_or_default();
                if !blocks.next(&mut *reader, &mut b.bytes, BLOCK)? || to[k % n].send(b).is_err() {
                    break;
                }
            }
            Ok(())
        });
        for k in 0.. {
            let Ok(b) = from[k % n].recv() else { break };
            count(&b.scanned, b.bytes.len());
            let _ = free_tx.send(b);
        }
        read.join().expect("reader thread")
    })
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
    // One copy of the front per core, made once for all the files: a copy costs about a
    // millisecond (200 small files took 0.57 s with copies per file, 0.1 s so).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let mut fronts: Vec<Front> = (0..cores)
        .map(|_| {
            let mut front = pipeline.front();
            front.set_missed(opts.missed);
            front
        })
        .collect();
    for Source { name, reader, len } in sources {
        // Lines before the current block.
        let mut lines = 0u64;
        let bar = progress(&name, len);
        let mut each_block = |block: &Scanned, bytes: usize| {
            pipeline.count(block, reference, |index, e| {
                report.missed_with_address += u64::from(matches!(e, Event::Missed(_)));
                if let Some(v) = event_json(&e, &name, lines + u64::from(index) + 1, &names, opts)
                    && err.is_ok()
                {
                    err = writeln!(out, "{v}");
                }
            });
            lines += block.lines_read;
            report.truncated += block.truncated;
            if let Some(b) = &bar {
                b.inc(bytes as u64);
            }
        };
        scan_blocks(reader, &mut fronts, opts.max_line.max(1), &mut each_block)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{name}: {e}")))?;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
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

/// The object `test` prints for an event of line `line` of `file`, if `opts` ask for it.
fn event_json(e: &Event<'_>, file: &str, line: u64, names: &[String], opts: Options) -> Option<serde_json::Value> {
    Some(match *e {
        Event::Match { m, time } if opts.matches => {
            let jail = &names[m.jail as usize];
            match m.found {
                Found::Failure { ip, user, .. } => {
                    let mut v = json!({"kind": "match", "file": file, "line": line, "jail": jail, "rule": m.rule, "host": ip.to_string(), "time": rfc3339(time)});
                    if let Some(u) = user {
                        v["user"] = u.into();
                    }
                    v
                }
                Found::Ignored => json!({"kind": "ignored", "file": file, "line": line, "jail": jail, "ignore_rule": m.rule}),
                Found::Success { ip, user } => {
                    json!({"kind": "success", "file": file, "line": line, "jail": jail, "success_rule": m.rule, "host": ip.to_string(), "user": user})
                }
                Found::BadHost(h) => json!({"kind": "bad_host", "file": file, "line": line, "jail": jail, "rule": m.rule, "host": h}),
            }
        }
        Event::Decision(d) if opts.decisions => {
            let mut v = decision_json(d);
            v["file"] = file.into();
            v["line"] = line.into();
            v
        }
        Event::Missed(text) => json!({"kind": "missed", "file": file, "line": line, "text": text}),
        _ => return None,
    })
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
    /// Blocks of whole lines, each through a copy of the front on another thread, count what the
    /// pipeline counts line by line on one (`Pipeline::process`, the daemon's way).
    #[test]
    fn blocks_on_threads_count_what_lines_alone_count() {
        let mut log = String::new();
        // About 3 MiB: several blocks, a failure series across each boundary.
        for i in 0..24_000u32 {
            let (s, a, b) = (i / 60 % 60, i % 251, i % 13);
            log += &format!(
                "Jun 17 0{}:{:02}:{s:02} mx1 postfix/smtpd[1]: warning: unknown[203.0.113.{a}]: SASL LOGIN authentication failed: x\n\
                 Jun 17 0{}:{:02}:{s:02} mx1 dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<u{b}>, method=PLAIN, rip=198.51.100.{b}, lip=192.0.2.10\n\
                 Jun 17 0{}:{:02}:{s:02} mx1 postfix/smtpd[1]: connect from unknown[192.0.2.{a}]\n",
                i / 3600,
                i / 60 % 60,
                i / 3600,
                i / 60 % 60,
                i / 3600,
                i / 60 % 60
            );
        }
        let stages = Config::builtin_named("all.ron").unwrap().stages().unwrap();
        let reference = 1_781_654_400;
        let mut alone = Pipeline::new(&stages, Mode::Replay).unwrap();
        let mut bans = 0;
        for line in log.lines() {
            alone.process(line.as_bytes(), reference, |e| bans += u64::from(matches!(e, Event::Decision(_))));
        }
        let mut blocks = Pipeline::new(&stages, Mode::Replay).unwrap();
        let src = Source {
            name: "log".into(),
            reader: Box::new(log.as_bytes()),
            len: None,
        };
        let report = run(
            &mut blocks,
            vec![src],
            reference,
            Options {
                max_line: 16384,
                ..Options::default()
            },
            &mut Vec::new(),
        )
        .unwrap();
        assert!(
            report.stats.bans > 30 && bans == report.stats.bans,
            "{} / {bans}",
            report.stats.bans
        );
        assert_eq!(&report.stats, alone.stats());
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
            assert_eq!(crate::pipeline::has_address(line.as_bytes()), want, "{line}");
        }
    }
}
