//! mailpipe: ban mail-server brute-forcers from a stream of log lines.
//!
//! # Dataflow
//!
//! ```text
//! &[u8] line ─► prefilter ─► parse ─► matcher ─► policy.admit ─► window ─► policy.decide ─► sink
//!               (literals)   Record   Match      ignore/IPv6 net  maxretry   Decision
//!  └──────── pipeline::Front ────────┘  └──────── Pipeline::count, in order ────────┘
//! ```
//!
//! The front keeps nothing from one line to the next, so `test` runs a copy of it per core on
//! blocks of lines; the counting half sees every line in order on one thread.
//!
//! # Layout
//!
//! - [`input`]: bytes in: stdin, UDP, TCP (RFC 6587 framing), Unix sockets; bounded lines.
//! - [`control`]: the daemon's control socket (`status`, `list`, `ban`, `unban`).
//! - [`daemon`]: `run`: inputs → queue bounded in bytes → pipeline thread → sinks and fleet;
//!   draining shutdown.
//! - [`fleet`]: bans and failures shared with other nodes through Redis streams; the fleet's
//!   events come back through the queue.
//! - [`parse`]: syslog header → [`parse::Record`] (time, program, message).
//! - [`clock`]: which time a line counts at (the wall clock or the file's; line times are bounded).
//! - [`prefilter`]: Teddy (Aho-Corasick's SIMD searcher) over literals derived from the rules.
//! - [`matcher`]: all rules in one DFA → [`matcher::Match`].
//! - [`window`]: failures per (jail, address) within findtime.
//! - [`evidence`]: the recent log lines behind a ban, for the ban mail.
//! - [`policy`]: ignore lists, IPv6 aggregation, escalation, recidive → [`policy::Decision`].
//! - [`ports`]: the ports a ban drops (each jail's scope).
//! - [`primitives`]: the plain types every part shares (durations, errors, jails as written).
//! - [`sink`]: where decisions go.
//! - [`telemetry`]: Prometheus metrics, handles registered once, copied per batch.
//! - [`logging`]: log lines through `tracing`, with journald priorities under systemd.
//! - [`top`]: `mailpipe top`, a live terminal view over the control socket.
//! - [`state`]: bans and ban history that survive restarts (redb).
//! - [`pipeline`]: wires the stages (the front, and the counting half); [`config`] reads
//!   pipeline files.
//! - [`import`]: a fail2ban configuration as a pipeline (`mailpipe import fail2ban`).
//! - [`queue`]: what the daemon's edges hand the pipeline thread, bounded in bytes.
//! - [`replay`]: the `test` command (fail2ban-regex's job) and its report.
#![deny(missing_docs)]

pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod evidence;
pub mod fleet;
pub mod import;
pub mod input;
pub mod logging;
pub mod matcher;
pub mod parse;
pub mod pipeline;
pub mod policy;
pub mod ports;
pub mod prefilter;
pub mod primitives;
pub mod queue;
pub mod replay;
pub mod sink;
pub mod state;
pub mod telemetry;
pub mod top;
pub mod window;
