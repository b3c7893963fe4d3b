//! The ban-mail sink: what fail2ban's `mail`/`sendmail-whois-lines` actions do, batched. These
//! hosts are mail servers, so the local `sendmail` program delivers: run directly (never through
//! a shell), with the recipients from the pipeline file as arguments after `--`, and one message
//! on its standard input per batch, however many bans the batch holds.
//!
//! Everything in the message that an attacker could have written (the log lines) is in the body,
//! cut to a bounded length with control characters replaced, so it can neither add headers nor
//! end the message early.

use std::time::{Duration, Instant};

use super::exec;

use crate::policy::Decision;

/// How the ban mail is sent (from `SinkConfig::Mail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailConfig {
    /// Recipients.
    pub to: Vec<String>,
    /// Envelope and header sender.
    pub from: String,
    /// The sendmail-compatible program (Postfix, Exim and OpenSMTPD all ship one).
    pub sendmail: String,
    /// How long bans are gathered before one mail goes out.
    pub batch: Duration,
    /// Log lines quoted per ban, at most.
    pub lines: usize,
    /// Bans described in full per mail; the rest are counted per jail.
    pub max_bans: usize,
    /// A `whois` program to summarise each banned network with, if any.
    pub whois: Option<String>,
}

/// Why a mail could not be sent (it is kept and retried).
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The program could not be run.
    #[error("cannot run {program}: {reason}")]
    Spawn {
        /// The sendmail program.
        program: String,
        /// The system's reason.
        reason: String,
    },
    /// It ran and failed.
    #[error("{program} failed: {reason}")]
    Failed {
        /// The sendmail program.
        program: String,
        /// Its exit status and first line of error output.
        reason: String,
    },
}

/// A mail line is cut here (RFC 5322 allows 998 bytes).
const MAX_LINE: usize = 500;
/// How long sendmail and each whois may take.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(30);
/// whois is asked about this many bans per mail at most, so a storm does not run thousands.
const MAX_WHOIS: usize = 20;
/// Lines of whois output kept per network.
const WHOIS_LINES: usize = 8;

impl MailConfig {
    /// Refuses recipients and a sender sendmail could read as options or that would break the
    /// header they are written in.
    pub fn check(&self) -> Result<(), String> {
        if self.to.is_empty() {
            return Err("Mail: `to` needs at least one recipient".into());
        }
        for a in self.to.iter().chain([&self.from]) {
            if a.is_empty() || a.starts_with('-') || a.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',') {
                return Err(format!("Mail: {a:?} is not a mail address"));
            }
        }
        if self.batch.is_zero() {
            return Err("Mail: batch must be at least 1s".into());
        }
        Ok(())
    }
}

/// The sink: bans gathered since the batch's first, sent together.
#[derive(Debug)]
pub struct Mailer {
    cfg: MailConfig,
    host: String,
    /// The batch's first `max_bans` bans, in full.
    pending: Vec<Decision>,
    /// Every ban of the batch, counted per jail (bounded by the jails there are).
    counts: Vec<(std::sync::Arc<str>, usize)>,
    /// When the gathered bans are due to go out.
    due: Option<Instant>,
    /// A message that could not be sent yet, and when to try it again; built once, so retries
    /// neither run whois again nor grow.
    unsent: Option<(String, usize, Instant)>,
}

impl Mailer {
    /// A mailer for `cfg`; nothing is sent until the first ban.
    pub fn new(cfg: MailConfig) -> Mailer {
        Mailer {
            cfg,
            host: crate::primitives::host_name(),
            pending: Vec::new(),
            counts: Vec::new(),
            due: None,
            unsent: None,
        }
    }

