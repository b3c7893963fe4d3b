//! Stage 1: split a raw log line into time, program and message.
//!
//! `syslog_loose` does the syslog formats (RFC 3164 with or without `<PRI>`, RFC 5424, rsyslog's
//! ISO file format). The few shapes it cannot read are recognised here first: qmail/multilog's
//! TAI64N label, Dovecot's `YYYY-MM-DD HH:MM:SS` log file and Roundcube's `[DD-Mon-YYYY ...]`.
//!
//! Two of its faults are worked around: a naive time is parsed with a sentinel offset of one
//! second, so we can tell naive times (ours to place in the configured zone) from explicit
//! offsets; and a 3164 date *with* a year comes back shifted by that offset, so for that shape the
//! naive time is read back from the UTC side.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Timelike};
use serde::Deserialize;

/// Parse-stage settings of a pipeline file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ParseConfig {
    /// Zone of naive timestamps: an IANA name (`Europe/Berlin`), `UTC`, or an offset (`+02:00`).
    /// Default: the system's zone.
    pub timezone: Option<String>,
    /// Longest line in bytes; longer lines are cut there and counted.
    pub max_line: usize,
}

impl Default for ParseConfig {
    fn default() -> Self {
        ParseConfig { timezone: None, max_line: 16384 }
    }
}

/// A parse-config value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ParseConfigError {
    /// Neither an IANA zone nor an offset.
    #[error("unknown timezone {0:?} (use an IANA name like \"Europe/Berlin\", \"UTC\" or \"+02:00\")")]
    Timezone(String),
}

/// The zone naive timestamps are in.
#[derive(Debug, Clone, Copy)]
pub enum Zone {
    /// A fixed offset (also UTC).
    Fixed(FixedOffset),
    /// An IANA zone with its DST rules.
    Named(chrono_tz::Tz),
}

impl Zone {
    /// Resolves a configured zone name; `None` means the system's zone (UTC if unknown).
    pub fn resolve(name: Option<&str>) -> Result<Zone, ParseConfigError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => std::env::var("TZ")
                .ok()
                .map(|s| s.trim_start_matches(':').to_string())
                .filter(|s| !s.is_empty())
                .or_else(|| iana_time_zone::get_timezone().ok())
                .unwrap_or_else(|| "UTC".into()),
        };
        if let Ok(off) = name.parse::<FixedOffset>() {
            return Ok(Zone::Fixed(off));
        }
        name.parse::<chrono_tz::Tz>()
            .map(Zone::Named)
            .map_err(|_| ParseConfigError::Timezone(name))
    }

    /// Unix seconds of a naive local time; in a DST gap or overlap, the earlier reading.
    pub fn to_unix(self, naive: NaiveDateTime) -> i64 {
        let pick = |r: chrono::LocalResult<i64>| match r {
            chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => t,
            // A time in a spring-forward gap: read it as standard time.
            chrono::LocalResult::None => naive.and_utc().timestamp(),
        };
        match self {
            Zone::Fixed(o) => pick(o.from_local_datetime(&naive).map(|d| d.timestamp())),
            Zone::Named(tz) => {
                let r = tz.from_local_datetime(&naive).map(|d| d.timestamp());
                match r {
                    chrono::LocalResult::None => {
                        // Shift past the gap by an hour, as most syslog daemons would have printed.
                        pick(tz.from_local_datetime(&(naive + chrono::Duration::hours(1))).map(|d| d.timestamp() - 3600))
                    }
                    r => pick(r),
                }
            }
        }
    }

    /// The local wall-clock time of a Unix second.
    pub fn to_local(self, unix: i64) -> NaiveDateTime {
        let utc = DateTime::from_timestamp(unix, 0).unwrap_or_default();
        match self {
            Zone::Fixed(o) => utc.with_timezone(&o).naive_local(),
            Zone::Named(tz) => utc.with_timezone(&tz).naive_local(),
        }
    }
}

/// How year-less dates (RFC 3164) get their year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YearMode {
    /// Live input: the latest year that does not put the line more than a day after its arrival.
    Live,
    /// Replay of a file: the first line as `Live` against the reference time, every later line
    /// the year nearest the previous line's time, so a log running through New Year gets it right.
    Replay,
}

