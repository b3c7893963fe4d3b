//! Pipeline files: RON, one struct per stage, composed here.
//!
//! Each stage owns its config type; this module only reads files, follows `include`s, merges,
//! and turns every problem into `file:line:column: reason`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::fleet::FleetConfig;
use crate::input::InputConfig;
use crate::matcher::MatcherConfig;
use crate::parse::ParseConfig;
use crate::policy::PolicyConfig;
use crate::ports::Ports;
pub use crate::primitives::{ConfigError, Dur, Jail, Origin, PortSpec, jail_needles, regex_needles};
use crate::queue::DaemonConfig;
use crate::sink::SinkConfig;
use crate::window::WindowConfig;

/// Prefix of the names of the pipeline files compiled into the binary.
const BUILTIN_DIR: &str = "<builtin>/";

/// The shipped pipeline files, compiled in: `mail.ron` is the default, and includes between
/// them resolve here, so the binary needs no files on disk.
pub const BUILTIN: &[(&str, &str)] = &[
    ("mail.ron", include_str!("../pipelines/mail.ron")),
    ("postfix.ron", include_str!("../pipelines/postfix.ron")),
    ("dovecot.ron", include_str!("../pipelines/dovecot.ron")),
    ("qmail.ron", include_str!("../pipelines/qmail.ron")),
    ("roundcube.ron", include_str!("../pipelines/roundcube.ron")),
    ("exim.ron", include_str!("../pipelines/exim.ron")),
    ("sendmail.ron", include_str!("../pipelines/sendmail.ron")),
    ("courier.ron", include_str!("../pipelines/courier.ron")),
    ("imap.ron", include_str!("../pipelines/imap.ron")),
    ("webmail.ron", include_str!("../pipelines/webmail.ron")),
    ("others.ron", include_str!("../pipelines/others.ron")),
    ("sshd.ron", include_str!("../pipelines/sshd.ron")),
    ("all.ron", include_str!("../pipelines/all.ron")),
];

/// An included pipeline file, optionally only some of its jails, with some of their settings
/// changed.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Include {
    /// Path, relative to the including file; a shipped file's name (`postfix.ron`) not found
    /// there is the built-in copy.
    pub file: String,
    /// Jails to take; empty: all of them.
    #[serde(default)]
    pub jails: Vec<String>,
    /// Settings changed per included jail, by name: the rules stay the shipped ones.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, JailSet>,
}

/// What an include may change in a jail it takes (every field optional).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JailSet {
    /// `false` drops the jail.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Replaces the program globs.
    #[serde(default)]
    pub programs: Option<Vec<String>>,
    /// Replaces maxretry.
    #[serde(default)]
    pub maxretry: Option<u32>,
    /// Replaces findtime.
    #[serde(default)]
    pub findtime: Option<Dur>,
    /// Replaces the jail's bantime.
    #[serde(default)]
    pub bantime: Option<Dur>,
    /// Replaces the ports its bans drop.
    #[serde(default)]
    pub ports: Option<Vec<PortSpec>>,
    /// Replaces its success rules (`[]`: successes change nothing).
    #[serde(default)]
    pub success: Option<Vec<String>>,
    /// Replaces the threshold of trusted (address, account) pairs.
    #[serde(default)]
    pub trusted_maxretry: Option<u32>,
}

impl JailSet {
    fn apply(&self, j: &mut Jail) {
        if let Some(v) = &self.programs {
            j.programs.clone_from(v);
        }
        if let Some(v) = self.maxretry {
            j.maxretry = v;
        }
        if let Some(v) = self.findtime {
            j.findtime = v;
        }
        if let Some(v) = self.bantime {
            j.bantime = Some(v);
        }
        if let Some(v) = &self.ports {
            j.ports = Some(v.clone());
        }
        if let Some(v) = &self.success {
            j.success.clone_from(v);
        }
        if let Some(v) = self.trusted_maxretry {
            j.trusted_maxretry = Some(v);
        }
    }
}

