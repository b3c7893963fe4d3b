//! fail2ban's files as Python's `configparser` reads them, and fail2ban's rules for which files
//! one configuration name reads (`.conf`, `.d/`, `.local`, includes) and how they merge.

use super::*;

/// Options in the order written, values raw.
pub(super) type Options = Vec<(String, Spanned)>;

/// One parsed file: `[DEFAULT]` and the sections in order (with where each header is).
#[derive(Debug, Default)]
pub(super) struct IniFile {
    pub(super) defaults: Options,
    pub(super) sections: Vec<(String, Pos, Options)>,
}

/// Reads `text` as Python's `configparser` (fail2ban's settings: `;` inline comments after
/// whitespace, `#`/`;` full-line comments, `=` or `:`, strict) does.
pub(super) fn parse_ini(text: &str, file: &Rc<str>) -> Result<IniFile, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut p = IniParser {
        file,
        ini: IniFile::default(),
        cur: Cur::None,
        opt: None,
        indent_level: 0,
        added_sections: HashSet::new(),
        added_opts: HashSet::new(),
        cur_name: String::new(),
    };
    for (i, raw) in text.split('\n').enumerate() {
        p.line(i + 1, raw.strip_suffix('\r').unwrap_or(raw))?;
    }
    p.finish();
    Ok(p.ini)
}

/// The section [`parse_ini`] is in.
enum Cur {
    None,
    Default,
    Section(usize),
}

/// The option being written: its name and its values' lines, as (text, line).
type OptLines = (String, Vec<(String, usize)>);

/// [`parse_ini`]'s state between lines.
struct IniParser<'a> {
    file: &'a Rc<str>,
    ini: IniFile,
    cur: Cur,
    opt: Option<OptLines>,
    indent_level: usize,
    added_sections: HashSet<String>,
    added_opts: HashSet<(String, String)>,
    cur_name: String,
}

impl IniParser<'_> {
    /// Line `lineno` (without its line break): a continuation, a section header or an option.
    fn line(&mut self, lineno: usize, line: &str) -> Result<(), (usize, String)> {
        let (value, commented) = strip_comment(line);
        if value.is_empty() {
            if !commented && let Some((_, lines)) = &mut self.opt {
                lines.push((String::new(), lineno));
            }
            return Ok(());
        }
        let indent = line.chars().position(|c| !c.is_whitespace()).unwrap_or(0);
        if self.opt.is_some() && !matches!(self.cur, Cur::None) && indent > self.indent_level {
            if let Some((_, lines)) = &mut self.opt {
                lines.push((value.to_string(), lineno));
            }
            return Ok(());
        }
        self.indent_level = indent;
        if value.starts_with('[')
            && let Some(close) = value.rfind(']')
            && close >= 2
        {
            return self.section(lineno, value[1..close].to_string());
        }
        self.option(lineno, value)
    }

    /// A `[name]` header on line `lineno`.
    fn section(&mut self, lineno: usize, name: String) -> Result<(), (usize, String)> {
        self.finish();
        if name == "DEFAULT" {
            self.cur = Cur::Default;
        } else {
            if !self.added_sections.insert(name.clone()) {
                return Err((
                    lineno,
                    format!("section [{name}] written twice in this file (fail2ban refuses that)"),
                ));
            }
            self.ini.sections.push((
                name.clone(),
                Pos {
                    file: self.file.clone(),
                    line: lineno,
                },
                Vec::new(),
            ));
            self.cur = Cur::Section(self.ini.sections.len() - 1);
        }
        self.cur_name = name;
        Ok(())
    }

    /// `NAME = VALUE` (or `NAME: VALUE`) on line `lineno`.
    fn option(&mut self, lineno: usize, value: &str) -> Result<(), (usize, String)> {
        if matches!(self.cur, Cur::None) {
            return Err((lineno, format!("text before the first [section]: {value:?}")));
        }
        let Some(delim) = value.find(['=', ':']) else {
            return Err((
                lineno,
                format!("neither an option (NAME = VALUE), a [section] nor a continuation line (indent it): {value:?}"),
            ));
        };
        let name = value[..delim].trim_end().to_lowercase();
        if name.is_empty() {
            return Err((lineno, format!("an option without a name: {value:?}")));
        }
        self.finish();
        if !self.added_opts.insert((self.cur_name.clone(), name.clone())) {
            return Err((
                lineno,
                format!(
                    "option {name:?} written twice in [{}] of this file (fail2ban refuses that)",
                    self.cur_name
                ),
            ));
        }
        self.opt = Some((name, vec![(value[delim + 1..].trim().to_string(), lineno)]));
        Ok(())
    }

    /// The option being written, its lines joined, stored in its section.
    fn finish(&mut self) {
        let Some((name, lines)) = self.opt.take() else { return };
        let file = self.file;
        let mut v = Spanned::default();
        for (i, (t, line)) in lines.iter().enumerate() {
            let pos = Pos {
                file: file.clone(),
                line: *line,
            };
            if i > 0 {
                let prev = Pos {
                    file: file.clone(),
                    line: lines[i - 1].1,
                };
                v.push_str("\n", &prev);
            }
            v.push_str(t, &pos);
        }
        // configparser joins the lines and strips the end (trailing empty lines).
        let end = v.s.trim_end().len();
        let v = v.slice(0, end);
        let slot = match self.cur {
            Cur::Default => &mut self.ini.defaults,
            Cur::Section(i) => &mut self.ini.sections[i].2,
            Cur::None => return,
        };
        match slot.iter_mut().find(|(k, _)| *k == name) {
            Some(e) => e.1 = v,
            None => slot.push((name, v)),
        }
    }
}