/// One line, split. Borrows the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Unix seconds from the line; `None` when the line carries no usable time.
    pub time: Option<i64>,
    /// The syslog host field, if any.
    pub host: Option<&'a str>,
    /// The program tag without pid (`postfix/smtpd`, `dovecot`); empty when the line has none.
    pub program: &'a str,
    /// The message after the tag; rules are anchored at its start.
    pub msg: &'a str,
}

/// The parse stage: owns the zone and the year-inference state of one stream.
#[derive(Debug)]
pub struct Parser {
    zone: Zone,
    mode: YearMode,
    /// Local time of the previous line (Replay) — the reference for the next year-less date.
    last: Option<NaiveDateTime>,
    /// Unix time of the previous line with a time.
    last_unix: Option<i64>,
}

/// Sentinel offset: real zones never use one second, so it marks a time the parser made naive.
fn sentinel() -> FixedOffset {
    FixedOffset::east_opt(1).expect("1 s is a valid offset")
}

impl Parser {
    /// A parser for one stream.
    pub fn new(zone: Zone, mode: YearMode) -> Parser {
        Parser { zone, mode, last: None, last_unix: None }
    }

    /// The zone naive times are read in.
    pub fn zone(&self) -> Zone {
        self.zone
    }

    /// Splits `line`; `now` (Unix seconds) is the arrival time, the reference for year inference.
    pub fn parse<'a>(&mut self, line: &'a str, now: i64) -> Record<'a> {
        let line = line.trim_start_matches([' ', '\t']);
        if let Some(r) = self.parse_special(line) {
            return r;
        }
        let reference = match (self.mode, self.last) {
            (YearMode::Replay, Some(last)) => YearRef { at: last, follow: true },
            _ => YearRef { at: self.zone.to_local(now), follow: false },
        };
        let m = syslog_loose::parse_message_with_year_tz(
            line,
            move |d| reference.year_for(d),
            Some(sentinel()),
            syslog_loose::Variant::Either,
        );
        let time = m.timestamp.map(|ts| {
            if ts.offset().local_minus_utc() == 1 {
                // Naive in the log: place it in our zone. See the module doc for the year shape.
                let naive = if has_3164_year(line) { ts.naive_utc() } else { ts.naive_local() };
                self.zone.to_unix(naive)
            } else {
                ts.timestamp()
            }
        });
        let (program, msg) = match (m.appname, m.hostname) {
            (Some(app), _) => (app, m.msg),
            // No tag: syslog_loose took the first word for a host. Such lines (Dovecot's own log
            // file) keep everything after the time as the message, tag included.
            (None, Some(host)) => ("", &line[offset_in(line, host)..]),
            (None, None) => ("", m.msg),
        };
        let host = m.appname.and(m.hostname);
        if let Some(t) = time {
            self.remember(t);
        }
        Record { time, host, program, msg }
    }

    /// Time of the latest line that had one.
    pub fn last_time(&self) -> Option<i64> {
        self.last_unix
    }

    fn remember(&mut self, t: i64) {
        self.last = Some(self.zone.to_local(t));
        self.last_unix = Some(t);
    }

    /// The formats syslog_loose does not know; `None` to hand the line on.
    fn parse_special<'a>(&mut self, line: &'a str) -> Option<Record<'a>> {
        let b = line.as_bytes();
        let (time, rest) = if b.first() == Some(&b'@') {
            tai64n(line)?
        } else if b.first() == Some(&b'[') {
            bracketed(line)?
        } else if b.len() > 19 && b[4] == b'-' && b[10] == b' ' && b[13] == b':' {
            let naive = NaiveDateTime::parse_from_str(&line[..19], "%Y-%m-%d %H:%M:%S").ok()?;
            (self.zone.to_unix(naive), line[19..].trim_start())
        } else {
            return None;
        };
        self.remember(time);
        Some(Record { time: Some(time), host: None, program: "", msg: rest })
    }
}

/// Byte offset of `part` inside `whole` (it must be a subslice).
fn offset_in(whole: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize).min(whole.len())
}

