//! Control of a running daemon over a Unix socket (mode 0600): one JSON object per line each
//! way. `mailpipe status|list|ban|unban` are its clients.
//!
//! Requests are answered on the pipeline thread, in order with the lines, so a `ban` and the
//! failures around it see one consistent state. A `reload` is compiled on a thread of its own
//! (bounded in time and memory, see `pipeline::build_within`) and only then swapped in, so a
//! pipeline file that takes long to compile never stops detection. Requests are lines of at most
//! `MAX_REQUEST` bytes, on at most `MAX_CLIENTS` connections at once.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::input::net::InputStats;
use crate::parse::rfc3339;
use crate::pipeline::Pipeline;
use crate::queue::{Msg, Queue, Reloader};
use crate::sink::SinkHandle;

/// Longest request line; a longer one is answered with an error and the connection closed.
pub const MAX_REQUEST: usize = 64 << 10;
/// Control connections served at once; more wait in the kernel's backlog.
pub const MAX_CLIENTS: usize = 16;

/// Where `mailpipe status` and friends look by default.
pub const DEFAULT_SOCKET: &str = "/run/mailpipe/control.sock";

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Counters per jail, per input, of the sink.
    Status,
    /// Active bans, optionally of one jail.
    List {
        /// Only this jail.
        #[serde(default)]
        jail: Option<String>,
    },
    /// Ban an address now.
    Ban {
        /// The address (IPv6 is banned as its network).
        ip: IpAddr,
        /// Jail name to record (default `manual`).
        #[serde(default)]
        jail: Option<String>,
        /// Seconds (default: the policy's bantime).
        #[serde(default)]
        for_s: Option<u64>,
        /// Ban even an address in `policy.ignore`.
        #[serde(default)]
        force: bool,
    },
    /// Re-read the pipeline file; the running pipeline stays if the file is bad.
    Reload,
    /// Lift a ban.
    Unban {
        /// The address; `None` with `all`.
        #[serde(default)]
        ip: Option<IpAddr>,
        /// Lift every ban.
        #[serde(default)]
        all: bool,
    },
}

/// Compiles the pipeline file again off the pipeline thread, then swaps it in there.
pub async fn reload(reload: Option<&Reloader>, queue: &Queue) -> Value {
    let Some(build) = reload.cloned() else {
        return json!({"ok": false, "error": "this daemon has no pipeline file to reload"});
    };
    let (next, not_applied) = match tokio::task::spawn_blocking(move || build()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return json!({"ok": false, "error": e}),
        Err(e) => return json!({"ok": false, "error": format!("compiling failed: {e}")}),
    };
    let (tx, rx) = oneshot::channel();
    if queue.tx.send(Msg::Swap(Box::new(next), tx)).is_err() {
        return json!({"ok": false, "error": "shutting down"});
    }
    let mut v = rx.await.unwrap_or_else(|_| json!({"ok": false, "error": "shutting down"}));
    if v["ok"] == true && !not_applied.is_empty() {
        tracing::warn!("reload: changed, but applied only by a restart: {}", not_applied.join(", "));
        v["not_applied"] = not_applied.into();
    }
    v
}

/// Answers `req` on the pipeline thread; `now` is the pipeline's clock.
pub fn handle(p: &mut Pipeline, sink: &mut SinkHandle, req: Request, now: i64) -> Value {
    match req {
        // Compiled at the edge and swapped in with `Msg::Swap`; never here.
        Request::Reload => json!({"ok": false, "error": "reload is handled by the control server"}),
        Request::Status => {
            let names = p.jail_names().to_vec();
            let st = p.stats();
            let banned = p.banned_per_jail();
            let failing = p.failing_per_jail();
            let jails: Vec<Value> = names
                .iter()
                .enumerate()
                .map(|(j, n)| {
                    json!({
                        "name": n,
                        "currently_failing": failing[j],
                        "currently_banned": banned[j],
                        "total_banned": st.jails[j].bans,
                        "failures": st.jails[j].rules.iter().sum::<u64>(),
                    })
                })
                .collect();
            let (tracked, evicted) = p.tracked();
            let up = p.uptime().max(1e-9);
            let sinks = sink.stats();
            let state = sink.store.as_ref().map(|s| {
                let lag = s.lag();
                json!({"pending": lag.pending, "dropped": lag.dropped, "error": lag.error})
            });
            json!({"ok": true, "uptime_s": up.round(), "lines": st.lines, "lines_per_s": (st.lines as f64 / up).round(),
                   "bans_per_hour": (st.bans as f64 * 3600.0 / up).round(),
                   "parsed": st.parsed, "matched": st.matched_lines, "time_clamped": st.time_clamped, "bans": st.bans,
                   "currently_banned": p.bans().len(), "tracked": tracked, "evicted": evicted, "jails": jails,
                   "targeted": p.most_targeted(10).into_iter().map(|(u, n)| json!({"user": u, "failures": n})).collect::<Vec<_>>(),
                   "attackers": p.most_failing(10).into_iter().map(|(a, n)| json!({"ip": a.to_string(), "failures": n})).collect::<Vec<_>>(),
                   "sink": sinks.first().map(|(_, s)| s.summary()), "sinks": sinks.iter().map(|(n, s)| {
                       let mut v = s.summary();
                       v["name"] = n.clone().into();
                       v
                   }).collect::<Vec<_>>(), "state": state})
        }
        Request::List { jail } => {
            if let Some(e) = jail.as_deref().and_then(|j| unknown_jail(p, j)) {
                return json!({"ok": false, "error": e});
            }
            let bans: Vec<Value> = p
                .bans()
                .into_iter()
                .filter(|b| jail.as_deref().is_none_or(|j| j == &*b.jail))
                .map(|b| {
                    json!({"ip": b.net.addr().to_string(), "prefix": b.net.prefix_len(), "jail": &*b.jail,
                           "reason": b.reason.name(), "offence": b.offence, "since": rfc3339(b.since),
                           "until": rfc3339(b.until), "left_s": b.until - now, "ports": b.ports.json(),
                           "permanent": crate::sink::kernel::permanent(b.until.saturating_sub(b.since) as u64)})
                })
                .collect();
            json!({"ok": true, "bans": bans})
        }
        Request::Ban { ip, jail, for_s, force } => match jail.as_deref().and_then(|j| unknown_jail(p, j)) {
            Some(e) => json!({"ok": false, "error": e}),
            None => match p.manual_ban(ip, jail.as_deref().unwrap_or("manual"), for_s, now, force) {
                Ok(d) => {
                    let v = json!({"ok": true, "ip": d.net.addr().to_string(), "prefix": d.net.prefix_len(), "ban_for_s": d.ban_for,
                               "narrowed_from": d.narrowed_from, "ports": d.ports.json()});
                    sink.ban(vec![d], std::time::Instant::now());
                    v
                }
                Err(e) => json!({"ok": false, "error": e}),
            },
        },
        Request::Unban { ip, all } => {
            let targets: Vec<IpAddr> = match (ip, all) {
                (Some(ip), false) => vec![ip],
                (None, true) => p.bans().into_iter().map(|b| b.net.addr()).collect(),
                _ => return json!({"ok": false, "error": "give an address or all"}),
            };
            let mut lifted = Vec::new();
            for ip in targets {
                if let Some(net) = p.unban(ip) {
                    sink.unban(net);
                    lifted.push(net.to_string());
                }
            }
            if ip.is_some() && lifted.is_empty() {
                return json!({"ok": false, "error": format!("{} is not banned", ip.unwrap_or(IpAddr::from([0, 0, 0, 0])))});
            }
            json!({"ok": true, "unbanned": lifted})
        }
    }
}

