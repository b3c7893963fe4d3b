//! A filter as one jail reads it: its files, arguments, `[Init]`, and fail2ban's `<tag>` substitution.

use super::*;

/// A filter as one jail reads it.
pub(super) struct FilterCtx {
    pub(super) name: String,
    pub(super) store: Store,
    /// The filter's arguments, its `[Init]`, `logtype` (lower-case names): they win.
    pub(super) init: Vars,
    /// `vars` of its lookups: the jail's options, then `init` over them.
    pub(super) vars: Vars,
    pub(super) memo: std::cell::RefCell<HashMap<String, Option<Spanned>>>,
}

impl FilterCtx {
    /// fail2ban's tag resolution (`getCombOption`): an argument or `[Init]` value, else the
    /// `[Definition]` option (`section/name` reads another section), tags inside expanded.
    pub(super) fn resolve(&self, name: &str, stack: &mut Vec<String>) -> Result<Option<Spanned>, String> {
        if let Some(v) = self.memo.borrow().get(name) {
            return Ok(v.clone());
        }
        if stack.iter().any(|s| s == name) || stack.len() > 25 {
            return Err(format!("the tag <{name}> refers to itself (fail2ban: recursive tag definitions)"));
        }
        let raw = match self.init.get(&name.to_lowercase()) {
            Some(v) => Some(v.clone()),
            None => self.store.get_ex("Definition", name, &self.vars, true)?,
        };
        let out = match raw {
            None => None,
            Some(r) => {
                stack.push(name.to_string());
                let e = self.expand(&r, stack);
                stack.pop();
                Some(e?)
            }
        };
        self.memo.borrow_mut().insert(name.to_string(), out.clone());
        Ok(out)
    }

    /// fail2ban's `substituteRecursiveTags` on one value: `<name>` replaced while one resolves
    /// (`<mdre-<mode>>` inside out); unknown tags (`<HOST>`, `<F-USER>`) stay.
    pub(super) fn expand(&self, v: &Spanned, stack: &mut Vec<String>) -> Result<Spanned, String> {
        let mut v = v.clone();
        let (mut from, mut count) = (0usize, 0usize);
        while let Some(p) = v.s[from..].find('<').map(|p| p + from) {
            let rest = &v.s[p + 1..];
            let Some(end) = rest.find(['<', '>', ' ']).filter(|&e| e > 0 && rest[e..].starts_with('>')) else {
                from = p + 1;
                continue;
            };
            let name = rest[..end].to_string();
            let tag_end = p + 1 + end + 1;
            let repl = if name == "__prefix_line" {
                let pl = self.store.prefix_line("Definition", &self.vars, v.pos_at(p), 1)?;
                Some(self.expand(&pl, stack)?)
            } else {
                self.resolve(&name, stack)?
            };
            match repl {
                None => from = tag_end,
                Some(r) => {
                    v = v.splice(p, tag_end, &r);
                    count += 1;
                    if count > 10_000 || v.s.len() > MAX_FILE as usize {
                        return Err("tag substitution does not end (fail2ban: recursive tag definitions)".to_string());
                    }
                    from = 0;
                }
            }
        }
        Ok(v)
    }

    pub(super) fn opt(&self, name: &str) -> Result<Option<Spanned>, String> {
        self.resolve(name, &mut Vec::new())
    }
}

impl Importer {
    /// The filter `name` as jail `j` reads it.
    pub(super) fn open_filter(
        &mut self,
        j: &str,
        name: &str,
        args: &[(String, String)],
        backend: &str,
    ) -> Result<FilterCtx, (Pos, String)> {
        let at = self.pos_of(j, "filter");
        if name.contains("..") || name.starts_with('/') {
            return Err((at, format!("filter {name:?} is outside filter.d")));
        }
        let store = match self.reader.read(&format!("filter.d/{name}")) {
            Ok(Some(s)) => s,
            Ok(None) => return Err((at, format!("filter.d/{name}.conf not found: fail2ban skips this jail"))),
            Err((file, line, reason)) => {
                return Err((
                    Pos {
                        file: Rc::from(file.as_str()),
                        line,
                    },
                    format!("{reason}: fail2ban cannot read filter {name}, so it skips jail [{j}]"),
                ));
            }
        };
        let mut init = Vars::new();
        for (k, v) in args {
            init.insert(k.to_lowercase(), Spanned::new(v, at.clone()));
        }
        let own_logtype = store.sections.get("Definition").is_some_and(|d| d.contains_key("logtype"));
        if !init.contains_key("logtype") && !own_logtype {
            let lt = if backend.starts_with("systemd") { "journal" } else { "file" };
            init.insert("logtype".to_string(), Spanned::new(lt, at.clone()));
        }
        if let Some(sec) = store.sections.get("Init") {
            let mut keys: Vec<&String> = sec.keys().collect();
            keys.sort();
            for k in keys {
                let v = store
                    .get("Init", k, &Vars::new(), true)
                    .map_err(|e| (sec[k].pos_at(0), format!("[Init] {k}: {e}")))?
                    .unwrap_or_default();
                if !k.starts_with("known/") {
                    init.insert(format!("known/{k}"), v.clone());
                }
                init.entry(k.clone()).or_insert(v);
            }
        }
        let mut vars = Vars::new();
        for k in ["enabled", "backend", "filter"] {
            if let Some(v) = self.jails.raw(j, k, &Vars::new()) {
                vars.insert(k.to_string(), v.clone());
            }
        }
        vars.extend(init.clone());
        Ok(FilterCtx {
            name: name.to_string(),
            store,
            init,
            vars,
            memo: Default::default(),
        })
    }
}