/// A pipeline file as written.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, rename = "Pipeline")]
pub struct PipelineFile {
    /// Other pipeline files whose jails (and unset settings) this one takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<Include>,
    /// Settings changed in jails loaded anywhere (by this file, its includes, or a file
    /// loaded before it in the system layout), by name: what `conf.d` files use.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub set: std::collections::BTreeMap<String, JailSet>,
    /// Lists this file replaces rather than adds to (`"policy.ignore"`,
    /// `"policy.trusted_proxies"`): by default a file's list adds to its includes'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace: Vec<String>,
    /// Where lines come from.
    #[serde(default)]
    pub inputs: Option<Vec<InputConfig>>,
    /// Where decisions go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkConfig>,
    /// More places decisions go (every sink gets every decision).
    #[serde(default)]
    pub sinks: Option<Vec<SinkConfig>>,
    /// The control socket (`mailpipe status`, `ban`, `unban`); none: no control.
    #[serde(default)]
    pub control: Option<String>,
    /// The state file (active bans, ban history); none: state lives in memory only.
    #[serde(default)]
    pub state: Option<String>,
    /// `ADDR:PORT` serving Prometheus metrics at `/metrics`; none: no metrics.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Daemon settings (the input queue, draining at shutdown).
    #[serde(default)]
    pub daemon: Option<DaemonConfig>,
    /// The fleet this node shares bans and failures with; none: this node alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetConfig>,
    /// Parse settings.
    #[serde(default)]
    pub parse: Option<ParseConfig>,
    /// Matcher engine settings.
    #[serde(default)]
    pub matcher: Option<MatcherConfig>,
    /// Window settings.
    #[serde(default)]
    pub window: Option<WindowConfig>,
    /// Ban policy.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// The jails.
    #[serde(default)]
    pub jails: Vec<Jail>,
}

/// A complete pipeline: every setting resolved, includes merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where lines come from.
    pub inputs: Vec<InputConfig>,
    /// Where decisions go: `sink` then `sinks`, or a dry run when neither is set.
    pub sinks: Vec<SinkConfig>,
    /// The control socket path, if any.
    pub control: Option<String>,
    /// The state file, if any.
    pub state: Option<String>,
    /// The metrics listener, if any.
    pub metrics: Option<String>,
    /// Daemon settings.
    pub daemon: DaemonConfig,
    /// The fleet, if any.
    pub fleet: Option<FleetConfig>,
    /// Parse settings.
    pub parse: ParseConfig,
    /// Matcher engine settings.
    pub matcher: MatcherConfig,
    /// Window settings.
    pub window: WindowConfig,
    /// Ban policy.
    pub policy: PolicyConfig,
    /// All jails, includes first.
    pub jails: Vec<Jail>,
    /// Where each jail was defined, for error positions.
    pub origins: Vec<Origin>,
    /// Every file read, most important first (the top file, then its includes in order).
    pub files: Vec<Origin>,
}

impl Config {
    /// The pipeline as one file, every include and override applied: what `check --print`
    /// shows, and a file that loads as the same pipeline.
    pub fn effective_text(&self) -> String {
        let file = PipelineFile {
            inputs: Some(self.inputs.clone()),
            sinks: Some(self.sinks.clone()),
            control: self.control.clone(),
            state: self.state.clone(),
            metrics: self.metrics.clone(),
            daemon: Some(self.daemon),
            fleet: self.fleet.clone(),
            parse: Some(self.parse.clone()),
            matcher: Some(self.matcher),
            window: Some(self.window),
            policy: Some(self.policy.clone()),
            jails: self.jails.clone(),
            ..PipelineFile::default()
        };
        let pretty = ron::ser::PrettyConfig::new()
            .struct_names(false)
            .escape_strings(false)
            .extensions(ron::extensions::Extensions::IMPLICIT_SOME);
        let body = ron::ser::to_string_pretty(&file, pretty).unwrap_or_else(|e| format!("/* cannot print: {e} */"));
        format!("// The effective pipeline (mailpipe check --print): every include and override applied.\n{body}\n")
    }

