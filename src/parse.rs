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

use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, TimeZone, Timelike};
use serde::Deserialize;

/// Parse-stage settings of a pipeline file.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ParseConfig {
    /// Zone of naive timestamps: an IANA name (`Europe/Berlin`), `UTC`, or an offset (`+02:00`).
    /// Default: the system's zone.
    pub timezone: Option<String>,
    /// Longest line in bytes; longer lines are cut there and counted.
    pub max_line: usize,
    /// How far ahead of the clock a line's own time is trusted (clocks of other servers drift).
    pub future_skew: crate::primitives::Dur,
    /// How far behind the clock a line's own time is trusted (a backlog delivered late).
    pub backlog: crate::primitives::Dur,
}

/// The longest `max_line` allowed: a line's text and its matches' places are held in 32-bit
/// offsets of a block, and no syslog transport carries more than 64 KiB.
pub const MAX_LINE_LIMIT: usize = 16 << 20;

impl Default for ParseConfig {
    fn default() -> Self {
        ParseConfig {
            timezone: None,
            max_line: 16384,
            future_skew: crate::primitives::Dur(120),
            backlog: crate::primitives::Dur(86_400),
        }
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

    /// Offset (seconds east of UTC) in force at local wall-clock second `wall` (a naive local
    /// time counted like Unix seconds); in a DST overlap the earlier reading.
    fn offset_at_wall(self, wall: i64) -> i64 {
        let naive = DateTime::from_timestamp(wall, 0).unwrap_or_default().naive_utc();
        wall - self.to_unix(naive)
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
                        pick(
                            tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                                .map(|d| d.timestamp() - 3600),
                        )
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

/// The header shape a line was read with (`explain` says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `Mmm dd hh:mm:ss[.ffffff] host tag: msg` (RFC 3164 as files and `journalctl -o short`,
    /// `short-precise` write it), optionally after `<PRI>`.
    Rfc3164,
    /// The same with BusyBox syslogd's `facility.level` after the host (Alpine).
    BusyBox,
    /// `YYYY-MM-DDThh:mm:ss[.f][Z|+hh:mm|+hhmm] host tag: msg` (rsyslog's file format,
    /// `journalctl -o short-iso`, `short-iso-precise`).
    Iso8601,
    /// `Www YYYY-MM-DD hh:mm:ss ZONE host tag: msg` (`journalctl -o short-full`).
    ShortFull,
    /// `ssssssssss.ffffff host tag: msg` (`journalctl -o short-unix`).
    ShortUnix,
    /// `host tag: msg` without a time (a journal message, fail2ban's `logtype: journal`).
    HostTag,
    /// Anything syslog_loose reads: RFC 5424, and RFC 3164 shapes the fast path leaves alone.
    Syslog,
    /// `@4000…` TAI64N label (qmail's multilog).
    Tai64n,
    /// `YYYY-MM-DD hh:mm:ss[.f] msg`, `YYYY/MM/DD hh:mm:ss msg` (Dovecot's own log file,
    /// multilog with accustamp, qmailadmin), and the dates other mail applications start their
    /// own logs with (SquirrelMail, Domino, Kerio, OpenWebMail, ASSP, Oracle Messaging Server).
    LocalTime,
    /// `[DD-Mon-YYYY hh:mm:ss +zzzz]: msg` (Roundcube, PHP).
    Bracketed,
    /// One JSON object (`journalctl -o json`).
    JournalJson,
    /// No header was recognised: the whole line is the message.
    Bare,
}

impl Format {
    /// A short description.
    pub fn name(self) -> &'static str {
        match self {
            Format::Rfc3164 => "RFC 3164 (syslog file, journalctl short/short-precise)",
            Format::BusyBox => "RFC 3164 with facility.level (BusyBox syslogd)",
            Format::Iso8601 => "ISO 8601 (rsyslog file, journalctl short-iso/short-iso-precise)",
            Format::ShortFull => "journalctl short-full",
            Format::ShortUnix => "journalctl short-unix",
            Format::HostTag => "host and tag without a time (journal message)",
            Format::Syslog => "syslog (RFC 5424 or RFC 3164, via syslog_loose)",
            Format::Tai64n => "TAI64N label (multilog)",
            Format::LocalTime => "local date and time (an application's own log file)",
            Format::Bracketed => "[DD-Mon-YYYY hh:mm:ss zone] (Roundcube, PHP)",
            Format::JournalJson => "journalctl -o json",
            Format::Bare => "no header",
        }
    }
}

/// A line's time as written: whole, or a syslog date without its year, which only the stream's
/// clock can place (`Parser::unix`). Parsing needs no state, so lines parse on any thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// Unix seconds.
    Unix(i64),
    /// A local (month, day, hour, minute, second) without its year (RFC 3164).
    YearLess(syslog_loose::IncompleteDate),
}

/// One line, split. Borrows the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The line's time; `None` when the line carries no usable time.
    pub time: Option<Stamp>,
    /// The syslog host field, if any.
    pub host: Option<&'a str>,
    /// The program tag without pid (`postfix/smtpd`, `dovecot`); empty when the line has none.
    pub program: &'a str,
    /// The message after the tag; rules are anchored at its start.
    pub msg: &'a str,
    /// How the header was read.
    pub format: Format,
}

/// The parse stage: owns the zone. Year-less dates take their year from a reference the caller
/// gives (`unix`): live input, the latest year that does not put the line more than a day after
/// the reference (the arrival time); a replayed file, the year nearest its own clock, so a log
/// running through New Year gets it right.
#[derive(Debug, Clone)]
pub struct Parser {
    zone: Zone,
    /// The zone's offset for one local hour (DST changes on hour boundaries): (hour, offset).
    offset_cache: std::cell::Cell<(i64, i64)>,
}

/// Sentinel offset: real zones never use one second, so it marks a time the parser made naive.
fn sentinel() -> FixedOffset {
    FixedOffset::east_opt(1).expect("1 s is a valid offset")
}

impl Parser {
    /// A parser for one stream.
    pub fn new(zone: Zone) -> Parser {
        Parser {
            zone,
            offset_cache: std::cell::Cell::new((i64::MIN, 0)),
        }
    }

    /// The zone naive times are read in.
    pub fn zone(&self) -> Zone {
        self.zone
    }