    /// Adds a ban to the batch (the first starts its clock).
    pub fn push(&mut self, d: &Decision) {
        if self.pending.len() < self.cfg.max_bans {
            self.pending.push(d.clone());
        }
        match self.counts.iter_mut().find(|(j, _)| *j == d.jail) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((d.jail.clone(), 1)),
        }
        self.due.get_or_insert_with(|| Instant::now() + self.cfg.batch);
    }

    /// When the thread must act: a failed message to try again (the next batch waits behind
    /// it), or else the batch to send.
    pub fn due(&self) -> Option<Instant> {
        match &self.unsent {
            Some((_, _, at)) => Some(*at),
            None => self.due,
        }
    }

    /// Sends what is due: a message that failed before, then the batch if its time has come (or
    /// everything, at shutdown with `all`). How many bans were mailed; on failure the message is
    /// kept for `retry_in`.
    pub fn send(&mut self, all: bool) -> Result<usize, MailError> {
        let now = Instant::now();
        if self.unsent.is_none() && self.due.is_some_and(|d| all || d <= now) {
            let total = self.counts.iter().map(|(_, n)| n).sum();
            let message = self.message(crate::clock::wall_clock(), total);
            self.pending.clear();
            self.counts.clear();
            self.due = None;
            self.unsent = Some((message, total, now));
        }
        let Some((message, total, at)) = &self.unsent else {
            return Ok(0);
        };
        if !all && *at > now {
            return Ok(0);
        }
        let mut args = vec!["-oi".to_string(), "-f".into(), self.cfg.from.clone(), "--".into()];
        args.extend(self.cfg.to.iter().cloned());
        exec::run(&self.cfg.sendmail, &args, Some(message.as_bytes()), PROGRAM_TIMEOUT).map_err(|e| {
            let program = self.cfg.sendmail.clone();
            match e {
                exec::ExecError::Spawn(reason) => MailError::Spawn { program, reason },
                e => MailError::Failed {
                    program,
                    reason: e.to_string(),
                },
            }
        })?;
        let sent = *total;
        self.unsent = None;
        Ok(sent)
    }

    /// Tries the failed message again after `wait`.
    pub fn retry_in(&mut self, wait: Duration) {
        if let Some(u) = &mut self.unsent {
            u.2 = Instant::now() + wait;
        }
    }

    /// The whole message: headers, then one section per ban (the first `max_bans`), then how
    /// many more there were.
    fn message(&self, now: i64, total: usize) -> String {
        let what = match &self.pending[..] {
            [d] if total == 1 => format!("banned {} ({})", d.net, clean(&d.jail)),
            _ => format!(
                "{total} bans ({})",
                self.counts
                    .iter()
                    .map(|(j, n)| format!("{}: {n}", clean(j)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut m = format!(
            "From: {from}\nTo: {to}\nSubject: [mailpipe] {host}: {what}\nDate: {date}\nAuto-Submitted: auto-generated\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n",
            from = self.cfg.from,
            to = self.cfg.to.join(", "),
            host = clean(&self.host),
            date = chrono::DateTime::from_timestamp(now, 0).unwrap_or_default().to_rfc2822(),
        );
        m += &format!("mailpipe on {} made {total} bans.\n", clean(&self.host));
        for (i, d) in self.pending.iter().enumerate() {
            m += &self.section(d, i < MAX_WHOIS);
        }
        let rest = total.saturating_sub(self.pending.len());
        if rest > 0 {
            m += &format!("\n... and {rest} more bans, not listed one by one (`mailpipe list` shows them all).\n");
        }
        m
    }

    /// One ban: what, how long, why, the lines that counted, and the whois summary if enabled.
    fn section(&self, d: &Decision, whois: bool) -> String {
        let until = crate::parse::rfc3339(d.until());
        let mut s = format!(
            "\n{net}: banned by jail {jail} for {len} (offence {off}, {reason}, {n} failures), on {ports}, until {until}\n",
            net = d.net,
            jail = clean(&d.jail),
            len = humantime::format_duration(Duration::from_secs(d.ban_for)),
            off = d.offence,
            reason = d.reason.name(),
            n = d.failures,
            ports = d.ports,
        );
        if !d.evidence.is_empty() {
            s += "  Log lines that counted:\n";
            for l in d.evidence.iter().rev().take(self.cfg.lines).rev() {
                s += &format!("    {}\n", clean(l));
            }
        }
        if let Some(program) = self.cfg.whois.as_deref().filter(|_| whois) {
            s += "  whois:\n";
            match exec::run(program, &[d.net.addr().to_string()], None, PROGRAM_TIMEOUT) {
                Ok(out) => {
                    for l in whois_summary(&out) {
                        s += &format!("    {}\n", clean(l));
                    }
                }
                Err(e) => s += &format!("    ({program}: {})\n", clean(&e.to_string())),
            }
        }
        s
    }
}

/// The lines of whois output that say who holds a network (name, owner, country, abuse contact).
fn whois_summary(out: &str) -> impl Iterator<Item = &str> {
    const KEYS: &[&str] = &[
        "inetnum",
        "inet6num",
        "netrange",
        "cidr",
        "route",
        "netname",
        "descr",
        "country",
        "org-name",
        "orgname",
        "owner",
        "abuse-mailbox",
        "orgabuseemail",
        "origin",
    ];
    out.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| KEYS.contains(&k.trim().to_ascii_lowercase().as_str()))
        })
        .take(WHOIS_LINES)
}

/// Text safe in a mail body: control characters become `?`, long lines are cut.
fn clean(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if out.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(" [...]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacker_text_stays_in_the_body_and_bounded() {
        assert_eq!(clean("a\r\nBcc: x\u{7}"), "a??Bcc: x?");
        assert!(clean(&"é".repeat(400)).len() <= MAX_LINE + 6);
        let cfg = MailConfig {
            to: vec!["root".into()],
            from: "mailpipe".into(),
            sendmail: "/usr/sbin/sendmail".into(),
            batch: Duration::from_secs(1),
            lines: 10,
            max_bans: 100,
            whois: None,
        };
        assert!(cfg.check().is_ok());
        for bad in ["-oQ/tmp", "a b", "a\nb", ""] {
            let c = MailConfig {
                to: vec![bad.into()],
                ..cfg.clone()
            };
            assert!(c.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn whois_is_summarised() {
        let out = "% comment\ninetnum: 192.0.2.0 - 192.0.2.255\nnetname: TEST-NET\nremarks: long text\ncountry: ZZ\nabuse-mailbox: abuse@example.net\n";
        assert_eq!(
            whois_summary(out).collect::<Vec<_>>(),
            vec![
                "inetnum: 192.0.2.0 - 192.0.2.255",
                "netname: TEST-NET",
                "country: ZZ",
                "abuse-mailbox: abuse@example.net"
            ]
        );
    }
}
