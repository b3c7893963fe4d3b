//! `%(name)s` interpolation: configparser's rules with fail2ban's extensions (`known/`, `default/`,
//! `section/`, `__name__`, the prefix line kept as a mark).

use super::*;

/// The fail2ban `%(__prefix_line)s` stands for the syslog header; it is kept as this mark
/// through interpolation so the regex converter can strip it (mailpipe's parser takes the header
/// off the line before any rule sees it).
pub(super) const PREFIX_MARK: char = '\u{E000}';

/// `vars` of a `get`: values that come before the section's (lower-case names).
pub(super) type Vars = BTreeMap<String, Spanned>;

impl Store {
    pub(super) fn raw<'a>(&'a self, section: &str, opt: &str, vars: &'a Vars) -> Option<&'a Spanned> {
        vars.get(opt)
            .or_else(|| self.sections.get(section).and_then(|s| s.get(opt)))
            .or_else(|| self.defaults.get(opt))
    }

    pub(super) fn has_section(&self, section: &str) -> bool {
        section == "DEFAULT" || self.sections.contains_key(section)
    }

    /// configparser's `get(section, opt, vars=vars)` with fail2ban's extensions; `Ok(None)`
    /// when the option is not set. `mark` turns `%(__prefix_line)s` into [`PREFIX_MARK`].
    pub(super) fn get(&self, section: &str, opt: &str, vars: &Vars, mark: bool) -> Result<Option<Spanned>, String> {
        if !self.has_section(section) {
            return Ok(None);
        }
        let Some(raw) = self.raw(section, opt, vars) else { return Ok(None) };
        self.interpolate(raw, section, vars, mark, 1).map(Some)
    }

    pub(super) fn interpolate(&self, v: &Spanned, section: &str, vars: &Vars, mark: bool, depth: usize) -> Result<Spanned, String> {
        if depth > 10 {
            return Err("interpolation nested more than 10 deep (a %(name)s loop?)".to_string());
        }
        let s = &v.s;
        let mut out = Spanned::default();
        let mut i = 0;
        while let Some(p) = s[i..].find('%') {
            let p = i + p;
            out.push(&v.slice(i, p));
            let rest = &s[p..];
            if rest.starts_with("%%") {
                out.push(&v.slice(p, p + 1));
                i = p + 2;
                continue;
            }
            let name_end = rest
                .strip_prefix("%(")
                .and_then(|r| r.find(')'))
                .filter(|&e| rest[2 + e..].starts_with(")s"));
            let Some(e) = name_end.filter(|&e| e > 0) else {
                return Err(format!(
                    "'%' must be followed by '%' or '(name)s', found {:?}",
                    rest.chars().take(20).collect::<String>()
                ));
            };
            let name = rest[2..2 + e].to_lowercase();
            let here = v.pos_at(p);
            i = p + 2 + e + 2;
            if mark && name == "__prefix_line" {
                out.push(&self.prefix_line(section, vars, here, depth)?);
                continue;
            }
            if name == "__name__" {
                out.push_str(section, &here);
                continue;
            }
            let value = match self.raw(section, &name, vars) {
                Some(x) => Some(x.clone()),
                None => self.section_ref(section, &name),
            };
            let Some(value) = value else {
                return Err(format!("%({name})s is not defined (in [{section}] or [DEFAULT])"));
            };
            if value.s.contains('%') {
                out.push(&self.interpolate(&value, section, vars, mark, depth + 1)?);
            } else {
                out.push(&value);
            }
        }
        out.push(&v.slice(i, s.len()));
        Ok(out)
    }

    /// `%(__prefix_line)s` in a filter: [`PREFIX_MARK`] for fail2ban's own (common.conf's), the
    /// mark and what follows for a filter's `%(known/__prefix_line)s...` (sendmail's queue id);
    /// another definition is interpolated as it is (its regex then has no mark, and says so).
    pub(super) fn prefix_line(&self, section: &str, vars: &Vars, here: Pos, depth: usize) -> Result<Spanned, String> {
        let mark = Spanned::new(&PREFIX_MARK.to_string(), here);
        let Some(raw) = self.raw(section, "__prefix_line", vars) else {
            return Ok(mark);
        };
        if raw.pos_at(0).file.ends_with("common.conf") {
            return Ok(mark);
        }
        let known = "%(known/__prefix_line)s";
        if raw.s.starts_with(known) {
            let mut out = mark;
            out.push(&self.interpolate(&raw.slice(known.len(), raw.s.len()), section, vars, true, depth + 1)?);
            return Ok(out);
        }
        self.interpolate(raw, section, vars, false, depth + 1)
    }

    /// `%(section/name)s`, `%(known/name)s`, `%(default/name)s`: the raw value.
    pub(super) fn section_ref(&self, section: &str, name: &str) -> Option<Spanned> {
        let (sec, opt) = name.split_once('/')?;
        if sec.is_empty() || !sec.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') || opt.is_empty() {
            return None;
        }
        let found = match sec.to_lowercase().as_str() {
            "default" => None,
            "known" => self.sections.get(&format!("KNOWN/{section}")).and_then(|s| s.get(opt)),
            // A section that does not exist is no fallback to [DEFAULT] (configparser's rule).
            _ => Some(self.sections.get(sec)?.get(opt)).flatten(),
        };
        found.or_else(|| self.defaults.get(opt)).cloned()
    }

    /// fail2ban's `get_ex`: `section/name` reads another section's value (interpolated there).
    pub(super) fn get_ex(&self, section: &str, name: &str, vars: &Vars, mark: bool) -> Result<Option<Spanned>, String> {
        if let Some((sec, opt)) = name.split_once('/')
            && !sec.is_empty()
            && sec.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            && !opt.is_empty()
            && !opt.contains(char::is_whitespace)
            && !opt.contains('>')
        {
            let tries: Vec<String> = match sec.to_lowercase().as_str() {
                "known" => vec![format!("KNOWN/{section}"), section.to_string()],
                "default" => vec!["DEFAULT".to_string()],
                _ => vec![sec.to_string()],
            };
            for t in tries {
                if let Some(v) = self.get(&t, &opt.to_lowercase(), &Vars::new(), mark)? {
                    return Ok(Some(v));
                }
            }
        }
        self.get(section, &name.to_lowercase(), vars, mark)
    }
}