/// A line's text before its comment (`;` after whitespace, or a `#`/`;` line), trimmed; and
/// whether it has a comment.
fn strip_comment(line: &str) -> (&str, bool) {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut comment_start: Option<usize> = None;
    for (k, &(off, c)) in chars.iter().enumerate() {
        if c == ';' && (k == 0 || chars[k - 1].1.is_whitespace()) {
            comment_start = Some(off);
            break;
        }
    }
    let stripped = line.trim();
    if stripped.starts_with('#') || stripped.starts_with(';') {
        comment_start = Some(0);
    }
    (line[..comment_start.unwrap_or(line.len())].trim(), comment_start.is_some())
}

/// A configuration as fail2ban's `ConfigReader` holds it: every file of one name merged.
#[derive(Debug, Default)]
pub(super) struct Store {
    pub(super) defaults: HashMap<String, Spanned>,
    /// Section names in the order first seen (`KNOWN/NAME` sections too).
    pub(super) order: Vec<String>,
    pub(super) sections: HashMap<String, HashMap<String, Spanned>>,
    /// Where each section was first written.
    pub(super) headers: HashMap<String, Pos>,
    /// The files read, relative to DIR, in order.
    pub(super) files: Vec<String>,
}

/// Reading files relative to the configuration directory, with their parses cached.
pub(super) struct Reader {
    pub(super) dir: PathBuf,
    pub(super) cache: HashMap<PathBuf, Option<Rc<IniFile>>>,
    pub(super) reads: usize,
}

/// A file that cannot be used, located: (file, line, reason); line 0 for the whole file.
pub(super) type FileError = (String, usize, String);

impl Reader {
    pub(super) fn new(dir: &Path) -> Reader {
        Reader {
            dir: dir.to_path_buf(),
            cache: HashMap::new(),
            reads: 0,
        }
    }

