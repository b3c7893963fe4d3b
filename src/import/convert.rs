//! A filter's regexes converted into a mailpipe jail, every rule compiled before it is kept.

use super::*;

impl Importer {
    /// A filter's regexes as a mailpipe jail (see the module doc).
    pub(super) fn convert(
        &mut self,
        j: &str,
        ctx: &FilterCtx,
        fail: Option<Spanned>,
        ignore: Option<Spanned>,
        pref: Option<Spanned>,
        jail_pos: &Pos,
    ) -> Result<Plan, (Pos, String)> {
        let fname = ctx.name.clone();
        let lines = |v: Option<Spanned>| -> Vec<Spanned> {
            v.map(|v| v.lines().into_iter().map(|l| l.trim()).filter(|l| !l.s.is_empty()).collect())
                .unwrap_or_default()
        };
        let fails = lines(fail);
        let ignores = lines(ignore);
        let pref = pref.map(|p| p.trim()).filter(|p| !p.s.is_empty());
        if fails.is_empty() {
            return Err((jail_pos.clone(), format!("filter {fname} has no failregex")));
        }
        let at = |v: &Spanned, off: usize| v.pos_at(off);
        let refuse_syntax = |v: &Spanned, (off, why): PErr| {
            (
                v.pos_at(off),
                format!("fail2ban cannot compile this regex either ({why}), so it does not start the jail"),
            )
        };
        // The prefregex, cut at its content.
        let pref_parts = match &pref {
            None => None,
            Some(p) => {
                let node = parse_regex(&p.s).map_err(|e| refuse_syntax(p, e))?;
                let parts = split_prefregex(node).map_err(|why| (at(p, 0), why))?;
                if let Some((off, why)) = concat(parts.a.clone()).first_bad() {
                    return Err((at(p, off), format!("its prefregex has {why}, and every rule depends on it")));
                }
                Some((parts, p.clone()))
            }
        };
        let mlfid_filter = pref_parts
            .as_ref()
            .is_some_and(|(p, _)| p.mlfid || concat(p.a.clone()).has_tag("MLFID"));
        let mut uses_mark = pref_parts.as_ref().is_some_and(|(p, _)| p.mark);
        let mut rules: Vec<(String, Pos)> = Vec::new();
        // Failure rules anchored at the line's start (after the date) without the prefix line:
        // fail2ban matches them only on lines without a syslog header.
        let mut line_anchored: Vec<bool> = Vec::new();
        let mut ig_rules: Vec<(String, Pos)> = Vec::new();
        let mut multiline_noted = false;
        for f in &fails {
            let mut node = parse_regex(&f.s).map_err(|e| refuse_syntax(f, e))?;
            rebase(&mut node, REBASE);
            let here = at(f, 0);
            let mlfid = mlfid_filter || node.has_tag("MLFID");
            if mlfid && !multiline_noted {
                multiline_noted = true;
                let p = if mlfid_filter {
                    pref_parts.as_ref().map_or(here.clone(), |x| x.1.pos_at(0))
                } else {
                    here.clone()
                };
                self.note(&p, format!("[{j}] fail2ban ties lines of one process together (<F-MLFID>); mailpipe reads each line alone, so a failure it would take from an earlier line is not counted"));
            }
            let head = strip_head(items(node.clone()));
            uses_mark |= head.mark;
            let at_line_start = match &pref_parts {
                Some((p, _)) => p.anchored && !p.mark,
                None => head.anchored && !head.mark,
            };
            let mut anchoring = Vec::new();
            let composed = match compose(pref_parts.as_ref().map(|(p, _)| p), node, &mut anchoring) {
                Ok(c) => c,
                Err(p) => {
                    self.note(&self.problem_pos(f, None, p.at), format!("[{j}] failregex left out: {}", p.message));
                    continue;
                }
            };
            for p in anchoring {
                self.note(&here, format!("[{j}] {}", p.message));
            }
            let pref_text = pref_parts.as_ref().map(|x| x.1.clone());
            let mut budget = 32;
            for branch in lower(composed, LowerMode { failure: true, mlfid }, &mut budget) {
                let l = match branch {
                    Ok(l) => l,
                    Err(p) => {
                        self.note(
                            &self.problem_pos(f, pref_text.as_ref(), p.at),
                            format!("[{j}] failregex (or one case of it) left out: {}", p.message),
                        );
                        continue;
                    }
                };
                if l.nofail {
                    // fail2ban's helper: the line is no failure (and, first in order, decides so
                    // for the rules after it). An ignore rule never counts more than fail2ban.
                    let done = emit_all(&concat(l.rule.clone()), true)
                        .map_err(|(_, why)| why)
                        .and_then(|t| check_rule(&t, true).map(|()| t));
                    match done {
                        Ok(t) => {
                            self.note(&here, format!("[{j}] a <F-NOFAIL>/<F-MLFGAINED> case (fail2ban's helper: no failure) is written as a jail ignore rule"));
                            ig_rules.push((t, here.clone()));
                        }
                        Err(why) => self.note(&here, format!("[{j}] a <F-NOFAIL>/<F-MLFGAINED> case (fail2ban's helper: no failure) left out ({why}): a line it decides is no failure may be counted by another rule")),
                    }
                    continue;
                }
                if let Some((off, why)) = concat(l.rule.clone()).first_bad() {
                    self.note(
                        &self.problem_pos(f, pref_text.as_ref(), off),
                        format!("[{j}] failregex left out: {why}"),
                    );
                    continue;
                }
                let hosts = concat(l.rule.clone()).hosts();
                if hosts != 1 {
                    let why = if hosts == 0 && mlfid {
                        "it has no <HOST>: fail2ban takes the address from an earlier line of the same process".to_string()
                    } else if hosts == 0 {
                        "it has no <HOST> (fail2ban's failure id is no address here)".to_string()
                    } else {
                        format!("{hosts} <HOST>s once the prefregex is added (mailpipe takes one address per line)")
                    };
                    self.note(&here, format!("[{j}] failregex left out: {why}"));
                    continue;
                }
                let emitted = emit_all(&concat(l.rule.clone()), false);
                let mut ig_texts = Vec::new();
                let mut ig_err = None;
                for ig in &l.ignores {
                    match emit_all(&concat(ig.clone()), true) {
                        Ok(t) => ig_texts.push(t),
                        Err(e) => ig_err = Some(e),
                    }
                }
                let text = match (emitted, ig_err) {
                    (Ok(t), None) => t,
                    (Err((off, why)), _) | (_, Some((off, why))) => {
                        self.note(
                            &self.problem_pos(f, pref_text.as_ref(), off),
                            format!("[{j}] failregex left out: {why}"),
                        );
                        continue;
                    }
                };
                if let Err(why) = check_rule(&text, false) {
                    self.note(
                        &here,
                        format!("[{j}] failregex left out: mailpipe cannot compile its conversion {text:?}: {why}"),
                    );
                    continue;
                }
                if let Some(why) = ig_texts.iter().find_map(|t| check_rule(t, true).err()) {
                    self.note(
                        &here,
                        format!("[{j}] failregex left out: the ignore rule its look-ahead became does not compile: {why}"),
                    );
                    continue;
                }
                for p in &l.rewrites {
                    self.note(&self.problem_pos(f, pref_text.as_ref(), p.at), format!("[{j}] {}", p.message));
                }
                rules.push((text, here.clone()));
                line_anchored.push(at_line_start);
                for t in ig_texts {
                    ig_rules.push((t, here.clone()));
                }
            }
        }
        for ig in &ignores {
            let mut node = parse_regex(&ig.s).map_err(|e| refuse_syntax(ig, e))?;
            rebase(&mut node, REBASE);
            let here = at(ig, 0);
            let composed = compose_ignore(pref_parts.as_ref().map(|(p, _)| p), node);
            let mut budget = 32;
            let pref_text = pref_parts.as_ref().map(|x| x.1.clone());
            for branch in lower(
                composed,
                LowerMode {
                    failure: false,
                    mlfid: false,
                },
                &mut budget,
            ) {
                let l = branch.map_err(|p| {
                    (
                        self.problem_pos(ig, pref_text.as_ref(), p.at),
                        format!(
                            "ignoreregex: {}; without it the jail would count lines fail2ban does not",
                            p.message
                        ),
                    )
                })?;
                let text = emit_all(&concat(l.rule), true).map_err(|(off, why)| {
                    (
                        self.problem_pos(ig, pref_text.as_ref(), off),
                        format!("ignoreregex: {why}; without it the jail would count lines fail2ban does not"),
                    )
                })?;
                check_rule(&text, true).map_err(|why| {
                    (
                        here.clone(),
                        format!("ignoreregex: mailpipe cannot compile its conversion {text:?}: {why}"),
                    )
                })?;
                ig_rules.push((text, here.clone()));
            }
        }
        if rules.is_empty() {
            return Err((
                jail_pos.clone(),
                format!("no failregex of filter {fname} could be converted (see the notes above)"),
            ));
        }
        let mut seen = HashSet::new();
        ig_rules.retain(|r| seen.insert(r.0.clone()));
        // Programs: the filter's _daemon where the prefix line was stripped.
        let mut programs = Vec::new();
        if uses_mark && line_anchored.contains(&true) {
            // Those rules would read the message of every program the jail takes.
            let mut k = 0;
            let mut dropped = Vec::new();
            rules.retain(|r| {
                k += 1;
                let keep = !line_anchored[k - 1];
                if !keep {
                    dropped.push(r.1.clone());
                }
                keep
            });
            line_anchored.retain(|a| !a);
            for pos in dropped {
                self.note(&pos, format!("[{j}] failregex left out: anchored at the line's start without %(__prefix_line)s, unlike the filter's others, so fail2ban matches it only on lines without a syslog header; mailpipe cannot tell those apart for one rule"));
            }
            if rules.is_empty() {
                return Err((
                    jail_pos.clone(),
                    format!("no failregex of filter {fname} could be converted (see the notes above)"),
                ));
            }
        }
        if !uses_mark && line_anchored.contains(&true) {
            // fail2ban anchors these at the line after its date: a line with a syslog header
            // starts with its host, so only lines without one (a program's own log file) match.
            programs = vec![String::new()];
        }
        if uses_mark {
            match ctx.opt("_daemon") {
                Ok(Some(d)) => match parse_regex(d.s.trim()).ok().as_ref().and_then(globs) {
                    Some(g) if !g.iter().any(|x| x == "*") => {
                        let mut kept: Vec<String> = Vec::new();
                        for x in &g {
                            if !g.iter().any(|y| y != x && glob_covers(y, x)) {
                                kept.push(x.clone());
                            }
                        }
                        if !kept.iter().any(|x| x.is_empty()) {
                            kept.push(String::new());
                        }
                        programs = kept;
                    }
                    Some(_) => {}
                    None => self.note(
                        &d.pos_at(0),
                        format!(
                            "[{j}] _daemon {:?} is too complex to turn into program globs: the jail takes every program",
                            d.s.trim()
                        ),
                    ),
                },
                Ok(None) => {}
                Err(e) => self.note(jail_pos, format!("[{j}] _daemon: {e}: the jail takes every program")),
            }
            if let Some(pl) = ctx.store.raw("Definition", "__prefix_line", &ctx.vars)
                && !pl.pos_at(0).file.ends_with("common.conf")
                && !pl.s.starts_with("%(known/__prefix_line)s")
            {
                self.note(&pl.pos_at(0), format!("[{j}] __prefix_line is redefined here; mailpipe's parser takes off the syslog header that fail2ban's stock __prefix_line matches, and the redefinition is not kept"));
            }
        } else {
            self.note(
                jail_pos,
                format!(
                    "[{j}] filter {fname}'s regexes do not start with %(__prefix_line)s: fail2ban matches them against the line without its date, mailpipe against the message after its time and syslog header{}; check the jail with `mailpipe test`",
                    if programs.is_empty() { "" } else { " (so the jail reads lines without a syslog tag only, a program's own log file)" }
                ),
            );
        }
        if let Ok(Some(m)) = ctx.opt("maxlines")
            && m.s.trim().parse::<u32>().is_ok_and(|n| n > 1)
        {
            self.note(
                &m.pos_at(0),
                format!("[{j}] maxlines = {}: mailpipe matches one line at a time", m.s.trim()),
            );
        }
        if let Ok(Some(d)) = ctx.opt("datepattern")
            && !d.s.trim().is_empty()
            && !d.pos_at(0).file.ends_with("common.conf")
        {
            self.note(
                &d.pos_at(0),
                format!("[{j}] datepattern not converted: mailpipe reads the times of the formats it knows (README \"Log formats\")"),
            );
        }
        // The prefregex's part as the jail's prefix, where every rule starts with it.
        let mut prefix = None;
        if let Some((p, _)) = &pref_parts {
            let mut head = Vec::new();
            if p.mark && p.anchored {
                head.push(daemon_extra());
            } else if !p.anchored {
                head.push(dot_star());
            }
            head.extend(p.a.iter().cloned());
            if let Ok(ptext) = emit_all(&concat(head), true)
                && !ptext.is_empty()
                && rules
                    .iter()
                    .chain(&ig_rules)
                    .all(|(r, _)| r.starts_with(&ptext) && r.len() > ptext.len())
            {
                for (r, _) in rules.iter_mut().chain(ig_rules.iter_mut()) {
                    *r = r[ptext.len()..].to_string();
                }
                prefix = Some(ptext);
            }
        }
        let jail = Jail {
            name: j.to_string(),
            programs,
            prefix,
            rules: rules.iter().map(|r| r.0.clone()).collect(),
            ignore: ig_rules.iter().map(|r| r.0.clone()).collect(),
            maxretry: 1,
            findtime: crate::config::Dur(60),
            bantime: None,
            ports: None,
        };
        // (Rules mailpipe runs slowly on long lines are `mailpipe check`'s to name: finding them
        // builds every rule's full automaton.)
        check_jail(&jail).map_err(|why| (jail_pos.clone(), format!("its conversion does not compile ({why})")))?;
        Ok(Plan::Convert(
            Box::new(jail),
            rules.into_iter().map(|r| r.1).collect(),
            ig_rules.into_iter().map(|r| r.1).collect(),
        ))
    }