/// Why `jail` names no jail of the running pipeline (`manual` and `recidive` are names of bans
/// too), if it does not.
fn unknown_jail(p: &Pipeline, jail: &str) -> Option<String> {
    let names = p.jail_names();
    let known = names.iter().map(String::as_str).chain(crate::policy::BAN_NAMES).any(|n| n == jail);
    (!known).then(|| {
        format!(
            "no jail {jail:?} (jails: {}, and {})",
            names.join(", "),
            crate::policy::BAN_NAMES.join(", ")
        )
    })
}

/// Binds the control socket, mode 0600 (root only, as the daemon runs). A stale socket at the
/// path is replaced; anything else there is an error.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::input::net::prepare_socket_path(path)?;
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves control connections until `stop`: each request goes to the pipeline thread in the
/// line queue (a reload is compiled first); `status` is completed with the inputs' counters.
pub async fn serve(
    listener: tokio::net::UnixListener,
    queue: Queue,
    reloader: Option<Reloader>,
    inputs: Vec<(String, std::sync::Arc<InputStats>)>,
    fleet: Option<std::sync::Arc<crate::fleet::FleetStats>>,
    stop: CancellationToken,
) {
    let inputs = std::sync::Arc::new(inputs);
    let clients = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = clients.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
        };
        let (queue, reloader, inputs, fleet, stop) = (queue.clone(), reloader.clone(), inputs.clone(), fleet.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (r, mut w) = stream.into_split();
            let mut lines = tokio_util::codec::FramedRead::new(r, tokio_util::codec::LinesCodec::new_with_max_length(MAX_REQUEST));
            loop {
                let line = tokio::select! {
                    _ = stop.cancelled() => return,
                    l = futures_util::StreamExt::next(&mut lines) => l,
                };
                let (reply, last) = match line {
                    None => return,
                    Some(Err(e)) => (json!({"ok": false, "error": format!("bad request: {e}")}), true),
                    Some(Ok(line)) => (answer(&line, &queue, reloader.as_ref(), &inputs, fleet.as_deref()).await, false),
                };
                if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() || last {
                    return;
                }
            }
        });
    }
}

/// The answer to one request line.
async fn answer(
    line: &str,
    queue: &Queue,
    reloader: Option<&Reloader>,
    inputs: &[(String, std::sync::Arc<InputStats>)],
    fleet: Option<&crate::fleet::FleetStats>,
) -> Value {
    let req = match serde_json::from_str::<Request>(line) {
        Err(e) => return json!({"ok": false, "error": format!("bad request: {e}")}),
        Ok(req) => req,
    };
    if req == Request::Reload {
        return reload(reloader, queue).await;
    }
    let status = req == Request::Status;
    let (rtx, rrx) = oneshot::channel();
    if queue
        .tx
        .send(Msg::Control(Box::new(move |p, sink, now| handle(p, sink, req, now)), rtx))
        .is_err()
    {
        return json!({"ok": false, "error": "shutting down"});
    }
    let mut v = rrx.await.unwrap_or_else(|_| json!({"ok": false, "error": "shutting down"}));
    if status {
        v["inputs"] = inputs.iter().map(|(n, s)| json!({"name": n, "summary": s.summary()})).collect();
        if let Some(f) = fleet {
            v["fleet"] = f.summary();
        }
    }
    v
}

/// Sends one request to the daemon at `socket` and returns its answer.
pub fn request(socket: &Path, req: &Request) -> std::io::Result<Value> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.write_all(format!("{}\n", serde_json::to_string(req)?).as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}