    /// The settings `next` changes that a reload cannot apply (the daemon's edges: a restart
    /// does).
    pub fn restart_needed(&self, next: &Config) -> Vec<String> {
        let mut v = Vec::new();
        let mut check = |name: &str, same: bool| {
            if !same {
                v.push(name.to_string());
            }
        };
        check("inputs", self.inputs == next.inputs);
        check("sinks", self.sinks == next.sinks);
        check("control", self.control == next.control);
        check("state", self.state == next.state);
        check("metrics", self.metrics == next.metrics);
        check("daemon", self.daemon == next.daemon);
        check("fleet", self.fleet == next.fleet);
        check("parse.max_line", self.parse.max_line == next.parse.max_line);
        v
    }

    /// The stages' part, to compile a pipeline from.
    pub fn stages(&self) -> Result<crate::pipeline::Stages, ConfigError> {
        Ok(crate::pipeline::Stages {
            jails: self.jails.clone(),
            origins: self.origins.clone(),
            ports: self.jail_ports()?,
            parse: self.parse.clone(),
            matcher: self.matcher,
            window: self.window,
            policy: self.policy.clone(),
            files: self.files.clone(),
        })
    }

    /// Each jail's port scope, resolved (service names through `/etc/services` where this
    /// program does not know them).
    pub fn jail_ports(&self) -> Result<Vec<Ports>, ConfigError> {
        self.jails
            .iter()
            .zip(&self.origins)
            .map(|(j, origin)| match &j.ports {
                None => Ok(Ports::mail()),
                Some(specs) => Ports::resolve(specs, crate::ports::etc_services)
                    .map_err(|e| origin.error_at(&[&jail_needles(j)], format!("jail {}: ports: {e}", j.name))),
            })
            .collect()
    }