    /// Splits `line`, which may also be a journal entry in JSON (`journalctl -o json`): its
    /// fields are copied into `scratch` (reused: no allocation once it has grown).
    pub fn parse_any<'a>(&self, line: &'a str, scratch: &'a mut JournalScratch) -> Record<'a> {
        if line.starts_with('{') && scratch.fill(line) {
            return scratch.record();
        }
        self.parse(line)
    }

    /// Unix seconds of `stamp`. A year-less date gets the year that puts it nearest `reference`
    /// (Unix seconds) when `follow`, else the latest that puts it at most a day after `reference`;
    /// Feb 29 of a year without one is Mar 1, however the line was read.
    pub fn unix(&self, stamp: Stamp, reference: i64, follow: bool) -> i64 {
        let date = match stamp {
            Stamp::Unix(t) => return t,
            Stamp::YearLess(date) => date,
        };
        let (month, day, h, m, sec) = date;
        let year = YearRef {
            at: self.to_wall(reference),
            follow,
        }
        .year_for(date);
        self.wall_to_unix(wall_secs(year, month, day, h, m, sec))
    }

    /// Splits `line`.
    pub fn parse<'a>(&self, line: &'a str) -> Record<'a> {
        let line = line.trim_start_matches([' ', '\t']);
        if let Some(f) = fast_3164(line) {
            return Record {
                time: Some(Stamp::YearLess(f.date)),
                host: Some(f.head.host).filter(|h| !h.is_empty()),
                program: f.head.program,
                msg: f.head.msg,
                format: if f.head.busybox { Format::BusyBox } else { Format::Rfc3164 },
            };
        }
        if let Some(r) = self.parse_journalctl(line) {
            return r;
        }
        if let Some(r) = self.parse_special(line) {
            return r;
        }
        // A year-less date is noted and given a leap year, so that any day parses; the clock
        // gives it its year later.
        let year_less = std::cell::Cell::new(None);
        let m = syslog_loose::parse_message_with_year_tz(
            line,
            |d| {
                year_less.set(Some(d));
                2024
            },
            Some(sentinel()),
            syslog_loose::Variant::Either,
        );
        let time = m.timestamp.map(|ts| match year_less.get() {
            Some(date) => Stamp::YearLess(date),
            // Naive in the log: place it in our zone. See the module doc for the year shape.
            None if ts.offset().local_minus_utc() == 1 => {
                let naive = if has_3164_year(line) { ts.naive_utc() } else { ts.naive_local() };
                Stamp::Unix(self.wall_to_unix(naive.and_utc().timestamp()))
            }
            None => Stamp::Unix(ts.timestamp()),
        });
        let (program, msg) = match (m.appname, m.hostname) {
            // `auth(john smith,IP,...)`: Dovecot's own file, where a user name with a space was
            // taken for a host; the client's text is no host and no program.
            (_, Some(host)) if host.contains('(') => ("", &line[offset_in(line, host)..]),
            (Some(app), _) => (app, m.msg),
            // No host: syslog_loose took the tag for a host (`logger -u`, Dovecot's own log file).
            // A plain `prog[pid]:` is the program; anything fancier (`auth(user,ip,...)<id>:`,
            // where Dovecot puts the address) stays in the message for the rules to read.
            (None, Some(host)) => {
                let at = offset_in(line, host);
                match plain_tag(host) {
                    Some(prog) if line[at + host.len()..].starts_with(':') => (prog, m.msg),
                    _ => ("", &line[at..]),
                }
            }
            (None, None) => ("", m.msg),
        };
        let host = m.appname.and(m.hostname).filter(|h| !h.contains('('));
        if time.is_none()
            && let Some(h) = head(line).filter(|h| h.pid)
        {
            // `srv sshd[13709]: msg`: a journal message with its host and tag, no time.
            return Record {
                time: None,
                host: Some(h.host),
                program: h.program,
                msg: h.msg,
                format: Format::HostTag,
            };
        }
        let format = if time.is_some() || host.is_some() || !program.is_empty() {
            Format::Syslog
        } else {
            Format::Bare
        };
        Record {
            time,
            host,
            program,
            msg,
            format,
        }
    }

    /// The shapes journalctl prints (and rsyslog's ISO file format): a time, then `host tag:`.
    /// A line whose time is read but whose rest is no `host tag: msg` keeps the rest as its
    /// message (multilog's accustamp: `1157520813.485077 rblsmtpd: ...`).
    fn parse_journalctl<'a>(&self, line: &'a str) -> Option<Record<'a>> {
        let b = line.as_bytes();
        let (time, rest, format) = if b.len() > 20 && b[4] == b'-' && b[10] == b'T' {
            let (wall, offset, rest) = iso8601(line)?;
            let time = offset.map_or_else(|| self.wall_to_unix(wall), |o| wall - o);
            (time, rest, Format::Iso8601)
        } else if b.len() > 28 && b[3] == b' ' && b[8] == b'-' && b[14] == b' ' {
            let (wall, offset, rest) = short_full(line)?;
            let time = offset.map_or_else(|| self.wall_to_unix(wall), |o| wall - o);
            (time, rest, Format::ShortFull)
        } else if b.first().is_some_and(u8::is_ascii_digit) {
            let (time, rest) = short_unix(line)?;
            (time, rest, Format::ShortUnix)
        } else {
            return None;
        };
        let time = Some(Stamp::Unix(time));
        Some(match head(rest) {
            Some(h) => Record {
                time,
                host: Some(h.host),
                program: h.program,
                msg: h.msg,
                format,
            },
            // multilog's accustamp (`1157520813.485077 rblsmtpd: ...`) has no host; an ISO or
            // short-full line whose tag this does not read is syslog_loose's to split.
            None if format == Format::ShortUnix => Record {
                time,
                host: None,
                program: "",
                msg: rest,
                format,
            },
            None => return None,
        })
    }

    /// Unix seconds of a local wall-clock second, through the one-hour offset cache.
    fn wall_to_unix(&self, wall: i64) -> i64 {
        let hour = wall.div_euclid(3600);
        let (cached, offset) = self.offset_cache.get();
        let offset = if cached == hour {
            offset
        } else {
            let o = match self.zone {
                Zone::Fixed(f) => i64::from(f.local_minus_utc()),
                named => named.offset_at_wall(wall),
            };
            self.offset_cache.set((hour, o));
            o
        };
        wall - offset
    }

    /// Local wall-clock seconds of a Unix second.
    fn to_wall(&self, unix: i64) -> i64 {
        // The offset one hour either side of a DST change is off by that change at most,
        // which year inference (a day of slack) does not notice.
        let (cached, offset) = self.offset_cache.get();
        if cached == (unix + offset).div_euclid(3600) {
            return unix + offset;
        }
        self.zone.to_local(unix).and_utc().timestamp()
    }

    /// The formats syslog_loose does not know; `None` to hand the line on.
    fn parse_special<'a>(&self, line: &'a str) -> Option<Record<'a>> {
        let b = line.as_bytes();
        let (time, rest, format) = if b.first() == Some(&b'@') {
            let (t, r) = tai64n(line)?;
            (t, r, Format::Tai64n)
        } else if let Some((t, r)) = bracketed(line) {
            (t, r, Format::Bracketed)
        } else if let Some((wall, r)) = application_time(line) {
            (self.wall_to_unix(wall), r, Format::LocalTime)
        } else if b.len() > 19 && (b[4] == b'-' || b[4] == b'/') && b[7] == b[4] && b[10] == b' ' && b[13] == b':' {
            // `2013-08-11 03:56:40` (Dovecot), `2015/05/27 15:45:58` (qmailadmin), optionally with
            // a fraction (`2022-02-18 16:23:03.719762500`, qmail's multilog with accustamp).
            let format = if b[4] == b'-' { "%Y-%m-%d %H:%M:%S" } else { "%Y/%m/%d %H:%M:%S" };
            let naive = NaiveDateTime::parse_from_str(line.get(..19)?, format).ok()?;
            let rest = &line[19..];
            let rest = match rest.strip_prefix('.') {
                Some(f) => f.trim_start_matches(|c: char| c.is_ascii_digit()),
                None => rest,
            };
            (self.wall_to_unix(naive.and_utc().timestamp()), rest.trim_start(), Format::LocalTime)
        } else {
            return None;
        };
        Some(Record {
            time: Some(Stamp::Unix(time)),
            host: None,
            program: "",
            msg: rest,
            format,
        })
    }
}

