//! A filter's regexes converted into a mailpipe jail, every rule compiled before it is kept.

use super::*;

/// A converted rule's text and where its regex was written.
type Rule = (String, Pos);

/// A prefregex cut at its content, with its text.
type PrefParts = (Pref, Spanned);

/// What a filter's failregexes (and, after them, its ignoreregexes) became.
struct Converted {
    rules: Vec<Rule>,
    /// Per rule: anchored at the line's start (after the date) without the prefix line, so
    /// fail2ban matches it only on lines without a syslog header.
    line_anchored: Vec<bool>,
    ig_rules: Vec<Rule>,
    /// Some regex (or the prefregex) starts with the prefix line, `%(__prefix_line)s`.
    uses_mark: bool,
}

/// One failregex being converted: its jail, its text, the prefregex's text, where it was
/// written and whether the filter ties lines together there (`<F-MLFID>`).
struct FailCtx<'a> {
    j: &'a str,
    f: &'a Spanned,
    pref_text: Option<&'a Spanned>,
    here: Pos,
    mlfid: bool,
}

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
        let fname = &ctx.name;
        let fails = nonempty_lines(fail);
        let ignores = nonempty_lines(ignore);
        let pref = pref.map(|p| p.trim()).filter(|p| !p.s.is_empty());
        if fails.is_empty() {
            return Err((jail_pos.clone(), format!("filter {fname} has no failregex")));
        }
        let pref_parts = read_prefregex(pref)?;
        let mut out = self.convert_fails(j, &fails, pref_parts.as_ref())?;
        for ig in &ignores {
            self.convert_ignore(ig, pref_parts.as_ref(), &mut out.ig_rules)?;
        }
        let none_converted = || {
            (
                jail_pos.clone(),
                format!("no failregex of filter {fname} could be converted (see the notes above)"),
            )
        };
        if out.rules.is_empty() {
            return Err(none_converted());
        }
        let mut seen = HashSet::new();
        out.ig_rules.retain(|r| seen.insert(r.0.clone()));
        if out.uses_mark && out.line_anchored.contains(&true) {
            self.drop_line_anchored(j, &mut out);
            if out.rules.is_empty() {
                return Err(none_converted());
            }
        }
        let programs = self.programs(j, ctx, jail_pos, &out);
        self.note_filter_options(j, ctx);
        let Converted {
            mut rules, mut ig_rules, ..
        } = out;
        let prefix = pref_parts
            .as_ref()
            .and_then(|(p, _)| take_common_prefix(p, &mut rules, &mut ig_rules));
        converted_plan(j, programs, prefix, rules, ig_rules, jail_pos)
    }

    /// Each failregex converted after the prefregex, a case kept once it passes its checks;
    /// what is left out is noted.
    fn convert_fails(&mut self, j: &str, fails: &[Spanned], pref_parts: Option<&PrefParts>) -> Result<Converted, (Pos, String)> {
        let mlfid_filter = pref_parts.is_some_and(|(p, _)| p.mlfid || concat(p.a.clone()).has_tag("MLFID"));
        let mut out = Converted {
            rules: Vec::new(),
            line_anchored: Vec::new(),
            ig_rules: Vec::new(),
            uses_mark: pref_parts.is_some_and(|(p, _)| p.mark),
        };
        let mut multiline_noted = false;
        for f in fails {
            let mut node = parse_regex(&f.s).map_err(|e| refuse_syntax(f, e))?;
            rebase(&mut node, REBASE);
            let here = f.pos_at(0);
            let mlfid = mlfid_filter || node.has_tag("MLFID");
            if mlfid && !multiline_noted {
                multiline_noted = true;
                let p = match pref_parts {
                    Some((_, text)) if mlfid_filter => text.pos_at(0),
                    _ => here.clone(),
                };
                self.note(&p, format!("[{j}] fail2ban ties lines of one process together (<F-MLFID>); mailpipe reads each line alone, so a failure it would take from an earlier line is not counted"));
            }
            let fc = FailCtx {
                j,
                f,
                pref_text: pref_parts.map(|(_, t)| t),
                here,
                mlfid,
            };
            self.convert_fail(&fc, pref_parts.map(|(p, _)| p), node, &mut out);
        }
        Ok(out)
    }

    /// One failregex composed with the prefregex and lowered: each case that passes its checks
    /// becomes a rule (and the ignore rules its look-aheads became).
    fn convert_fail(&mut self, fc: &FailCtx, pref: Option<&Pref>, node: Node, out: &mut Converted) {
        let j = fc.j;
        let head = strip_head(items(node.clone()));
        out.uses_mark |= head.mark;
        let at_line_start = match pref {
            Some(p) => p.anchored && !p.mark,
            None => head.anchored && !head.mark,
        };
        let mut anchoring = Vec::new();
        let composed = match compose(pref, node, &mut anchoring) {
            Ok(c) => c,
            Err(p) => {
                self.note(
                    &self.problem_pos(fc.f, None, p.at),
                    format!("[{j}] failregex left out: {}", p.message),
                );
                return;
            }
        };
        for p in anchoring {
            self.note(&fc.here, format!("[{j}] {}", p.message));
        }
        let mut budget = 32;
        for branch in lower(
            composed,
            LowerMode {
                failure: true,
                mlfid: fc.mlfid,
            },
            &mut budget,
        ) {
            let l = match branch {
                Ok(l) => l,
                Err(p) => {
                    self.note(
                        &self.problem_pos(fc.f, fc.pref_text, p.at),
                        format!("[{j}] failregex (or one case of it) left out: {}", p.message),
                    );
                    continue;
                }
            };
            if l.nofail {
                self.convert_nofail(fc, &l, &mut out.ig_rules);
                continue;
            }
            let Some((text, ig_texts)) = self.checked_rule(fc, &l) else {
                continue;
            };
            for p in &l.rewrites {
                self.note(&self.problem_pos(fc.f, fc.pref_text, p.at), format!("[{j}] {}", p.message));
            }
            out.rules.push((text, fc.here.clone()));
            out.line_anchored.push(at_line_start);
            for t in ig_texts {
                out.ig_rules.push((t, fc.here.clone()));
            }
        }
    }

    /// fail2ban's helper: the line is no failure (and, first in order, decides so for the rules
    /// after it). Written as an ignore rule, which never counts more than fail2ban.
    fn convert_nofail(&mut self, fc: &FailCtx, l: &Lowered, ig_rules: &mut Vec<Rule>) {
        let j = fc.j;
        let done = emit_all(&concat(l.rule.clone()), true)
            .map_err(|(_, why)| why)
            .and_then(|t| check_rule(&t, true).map(|()| t));
        match done {
            Ok(t) => {
                self.note(&fc.here, format!("[{j}] a <F-NOFAIL>/<F-MLFGAINED> case (fail2ban's helper: no failure) is written as a jail ignore rule"));
                ig_rules.push((t, fc.here.clone()));
            }
            Err(why) => self.note(&fc.here, format!("[{j}] a <F-NOFAIL>/<F-MLFGAINED> case (fail2ban's helper: no failure) left out ({why}): a line it decides is no failure may be counted by another rule")),
        }
    }

    /// A failure case's text and the texts of the ignore rules its look-aheads became, once it
    /// has one `<HOST>` and each compiles; `None` (noted) when the case is left out.
    fn checked_rule(&mut self, fc: &FailCtx, l: &Lowered) -> Option<(String, Vec<String>)> {
        let j = fc.j;
        if let Some((off, why)) = concat(l.rule.clone()).first_bad() {
            self.note(
                &self.problem_pos(fc.f, fc.pref_text, off),
                format!("[{j}] failregex left out: {why}"),
            );
            return None;
        }
        let hosts = concat(l.rule.clone()).hosts();
        if hosts != 1 {
            let why = if hosts == 0 && fc.mlfid {
                "it has no <HOST>: fail2ban takes the address from an earlier line of the same process".to_string()
            } else if hosts == 0 {
                "it has no <HOST> (fail2ban's failure id is no address here)".to_string()
            } else {
                format!("{hosts} <HOST>s once the prefregex is added (mailpipe takes one address per line)")
            };
            self.note(&fc.here, format!("[{j}] failregex left out: {why}"));
            return None;
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
                    &self.problem_pos(fc.f, fc.pref_text, off),
                    format!("[{j}] failregex left out: {why}"),
                );
                return None;
            }
        };
        if let Err(why) = check_rule(&text, false) {
            self.note(
                &fc.here,
                format!("[{j}] failregex left out: mailpipe cannot compile its conversion {text:?}: {why}"),
            );
            return None;
        }
        if let Some(why) = ig_texts.iter().find_map(|t| check_rule(t, true).err()) {
            self.note(
                &fc.here,
                format!("[{j}] failregex left out: the ignore rule its look-ahead became does not compile: {why}"),
            );
            return None;
        }
        Some((text, ig_texts))
    }

    /// One ignoreregex converted after the prefregex: every case of it must be, or the jail
    /// would count lines fail2ban does not.
    fn convert_ignore(&self, ig: &Spanned, pref_parts: Option<&PrefParts>, ig_rules: &mut Vec<Rule>) -> Result<(), (Pos, String)> {
        let mut node = parse_regex(&ig.s).map_err(|e| refuse_syntax(ig, e))?;
        rebase(&mut node, REBASE);
        let here = ig.pos_at(0);
        let composed = compose_ignore(pref_parts.map(|(p, _)| p), node);
        let mut budget = 32;
        let pref_text = pref_parts.map(|(_, t)| t);
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
                    self.problem_pos(ig, pref_text, p.at),
                    format!(
                        "ignoreregex: {}; without it the jail would count lines fail2ban does not",
                        p.message
                    ),
                )
            })?;
            let text = emit_all(&concat(l.rule), true).map_err(|(off, why)| {
                (
                    self.problem_pos(ig, pref_text, off),
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
        Ok(())
    }

    /// The rules anchored at the line's start without the prefix line, unlike the filter's
    /// others, left out: with the prefix line stripped they would read the message of every
    /// program the jail takes.
    fn drop_line_anchored(&mut self, j: &str, out: &mut Converted) {
        let mut k = 0;
        let mut dropped = Vec::new();
        let line_anchored = &out.line_anchored;
        out.rules.retain(|r| {
            k += 1;
            let keep = !line_anchored[k - 1];
            if !keep {
                dropped.push(r.1.clone());
            }
            keep
        });
        out.line_anchored.retain(|a| !a);
        for pos in dropped {
            self.note(&pos, format!("[{j}] failregex left out: anchored at the line's start without %(__prefix_line)s, unlike the filter's others, so fail2ban matches it only on lines without a syslog header; mailpipe cannot tell those apart for one rule"));
        }
    }

    /// The programs the jail takes: the filter's `_daemon` where the prefix line was stripped;
    /// else lines without a syslog tag where rules are anchored after the date, else every
    /// program. Where fail2ban reads the line otherwise is noted.
    fn programs(&mut self, j: &str, ctx: &FilterCtx, jail_pos: &Pos, out: &Converted) -> Vec<String> {
        if out.uses_mark {
            let programs = self.daemon_programs(j, ctx, jail_pos);
            if let Some(pl) = ctx.store.raw("Definition", "__prefix_line", &ctx.vars)
                && !pl.pos_at(0).file.ends_with("common.conf")
                && !pl.s.starts_with("%(known/__prefix_line)s")
            {
                self.note(&pl.pos_at(0), format!("[{j}] __prefix_line is redefined here; mailpipe's parser takes off the syslog header that fail2ban's stock __prefix_line matches, and the redefinition is not kept"));
            }
            return programs;
        }
        let mut programs = Vec::new();
        if out.line_anchored.contains(&true) {
            // fail2ban anchors these at the line after its date: a line with a syslog header
            // starts with its host, so only lines without one (a program's own log file) match.
            programs = vec![String::new()];
        }
        let fname = &ctx.name;
        self.note(
            jail_pos,
            format!(
                "[{j}] filter {fname}'s regexes do not start with %(__prefix_line)s: fail2ban matches them against the line without its date, mailpipe against the message after its time and syslog header{}; check the jail with `mailpipe test`",
                if programs.is_empty() { "" } else { " (so the jail reads lines without a syslog tag only, a program's own log file)" }
            ),
        );
        programs
    }

    /// The filter's `_daemon` as program globs (and no program, for lines without a tag); none,
    /// every program, where it is `*` or too complex (noted).
    fn daemon_programs(&mut self, j: &str, ctx: &FilterCtx, jail_pos: &Pos) -> Vec<String> {
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
                    return kept;
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
        Vec::new()
    }

    /// Notes on the filter's options mailpipe does not follow: `maxlines`, `datepattern`.
    fn note_filter_options(&mut self, j: &str, ctx: &FilterCtx) {
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
        rules: vec![if ignore { "<HOST>".into() } else { rule.into() }],
        ignore: if ignore { vec![rule.to_string()] } else { Vec::new() },
        maxretry: 1,
        findtime: crate::config::Dur(60),
        ..Jail::default()
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

/// The converted jail (its numbers are filled in later), checked to compile, with where each
/// rule and ignore rule was written.
fn converted_plan(
    j: &str,
    programs: Vec<String>,
    prefix: Option<String>,
    rules: Vec<Rule>,
    ig_rules: Vec<Rule>,
    jail_pos: &Pos,
) -> Result<Plan, (Pos, String)> {
    let jail = Jail {
        name: j.to_string(),
        programs,
        prefix,
        rules: rules.iter().map(|r| r.0.clone().into()).collect(),
        ignore: ig_rules.iter().map(|r| r.0.clone()).collect(),
        maxretry: 1,
        findtime: crate::config::Dur(60),
        ..Jail::default()
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

/// The lines of a multi-line option, trimmed, without the empty ones.
fn nonempty_lines(v: Option<Spanned>) -> Vec<Spanned> {
    v.map(|v| v.lines().into_iter().map(|l| l.trim()).filter(|l| !l.s.is_empty()).collect())
        .unwrap_or_default()
}

/// A regex fail2ban cannot compile either: the jail does not start.
fn refuse_syntax(v: &Spanned, (off, why): PErr) -> (Pos, String) {
    (
        v.pos_at(off),
        format!("fail2ban cannot compile this regex either ({why}), so it does not start the jail"),
    )
}

/// The prefregex cut at its content; an `Err` where it cannot be converted, as every rule
/// depends on it.
fn read_prefregex(pref: Option<Spanned>) -> Result<Option<PrefParts>, (Pos, String)> {
    let Some(p) = pref else { return Ok(None) };
    let node = parse_regex(&p.s).map_err(|e| refuse_syntax(&p, e))?;
    let parts = split_prefregex(node).map_err(|why| (p.pos_at(0), why))?;
    if let Some((off, why)) = concat(parts.a.clone()).first_bad() {
        return Err((p.pos_at(off), format!("its prefregex has {why}, and every rule depends on it")));
    }
    Ok(Some((parts, p)))
}

/// The prefregex's part as the jail's prefix, taken off the rules, where every rule and ignore
/// rule starts with it (and goes on after it).
fn take_common_prefix(p: &Pref, rules: &mut [Rule], ig_rules: &mut [Rule]) -> Option<String> {
    let ptext = emit_all(&concat(p.head()), true).ok()?;
    if ptext.is_empty()
        || !rules
            .iter()
            .chain(ig_rules.iter())
            .all(|(r, _)| r.starts_with(&ptext) && r.len() > ptext.len())
    {
        return None;
    }
    for (r, _) in rules.iter_mut().chain(ig_rules.iter_mut()) {
        *r = r[ptext.len()..].to_string();
    }
    Some(ptext)
}
