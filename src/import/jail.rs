//! Enabled jails: the shipped-jail table, numbers and ports, and the choice between mapping a
//! jail onto a shipped one and converting its filter.

use super::*;

/// fail2ban's filter (and mode) → the shipped pipeline file and jail that play it. Mode `None`:
/// the filter has no modes (fail2ban's `jail.conf` passes `mode=normal` to every filter).
pub const SHIPPED: &[(&str, Option<&str>, &str, &str)] = &[
    ("postfix", Some("more"), "postfix.ron", "postfix-reject"),
    ("postfix", Some("normal"), "postfix.ron", "postfix-reject"),
    ("postfix", Some("auth"), "postfix.ron", "postfix-sasl"),
    ("postfix", Some("rbl"), "postfix.ron", "postfix-rbl"),
    ("postfix", Some("ddos"), "postfix.ron", "postfix-ddos"),
    ("postfix", Some("errors"), "postfix.ron", "postfix-errors"),
    ("postfix", Some("aggressive"), "postfix.ron", "postfix-aggressive"),
    ("dovecot", Some("normal"), "dovecot.ron", "dovecot-auth"),
    ("dovecot", Some("aggressive"), "dovecot.ron", "dovecot-aggressive"),
    ("sshd", Some("normal"), "sshd.ron", "sshd"),
    ("sshd", Some("ddos"), "sshd.ron", "sshd-ddos"),
    ("sshd", Some("extra"), "sshd.ron", "sshd-extra"),
    ("sshd", Some("aggressive"), "sshd.ron", "sshd-aggressive"),
    ("exim", Some("normal"), "exim.ron", "exim"),
    ("exim", Some("more"), "exim.ron", "exim-more"),
    ("exim", Some("aggressive"), "exim.ron", "exim-aggressive"),
    ("exim-spam", None, "exim.ron", "exim-spam"),
    ("sendmail-auth", None, "sendmail.ron", "sendmail-auth"),
    ("sendmail-reject", Some("normal"), "sendmail.ron", "sendmail-reject"),
    ("sendmail-reject", Some("extra"), "sendmail.ron", "sendmail-reject-extra"),
    ("sendmail-reject", Some("aggressive"), "sendmail.ron", "sendmail-reject-aggressive"),
    ("courier-auth", None, "courier.ron", "courier-auth"),
    ("courier-smtp", None, "courier.ron", "courier-smtp"),
    ("roundcube-auth", None, "roundcube.ron", "roundcube-auth"),
    ("qmail", None, "qmail.ron", "qmail-rbl"),
    ("cyrus-imap", None, "imap.ron", "cyrus-imap"),
    ("uwimap-auth", None, "imap.ron", "uwimap-auth"),
    ("perdition", None, "imap.ron", "perdition"),
    ("solid-pop3d", None, "imap.ron", "solid-pop3d"),
    ("sieve", None, "imap.ron", "sieve"),
    ("horde", None, "webmail.ron", "horde"),
    ("squirrelmail", None, "webmail.ron", "squirrelmail"),
    ("sogo-auth", None, "webmail.ron", "sogo-auth"),
    ("openwebmail", None, "webmail.ron", "openwebmail"),
    ("assp", None, "others.ron", "assp"),
    ("domino-smtp", None, "others.ron", "domino-smtp"),
    ("kerio", None, "others.ron", "kerio"),
    ("oracleims", None, "others.ron", "oracleims"),
    ("opensmtpd", None, "others.ron", "opensmtpd"),
];

/// Filter arguments that leave the regexes alone (the stock filter still maps).
pub(super) const HARMLESS_ARGS: &[&str] = &["mode", "logtype", "maxlines", "journalmatch", "datepattern"];

/// Jail options mailpipe has no per-jail counterpart for: listed in a note where set.
pub(super) const NOT_CONVERTED: &[&str] = &[
    "backend",
    "logpath",
    "logencoding",
    "logtimezone",
    "action",
    "banaction",
    "protocol",
    "chain",
    "mta",
    "destemail",
    "sender",
    "maxmatches",
    "usedns",
    "ignorecommand",
    "ignorecache",
    "maxlines",
    "datepattern",
    "journalmatch",
];

/// What becomes of an enabled fail2ban jail.
pub(super) enum Plan {
    /// A shipped jail, included.
    Map { file: &'static str, jail: &'static str },
    /// A jail written out (its numbers are filled in later).
    Convert(Box<Jail>, Vec<Pos>, Vec<Pos>),
    /// The recidive jail: `policy.recidive`.
    Recidive,
}