/// The fields of one journal entry that mailpipe reads, copied out of its JSON.
#[derive(Debug, Default, Clone)]
pub struct JournalScratch {
    time: Option<i64>,
    host: String,
    program: String,
    msg: String,
}

/// A JSON string value, borrowed when it has no escapes; journald writes a message that is not
/// UTF-8 as an array of bytes, and a missing one as `null`.
struct Text<'a>(std::borrow::Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, an array of bytes or null")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(v.to_string().into()))
            }
            fn visit_unit<E>(self) -> Result<Text<'a>, E> {
                Ok(Text("".into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'a>, A::Error> {
                let mut bytes = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                Ok(Text(String::from_utf8_lossy(&bytes).into_owned().into()))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The fields of `journalctl -o json` read; the others are skipped.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(rename = "__REALTIME_TIMESTAMP", borrow)]
    realtime: Option<Text<'a>>,
    #[serde(rename = "_HOSTNAME", borrow)]
    host: Option<Text<'a>>,
    #[serde(rename = "SYSLOG_IDENTIFIER", borrow)]
    ident: Option<Text<'a>>,
    #[serde(rename = "_COMM", borrow)]
    comm: Option<Text<'a>>,
    #[serde(rename = "MESSAGE", borrow)]
    message: Option<Text<'a>>,
}

impl JournalScratch {
    /// Reads one JSON entry; false when `line` is no journal entry (then it is read as text).
    pub fn fill(&mut self, line: &str) -> bool {
        let Ok(e) = serde_json::from_str::<Entry<'_>>(line) else {
            return false;
        };
        let Some(message) = e.message else {
            return false;
        };
        let set = |dst: &mut String, v: Option<&Text<'_>>| {
            dst.clear();
            if let Some(t) = v {
                dst.push_str(&t.0);
            }
        };
        set(&mut self.host, e.host.as_ref());
        set(&mut self.program, e.ident.as_ref().or(e.comm.as_ref()));
        set(&mut self.msg, Some(&message));
        // Microseconds since the epoch, as a string.
        self.time = e.realtime.and_then(|t| t.0.parse::<i64>().ok()).map(|us| us.div_euclid(1_000_000));
        true
    }

    /// The entry as a record.
    pub fn record(&self) -> Record<'_> {
        Record {
            time: self.time.map(Stamp::Unix),
            host: Some(self.host.as_str()).filter(|h| !h.is_empty()),
            program: &self.program,
            msg: &self.msg,
            format: Format::JournalJson,
        }
    }
}

/// `prog` of a tag `prog` or `prog[pid]` made of name characters only.
fn plain_tag(tag: &str) -> Option<&str> {
    let (prog, rest) = tag.split_once('[').unwrap_or((tag, ""));
    let pid_ok = rest.is_empty() || rest.strip_suffix(']').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = !prog.is_empty() && prog.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b));
    (pid_ok && name_ok).then_some(prog)
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
    let inner = line.strip_prefix('[')?.get(..end - 1)?;
    let t = DateTime::parse_from_str(inner, "%d-%b-%Y %H:%M:%S %z").ok()?;
    let rest = line[end + 1..].trim_start_matches(':').trim_start();
    Some((t.timestamp(), rest))
}