    /// Loads a pipeline file and its includes.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_file(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            reason: format!("cannot read: {e}"),
        })?;
        Config::from_text(&path.display().to_string(), &text, path.parent().unwrap_or(Path::new(".")))
    }

    /// The built-in default pipeline (`pipelines/mail.ron`).
    pub fn builtin() -> Config {
        Config::builtin_named("mail.ron").expect("the built-in pipeline is valid")
    }

    /// A pipeline file compiled into the binary, by file name.
    pub fn builtin_named(file: &str) -> Result<Config, ConfigError> {
        let text = builtin_text(file).ok_or_else(|| ConfigError {
            file: file.into(),
            line: 1,
            col: 1,
            reason: "no such built-in pipeline".into(),
        })?;
        Config::from_text(&format!("{BUILTIN_DIR}{file}"), text, Path::new(BUILTIN_DIR))
    }

    /// The system layout: `DIR/mailpipe.ron`, then every `DIR/conf.d/*.ron` in name order, each
    /// later file over the earlier ones (as sshd_config.d and fail2ban's jail.d work). `None`
    /// when `DIR/mailpipe.ron` does not exist.
    pub fn load_system(dir: &Path) -> Result<Option<Config>, ConfigError> {
        let main = dir.join("mailpipe.ron");
        match std::fs::metadata(&main) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // Unreadable is not absent: falling back to the built-in pipeline would stop banning.
            Err(e) => {
                return Err(ConfigError {
                    file: main.display().to_string(),
                    line: 1,
                    col: 1,
                    reason: format!("cannot read it: {e}"),
                });
            }
            Ok(_) => {}
        }
        let mut parts: Vec<String> = match std::fs::read_dir(dir.join("conf.d")) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ron") && !n.starts_with('.'))
                .map(|n| format!("conf.d/{n}"))
                .collect(),
            Err(_) => Vec::new(),
        };
        parts.sort();
        parts.reverse();
        parts.push("mailpipe.ron".into());
        // The first include to set a setting wins: the last conf.d file first, mailpipe.ron last.
        let text = format!(
            "Pipeline(include: [{}])",
            parts.iter().map(|p| format!("(file: {p:?})")).collect::<Vec<_>>().join(", ")
        );
        let name = format!("{}/mailpipe.ron and conf.d", dir.display());
        Config::from_text(&name, &text, dir).map(Some)
    }

    /// Loads pipeline text named `name`; includes are relative to `dir`.
    pub fn from_text(name: &str, text: &str, dir: &Path) -> Result<Config, ConfigError> {
        let mut acc = Acc::default();
        acc.add(name, text, dir, &[], &mut Vec::new())?;
        let mut seen = std::collections::HashMap::new();
        for (jail, origin) in acc.jails.iter().zip(&acc.origins) {
            if let Some(first) = seen.insert(jail.name.clone(), origin.file.clone()) {
                return Err(origin.error_at(
                    &[&jail_needles(jail)],
                    format!("duplicate jail name {:?} (also defined in {first})", jail.name),
                ));
            }
        }
        acc.apply_sets()?;
        let daemon = acc.merged("daemon", |f| f.daemon.as_ref())?;
        let parse = acc.merged("parse", |f| f.parse.as_ref())?;
        let matcher = acc.merged("matcher", |f| f.matcher.as_ref())?;
        let window = acc.merged("window", |f| f.window.as_ref())?;
        let policy = acc.merged("policy", |f| f.policy.as_ref())?;
        let f = acc.file;
        Ok(Config {
            inputs: f.inputs.unwrap_or_else(|| vec![InputConfig::Stdin]),
            sinks: match (f.sink, f.sinks) {
                (None, None) => vec![SinkConfig::DryRun],
                (one, more) => one.into_iter().chain(more.into_iter().flatten()).collect(),
            },
            control: f.control,
            state: f.state,
            metrics: f.metrics,
            fleet: f.fleet,
            daemon,
            parse,
            matcher,
            window,
            policy,
            jails: acc.jails,
            origins: acc.origins,
            files: acc.layers.into_iter().map(|l| l.origin).collect(),
        })
    }
}

/// The largest pipeline file read.
pub const MAX_FILE: u64 = 1 << 20;

/// A pipeline file's text: a regular file (not a device or a FIFO) of at most `MAX_FILE` bytes.
fn read_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    // A pipeline file names programs the daemon runs (sendmail, whois, journalctl): read as
    // root, one that others may write would hand them root (as sshd's StrictModes refuses).
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mode = meta.permissions().mode();
    let others_write = mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() != 0);
    if root && (others_write || meta.uid() != 0) {
        return Err(format!(
            "owned by uid {} with mode {:o}: read as root, a pipeline file must be root's and writable by no one else (chown root; chmod go-w)",
            meta.uid(),
            mode & 0o7777
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("larger than {} KiB", MAX_FILE >> 10));
    }
    Ok(text)
}

fn builtin_text(file: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == file).map(|(_, t)| *t)
}

/// Includes being merged: the first file to set a setting wins (the including file before its
/// includes, an include before the next).
#[derive(Default)]
struct Acc {
    file: PipelineFile,
    jails: Vec<Jail>,
    origins: Vec<Origin>,
    /// Every file's sections, first (the top file) to last, with the fields each wrote.
    layers: Vec<Layer>,
    /// Include-level `set`s: (the including file's layer, jail, changes).
    sets: Vec<(usize, String, JailSet)>,
}

/// One file's settings, and which fields of each section it wrote.
struct Layer {
    file: PipelineFile,
    written: std::collections::HashMap<String, Vec<String>>,
    origin: Origin,
}

/// Lists that add up from file to file unless one says `replace`.
const ADDING: &[&str] = &["policy.ignore", "policy.trusted_proxies"];

