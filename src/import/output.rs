//! The pipeline file: RON text for the includes, the policy and the converted jails, checked to
//! load before it is returned.

use super::*;

/// A RON string.
pub(super) fn ron_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A RON raw string (`r"..."`, `r#"..."#` when the text has a quote).
pub(super) fn ron_raw(s: &str) -> String {
    if s.chars().any(|c| c.is_control()) {
        return ron_str(s);
    }
    let mut hashes = 0;
    while s.contains(&format!("\"{}", "#".repeat(hashes))) {
        hashes += 1;
    }
    let h = "#".repeat(hashes);
    format!("r{h}\"{s}\"{h}")
}

pub(super) fn ports_text(p: &[PortSpec]) -> String {
    let items: Vec<String> = p
        .iter()
        .map(|x| match x {
            PortSpec::Number(n) => n.to_string(),
            PortSpec::Name(s) => ron_str(s),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// A shipped file's jails included: the file, each jail's name and its settings (RON text).
type Include = (&'static str, Vec<(String, String)>);

/// A jail written out: its comment, the jail, and where its rules and ignore rules were written.
type Written = (String, Jail, Vec<Pos>, Vec<Pos>);

/// The enabled jails, sorted for the pipeline file.
#[derive(Default)]
struct Sorted {
    /// Shipped jails included, by file.
    includes: Vec<Include>,
    /// The rest, written out.
    written: Vec<Written>,
    /// One line per enabled fail2ban jail: what it became.
    summary: Vec<String>,
}

pub(super) fn write_pipeline(
    dir: &str,
    files: &[String],
    outs: Vec<JailOut>,
    policy: &PolicyOut,
    imp: &mut Importer,
) -> Result<String, ImportError> {
    let sorted = sort_jails(outs, imp)?;
    if sorted.includes.is_empty() && sorted.written.is_empty() {
        imp.note(
            &Pos {
                file: Rc::from("jail.conf"),
                line: 0,
            },
            "no enabled jail could be converted: the pipeline has no jails",
        );
    }
    let mut t = header_text(dir, files, &sorted.summary, imp);
    t.push_str("Pipeline(\n");
    t.push_str(&includes_text(&sorted.includes));
    t.push_str(&policy_text(policy));
    t.push_str(&jails_text(&sorted.written));
    t.push_str(")\n");
    check_pipeline(&t)?;
    Ok(t)
}

/// `want`, or `want-2`, `want-3`... where it is taken; taken from then on.
fn unique_name(used: &mut HashSet<String>, want: &str) -> String {
    let mut name = want.to_string();
    let mut n = 2;
    while used.contains(&name) {
        name = format!("{want}-{n}");
        n += 1;
    }
    used.insert(name.clone());
    name
}

/// `j` named `name`, with the fail2ban jail's numbers and ports.
fn with_settings(mut j: Jail, name: String, o: &JailOut) -> Jail {
    j.name = name;
    j.maxretry = o.maxretry;
    j.findtime = crate::config::Dur(o.findtime);
    j.bantime = Some(crate::config::Dur(o.bantime));
    j.ports = Some(o.ports.clone());
    j
}

/// Each enabled jail as recidive, an included shipped jail (a copy where an earlier jail plays it
/// already) or a converted jail, under a name not taken.
fn sort_jails(outs: Vec<JailOut>, imp: &mut Importer) -> Result<Sorted, ImportError> {
    let mut used: HashSet<String> = crate::policy::BAN_NAMES.iter().map(|s| s.to_string()).collect();
    let mut sorted = Sorted::default();
    for mut o in outs {
        let set = format!(
            "(maxretry: {}, findtime: {}, bantime: {}, ports: {})",
            o.maxretry,
            ron_str(&dur_text(o.findtime)),
            ron_str(&dur_text(o.bantime)),
            ports_text(&o.ports)
        );
        let head = format!("[{}] {}:{}, filter = {}", o.section, o.pos.file, o.pos.line, o.filter);
        match std::mem::replace(&mut o.plan, Plan::Recidive) {
            Plan::Recidive => sorted.summary.push(format!("[{}] → policy.recidive", o.section)),
            Plan::Map { file, jail } if !used.contains(jail) => {
                used.insert(jail.to_string());
                sorted.summary.push(format!("[{}] → {file}'s {jail}", o.section));
                match sorted.includes.iter_mut().find(|(f, _)| *f == file) {
                    Some((_, v)) => v.push((jail.to_string(), set)),
                    None => sorted.includes.push((file, vec![(jail.to_string(), set)])),
                }
            }
            Plan::Map { file, jail } => {
                let shipped = Config::builtin_named(file)
                    .ok()
                    .and_then(|c| c.jails.into_iter().find(|j| j.name == jail))
                    .ok_or_else(|| ImportError::Output(format!("no jail {jail} in the built-in {file}")))?;
                let name = unique_name(&mut used, &o.section);
                imp.note(
                    &o.pos,
                    format!(
                        "[{}] plays {file}'s {jail} like an earlier jail: written as a copy of it named {name:?}",
                        o.section
                    ),
                );
                sorted
                    .summary
                    .push(format!("[{}] → jail {name:?} (a copy of {file}'s {jail})", o.section));
                sorted
                    .written
                    .push((head, with_settings(shipped, name, &o), Vec::new(), Vec::new()));
            }
            Plan::Convert(j, rpos, ipos) => {
                let name = unique_name(&mut used, &o.section);
                if name != o.section {
                    imp.note(&o.pos, format!("[{}] written as jail {name:?}: the name is taken", o.section));
                }
                sorted.summary.push(format!("[{}] → jail {name:?} (converted)", o.section));
                sorted.written.push((head, with_settings(*j, name, &o), rpos, ipos));
            }
        }
    }
    Ok(sorted)
}

/// The file's opening comments: where it came from, the enabled jails, the notes.
fn header_text(dir: &str, files: &[String], summary: &[String], imp: &Importer) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "// Written by `mailpipe import fail2ban {dir}` from {}.\n",
        files.join(", ")
    ));
    t.push_str("// `mailpipe check -c FILE` names rules it runs slowly; `mailpipe test -c FILE LOG` shows what each jail matches.\n");
    if !summary.is_empty() {
        t.push_str("// Enabled fail2ban jails:\n");
        for s in summary {
            t.push_str(&format!("//   {s}\n"));
        }
    }
    if imp.notes.is_empty() {
        t.push_str("// Everything is converted as fail2ban runs it.\n");
    } else {
        t.push_str(&format!(
            "// Not converted as fail2ban runs it, or rewritten ({} notes, files relative to {dir}):\n",
            imp.notes.len()
        ));
        for n in &imp.notes {
            t.push_str(&format!("//   {}\n", n.to_string().replace(['\n', '\r'], " ")));
        }
    }
    t
}

/// The pipeline's `include` field (nothing without includes).
fn includes_text(includes: &[Include]) -> String {
    let mut t = String::new();
    if includes.is_empty() {
        return t;
    }
    t.push_str("    include: [\n");
    for (file, jails) in includes {
        let names: Vec<String> = jails.iter().map(|(n, _)| ron_str(n)).collect();
        t.push_str(&format!(
            "        (file: {}, jails: [{}], set: {{\n",
            ron_str(file),
            names.join(", ")
        ));
        for (n, set) in jails {
            t.push_str(&format!("            {}: {set},\n", ron_str(n)));
        }
        t.push_str("        }),\n");
    }
    t.push_str("    ],\n");
    t
}

/// The pipeline's `policy` field.
fn policy_text(policy: &PolicyOut) -> String {
    let mut t = String::new();
    t.push_str("    policy: (\n");
    t.push_str(&format!("        bantime: {},\n", ron_str(&dur_text(policy.bantime))));
    match policy.increment {
        Some((f, max)) => t.push_str(&format!(
            "        increment: Some((factor: {f:?}, maxtime: {})),\n",
            ron_str(&dur_text(max))
        )),
        None => t.push_str("        increment: None,\n"),
    }
    match policy.recidive {
        Some((bans, find, ban)) => t.push_str(&format!(
            "        recidive: Some((bans: {bans}, findtime: {}, bantime: {})),\n",
            ron_str(&dur_text(find)),
            ron_str(&dur_text(ban))
        )),
        None => t.push_str("        recidive: None,\n"),
    }
    let ig: Vec<String> = policy.ignore.iter().map(|s| ron_str(s)).collect();
    t.push_str(&format!("        ignore: [{}],\n", ig.join(", ")));
    t.push_str("    ),\n");
    t
}

/// The pipeline's `jails` field (nothing without jails written out).
fn jails_text(written: &[Written]) -> String {
    let mut t = String::new();
    if written.is_empty() {
        return t;
    }
    t.push_str("    jails: [\n");
    for (head, j, rpos, ipos) in written {
        t.push_str(&jail_text(head, j, rpos, ipos));
    }
    t.push_str("    ],\n");
    t
}

/// One jail written out, after its comment; each rule after where it was written.
fn jail_text(head: &str, j: &Jail, rpos: &[Pos], ipos: &[Pos]) -> String {
    let mut t = String::new();
    t.push_str(&format!("        // {head}\n"));
    t.push_str("        Jail(\n");
    t.push_str(&format!("            name: {},\n", ron_str(&j.name)));
    let progs: Vec<String> = j.programs.iter().map(|p| ron_str(p)).collect();
    t.push_str(&format!("            programs: [{}],\n", progs.join(", ")));
    t.push_str(&format!("            maxretry: {},\n", j.maxretry));
    t.push_str(&format!("            findtime: {},\n", ron_str(&dur_text(j.findtime.secs()))));
    if let Some(b) = j.bantime {
        t.push_str(&format!("            bantime: Some({}),\n", ron_str(&dur_text(b.secs()))));
    }
    if let Some(p) = &j.ports {
        t.push_str(&format!("            ports: {},\n", ports_text(p)));
    }
    if let Some(p) = &j.prefix {
        t.push_str(&format!("            prefix: Some({}),\n", ron_raw(p)));
    }
    let rules: Vec<String> = j.rules.iter().map(|r| r.text.clone()).collect();
    for (field, list, pos) in [("rules", &rules, rpos), ("ignore", &j.ignore, ipos)] {
        if list.is_empty() {
            t.push_str(&format!("            {field}: [],\n"));
            continue;
        }
        t.push_str(&format!("            {field}: [\n"));
        for (k, r) in list.iter().enumerate() {
            if let Some(p) = pos.get(k).filter(|p| p.line > 0) {
                t.push_str(&format!("                // {}:{}\n", p.file, p.line));
            }
            t.push_str(&format!("                {},\n", ron_raw(r)));
        }
        t.push_str("            ],\n");
    }
    t.push_str("        ),\n");
    t
}

/// What is written must load and compile as it is.
fn check_pipeline(t: &str) -> Result<(), ImportError> {
    let nowhere = Path::new("/nonexistent/mailpipe-import");
    let cfg = Config::from_text("import.ron", t, nowhere).map_err(|e| ImportError::Output(e.to_string()))?;
    if !cfg.jails.is_empty() {
        crate::matcher::Matcher::new(&cfg.jails, &cfg.origins, &cfg.matcher).map_err(|e| ImportError::Output(e.to_string()))?;
    }
    cfg.jail_ports().map_err(|e| ImportError::Output(e.to_string()))?;
    Ok(())
}