/// The local times some mail applications start their own log lines with: (wall-clock
/// seconds, the message). `/` dates are month first (US), `-` dates day first:
/// - `10/06/2013 15:50:41 msg` (SquirrelMail), `03-07-2005 23:07:20 msg` (Domino), also after a
///   `[thread] ` tag (`[28325:00010-3735542592] 22-06-2014 09:56:12 msg`);
/// - `[17/Jun/2011 17:00:45] msg` (Kerio Connect);
/// - `Sat Dec 28 19:03:53 2013 - msg` (ctime: OpenWebMail);
/// - `Apr-07-13 07:08:36 msg` (ASSP);
/// - `<co ts="2014-06-02T16:06:33.99" ...` (Oracle Messaging Server: the whole line is the message).
fn application_time(line: &str) -> Option<(i64, &str)> {
    let b = line.as_bytes();
    let num = |s: &[u8]| -> Option<u32> {
        (!s.is_empty()).then_some(())?;
        s.iter()
            .try_fold(0u32, |a, &c| c.is_ascii_digit().then(|| a * 10 + u32::from(c - b'0')))
    };
    let month = |s: &[u8]| -> Option<u32> {
        const M: [&[u8]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
        ];
        M.iter().position(|m| *m == s).map(|i| i as u32 + 1)
    };
    let valid = |(y, mo, d): (i32, u32, u32)| ((1..=12).contains(&mo) && (1..=31).contains(&d)).then_some((y, mo, d));
    // `dd?dd?yyyy hh:mm:ss` at `at`: the date's fields, then the message after the spaces.
    let numeric = |at: usize| -> Option<(i64, &str)> {
        let d = b.get(at..at + 10)?;
        let (sep, a, c, y) = (d[2], num(&d[..2])?, num(&d[3..5])?, num(&d[6..10])?);
        if d[5] != sep || !matches!(sep, b'/' | b'-') || b.get(at + 10) != Some(&b' ') {
            return None;
        }
        let (mo, day) = if sep == b'/' { (a, c) } else { (c, a) };
        let (y, mo, day) = valid((y as i32, mo, day))?;
        let (h, mi, s) = clock(b.get(at + 11..at + 19)?)?;
        let rest = line.get(at + 19..)?.strip_prefix(' ')?.trim_start();
        Some((wall_secs(y, mo, day, h, mi, s), rest))
    };
    match b.first()? {
        c if c.is_ascii_digit() => numeric(0),
        b'[' => {
            let close = line.find("] ")?;
            if let Some(r) = numeric(close + 2) {
                return Some(r);
            }
            // `[17/Jun/2011 17:00:45] msg`
            let inner = b.get(1..close)?;
            if inner.len() != 20 || inner[2] != b'/' || inner[6] != b'/' || inner[11] != b' ' {
                return None;
            }
            let (y, mo, d) = valid((num(&inner[7..11])? as i32, month(&inner[3..6])?, num(&inner[..2])?))?;
            let (h, mi, s) = clock(&inner[12..20])?;
            Some((wall_secs(y, mo, d, h, mi, s), line[close + 2..].trim_start()))
        }
        b'<' => {
            let ts = line.strip_prefix("<co ts=\"")?;
            let (wall, _, _) = iso8601(&format!("{} ", ts.get(..19)?))?;
            Some((wall, line))
        }
        _ if b.get(3) == Some(&b' ') && b.get(7) == Some(&b' ') => {
            // `Sat Dec 28 19:03:53 2013 - msg`
            let day = num(line.get(8..10)?.trim_start().as_bytes())?;
            let (y, mo, d) = valid((num(b.get(20..24)?)? as i32, month(&b[4..7])?, day))?;
            let (h, mi, s) = clock(b.get(11..19)?)?;
            let rest = line.get(24..)?.trim_start();
            Some((wall_secs(y, mo, d, h, mi, s), rest.strip_prefix("- ").unwrap_or(rest)))
        }
        _ if b.get(3) == Some(&b'-') && b.get(6) == Some(&b'-') && b.get(9) == Some(&b' ') => {
            // `Apr-07-13 07:08:36 msg`: a two-digit year is this century's.
            let (y, mo, d) = valid((2000 + num(&b[7..9])? as i32, month(&b[..3])?, num(&b[4..6])?))?;
            let (h, mi, s) = clock(b.get(10..18)?)?;
            Some((wall_secs(y, mo, d, h, mi, s), line.get(18..)?.trim_start()))
        }
        _ => None,
    }
}

/// Reference for year inference, in wall-clock seconds.
/// `Copy` closure.
#[derive(Debug, Clone, Copy)]
struct YearRef {
    at: i64,
    follow: bool,
}

impl YearRef {
    fn year_for(self, (month, day, hour, min, sec): syslog_loose::IncompleteDate) -> i32 {
        let at = |y: i32| wall_secs(y, month, day, hour, min, sec);
        let y = year_of_wall(self.at);
        if self.follow {
            [y, y - 1, y + 1].into_iter().min_by_key(|&c| (at(c) - self.at).abs()).unwrap_or(y)
        } else {
            // `Jan  1 00:00:04` seen at Dec 31 23:59:55 is the coming year.
            [y + 1, y].into_iter().find(|&c| at(c) <= self.at + 86_400).unwrap_or(y - 1)
        }
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm); no allocation, no
/// validation: a day past the month's end just rolls over, which comparisons tolerate.
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A local date and time as wall-clock seconds (counted like Unix seconds, zone-less).
fn wall_secs(y: i32, month: u32, day: u32, h: u32, m: u32, s: u32) -> i64 {
    days_from_civil(y, month, day) * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s.min(59))
}

/// The year of wall-clock seconds (the inverse of `days_from_civil`, year only).
fn year_of_wall(wall: i64) -> i32 {
    let z = wall.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    (yoe + era * 400 + i64::from(mp >= 10)) as i32
}

/// A classic syslog file line, split by hand: the common case, without syslog_loose's
/// per-line allocation. Anything unusual returns `None` and goes to syslog_loose.
struct Fast<'a> {
    date: syslog_loose::IncompleteDate,
    head: Head<'a>,
}

/// What follows a syslog time: `host [facility.level] program[pid]: msg`.
struct Head<'a> {
    host: &'a str,
    program: &'a str,
    msg: &'a str,
    /// BusyBox's `facility.level` was there.
    busybox: bool,
    /// The tag had a `[pid]`.
    pid: bool,
}

