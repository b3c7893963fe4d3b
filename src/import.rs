//! `mailpipe import fail2ban [DIR]`: a fail2ban configuration as a pipeline.
//!
//! [`fail2ban`] reads a fail2ban configuration directory the way fail2ban's own client does and
//! writes one pipeline file (RON text) with the jails it enables:
//!
//! - **Files**: `jail.conf`, `jail.d/*.conf`, `jail.local`, `jail.d/*.local` in that order, each
//!   with its `[INCLUDES] before`/`after` files and every file's `.local` sibling, merged section
//!   by section (a later file's option wins; the earlier value stays reachable as
//!   `%(known/NAME)s`). A filter is `filter.d/NAME.conf`, `filter.d/NAME.d/*.conf`,
//!   `filter.d/NAME.local`, `filter.d/NAME.d/*.local` with their includes (`common.conf`, ...).
//!   Python's `configparser` rules: `;` comments after a space, indented continuation lines,
//!   `%(name)s` interpolation (vars, then the section, then `[DEFAULT]`; `%(section/name)s`,
//!   `%(known/name)s`, `%(default/name)s`, `%(__name__)s`), duplicate sections or options in one
//!   file are errors.
//! - **Filters**: `filter = NAME[mode=..., arg=...]` arguments and `[Init]` values override the
//!   filter's `[Definition]`; fail2ban's `<tag>` substitution (`<mdre-<mode>>`,
//!   `<lt_<logtype>/__prefix_line>`) is done as its `substituteRecursiveTags` does; the jail's own
//!   `failregex`/`ignoreregex`/`prefregex` replace the filter's.
//! - **Jails** whose filter and mode is one mailpipe ships (the table [`SHIPPED`]: postfix's
//!   modes, dovecot, sshd's modes, exim, sendmail, courier, roundcube, qmail, the IMAP servers,
//!   the webmails, ...) become an `include` of the shipped jail with the user's `maxretry`,
//!   `findtime`, `bantime` and `port`s in `set`. Only the stock filter maps: a filter with a
//!   `.local` file or a `NAME.d/` directory (or `common.local`), arguments other than
//!   `mode`/`logtype`/`maxlines`/`journalmatch`, or regexes set in the jail is converted instead.
//!   (An edited `filter.d/NAME.conf` cannot be told from the stock one: fail2ban's rule is to
//!   edit `.local` files.) Two fail2ban jails mapping to one shipped jail: the second becomes a
//!   copy of it under its own name.
//! - **Other jails** are converted to `Jail(...)`s: `^%(__prefix_line)s` (the syslog header,
//!   which mailpipe's parser takes off) is stripped and `_daemon` becomes the `programs` globs (a
//!   superset of the regex where it has `\w+` and the like, plus `""` for lines without a tag).
//!   fail2ban's prefix line also takes, on a line without a host name, its first word as the
//!   host whatever it is (a Dovecot log file's `pop3-login:`, a multilog line's `dovecot-auth:`):
//!   a converted jail matches such a line only if its program is the `_daemon`'s (narrower; the
//!   shipped jails read those formats). The `prefregex` before `<F-CONTENT>` becomes the rules'
//!   common start (the jail's `prefix` where every rule and ignore rule shares it);
//!   `<HOST>`/`<ADDR>` become `<HOST>` (with fail2ban's optional brackets), `<IP4>`/`<IP6>` stay;
//!   `<F-USER>X</F-USER>` becomes `<USER>` where X is exactly mailpipe's user pattern
//!   `[^\s,>)]*`, else the plain group `(?:X)` (the user is then not reported: mailpipe's
//!   `<USER>` in place of `\S+` would let a user name with a `,` or `)` escape counting, and in
//!   place of `\w+` match more than fail2ban); other `<F-...>` groups, named and capturing groups
//!   become plain groups. Python-only syntax with an equivalent is translated: `{,n}`, a `{` that
//!   is no repetition, `[^[]` (a `[` in a class), `\Z`, octal and `\x`/`\u` escapes, `\<`/`\>`
//!   (literal in Python), `(?x)`, `(?a)`, `(?u)`, `(?m)`, `((?i)...)` (fail2ban's own rewrite to
//!   `(?i:...)`), `(?#...)`. A regex fail2ban searches (no `^`) gets a leading `.*`, which is what
//!   fail2ban does (a note says so); an anchored one stays anchored. mailpipe's `\w`, `\d`, `\s`
//!   are ASCII (Python's are Unicode).
//! - **Rewrites** of what regex-automata lacks, each noted, none matching a line fail2ban does
//!   not count (one proviso: `minus_nofail` below, exact where the word is followed by fixed text):
//!   - a negative look-ahead at the top level of a rule, `X(?!A)Y`, becomes the rule `XY` plus
//!     the jail ignore rule `XA` (a line it matches is not counted by any rule of the jail: so
//!     `XY` can only count lines the original counts, and may count fewer);
//!   - a positive look-ahead ending a rule becomes plain text (a rule matches a prefix of the
//!     message anyway);
//!   - a tempered token `(?:(?!L).)*` (L literal) at the end of a rule, or followed by L itself
//!     (sshd's `(?:(?! from ).)*? from <HOST>`), becomes `.*` plus ignore rules for the lines
//!     where an L starts inside it (`X.*L`, or `X.*L.*L` and its overlapping forms);
//!   - a conditional `(?(name)yes|no)` on a named group that is optional or one of an
//!     alternation's branches is expanded into one rule per case;
//!   - an alternative of the rule's top level holding a look-around (postfix's `mdpr-ddos`) or a
//!     `<F-NOFAIL>` splits the rule into one rule per alternative;
//!   - with `<F-MLFID>` (fail2ban's multi-line matching), `(?:<F-NOFAIL>WORD</F-NOFAIL>|C+)`
//!     (sshd's `publickey`) becomes "C+ but WORD" (`[C&&[^w]]C*|w...`), and a rule or case marked
//!     `<F-NOFAIL>`/`<F-MLFGAINED>` (no failure) becomes an ignore rule.
//!
//!   Refused: a look-behind, a look-ahead in a repetition or a positive one followed by more,
//!   backreferences (`\1`, `(?P=name)`), conditionals on numbered or repeated groups, atomic
//!   groups and possessive repetitions, `<DNS>`, `<CIDR>`, `<SUBNET>`, `<F-ID/>` (mailpipe bans
//!   addresses it read, never names), `<SKIPLINES>` and rules without an address (fail2ban's
//!   multi-line matching: mailpipe reads one line at a time).
//! - **Refusing never loosens**: a failure regex that cannot be converted is left out (the jail
//!   counts less); an ignore regex or a `prefregex` that cannot be converted refuses the whole
//!   jail (without it the jail would count lines fail2ban does not), as does a regex fail2ban
//!   itself would not compile. Every converted rule is compiled by mailpipe's matcher before it
//!   is written.
//! - **Policy**: `[DEFAULT] bantime` → `policy.bantime` (each jail's own `bantime` is written for
//!   it); `bantime.increment`/`bantime.factor`/`bantime.maxtime` → `policy.increment` (fail2ban's
//!   default formula, `bantime × 2^(n-1) × factor` from the second ban on, is mailpipe's
//!   `factor: 2.0` when `bantime.factor` is 1; another factor, `bantime.multipliers` or
//!   `bantime.formula` are noted); `ignoreip` of `[DEFAULT]` and of the enabled jails →
//!   `policy.ignore` (mailpipe's list is for every jail); the jail with the `recidive` filter →
//!   `policy.recidive` (`maxretry` bans within `findtime` earn `bantime`, on every port).
//!   `port` → the jail's `ports` (a `banaction` with `allports`, or `0:65535`: every port).
//!
//! # The report
//!
//! Nothing is dropped silently. Every jail, regex or option that is not converted as fail2ban
//! would run it is a [`Note`] (`file:line: message`, the file relative to DIR, the line of the
//! `.conf` text the construct was written on); the notes are returned in [`Import::notes`] and
//! also written as `//` comments at the top of [`Import::pipeline`], so the file itself says what
//! it does not do. Options that configure what mailpipe does elsewhere or not at all (`logpath`,
//! `backend`, `action`, `usedns`, `maxlines`, `datepattern`, ...) are listed once for
//! `[DEFAULT]` and once per enabled jail that sets them.
//!
//! Errors ([`ImportError`]) are what would stop fail2ban itself: no configuration in DIR, an
//! unreadable file, a jail file that is not valid `configparser` syntax (`file:line: reason`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::config::{Config, Jail, PortSpec};

/// What the import produced.
#[derive(Debug, Clone)]
pub struct Import {
    /// The pipeline file (RON), the notes as `//` comments at its top.
    pub pipeline: String,
    /// Everything not converted as fail2ban would run it.
    pub notes: Vec<Note>,
}

/// One thing the pipeline does not do as fail2ban would, where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The file, relative to the configuration directory (absolute when outside it).
    pub file: String,
    /// 1-based line; 0 when the note is about the file as a whole.
    pub line: usize,
    /// What is not converted, why, and the rewrite where there is one.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

/// What stops an import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// DIR has neither `jail.conf` nor `jail.local`.
    #[error("{dir}: no fail2ban configuration here (neither jail.conf nor jail.local)")]
    NotFound {
        /// The directory.
        dir: String,
    },
    /// A file that exists could not be read.
    #[error("{file}: cannot read: {reason}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// A jail file fail2ban would not read either.
    #[error("{file}:{line}: {reason}")]
    Syntax {
        /// The file, relative to DIR.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The pipeline written does not load: a bug here, reported rather than printed.
    #[error("the converted pipeline does not load (a bug in the importer): {0}")]
    Output(String),
}

/// The default directory.
pub const DEFAULT_DIR: &str = "/etc/fail2ban";

/// Largest configuration file read (fail2ban's are a few KiB).
const MAX_FILE: u64 = 1 << 20;
/// Most files one configuration reads (includes and all).
const MAX_FILES: usize = 512;

// ---------------------------------------------------------------------------------------------
// Text with the place each part was written.

/// Where a piece of text was written: a file (relative to DIR) and a 1-based line (0: nowhere).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pos {
    file: Rc<str>,
    line: usize,
}

impl Pos {
    fn none() -> Pos {
        Pos {
            file: Rc::from(""),
            line: 0,
        }
    }
}

/// A string whose every byte knows where it was written: configuration values survive
/// interpolation with their origins, so a construct deep in an expanded regex is reported at
/// the line it was typed on.
#[derive(Debug, Clone, Default)]
struct Spanned {
    s: String,
    /// (offset, where the bytes from there on were written), ascending offsets.
    marks: Vec<(usize, Pos)>,
}

impl Spanned {
    fn new(s: &str, pos: Pos) -> Spanned {
        let mut t = Spanned::default();
        t.push_str(s, &pos);
        t
    }

    fn push_str(&mut self, s: &str, pos: &Pos) {
        if s.is_empty() {
            return;
        }
        if self.marks.last().map(|(_, p)| p) != Some(pos) {
            self.marks.push((self.s.len(), pos.clone()));
        }
        self.s.push_str(s);
    }

    fn push(&mut self, other: &Spanned) {
        for (i, (off, pos)) in other.marks.iter().enumerate() {
            let end = other.marks.get(i + 1).map_or(other.s.len(), |m| m.0);
            self.push_str(&other.s[*off..end], pos);
        }
    }

    fn slice(&self, from: usize, to: usize) -> Spanned {
        let mut out = Spanned::default();
        for (i, (off, pos)) in self.marks.iter().enumerate() {
            let end = self.marks.get(i + 1).map_or(self.s.len(), |m| m.0);
            let (a, b) = ((*off).max(from), end.min(to));
            if a < b {
                out.push_str(&self.s[a..b], pos);
            }
        }
        out
    }

    /// Replaces bytes `from..to` (char boundaries) by `with`.
    fn splice(&self, from: usize, to: usize, with: &Spanned) -> Spanned {
        let mut out = self.slice(0, from);
        out.push(with);
        out.push(&self.slice(to, self.s.len()));
        out
    }

    fn pos_at(&self, off: usize) -> Pos {
        self.marks
            .iter()
            .rev()
            .find(|(o, _)| *o <= off)
            .or(self.marks.first())
            .map_or_else(Pos::none, |(_, p)| p.clone())
    }

    fn lines(&self) -> Vec<Spanned> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, b) in self.s.bytes().enumerate() {
            if b == b'\n' {
                out.push(self.slice(start, i));
                start = i + 1;
            }
        }
        out.push(self.slice(start, self.s.len()));
        out
    }

    fn trim(&self) -> Spanned {
        let start = self.s.len() - self.s.trim_start().len();
        let end = self.s.trim_end().len().max(start);
        self.slice(start, end)
    }
}

// ---------------------------------------------------------------------------------------------
// configparser files.

/// Options in the order written, values raw.
type Options = Vec<(String, Spanned)>;

/// One parsed file: `[DEFAULT]` and the sections in order (with where each header is).
#[derive(Debug, Default)]
struct IniFile {
    defaults: Options,
    sections: Vec<(String, Pos, Options)>,
}

