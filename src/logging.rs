//! Log lines: `tracing` events written as `mailpipe: [error: |warning: ]MESSAGE key=value`, one
//! per line on stderr. Under systemd (`JOURNAL_STREAM` set) each line starts with its syslog
//! priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which journald takes as the
//! entry's priority: `journalctl -u mailpipe -p warning` shows what needs a look.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// mailpipe's line format.
struct Line {
    journald: bool,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = *event.metadata().level();
        if self.journald {
            let priority = match level {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                _ => 7,
            };
            write!(w, "<{priority}>")?;
        }
        let tag = match level {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::INFO => "",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
        };
        write!(w, "mailpipe: {tag}")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Installs the logger: `RUST_LOG` when set (`mailpipe=debug`, ...), else `level` for
/// mailpipe's own events (`error`, `warn`, `info`, `debug`, `trace`; default `info`) and
/// warnings only from the libraries.
pub fn init(level: Option<&str>) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG={spec:?}: {e}"))?,
        _ => {
            let level = level.unwrap_or("info");
            if !["error", "warn", "info", "debug", "trace"].contains(&level) {
                return Err(format!("--log-level {level:?}: one of error, warn, info, debug, trace"));
            }
            EnvFilter::new(format!("warn,mailpipe={level}"))
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Line {
            journald: std::env::var_os("JOURNAL_STREAM").is_some(),
        })
        .try_init()
        .map_err(|e| e.to_string())
}
