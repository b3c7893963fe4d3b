//! The plain types every part of mailpipe shares: durations as pipeline files write them, where
//! a setting was written and what is wrong with it, and a jail as written. A leaf: it imports
//! nothing of ours, so stages take these from here and `config`, which composes the stages,
//! is imported by none of them.

use serde::Deserialize;

/// A duration written as `"15m"`, `"1h"`, `"1d"` (humantime syntax).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub u64);

impl Dur {
    /// `"permanent"`: the longest ban there is (100 years), which the kernel holds without a
    /// timeout.
    pub const PERMANENT: Dur = Dur(100 * 365 * 86_400);

    /// Whole seconds.
    pub fn secs(self) -> u64 {
        self.0
    }
}

impl serde::Serialize for Dur {
    /// As the pipeline file writes it: `"3600s"` reads back as the same duration.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if *self == Dur::PERMANENT {
            return s.serialize_str("permanent");
        }
        s.serialize_str(&humantime::format_duration(std::time::Duration::from_secs(self.0)).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d)?;
        if s == "permanent" {
            return Ok(Dur::PERMANENT);
        }
        humantime::parse_duration(&s)
            .map(|d| Dur(d.as_secs()))
            .map_err(|e| serde::de::Error::custom(format!("bad duration {s:?}: {e} (write e.g. \"15m\", \"1h\", \"1d\")")))
    }
}

/// This host's name (the kernel's), for mails, webhook batches and the fleet's node name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "localhost".into(), |h| h.trim().to_string())
}

/// One jail: the rules for one kind of failure and how many of them earn a ban.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Jail {
    /// Unique name, used in decisions and metrics.
    pub name: String,
    /// Globs on the syslog program (`postfix*/smtpd`); `""` matches lines without a tag.
    /// Empty list: every program.
    #[serde(default)]
    pub programs: Vec<String>,
    /// A regex every rule (and ignore rule) of the jail starts with, like fail2ban's prefregex.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Failure rules, anchored at the message start (after `prefix`), each with one `<HOST>`;
    /// a rule may count as several failures (`(rule: "...", weight: 3)`).
    pub rules: Vec<Rule>,
    /// A line matching one of these is never a failure for this jail.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Failures within `findtime` that earn a ban.
    pub maxretry: u32,
    /// The window failures are counted in.
    pub findtime: Dur,
    /// This jail's first ban time, instead of the policy's.
    #[serde(default)]
    pub bantime: Option<Dur>,
    /// The TCP ports its bans drop (numbers, service names, ranges); `[]`: every port; unset:
    /// the mail ports.
    #[serde(default)]
    pub ports: Option<Vec<PortSpec>>,
    /// What is counted toward `maxretry`.
    #[serde(default, skip_serializing_if = "Count::is_default")]
    pub count: Count,
    /// Rules for a successful login (with `<HOST>` and `<USER>`), for `on_success`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<String>,
    /// What a successful login does to the failures counted for its account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<OnSuccess>,
    /// The threshold for an (address, account) pair known good (`on_success.trust`), instead
    /// of `maxretry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_maxretry: Option<u32>,
}

/// A failure rule as written: a regex, or `(rule: "...", weight: N)` for one that counts as N
/// failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The regex.
    pub text: String,
    /// How many failures one match counts as (at least 1).
    pub weight: u32,
}

impl From<String> for Rule {
    fn from(text: String) -> Rule {
        Rule { text, weight: 1 }
    }
}

impl From<&str> for Rule {
    fn from(text: &str) -> Rule {
        Rule::from(text.to_string())
    }
}