/// Reads `text` as Python's `configparser` (fail2ban's settings: `;` inline comments after
/// whitespace, `#`/`;` full-line comments, `=` or `:`, strict) does.
fn parse_ini(text: &str, file: &Rc<str>) -> Result<IniFile, (usize, String)> {
    enum Cur {
        None,
        Default,
        Section(usize),
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut ini = IniFile::default();
    let mut cur = Cur::None;
    // The option being written: (its values' lines, as (text, line)).
    let mut opt: Option<(String, Vec<(String, usize)>)> = None;
    let mut indent_level = 0usize;
    let mut added_sections: HashSet<String> = HashSet::new();
    let mut added_opts: HashSet<(String, String)> = HashSet::new();
    let mut cur_name = String::new();

    fn finish(ini: &mut IniFile, cur: &Cur, opt: Option<(String, Vec<(String, usize)>)>, file: &Rc<str>) {
        let Some((name, lines)) = opt else { return };
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
        let slot = match cur {
            Cur::Default => &mut ini.defaults,
            Cur::Section(i) => &mut ini.sections[*i].2,
            Cur::None => return,
        };
        match slot.iter_mut().find(|(k, _)| *k == name) {
            Some(e) => e.1 = v,
            None => slot.push((name, v)),
        }
    }

    for (i, raw) in text.split('\n').enumerate() {
        let lineno = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
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
        let value = line[..comment_start.unwrap_or(line.len())].trim();
        if value.is_empty() {
            if comment_start.is_none()
                && let Some((_, lines)) = &mut opt
            {
                lines.push((String::new(), lineno));
            }
            continue;
        }
        let indent = chars.iter().position(|&(_, c)| !c.is_whitespace()).unwrap_or(0);
        if opt.is_some() && !matches!(cur, Cur::None) && indent > indent_level {
            if let Some((_, lines)) = &mut opt {
                lines.push((value.to_string(), lineno));
            }
            continue;
        }
        indent_level = indent;
        if value.starts_with('[')
            && let Some(close) = value.rfind(']')
            && close >= 2
        {
            finish(&mut ini, &cur, opt.take(), file);
            let name = value[1..close].to_string();
            if name == "DEFAULT" {
                cur = Cur::Default;
            } else {
                if !added_sections.insert(name.clone()) {
                    return Err((
                        lineno,
                        format!("section [{name}] written twice in this file (fail2ban refuses that)"),
                    ));
                }
                ini.sections.push((
                    name.clone(),
                    Pos {
                        file: file.clone(),
                        line: lineno,
                    },
                    Vec::new(),
                ));
                cur = Cur::Section(ini.sections.len() - 1);
            }
            cur_name = name;
            continue;
        }
        if matches!(cur, Cur::None) {
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
        finish(&mut ini, &cur, opt.take(), file);
        if !added_opts.insert((cur_name.clone(), name.clone())) {
            return Err((
                lineno,
                format!("option {name:?} written twice in [{cur_name}] of this file (fail2ban refuses that)"),
            ));
        }
        opt = Some((name, vec![(value[delim + 1..].trim().to_string(), lineno)]));
    }
    finish(&mut ini, &cur, opt.take(), file);
    Ok(ini)
}

/// A configuration as fail2ban's `ConfigReader` holds it: every file of one name merged.
#[derive(Debug, Default)]
struct Store {
    defaults: HashMap<String, Spanned>,
    /// Section names in the order first seen (`KNOWN/NAME` sections too).
    order: Vec<String>,
    sections: HashMap<String, HashMap<String, Spanned>>,
    /// Where each section was first written.
    headers: HashMap<String, Pos>,
    /// The files read, relative to DIR, in order.
    files: Vec<String>,
}

/// Reading files relative to the configuration directory, with their parses cached.
struct Reader {
    dir: PathBuf,
    cache: HashMap<PathBuf, Option<Rc<IniFile>>>,
    reads: usize,
}

/// A file that cannot be used, located: (file, line, reason); line 0 for the whole file.
type FileError = (String, usize, String);

impl Reader {
    fn new(dir: &Path) -> Reader {
        Reader {
            dir: dir.to_path_buf(),
            cache: HashMap::new(),
            reads: 0,
        }
    }

    /// `path` as notes show it: relative to DIR when inside it.
    fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir).unwrap_or(path).display().to_string()
    }

    /// The parsed file; `None` when it does not exist (fail2ban skips a missing include).
    fn parse(&mut self, path: &Path) -> Result<Option<Rc<IniFile>>, FileError> {
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
    fn includes(&mut self, files: &[PathBuf], seen: &[PathBuf], out: &mut Vec<PathBuf>) -> Result<(), FileError> {
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
    fn read(&mut self, name: &str) -> Result<Option<Store>, FileError> {
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

// ---------------------------------------------------------------------------------------------
// Interpolation.

/// The fail2ban `%(__prefix_line)s` stands for the syslog header; it is kept as this mark
/// through interpolation so the regex converter can strip it (mailpipe's parser takes the header
/// off the line before any rule sees it).
const PREFIX_MARK: char = '\u{E000}';

/// `vars` of a `get`: values that come before the section's (lower-case names).
type Vars = BTreeMap<String, Spanned>;

impl Store {
    fn raw<'a>(&'a self, section: &str, opt: &str, vars: &'a Vars) -> Option<&'a Spanned> {
        vars.get(opt)
            .or_else(|| self.sections.get(section).and_then(|s| s.get(opt)))
            .or_else(|| self.defaults.get(opt))
    }

    fn has_section(&self, section: &str) -> bool {
        section == "DEFAULT" || self.sections.contains_key(section)
    }

    /// configparser's `get(section, opt, vars=vars)` with fail2ban's extensions; `Ok(None)`
    /// when the option is not set. `mark` turns `%(__prefix_line)s` into [`PREFIX_MARK`].
    fn get(&self, section: &str, opt: &str, vars: &Vars, mark: bool) -> Result<Option<Spanned>, String> {
        if !self.has_section(section) {
            return Ok(None);
        }
        let Some(raw) = self.raw(section, opt, vars) else { return Ok(None) };
        self.interpolate(raw, section, vars, mark, 1).map(Some)
    }

    fn interpolate(&self, v: &Spanned, section: &str, vars: &Vars, mark: bool, depth: usize) -> Result<Spanned, String> {
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
    fn prefix_line(&self, section: &str, vars: &Vars, here: Pos, depth: usize) -> Result<Spanned, String> {
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
    fn section_ref(&self, section: &str, name: &str) -> Option<Spanned> {
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
    fn get_ex(&self, section: &str, name: &str, vars: &Vars, mark: bool) -> Result<Option<Spanned>, String> {
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

/// Python's `_as_bool`.
fn as_bool(v: &str) -> bool {
    matches!(v.trim().to_lowercase().as_str(), "1" | "on" | "true" | "yes")
}

/// fail2ban's `extractOptions`: `name[a=1, b="x, y"]` → ("name", {a: 1, b: "x, y"}).
fn extract_options(v: &str) -> Result<(String, Vec<(String, String)>), String> {
    let v = v.trim();
    let (name, rest) = match v.find('[') {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let name = name.trim().to_string();
    if name.is_empty() {
        return Err(format!("no name in {v:?}"));
    }
    let mut opts = Vec::new();
    let Some(rest) = rest else { return Ok((name, opts)) };
    let Some(body) = rest.trim_end().strip_suffix(']') else {
        return Err(format!("{v:?}: '[' without ']'"));
    };
    let chars: Vec<char> = body.chars().collect();
    let mut i = 0;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || "_-.".contains(chars[i])) {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        if key.is_empty() || chars.get(i) != Some(&'=') {
            return Err(format!(
                "{v:?}: expected NAME=VALUE at {:?}",
                chars[start..].iter().take(25).collect::<String>()
            ));
        }
        i += 1;
        let value: String = match chars.get(i) {
            Some(&q) if q == '"' || q == '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == q)
                    .ok_or_else(|| format!("{v:?}: unclosed {q}"))?;
                let s = chars[i + 1..i + 1 + end].iter().collect();
                i += end + 2;
                s
            }
            _ => {
                let s0 = i;
                while i < chars.len() && chars[i] != ',' && chars[i] != ']' {
                    i += 1;
                }
                chars[s0..i].iter().collect()
            }
        };
        // `][` separates option groups.
        if chars.get(i) == Some(&']') {
            i += 1;
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if chars.get(i) == Some(&'[') {
                i += 1;
            } else if i < chars.len() {
                return Err(format!("{v:?}: unexpected text after ']'"));
            }
        } else if i < chars.len() && chars[i] != ',' {
            return Err(format!("{v:?}: unexpected {:?}", chars[i]));
        }
        opts.push((key.trim().to_string(), value.trim().to_string()));
    }
    Ok((name, opts))
}

/// fail2ban's `MyTime.str2seconds`: `600`, `10m`, `1h 30m`, `1d12h`, `2w`, `1mo`, `1y`,
/// `1year-6mo`; `-1` is forever.
fn seconds(v: &str) -> Result<f64, String> {
    let bad = || format!("{v:?} is not a time fail2ban reads (e.g. 600, 10m, 1h 30m, 1d, 1w)");
    let s = v.trim().to_lowercase();
    if s.is_empty() {
        return Err(bad());
    }
    let chars: Vec<char> = s.chars().collect();
    let (mut i, mut total, mut sign, mut any) = (0, 0.0f64, 1.0f64, false);
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || c == '+' {
            i += 1;
            continue;
        }
        if c == '-' {
            sign = -sign;
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
            i += 1;
        }
        if start == i {
            return Err(bad());
        }
        let num: f64 = chars[start..i].iter().collect::<String>().parse().map_err(|_| bad())?;
        while i < chars.len() && chars[i] == ' ' {
            i += 1;
        }
        let ustart = i;
        while i < chars.len() && chars[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit: String = chars[ustart..i].iter().collect();
        let mult = match unit.as_str() {
            "" | "s" | "ss" | "se" | "sec" | "second" | "seconds" => 1.0,
            "m" | "mm" | "mi" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hh" | "ho" | "hou" | "hour" | "hours" => 3600.0,
            "d" | "dd" | "da" | "day" | "days" => 86400.0,
            "w" | "ww" | "we" | "wee" | "week" | "weeks" => 7.0 * 86400.0,
            "mo" | "mon" | "month" | "months" => (365.0 * 3.0 + 366.0) * 86400.0 / 4.0 / 12.0,
            "y" | "yy" | "ye" | "yea" | "year" | "years" => (365.0 * 3.0 + 366.0) * 86400.0 / 4.0,
            _ => return Err(bad()),
        };
        total += sign * num * mult;
        sign = 1.0;
        any = true;
    }
    if !any || !total.is_finite() {
        return Err(bad());
    }
    Ok(total)
}

/// A duration as a pipeline file writes it.
fn dur_text(secs: u64) -> String {
    if secs >= crate::config::Dur::PERMANENT.secs() {
        return "permanent".to_string();
    }
    for (unit, n) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= n && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

// ---------------------------------------------------------------------------------------------
// fail2ban regexes: Python `re` syntax with fail2ban's tags, as a tree.

/// Which address a host tag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    /// `<HOST>` (an address, or in fail2ban also a name) and `<ADDR>`.
    Any,
    /// `<IP4>`.
    V4,
    /// `<IP6>`.
    V6,
}

#[derive(Debug, Clone, PartialEq)]
enum ClassItem {
    Ch(char),
    Range(char, char),
    Perl(char),
}

/// A fail2ban regex. `at` is the byte offset in the regex text, for notes.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Empty,
    Lit(char),
    Dot,
    /// `\d \D \s \S \w \W`.
    Perl(char),
    Class {
        neg: bool,
        items: Vec<ClassItem>,
    },
    /// `^`, `\A`.
    Start,
    /// `$`, `\Z`.
    End,
    /// `\b` (true), `\B`.
    Word(bool),
    /// A group (capturing or not: mailpipe needs no captures); `flags`: `(?i-s:...)`.
    Group {
        flags: Option<(String, String)>,
        body: Box<Node>,
    },
    /// `(?i)`: from here to the end of the enclosing group.
    Flags(String),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
        greedy: bool,
    },
    Look {
        ahead: bool,
        neg: bool,
        body: Box<Node>,
        at: usize,
    },
    Host {
        kind: HostKind,
        at: usize,
    },
    /// `<F-NAME>...</F-NAME>`.
    Tag {
        name: String,
        body: Box<Node>,
        at: usize,
    },
    /// `%(__prefix_line)s`.
    Mark {
        at: usize,
    },
    /// `(?P<name>...)`: a plain group, kept named for the conditionals that test it.
    Named {
        name: String,
        at: usize,
        body: Box<Node>,
    },
    /// `(?(name)yes|no)`.
    Cond {
        name: String,
        yes: Box<Node>,
        no: Box<Node>,
        at: usize,
    },
    /// Regex text already in mailpipe's syntax (one atom).
    Raw(String),
    /// A construct mailpipe cannot run, and why.
    Bad {
        at: usize,
        why: String,
    },
}

impl Node {
    /// The nodes directly inside this one.
    fn children(&self) -> Vec<&Node> {
        match self {
            Node::Group { body, .. } | Node::Look { body, .. } | Node::Tag { body, .. } | Node::Named { body, .. } => vec![body],
            Node::Repeat { node, .. } => vec![node],
            Node::Cond { yes, no, .. } => vec![yes, no],
            Node::Concat(v) | Node::Alt(v) => v.iter().collect(),
            _ => Vec::new(),
        }
    }

    fn children_mut(&mut self) -> Vec<&mut Node> {
        match self {
            Node::Group { body, .. } | Node::Look { body, .. } | Node::Tag { body, .. } | Node::Named { body, .. } => vec![body],
            Node::Repeat { node, .. } => vec![node],
            Node::Cond { yes, no, .. } => vec![yes, no],
            Node::Concat(v) | Node::Alt(v) => v.iter_mut().collect(),
            _ => Vec::new(),
        }
    }

    /// Whether `f` holds for this node or any inside it.
    fn any(&self, f: &dyn Fn(&Node) -> bool) -> bool {
        f(self) || self.children().into_iter().any(|c| c.any(f))
    }

    fn first_bad(&self) -> Option<(usize, String)> {
        let mut found = None;
        fn walk(n: &Node, found: &mut Option<(usize, String)>) {
            if found.is_some() {
                return;
            }
            match n {
                Node::Bad { at, why } => *found = Some((*at, why.clone())),
                Node::Mark { at } => *found = Some((*at, "%(__prefix_line)s anywhere but at the start of the regex".to_string())),
                Node::Cond { at, .. } => {
                    *found = Some((
                        *at,
                        "a conditional group (?(name)yes|no) that cannot be expanded: regex-automata has none".to_string(),
                    ))
                }
                _ => n.children().into_iter().for_each(|c| walk(c, found)),
            }
        }
        walk(self, &mut found);
        found
    }

    fn hosts(&self) -> usize {
        match self {
            Node::Host { .. } => 1,
            _ => self.children().into_iter().map(Node::hosts).sum(),
        }
    }

    fn has_tag(&self, name: &str) -> bool {
        self.any(&|n| matches!(n, Node::Tag { name: t, .. } if t == name))
    }
}

/// Offsets of a failregex's nodes start here, so those of the prefregex it is joined to stay
/// apart.
const REBASE: usize = 1 << 40;

/// Adds `base` to every offset in `n`.
fn rebase(n: &mut Node, base: usize) {
    match n {
        Node::Look { at, .. }
        | Node::Tag { at, .. }
        | Node::Named { at, .. }
        | Node::Cond { at, .. }
        | Node::Host { at, .. }
        | Node::Mark { at }
        | Node::Bad { at, .. } => *at += base,
        _ => {}
    }
    n.children_mut().into_iter().for_each(|c| rebase(c, base));
}

/// The top-level items of a regex.
fn items(n: Node) -> Vec<Node> {
    match n {
        Node::Concat(v) => v,
        Node::Empty => Vec::new(),
        x => vec![x],
    }
}

fn concat(mut v: Vec<Node>) -> Node {
    match v.len() {
        0 => Node::Empty,
        1 => v.pop().expect("one"),
        _ => Node::Concat(v),
    }
}

type PErr = (usize, String);

/// Python's `re` parser, for what fail2ban's filters write.
struct Py<'a> {
    s: &'a str,
    chars: Vec<(usize, char)>,
    i: usize,
    verbose: bool,
    open_tags: Vec<String>,
    /// Groups open at the cursor (bounded: the tree is walked recursively).
    depth: usize,
}

/// The deepest nesting of groups read (fail2ban's filters nest a handful).
const MAX_NESTING: usize = 100;

/// fail2ban's `R_GLOB2LOCFLAGS`: a group that starts with inline flags, `((?i)a|b)`, is the
/// scoped group `(?i:a|b)` (Python 3.11 refuses global flags anywhere but at the start).
fn local_flags(body: Node) -> Node {
    let take = |v: &mut Vec<Node>| match v.first() {
        Some(Node::Flags(f)) => {
            let f = f.clone();
            v.remove(0);
            Some(f)
        }
        _ => None,
    };
    let mut body = body;
    let flags = match &mut body {
        Node::Flags(f) => {
            let f = f.clone();
            body = Node::Empty;
            Some(f)
        }
        Node::Concat(v) => take(v),
        Node::Alt(bs) => match bs.first_mut() {
            Some(Node::Flags(f)) => {
                let f = f.clone();
                bs[0] = Node::Empty;
                Some(f)
            }
            Some(Node::Concat(v)) => {
                let f = take(v);
                if v.len() == 1 {
                    let one = v.pop().expect("one");
                    bs[0] = one;
                }
                f
            }
            _ => None,
        },
        _ => None,
    };
    Node::Group {
        flags: flags.map(|f| (f, String::new())),
        body: Box::new(body),
    }
}

/// A fail2ban tag at the start of `s`: `</?[\w\-]+/?>` (its text without the brackets, length).
fn tag_at(s: &str) -> Option<(&str, usize)> {
    let rest = s.strip_prefix('<')?;
    let end = rest.find('>')?;
    let inner = &rest[..end];
    let core = inner.strip_prefix('/').unwrap_or(inner);
    let core = core.strip_suffix('/').unwrap_or(core);
    (!core.is_empty() && core.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-')).then_some((inner, end + 2))
}

fn parse_regex(s: &str) -> Result<Node, PErr> {
    let mut p = Py {
        s,
        chars: s.char_indices().collect(),
        i: 0,
        verbose: false,
        open_tags: Vec::new(),
        depth: 0,
    };
    let n = p.alt()?;
    if p.i < p.chars.len() {
        return Err((p.at(), format!("unbalanced {:?}", p.chars[p.i].1)));
    }
    Ok(n)
}

impl Py<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).map(|c| c.1)
    }

    fn peek2(&self) -> Option<char> {
        self.chars.get(self.i + 1).map(|c| c.1)
    }

    fn at(&self) -> usize {
        self.chars.get(self.i).map_or(self.s.len(), |c| c.0)
    }

    fn rest(&self) -> &str {
        &self.s[self.at()..]
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.i += usize::from(c.is_some());
        c
    }

    fn skip_chars(&mut self, bytes: usize) {
        let target = self.at() + bytes;
        while self.i < self.chars.len() && self.at() < target {
            self.i += 1;
        }
    }

    fn skip_verbose(&mut self) {
        while self.verbose {
            match self.peek() {
                Some(c) if c.is_whitespace() => self.i += 1,
                Some('#') => while !matches!(self.next(), None | Some('\n')) {},
                _ => break,
            }
        }
    }

    /// `</F-NAME>` closing a tag that is open.
    fn closing_tag(&self) -> Option<String> {
        let (inner, _) = tag_at(self.rest())?;
        let name = inner.strip_prefix("/F-")?;
        self.open_tags.iter().any(|t| t == name).then(|| name.to_string())
    }

    fn alt(&mut self) -> Result<Node, PErr> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err((self.at(), format!("groups nested more than {MAX_NESTING} deep")));
        }
        let n = self.alt_inner();
        self.depth -= 1;
        n
    }

    fn alt_inner(&mut self) -> Result<Node, PErr> {
        let mut branches = vec![self.concat()?];
        while self.peek() == Some('|') {
            self.i += 1;
            branches.push(self.concat()?);
        }
        Ok(if branches.len() == 1 {
            branches.pop().expect("one")
        } else {
            Node::Alt(branches)
        })
    }

    fn concat(&mut self) -> Result<Node, PErr> {
        let mut v = Vec::new();
        loop {
            self.skip_verbose();
            if matches!(self.peek(), None | Some('|') | Some(')')) || self.closing_tag().is_some() {
                break;
            }
            let start = self.at();
            let atom = self.atom()?;
            let atom = self.quantified(atom, start)?;
            v.push(atom);
        }
        Ok(concat(v))
    }

    /// `{m}`, `{m,}`, `{,n}`, `{m,n}` at the cursor: (min, max, chars); `None`: a literal `{`.
    fn brace(&self) -> Option<(u32, Option<u32>, usize)> {
        let rest = self.rest();
        let body = rest.strip_prefix('{')?;
        let end = body.find('}')?;
        let inner = &body[..end];
        let (lo, hi) = match inner.split_once(',') {
            Some((lo, hi)) => (lo, Some(hi)),
            None => (inner, None),
        };
        if !lo.chars().all(|c| c.is_ascii_digit()) || !hi.is_none_or(|h| h.chars().all(|c| c.is_ascii_digit())) {
            return None;
        }
        if lo.is_empty() && hi.is_none() {
            return None;
        }
        let min = if lo.is_empty() { 0 } else { lo.parse().ok()? };
        let max = match hi {
            None => Some(min),
            Some("") => None,
            Some(h) => Some(h.parse().ok()?),
        };
        Some((min, max, inner.chars().count() + 2))
    }

    fn quantified(&mut self, atom: Node, start: usize) -> Result<Node, PErr> {
        self.skip_verbose();
        let (min, max, len) = match self.peek() {
            Some('*') => (0, None, 1),
            Some('+') => (1, None, 1),
            Some('?') => (0, Some(1), 1),
            Some('{') => match self.brace() {
                Some(b) => b,
                None => return Ok(atom),
            },
            _ => return Ok(atom),
        };
        let at = self.at();
        self.i += len;
        if max.is_some_and(|m| m < min) {
            return Err((at, "min repeat greater than max repeat".to_string()));
        }
        let mut greedy = true;
        let mut possessive = false;
        match self.peek() {
            Some('?') => {
                greedy = false;
                self.i += 1;
            }
            Some('+') => {
                possessive = true;
                self.i += 1;
            }
            _ => {}
        }
        if matches!(self.peek(), Some('*' | '+' | '?')) || (self.peek() == Some('{') && self.brace().is_some()) {
            return Err((self.at(), "multiple repeat".to_string()));
        }
        match atom {
            Node::Empty | Node::Flags(_) => return Err((start, "nothing to repeat".to_string())),
            Node::Start | Node::End | Node::Word(_) => return Err((start, "nothing to repeat (an assertion)".to_string())),
            _ => {}
        }
        if possessive {
            return Ok(Node::Bad {
                at,
                why: "a possessive repetition (*+, ++, ?+): regex-automata has none".to_string(),
            });
        }
        if matches!(atom, Node::Look { .. }) {
            return Ok(Node::Bad {
                at: start,
                why: "a repeated look-around".to_string(),
            });
        }
        Ok(Node::Repeat {
            node: Box::new(atom),
            min,
            max,
            greedy,
        })
    }

    fn atom(&mut self) -> Result<Node, PErr> {
        let at = self.at();
        if self.peek() == Some('<')
            && let Some((inner, len)) = tag_at(self.rest())
        {
            let inner = inner.to_string();
            if let Some(n) = self.tag(&inner, len, at)? {
                return Ok(n);
            }
        }
        let c = self.next().ok_or((at, "unexpected end".to_string()))?;
        Ok(match c {
            '(' => self.group(at)?,
            '[' => self.class(at)?,
            '.' => Node::Dot,
            '^' => Node::Start,
            '$' => Node::End,
            '\\' => self.escape(at)?,
            '*' | '+' | '?' => return Err((at, "nothing to repeat".to_string())),
            '{' => {
                self.i -= 1;
                if self.brace().is_some() {
                    return Err((at, "nothing to repeat".to_string()));
                }
                self.i += 1;
                Node::Lit('{')
            }
            PREFIX_MARK => Node::Mark { at },
            c => Node::Lit(c),
        })
    }

    /// A fail2ban tag (`<HOST>`, `<F-USER>...`); `None`: not one of fail2ban's, literal text.
    fn tag(&mut self, inner: &str, len: usize, at: usize) -> Result<Option<Node>, PErr> {
        let bad = |why: &str| Node::Bad { at, why: why.to_string() };
        let node = match inner {
            "HOST" | "ADDR" | "F-ADDR/" => Node::Host { kind: HostKind::Any, at },
            "IP4" | "F-IP4/" => Node::Host { kind: HostKind::V4, at },
            "IP6" | "F-IP6/" => Node::Host { kind: HostKind::V6, at },
            "DNS" | "F-DNS/" => bad("<DNS>: a host name, and mailpipe never resolves names read from a log line"),
            "CIDR" | "F-CIDR/" | "SUBNET" | "F-SUBNET/" => {
                bad("<SUBNET>/<CIDR>: mailpipe bans the address it read, not a network the line names")
            }
            "F-ID/" => bad("<F-ID/>: a failure id that is not an address"),
            "SKIPLINES" => bad("<SKIPLINES>: a rule over several lines, and mailpipe reads one line at a time"),
            "F-PORT/" => Node::Repeat {
                node: Box::new(Node::Perl('w')),
                min: 1,
                max: None,
                greedy: true,
            },
            _ => {
                let Some(name) = inner.strip_prefix("F-").filter(|n| {
                    !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-')
                }) else {
                    return Ok(None);
                };
                let name = name.to_string();
                self.skip_chars(len);
                self.open_tags.push(name.clone());
                let body = self.alt()?;
                let close = self.closing_tag();
                self.open_tags.pop();
                match close {
                    Some(close) if close == name => {
                        self.skip_chars(name.len() + 5);
                        return Ok(Some(Node::Tag {
                            name,
                            body: Box::new(body),
                            at,
                        }));
                    }
                    _ => return Err((at, format!("<F-{name}> is not closed by </F-{name}> in the same group"))),
                }
            }
        };
        self.skip_chars(len);
        Ok(Some(node))
    }

    fn group(&mut self, at: usize) -> Result<Node, PErr> {
        let close = |p: &mut Self| -> Result<(), PErr> {
            if p.next() == Some(')') {
                Ok(())
            } else {
                Err((at, "missing ), unterminated group".to_string()))
            }
        };
        if self.peek() != Some('?') {
            let body = self.alt()?;
            close(self)?;
            return Ok(local_flags(body));
        }
        self.i += 1;
        let rest = self.rest().to_string();
        let look = [("=", true, false), ("!", true, true), ("<=", false, false), ("<!", false, true)]
            .into_iter()
            .find(|(p, _, _)| rest.starts_with(p));
        if let Some((p, ahead, neg)) = look {
            self.skip_chars(p.len());
            let body = self.alt()?;
            close(self)?;
            return Ok(Node::Look {
                ahead,
                neg,
                body: Box::new(body),
                at,
            });
        }
        if let Some(r) = rest.strip_prefix("P<") {
            let end = r.find('>').ok_or((at, "unterminated group name".to_string()))?;
            let name = r[..end].to_string();
            self.skip_chars(2 + end + 1);
            let body = self.alt()?;
            close(self)?;
            if ["ip4", "ip6", "dns", "fid", "cidr", "mlfid"].contains(&name.as_str()) {
                return Ok(Node::Bad {
                    at,
                    why: format!(
                        "a group named {name:?} written by hand, which fail2ban takes as the failure's address or id: write <HOST>"
                    ),
                });
            }
            return Ok(Node::Named {
                name,
                at,
                body: Box::new(body),
            });
        }
        if let Some(r) = rest.strip_prefix("P=") {
            let end = r.find(')').ok_or((at, "unterminated backreference".to_string()))?;
            self.skip_chars(2 + end + 1);
            return Ok(Node::Bad {
                at,
                why: format!("the backreference (?P={}): regex-automata has none", &r[..end]),
            });
        }
        if rest.starts_with('#') {
            while !matches!(self.next(), None | Some(')')) {}
            return Ok(Node::Empty);
        }
        if rest.starts_with(':') {
            self.i += 1;
            let body = self.alt()?;
            close(self)?;
            return Ok(local_flags(body));
        }
        if rest.starts_with('(') {
            // (?(name)yes|no)
            let end = rest.find(')').ok_or((at, "unterminated condition".to_string()))?;
            let name = rest[1..end].to_string();
            self.skip_chars(end + 1);
            let body = self.alt()?;
            close(self)?;
            let (yes, no) = match body {
                Node::Alt(mut b) if b.len() == 2 => {
                    let no = b.pop().expect("two");
                    (b.pop().expect("two"), no)
                }
                Node::Alt(_) => return Err((at, "conditional backref with more than two branches".to_string())),
                one => (one, Node::Empty),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err((at, format!("bad group name {name:?} in a condition")));
            }
            if name.chars().all(|c| c.is_ascii_digit()) {
                return Ok(Node::Bad {
                    at,
                    why: format!(
                        "a conditional group on group number {name}: regex-automata has none (only named groups' conditions are expanded)"
                    ),
                });
            }
            return Ok(Node::Cond {
                name,
                yes: Box::new(yes),
                no: Box::new(no),
                at,
            });
        }
        if rest.starts_with('>') {
            self.i += 1;
            self.alt()?;
            close(self)?;
            return Ok(Node::Bad {
                at,
                why: "an atomic group (?>...): regex-automata has none".to_string(),
            });
        }
        // Flags: (?aiLmsux) or (?aiLmsux-imsx:...).
        let on: String = rest.chars().take_while(|c| "aiLmsux".contains(*c)).collect();
        let mut k = on.len();
        let mut off = String::new();
        if rest[k..].starts_with('-') {
            off = rest[k + 1..].chars().take_while(|c| "imsx".contains(*c)).collect();
            k += 1 + off.len();
        }
        let after = rest[k..].chars().next();
        if on.contains('L') {
            return Err((at, "the (?L) locale flag".to_string()));
        }
        match after {
            Some(')') if off.is_empty() && !on.is_empty() => {
                self.skip_chars(k + 1);
                if on.contains('x') {
                    self.verbose = true;
                }
                Ok(Node::Flags(on))
            }
            Some(':') if !(on.is_empty() && off.is_empty()) => {
                self.skip_chars(k + 1);
                let saved = self.verbose;
                if on.contains('x') {
                    self.verbose = true;
                }
                if off.contains('x') {
                    self.verbose = false;
                }
                let body = self.alt()?;
                self.verbose = saved;
                close(self)?;
                Ok(Node::Group {
                    flags: Some((on, off)),
                    body: Box::new(body),
                })
            }
            _ => Err((at, format!("unknown extension (?{}", rest.chars().take(3).collect::<String>()))),
        }
    }

    fn hex(&mut self, n: usize, at: usize) -> Result<char, PErr> {
        let digits: String = (0..n)
            .filter_map(|_| self.peek().filter(|c| c.is_ascii_hexdigit()).inspect(|_| self.i += 1))
            .collect();
        if digits.len() != n {
            return Err((at, "incomplete escape (\\x takes 2, \\u 4, \\U 8 hex digits)".to_string()));
        }
        u32::from_str_radix(&digits, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or((at, "bad escape: not a character".to_string()))
    }

    fn octal(&mut self, first: char, at: usize) -> Result<char, PErr> {
        let mut v = first.to_digit(8).unwrap_or(0);
        for _ in 0..2 {
            match self.peek().and_then(|c| c.to_digit(8)) {
                Some(d) => {
                    v = v * 8 + d;
                    self.i += 1;
                }
                None => break,
            }
        }
        if v > 0o377 {
            return Err((at, "octal escape out of range".to_string()));
        }
        char::from_u32(v).ok_or((at, "bad octal escape".to_string()))
    }

    /// The escapes that mean the same inside and outside a class: a character.
    fn char_escape(&mut self, c: char, at: usize) -> Result<Option<char>, PErr> {
        Ok(Some(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'f' => '\x0c',
            'v' => '\x0b',
            'a' => '\x07',
            'x' => self.hex(2, at)?,
            'u' => self.hex(4, at)?,
            'U' => self.hex(8, at)?,
            _ => return Ok(None),
        }))
    }

    fn escape(&mut self, at: usize) -> Result<Node, PErr> {
        let c = self.next().ok_or((at, "bad escape (end of pattern)".to_string()))?;
        if let Some(ch) = self.char_escape(c, at)? {
            return Ok(Node::Lit(ch));
        }
        Ok(match c {
            'd' | 'D' | 's' | 'S' | 'w' | 'W' => Node::Perl(c),
            'b' => Node::Word(true),
            'B' => Node::Word(false),
            'A' => Node::Start,
            'Z' => Node::End,
            'N' => Node::Bad {
                at,
                why: "a \\N{NAME} escape".to_string(),
            },
            '0' => Node::Lit(self.octal('0', at)?),
            '1'..='9' => {
                let third = self.chars.get(self.i + 1).map(|c| c.1);
                if c <= '7' && self.peek().is_some_and(|d| ('0'..='7').contains(&d)) && third.is_some_and(|d| ('0'..='7').contains(&d)) {
                    Node::Lit(self.octal(c, at)?)
                } else {
                    let mut n = c.to_string();
                    if let Some(d) = self.peek().filter(char::is_ascii_digit) {
                        n.push(d);
                        self.i += 1;
                    }
                    Node::Bad {
                        at,
                        why: format!("the backreference \\{n}: regex-automata has none"),
                    }
                }
            }
            c if c.is_ascii_alphanumeric() => return Err((at, format!("bad escape \\{c}"))),
            c => Node::Lit(c),
        })
    }

    fn class(&mut self, at: usize) -> Result<Node, PErr> {
        let unterminated = || (at, "unterminated character set".to_string());
        let neg = self.peek() == Some('^');
        if neg {
            self.i += 1;
        }
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let c = self.next().ok_or_else(unterminated)?;
            if c == ']' && !first {
                break;
            }
            first = false;
            let item = if c == '\\' { self.class_escape(at)? } else { ClassItem::Ch(c) };
            if let ClassItem::Ch(a) = item
                && self.peek() == Some('-')
                && self.peek2().is_some_and(|n| n != ']')
            {
                self.i += 1;
                let b = match self.next().ok_or_else(unterminated)? {
                    '\\' => self.class_escape(at)?,
                    b => ClassItem::Ch(b),
                };
                let ClassItem::Ch(b) = b else {
                    return Err((at, "bad character range".to_string()));
                };
                if b < a {
                    return Err((at, format!("bad character range {a}-{b}")));
                }
                items.push(ClassItem::Range(a, b));
                continue;
            }
            items.push(item);
        }
        Ok(Node::Class { neg, items })
    }

    fn class_escape(&mut self, at: usize) -> Result<ClassItem, PErr> {
        let c = self.next().ok_or((at, "bad escape (end of pattern)".to_string()))?;
        if let Some(ch) = self.char_escape(c, at)? {
            return Ok(ClassItem::Ch(ch));
        }
        Ok(match c {
            'd' | 'D' | 's' | 'S' | 'w' | 'W' => ClassItem::Perl(c),
            'b' => ClassItem::Ch('\x08'),
            '0'..='7' => ClassItem::Ch(self.octal(c, at)?),
            c if c.is_ascii_alphanumeric() => return Err((at, format!("bad escape \\{c} in a character set"))),
            c => ClassItem::Ch(c),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The tree as a mailpipe rule.

/// mailpipe's `<USER>` pattern (matcher.rs): an F-USER group becomes `<USER>` only when its own
/// pattern is exactly this.
const USER_PATTERN: &str = r"[^\s,>)]*";

fn hir(re: &str) -> Option<regex_syntax::hir::Hir> {
    regex_syntax::ParserBuilder::new().unicode(false).utf8(false).build().parse(re).ok()
}

fn lit_text(c: char) -> String {
    match c {
        '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' | '#' => format!("\\{c}"),
        '\n' => "\\n".to_string(),
        '\t' => "\\t".to_string(),
        '\r' => "\\r".to_string(),
        c if c.is_control() => format!("\\x{{{:X}}}", c as u32),
        c => c.to_string(),
    }
}

fn class_char(c: char) -> String {
    match c {
        '\\' | '[' | ']' | '^' | '-' | '&' | '~' => format!("\\{c}"),
        '\n' => "\\n".to_string(),
        '\t' => "\\t".to_string(),
        c if c.is_control() || c == ' ' => format!("\\x{{{:X}}}", c as u32),
        c => c.to_string(),
    }
}

/// Flags mailpipe's engine has (`i`, `s`); Python's `a`, `u`, `m`, `x`, `L` are dropped (ASCII
/// classes already, no newline inside a line, verbose is read by the parser).
fn keep_flags(f: &str) -> String {
    f.chars().filter(|c| matches!(c, 'i' | 's')).collect()
}

struct Emit {
    user_used: bool,
    /// Every literal `<` as `[<]`.
    safe_lt: bool,
    /// Placeholders written (`<HOST>`, `<IP4>`, `<IP6>`, `<USER>`).
    placed: usize,
}

/// The mailpipe placeholders a rule's text may hold.
const PLACEHOLDERS: [&str; 6] = ["<HOST>", "<ADDR>", "<IP4>", "<IP6>", "<USER>", "<FORWARDED>"];

/// `n` as mailpipe regex text; `user_used`: no `<USER>` (one is written already, or an ignore
/// rule). A literal `<` that would make a placeholder of text with what follows it is written
/// `[<]`.
fn emit_all(n: &Node, user_used: bool) -> Result<String, PErr> {
    let count = |t: &str| PLACEHOLDERS.iter().map(|p| t.matches(p).count()).sum::<usize>();
    let mut e = Emit {
        user_used,
        safe_lt: false,
        placed: 0,
    };
    let t = e.emit(n)?;
    if count(&t) == e.placed {
        return Ok(t);
    }
    let mut e = Emit {
        user_used,
        safe_lt: true,
        placed: 0,
    };
    e.emit(n)
}

/// A node that is one atom as emitted (a quantifier may follow it directly).
fn is_atom(n: &Node) -> bool {
    match n {
        Node::Lit(_) | Node::Dot | Node::Perl(_) | Node::Class { .. } | Node::Raw(_) => true,
        Node::Group { flags: None, body } | Node::Named { body, .. } => is_atom(body) || !matches!(**body, Node::Empty),
        Node::Group { .. } => true,
        _ => false,
    }
}

impl Emit {
    fn place(&mut self, kind: HostKind) -> HostKind {
        self.placed += 1;
        kind
    }

    fn emit(&mut self, n: &Node) -> Result<String, PErr> {
        Ok(match n {
            Node::Empty => String::new(),
            Node::Lit('<') if self.safe_lt => "[<]".to_string(),
            Node::Lit(c) => lit_text(*c),
            Node::Dot => ".".to_string(),
            Node::Perl(c) => format!("\\{c}"),
            Node::Class { neg, items } => {
                let mut s = String::from(if *neg { "[^" } else { "[" });
                for it in items {
                    match it {
                        ClassItem::Ch(c) => s.push_str(&class_char(*c)),
                        ClassItem::Range(a, b) => s.push_str(&format!("{}-{}", class_char(*a), class_char(*b))),
                        ClassItem::Perl(c) => s.push_str(&format!("\\{c}")),
                    }
                }
                s.push(']');
                s
            }
            Node::Start => "^".to_string(),
            Node::End => "$".to_string(),
            Node::Word(true) => "\\b".to_string(),
            Node::Word(false) => "\\B".to_string(),
            Node::Group { flags: None, body } | Node::Named { body, .. } if is_atom(body) => self.emit(body)?,
            Node::Group { flags, body } => {
                let b = self.emit(body)?;
                match flags {
                    None => format!("(?:{b})"),
                    Some((on, off)) => {
                        let (on, off) = (keep_flags(on), keep_flags(off));
                        match (on.is_empty(), off.is_empty()) {
                            (true, true) => format!("(?:{b})"),
                            (false, true) => format!("(?{on}:{b})"),
                            (_, false) => format!("(?{on}-{off}:{b})"),
                        }
                    }
                }
            }
            Node::Flags(on) => {
                let on = keep_flags(on);
                if on.is_empty() { String::new() } else { format!("(?{on})") }
            }
            Node::Concat(v) => {
                let mut s = String::new();
                for (k, it) in v.iter().enumerate() {
                    let prev = k.checked_sub(1).map(|p| &v[p]);
                    let next = v.get(k + 1);
                    match it {
                        // A literal `<` before a capital would make `<USER>` or `<HOST>` of text.
                        Node::Lit('<') if matches!(next, Some(Node::Lit(c)) if c.is_ascii_uppercase()) => s.push_str("[<]"),
                        Node::Alt(_) => s.push_str(&format!("(?:{})", self.emit(it)?)),
                        // A plain group in a row of items is only its items.
                        Node::Group { flags: None, body } | Node::Named { body, .. }
                            if !matches!(**body, Node::Alt(_)) && !body.any(&|x| matches!(x, Node::Flags(_))) =>
                        {
                            s.push_str(&self.emit(body)?)
                        }
                        Node::Host { kind: HostKind::Any, .. } => {
                            // fail2ban's <HOST> takes optional brackets of its own.
                            if !matches!(prev, Some(Node::Lit('['))) {
                                s.push_str("\\[?");
                            }
                            s.push_str("<HOST>");
                            self.placed += 1;
                            if !matches!(next, Some(Node::Lit(']'))) {
                                s.push_str("\\]?");
                            }
                        }
                        _ => s.push_str(&self.emit(it)?),
                    }
                }
                s
            }
            Node::Alt(v) => v.iter().map(|b| self.emit(b)).collect::<Result<Vec<_>, _>>()?.join("|"),
            Node::Repeat { node, min, max, greedy } => {
                let inner = self.emit(node)?;
                let atomic = matches!(
                    **node,
                    Node::Lit(_) | Node::Dot | Node::Perl(_) | Node::Class { .. } | Node::Group { .. } | Node::Named { .. } | Node::Raw(_)
                ) && !(matches!(**node, Node::Lit(_)) && inner.starts_with("[<"));
                let inner = if atomic { inner } else { format!("(?:{inner})") };
                let q = match (min, max) {
                    (0, None) => "*".to_string(),
                    (1, None) => "+".to_string(),
                    (0, Some(1)) => "?".to_string(),
                    (m, None) => format!("{{{m},}}"),
                    (m, Some(x)) if m == x => format!("{{{m}}}"),
                    (m, Some(x)) => format!("{{{m},{x}}}"),
                };
                format!("{inner}{q}{}", if *greedy { "" } else { "?" })
            }
            Node::Host { kind, .. } => match self.place(*kind) {
                HostKind::Any => "\\[?<HOST>\\]?".to_string(),
                HostKind::V4 => "(?:::f{4,6}:)?<IP4>".to_string(),
                HostKind::V6 => "<IP6>".to_string(),
            },
            Node::Tag { name, body, .. } => {
                let b = self.emit(body)?;
                if name == "USER" && !self.user_used && hir(&b).is_some() && hir(&b) == hir(USER_PATTERN) {
                    self.user_used = true;
                    self.placed += 1;
                    "<USER>".to_string()
                } else if is_atom(body) {
                    b
                } else {
                    format!("(?:{b})")
                }
            }
            Node::Named { body, .. } => format!("(?:{})", self.emit(body)?),

            Node::Raw(r) => r.clone(),
            Node::Cond { at, .. } => {
                return Err((
                    *at,
                    "a conditional group (?(name)yes|no) that cannot be expanded: regex-automata has none".to_string(),
                ));
            }
            Node::Look { at, .. } => return Err((*at, "a look-around here cannot be rewritten".to_string())),
            Node::Mark { at } => return Err((*at, "%(__prefix_line)s anywhere but at the start of the regex".to_string())),
            Node::Bad { at, why } => return Err((*at, why.clone())),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Anchoring, prefregex, look-around.

/// What precedes a regex's text: `^`, `%(__prefix_line)s`, inline flags.
struct Head {
    anchored: bool,
    mark: bool,
    /// The `<F-MLFID>` group held the prefix line: fail2ban's multi-line matching.
    mlfid: bool,
    rest: Vec<Node>,
}

fn strip_head(v: Vec<Node>) -> Head {
    let mut flags = Vec::new();
    let mut it = v.into_iter().peekable();
    let mut anchored = false;
    let (mut mark, mut mlfid) = (false, false);
    loop {
        match it.peek() {
            Some(Node::Flags(_)) => flags.push(it.next().expect("peeked")),
            Some(Node::Start) if !anchored => {
                anchored = true;
                it.next();
            }
            _ => break,
        }
    }
    match it.peek() {
        Some(Node::Mark { .. }) => {
            mark = true;
            it.next();
        }
        Some(Node::Tag { name, body, .. })
            if name == "MLFID" && items((**body).clone()).first().is_some_and(|n| matches!(n, Node::Mark { .. })) =>
        {
            mark = true;
            mlfid = true;
            if let Some(Node::Tag { body, .. }) = it.next() {
                // What a filter adds to its prefix line (sendmail's queue id) stays.
                flags.extend(items(*body).into_iter().skip(1));
            }
        }
        _ => {}
    }
    flags.extend(it);
    Head {
        anchored,
        mark,
        mlfid,
        rest: flags,
    }
}

/// fail2ban's `__daemon_extra_re`, what its prefix line allows after the daemon's tag
/// (Solaris' `[ID 800047 auth.info]`): kept at the start of a rule whose prefix line is stripped.
fn daemon_extra() -> Node {
    parse_regex(r"(?:\[ID \d+ \S+\]\s+)?").expect("a valid regex")
}

fn dot_star() -> Node {
    Node::Repeat {
        node: Box::new(Node::Dot),
        min: 0,
        max: None,
        greedy: true,
    }
}

/// A group around `v` when inline flags at its top would otherwise reach what follows.
fn scoped(v: Vec<Node>) -> Vec<Node> {
    if v.iter().any(|n| matches!(n, Node::Flags(_))) {
        vec![Node::Group {
            flags: None,
            body: Box::new(concat(v)),
        }]
    } else {
        v
    }
}

/// A prefregex, cut at its `<F-CONTENT>`.
#[derive(Debug)]
struct Pref {
    anchored: bool,
    mark: bool,
    mlfid: bool,
    /// What comes between the prefix line and the content.
    a: Vec<Node>,
}

fn split_prefregex(n: Node) -> Result<Pref, String> {
    let v = items(n);
    let Some(c) = v.iter().position(|n| matches!(n, Node::Tag { name, .. } if name == "CONTENT")) else {
        return Err("its prefregex has no <F-CONTENT>...</F-CONTENT> at its top level".to_string());
    };
    let mut v = v;
    let after: Vec<Node> = v.split_off(c + 1);
    let Some(Node::Tag { body, .. }) = v.pop() else {
        unreachable!("position found it")
    };
    let content_ok = matches!(&*body, Node::Repeat { node, min: 0 | 1, max: None, .. } if **node == Node::Dot);
    if !content_ok {
        return Err("its prefregex's <F-CONTENT> is not `.+` (mailpipe's rules go on to the end of the line)".to_string());
    }
    if !after.iter().all(|n| matches!(n, Node::End | Node::Empty)) {
        return Err("its prefregex has more after </F-CONTENT> than `$`".to_string());
    }
    let head = strip_head(v);
    Ok(Pref {
        anchored: head.anchored,
        mark: head.mark,
        mlfid: head.mlfid,
        a: scoped(head.rest),
    })
}

/// Why a regex is left out or changed.
#[derive(Debug)]
struct Problem {
    at: usize,
    message: String,
}

/// A failure regex made message-relative: the prefregex's part (if any), then the regex.
/// Notes about anchoring go to `notes`.
fn compose(pref: Option<&Pref>, n: Node, notes: &mut Vec<Problem>) -> Result<Vec<Node>, Problem> {
    let h = strip_head(items(n));
    let mut v = Vec::new();
    match pref {
        Some(p) => {
            if h.mark {
                return Err(Problem {
                    at: 0,
                    message: "%(__prefix_line)s in a failregex that follows a prefregex".to_string(),
                });
            }
            if p.mark && p.anchored {
                v.push(daemon_extra());
            } else if !p.anchored {
                v.push(dot_star());
            }
            v.extend(p.a.iter().cloned());
            if !h.anchored {
                notes.push(Problem {
                    at: 0,
                    message: "not anchored (no ^): fail2ban searches it anywhere in the text after the prefregex, so the rule starts with `.*`, which text an attacker wrote can satisfy; anchor it if you can".to_string(),
                });
                v.push(dot_star());
            }
        }
        None => {
            if h.mark && h.anchored {
                v.push(daemon_extra());
            } else if !h.anchored {
                notes.push(Problem {
                    at: 0,
                    message: "not anchored (no ^): fail2ban searches it anywhere in the line, so the rule starts with `.*`, which text an attacker wrote can satisfy; anchor it if you can".to_string(),
                });
                v.push(dot_star());
            }
        }
    }
    // The regex's own inline flags reach only its own text, which comes last.
    v.extend(h.rest);
    Ok(v)
}

/// An ignore regex made message-relative (see the module doc).
fn compose_ignore(pref: Option<&Pref>, n: Node) -> Vec<Node> {
    let h = strip_head(items(n));
    let mut v = Vec::new();
    if h.mark || !h.anchored {
        if h.mark && h.anchored {
            v.push(daemon_extra());
        } else {
            v.push(dot_star());
        }
    } else if let Some(p) = pref {
        if p.mark && p.anchored {
            v.push(daemon_extra());
        } else if !p.anchored {
            v.push(dot_star());
        }
        v.extend(p.a.iter().cloned());
    }
    v.extend(h.rest);
    v
}

/// Plain and named groups at the top level dissolved into their items, and fail2ban's
/// `<F-...>` groups that hold a look-around (they cannot be `<USER>` anyway).
fn flatten(v: Vec<Node>) -> Vec<Node> {
    let mut out = Vec::new();
    for n in v {
        let body = match n {
            Node::Group { flags: None, body } | Node::Named { body, .. } if !body.any(&|x| matches!(x, Node::Flags(_))) => body,
            Node::Tag { body, .. } if has_look(&body) && !body.any(&|x| matches!(x, Node::Flags(_))) => body,
            other => {
                out.push(other);
                continue;
            }
        };
        match *body {
            Node::Concat(inner) => out.extend(flatten(inner)),
            Node::Empty => {}
            Node::Alt(b) => out.push(Node::Alt(b)),
            other => out.extend(flatten(vec![other])),
        }
    }
    out
}

fn has_look(n: &Node) -> bool {
    n.any(&|x| matches!(x, Node::Look { .. }))
}

/// fail2ban's no-failure marks, which decide a rule's line is no failure (with `<F-MLFID>`).
fn has_nofail(n: &Node) -> bool {
    n.any(&|x| matches!(x, Node::Tag { name, .. } if name == "NOFAIL" || name == "MLFGAINED"))
}

/// One rule of a jail: a failure rule (or, `nofail`, a line fail2ban decides is no failure),
/// the ignore rules its look-aheads became, and what was done.
#[derive(Debug)]
struct Lowered {
    rule: Vec<Node>,
    ignores: Vec<Vec<Node>>,
    rewrites: Vec<Problem>,
    nofail: bool,
}

/// How [`lower`] treats a regex.
#[derive(Debug, Clone, Copy)]
struct LowerMode {
    /// A failure regex (its negative look-aheads may become ignore rules); false: an ignore
    /// regex.
    failure: bool,
    /// The filter ties lines together (`<F-MLFID>`): `<F-NOFAIL>` parts are no failure.
    mlfid: bool,
}

/// The first conditional group in `n`: (group name, offset).
fn first_cond(n: &Node) -> Option<(String, usize)> {
    match n {
        Node::Cond { name, at, .. } => Some((name.clone(), *at)),
        _ => n.children().into_iter().find_map(first_cond),
    }
}

/// `n` in the variants that decide whether group `name` took part in the match: each with
/// the group's part fixed, and whether it did. `Ok(None)`: the group is not in `n`.
fn cond_variants(n: &Node, name: &str) -> Result<Option<Vec<(Node, bool)>>, String> {
    let plain = |b: Node| Node::Group {
        flags: None,
        body: Box::new(b),
    };
    Ok(match n {
        Node::Named { name: g, body, .. } if g == name => Some(vec![(plain((**body).clone()), true)]),
        Node::Group { flags, body } => cond_variants(body, name)?.map(|vs| {
            vs.into_iter()
                .map(|(b, st)| {
                    (
                        Node::Group {
                            flags: flags.clone(),
                            body: Box::new(b),
                        },
                        st,
                    )
                })
                .collect()
        }),
        Node::Named { name: g, at, body } => cond_variants(body, name)?.map(|vs| {
            vs.into_iter()
                .map(|(b, st)| {
                    (
                        Node::Named {
                            name: g.clone(),
                            at: *at,
                            body: Box::new(b),
                        },
                        st,
                    )
                })
                .collect()
        }),
        Node::Tag { name: t, at, body } => cond_variants(body, name)?.map(|vs| {
            vs.into_iter()
                .map(|(b, st)| {
                    (
                        Node::Tag {
                            name: t.clone(),
                            at: *at,
                            body: Box::new(b),
                        },
                        st,
                    )
                })
                .collect()
        }),
        Node::Concat(items) => {
            let mut found = None;
            for (k, it) in items.iter().enumerate() {
                if let Some(vs) = cond_variants(it, name)? {
                    found = Some((k, vs));
                    break;
                }
            }
            found.map(|(k, vs)| {
                vs.into_iter()
                    .map(|(b, st)| {
                        let mut v = items.clone();
                        v[k] = b;
                        (Node::Concat(v), st)
                    })
                    .collect()
            })
        }
        Node::Alt(branches) => {
            let mut found = None;
            for (k, b) in branches.iter().enumerate() {
                if let Some(vs) = cond_variants(b, name)? {
                    found = Some((k, vs));
                    break;
                }
            }
            found.map(|(k, vs)| {
                let mut out: Vec<(Node, bool)> = vs.into_iter().map(|(b, st)| (plain(b), st)).collect();
                out.extend(
                    branches
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != k)
                        .map(|(_, b)| (plain(b.clone()), false)),
                );
                out
            })
        }
        Node::Repeat { node, min, max, .. } => match cond_variants(node, name)? {
            None => None,
            Some(vs) if *min <= 1 && *max == Some(1) => {
                let mut out: Vec<(Node, bool)> = vs;
                if *min == 0 {
                    out.push((Node::Empty, false));
                }
                Some(out)
            }
            Some(_) => return Err(format!("the group {name:?} a condition tests is repeated")),
        },
        Node::Look { .. } if n.any(&|x| matches!(x, Node::Named { name: g, .. } if g == name)) => {
            return Err(format!("the group {name:?} a condition tests is inside a look-around"));
        }
        Node::Cond { yes, no, .. }
            if yes.any(&|x| matches!(x, Node::Named { name: g, .. } if g == name))
                || no.any(&|x| matches!(x, Node::Named { name: g, .. } if g == name)) =>
        {
            return Err(format!("the group {name:?} a condition tests is inside another condition"));
        }
        _ => None,
    })
}

/// Conditions on group `name` replaced by their branch.
fn resolve_cond(n: Node, name: &str, took_part: bool) -> Node {
    match n {
        Node::Cond { name: c, yes, no, .. } if c == name => Node::Group {
            flags: None,
            body: Box::new(resolve_cond(if took_part { *yes } else { *no }, name, took_part)),
        },
        mut other => {
            for c in other.children_mut() {
                let taken = std::mem::replace(c, Node::Empty);
                *c = resolve_cond(taken, name, took_part);
            }
            other
        }
    }
}

/// A literal string `n` (a character, or characters in a row).
fn literal(n: &Node) -> Option<String> {
    match n {
        Node::Lit(c) => Some(c.to_string()),
        Node::Concat(v) => v.iter().map(literal).collect(),
        Node::Group { flags: None, body } => literal(body),
        _ => None,
    }
}

/// A tempered token `(?:(?!L).)*` (or `+`, lazy or not) with L literal: (L, its minimum).
fn tempered(n: &Node) -> Option<(String, u32)> {
    let Node::Repeat { node, min, max: None, .. } = n else {
        return None;
    };
    let inner = match &**node {
        Node::Group { flags: None, body } => &**body,
        other => other,
    };
    let Node::Concat(v) = inner else { return None };
    match v.as_slice() {
        [
            Node::Look {
                ahead: true,
                neg: true,
                body,
                ..
            },
            Node::Dot,
        ] if *min <= 1 => literal(body).filter(|l| !l.is_empty()).map(|l| (l, *min)),
        _ => None,
    }
}

fn lits(s: &str) -> Vec<Node> {
    s.chars().map(Node::Lit).collect()
}

/// fail2ban's `(?:<F-NOFAIL>WORD</F-NOFAIL>|C+)` (sshd's `publickey` or any method): the
/// failure is `C+` but WORD, written as a regex (`[C&&[^w]]C*|w...`); `None` when `n` is not of
/// that shape. Exact where what follows fixes the word's end (sshd's ` for`): Python takes the
/// WORD branch first, so only a `C+` of another length at the same place could differ.
fn minus_nofail(n: &Node) -> Option<Node> {
    let branches = match n {
        Node::Alt(b) => b,
        Node::Group { flags: None, body } => match &**body {
            Node::Alt(b) => b,
            _ => return None,
        },
        _ => return None,
    };
    if branches.len() != 2 {
        return None;
    }
    let unwrap = |b: &Node| match b {
        Node::Group { flags: None, body } => (**body).clone(),
        other => other.clone(),
    };
    let (nf, f) = (unwrap(&branches[0]), unwrap(&branches[1]));
    let Node::Tag { name, body, .. } = &nf else { return None };
    if name != "NOFAIL" {
        return None;
    }
    let word: Vec<char> = literal(body)?.chars().collect();
    let Node::Repeat { node, min, max: None, .. } = &f else {
        return None;
    };
    let class = match &**node {
        Node::Perl(c) => format!("\\{c}"),
        Node::Class { .. } => emit_all(node, true).ok()?,
        _ => return None,
    };
    let c = || Node::Raw(class.clone());
    let not = |ch: char| Node::Raw(format!("[{class}&&[^{}]]", class_char(ch)));
    let star = |n: Node| Node::Repeat {
        node: Box::new(n),
        min: 0,
        max: None,
        greedy: true,
    };
    let mut alts = Vec::new();
    for i in 0..word.len() {
        let prefix: String = word[..i].iter().collect();
        // Diverging from WORD at its i-th character.
        let mut v = lits(&prefix);
        v.push(not(word[i]));
        v.push(star(c()));
        alts.push(Node::Concat(v));
        // A proper prefix of WORD.
        if i as u32 >= (*min).max(1) || (i == 0 && *min == 0) {
            alts.push(concat(lits(&prefix)));
        }
    }
    // WORD and more.
    let mut v = lits(&word.iter().collect::<String>());
    v.push(Node::Repeat {
        node: Box::new(c()),
        min: 1,
        max: None,
        greedy: true,
    });
    alts.push(Node::Concat(v));
    Some(Node::Group {
        flags: None,
        body: Box::new(Node::Alt(alts)),
    })
}

/// Rewrites what mailpipe's engine lacks into what it has, per alternative of the rule:
/// conditionals expanded into one rule per case; alternatives holding a look-around split the
/// rule; a negative look-ahead at the top level becomes an ignore rule, a positive one at the end
/// plain text; a tempered token `(?:(?!L).)*` becomes `.*` and an ignore rule for the lines
/// where L is inside it. `Err` per alternative that cannot be done.
fn lower(v: Vec<Node>, mode: LowerMode, budget: &mut usize) -> Vec<Result<Lowered, Problem>> {
    let whole = concat(v.clone());
    if let Some((name, at)) = first_cond(&whole) {
        return match cond_variants(&whole, &name) {
            Ok(Some(vs)) => {
                let mut out = Vec::new();
                for (n, took_part) in vs {
                    if *budget == 0 {
                        out.push(Err(Problem {
                            at,
                            message: "too many cases to expand".to_string(),
                        }));
                        break;
                    }
                    *budget -= 1;
                    out.extend(lower(items(resolve_cond(n, &name, took_part)), mode, budget));
                }
                out
            }
            Ok(None) => vec![Err(Problem {
                at,
                message: format!("a condition on group {name:?}, which is not before it in the regex"),
            })],
            Err(why) => vec![Err(Problem {
                at,
                message: format!("a conditional group that cannot be expanded: {why}"),
            })],
        };
    }
    let mut v = flatten(v);
    if mode.mlfid && !v.iter().any(|n| matches!(n, Node::Flags(_))) {
        for n in v.iter_mut() {
            if let Some(m) = minus_nofail(n) {
                *n = m;
            }
        }
        v = flatten(v);
    }
    // (Also an alternation with an address in several branches, sendmail's `(?:IPv6:<IP6>|<IP4>)`:
    // mailpipe's rule has one.)
    let splits = |n: &Node| matches!(n, Node::Alt(_)) && (has_look(n) || (mode.mlfid && has_nofail(n)) || n.hosts() > 1);
    if let Some(k) = v.iter().position(splits) {
        let Node::Alt(branches) = &v[k] else { unreachable!() };
        let mut out = Vec::new();
        for b in branches {
            if *budget == 0 {
                out.push(Err(Problem {
                    at: 0,
                    message: "too many alternatives to split".to_string(),
                }));
                break;
            }
            *budget -= 1;
            let mut nv = v[..k].to_vec();
            nv.push(Node::Group {
                flags: None,
                body: Box::new(b.clone()),
            });
            nv.extend(v[k + 1..].iter().cloned());
            out.extend(lower(nv, mode, budget));
        }
        return out;
    }
    if let Some((at, message)) = concat(v.clone()).first_bad() {
        return vec![Err(Problem { at, message })];
    }
    let nofail = mode.mlfid && has_nofail(&concat(v.clone()));
    // An ignore rule cannot have exceptions of its own.
    let may_ignore = mode.failure && !nofail;
    let mut rule: Vec<Node> = Vec::new();
    let mut ignores = Vec::new();
    let mut rewrites = Vec::new();
    let last = v.len().saturating_sub(1);
    for (k, n) in v.iter().enumerate() {
        if let Some((l, min)) = tempered(n) {
            let Node::Repeat { node, .. } = n else { unreachable!() };
            let at = match &**node {
                Node::Group { body, .. } => find_look(body),
                other => find_look(other),
            }
            .and_then(|x| if let Node::Look { at, .. } = x { Some(at) } else { None })
            .unwrap_or(0);
            if !may_ignore {
                return vec![Err(Problem { at, message: "a look-ahead in a repetition (a tempered token) in an ignore or no-failure regex: an ignore rule cannot have exceptions of its own".to_string() })];
            }
            let rest = &v[k + 1..];
            let anything = || Node::Repeat {
                node: Box::new(Node::Dot),
                min: 0,
                max: None,
                greedy: true,
            };
            if rest.iter().all(|r| matches!(r, Node::End | Node::Empty)) {
                // `X(?:(?!L).)*$`: L starts somewhere after X.
                let mut ig = rule.clone();
                ig.push(anything());
                ig.extend(lits(&l));
                ignores.push(ig);
            } else if rest.len() >= l.chars().count()
                && literal(&Node::Concat(rest[..l.chars().count()].to_vec())).as_deref() == Some(l.as_str())
            {
                // `X(?:(?!L).)*L...`: the L that follows must be the first after X, so a second
                // one before it (or overlapping it) means no match.
                let chars: Vec<char> = l.chars().collect();
                let mut ig = rule.clone();
                ig.push(anything());
                ig.extend(lits(&l));
                ig.push(anything());
                ig.extend(lits(&l));
                ignores.push(ig);
                for d in 1..chars.len() {
                    if chars[d..] == chars[..chars.len() - d] {
                        let mut ig = rule.clone();
                        ig.push(anything());
                        ig.extend(chars[..d].iter().map(|c| Node::Lit(*c)));
                        ig.extend(lits(&l));
                        ignores.push(ig);
                    }
                }
            } else {
                return vec![Err(Problem {
                    at,
                    message: "a look-ahead in a repetition (a tempered token) followed by other text than its own: regex-automata has none"
                        .to_string(),
                })];
            }
            rule.push(Node::Repeat {
                node: Box::new(Node::Dot),
                min,
                max: None,
                greedy: true,
            });
            rewrites.push(Problem {
                at,
                message: format!("the tempered token (?:(?!{l}).)* is written as `.*` and a jail ignore rule for lines with {l:?} inside it: a line that rule matches is not counted by any rule of the jail"),
            });
            continue;
        }
        match n {
            Node::Look {
                ahead: true,
                neg: true,
                body,
                at,
            } if may_ignore && !has_look(body) => {
                let mut ig = rule.clone();
                ig.push(Node::Group {
                    flags: None,
                    body: body.clone(),
                });
                ignores.push(ig);
                rewrites.push(Problem {
                    at: *at,
                    message: "the negative look-ahead (?!...) is written as a jail ignore rule (the text before it, then its own): a line that rule matches is not counted by any rule of the jail".to_string(),
                });
            }
            Node::Look {
                ahead: true,
                neg: false,
                body,
                ..
            } if k == last && !has_look(body) => {
                rule.push(Node::Group {
                    flags: None,
                    body: body.clone(),
                });
            }
            Node::Look { ahead, at, .. } => {
                let why = if !ahead {
                    "a look-behind: regex-automata has none and it cannot be rewritten here"
                } else if may_ignore {
                    "a positive look-ahead (?=...) followed by more of the regex: regex-automata has none, and the two patterns at one place cannot be written as one"
                } else {
                    "a look-ahead in an ignore or no-failure regex: an ignore rule cannot have exceptions of its own"
                };
                return vec![Err(Problem {
                    at: *at,
                    message: why.to_string(),
                })];
            }
            other => {
                if let Some(Node::Look { at, .. }) = find_look(other) {
                    return vec![Err(Problem {
                        at,
                        message: "a look-around inside a group or repetition: regex-automata has none, and only one at the top level of the rule can be rewritten".to_string(),
                    })];
                }
                rule.push(other.clone());
            }
        }
    }
    vec![Ok(Lowered {
        rule,
        ignores,
        rewrites,
        nofail,
    })]
}

fn find_look(n: &Node) -> Option<Node> {
    match n {
        Node::Look { .. } => Some(n.clone()),
        _ => n.children().into_iter().find_map(find_look),
    }
}

/// A `_daemon` regex as program globs: `None` when it is too complex (then: any program).
fn globs(n: &Node) -> Option<Vec<String>> {
    const LIMIT: usize = 32;
    let star = || Some(vec!["*".to_string()]);
    let v = match n {
        Node::Empty | Node::Start | Node::End | Node::Word(_) => vec![String::new()],
        Node::Lit('*') => return None,
        Node::Lit(c) => vec![c.to_string()],
        Node::Dot | Node::Perl(_) => return star(),
        Node::Class { neg: false, items } if items.len() <= 4 && items.iter().all(|i| matches!(i, ClassItem::Ch(c) if *c != '*')) => items
            .iter()
            .map(|i| match i {
                ClassItem::Ch(c) => c.to_string(),
                _ => unreachable!(),
            })
            .collect(),
        Node::Class { .. } => return star(),
        Node::Group { flags: None, body } | Node::Named { body, .. } => return globs(body),
        Node::Group { .. } | Node::Flags(_) => return None,
        Node::Concat(items) => {
            let mut acc = vec![String::new()];
            for it in items {
                let g = globs(it)?;
                acc = acc.iter().flat_map(|a| g.iter().map(move |b| format!("{a}{b}"))).collect();
                if acc.len() > LIMIT {
                    return None;
                }
            }
            acc
        }
        Node::Alt(bs) => {
            let mut acc = Vec::new();
            for b in bs {
                acc.extend(globs(b)?);
            }
            acc
        }
        Node::Repeat {
            node,
            min: 0,
            max: Some(1),
            ..
        } => {
            let mut g = vec![String::new()];
            g.extend(globs(node)?);
            g
        }
        Node::Repeat { .. } => return star(),
        _ => return None,
    };
    let mut v: Vec<String> = v
        .into_iter()
        .map(|g| {
            let mut s = String::new();
            for c in g.chars() {
                if !(c == '*' && s.ends_with('*')) {
                    s.push(c);
                }
            }
            s
        })
        .collect();
    v.sort();
    v.dedup();
    (v.len() <= LIMIT).then_some(v)
}

/// Whether glob `a` matches every program glob `b` matches.
fn glob_covers(a: &str, b: &str) -> bool {
    fn m(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|k| m(rest, &s[k..])),
            Some((c, rest)) => s.first() == Some(c) && m(rest, &s[1..]),
        }
    }
    m(a.as_bytes(), b.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Filters and jails.

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
const HARMLESS_ARGS: &[&str] = &["mode", "logtype", "maxlines", "journalmatch", "datepattern"];

/// Jail options mailpipe has no per-jail counterpart for: listed in a note where set.
const NOT_CONVERTED: &[&str] = &[
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

/// A filter as one jail reads it.
struct FilterCtx {
    name: String,
    store: Store,
    /// The filter's arguments, its `[Init]`, `logtype` (lower-case names): they win.
    init: Vars,
    /// `vars` of its lookups: the jail's options, then `init` over them.
    vars: Vars,
    memo: std::cell::RefCell<HashMap<String, Option<Spanned>>>,
}

impl FilterCtx {
    /// fail2ban's tag resolution (`getCombOption`): an argument or `[Init]` value, else the
    /// `[Definition]` option (`section/name` reads another section), tags inside expanded.
    fn resolve(&self, name: &str, stack: &mut Vec<String>) -> Result<Option<Spanned>, String> {
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
    fn expand(&self, v: &Spanned, stack: &mut Vec<String>) -> Result<Spanned, String> {
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

    fn opt(&self, name: &str) -> Result<Option<Spanned>, String> {
        self.resolve(name, &mut Vec::new())
    }
}

/// What becomes of an enabled fail2ban jail.
enum Plan {
    /// A shipped jail, included.
    Map { file: &'static str, jail: &'static str },
    /// A jail written out (its numbers are filled in later).
    Convert(Box<Jail>, Vec<Pos>, Vec<Pos>),
    /// The recidive jail: `policy.recidive`.
    Recidive,
}

struct JailOut {
    section: String,
    pos: Pos,
    /// How the jail reads: `filter postfix[mode=auth]`.
    filter: String,
    plan: Plan,
    maxretry: u32,
    findtime: u64,
    bantime: u64,
    ports: Vec<PortSpec>,
}

struct Importer {
    reader: Reader,
    jails: Store,
    notes: Vec<Note>,
}

/// A fail2ban jail's settings, read and checked.
struct Numbers {
    maxretry: u32,
    findtime: u64,
    bantime: u64,
}

impl Importer {
    fn note(&mut self, pos: &Pos, message: impl Into<String>) {
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
    fn pos_of(&self, section: &str, opt: &str) -> Pos {
        self.jails
            .raw(section, opt, &Vars::new())
            .map(|v| v.pos_at(0))
            .or_else(|| self.jails.headers.get(section).cloned())
            .unwrap_or_else(Pos::none)
    }

    fn get(&self, section: &str, opt: &str) -> Result<Option<String>, String> {
        Ok(self.jails.get(section, opt, &Vars::new(), false)?.map(|v| v.s.trim().to_string()))
    }

    fn numbers(&mut self, j: &str) -> Result<Numbers, (Pos, String)> {
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
    fn ports(&mut self, j: &str) -> Vec<PortSpec> {
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
    fn shown(v: &Spanned) -> String {
        let one: String = v.s.split_whitespace().collect::<Vec<_>>().join(" ");
        if one.chars().count() > 60 {
            format!("{}...", one.chars().take(57).collect::<String>())
        } else {
            one
        }
    }

    fn not_converted(&mut self, section: &str, opts: &HashMap<String, Spanned>) {
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

    /// The filter `name` as jail `j` reads it.
    fn open_filter(&mut self, j: &str, name: &str, args: &[(String, String)], backend: &str) -> Result<FilterCtx, (Pos, String)> {
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

    /// One enabled jail, or `None` (disabled, or refused with a note).
    fn jail(&mut self, j: &str) -> Option<JailOut> {
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

    fn jail_enabled(&mut self, j: &str, hdr: &Pos) -> Result<JailOut, (Pos, String)> {
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
        let shipped = SHIPPED
            .iter()
            .find(|(f, m, _, _)| *f == fname && m.is_none_or(|m| mode.as_deref() == Some(m)))
            .map(|&(_, _, file, jail)| (file, jail));
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
        // The jail's own regexes can read the filter's as %(known/failregex)s.
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
        let converted = self.convert(j, &ctx, fail, ignore, pref, hdr)?;
        out.plan = converted;
        Ok(out)
    }

    /// A filter's regexes as a mailpipe jail (see the module doc).
    fn convert(
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
    fn problem_pos(&self, f: &Spanned, pref: Option<&Spanned>, off: usize) -> Pos {
        match (off.checked_sub(REBASE), pref) {
            (Some(o), _) => f.pos_at(o),
            (None, Some(p)) => p.pos_at(off),
            (None, None) => f.pos_at(off),
        }
    }
}

/// Whether mailpipe's matcher compiles `rule` (an ignore rule: with a `<HOST>` rule beside it).
fn check_rule(rule: &str, ignore: bool) -> Result<(), String> {
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
fn check_jail(jail: &Jail) -> Result<(), String> {
    let origin = crate::config::Origin {
        file: "import".to_string(),
        text: std::sync::Arc::from(""),
    };
    crate::matcher::Matcher::new(std::slice::from_ref(jail), std::slice::from_ref(&origin), &Default::default())
        .map(drop)
        .map_err(|e| e.reason)
}

// ---------------------------------------------------------------------------------------------
// The policy and the pipeline file.

/// `policy` as the pipeline writes it.
struct PolicyOut {
    bantime: u64,
    increment: Option<(f64, u64)>,
    recidive: Option<(u32, u64, u64)>,
    ignore: Vec<String>,
}

/// One `ignoreip` entry as a `policy.ignore` entry.
fn ignore_entry(e: &str) -> Result<String, String> {
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

fn split_words(v: &str) -> Vec<String> {
    v.split([' ', ',', '\n', '\t'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl Importer {
    fn policy(&mut self, outs: &[JailOut]) -> PolicyOut {
        let dpos = |me: &Self, opt: &str| me.jails.defaults.get(opt).map(|v| v.pos_at(0)).unwrap_or_else(Pos::none);
        let bantime = match self.get("DEFAULT", "bantime").map(|v| v.map(|v| seconds(&v))) {
            Ok(Some(Ok(s))) if s < 0.0 => crate::config::Dur::PERMANENT.secs(),
            Ok(Some(Ok(s))) if s >= 1.0 => s.round() as u64,
            Ok(None) => 600,
            Ok(Some(Ok(_))) => 600,
            Ok(Some(Err(e))) | Err(e) => {
                self.note(
                    &dpos(self, "bantime"),
                    format!("[DEFAULT] bantime: {e}: policy.bantime is 10m, each jail's is written for it"),
                );
                600
            }
        };
        // bantime.increment: one setting in mailpipe, per jail in fail2ban.
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
        let mut increment = None;
        if on && let Some(src) = source {
            let at = |me: &Self, opt: &str| me.pos_of(&src, opt);
            let mut factor = 1.0f64;
            if let Ok(Some(f)) = self.get(&src, "bantime.factor") {
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
            if let Ok(Some(m)) = self.get(&src, "bantime.multipliers")
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
                        format!("[{src}] bantime.multipliers {m}: mailpipe's increment is geometric (bantime × factor^(n-1)); written as factor 2.0"),
                    );
                }
                if factor != 1.0 && geometric {
                    self.note(
                        &at(self, "bantime.factor"),
                        format!("[{src}] bantime.factor {factor}: mailpipe's n-th ban is bantime × {ratio}^(n-1), without the factor"),
                    );
                }
            } else if let Ok(Some(f)) = self.get(&src, "bantime.formula") {
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
            for opt in ["bantime.rndtime", "bantime.overalljails"] {
                if let Ok(Some(v)) = self.get(&src, opt) {
                    let why = if opt == "bantime.rndtime" {
                        "mailpipe's ban times are exact"
                    } else {
                        "mailpipe counts an address's earlier bans in every jail"
                    };
                    self.note(&at(self, opt), format!("[{src}] {opt} = {v} not converted: {why}"));
                }
            }
            let permanent = crate::config::Dur::PERMANENT.secs() as f64;
            let maxtime = match self.get(&src, "bantime.maxtime").map(|v| v.map(|v| seconds(&v))) {
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
            let maxtime = cap.map_or(maxtime, |c| c.min(maxtime)).min(permanent);
            increment = Some((mailpipe_factor, maxtime.round().max(1.0) as u64));
        }
        // recidive
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
        // ignoreip, of [DEFAULT] and of every enabled jail.
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
                let p = dpos(self, "ignoreip");
                add(self, &v, &p, "DEFAULT", false);
            }
            Ok(None) => {}
            Err(e) => self.note(&dpos(self, "ignoreip"), format!("[DEFAULT] ignoreip: {e}")),
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
        if !outs.is_empty() && self.get("DEFAULT", "ignoreself").ok().flatten().is_none_or(|v| as_bool(&v)) {
            let p = dpos(self, "ignoreself");
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
        PolicyOut {
            bantime,
            increment,
            recidive,
            ignore,
        }
    }
}

/// A RON string.
fn ron_str(s: &str) -> String {
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
fn ron_raw(s: &str) -> String {
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

fn ports_text(p: &[PortSpec]) -> String {
    let items: Vec<String> = p
        .iter()
        .map(|x| match x {
            PortSpec::Number(n) => n.to_string(),
            PortSpec::Name(s) => ron_str(s),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Reads the fail2ban configuration in `dir` and writes a pipeline for its enabled jails (see
/// the module doc).
pub fn fail2ban(dir: &Path) -> Result<Import, ImportError> {
    let shown = dir.display().to_string();
    if !dir.join("jail.conf").is_file() && !dir.join("jail.local").is_file() {
        return Err(ImportError::NotFound { dir: shown });
    }
    let mut reader = Reader::new(dir);
    let jails = match reader.read("jail") {
        Ok(Some(s)) => s,
        Ok(None) => return Err(ImportError::NotFound { dir: shown }),
        Err((file, 0, reason)) => return Err(ImportError::Read { file, reason }),
        Err((file, line, reason)) => return Err(ImportError::Syntax { file, line, reason }),
    };
    let mut imp = Importer {
        reader,
        jails,
        notes: Vec::new(),
    };
    let defaults = imp.jails.defaults.clone();
    imp.not_converted("DEFAULT", &defaults);
    let names: Vec<String> = imp
        .jails
        .order
        .iter()
        .filter(|n| !n.starts_with("KNOWN/") && *n != "INCLUDES")
        .cloned()
        .collect();
    let outs: Vec<JailOut> = names.iter().filter_map(|n| imp.jail(n)).collect();
    let policy = imp.policy(&outs);
    let files = imp.jails.files.clone();
    let text = write_pipeline(&shown, &files, outs, &policy, &mut imp)?;
    Ok(Import {
        pipeline: text,
        notes: imp.notes,
    })
}

fn write_pipeline(dir: &str, files: &[String], outs: Vec<JailOut>, policy: &PolicyOut, imp: &mut Importer) -> Result<String, ImportError> {
    let mut used: HashSet<String> = crate::policy::BAN_NAMES.iter().map(|s| s.to_string()).collect();
    let unique = |used: &mut HashSet<String>, want: &str| -> String {
        let mut name = want.to_string();
        let mut n = 2;
        while used.contains(&name) {
            name = format!("{want}-{n}");
            n += 1;
        }
        used.insert(name.clone());
        name
    };
    // Shipped jails included, by file; the rest written out.
    let mut includes: Vec<(&'static str, Vec<(String, String)>)> = Vec::new();
    let mut written: Vec<(String, Jail, Vec<Pos>, Vec<Pos>)> = Vec::new();
    let mut summary: Vec<String> = Vec::new();
    for o in outs {
        let set = format!(
            "(maxretry: {}, findtime: {}, bantime: {}, ports: {})",
            o.maxretry,
            ron_str(&dur_text(o.findtime)),
            ron_str(&dur_text(o.bantime)),
            ports_text(&o.ports)
        );
        let head = format!("[{}] {}:{}, filter = {}", o.section, o.pos.file, o.pos.line, o.filter);
        match o.plan {
            Plan::Recidive => summary.push(format!("[{}] → policy.recidive", o.section)),
            Plan::Map { file, jail } if !used.contains(jail) => {
                used.insert(jail.to_string());
                summary.push(format!("[{}] → {file}'s {jail}", o.section));
                match includes.iter_mut().find(|(f, _)| *f == file) {
                    Some((_, v)) => v.push((jail.to_string(), set)),
                    None => includes.push((file, vec![(jail.to_string(), set)])),
                }
            }
            Plan::Map { file, jail } => {
                let shipped = Config::builtin_named(file)
                    .ok()
                    .and_then(|c| c.jails.into_iter().find(|j| j.name == jail))
                    .ok_or_else(|| ImportError::Output(format!("no jail {jail} in the built-in {file}")))?;
                let name = unique(&mut used, &o.section);
                imp.note(
                    &o.pos,
                    format!(
                        "[{}] plays {file}'s {jail} like an earlier jail: written as a copy of it named {name:?}",
                        o.section
                    ),
                );
                summary.push(format!("[{}] → jail {name:?} (a copy of {file}'s {jail})", o.section));
                let mut j = shipped;
                j.name = name;
                j.maxretry = o.maxretry;
                j.findtime = crate::config::Dur(o.findtime);
                j.bantime = Some(crate::config::Dur(o.bantime));
                j.ports = Some(o.ports.clone());
                written.push((head, j, Vec::new(), Vec::new()));
            }
            Plan::Convert(j, rpos, ipos) => {
                let mut j = *j;
                let name = unique(&mut used, &o.section);
                if name != o.section {
                    imp.note(&o.pos, format!("[{}] written as jail {name:?}: the name is taken", o.section));
                }
                summary.push(format!("[{}] → jail {name:?} (converted)", o.section));
                j.name = name;
                j.maxretry = o.maxretry;
                j.findtime = crate::config::Dur(o.findtime);
                j.bantime = Some(crate::config::Dur(o.bantime));
                j.ports = Some(o.ports.clone());
                written.push((head, j, rpos, ipos));
            }
        }
    }
    if includes.is_empty() && written.is_empty() {
        imp.note(
            &Pos {
                file: Rc::from("jail.conf"),
                line: 0,
            },
            "no enabled jail could be converted: the pipeline has no jails",
        );
    }
    let mut t = String::new();
    t.push_str(&format!(
        "// Written by `mailpipe import fail2ban {dir}` from {}.\n",
        files.join(", ")
    ));
    t.push_str("// `mailpipe check -c FILE` names rules it runs slowly; `mailpipe test -c FILE LOG` shows what each jail matches.\n");
    if !summary.is_empty() {
        t.push_str("// Enabled fail2ban jails:\n");
        for s in &summary {
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
    t.push_str("Pipeline(\n");
    if !includes.is_empty() {
        t.push_str("    include: [\n");
        for (file, jails) in &includes {
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
    }
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
    if !written.is_empty() {
        t.push_str("    jails: [\n");
        for (head, j, rpos, ipos) in &written {
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
            for (field, list, pos) in [("rules", &j.rules, rpos), ("ignore", &j.ignore, ipos)] {
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
        }
        t.push_str("    ],\n");
    }
    t.push_str(")\n");
    // What is written must load and compile as it is.
    let nowhere = Path::new("/nonexistent/mailpipe-import");
    let cfg = Config::from_text("import.ron", &t, nowhere).map_err(|e| ImportError::Output(e.to_string()))?;
    if !cfg.jails.is_empty() {
        crate::matcher::Matcher::new(&cfg.jails, &cfg.origins, &cfg.matcher).map_err(|e| ImportError::Output(e.to_string()))?;
    }
    cfg.jail_ports().map_err(|e| ImportError::Output(e.to_string()))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    fn store(files: &[(&str, &str)], name: &str) -> Store {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), files);
        Reader::new(dir.path()).read(name).unwrap().unwrap()
    }

    fn get(s: &Store, sec: &str, opt: &str) -> Result<Option<String>, String> {
        s.get(sec, opt, &Vars::new(), false).map(|v| v.map(|v| v.s))
    }

    /// A regex through the converter alone: (rules, ignores) or the first problem.
    fn convert(re: &str) -> Result<(Vec<String>, Vec<String>), String> {
        let mut node = parse_regex(re).map_err(|(_, e)| e)?;
        rebase(&mut node, 0);
        let composed = compose(None, node, &mut Vec::new()).map_err(|p| p.message)?;
        let mut budget = 32;
        let (mut rules, mut ignores) = (Vec::new(), Vec::new());
        for b in lower(
            composed,
            LowerMode {
                failure: true,
                mlfid: true,
            },
            &mut budget,
        ) {
            let l = b.map_err(|p| format!("{}@{}", p.message, p.at))?;
            rules.push(emit_all(&concat(l.rule), false).map_err(|(_, w)| w)?);
            for ig in l.ignores {
                ignores.push(emit_all(&concat(ig), true).map_err(|(_, w)| w)?);
            }
        }
        Ok((rules, ignores))
    }

    #[test]
    fn configparser_syntax() {
        let f: Rc<str> = Rc::from("x.conf");
        let ini = parse_ini(
            "# comment\n[DEFAULT]\na = 1 ; inline comment\nb: two;not a comment\n\n[s]\nre = first\n   second\n\n   third\n ; indented comment\nc=%(a)s\n",
            &f,
        )
        .unwrap();
        assert_eq!(
            ini.defaults.iter().map(|(k, v)| (k.as_str(), v.s.as_str())).collect::<Vec<_>>(),
            [("a", "1"), ("b", "two;not a comment")]
        );
        let (name, pos, opts) = &ini.sections[0];
        assert_eq!((name.as_str(), pos.line), ("s", 6));
        assert_eq!(opts[0].1.s, "first\nsecond\n\nthird");
        // Each line of a value knows where it was written.
        assert_eq!(opts[0].1.pos_at(opts[0].1.s.find("third").unwrap()).line, 10);
        assert_eq!((opts[1].0.as_str(), opts[1].1.s.as_str()), ("c", "%(a)s"));
        for (text, line, what) in [
            ("a = 1\n", 1, "before the first [section]"),
            ("[s]\na = 1\nA = 2\n", 3, "written twice"),
            ("[s]\n[t]\n[s]\n", 3, "written twice"),
            ("[s]\njust words\n", 2, "neither an option"),
            ("[s]\n= 3\n", 2, "without a name"),
        ] {
            let e = parse_ini(text, &f).unwrap_err();
            assert_eq!(e.0, line, "{text:?}: {e:?}");
            assert!(e.1.contains(what), "{text:?}: {e:?}");
        }
    }

    #[test]
    fn interpolation_follows_configparser_and_fail2ban() {
        let s = store(
            &[
                (
                    "jail.conf",
                    "[DEFAULT]\nport = 0:65535\nlog = /var/log/%(svc)s.log\nsvc = syslog\nfilter = %(__name__)s[mode=%(mode)s]\nmode = normal\n[sshd]\nport = ssh\n[loop]\na = %(b)s\nb = %(a)s\n[bad]\nx = 50%\ny = %(nosuch)s\n[pct]\nx = 50%% of %(port)s\n",
                ),
                (
                    "jail.local",
                    "[sshd]\nport = %(known/port)s,2222\nsvc = auth\nmode = aggressive\nother = %(default/port)s %(sshd/svc)s\n",
                ),
            ],
            "jail",
        );
        assert_eq!(get(&s, "sshd", "port").unwrap().unwrap(), "ssh,2222");
        assert_eq!(
            get(&s, "sshd", "log").unwrap().unwrap(),
            "/var/log/auth.log",
            "a DEFAULT value sees the section's"
        );
        assert_eq!(get(&s, "sshd", "filter").unwrap().unwrap(), "sshd[mode=aggressive]");
        assert_eq!(get(&s, "sshd", "other").unwrap().unwrap(), "0:65535 auth");
        assert_eq!(get(&s, "pct", "x").unwrap().unwrap(), "50% of 0:65535");
        assert!(get(&s, "loop", "a").unwrap_err().contains("more than 10 deep"));
        assert!(get(&s, "bad", "x").unwrap_err().contains("'%' must be followed"));
        assert!(get(&s, "bad", "y").unwrap_err().contains("%(nosuch)s is not defined"));
        assert_eq!(get(&s, "sshd", "nosuch").unwrap(), None);
        assert_eq!(get(&s, "nosection", "port").unwrap(), None);
        // Where the winning value was written.
        assert_eq!(
            s.raw("sshd", "port", &Vars::new()).unwrap().pos_at(0),
            Pos {
                file: Rc::from("jail.local"),
                line: 2
            }
        );
    }

    #[test]
    fn includes_before_after_and_local_files_in_fail2ban_order() {
        let s = store(
            &[
                (
                    "jail.conf",
                    "[INCLUDES]\nbefore = paths.conf\nafter = late.conf\n[DEFAULT]\nx = jail\n",
                ),
                ("paths.conf", "[INCLUDES]\nbefore = common.conf\n[DEFAULT]\nx = paths\ny = paths\n"),
                (
                    "common.conf",
                    "[INCLUDES]\nbefore = paths.conf\n[DEFAULT]\ny = common\nz = common\n",
                ),
                ("paths.local", "[DEFAULT]\nz = paths.local\n"),
                ("late.conf", "[DEFAULT]\nw = late\n"),
                ("jail.d/b.conf", "[DEFAULT]\nw = b\n"),
                ("jail.d/a.local", "[DEFAULT]\nv = a\n"),
                ("jail.local", "[DEFAULT]\nv = local\n"),
            ],
            "jail",
        );
        assert_eq!(
            s.files,
            [
                "common.conf",
                "paths.conf",
                "paths.local",
                "jail.conf",
                "late.conf",
                "jail.d/b.conf",
                "jail.local",
                "jail.d/a.local"
            ]
        );
        let d = |k: &str| s.defaults[k].s.clone();
        assert_eq!(
            (d("x"), d("y"), d("z"), d("w"), d("v")),
            ("jail".into(), "paths".into(), "paths.local".into(), "b".into(), "a".into())
        );
    }

    #[test]
    fn filter_tags_resolve_inside_out_with_arguments_and_init() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("jail.conf", "[j]\nenabled = true\nfilter = f[mode=more]\n"),
                (
                    "filter.d/common.conf",
                    "[DEFAULT]\n_daemon = \\S*\n__prefix_line = <lt_<logtype>/__prefix_line>\n[lt_file]\n__prefix_line = \\s*\\S+ <_daemon>: \n",
                ),
                (
                    "filter.d/f.conf",
                    "[INCLUDES]\nbefore = common.conf\n[Definition]\n_daemon = food\nfailregex = ^%(__prefix_line)s<mdre-<mode>> <HOST>$\nmdre-normal = normal\nmdre-more = more <extra>\nmode = normal\nloop = <loop>\n[Init]\nextra = from-init\n",
                ),
            ],
        );
        let mut imp = Importer {
            reader: Reader::new(dir.path()),
            jails: Reader::new(dir.path()).read("jail").unwrap().unwrap(),
            notes: Vec::new(),
        };
        let ctx = imp.open_filter("j", "f", &[("mode".into(), "more".into())], "auto").unwrap();
        let fr = ctx.opt("failregex").unwrap().unwrap();
        assert_eq!(fr.s, format!("^{PREFIX_MARK}more from-init <HOST>$"));
        // The mark remembers where %(__prefix_line)s was written.
        assert_eq!(
            fr.pos_at(1),
            Pos {
                file: Rc::from("filter.d/f.conf"),
                line: 5
            }
        );
        assert_eq!(ctx.opt("_daemon").unwrap().unwrap().s, "food");
        assert_eq!(ctx.opt("known/extra").unwrap().unwrap().s, "from-init");
        assert!(ctx.opt("loop").unwrap_err().contains("refers to itself"));
    }

    #[test]
    fn python_syntax_is_translated() {
        for (py, want) in [
            (r"^foo\d{,3} [^[]*\[<HOST>\]\Z", r"foo\d{0,3} [^\[]*\[<HOST>\]$"),
            (
                r"^x (?P<name>a|b)(?#comment) {DATE} \{1\} <HOST>",
                r"x (?:a|b) \{DATE\} \{1\} \[?<HOST>\]?",
            ),
            (r"^SASL ((?i)login|plain) from <HOST>", r"SASL (?i:login|plain) from \[?<HOST>\]?"),
            (r"^a\<b\> \/ \x41\101 \t <HOST>", r"a<b> / AA \t \[?<HOST>\]?"),
            (
                r"^(?x) a b # comment
                 c <HOST>",
                r"abc\[?<HOST>\]?",
            ),
            (r"^<USER> <F-USER>[^\s,)>]*</F-USER> <HOST>", r"[<]USER> <USER> \[?<HOST>\]?"),
            (
                r"^u=<F-USER>\S+</F-USER> <F-ALT_USER>\S*</F-ALT_USER> <IP4> <F-PORT/>",
                r"u=(?:\S+) (?:\S*) (?:::f{4,6}:)?<IP4> \w+",
            ),
            (r"^[\w\-.]+ [a-z-] []x] [\d\]] <IP6>", r"[\w\-.]+ [a-z\-] [\]x] [\d\]] <IP6>"),
        ] {
            let (rules, ignores) = convert(py).unwrap_or_else(|e| panic!("{py}: {e}"));
            assert_eq!((rules.as_slice(), ignores.len()), ([want.to_string()].as_slice(), 0), "{py}");
            check_rule(want, false).unwrap_or_else(|e| panic!("{want}: {e}"));
        }
        // Unanchored: fail2ban searches it.
        assert_eq!(convert(r"failed for <HOST>").unwrap().0, [r".*failed for \[?<HOST>\]?"]);
    }

    #[test]
    fn look_arounds_become_ignore_rules_or_are_refused() {
        // A negative look-ahead: the rule without it, and an ignore rule.
        let (r, i) = convert(r"^\[<HOST>\]: SASL \S+ authentication failed:(?! Connection lost| Invalid mech)").unwrap();
        assert_eq!(r, [r"\[<HOST>\]: SASL \S+ authentication failed:"]);
        assert_eq!(
            i,
            [r"\[<HOST>\]: SASL \S+ authentication failed:(?: Connection lost| Invalid mech)"]
        );
        assert_eq!(
            convert(r"^(?P<c>x)?(?(c)y|z) <HOST>").unwrap().0,
            [r"xy \[?<HOST>\]?", r"z \[?<HOST>\]?"]
        );
        // Conditionals expand into one rule per case; a tempered token becomes `.*` and ignore
        // rules for the lines where its text is inside it.
        let (r, i) = convert(r"^F for (?P<inv>invalid )?(?(inv)(?:(?! from ).)*?|\S+) from <HOST>").unwrap();
        assert_eq!(r, [r"F for invalid .* from \[?<HOST>\]?", r"F for \S+ from \[?<HOST>\]?"]);
        assert_eq!(i, [r"F for invalid .* from .* from ", r"F for invalid .* from from "]);
        let (r, i) = convert(r"^x <HOST>(?:(?:(?! from ).)*)$").unwrap();
        assert_eq!(
            (r.as_slice(), i.as_slice()),
            (
                [r"x \[?<HOST>\]?.*$".to_string()].as_slice(),
                [r"x \[?<HOST>\]?.* from ".to_string()].as_slice()
            )
        );
        // sshd's method that is no failure when it is `publickey`: any other word.
        let (r, _) = convert(r"^Failed (?:<F-NOFAIL>ab</F-NOFAIL>|\S+) for <HOST>").unwrap();
        assert_eq!(r, [r"Failed (?:[\S&&[^a]]\S*|a[\S&&[^b]]\S*|a|ab\S+) for \[?<HOST>\]?"]);
        let m = regex_automata::meta::Regex::new(&format!("^{}$", r[0].replace(r"\[?<HOST>\]?", "H"))).unwrap();
        for (line, yes) in [
            ("Failed ab for H", false),
            ("Failed a for H", true),
            ("Failed abc for H", true),
            ("Failed b for H", true),
            ("Failed xb for H", true),
        ] {
            assert_eq!(m.is_match(line), yes, "{line}");
        }
        // A positive one at the end is plain text.
        assert_eq!(convert(r"^from <HOST>(?= port)").unwrap().0, [r"from \[?<HOST>\]? port"]);
        // One in an alternative of the rule splits the rule.
        let (r, i) = convert(r"^(?:lost after(?! DATA) [A-Z]+|timeout after \S+) from \[<HOST>\]").unwrap();
        assert_eq!(r, [r"lost after [A-Z]+ from \[<HOST>\]", r"timeout after \S+ from \[<HOST>\]"]);
        assert_eq!(i, [r"lost after DATA"]);
        // What cannot be done is refused, at the construct's offset.
        let refused = [
            (r"^(?<!x)a <HOST>", "look-behind", 1),
            (r"^a(?=b) <HOST>", "positive look-ahead", 2),
            (r"^(?:(?! from ).)* <HOST>", "tempered token", 4),
            (r"^a(?:x(?!y))+ <HOST>", "inside a group or repetition", 6),
            (r"^(a)\1 <HOST>", "backreference", 4),
            (r"^(?P<a>x)(?P=a) <HOST>", "backreference (?P=a)", 9),
            (r"^(x)?(?(1)y|z) <HOST>", "group number 1", 5),
            (r"^(?:(?P<c>x))*(?(c)y|z) <HOST>", "is repeated", 14),
            (r"^a++ <HOST>", "possessive", 2),
            (r"^(?>a) <HOST>", "atomic", 1),
            (r"^from <DNS>", "never resolves", 6),
            (r"^from <SUBNET>", "not a network", 6),
            (r"^a<SKIPLINES>b <HOST>", "one line at a time", 2),
        ];
        for (re, what, at) in refused {
            let e = convert(re).unwrap_err();
            assert!(e.contains(what), "{re}: {e}");
            assert!(e.ends_with(&format!("@{at}")) || !e.contains('@'), "{re}: {e}");
        }
        for (re, what) in [
            (r"^a(b <HOST>", "missing )"),
            (r"^a\q", "bad escape"),
            (r"^*a", "nothing to repeat"),
            (r"^a{3,2}", "min repeat"),
            (r"^<F-USER>a", "not closed"),
        ] {
            assert!(convert(re).unwrap_err().contains(what), "{re}");
        }
    }

    #[test]
    fn prefregex_content_and_programs() {
        let mut node = parse_regex(&format!("^{PREFIX_MARK}(?:\\w+: )?warning: <F-CONTENT>.+</F-CONTENT>$")).unwrap();
        rebase(&mut node, 0);
        let p = split_prefregex(node).unwrap();
        assert!(p.mark && p.anchored);
        assert!(
            split_prefregex(parse_regex("^a<F-CONTENT>\\S+</F-CONTENT>").unwrap())
                .unwrap_err()
                .contains("not `.+`")
        );
        assert!(
            split_prefregex(parse_regex("^a b").unwrap())
                .unwrap_err()
                .contains("no <F-CONTENT>")
        );
        let g = |re: &str| globs(&parse_regex(re).unwrap());
        assert_eq!(g(r"postfix(-\w+)?/\w+(?:/smtp[ds])?").unwrap().len(), 6);
        assert_eq!(g(r"(?:dovecot(?:-auth)?|auth)").unwrap(), ["auth", "dovecot", "dovecot-auth"]);
        assert_eq!(g(r"\S*").unwrap(), ["*"]);
        assert!(glob_covers("postfix/*", "postfix/*/smtpd") && !glob_covers("postfix/*/smtpd", "postfix/*"));
    }

    #[test]
    fn fail2ban_times_and_options() {
        for (t, s) in [
            ("600", 600.0),
            ("10m", 600.0),
            ("1h 30m", 5400.0),
            ("1d12h", 129_600.0),
            ("2w", 1_209_600.0),
            ("-1", -1.0),
            ("1year-6mo", 15_778_800.0),
        ] {
            assert_eq!(seconds(t).unwrap(), s, "{t}");
        }
        assert!(seconds("soon").is_err() && seconds("").is_err() && seconds("1 fortnight").is_err());
        assert_eq!(dur_text(600), "10m");
        assert_eq!(dur_text(86_400 * 7), "1w");
        assert_eq!(dur_text(90), "90s");
        assert_eq!(
            extract_options("postfix[mode=auth, x=\"a, b\", y='c]']").unwrap(),
            (
                "postfix".into(),
                vec![
                    ("mode".into(), "auth".into()),
                    ("x".into(), "a, b".into()),
                    ("y".into(), "c]".into())
                ]
            )
        );
        assert_eq!(extract_options("sshd").unwrap(), ("sshd".into(), vec![]));
        assert!(extract_options("sshd[mode").is_err() && extract_options("[x=1]").is_err() && extract_options("f[=1]").is_err());
        assert_eq!(ignore_entry("10.0.0.0/255.255.0.0").unwrap(), "10.0.0.0/16");
        assert_eq!(ignore_entry("file:/etc/allow").unwrap(), "@/etc/allow");
        assert!(ignore_entry("10.0.0.0/255.0.255.0").is_err() && ignore_entry("a b").is_err() && ignore_entry("1.2.3.4/99").is_err());
        assert_eq!(ron_raw(r#"a"b"#), r##"r#"a"b"#"##);
        assert_eq!(ron_raw("a\"#b"), "r##\"a\"#b\"##");
    }

    /// A small configuration: a custom filter with what the converter must handle.
    fn custom() -> Vec<(&'static str, &'static str)> {
        vec![
            (
                "jail.conf",
                "[DEFAULT]\nbantime = 10m\nfindtime = 10m\nmaxretry = 5\nport = 0:65535\nfilter = %(__name__)s[mode=%(mode)s]\nmode = normal\n[app]\nenabled = false\nport = http,https\n[off]\nport = 1\n",
            ),
            (
                "filter.d/common.conf",
                "[DEFAULT]\n_daemon = \\S*\n__prefix_line = \\s*(?:\\S+\\s+)?(?:<_daemon>(?:\\[\\d+\\])?:\\s+)?\n",
            ),
            (
                "filter.d/app.conf",
                "[INCLUDES]\nbefore = common.conf\n[Definition]\n_daemon = app\nfailregex = ^%(__prefix_line)slogin failed for <F-USER>\\S+</F-USER> from <HOST>(?! \\(trusted\\))\n            ^%(__prefix_line)s(?<=x)never <HOST>\n            ^%(__prefix_line)sbad token from <ADDR>\nignoreregex = ^%(__prefix_line)slogin failed for admin\n",
            ),
            ("jail.local", "[app]\nenabled = true\nmaxretry = 3\nignoreip = 198.51.100.7\n"),
        ]
    }

    fn import(files: &[(&str, &str)]) -> Result<Import, ImportError> {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), files);
        fail2ban(dir.path())
    }

    #[test]
    fn a_custom_filter_is_converted_and_what_is_not_is_reported_at_its_line() {
        let imp = import(&custom()).unwrap();
        let cfg = Config::from_text("x.ron", &imp.pipeline, Path::new("/nonexistent")).unwrap();
        let app = &cfg.jails[0];
        assert_eq!(
            (app.name.as_str(), app.maxretry, app.programs.as_slice()),
            ("app", 3, ["app".to_string(), String::new()].as_slice()),
            "{}",
            imp.pipeline
        );
        assert_eq!(app.rules.len(), 2, "{}", imp.pipeline);
        assert!(
            app.rules[0].ends_with(r"login failed for (?:\S+) from \[?<HOST>\]?"),
            "{:?}",
            app.rules
        );
        assert_eq!(app.ignore.len(), 2, "{:?}", app.ignore);
        assert!(
            app.ignore.iter().any(|i| i.ends_with(r"\[?<HOST>\]? \(trusted\)")),
            "{:?}",
            app.ignore
        );
        assert_eq!(app.ports, Some(vec![PortSpec::Name("http".into()), PortSpec::Name("https".into())]));
        assert!(cfg.policy.ignore.contains(&"198.51.100.7".to_string()));
        let at = |file: &str, line: usize, what: &str| {
            assert!(
                imp.notes
                    .iter()
                    .any(|n| n.file == file && n.line == line && n.message.contains(what)),
                "{file}:{line} {what}: {:#?}",
                imp.notes
            );
        };
        at("filter.d/app.conf", 5, "ignore rule");
        at("filter.d/app.conf", 6, "look-behind");
        at("jail.local", 4, "ignoreip 198.51.100.7");
        // The notes head the file.
        assert!(
            imp.pipeline
                .contains("//   filter.d/app.conf:6: [app] failregex (or one case of it) left out: a look-behind"),
            "{}",
            imp.pipeline
        );
        // The disabled jail is not there.
        assert_eq!(cfg.jails.len(), 1);
    }

    #[test]
    fn a_jail_extends_its_filter_with_known_values() {
        let mut files = custom();
        files.push((
            "jail.d/app2.local",
            "[app2]\nenabled = true\nfilter = app\nport = 8080\nfailregex = %(known/failregex)s\n            ^extra from <HOST>$\n",
        ));
        let imp = import(&files).unwrap();
        let cfg = Config::from_text("x.ron", &imp.pipeline, Path::new("/nonexistent")).unwrap();
        let app2 = cfg
            .jails
            .iter()
            .find(|j| j.name == "app2")
            .unwrap_or_else(|| panic!("{}", imp.pipeline));
        // Its own line-anchored rule would read every sshd message: left out, said where.
        assert_eq!(app2.rules.len(), 2, "{:?}", app2.rules);
        assert!(app2.rules[0].contains("login failed for"), "{:?}", app2.rules);
        assert!(
            imp.notes
                .iter()
                .any(|n| n.file == "jail.d/app2.local" && n.line == 6 && n.message.contains("without a syslog header")),
            "{:#?}",
            imp.notes
        );
        assert!(
            imp.notes
                .iter()
                .any(|n| n.file == "filter.d/app.conf" && n.line == 6 && n.message.starts_with("[app2]")),
            "{:#?}",
            imp.notes
        );
    }

    #[test]
    fn an_ignoreregex_that_cannot_be_converted_refuses_the_jail() {
        let mut files = custom();
        files.push(("filter.d/app.local", "[Definition]\nignoreregex = ^%(__prefix_line)sx(?<=y)\n"));
        let imp = import(&files).unwrap();
        assert!(!imp.pipeline.contains("Jail("), "{}", imp.pipeline);
        assert!(
            imp.notes
                .iter()
                .any(|n| n.file == "filter.d/app.local" && n.line == 2 && n.message.contains("without it the jail would count")),
            "{:#?}",
            imp.notes
        );
    }

    #[test]
    fn errors_are_located() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(fail2ban(dir.path()), Err(ImportError::NotFound { .. })));
        let mut files = custom();
        files.push(("jail.d/x.local", "[app]\nenabled = true\nenabled = false\n"));
        let e = import(&files).unwrap_err();
        assert_eq!(
            e.to_string(),
            "jail.d/x.local:3: option \"enabled\" written twice in [app] of this file (fail2ban refuses that)"
        );
        // A filter fail2ban cannot read skips its jail, located.
        let mut files = custom();
        files.push(("filter.d/app.local", "[Definition\n"));
        let imp = import(&files).unwrap();
        assert!(
            imp.notes.iter().any(|n| n.file == "filter.d/app.local" && n.line == 1),
            "{:#?}",
            imp.notes
        );
        // Bad numbers skip the jail, at the option's line.
        let mut files = custom();
        files.push(("jail.d/n.local", "[app]\nmaxretry = many\n"));
        let imp = import(&files).unwrap();
        assert!(
            imp.notes
                .iter()
                .any(|n| n.file == "jail.d/n.local" && n.line == 2 && n.message.contains("not a number")),
            "{:#?}",
            imp.notes
        );
    }

    /// A tiny deterministic generator (no dependency): xorshift.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Malformed configurations, made by hand-picked and random edits of a valid one: an error
    /// or notes, never a panic, and what is written always loads.
    #[test]
    fn malformed_files_never_panic() {
        let base = custom();
        let specials = [
            "%(",
            "%",
            "<",
            "<F-USER>",
            "</F-USER>",
            "[",
            "]",
            "(",
            ")",
            "(?",
            "\\",
            "\n",
            "\n ",
            "=",
            ":",
            ";",
            "#",
            "{",
            "}",
            "(?!",
            "(?<=",
            "?",
            "*",
            "+",
            "|",
            "<HOST>",
            "%(__prefix_line)s",
            "<F-CONTENT>",
            "\u{e000}",
            "é",
            "\u{0}",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let dir = tempfile::tempdir().unwrap();
        for round in 0..300 {
            let mut files: Vec<(String, String)> = base.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
            files.push((
                "filter.d/app.local".into(),
                "[Definition]\nprefregex = ^%(__prefix_line)s(?:x: )?<F-CONTENT>.+</F-CONTENT>$\n".into(),
            ));
            for _ in 0..1 + rng.below(3) {
                let k = rng.below(files.len());
                let text = &mut files[k].1;
                let chars: Vec<char> = text.chars().collect();
                let at = rng.below(chars.len() + 1);
                let edited: String = match rng.below(3) {
                    0 => chars[..at].iter().collect(),
                    1 => {
                        let mut s: String = chars[..at].iter().collect();
                        s.push_str(specials[rng.below(specials.len())]);
                        s.extend(&chars[at..]);
                        s
                    }
                    _ => {
                        let end = (at + 1 + rng.below(8)).min(chars.len());
                        chars[..at].iter().chain(&chars[end..]).collect()
                    }
                };
                *text = edited;
            }
            let d = dir.path().join(round.to_string());
            for (n, t) in &files {
                let p = d.join(n);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, t).unwrap();
            }
            match fail2ban(&d) {
                Ok(imp) => {
                    Config::from_text("x.ron", &imp.pipeline, Path::new("/nonexistent"))
                        .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", imp.pipeline));
                }
                Err(ImportError::Output(e)) => panic!("round {round}: {e}"),
                Err(_) => {}
            }
        }
        // Deep nesting is an error, not a stack overflow.
        let deep = format!("{}a{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(parse_regex(&deep).unwrap_err().1.contains("nested"));
        // Regexes alone: random text from the special pieces.
        for _ in 0..3000 {
            let n = rng.below(8);
            let re: String = (0..n)
                .map(|_| {
                    if rng.below(3) == 0 {
                        "a"
                    } else {
                        specials[rng.below(specials.len())]
                    }
                })
                .collect();
            if let Ok(node) = parse_regex(&re) {
                let _ = globs(&node);
                if let Ok(composed) = compose(None, node, &mut Vec::new()) {
                    for l in lower(
                        composed,
                        LowerMode {
                            failure: true,
                            mlfid: true,
                        },
                        &mut 32,
                    )
                    .into_iter()
                    .flatten()
                    {
                        if let Ok(t) = emit_all(&concat(l.rule), false) {
                            let _ = check_rule(&t, false);
                        }
                    }
                }
            }
        }
    }
}