pub(super) struct JailOut {
    pub(super) section: String,
    pub(super) pos: Pos,
    /// How the jail reads: `filter postfix[mode=auth]`.
    pub(super) filter: String,
    pub(super) plan: Plan,
    pub(super) maxretry: u32,
    pub(super) findtime: u64,
    pub(super) bantime: u64,
    pub(super) ports: Vec<PortSpec>,
}

pub(super) struct Importer {
    pub(super) reader: Reader,
    pub(super) jails: Store,
    pub(super) notes: Vec<Note>,
}

/// A fail2ban jail's settings, read and checked.
pub(super) struct Numbers {
    pub(super) maxretry: u32,
    pub(super) findtime: u64,
    pub(super) bantime: u64,
}

impl Importer {
    pub(super) fn note(&mut self, pos: &Pos, message: impl Into<String>) {
        let n = Note {
            file: pos.file.to_string(),
            line: pos.line,
            message: message.into(),
        };
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    /// Where option `opt` of `section` was written (the section's header if nowhere).
    pub(super) fn pos_of(&self, section: &str, opt: &str) -> Pos {
        self.jails
            .raw(section, opt, &Vars::new())
            .map(|v| v.pos_at(0))
            .or_else(|| self.jails.headers.get(section).cloned())
            .unwrap_or_else(Pos::none)
    }

    pub(super) fn get(&self, section: &str, opt: &str) -> Result<Option<String>, String> {
        Ok(self.jails.get(section, opt, &Vars::new(), false)?.map(|v| v.s.trim().to_string()))
    }

    pub(super) fn numbers(&mut self, j: &str) -> Result<Numbers, (Pos, String)> {
        let num = |me: &Self, opt: &str, default: f64| -> Result<f64, (Pos, String)> {
            let at = me.pos_of(j, opt);
            match me.get(j, opt).map_err(|e| (at.clone(), e))? {
                None => Ok(default),
                Some(v) if opt == "maxretry" => v
                    .parse::<i64>()
                    .map(|n| n as f64)
                    .map_err(|_| (at, format!("maxretry {v:?} is not a number"))),
                Some(v) => seconds(&v).map_err(|e| (at, format!("{opt}: {e}"))),
            }
        };
        let maxretry = num(self, "maxretry", 3.0)?;
        let findtime = num(self, "findtime", 600.0)?;
        let bantime = num(self, "bantime", 600.0)?;
        if maxretry < 1.0 || maxretry > f64::from(u32::MAX) {
            return Err((
                self.pos_of(j, "maxretry"),
                format!("maxretry {maxretry} (mailpipe needs at least 1)"),
            ));
        }
        if findtime < 1.0 {
            return Err((self.pos_of(j, "findtime"), "findtime below 1 second".to_string()));
        }
        if bantime > -1.0 && bantime < 1.0 {
            return Err((self.pos_of(j, "bantime"), "bantime 0: no ban at all".to_string()));
        }
        let permanent = crate::config::Dur::PERMANENT.secs();
        Ok(Numbers {
            maxretry: maxretry as u32,
            findtime: (findtime.round() as u64).min(permanent),
            bantime: if bantime < 0.0 {
                permanent
            } else {
                (bantime.round() as u64).min(permanent)
            },
        })
    }

    /// The jail's `port` as mailpipe ports (`[]`: every port).
    pub(super) fn ports(&mut self, j: &str) -> Vec<PortSpec> {
        let at = self.pos_of(j, "port");
        let banaction = self.get(j, "banaction").ok().flatten().unwrap_or_default();
        if banaction.contains("allports") {
            return Vec::new();
        }
        if let Ok(Some(p)) = self.get(j, "protocol")
            && !p.eq_ignore_ascii_case("tcp")
        {
            self.note(
                &self.pos_of(j, "protocol"),
                format!(
                    "[{j}] protocol = {p}: mailpipe's bans drop TCP on the jail's ports (and everything for a jail banning every port)"
                ),
            );
        }
        let port = match self.get(j, "port") {
            Ok(Some(p)) => p,
            Ok(None) => return Vec::new(),
            Err(e) => {
                self.note(&at, format!("[{j}] port: {e}: the bans drop every port"));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for item in port.split([',', ' ', '\n', '\t']).map(str::trim).filter(|s| !s.is_empty()) {
            if let Some((lo, hi)) = item.split_once(':')
                && lo.parse::<u32>().is_ok_and(|l| l <= 1)
                && hi.parse::<u32>().is_ok_and(|h| h >= 65535)
            {
                return Vec::new();
            }
            let spec = match item.parse::<u16>() {
                Ok(n) => PortSpec::Number(n),
                Err(_) => PortSpec::Name(item.to_string()),
            };
            match crate::ports::Ports::resolve(std::slice::from_ref(&spec), crate::ports::etc_services) {
                Ok(p) if p.is_every() => return Vec::new(),
                Ok(_) => out.push(spec),
                Err(e) => self.note(&at, format!("[{j}] port {item:?} left out: {e}")),
            }
        }
        if out.is_empty() {
            self.note(&at, format!("[{j}] no usable port in {port:?}: the bans drop every port"));
        }
        out
    }

    /// A jail option's value for the report, raw and short.
    pub(super) fn shown(v: &Spanned) -> String {
        let one: String = v.s.split_whitespace().collect::<Vec<_>>().join(" ");
        if one.chars().count() > 60 {
            format!("{}...", one.chars().take(57).collect::<String>())
        } else {
            one
        }
    }

    pub(super) fn not_converted(&mut self, section: &str, opts: &HashMap<String, Spanned>) {
        let mut list: Vec<(Pos, String)> = NOT_CONVERTED
            .iter()
            .filter_map(|k| {
                let raw = opts.get(*k).filter(|v| !v.s.trim().is_empty())?;
                let v = self
                    .jails
                    .get(section, k, &Vars::new(), false)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| raw.clone());
                Some((raw.pos_at(0), format!("{k} = {}", Self::shown(&v))))
            })
            .collect();
        if list.is_empty() {
            return;
        }
        list.sort_by_key(|(p, _)| p.line);
        let pos = list[0].0.clone();
        let what = list.into_iter().map(|(_, s)| s).collect::<Vec<_>>().join("; ");
        self.note(
            &pos,
            format!("[{section}] not converted (mailpipe's inputs, parser and sinks are the pipeline's, not a jail's; it never resolves names): {what}"),
        );
    }

    /// One enabled jail, or `None` (disabled, or refused with a note).
    pub(super) fn jail(&mut self, j: &str) -> Option<JailOut> {
        let hdr = self.jails.headers.get(j).cloned().unwrap_or_else(Pos::none);
        let enabled = match self.get(j, "enabled") {
            Ok(v) => v.is_some_and(|v| as_bool(&v)),
            Err(e) => {
                self.note(&self.pos_of(j, "enabled"), format!("[{j}] enabled: {e}: fail2ban skips this jail"));
                return None;
            }
        };
        if !enabled {
            return None;
        }
        match self.jail_enabled(j, &hdr) {
            Ok(out) => Some(out),
            Err((pos, why)) => {
                self.note(&pos, format!("[{j}] not converted: {why}"));
                None
            }
        }
    }

    pub(super) fn jail_enabled(&mut self, j: &str, hdr: &Pos) -> Result<JailOut, (Pos, String)> {
        let fpos = self.pos_of(j, "filter");
        let filter = self
            .get(j, "filter")
            .map_err(|e| (fpos.clone(), format!("filter: {e}")))?
            .unwrap_or_default();
        if filter.is_empty() {
            return Err((fpos, "no filter".to_string()));
        }
        let (fname, args) = extract_options(&filter).map_err(|e| (fpos.clone(), format!("filter: {e}: fail2ban skips this jail")))?;
        let backend = self.get(j, "backend").ok().flatten().unwrap_or_else(|| "auto".to_string());
        let nums = self.numbers(j)?;
        let ports = self.ports(j);
        if let Some(sec) = self.jails.sections.get(j).cloned() {
            self.not_converted(j, &sec);
        }
        let mut out = JailOut {
            section: j.to_string(),
            pos: hdr.clone(),
            filter: filter.clone(),
            plan: Plan::Recidive,
            maxretry: nums.maxretry,
            findtime: nums.findtime,
            bantime: nums.bantime,
            ports,
        };
        if fname == "recidive" {
            if args.iter().any(|(k, _)| !HARMLESS_ARGS.contains(&k.as_str())) {
                self.note(&fpos, format!("[{j}] filter = {filter}: mailpipe's recidive counts the bans of every other jail, as the stock recidive filter does"));
            }
            return Ok(out);
        }
        let ctx = self.open_filter(j, &fname, &args, &backend)?;
        let jail_regex: Vec<(String, Option<Spanned>)> = ["failregex", "ignoreregex", "prefregex"]
            .iter()
            .map(|k| (k.to_string(), self.jails.raw(j, k, &Vars::new()).cloned()))
            .collect();
        let mode = ctx
            .opt("mode")
            .map_err(|e| (fpos.clone(), format!("filter {fname}: {e}")))?
            .map(|m| m.s.trim().to_string());
        // Only the stock filter maps onto a shipped jail.
        let custom = customisations(&ctx, &fname, &args, &jail_regex);
        let shipped = shipped_jail(&fname, mode.as_deref());
        if let (Some((file, jail)), true) = (shipped, custom.is_empty()) {
            out.plan = Plan::Map { file, jail };
            return Ok(out);
        }
        if let Some((file, jail)) = shipped {
            self.note(
                hdr,
                format!(
                    "[{j}] filter {fname} is customised ({}): converted from its regexes rather than mapped to {file}'s {jail}",
                    custom.join(", ")
                ),
            );
        }
        self.add_known(j, &ctx);
        out.plan = self.convert_regexes(j, hdr, &ctx, &fpos, &jail_regex)?;
        Ok(out)
    }

    /// The filter's options added to the jail's section as `known/NAME`: the jail's own regexes
    /// can read the filter's as %(known/failregex)s.
    fn add_known(&mut self, j: &str, ctx: &FilterCtx) {
        let mut known: Vec<(String, Spanned)> = Vec::new();
        let mut names: Vec<String> = ctx
            .store
            .sections
            .get("Definition")
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        names.extend(["failregex", "ignoreregex", "prefregex"].map(String::from));
        names.sort();
        names.dedup();
        for k in names {
            if let Ok(Some(v)) = ctx.opt(&k) {
                known.push((format!("known/{k}"), v));
            }
        }
        if let Some(sec) = self.jails.sections.get_mut(j) {
            sec.extend(known);
        }
    }

    /// The jail's regexes (where `jail_regex` says the jail sets them) or else the filter's,
    /// converted.
    fn convert_regexes(
        &mut self,
        j: &str,
        hdr: &Pos,
        ctx: &FilterCtx,
        fpos: &Pos,
        jail_regex: &[(String, Option<Spanned>)],
    ) -> Result<Plan, (Pos, String)> {
        let fname = &ctx.name;
        let regex = |k: &str| -> Result<Option<Spanned>, (Pos, String)> {
            match jail_regex.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.as_ref()) {
                Some(_) => self
                    .jails
                    .get(j, k, &Vars::new(), false)
                    .map_err(|e| (self.pos_of(j, k), format!("{k}: {e}"))),
                None => ctx.opt(k).map_err(|e| (fpos.clone(), format!("filter {fname}: {k}: {e}"))),
            }
        };
        let fail = regex("failregex")?;
        let ignore = regex("ignoreregex")?;
        let pref = regex("prefregex")?;
        self.convert(j, ctx, fail, ignore, pref, hdr)
    }
}

/// What makes the filter other than the stock one: local files, arguments, regexes the jail
/// sets (`jail_regex`).
fn customisations(ctx: &FilterCtx, fname: &str, args: &[(String, String)], jail_regex: &[(String, Option<Spanned>)]) -> Vec<String> {
    let mut custom: Vec<String> = ctx
        .store
        .files
        .iter()
        .filter(|f| f.ends_with(".local") || f.contains(&format!("{fname}.d/")))
        .cloned()
        .collect();
    custom.dedup();
    custom.extend(
        args.iter()
            .filter(|(k, _)| !HARMLESS_ARGS.contains(&k.as_str()))
            .map(|(k, v)| format!("argument {k}={v}")),
    );
    custom.extend(
        jail_regex
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| format!("{k} set for the jail")),
    );
    custom
}

/// The shipped jail (file, jail) that plays the stock filter `fname` in `mode`.
fn shipped_jail(fname: &str, mode: Option<&str>) -> Option<(&'static str, &'static str)> {
    SHIPPED
        .iter()
        .find(|(f, m, _, _)| *f == fname && m.is_none_or(|m| mode == Some(m)))
        .map(|&(_, _, file, jail)| (file, jail))
}
