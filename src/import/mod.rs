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
//! - **Jails** whose filter and mode is one mailpipe ships (the table `jail::SHIPPED`: postfix's
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

mod anchor;
mod convert;
mod emit;
mod filter;
mod ini;
mod interp;
mod jail;
mod lookaround;
mod output;
mod policy;
mod programs;
mod pyre;
mod span;
#[cfg(test)]
mod tests;
mod values;

use self::anchor::*;
#[cfg(test)]
use self::convert::*;
use self::emit::*;
use self::filter::*;
use self::ini::*;
use self::interp::*;
use self::jail::*;
use self::lookaround::*;
use self::output::*;
use self::policy::*;
use self::programs::*;
use self::pyre::*;
use self::span::*;
use self::values::*;

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
