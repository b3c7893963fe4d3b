//! The pipeline's `policy`: `[DEFAULT] bantime`, `bantime.increment`, `recidive`, `ignoreip`.

use super::*;

/// `policy` as the pipeline writes it.
pub(super) struct PolicyOut {
    pub(super) bantime: u64,
    pub(super) increment: Option<(f64, u64)>,
    pub(super) recidive: Option<(u32, u64, u64)>,
    pub(super) ignore: Vec<String>,
}

/// One `ignoreip` entry as a `policy.ignore` entry.
pub(super) fn ignore_entry(e: &str) -> Result<String, String> {
    use std::net::IpAddr;
    if let Some(path) = e.strip_prefix("file:") {
        return Ok(format!("@{path}"));
    }
    if e.parse::<IpAddr>().is_ok() || e.parse::<ipnet::IpNet>().is_ok() {
        return Ok(e.to_string());
    }
    if let Some((addr, mask)) = e.split_once('/')
        && let (Ok(std::net::IpAddr::V4(a)), Ok(std::net::IpAddr::V4(m))) = (addr.parse::<IpAddr>(), mask.parse::<IpAddr>())
    {
        let bits = u32::from(m);
        if bits.leading_ones() + bits.trailing_zeros() == 32 {
            return Ok(format!("{a}/{}", bits.leading_ones()));
        }
        return Err(format!("{e:?}: the netmask is not contiguous"));
    }
    let name_like = e.len() <= 253
        && e.bytes().any(|b| b.is_ascii_alphabetic())
        && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if name_like {
        return Ok(e.to_string());
    }
    Err(format!("{e:?} is not an address, a network or a host name"))
}

