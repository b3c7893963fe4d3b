//! The systemd journal, read through `journalctl --follow --output=json` run as a child.
//!
//! Why a child and not libsystemd: journalctl is on every systemd host, follows rotation,
//! vacuuming and namespaces itself, and keeps a C library (and its ABI across Debian releases)
//! out of the binary; its JSON is what the pipeline already reads (`parse::JournalScratch`).
//! The cost is one process and a JSON decode per candidate line.
//!
//! Where to start: after the cursor of the last entry the pipeline processed (kept in the state
//! file), so a restart neither loses entries written while mailpipe was down nor counts any
//! twice; without one, `lookback` before now. A journalctl that exits is started again, after
//! the last entry sent, with a backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::net::InputStats;
use crate::queue::{Msg, Queue};

/// What `Journal(...)` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Units whose entries are read (`_SYSTEMD_UNIT=`), e.g. `postfix@-.service`.
    pub units: Vec<String>,
    /// Syslog identifiers whose entries are read (`SYSLOG_IDENTIFIER=`), e.g. `postfix/smtpd`.
    pub identifiers: Vec<String>,
    /// A journal directory instead of the system's (`--directory`).
    pub directory: Option<String>,
    /// The journalctl program.
    pub journalctl: String,
    /// Without a saved cursor, how far back to start.
    pub lookback: Duration,
    /// A saved cursor older than this is not resumed (`parse.backlog`): its entries would all
    /// count at once, now, and ban whoever failed now and then over the downtime.
    pub backlog: Duration,
    /// Longest entry line; longer ones are skipped and counted.
    pub max_frame: usize,
}

impl JournalConfig {
    /// journalctl's arguments: JSON, following, from `cursor` or `lookback` ago (at `now`),
    /// only the fields the pipeline reads, and the matches (units OR identifiers).
    pub fn args(&self, cursor: Option<&str>, now: i64) -> Vec<String> {
        // Not --quiet: journalctl's hint about missing permissions must reach the log.
        let mut a: Vec<String> = ["--follow", "--output=json", "--all", "--no-pager"]
            .into_iter()
            .map(String::from)
            .collect();
        a.push("--output-fields=MESSAGE,SYSLOG_IDENTIFIER,_COMM,_HOSTNAME".into());
        let oldest = now - self.backlog.as_secs() as i64;
        match cursor {
            Some(c) if cursor_time(c).is_none_or(|t| t >= oldest) => a.push(format!("--after-cursor={c}")),
            Some(_) => a.push(format!("--since=@{oldest}")),
            None => a.push(format!("--since=@{}", now - self.lookback.as_secs() as i64)),
        }
        if let Some(d) = &self.directory {
            a.push(format!("--directory={d}"));
        }
        let groups = [("_SYSTEMD_UNIT", &self.units), ("SYSLOG_IDENTIFIER", &self.identifiers)];
        let mut first = true;
        for (field, values) in groups {
            if values.is_empty() {
                continue;
            }
            if !first {
                a.push("+".into());
            }
            first = false;
            a.extend(values.iter().map(|v| format!("{field}={v}")));
        }
        a
    }
}

/// The time (Unix seconds) a cursor names: its `t=` field, microseconds in hex.
fn cursor_time(cursor: &str) -> Option<i64> {
    let t = cursor.split(';').find_map(|f| f.strip_prefix("t="))?;
    i64::from_str_radix(t, 16).ok().map(|us| us / 1_000_000)
}

/// The cursor in one JSON entry line, found without decoding it.
pub fn cursor_of(line: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"__CURSOR\":\"";
    let at = memchr::memmem::find(line, KEY)? + KEY.len();
    let len = memchr::memchr(b'"', &line[at..])?;
    std::str::from_utf8(&line[at..at + len]).ok()
}

