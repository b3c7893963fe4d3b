//! Running the programs sinks drive (iptables, nft, sendmail, whois): directly, never through a
//! shell, with a time limit, so a program that hangs or floods its output cannot stall a sink.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

/// How long the output of a program that has ended may still take to arrive.
const LINGER: Duration = Duration::from_secs(1);

/// Why a program did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// It could not be started (missing, not executable).
    #[error("cannot run it: {0}")]
    Spawn(String),
    /// It ran and failed: its exit status and the first line it wrote on stderr.
    #[error("{0}")]
    Failed(String),
    /// It gave no answer in time and was killed.
    #[error("no answer within {0} s")]
    Timeout(u64),
}

/// Runs `program` with `args`, feeding it `input`, within `limit`; its standard output (at most
/// 1 MiB). Input is written and output read on threads of their own, so a program that reads
/// nothing or writes much cannot block the caller past the limit (killing it ends them).
pub fn run<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S], input: Option<&[u8]>, limit: Duration) -> Result<String, ExecError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ExecError::Spawn(e.to_string()))?;
    // Each output is read on a thread that reports back by channel: a grandchild that keeps a
    // pipe open (a sendmail that forks its delivery) cannot hold the caller once the child ends.
    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = std::io::Read::read_to_end(&mut std::io::Read::take(&mut r, 1 << 20), &mut v);
            }
            let _ = tx.send(v);
        });
        rx
    };
    let out = read(child.stdout.take().map(|s| Box::new(s) as _));
    let err = read(child.stderr.take().map(|s| Box::new(s) as _));
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        let bytes = bytes.to_vec();
        // A program that stops reading early is judged by its exit status below.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
    let status = match child.wait_timeout(limit).map_err(|e| ExecError::Failed(e.to_string()))? {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ExecError::Timeout(limit.as_secs()));
        }
    };
    let (out, err) = (
        out.recv_timeout(LINGER).unwrap_or_default(),
        err.recv_timeout(LINGER).unwrap_or_default(),
    );
    if status.success() {
        Ok(String::from_utf8_lossy(&out).into_owned())
    } else {
        let first = String::from_utf8_lossy(&err).lines().next().unwrap_or("").to_string();
        Err(ExecError::Failed(format!("{status}: {first}")))
    }
}
