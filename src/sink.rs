//! Stage 6: where decisions go.
//!
//! Today only `DryRun`, which prints each decision as one JSON line; the kernel sinks (ipset,
//! nftables) slot in as further variants of `SinkConfig` and `Sink`.

use std::io::Write;

use serde::Deserialize;

use crate::policy::{Decision, Reason};

/// Sink settings of a pipeline file.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum SinkConfig {
    /// Print decisions as JSON lines on stdout; touch no firewall.
    #[default]
    DryRun,
}

/// A decision as the JSON object scripts read (`kind: "ban"`).
pub fn decision_json(d: &Decision) -> serde_json::Value {
    serde_json::json!({
        "kind": "ban",
        "ip": d.ip.to_string(),
        "prefix": d.prefix,
        "jail": &*d.jail,
        "failures": d.failures,
        "ban_for_s": d.ban_for,
        "offence": d.offence,
        "reason": match d.reason { Reason::Threshold => "threshold", Reason::Recidive => "recidive" },
        "time": crate::parse::rfc3339(d.time),
    })
}

/// A running sink.
#[derive(Debug)]
pub enum Sink<W: Write> {
    /// Decisions printed to a writer.
    DryRun(W),
}

impl<W: Write> Sink<W> {
    /// Applies one decision. Each line is flushed so a reader sees bans as they happen.
    pub fn apply(&mut self, d: &Decision) -> std::io::Result<()> {
        match self {
            Sink::DryRun(w) => {
                serde_json::to_writer(&mut *w, &decision_json(d))?;
                w.write_all(b"\n")?;
                w.flush()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_prints_json_lines() {
        let d = Decision {
            ip: "2001:db8:1::".parse().unwrap(),
            prefix: 64,
            jail: "dovecot-auth".into(),
            failures: 7,
            ban_for: 3600,
            offence: 1,
            time: 0,
            reason: Reason::Threshold,
        };
        let mut s = Sink::DryRun(Vec::new());
        s.apply(&d).unwrap();
        let Sink::DryRun(out) = s;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"kind\":\"ban\",\"ip\":\"2001:db8:1::\",\"prefix\":64,\"jail\":\"dovecot-auth\",\"failures\":7,\"ban_for_s\":3600,\"offence\":1,\"reason\":\"threshold\",\"time\":\"1970-01-01T00:00:00Z\"}\n"
        );
    }
}