/// `Mmm dd yyyy hh:mm:ss`, after an optional `<PRI>`: the shape syslog_loose shifts.
fn has_3164_year(line: &str) -> bool {
    let s = match line.strip_prefix('<') {
        Some(r) => r.split_once('>').map_or(r, |(_, s)| s),
        None => line,
    };
    let b = s.as_bytes();
    b.len() > 12 && b[3] == b' ' && {
        let rest = s[4..].trim_start();
        let mut it = rest.split(' ');
        it.next().is_some_and(|d| d.len() <= 2 && d.bytes().all(|c| c.is_ascii_digit()))
            && it.next().is_some_and(|y| y.len() == 4 && y.bytes().all(|c| c.is_ascii_digit()))
    }
}

/// `@4000000059f5194706e649ec rest`: a TAI64N label. Like tai64nlocal, the 10 s TAI-UTC
/// offset that daemontools adds is taken off.
fn tai64n(line: &str) -> Option<(i64, &str)> {
    let hex = line.get(1..25)?;
    let secs = u64::from_str_radix(hex.get(..16)?, 16).ok()?;
    u32::from_str_radix(&hex[16..], 16).ok()?;
    let unix = secs.checked_sub((1u64 << 62) + 10)?;
    Some((i64::try_from(unix).ok()?, line[25..].trim_start()))
}

/// `[22-Jan-2013 22:28:21 +0200]: rest` (Roundcube, PHP error logs).
fn bracketed(line: &str) -> Option<(i64, &str)> {
    let end = line.find(']')?;
    let inner = &line[1..end];
    let t = DateTime::parse_from_str(inner, "%d-%b-%Y %H:%M:%S %z").ok()?;
    let rest = line[end + 1..].trim_start_matches(':').trim_start();
    Some((t.timestamp(), rest))
}

/// Reference for year inference; `Copy` because syslog_loose wants a `Copy` closure.
#[derive(Debug, Clone, Copy)]
struct YearRef {
    at: NaiveDateTime,
    follow: bool,
}

impl YearRef {
    fn year_for(self, (month, day, hour, min, sec): syslog_loose::IncompleteDate) -> i32 {
        let at = |y: i32| {
            // Feb 29 in a common year: compare as Feb 28.
            NaiveDate::from_ymd_opt(y, month, day)
                .or_else(|| NaiveDate::from_ymd_opt(y, month, day.min(28)))
                .and_then(|d| d.and_hms_opt(hour, min, sec.min(59)))
        };
        let y = self.at.year();
        if self.follow {
            [y, y - 1, y + 1]
                .into_iter()
                .filter_map(|c| at(c).map(|t| (c, (t - self.at).num_seconds().abs())))
                .min_by_key(|&(_, d)| d)
                .map_or(y, |(c, _)| c)
        } else {
            match at(y) {
                Some(t) if t > self.at + chrono::Duration::days(1) => y - 1,
                _ => y,
            }
        }
    }
}