pub(super) fn split_words(v: &str) -> Vec<String> {
    v.split([' ', ',', '\n', '\t'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl Importer {
    /// The pipeline's policy from `[DEFAULT]` and the enabled jails `outs`.
    pub(super) fn policy(&mut self, outs: &[JailOut]) -> PolicyOut {
        let bantime = self.default_bantime();
        let increment = self.increment(outs, bantime);
        let recidive = self.recidive(outs);
        let ignore = self.ignore_list(outs);
        self.note_ignoreself(outs);
        PolicyOut {
            bantime,
            increment,
            recidive,
            ignore,
        }
    }

    /// Where `[DEFAULT]` option `opt` was written.
    fn default_pos(&self, opt: &str) -> Pos {
        self.jails.defaults.get(opt).map(|v| v.pos_at(0)).unwrap_or_else(Pos::none)
    }

    /// `[DEFAULT] bantime` in seconds (10m where unset or unusable).
    fn default_bantime(&mut self) -> u64 {
        match self.get("DEFAULT", "bantime").map(|v| v.map(|v| seconds(&v))) {
            Ok(Some(Ok(s))) if s < 0.0 => crate::config::Dur::PERMANENT.secs(),
            Ok(Some(Ok(s))) if s >= 1.0 => s.round() as u64,
            Ok(None) => 600,
            Ok(Some(Ok(_))) => 600,
            Ok(Some(Err(e))) | Err(e) => {
                self.note(
                    &self.default_pos("bantime"),
                    format!("[DEFAULT] bantime: {e}: policy.bantime is 10m, each jail's is written for it"),
                );
                600
            }
        }
    }

    /// `policy.increment`: one setting in mailpipe, per jail in fail2ban (the jails that differ
    /// from the one used are noted).
    fn increment(&mut self, outs: &[JailOut], bantime: u64) -> Option<(f64, u64)> {
        let jails: Vec<&JailOut> = outs.iter().filter(|o| !matches!(o.plan, Plan::Recidive)).collect();
        let inc = |me: &Self, sec: &str| me.get(sec, "bantime.increment").ok().flatten().map(|v| as_bool(&v));
        let source: Option<String> = if self.jails.defaults.contains_key("bantime.increment") {
            Some("DEFAULT".to_string())
        } else {
            jails
                .iter()
                .find(|o| inc(self, &o.section) == Some(true))
                .map(|o| o.section.clone())
        };
        let on = source.as_deref().and_then(|s| inc(self, s)).unwrap_or(false);
        for o in &jails {
            if inc(self, &o.section).unwrap_or(false) != on {
                let p = self.pos_of(&o.section, "bantime.increment");
                self.note(
                    &p,
                    format!(
                        "[{}] bantime.increment differs from the one used ({}): mailpipe's increment is one setting for every jail",
                        o.section,
                        if on { "on" } else { "off" }
                    ),
                );
            }
        }
        match source {
            Some(src) if on => Some(self.increment_of(&src, bantime)),
            _ => None,
        }
    }

    /// `bantime.*` of section `src` as mailpipe's (factor, maxtime).
    fn increment_of(&mut self, src: &str, bantime: u64) -> (f64, u64) {
        let (factor, mailpipe_factor, cap) = self.increment_factor(src, bantime);
        self.note_increment_extras(src);
        let maxtime = self.increment_maxtime(src, bantime, factor, cap);
        (mailpipe_factor, maxtime.round().max(1.0) as u64)
    }

    /// `bantime.factor` and `bantime.multipliers`: (fail2ban's factor, mailpipe's factor, the
    /// longest ban the multipliers allow).
    fn increment_factor(&mut self, src: &str, bantime: u64) -> (f64, f64, Option<f64>) {
        let at = |me: &Self, opt: &str| me.pos_of(src, opt);
        let mut factor = 1.0f64;
        if let Ok(Some(f)) = self.get(src, "bantime.factor") {
            match f.parse::<f64>() {
                Ok(x) if x > 0.0 && x.is_finite() => factor = x,
                _ => self.note(
                    &at(self, "bantime.factor"),
                    format!("[{src}] bantime.factor {f:?} is not a plain number: taken as 1"),
                ),
            }
        }
        let mut mailpipe_factor = 2.0f64;
        let mut cap: Option<f64> = None;
        if let Ok(Some(m)) = self.get(src, "bantime.multipliers")
            && !m.is_empty()
        {
            let ms: Vec<f64> = m.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            let ratio = if ms.len() >= 2 && ms[0] > 0.0 { ms[1] / ms[0] } else { 0.0 };
            let geometric = ms.len() >= 2
                && ms[0] == 1.0
                && ratio > 1.0
                && ratio.is_finite()
                && ms.windows(2).all(|w| (w[1] - w[0] * ratio).abs() < 1e-9);
            if geometric {
                mailpipe_factor = ratio;
                cap = ms.last().map(|l| l * factor * bantime as f64);
            } else {
                self.note(
                    &at(self, "bantime.multipliers"),
                    format!(
                        "[{src}] bantime.multipliers {m}: mailpipe's increment is geometric (bantime × factor^(n-1)); written as factor 2.0"
                    ),
                );
            }
            if factor != 1.0 && geometric {
                self.note(
                    &at(self, "bantime.factor"),
                    format!("[{src}] bantime.factor {factor}: mailpipe's n-th ban is bantime × {ratio}^(n-1), without the factor"),
                );
            }
        } else if let Ok(Some(f)) = self.get(src, "bantime.formula") {
            self.note(
                &at(self, "bantime.formula"),
                format!("[{src}] bantime.formula {f:?} not converted: mailpipe's increment is bantime × 2^(n-1)"),
            );
        } else if factor != 1.0 {
            self.note(
                &at(self, "bantime.factor"),
                format!("[{src}] bantime.factor {factor}: fail2ban's n-th ban (n ≥ 2) is bantime × 2^(n-1) × {factor}, mailpipe's bantime × 2^(n-1)"),
            );
        }
        (factor, mailpipe_factor, cap)
    }

    /// The increment options mailpipe has no counterpart for.
    fn note_increment_extras(&mut self, src: &str) {
        let at = |me: &Self, opt: &str| me.pos_of(src, opt);
        for opt in ["bantime.rndtime", "bantime.overalljails"] {
            if let Ok(Some(v)) = self.get(src, opt) {
                let why = if opt == "bantime.rndtime" {
                    "mailpipe's ban times are exact"
                } else {
                    "mailpipe counts an address's earlier bans in every jail"
                };
                self.note(&at(self, opt), format!("[{src}] {opt} = {v} not converted: {why}"));
            }
        }
    }

    /// `bantime.maxtime` in seconds (fail2ban's growth limit where unset), within the
    /// multipliers' `cap`.
    fn increment_maxtime(&mut self, src: &str, bantime: u64, factor: f64, cap: Option<f64>) -> f64 {
        let at = |me: &Self, opt: &str| me.pos_of(src, opt);
        let permanent = crate::config::Dur::PERMANENT.secs() as f64;
        let maxtime = match self.get(src, "bantime.maxtime").map(|v| v.map(|v| seconds(&v))) {
            Ok(Some(Ok(s))) if s >= 1.0 => s,
            Ok(Some(Err(e))) | Err(e) => {
                self.note(&at(self, "bantime.maxtime"), format!("[{src}] bantime.maxtime: {e}: taken as none"));
                permanent
            }
            _ => {
                let grown = bantime as f64 * 2f64.powi(20) * factor;
                self.note(
                    &at(self, "bantime.increment"),
                    format!(
                        "[{src}] no bantime.maxtime: fail2ban's bans grow to bantime × 2^20; mailpipe's maxtime is written as {}",
                        dur_text(grown.min(permanent) as u64)
                    ),
                );
                grown
            }
        };
        cap.map_or(maxtime, |c| c.min(maxtime)).min(permanent)
    }

    /// `policy.recidive` from the first jail with the recidive filter.
    fn recidive(&mut self, outs: &[JailOut]) -> Option<(u32, u64, u64)> {
        let mut recidive = None;
        for o in outs.iter().filter(|o| matches!(o.plan, Plan::Recidive)) {
            if recidive.is_some() {
                self.note(
                    &o.pos,
                    format!(
                        "[{}] a second recidive jail: mailpipe has one recidive rule, the first one's is used",
                        o.section
                    ),
                );
                continue;
            }
            recidive = Some((o.maxretry, o.findtime, o.bantime));
            if !o.ports.is_empty() {
                self.note(
                    &o.pos,
                    format!(
                        "[{}] its bans drop only port(s) {}: mailpipe's recidive bans drop every port",
                        o.section,
                        self.get(&o.section, "port").ok().flatten().unwrap_or_default()
                    ),
                );
            }
        }
        recidive
    }

    /// `policy.ignore`: `ignoreip` of `[DEFAULT]` and of every enabled jail.
    fn ignore_list(&mut self, outs: &[JailOut]) -> Vec<String> {
        let mut ignore: Vec<String> = Vec::new();
        let mut add = |me: &mut Self, raw: &str, pos: &Pos, section: &str, own: bool| {
            for e in split_words(raw) {
                match ignore_entry(&e) {
                    Ok(x) if ignore.contains(&x) => {}
                    Ok(x) => {
                        if own {
                            me.note(
                                pos,
                                format!("[{section}] ignoreip {e}: mailpipe's policy.ignore is for every jail, so no jail bans it"),
                            );
                        }
                        ignore.push(x);
                    }
                    Err(why) => me.note(pos, format!("[{section}] ignoreip entry left out: {why}")),
                }
            }
        };
        match self.get("DEFAULT", "ignoreip") {
            Ok(Some(v)) => {
                let p = self.default_pos("ignoreip");
                add(self, &v, &p, "DEFAULT", false);
            }
            Ok(None) => {}
            Err(e) => self.note(&self.default_pos("ignoreip"), format!("[DEFAULT] ignoreip: {e}")),
        }
        for o in outs {
            let own = self.jails.sections.get(&o.section).is_some_and(|s| s.contains_key("ignoreip"));
            if !own {
                continue;
            }
            let p = self.pos_of(&o.section, "ignoreip");
            match self.get(&o.section, "ignoreip") {
                Ok(Some(v)) => add(self, &v, &p, &o.section, true),
                Ok(None) => {}
                Err(e) => self.note(&p, format!("[{}] ignoreip: {e}", o.section)),
            }
        }
        ignore
    }

    /// fail2ban's `ignoreself`, which mailpipe cannot follow.
    fn note_ignoreself(&mut self, outs: &[JailOut]) {
        if !outs.is_empty() && self.get("DEFAULT", "ignoreself").ok().flatten().is_none_or(|v| as_bool(&v)) {
            let p = self.default_pos("ignoreself");
            let first = Pos {
                file: Rc::from(
                    self.jails
                        .files
                        .iter()
                        .find(|f| f.starts_with("jail."))
                        .map_or("jail.conf", String::as_str),
                ),
                line: 0,
            };
            self.note(
                &if p.line == 0 { first } else { p },
                "ignoreself (on by default in fail2ban) not converted: mailpipe does not know this host's own addresses; it ignores 127.0.0.0/8 and ::1, add the others to policy.ignore",
            );
        }
    }
}