/// `host [facility.level] program[pid]: msg`, strictly: name characters in the program, digits
/// in the pid, `: ` after the tag.
fn head(rest: &str) -> Option<Head<'_>> {
    // FreeBSD's `syslogd -v` writes `<facility.level>` before the host.
    let rest = match rest.strip_prefix('<').and_then(|r| r.split_once("> ")) {
        Some((fl, r)) if facility_level(fl) => r,
        _ => rest,
    };
    let (host, mut rest) = rest.split_once(' ')?;
    if host.is_empty() || host.ends_with(':') || host.contains(['[', '(']) {
        return None;
    }
    let busybox = rest.split_once(' ').is_some_and(|(f, _)| facility_level(f));
    if busybox {
        rest = rest.split_once(' ').map_or(rest, |(_, r)| r);
    }
    let tag_end = rest.find(['[', ':', ' ', '('])?;
    let program = &rest[..tag_end];
    let mut after = &rest[tag_end..];
    let pid = after.starts_with('[');
    if let Some(p) = after.strip_prefix('[') {
        let close = p.find(']')?;
        if !p[..close].bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        after = &p[close + 1..];
    }
    let msg = after.strip_prefix(": ")?;
    if program.is_empty() || msg.starts_with(' ') {
        return None;
    }
    Some(Head {
        host,
        program,
        msg,
        busybox,
        pid,
    })
}

/// BusyBox syslogd's `mail.warn` between host and tag.
fn facility_level(word: &str) -> bool {
    const FACILITIES: &[&str] = &[
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp", "local0", "local1", "local2",
        "local3", "local4", "local5", "local6", "local7",
    ];
    const LEVELS: &[&str] = &[
        "emerg", "alert", "crit", "err", "error", "warn", "warning", "notice", "info", "debug",
    ];
    word.split_once('.')
        .is_some_and(|(f, l)| FACILITIES.contains(&f) && LEVELS.contains(&l))
}

/// `[<PRI>]Mmm [d]d hh:mm:ss[.ffffff] host program[pid]: msg`.
fn fast_3164(line: &str) -> Option<Fast<'_>> {
    let mut s = line;
    if let Some(rest) = s.strip_prefix('<') {
        let end = rest.find('>')?;
        if end == 0 || end > 3 || !rest[..end].bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s = &rest[end + 1..];
    }
    let b = s.as_bytes();
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
    ];
    let month = MONTHS.iter().position(|m| b.get(..3) == Some(&m[..]))? as u32 + 1;
    if b.get(3) != Some(&b' ') {
        return None;
    }
    let mut i = 4;
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if !(1..=2).contains(&digits) || b.get(i + digits) != Some(&b' ') {
        return None;
    }
    let day: u32 = s[i..i + digits].parse().ok()?;
    i += digits + 1;
    let (h, m, sec) = clock(b.get(i..i + 8)?)?;
    i += 8;
    // `short-precise`: a fraction of a second.
    if b.get(i) == Some(&b'.') {
        i += 1 + b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
    }
    if day == 0 || day > 31 || b.get(i) != Some(&b' ') {
        return None;
    }
    let rest = &s[i + 1..];
    Some(Fast {
        date: (month, day, h, m, sec),
        head: head(rest).or_else(|| bracket_tag(rest))?,
    })
}

/// `[prog]: msg` or `[prog] msg` without a host (some sshd builds log through syslog so).
fn bracket_tag(rest: &str) -> Option<Head<'_>> {
    let (tag, msg) = rest.strip_prefix('[')?.split_once(']')?;
    let msg = msg.strip_prefix(':').unwrap_or(msg).strip_prefix(' ')?;
    plain_tag(tag).filter(|p| *p == tag)?;
    Some(Head {
        host: "",
        program: tag,
        msg,
        busybox: false,
        pid: false,
    })
}

/// `hh:mm:ss`, checked.
fn clock(t: &[u8]) -> Option<(u32, u32, u32)> {
    if t.len() != 8 || t[2] != b':' || t[5] != b':' {
        return None;
    }
    let num = |k: usize| -> Option<u32> {
        let (a, c) = (t[k], t[k + 1]);
        (a.is_ascii_digit() && c.is_ascii_digit()).then(|| u32::from(a - b'0') * 10 + u32::from(c - b'0'))
    };
    let (h, m, s) = (num(0)?, num(3)?, num(6)?);
    (h <= 23 && m <= 59 && s <= 60).then_some((h, m, s))
}

/// `YYYY-MM-DD` at the start of `b`, checked: (year, month, day).
fn date(b: &[u8]) -> Option<(i32, u32, u32)> {
    let b = b.get(..10)?;
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter()
            .try_fold(0u32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
    };
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y as i32, m, d))
}

/// An offset `Z`, `+hh:mm` or `+hhmm` at the start of `b`: (seconds east, bytes taken).
fn offset(b: &[u8]) -> Option<(i64, usize)> {
    match b.first()? {
        b'Z' => Some((0, 1)),
        sign @ (b'+' | b'-') => {
            let d = |c: u8| c.is_ascii_digit().then(|| i64::from(c - b'0'));
            let (h, rest) = (d(*b.get(1)?)? * 10 + d(*b.get(2)?)?, &b[3..]);
            let (m, len) = match rest {
                [b':', a, c, ..] => (d(*a)? * 10 + d(*c)?, 6),
                [a, c, ..] if a.is_ascii_digit() => (d(*a)? * 10 + d(*c)?, 5),
                _ => (0, 3),
            };
            let secs = h * 3600 + m * 60;
            (h <= 14 && m <= 59).then_some((if *sign == b'-' { -secs } else { secs }, len))
        }
        _ => None,
    }
}

/// `YYYY-MM-DDThh:mm:ss[.f][offset] rest`: (wall-clock seconds, offset if given, rest).
fn iso8601(line: &str) -> Option<(i64, Option<i64>, &str)> {
    let b = line.as_bytes();
    let (y, mo, d) = date(b)?;
    if b.get(10) != Some(&b'T') {
        return None;
    }
    let (h, mi, s) = clock(b.get(11..19)?)?;
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1 + b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
    }
    let off = match offset(&b[i..]) {
        Some((o, len)) => {
            i += len;
            Some(o)
        }
        None => None,
    };
    if b.get(i) != Some(&b' ') {
        return None;
    }
    Some((wall_secs(y, mo, d, h, mi, s), off, &line[i + 1..]))
}