/// Reads the journal until `stop`; `cursor` is where the last run's pipeline stopped.
pub async fn run(cfg: JournalConfig, mut cursor: Option<String>, q: Queue, st: Arc<InputStats>, stop: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let args = cfg.args(cursor.as_deref(), crate::clock::wall_clock());
        let mut child = match tokio::process::Command::new(&cfg.journalctl)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("journal: cannot run {}: {e}; retrying in {backoff:?}", cfg.journalctl);
                if wait(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(
            "reading the journal ({})",
            cursor.as_deref().map_or("from the lookback", |_| "after the saved cursor")
        );
        // Its stderr is read as it comes (bounded), so warnings cannot fill the pipe and stall it.
        let errors = child.stderr.take().map(|mut e| {
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = (&mut e).take(4096).read_to_end(&mut all).await;
                let _ = tokio::io::copy(&mut e, &mut tokio::io::sink()).await;
                String::from_utf8_lossy(&all).into_owned()
            })
        });
        let stdout = child.stdout.take().expect("piped");
        let started_with = cursor.clone();
        let read = read_entries(stdout, &cfg, &q, &st, &stop, &mut cursor).await;
        let _ = child.start_kill();
        let status = child.wait().await;
        if stop.is_cancelled() || read.is_err() {
            return;
        }
        let err = match errors {
            Some(h) => h.await.unwrap_or_default(),
            None => String::new(),
        };
        if cursor != started_with {
            // It read entries: a later death is news, not a loop.
            backoff = Duration::from_secs(1);
        } else if started_with.is_some() {
            // Nothing read after a cursor: a cursor it refuses (another host's, damaged) would
            // stop the journal for good; start from the lookback instead.
            tracing::warn!("journal: nothing read after the saved cursor; starting from the lookback");
            cursor = None;
        }
        tracing::error!(
            "journal: {} ended ({}{}); starting it again in {backoff:?}",
            cfg.journalctl,
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            err.lines().next().map(|l| format!(": {l}")).unwrap_or_default()
        );
        if wait(&stop, &mut backoff).await {
            return;
        }
    }
}

/// Sleeps `backoff` (doubling it up to a minute); true when stopped meanwhile.
async fn wait(stop: &CancellationToken, backoff: &mut Duration) -> bool {
    let d = *backoff;
    *backoff = (*backoff * 2).min(Duration::from_secs(60));
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Cuts journalctl's output into entry lines and queues them; keeps `cursor` at the last one
/// queued (where a new journalctl starts). `Err` when the pipeline is gone.
async fn read_entries(
    mut out: tokio::process::ChildStdout,
    cfg: &JournalConfig,
    q: &Queue,
    st: &InputStats,
    stop: &CancellationToken,
    cursor: &mut Option<String>,
) -> Result<(), ()> {
    const CHUNK: usize = 256 << 10;
    let mut carry = BytesMut::new();
    let mut skipping = false;
    loop {
        carry.reserve(CHUNK);
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = out.read_buf(&mut carry) => match r {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            },
        }
        let mut frames = Vec::new();
        let mut bytes = 0;
        while let Some(nl) = memchr::memchr(b'\n', &carry) {
            let line = carry.split_to(nl + 1);
            if std::mem::take(&mut skipping) || line.len() > cfg.max_frame {
                st.dropped_oversized.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            bytes += line.len();
            frames.push(line);
        }
        if carry.len() > cfg.max_frame {
            // An entry longer than allowed: drop what we have and skip to its end.
            carry.clear();
            skipping = true;
        }
        let Some(last) = frames.last() else { continue };
        if let Some(c) = cursor_of(last) {
            *cursor = Some(c.to_string());
        }
        st.received.fetch_add(frames.len() as u64, Ordering::Relaxed);
        let lease = q.budget.take(bytes).await;
        if q.tx.send(Msg::Journal(frames, lease)).is_err() {
            return Err(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> JournalConfig {
        JournalConfig {
            units: vec!["dovecot.service".into()],
            identifiers: vec!["postfix/submission/smtpd".into(), "postfix/smtps/smtpd".into()],
            directory: None,
            journalctl: "journalctl".into(),
            lookback: Duration::from_secs(600),
            backlog: Duration::from_secs(86_400),
            max_frame: 65536,
        }
    }

    #[test]
    fn matches_cursor_and_lookback() {
        let a = cfg().args(Some("s=1;i=2"), 1000);
        assert!(a.contains(&"--after-cursor=s=1;i=2".to_string()));
        let tail: Vec<&str> = a
            .iter()
            .map(String::as_str)
            .skip_while(|s| !s.starts_with("_SYSTEMD_UNIT"))
            .collect();
        assert_eq!(
            tail,
            [
                "_SYSTEMD_UNIT=dovecot.service",
                "+",
                "SYSLOG_IDENTIFIER=postfix/submission/smtpd",
                "SYSLOG_IDENTIFIER=postfix/smtps/smtpd"
            ]
        );
        assert!(cfg().args(None, 1000).contains(&"--since=@400".to_string()));
        // A cursor older than the backlog is not resumed: its entries would all count now.
        let old = "s=1;i=2;b=3;m=4;t=5f5e100;x=6"; // t = 100 s after the epoch
        assert_eq!(cursor_time(old), Some(100));
        assert!(cfg().args(Some(old), 200_000).contains(&"--since=@113600".to_string()));
        assert!(cfg().args(Some(old), 1000).contains(&format!("--after-cursor={old}")));
        assert_eq!(cursor_of(br#"{"__CURSOR":"s=ab;i=9","MESSAGE":"x"}"#), Some("s=ab;i=9"));
        assert_eq!(cursor_of(br#"{"MESSAGE":"x"}"#), None);
    }
}