/// The fields each section of `text` writes (`None` when the text cannot be read that way;
/// then a written section counts as writing every field).
fn written_fields(text: &str) -> Option<std::collections::HashMap<String, Vec<String>>> {
    let v: ron::Value = ron::Options::default()
        .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
        .from_str(text)
        .ok()?;
    let ron::Value::Map(top) = v else { return None };
    let mut out = std::collections::HashMap::new();
    for (k, v) in top.iter() {
        let (ron::Value::String(section), mut v) = (k, v) else { continue };
        while let ron::Value::Option(Some(inner)) = v {
            v = inner;
        }
        // `parse: ()` writes no field: it must not override the includes' with defaults.
        let names = match v {
            ron::Value::Map(fields) => fields
                .keys()
                .filter_map(|f| match f {
                    ron::Value::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        out.insert(section.clone(), names);
    }
    Some(out)
}

impl Acc {
    /// Every `set` (an include's, or a file's own for jails loaded anywhere), the least
    /// important file's first so the most important file's win; within a file its includes'
    /// before its own. A jail is dropped when the last word on `enabled` is `false`, so a more
    /// important file can enable again what a less important one disabled.
    fn apply_sets(&mut self) -> Result<(), ConfigError> {
        let mut order: Vec<(usize, u8, &String, &JailSet)> = self.sets.iter().map(|(l, n, s)| (*l, 0, n, s)).collect();
        for (l, layer) in self.layers.iter().enumerate() {
            order.extend(layer.file.set.iter().map(|(n, s)| (l, 1, n, s)));
        }
        order.sort_by_key(|&(l, own, _, _)| (std::cmp::Reverse(l), own));
        let mut enabled = std::collections::HashMap::new();
        for (l, _, name, set) in order {
            let Some(jail) = self.jails.iter_mut().find(|j| j.name == *name) else {
                let names: Vec<&str> = self.jails.iter().map(|j| j.name.as_str()).collect();
                return Err(self.layers[l].origin.error_at(
                    &[&format!("\"{name}\"")],
                    format!("set: no jail {name:?} is loaded (jails: {})", names.join(", ")),
                ));
            };
            set.apply(jail);
            if let Some(on) = set.enabled {
                enabled.insert(name.clone(), on);
            }
        }
        let keep: Vec<bool> = self.jails.iter().map(|j| enabled.get(&j.name) != Some(&false)).collect();
        let mut keep_iter = keep.iter();
        self.jails.retain(|_| *keep_iter.next().expect("one per jail"));
        let mut keep_iter = keep.iter();
        self.origins.retain(|_| *keep_iter.next().expect("one per jail"));
        Ok(())
    }

    /// Section `name` of the merged pipeline: its defaults, then each file's written fields from
    /// the last file to the first, lists in `ADDING` added up.
    fn merged<T>(&self, name: &str, get: impl Fn(&PipelineFile) -> Option<&T>) -> Result<T, ConfigError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Default,
    {
        let fail = |origin: &Origin, e: serde_json::Error| origin.error_at(&[name], format!("{name}: {e}"));
        let mut acc = serde_json::to_value(T::default()).expect("settings serialize");
        for layer in self.layers.iter().rev() {
            let Some(section) = get(&layer.file) else { continue };
            let v = serde_json::to_value(section).map_err(|e| fail(&layer.origin, e))?;
            let all: Vec<String>;
            let fields = match layer.written.get(name) {
                Some(f) => f,
                None => {
                    all = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
                    &all
                }
            };
            for field in fields {
                let path = format!("{name}.{field}");
                let new = v[field.as_str()].clone();
                match (&mut acc[field.as_str()], new) {
                    (serde_json::Value::Array(have), serde_json::Value::Array(add))
                        if ADDING.contains(&path.as_str()) && !layer.file.replace.contains(&path) =>
                    {
                        for x in add {
                            if !have.contains(&x) {
                                have.push(x);
                            }
                        }
                    }
                    (slot, new) => *slot = new,
                }
            }
        }
        let origin = self.layers.first().map(|l| &l.origin).expect("the top file is a layer");
        serde_json::from_value(acc).map_err(|e| fail(origin, e))
    }
}

impl Acc {
    fn add(&mut self, name: &str, text: &str, dir: &Path, only: &[String], stack: &mut Vec<PathBuf>) -> Result<(), ConfigError> {
        let origin = Origin {
            file: name.to_string(),
            text: text.into(),
        };
        // Implicit Some: `timezone: "UTC"` rather than `timezone: Some("UTC")`; both are accepted.
        let file: PipelineFile = ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
            .from_str(text)
            .map_err(|e| ConfigError {
                file: name.to_string(),
                line: e.span.start.line,
                col: e.span.start.col,
                reason: e.code.to_string(),
            })?;
        if let Some(bad) = file.replace.iter().find(|r| !ADDING.contains(&r.as_str())) {
            return Err(origin.error_at(
                &[&format!("\"{bad}\"")],
                format!("replace: {bad:?} is not a list that adds up (those are: {})", ADDING.join(", ")),
            ));
        }
        let layer = self.layers.len();
        self.layers.push(Layer {
            file: PipelineFile {
                jails: Vec::new(),
                include: Vec::new(),
                ..file.clone()
            },
            written: written_fields(text).unwrap_or_default(),
            origin: origin.clone(),
        });
        let top = stack.is_empty();
        macro_rules! take {
            ($($f:ident),*) => { $( if self.file.$f.is_none() { self.file.$f = file.$f.clone(); } )* };
        }
        if top {
            self.file = PipelineFile {
                jails: Vec::new(),
                include: Vec::new(),
                ..file.clone()
            };
        } else {
            take!(inputs, control, state, metrics, fleet);
            // `sink` and `sinks` are one setting: a file that names either replaces both.
            if self.file.sink.is_none() && self.file.sinks.is_none() {
                self.file.sink = file.sink.clone();
                self.file.sinks = file.sinks.clone();
            }
        }
        for inc in &file.include {
            // The jails wanted from this include: its own list, narrowed by what the including
            // file was asked for (so a filter holds through nested includes).
            let wanted: Vec<String> = match (only.is_empty(), inc.jails.is_empty()) {
                (true, _) => inc.jails.clone(),
                (false, true) => only.to_vec(),
                (false, false) => inc.jails.iter().filter(|j| only.contains(j)).cloned().collect(),
            };
            if !only.is_empty() && wanted.is_empty() {
                continue;
            }
            let path = dir.join(&inc.file);
            let canon = path.canonicalize().unwrap_or_else(|_| path.clone());
            if stack.contains(&canon) || stack.len() > 16 {
                return Err(origin.error_at(&[&inc.file], format!("include cycle through {:?}", inc.file)));
            }
            // A shipped file's name that is not on disk is the built-in copy, so an
            // /etc/mailpipe file can include `postfix.ron` without the package's pipelines dir.
            let builtin = dir == Path::new(BUILTIN_DIR) || (!path.exists() && builtin_text(&inc.file).is_some());
            let text = if builtin {
                builtin_text(&inc.file)
                    .map(str::to_string)
                    .ok_or_else(|| origin.error_at(&[&inc.file], format!("no built-in pipeline {:?}", inc.file)))?
            } else {
                read_file(&path).map_err(|e| origin.error_at(&[&inc.file], format!("cannot read include {:?}: {e}", path.display())))?
            };
            stack.push(canon);
            let before = self.jails.len();
            let path = if builtin { Path::new(BUILTIN_DIR).join(&inc.file) } else { path };
            let sub = path.parent().unwrap_or(dir).to_path_buf();
            self.add(&path.display().to_string(), &text, &sub, &wanted, stack)?;
            stack.pop();
            let got: Vec<String> = self.jails[before..].iter().map(|j| j.name.clone()).collect();
            // Names this include asked for itself must exist (those of an outer filter may come
            // from elsewhere: the outermost include checks them).
            if let Some(missing) = inc.jails.iter().filter(|j| wanted.contains(j)).find(|j| !got.contains(j)) {
                return Err(origin.error_at(
                    &[&format!("\"{missing}\"")],
                    format!("unknown jail {missing:?} in include {:?} (it has: {})", inc.file, got.join(", ")),
                ));
            }
            for (name, set) in &inc.set {
                if !wanted.is_empty() && !wanted.contains(name) {
                    continue;
                }
                if !got.contains(name) {
                    return Err(origin.error_at(
                        &[&format!("\"{name}\"")],
                        format!("set: no jail {name:?} in include {:?} (it has: {})", inc.file, got.join(", ")),
                    ));
                }
                // Applied once every file is read, in the files' order of importance.
                self.sets.push((layer, name.clone(), set.clone()));
            }
        }
        for jail in file.jails {
            if only.is_empty() || only.contains(&jail.name) {
                self.jails.push(jail);
                self.origins.push(origin.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_file_loads() {
        for (name, _) in BUILTIN {
            let c = Config::builtin_named(name).unwrap();
            assert!(!c.jails.is_empty(), "{name}");
        }
        assert_eq!(Config::builtin_named("all.ron").unwrap().jails.len(), 43);
    }

    #[test]
    fn an_include_filter_holds_through_nested_includes() {
        let c = Config::from_text(
            "x.ron",
            "Pipeline(include: [(file: \"all.ron\", jails: [\"roundcube-auth\"])])",
            Path::new(BUILTIN_DIR),
        )
        .unwrap();
        let names: Vec<_> = c.jails.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["roundcube-auth"]);
        let e = Config::from_text(
            "x.ron",
            "Pipeline(include: [(file: \"all.ron\", jails: [\"nosuch\"])])",
            Path::new(BUILTIN_DIR),
        )
        .unwrap_err();
        assert!(e.reason.contains("unknown jail \"nosuch\""), "{e}");
    }

    #[test]
    fn sections_merge_field_by_field_and_lists_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "base.ron",
            r#"Pipeline(policy: (bantime: "2h", increment: Some((factor: 3.0, maxtime: "1d")), ignore: ["10.0.0.0/8"]), parse: (max_line: 100))"#,
        );
        write(
            "top.ron",
            r#"Pipeline(include: [(file: "base.ron")], policy: (ignore: ["192.0.2.0/24"]))"#,
        );
        let c = Config::load(&dir.path().join("top.ron")).unwrap();
        assert_eq!(c.policy.bantime.secs(), 7200, "kept from the include");
        assert_eq!(c.policy.increment.map(|i| i.factor), Some(3.0), "not dropped by writing ignore");
        assert_eq!(c.policy.ignore, ["127.0.0.0/8", "::1", "10.0.0.0/8", "192.0.2.0/24"]);
        assert_eq!(c.parse.max_line, 100);
        write(
            "top.ron",
            r#"Pipeline(include: [(file: "base.ron")], replace: ["policy.ignore"], policy: (ignore: ["192.0.2.0/24"], increment: None))"#,
        );
        let c = Config::load(&dir.path().join("top.ron")).unwrap();
        assert_eq!(c.policy.ignore, ["192.0.2.0/24"]);
        assert_eq!(c.policy.increment, None, "written None turns it off");
    }

    #[test]
    fn sets_apply_in_the_files_order_of_importance() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        // The less important file disables a jail and sets a number in its own `set`; the more
        // important one re-enables the jail and sets the number through an include's `set`.
        write(
            "low.ron",
            r#"Pipeline(include: [(file: "mail.ron")], set: {"dovecot-auth": (enabled: false), "postfix-sasl": (maxretry: 9)})"#,
        );
        write(
            "top.ron",
            r#"Pipeline(include: [(file: "low.ron", set: {"postfix-sasl": (maxretry: 3)})], set: {"dovecot-auth": (enabled: true)})"#,
        );
        let c = Config::load(&dir.path().join("top.ron")).unwrap();
        let names: Vec<_> = c.jails.iter().map(|j| (j.name.as_str(), j.maxretry)).collect();
        assert_eq!(
            names,
            [
                ("postfix-sasl", 3),
                ("dovecot-auth", 7),
                ("dovecot-spray", 8),
                ("dovecot-stuffing", 10)
            ]
        );
    }

    #[test]
    fn builtin_loads() {
        let c = Config::builtin();
        let names: Vec<_> = c.jails.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["postfix-sasl", "dovecot-auth", "dovecot-spray", "dovecot-stuffing"]);
        assert_eq!(c.policy.bantime.secs(), 3600);
    }

    #[test]
    fn weights_counts_and_successes_read_and_print_back() {
        let text = r#"Pipeline(jails: [
            Jail(name: "a", rules: [r"x <HOST>", (rule: r"y <HOST>", weight: 3)], maxretry: 5, findtime: "1m",
                 count: DistinctUsers, success: [r"ok <USER> <HOST>"], on_success: Reset),
            Jail(name: "b", rules: [r"x <HOST>"], maxretry: 5, findtime: "1m",
                 on_success: (reset: true, trust: "30d"), trusted_maxretry: Some(9)),
        ])"#;
        let c = Config::from_text("w.ron", text, Path::new(".")).unwrap();
        let (a, b) = (&c.jails[0], &c.jails[1]);
        assert_eq!(a.rules.iter().map(|r| r.weight).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(
            (a.count, a.on_success.map(|o| (o.reset, o.trust))),
            (crate::primitives::Count::DistinctUsers, Some((true, None)))
        );
        assert_eq!(b.on_success.and_then(|o| o.trust).map(Dur::secs), Some(30 * 86400));
        assert_eq!(b.trusted_maxretry, Some(9));
        // What check --print writes loads as the same jails.
        let again = Config::from_text("p.ron", &c.effective_text(), Path::new(".")).unwrap();
        assert_eq!(again.jails, c.jails);
        let zero = text.replace("weight: 3", "weight: 0");
        let e = Config::from_text("w.ron", &zero, Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("weight is at least 1"), "{e}");
    }

    #[test]
    fn ron_error_is_located() {
        let e = Config::from_text("x.ron", "Pipeline(\n  jails: [\n    Jail(name: 3)\n  ],\n)", Path::new(".")).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("x.ron", 3));
        assert!(e.to_string().starts_with("x.ron:3:"), "{e}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let e = Config::from_text("x.ron", "Pipeline(\n  colour: 3,\n)", Path::new(".")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("colour"), "{e}");
    }

    #[test]
    fn only_small_regular_files_are_read() {
        let e = Config::from_text("z.ron", "Pipeline(include: [(file: \"/dev/zero\")])", Path::new("/")).unwrap_err();
        assert!(e.reason.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.ron");
        std::fs::write(&big, " ".repeat(MAX_FILE as usize + 1)).unwrap();
        assert!(Config::load(&big).unwrap_err().reason.contains("larger than"));
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let jail = r#"Jail(name: "a", rules: [r"x <HOST>"], maxretry: 1, findtime: "1m")"#;
        let e = Config::from_text("d.ron", &format!("Pipeline(jails: [\n{jail},\n{jail}])"), Path::new(".")).unwrap_err();
        assert!(e.reason.contains("duplicate jail name"), "{e}");
    }

    #[test]
    fn includes_select_jails_and_reject_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let inc = r#"Pipeline(jails: [Jail(name: "a", rules: [r"x <HOST>"], maxretry: 1, findtime: "1m")])"#;
        std::fs::write(dir.path().join("inc.ron"), inc).unwrap();
        let ok = Config::from_text("m.ron", r#"Pipeline(include: [(file: "inc.ron", jails: ["a"])])"#, dir.path()).unwrap();
        assert_eq!(ok.jails.len(), 1);
        let e = Config::from_text("m.ron", "Pipeline(\n include: [(file: \"inc.ron\", jails: [\"b\"])])", dir.path()).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("unknown jail \"b\""), "{e}");
    }
}