    /// Where a construct at `off` of a composed rule was written: failregex offsets are
    /// [`REBASE`] and up, the prefregex's below.
    pub(super) fn problem_pos(&self, f: &Spanned, pref: Option<&Spanned>, off: usize) -> Pos {
        match (off.checked_sub(REBASE), pref) {
            (Some(o), _) => f.pos_at(o),
            (None, Some(p)) => p.pos_at(off),
            (None, None) => f.pos_at(off),
        }
    }
}

/// Whether mailpipe's matcher compiles `rule` (an ignore rule: with a `<HOST>` rule beside it).
pub(super) fn check_rule(rule: &str, ignore: bool) -> Result<(), String> {
    let jail = Jail {
        name: "import".to_string(),
        programs: Vec::new(),
        prefix: None,
        rules: vec![if ignore { "<HOST>".to_string() } else { rule.to_string() }],
        ignore: if ignore { vec![rule.to_string()] } else { Vec::new() },
        maxretry: 1,
        findtime: crate::config::Dur(60),
        bantime: None,
        ports: None,
    };
    check_jail(&jail)
}

/// Whether mailpipe's matcher compiles `jail`.
pub(super) fn check_jail(jail: &Jail) -> Result<(), String> {
    let origin = crate::config::Origin {
        file: "import".to_string(),
        text: std::sync::Arc::from(""),
    };
    crate::matcher::Matcher::new(std::slice::from_ref(jail), std::slice::from_ref(&origin), &Default::default())
        .map(drop)
        .map_err(|e| e.reason)
}