    /// `path` as notes show it: relative to DIR when inside it.
    pub(super) fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir).unwrap_or(path).display().to_string()
    }

    /// The parsed file; `None` when it does not exist (fail2ban skips a missing include).
    pub(super) fn parse(&mut self, path: &Path) -> Result<Option<Rc<IniFile>>, FileError> {
        if let Some(c) = self.cache.get(path) {
            return Ok(c.clone());
        }
        self.reads += 1;
        if self.reads > MAX_FILES {
            return Err((self.show(path), 0, format!("more than {MAX_FILES} files read: an include loop?")));
        }
        let shown = self.show(path);
        let parsed = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err((shown, 0, format!("cannot read: {e}"))),
            Ok(m) if !m.is_file() => None,
            Ok(m) if m.len() > MAX_FILE => return Err((shown, 0, format!("larger than {} KiB", MAX_FILE >> 10))),
            Ok(_) => {
                let bytes = std::fs::read(path).map_err(|e| (shown.clone(), 0, format!("cannot read: {e}")))?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| (shown.clone(), 0, "not UTF-8 (fail2ban reads its files as UTF-8)".to_string()))?;
                let file: Rc<str> = Rc::from(shown.as_str());
                Some(Rc::new(
                    parse_ini(&text, &file).map_err(|(line, reason)| (shown.clone(), line, reason))?,
                ))
            }
        };
        self.cache.insert(path.to_path_buf(), parsed.clone());
        Ok(parsed)
    }

    /// fail2ban's `_getIncludes`: each file with its `.local` sibling, each with its `before`
    /// files first and its `after` files last, recursively (a file already on the way is
    /// skipped).
    pub(super) fn includes(&mut self, files: &[PathBuf], seen: &[PathBuf], out: &mut Vec<PathBuf>) -> Result<(), FileError> {
        if seen.len() > 32 {
            return Ok(());
        }
        let mut expanded: Vec<PathBuf> = Vec::new();
        for f in files {
            expanded.push(f.clone());
            let local = f.with_extension("local");
            if !files.contains(&local) && local.is_file() {
                expanded.push(local);
            }
        }
        for f in expanded {
            let Some(ini) = self.parse(&f)? else { continue };
            let dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
            let mut lists: [Vec<PathBuf>; 2] = [Vec::new(), Vec::new()];
            if let Some((_, _, opts)) = ini.sections.iter().find(|(n, _, _)| n == "INCLUDES") {
                for (k, which) in ["before", "after"].iter().enumerate() {
                    let Some((_, v)) = opts.iter().find(|(n, _)| n == which) else {
                        continue;
                    };
                    for entry in v.s.split('\n').map(str::trim).filter(|e| !e.is_empty()) {
                        let r = if Path::new(entry).is_absolute() {
                            PathBuf::from(entry)
                        } else {
                            dir.join(entry)
                        };
                        if seen.contains(&r) {
                            continue;
                        }
                        let mut s = seen.to_vec();
                        s.push(f.clone());
                        self.includes(&[r], &s, &mut lists[k])?;
                    }
                }
            }
            let [before, after] = lists;
            out.extend(before);
            out.push(f);
            out.extend(after);
        }
        Ok(())
    }

    /// fail2ban's `ConfigReaderUnshared.read(name)`: NAME.conf, NAME.d/*.conf, NAME.local,
    /// NAME.d/*.local, with includes, merged. `None` when none of them exists.
    pub(super) fn read(&mut self, name: &str) -> Result<Option<Store>, FileError> {
        let base = self.dir.join(name);
        let glob = |ext: &str| -> Vec<PathBuf> {
            let d = PathBuf::from(format!("{}.d", base.display()));
            let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == ext) && p.is_file())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        let mut files = vec![PathBuf::from(format!("{}.conf", base.display()))];
        files.extend(glob("conf"));
        files.push(PathBuf::from(format!("{}.local", base.display())));
        files.extend(glob("local"));
        files.retain(|f| f.is_file());
        if files.is_empty() {
            return Ok(None);
        }
        let mut full = Vec::new();
        self.includes(&files, &[], &mut full)?;
        let mut store = Store::default();
        for f in full {
            let Some(ini) = self.parse(&f)? else { continue };
            store.files.push(self.show(&f));
            for (k, v) in &ini.defaults {
                store.defaults.insert(k.clone(), v.clone());
            }
            for (name, pos, opts) in &ini.sections {
                // fail2ban's conditional sections (`[Init?family=inet6]`) hold options for actions:
                // their keys get the condition appended, so nothing here looks them up.
                let (name, cond) = match name.split_once('?') {
                    Some((n, c)) if !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_') => (n.to_string(), format!("?{c}")),
                    _ => (name.clone(), String::new()),
                };
                store.headers.entry(name.clone()).or_insert_with(|| pos.clone());
                if !store.sections.contains_key(&name) {
                    store.order.push(name.clone());
                    store.sections.insert(name.clone(), HashMap::new());
                }
                let known: Vec<(String, Spanned)> = {
                    let sec = &store.sections[&name];
                    opts.iter()
                        .filter_map(|(k, _)| sec.get(&format!("{k}{cond}")).map(|v| (format!("{k}{cond}"), v.clone())))
                        .collect()
                };
                if !known.is_empty() {
                    let kname = format!("KNOWN/{name}");
                    if !store.sections.contains_key(&kname) {
                        store.order.push(kname.clone());
                    }
                    store.sections.entry(kname).or_default().extend(known);
                }
                let sec = store.sections.get_mut(&name).expect("inserted above");
                for (k, v) in opts {
                    sec.insert(format!("{k}{cond}"), v.clone());
                }
            }
        }
        Ok(Some(store))
    }
}
