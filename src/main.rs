//! The `mailpipe` command line: only argument handling and exit codes; the work is in the library.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mailpipe::clock::{Mode, wall_clock};
use mailpipe::config::{Config, ConfigError};
use mailpipe::daemon::DaemonError;
use mailpipe::pipeline::Pipeline;
use mailpipe::replay;

/// Ban mail-server brute-forcers from a stream of log lines.
///
/// Exit codes: 0 ok, 1 runtime error, 2 usage or pipeline-file error.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Least important log lines shown: error, warn, info (default), debug, trace. RUST_LOG,
    /// when set, decides instead.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read the pipeline's inputs until EOF or SIGTERM/SIGINT, apply decisions, exit 0.
    Run {
        /// Pipeline file (default: the built-in pipelines/mail.ron).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Print decisions as JSON lines instead of applying them (whatever the pipeline's sink).
        #[arg(long)]
        dry_run: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (overrides the pipeline's `metrics`).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
    },
    /// Replay log files at full speed and report matches, misses and bans (like fail2ban-regex).
    Test {
        /// Pipeline file (default: the built-in pipelines/mail.ron).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Print one JSON line per match.
        #[arg(long)]
        matches: bool,
        /// Print one JSON line per ban decision.
        #[arg(long)]
        decisions: bool,
        /// Print one JSON line per unmatched line that contains an address.
        #[arg(long)]
        missed: bool,
        /// Reference time for year-less dates, RFC 3339 (default: now).
        #[arg(long, value_parser = parse_time)]
        now: Option<i64>,
        /// Longest line in bytes, up to 16 MiB; longer lines are cut and counted (default: the
        /// pipeline's).
        #[arg(long, value_parser = max_line)]
        max_line: Option<usize>,
        /// Log files; `-` is standard input.
        #[arg(required = true)]
        logs: Vec<String>,
    },
    /// Validate a pipeline file: exit 0, or print `file:line:column: reason` and exit 2.
    Check {
        /// Pipeline file (default: the built-in pipelines/mail.ron).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Print the prefilter's literals, one per line (e.g. for `grep -F -f`).
        #[arg(long)]
        literals: bool,
        /// Print the effective pipeline, every include and override applied, as one file.
        #[arg(long)]
        print: bool,
    },
    /// Create the sink's sets and firewall rules (idempotent) and exit: for boot, before the
    /// daemon starts (contrib/systemd/mailpipe-firewall.service).
    Firewall {
        /// Pipeline file (default: the built-in pipelines/mail.ron).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// A live view of the running daemon: rates per jail, bans (u: unban the selected one),
    /// most active attackers, most targeted accounts, fleet link; q quits.
    Top {
        /// The daemon's control socket.
        /// (default: the system configuration's `control`, else /run/mailpipe/control.sock)
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Counters of the running daemon: per jail (failing, banned, total), inputs, sink.
    Status {
        /// The daemon's control socket.
        /// (default: the system configuration's `control`, else /run/mailpipe/control.sock)
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Active bans of the running daemon.
    List {
        /// The daemon's control socket.
        /// (default: the system configuration's `control`, else /run/mailpipe/control.sock)
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Only this jail.
        #[arg(long)]
        jail: Option<String>,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Ban an address now. Addresses in policy.ignore are refused unless --force.
    Ban {
        /// The address (IPv6 is banned as its network).
        ip: std::net::IpAddr,
        /// Jail name to record; a configured jail's name also bans on its ports only (default: every port).
        #[arg(long)]
        jail: Option<String>,
        /// How long (`90m`, `2h`, `1d`, `permanent`; default: the policy's bantime).
        #[arg(long = "for", value_parser = parse_duration)]
        for_s: Option<u64>,
        /// Ban even an address in policy.ignore.
        #[arg(long)]
        force: bool,
        /// The daemon's control socket.
        /// (default: the system configuration's `control`, else /run/mailpipe/control.sock)
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Re-read the daemon's pipeline file (as SIGHUP does), keeping bans, counts and counters;
    /// a bad file is refused and the running pipeline stays.
    Reload {
        /// The daemon's control socket.
        /// (default: the system configuration's `control`, else /run/mailpipe/control.sock)
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Lift a ban, or every ban with --all.
    Unban {
        /// The address.
        #[arg(required_unless_present = "all")]
        ip: Option<std::net::IpAddr>,
        /// Lift every ban.
        #[arg(long, conflicts_with = "ip")]
        all: bool,
        /// The daemon's control socket.
        /// (default: the system configuration's `control`, else /run/mailpipe/control.sock)
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Write a pipeline for another tool's configuration (stdout; notes on stderr).
    #[command(subcommand)]
    Import(Import),
    /// Write the manual pages (man1/mailpipe*.1) and shell completions (bash, zsh, fish) into DIR,
    /// from these very definitions (for packages).
    #[command(hide = true)]
    Docs {
        /// Where they go.
        dir: PathBuf,
    },
    /// Show what each stage makes of one line.
    Explain {
        /// Pipeline file (default: the built-in pipelines/mail.ron).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Reference time for a year-less date, RFC 3339 (default: now).
        #[arg(long, value_parser = parse_time)]
        now: Option<i64>,
        /// The log line.
        line: String,
    },
}

/// `--max-line`: 1 to `MAX_LINE_LIMIT` bytes.
fn max_line(s: &str) -> Result<usize, String> {
    let limit = mailpipe::parse::MAX_LINE_LIMIT;
    match s.parse::<usize>() {
        Ok(n) if (1..=limit).contains(&n) => Ok(n),
        _ => Err(format!("a number of bytes from 1 to {limit}")),
    }
}

fn parse_time(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|e| format!("{e} (write e.g. 2005-08-14T10:00:00+02:00)"))
}

fn parse_duration(s: &str) -> Result<u64, String> {
    if s == "permanent" {
        return Ok(mailpipe::config::Dur::PERMANENT.secs());
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{e} (write e.g. 90m, 2h, 1d)"))
}

/// Sends a control request; an answer with `ok: false` is an error (exit 1).
fn ask(socket: &Option<PathBuf>, req: &mailpipe::control::Request) -> anyhow::Result<serde_json::Value> {
    let socket = &socket_of(socket.clone());
    let v = mailpipe::control::request(socket, req).with_context(|| format!("cannot reach the daemon at {}", socket.display()))?;
    if v["ok"] != true {
        anyhow::bail!("{}", v["error"].as_str().unwrap_or("refused"));
    }
    Ok(v)
}

/// A failure and the exit code it earns.
enum Failure {
    Config(ConfigError),
    /// Input refused for a reason that says where (exit 2, like a bad pipeline file).
    Refused(String),
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn signals() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut t) => {
                t.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn config_name(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None if system_dir().join("mailpipe.ron").exists() => system_dir().join("mailpipe.ron").display().to_string(),
        None => "<builtin>/mail.ron".into(),
    }
}

/// Where the system layout lives (`MAILPIPE_CONFIG_DIR` overrides it, for tests and packages).
fn system_dir() -> PathBuf {
    std::env::var_os("MAILPIPE_CONFIG_DIR").map_or_else(|| PathBuf::from("/etc/mailpipe"), PathBuf::from)
}

/// `--config FILE`; else the system layout (/etc/mailpipe/mailpipe.ron and conf.d); else the
/// built-in mail.ron.
fn load(path: &Option<PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::load_system(&system_dir())?.unwrap_or_else(Config::builtin)),
    }
}

/// `--socket PATH`; else the control socket the system configuration names; else the default.
fn socket_of(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| {
            Config::load_system(&system_dir())
                .ok()
                .flatten()
                .and_then(|c| c.control)
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(mailpipe::control::DEFAULT_SOCKET))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = mailpipe::logging::init(cli.log_level.as_deref()) {
        eprintln!("mailpipe: {e}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(Failure::Refused(e)) => {
            eprintln!("mailpipe: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            // A closed stdout (`| head`) is not an error worth a message.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("mailpipe: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run { config, dry_run, metrics } => cmd_run(config, dry_run, metrics),
        test @ Command::Test { .. } => cmd_test(test),
        Command::Check { config, literals, print } => cmd_check(config, literals, print),
        Command::Firewall { config } => cmd_firewall(config),
        Command::Status { socket, json } => cmd_status(socket, json),
        Command::Top { socket } => mailpipe::top::run(&socket_of(socket)).context("top").map_err(Failure::Runtime),
        Command::List { socket, jail, json } => cmd_list(socket, jail, json),
        Command::Ban {
            ip,
            jail,
            for_s,
            force,
            socket,
        } => cmd_ban(ip, jail, for_s, force, socket),
        Command::Reload { socket } => cmd_reload(socket),
        Command::Unban { ip, all, socket } => cmd_unban(ip, all, socket),
        Command::Explain { config, now, line } => cmd_explain(config, now, line),
        Command::Import(Import::Fail2ban { dir }) => cmd_import_fail2ban(dir),
        Command::Docs { dir } => cmd_docs(&dir),
    }
}

fn cmd_docs(dir: &std::path::Path) -> Result<(), Failure> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let man = dir.join("man1");
    std::fs::create_dir_all(&man).context("creating the man directory")?;
    clap_mangen::generate_to(cmd.clone(), &man).context("writing man pages")?;
    for (shell, name) in [
        (clap_complete::Shell::Bash, "bash"),
        (clap_complete::Shell::Zsh, "zsh"),
        (clap_complete::Shell::Fish, "fish"),
    ] {
        let out = dir.join("completions").join(name);
        std::fs::create_dir_all(&out).context("creating the completions directory")?;
        clap_complete::generate_to(shell, &mut cmd.clone(), "mailpipe", &out).context("writing completions")?;
    }
    Ok(())
}

/// What `mailpipe import` reads.
#[derive(Subcommand)]
enum Import {
    /// fail2ban's jail.conf, jail.local, jail.d and filter.d: the enabled jails as a pipeline.
    /// What cannot be carried over is said, with file:line, as comments at the top and on stderr.
    Fail2ban {
        /// The configuration directory (default: /etc/fail2ban).
        dir: Option<PathBuf>,
    },
}

fn cmd_import_fail2ban(dir: Option<PathBuf>) -> Result<(), Failure> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(mailpipe::import::DEFAULT_DIR));
    let import = mailpipe::import::fail2ban(&dir).map_err(|e| match e {
        mailpipe::import::ImportError::Output(_) => Failure::Runtime(e.into()),
        e => Failure::Refused(e.to_string()),
    })?;
    for note in &import.notes {
        eprintln!("mailpipe: {}/{note}", dir.display());
    }
    print!("{}", import.pipeline);
    Ok(())
}

fn cmd_run(config: Option<PathBuf>, dry_run: bool, metrics: Option<String>) -> Result<(), Failure> {
    let mut cfg = load(&config)?;
    if metrics.is_some() {
        cfg.metrics.clone_from(&metrics);
    }
    let pipeline = Pipeline::new(&cfg.stages()?, Mode::Live)?;
    // `mailpipe reload` and SIGHUP read the same files again (the built-in default has
    // nothing to re-read).
    let system = config.is_none() && Config::load_system(&system_dir())?.is_some();
    if config.is_none() && !system {
        tracing::info!(
            "no --config and no {}/mailpipe.ron: running the built-in mail.ron",
            system_dir().display()
        );
    }
    let reload = (config.is_some() || system).then(|| -> mailpipe::daemon::Reloader {
        let (path, running, flag) = (config.clone(), cfg.clone(), metrics.clone());
        std::sync::Arc::new(move || {
            // The same source as at start: a layout that has gone is refused, never swapped for
            // the built-in pipeline.
            let mut next = match &path {
                Some(p) => Config::load(p).map_err(|e| e.to_string())?,
                None => Config::load_system(&system_dir())
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{}/mailpipe.ron is gone: reload refused", system_dir().display()))?,
            };
            if flag.is_some() {
                next.metrics.clone_from(&flag);
            }
            let not_applied = running.restart_needed(&next);
            mailpipe::pipeline::build_within(
                next.stages().map_err(|e| e.to_string())?,
                Mode::Live,
                mailpipe::pipeline::COMPILE_TIMEOUT,
            )
            .map(|p| (p, not_applied))
            .map_err(|e| e.to_string())
        })
    });
    let report = mailpipe::daemon::run(&cfg, dry_run, pipeline, reload, std::io::stdout(), signals()).map_err(|e| match e {
        DaemonError::Config { .. } => Failure::Config(ConfigError {
            file: config_name(&config),
            line: 1,
            col: 1,
            reason: e.to_string(),
        }),
        e => Failure::Runtime(e.into()),
    })?;
    for (name, stats) in report {
        tracing::info!("input {name}: {}", stats.summary());
    }
    Ok(())
}

fn cmd_test(test: Command) -> Result<(), Failure> {
    let Command::Test {
        config,
        json,
        matches,
        decisions,
        missed,
        now,
        max_line,
        logs,
    } = test
    else {
        unreachable!("called for `test` only")
    };
    let cfg = load(&config)?;
    let mut pipeline = Pipeline::new(&cfg.stages()?, Mode::Replay)?;
    let mut sources = Vec::new();
    for name in logs {
        let (reader, len): (Box<dyn Read + Send>, _) = if name == "-" {
            (Box::new(std::io::stdin()), None)
        } else {
            let f = std::fs::File::open(&name).with_context(|| format!("cannot open {name}"))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        };
        sources.push(replay::Source { name, reader, len });
    }
    let opts = replay::Options {
        json,
        matches,
        decisions,
        missed,
        max_line: max_line.unwrap_or(cfg.parse.max_line),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    replay::run(&mut pipeline, sources, now.unwrap_or_else(wall_clock), opts, &mut out).context("test")?;
    out.flush().context("writing output")?;
    Ok(())
}

fn cmd_check(config: Option<PathBuf>, literals: bool, print: bool) -> Result<(), Failure> {
    let cfg = load(&config)?;
    let pipeline = mailpipe::pipeline::build_within(cfg.stages()?, Mode::Live, mailpipe::pipeline::COMPILE_TIMEOUT)?;
    if print {
        print!("{}", cfg.effective_text());
        return Ok(());
    }
    if literals {
        for l in pipeline.literal_texts() {
            println!("{l}");
        }
        return Ok(());
    }
    // The fleet's url, node name and password file are checked as `run` would.
    let fleet = cfg
        .fleet
        .as_ref()
        .map(mailpipe::fleet::Fleet::new)
        .transpose()
        .map_err(anyhow::Error::from)?;
    let rules: usize = cfg.jails.iter().map(|j| j.rules.len() + j.ignore.len()).sum();
    let literals = pipeline.literal_texts().len();
    println!(
        "ok: {} jails, {rules} rules, {literals} prefilter literals ({})",
        cfg.jails.len(),
        cfg.jails.iter().map(|j| j.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    if let Some(f) = fleet {
        println!("fleet: node {:?}", f.node());
    }
    for (jail, rule, ignore) in pipeline.unliteral_rules() {
        let what = if ignore { "ignore rule" } else { "rule" };
        println!("note: jail {jail} {what} {rule} has no literal the prefilter can use: every line is parsed for it");
    }
    for (jail, rule, ignore) in pipeline.heavy_rules() {
        let what = if ignore { "ignore rule" } else { "rule" };
        println!(
            "warning: jail {jail} {what} {rule}: its automaton is very large, so on long lines it can run thousands of times slower than the others; avoid `.*` or `.{{n}}` before the text it looks for (e.g. `[^\\[]*\\[<HOST>\\]`)"
        );
    }
    Ok(())
}

fn cmd_firewall(config: Option<PathBuf>) -> Result<(), Failure> {
    let cfg = load(&config)?;
    let scopes = cfg.jail_ports().map_err(|e| anyhow::anyhow!("{e}"))?;
    for sink in &cfg.sinks {
        mailpipe::sink::open(sink, None::<std::io::Sink>, &scopes).context("setting up the firewall")?;
        println!("ok: {sink:?}");
    }
    Ok(())
}

fn cmd_status(socket: Option<PathBuf>, json: bool) -> Result<(), Failure> {
    let v = ask(&socket, &mailpipe::control::Request::Status)?;
    if json {
        println!("{v}");
        return Ok(());
    }
    println!(
        "lines {}, matched {}, bans {} ({} active), {} addresses counting",
        v["lines"], v["matched"], v["bans"], v["currently_banned"], v["tracked"]
    );
    for j in v["jails"].as_array().into_iter().flatten() {
        println!(
            "  {:<22} failing {:>6}  banned {:>6}  total banned {:>8}",
            j["name"].as_str().unwrap_or(""),
            j["currently_failing"],
            j["currently_banned"],
            j["total_banned"]
        );
    }
    let targeted: Vec<String> = v["targeted"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| format!("{} ({})", t["user"], t["failures"]))
        .collect();
    if !targeted.is_empty() {
        println!("  accounts most failed on: {}", targeted.join(", "));
    }
    for i in v["inputs"].as_array().into_iter().flatten() {
        println!(
            "  input {}: {}",
            i["name"].as_str().unwrap_or(""),
            i["summary"].as_str().unwrap_or("")
        );
    }
    for sink in v["sinks"].as_array().into_iter().flatten() {
        let latency = match (sink["latency_us_p50"].as_u64(), sink["latency_us_p99"].as_u64()) {
            (Some(p50), Some(p99)) => format!(", latency p50 {p50} µs, p99 {p99} µs"),
            _ => String::new(),
        };
        println!(
            "  sink {}: {} applied, {} errors, {} given up, {} waits{latency}",
            sink["name"].as_str().unwrap_or(""),
            sink["applied"],
            sink["errors"],
            sink["given_up"],
            sink["waited"]
        );
    }
    if let Some(f) = v["fleet"].as_object() {
        let link = if f.get("connected") == Some(&serde_json::Value::Bool(true)) {
            "connected"
        } else {
            "not connected"
        };
        let error = f
            .get("last_error")
            .and_then(|e| e.as_str())
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        println!(
            "  fleet: {link}{error}, events in {} out {}, waiting {}, lag {} ms, refused {}",
            v["fleet"]["events_in"],
            v["fleet"]["events_out"],
            v["fleet"]["waiting"],
            v["fleet"]["lag_ms"],
            v["fleet"]["malformed"].as_u64().unwrap_or(0) + v["fleet"]["foreign"].as_u64().unwrap_or(0)
        );
    }
    if let Some(state) = v["state"].as_object() {
        let error = state
            .get("error")
            .and_then(|e| e.as_str())
            .map(|e| format!(", failing: {e}"))
            .unwrap_or_default();
        println!("  state file: {} changes waiting{error}", state.get("pending").unwrap_or(&0.into()));
    }
    Ok(())
}

fn cmd_list(socket: Option<PathBuf>, jail: Option<String>, json: bool) -> Result<(), Failure> {
    let v = ask(&socket, &mailpipe::control::Request::List { jail })?;
    if json {
        println!("{v}");
        return Ok(());
    }
    for b in v["bans"].as_array().into_iter().flatten() {
        let net = format!("{}/{}", b["ip"].as_str().unwrap_or(""), b["prefix"]);
        let ports = match b["ports"].as_array().map(Vec::as_slice) {
            Some([]) | None => "every port".to_string(),
            Some(p) => p
                .iter()
                .map(|v| v.to_string().trim_matches('"').to_string())
                .collect::<Vec<_>>()
                .join(","),
        };
        let until = if b["permanent"] == true {
            "permanent".to_string()
        } else {
            format!("until {} ({} s left)", b["until"].as_str().unwrap_or(""), b["left_s"])
        };
        println!("{net:<24} {:<20} {until} on {ports}", b["jail"].as_str().unwrap_or(""));
    }
    Ok(())
}

fn cmd_ban(ip: std::net::IpAddr, jail: Option<String>, for_s: Option<u64>, force: bool, socket: Option<PathBuf>) -> Result<(), Failure> {
    let v = ask(&socket, &mailpipe::control::Request::Ban { ip, jail, for_s, force })?;
    println!("banned {}/{} for {} s", v["ip"].as_str().unwrap_or(""), v["prefix"], v["ban_for_s"]);
    Ok(())
}

fn cmd_reload(socket: Option<PathBuf>) -> Result<(), Failure> {
    let v = ask(&socket, &mailpipe::control::Request::Reload)?;
    println!("reloaded: jails {}", v["jails"]);
    if let Some(n) = v["not_applied"].as_array() {
        let names: Vec<&str> = n.iter().filter_map(|x| x.as_str()).collect();
        println!("changed, but applied only by a restart: {}", names.join(", "));
    }
    Ok(())
}

fn cmd_unban(ip: Option<std::net::IpAddr>, all: bool, socket: Option<PathBuf>) -> Result<(), Failure> {
    let v = ask(&socket, &mailpipe::control::Request::Unban { ip, all })?;
    for u in v["unbanned"].as_array().into_iter().flatten() {
        println!("unbanned {}", u.as_str().unwrap_or(""));
    }
    Ok(())
}

fn cmd_explain(config: Option<PathBuf>, now: Option<i64>, line: String) -> Result<(), Failure> {
    let cfg = load(&config)?;
    let mut pipeline = Pipeline::new(&cfg.stages()?, Mode::Live)?;
    print!("{}", pipeline.explain(line.as_bytes(), now.unwrap_or_else(wall_clock)));
    Ok(())
}