/// Formats Unix seconds as RFC 3339 UTC (`2005-02-21T09:21:54Z`).
pub fn rfc3339(unix: i64) -> String {
    DateTime::from_timestamp(unix, 0).map_or_else(|| unix.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Local time for display (`2005-02-21T09:21:54`).
pub fn local_iso(zone: Zone, unix: i64) -> String {
    let t = zone.to_local(unix);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", t.year(), t.month(), t.day(), t.hour(), t.minute(), t.second())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> Zone {
        Zone::resolve(Some("UTC")).unwrap()
    }
    fn at(s: &str) -> i64 {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap().and_utc().timestamp()
    }

    #[test]
    fn rfc3164_fields() {
        let mut p = Parser::new(utc(), YearMode::Live);
        let r = p.parse("Jun 17 03:14:07 mail postfix/smtpd[175371]: warning: x", at("2024-07-01T00:00:00"));
        assert_eq!(r.time, Some(at("2024-06-17T03:14:07")));
        assert_eq!((r.host, r.program, r.msg), (Some("mail"), "postfix/smtpd", "warning: x"));
    }

    #[test]
    fn year_form_is_not_shifted() {
        let mut p = Parser::new(Zone::resolve(Some("+02:00")).unwrap(), YearMode::Live);
        let r = p.parse("Jun 17 2024 03:14:07 mail postfix/smtpd[1]: x", 0);
        assert_eq!(r.time, Some(at("2024-06-17T01:14:07")));
    }

    #[test]
    fn named_zone_follows_dst() {
        let mut p = Parser::new(Zone::resolve(Some("Europe/Zurich")).unwrap(), YearMode::Live);
        let now = at("2005-08-14T10:00:00");
        assert_eq!(p.parse("Feb 21 09:21:54 x postfix/smtpd[1]: m", now).time, Some(at("2005-02-21T08:21:54")));
        assert_eq!(p.parse("Jul 21 09:21:54 x postfix/smtpd[1]: m", now).time, Some(at("2005-07-21T07:21:54")));
    }

    #[test]
    fn live_year_never_far_in_future() {
        let mut p = Parser::new(utc(), YearMode::Live);
        let now = at("2026-01-01T00:00:05");
        assert_eq!(p.parse("Dec 31 23:59:59 h a: m", now).time, Some(at("2025-12-31T23:59:59")));
        assert_eq!(p.parse("Jan  1 00:00:01 h a: m", now).time, Some(at("2026-01-01T00:00:01")));
    }

    #[test]
    fn replay_crosses_new_year() {
        let mut p = Parser::new(utc(), YearMode::Replay);
        // Replayed in late January 2027: the file starts in December 2025.
        let now = at("2027-01-20T00:00:00");
        assert_eq!(p.parse("Dec 20 10:00:00 h a: m", now).time, Some(at("2026-12-20T10:00:00")));
        assert_eq!(p.parse("Dec 31 23:59:59 h a: m", now).time, Some(at("2026-12-31T23:59:59")));
        assert_eq!(p.parse("Jan  1 00:00:01 h a: m", now).time, Some(at("2027-01-01T00:00:01")));
        assert_eq!(p.parse("Jan 25 00:00:01 h a: m", now).time, Some(at("2027-01-25T00:00:01")));
    }

    #[test]
    fn headerless_dovecot_keeps_tag_in_message() {
        let mut p = Parser::new(utc(), YearMode::Live);
        let r = p.parse("Jun 17 04:14:11 auth-worker(175697): Info: sql(a,192.0.2.1): unknown user", at("2024-07-01T00:00:00"));
        assert_eq!((r.program, r.msg), ("", "auth-worker(175697): Info: sql(a,192.0.2.1): unknown user"));
    }

    #[test]
    fn special_formats() {
        let mut p = Parser::new(utc(), YearMode::Live);
        let r = p.parse("@400000004c91b044077a9e94 dovecot-auth: pam_unix(dovecot:auth): x", 0);
        assert_eq!((r.time, r.msg), (Some(at("2010-09-16T05:50:50")), "dovecot-auth: pam_unix(dovecot:auth): x"));
        let r = p.parse("2013-08-11 03:56:40 auth-worker(default): Info: m", 0);
        assert_eq!((r.time, r.msg), (Some(at("2013-08-11T03:56:40")), "auth-worker(default): Info: m"));
        let r = p.parse("[22-Jan-2013 22:28:21 +0200]: FAILED login for u from 192.0.2.1", 0);
        assert_eq!((r.time, r.msg), (Some(at("2013-01-22T20:28:21")), "FAILED login for u from 192.0.2.1"));
    }

    #[test]
    fn rfc5424_and_iso() {
        let mut p = Parser::new(utc(), YearMode::Live);
        let r = p.parse("<20>1 2026-11-22T21:59:13.053111+00:00 vm postfix/smtpd 175371 - -  warning: m", 0);
        assert_eq!((r.time, r.program, r.msg), (Some(at("2026-11-22T21:59:13")), "postfix/smtpd", "warning: m"));
        let r = p.parse("2024-06-17T03:14:07.123456+02:00 mail postfix/smtpd[1]: warning: m", 0);
        assert_eq!((r.time, r.program), (Some(at("2024-06-17T01:14:07")), "postfix/smtpd"));
    }

    #[test]
    fn garbage_has_no_time() {
        let mut p = Parser::new(utc(), YearMode::Live);
        assert_eq!(p.parse("garbage line here", 0).time, None);
        assert_eq!(p.parse("", 0).time, None);
        assert_eq!(p.parse("@zz", 0).time, None);
        assert_eq!(p.parse("[nope", 0).time, None);
    }
}