impl std::ops::Deref for Rule {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `Rule` as a pipeline file may write it.
#[derive(Deserialize, serde::Serialize)]
#[serde(untagged)]
enum RuleForm {
    Plain(String),
    Weighted { rule: String, weight: u32 },
}

impl serde::Serialize for Rule {
    /// A plain string unless it has a weight.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.weight {
            1 => RuleForm::Plain(self.text.clone()),
            w => RuleForm::Weighted {
                rule: self.text.clone(),
                weight: w,
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rule, D::Error> {
        match RuleForm::deserialize(d)? {
            RuleForm::Plain(text) => Ok(text.into()),
            RuleForm::Weighted { weight: 0, .. } => Err(serde::de::Error::custom("a rule's weight is at least 1")),
            RuleForm::Weighted { rule, weight } => Ok(Rule { text: rule, weight }),
        }
    }
}

/// What a jail counts toward `maxretry` within `findtime`.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum Count {
    /// Failures from one address (fail2ban's way).
    #[default]
    Failures,
    /// Distinct `<USER>` names one address failed on: password spraying.
    DistinctUsers,
    /// Distinct addresses failing on one `<USER>`: credential stuffing; the ban takes every
    /// address that failed on that account in the window.
    DistinctAddresses,
}

impl Count {
    fn is_default(&self) -> bool {
        *self == Count::Failures
    }

    /// `failures`, `distinct_users`, `distinct_addresses` (metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            Count::Failures => "failures",
            Count::DistinctUsers => "distinct_users",
            Count::DistinctAddresses => "distinct_addresses",
        }
    }
}

/// What a successful login does (`on_success`): `Reset`, or `(reset: true, trust: "30d")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OnSuccess {
    /// Clear the failures this address made on this account (and no other).
    pub reset: bool,
    /// Remember (address, account) as known good for this long: `trusted_maxretry` applies to
    /// it, and a stuffing ban spares it.
    pub trust: Option<Dur>,
}

/// `OnSuccess` as a pipeline file may write it.
#[derive(Deserialize)]
#[serde(untagged)]
enum OnSuccessForm {
    Word(OnSuccessWord),
    Full {
        #[serde(default)]
        reset: bool,
        #[serde(default)]
        trust: Option<Dur>,
    },
}

#[derive(Deserialize)]
enum OnSuccessWord {
    Reset,
}

impl<'de> Deserialize<'de> for OnSuccess {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<OnSuccess, D::Error> {
        Ok(match OnSuccessForm::deserialize(d)? {
            OnSuccessForm::Word(OnSuccessWord::Reset) => OnSuccess { reset: true, trust: None },
            OnSuccessForm::Full { reset, trust } => OnSuccess { reset, trust },
        })
    }
}

/// Ports as a pipeline file writes them: a number, a service name (`"submission"`), a range
/// (`"8000:8080"`), or a fail2ban-style list in one string (`"smtp,465,submission"`).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortSpec {
    /// A port number.
    Number(u16),
    /// A service name, a range or a comma-separated list.
    Name(String),
}

/// The file text a jail came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// File name as shown in errors.
    pub file: String,
    /// Its text.
    pub text: std::sync::Arc<str>,
}

/// A problem with a pipeline file, located.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{col}: {reason}")]
pub struct ConfigError {
    /// File name.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong.
    pub reason: String,
}

/// An error at the first place one of `needles` is written in the first of `origins` that has
/// it (the files a setting may have come from, most important first).
pub fn error_in(origins: &[Origin], needles: &[&str], reason: impl Into<String>) -> ConfigError {
    let written = origins.iter().find(|o| needles.iter().any(|n| !n.is_empty() && o.text.contains(n)));
    match written.or(origins.first()) {
        Some(o) => o.error_at(needles, reason),
        None => ConfigError {
            file: "<none>".into(),
            line: 1,
            col: 1,
            reason: reason.into(),
        },
    }
}

impl Origin {
    /// An error at the first place `needle` is written in this file (1:1 if nowhere).
    pub fn error_at(&self, needles: &[&str], reason: impl Into<String>) -> ConfigError {
        let off = needles
            .iter()
            .filter(|n| !n.is_empty())
            .find_map(|n| self.text.find(n))
            .unwrap_or(0);
        let before = &self.text[..off];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(off, |nl| off - nl - 1) + 1;
        ConfigError {
            file: self.file.clone(),
            line,
            col,
            reason: reason.into(),
        }
    }
}

/// Where to find a jail's text inside its file, for error positions: the jail's name.
pub fn jail_needles(jail: &Jail) -> String {
    format!("\"{}\"", jail.name)
}

/// Where a regex is written in a file: as raw text, or with its backslashes escaped.
pub fn regex_needles(re: &str) -> [String; 2] {
    [re.to_string(), re.replace('\\', "\\\\").replace('"', "\\\"")]
}