/// `Www YYYY-MM-DD hh:mm:ss ZONE rest`. `UTC`/`GMT` and numeric offsets are honoured; a zone
/// abbreviation (`CET`) is journalctl's local zone, read as the configured one (`None`).
fn short_full(line: &str) -> Option<(i64, Option<i64>, &str)> {
    const DAYS: &[&str] = &["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let b = line.as_bytes();
    if !DAYS.contains(&line.get(..3)?) || b[3] != b' ' {
        return None;
    }
    let (y, mo, d) = date(&b[4..])?;
    if b.get(14) != Some(&b' ') {
        return None;
    }
    let (h, mi, s) = clock(b.get(15..23)?)?;
    let (zone, rest) = line.get(23..)?.strip_prefix(' ')?.split_once(' ')?;
    let off = match zone {
        "UTC" | "GMT" | "Z" => Some(0),
        z if z.starts_with(['+', '-']) => Some(offset(z.as_bytes()).filter(|&(_, len)| len == z.len())?.0),
        z if z.bytes().all(|c| c.is_ascii_alphabetic()) && (2..=6).contains(&z.len()) => None,
        _ => return None,
    };
    Some((wall_secs(y, mo, d, h, mi, s), off, rest))
}

/// `ssssssssss.ffffff rest`: Unix seconds with a fraction.
fn short_unix(line: &str) -> Option<(i64, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    let (secs, frac) = stamp.split_once('.')?;
    if !(9..=11).contains(&secs.len()) || frac.is_empty() || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((secs.parse().ok()?, rest))
}

/// Formats Unix seconds as RFC 3339 UTC (`2005-02-21T09:21:54Z`).
pub fn rfc3339(unix: i64) -> String {
    DateTime::from_timestamp(unix, 0).map_or_else(|| unix.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Local time for display (`2005-02-21T09:21:54`).
pub fn local_iso(zone: Zone, unix: i64) -> String {
    let t = zone.to_local(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
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

    /// A record with its time placed as a clock at `reference` places it (`Parser::unix`).
    #[derive(Debug)]
    struct Timed<'a> {
        time: Option<i64>,
        host: Option<&'a str>,
        program: &'a str,
        msg: &'a str,
        format: Format,
    }

    fn timed<'a>(p: &Parser, r: Record<'a>, reference: i64, follow: bool) -> Timed<'a> {
        Timed {
            time: r.time.map(|s| p.unix(s, reference, follow)),
            host: r.host,
            program: r.program,
            msg: r.msg,
            format: r.format,
        }
    }

    impl Parser {
        fn parse_at<'a>(&self, line: &'a str, reference: i64, follow: bool) -> Timed<'a> {
            timed(self, self.parse(line), reference, follow)
        }
    }

    #[test]
    fn rfc3164_fields() {
        let p = Parser::new(utc());
        let r = p.parse_at(
            "Jun 17 03:14:07 mail postfix/smtpd[175371]: warning: x",
            at("2024-07-01T00:00:00"),
            false,
        );
        assert_eq!(r.time, Some(at("2024-06-17T03:14:07")));
        assert_eq!((r.host, r.program, r.msg), (Some("mail"), "postfix/smtpd", "warning: x"));
    }

    #[test]
    fn year_form_is_not_shifted() {
        let p = Parser::new(Zone::resolve(Some("+02:00")).unwrap());
        let r = p.parse_at("Jun 17 2024 03:14:07 mail postfix/smtpd[1]: x", 0, false);
        assert_eq!(r.time, Some(at("2024-06-17T01:14:07")));
    }

    #[test]
    fn named_zone_follows_dst() {
        let p = Parser::new(Zone::resolve(Some("Europe/Zurich")).unwrap());
        let now = at("2005-08-14T10:00:00");
        assert_eq!(
            p.parse_at("Feb 21 09:21:54 x postfix/smtpd[1]: m", now, false).time,
            Some(at("2005-02-21T08:21:54"))
        );
        assert_eq!(
            p.parse_at("Jul 21 09:21:54 x postfix/smtpd[1]: m", now, false).time,
            Some(at("2005-07-21T07:21:54"))
        );
    }

    #[test]
    fn live_year_never_far_in_future() {
        let p = Parser::new(utc());
        let now = at("2026-01-01T00:00:05");
        assert_eq!(
            p.parse_at("Dec 31 23:59:59 h a: m", now, false).time,
            Some(at("2025-12-31T23:59:59"))
        );
        assert_eq!(
            p.parse_at("Jan  1 00:00:01 h a: m", now, false).time,
            Some(at("2026-01-01T00:00:01"))
        );
        // Seen a few seconds before midnight, a January line is the coming year's.
        let before = at("2025-12-31T23:59:55");
        assert_eq!(
            p.parse_at("Jan  1 00:00:04 h a: m", before, false).time,
            Some(at("2026-01-01T00:00:04"))
        );
        assert_eq!(
            p.parse_at("Dec 31 23:59:50 h a: m", before, false).time,
            Some(at("2025-12-31T23:59:50"))
        );
        assert_eq!(
            p.parse_at("Jun 17 03:14:07 h a: m", before, false).time,
            Some(at("2025-06-17T03:14:07"))
        );
    }

    #[test]
    fn feb_29_of_a_common_year_is_mar_1_in_every_shape() {
        let p = Parser::new(utc());
        let now = at("2027-01-15T00:00:00");
        for line in [
            "Feb 29 00:10:57 mx1 dovecot: auth: x",
            "Feb 29 00:10:57 auth(u@x,192.0.2.9,sasl:login)<Cv>: Info: sql: Password mismatch",
            "<13>Feb 29 00:10:57 mx1 dovecot: auth: x",
        ] {
            assert_eq!(p.parse_at(line, now, true).time, Some(at("2027-03-01T00:10:57")), "{line}");
        }
    }

    #[test]
    fn following_a_file_crosses_new_year() {
        let p = Parser::new(utc());
        // A file that runs through New Year: each line is placed near the file's clock.
        let clock = at("2026-12-31T23:59:59");
        assert_eq!(
            p.parse_at("Jan  1 00:00:01 h a: m", clock, true).time,
            Some(at("2027-01-01T00:00:01"))
        );
        assert_eq!(
            p.parse_at("Dec 31 23:59:58 h a: m", clock, true).time,
            Some(at("2026-12-31T23:59:58"))
        );
        // The first line of a file replayed in late January 2027 is December 2026's.
        let now = at("2027-01-20T00:00:00");
        assert_eq!(
            p.parse_at("Dec 20 10:00:00 h a: m", now, false).time,
            Some(at("2026-12-20T10:00:00"))
        );
    }

    #[test]
    fn local_socket_lines_without_host_keep_their_program() {
        let p = Parser::new(utc());
        let r = p.parse_at("<13>Nov 23 14:46:51 postfix/smtpd[7]: warning: x", at("2026-11-24T00:00:00"), false);
        assert_eq!((r.program, r.msg), ("postfix/smtpd", "warning: x"));
        let r = p.parse_at("Jan 29 09:33:58 pop3-login: Info: Aborted login", at("2026-11-24T00:00:00"), false);
        assert_eq!((r.program, r.msg), ("pop3-login", "Info: Aborted login"));
        let r = p.parse_at(
            "Aug 30 00:10:57 auth(i@example.org,192.0.2.110,sasl:login)<Cv>: Info: sql: Password mismatch",
            0,
            false,
        );
        assert_eq!(r.program, "");
        assert!(r.msg.starts_with("auth(i@example.org,192.0.2.110"));
    }

    #[test]
    fn headerless_dovecot_keeps_tag_in_message() {
        let p = Parser::new(utc());
        let r = p.parse_at(
            "Jun 17 04:14:11 auth-worker(175697): Info: sql(a,192.0.2.1): unknown user",
            at("2024-07-01T00:00:00"),
            false,
        );
        assert_eq!(
            (r.program, r.msg),
            ("", "auth-worker(175697): Info: sql(a,192.0.2.1): unknown user")
        );
    }

    #[test]
    fn special_formats() {
        let p = Parser::new(utc());
        let r = p.parse_at("@400000004c91b044077a9e94 dovecot-auth: pam_unix(dovecot:auth): x", 0, false);
        assert_eq!(
            (r.time, r.msg),
            (Some(at("2010-09-16T05:50:50")), "dovecot-auth: pam_unix(dovecot:auth): x")
        );
        let r = p.parse_at("2013-08-11 03:56:40 auth-worker(default): Info: m", 0, false);
        assert_eq!((r.time, r.msg), (Some(at("2013-08-11T03:56:40")), "auth-worker(default): Info: m"));
        let r = p.parse_at("2022-02-18 16:23:03.719762500 helo-dns-check: blocked", 0, false);
        assert_eq!((r.time, r.msg), (Some(at("2022-02-18T16:23:03")), "helo-dns-check: blocked"));
        let r = p.parse_at("2015/05/27 15:45:58 user:a@b ip:192.0.2.1 auth:failed", 0, false);
        assert_eq!(
            (r.time, r.msg),
            (Some(at("2015-05-27T15:45:58")), "user:a@b ip:192.0.2.1 auth:failed")
        );
        for (line, when, msg) in [
            ("10/06/2013 15:50:41 [LOGIN_ERROR] x", "2013-10-06T15:50:41", "[LOGIN_ERROR] x"),
            ("03-07-2005 23:07:20   SMTP Server: x", "2005-07-03T23:07:20", "SMTP Server: x"),
            (
                "[28325:00010-3735542592] 22-06-2014 09:56:12   smtp: x",
                "2014-06-22T09:56:12",
                "smtp: x",
            ),
            ("[17/Jun/2011 17:00:45] Attempt x", "2011-06-17T17:00:45", "Attempt x"),
            ("Sat Dec 28 19:03:53 2013 - [72926] (x) y", "2013-12-28T19:03:53", "[72926] (x) y"),
            ("Apr-07-13 07:08:36 [SSL-out] x", "2013-04-07T07:08:36", "[SSL-out] x"),
            (
                "<co ts=\"2014-06-02T16:06:33.99\" pi=\"1\"",
                "2014-06-02T16:06:33",
                "<co ts=\"2014-06-02T16:06:33.99\" pi=\"1\"",
            ),
        ] {
            let r = p.parse_at(line, 0, false);
            assert_eq!((r.time, r.msg, r.format), (Some(at(when)), msg, Format::LocalTime), "{line}");
        }
        let r = p.parse_at("[22-Jan-2013 22:28:21 +0200]: FAILED login for u from 192.0.2.1", 0, false);
        assert_eq!(
            (r.time, r.msg),
            (Some(at("2013-01-22T20:28:21")), "FAILED login for u from 192.0.2.1")
        );
    }

    #[test]
    fn every_journalctl_output_and_busybox() {
        let p = Parser::new(utc());
        let tail = "mx1 postfix/smtpd[7]: warning: m";
        for (line, format) in [
            (format!("2026-11-23T10:00:01+0000 {tail}"), Format::Iso8601),
            (format!("2026-11-23T10:00:01.123456+0000 {tail}"), Format::Iso8601),
            (format!("2026-11-23T11:00:01.123456+01:00 {tail}"), Format::Iso8601),
            (format!("2026-11-23T10:00:01Z {tail}"), Format::Iso8601),
            (format!("2026-11-23T10:00:01 {tail}"), Format::Iso8601),
            (format!("Nov 23 10:00:01.123456 {tail}"), Format::Rfc3164),
            (format!("Mon 2026-11-23 10:00:01 UTC {tail}"), Format::ShortFull),
            (format!("Mon 2026-11-23 05:00:01 -0500 {tail}"), Format::ShortFull),
            (format!("Mon 2026-11-23 10:00:01 CET {tail}"), Format::ShortFull),
            (format!("1795428001.123456 {tail}"), Format::ShortUnix),
            (
                "Nov 23 10:00:01 mx1 mail.warn postfix/smtpd[7]: warning: m".to_string(),
                Format::BusyBox,
            ),
            (
                "Nov 23 10:00:01 <mail.notice> mx1 postfix/smtpd[7]: warning: m".to_string(),
                Format::Rfc3164,
            ),
        ] {
            let r = p.parse_at(&line, at("2026-11-23T12:00:00"), false);
            assert_eq!(
                (r.time, r.host, r.program, r.msg, r.format),
                (Some(at("2026-11-23T10:00:01")), Some("mx1"), "postfix/smtpd", "warning: m", format),
                "{line}"
            );
        }
        // Dovecot's own file: a user name with a space is neither host nor program.
        let r = p.parse_at(
            "Aug 30 00:10:57 auth(john smith,192.0.2.1,sasl:login)<s>: Info: sql: unknown user",
            0,
            false,
        );
        assert_eq!(
            (r.host, r.program, r.msg),
            (None, "", "auth(john smith,192.0.2.1,sasl:login)<s>: Info: sql: unknown user")
        );
        // A bracketed tag without a host.
        for line in [
            "Mar  3 00:17:22 [sshd]: User root from x",
            "Jun 25 23:53:34 [sshd] User root from x",
        ] {
            let r = p.parse_at(line, 0, false);
            assert_eq!((r.host, r.program, r.msg), (None, "sshd", "User root from x"), "{line}");
        }
        // A journal message: host and tag, no time.
        let r = p.parse_at("srv sshd[13709]: error: PAM: Authentication failure", 0, false);
        assert_eq!((r.time, r.host, r.program, r.format), (None, Some("srv"), "sshd", Format::HostTag));
        // multilog's accustamp: the time, then a message with no host.
        let r = p.parse_at("1157520813.485077 rblsmtpd: 198.51.100.77 pid 1", 0, false);
        assert_eq!(
            (r.time, r.program, r.msg),
            (Some(1_157_520_813), "", "rblsmtpd: 198.51.100.77 pid 1")
        );
        for bad in [
            "2026-13-23T10:00:01+0000 x y: z",
            "Mon 2026-11-23 25:00:01 UTC x y: z",
            "12345.6 x y: z",
        ] {
            assert_ne!(p.parse_at(bad, 0, false).format, Format::Iso8601, "{bad}");
        }
    }

    #[test]
    fn journal_json_entries() {
        let p = Parser::new(utc());
        let mut scratch = JournalScratch::default();
        let line = r#"{"__CURSOR":"s=ab;i=1","__REALTIME_TIMESTAMP":"1795428001123456","PRIORITY":"4","SYSLOG_IDENTIFIER":"postfix/smtpd","_PID":"7","_HOSTNAME":"mx1","MESSAGE":"warning: m \"q\"","_TRANSPORT":"syslog"}"#;
        let r = timed(&p, p.parse_any(line, &mut scratch), 0, false);
        assert_eq!(
            (r.time, r.host, r.program, r.msg, r.format),
            (
                Some(at("2026-11-23T10:00:01")),
                Some("mx1"),
                "postfix/smtpd",
                "warning: m \"q\"",
                Format::JournalJson
            )
        );
        // Not UTF-8: an array of bytes; no identifier: the command name.
        let line = r#"{"__REALTIME_TIMESTAMP":"1795428001000000","_COMM":"dovecot","MESSAGE":[104,105,255]}"#;
        let r = timed(&p, p.parse_any(line, &mut scratch), 0, false);
        assert_eq!((r.program, r.msg, r.host), ("dovecot", "hi\u{fffd}", None));
        // Not a journal entry: read as text.
        let r = timed(&p, p.parse_any("{not json", &mut scratch), 0, false);
        assert_eq!((r.msg, r.format), ("{not json", Format::Bare));
    }

    #[test]
    fn rfc5424_and_iso() {
        let p = Parser::new(utc());
        let r = p.parse_at(
            "<20>1 2026-11-22T21:59:13.053111+00:00 vm postfix/smtpd 175371 - -  warning: m",
            0,
            false,
        );
        assert_eq!(
            (r.time, r.program, r.msg),
            (Some(at("2026-11-22T21:59:13")), "postfix/smtpd", "warning: m")
        );
        let r = p.parse_at("2024-06-17T03:14:07.123456+02:00 mail postfix/smtpd[1]: warning: m", 0, false);
        assert_eq!((r.time, r.program), (Some(at("2024-06-17T01:14:07")), "postfix/smtpd"));
    }

    #[test]
    fn fast_path_agrees_with_syslog_loose() {
        for line in [
            "Jun 17 03:14:07 mail postfix/smtpd[175371]: warning: unknown[46.38.145.252]: SASL",
            "<22>Mar  7 02:09:33 server postfix-smo/submission/smtpd[27246]: 1D8CC1CA0A7F: milter-reject",
            "Sep  6 07:33:33 sd6 qmail: 1157520813.485077 rblsmtpd: 198.51.100.77 pid",
            "Dec 25 02:35:54 platypus dovecot: imap-login: Disconnected",
        ] {
            let now = at("2025-01-01T00:00:00");
            let fast = fast_3164(line).map(|f| (f.head.host, f.head.program, f.head.msg)).expect(line);
            let m = syslog_loose::parse_message_with_year_tz(line, |_| 2024, Some(sentinel()), syslog_loose::Variant::Either);
            assert_eq!(fast, (m.hostname.unwrap(), m.appname.unwrap(), m.msg), "{line}");
            let p = Parser::new(utc());
            let t = p.parse_at(line, now, false).time.unwrap();
            assert_eq!(t, m.timestamp.unwrap().naive_local().and_utc().timestamp(), "{line}");
        }
        for odd in [
            "Jun 17 2024 03:14:07 h p[1]: m",
            "Jun 17 03:14:07 auth-worker(1): m",
            "Jun 17 03:14:07 pop3-login: Info: m",
            "Jun 17 03:14:07 h p[x]: m",
            "Jux 17 03:14:07 h p: m",
        ] {
            assert!(fast_3164(odd).is_none(), "{odd}");
        }
    }

    #[test]
    fn year_of_wall_matches_chrono() {
        for t in [0i64, 951_782_400, 1_704_067_199, 1_704_067_200, -1, 4_102_444_800, 1_709_164_800] {
            assert_eq!(year_of_wall(t), DateTime::from_timestamp(t, 0).unwrap().year(), "{t}");
        }
    }

    #[test]
    fn days_from_civil_matches_chrono() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2024, 12, 31), (1969, 12, 31), (2100, 3, 1)] {
            let c = chrono::NaiveDate::from_ymd_opt(y, m, d)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp()
                / 86400;
            assert_eq!(days_from_civil(y, m, d), c);
        }
    }

    #[test]
    fn garbage_has_no_time() {
        let p = Parser::new(utc());
        assert_eq!(p.parse_at("garbage line here", 0, false).time, None);
        assert_eq!(p.parse_at("", 0, false).time, None);
        assert_eq!(p.parse_at("@zz", 0, false).time, None);
        assert_eq!(p.parse_at("[nope", 0, false).time, None);
    }
}
