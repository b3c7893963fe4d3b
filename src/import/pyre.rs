//! fail2ban regexes: Python `re` syntax with fail2ban's tags, parsed into a tree ([`Node`]).

use super::*;

/// Which address a host tag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HostKind {
    /// `<HOST>` (an address, or in fail2ban also a name) and `<ADDR>`.
    Any,
    /// `<IP4>`.
    V4,
    /// `<IP6>`.
    V6,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum ClassItem {
    Ch(char),
    Range(char, char),
    Perl(char),
}

/// A fail2ban regex. `at` is the byte offset in the regex text, for notes.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
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
    pub(super) fn children(&self) -> Vec<&Node> {
        match self {
            Node::Group { body, .. } | Node::Look { body, .. } | Node::Tag { body, .. } | Node::Named { body, .. } => vec![body],
            Node::Repeat { node, .. } => vec![node],
            Node::Cond { yes, no, .. } => vec![yes, no],
            Node::Concat(v) | Node::Alt(v) => v.iter().collect(),
            _ => Vec::new(),
        }
    }

    pub(super) fn children_mut(&mut self) -> Vec<&mut Node> {
        match self {
            Node::Group { body, .. } | Node::Look { body, .. } | Node::Tag { body, .. } | Node::Named { body, .. } => vec![body],
            Node::Repeat { node, .. } => vec![node],
            Node::Cond { yes, no, .. } => vec![yes, no],
            Node::Concat(v) | Node::Alt(v) => v.iter_mut().collect(),
            _ => Vec::new(),
        }
    }

    /// Whether `f` holds for this node or any inside it.
    pub(super) fn any(&self, f: &dyn Fn(&Node) -> bool) -> bool {
        f(self) || self.children().into_iter().any(|c| c.any(f))
    }

    /// This node itself, when mailpipe cannot run it: (offset, why).
    pub(super) fn unrunnable(&self) -> Option<(usize, String)> {
        match self {
            Node::Bad { at, why } => Some((*at, why.clone())),
            Node::Mark { at } => Some((*at, "%(__prefix_line)s anywhere but at the start of the regex".to_string())),
            Node::Cond { at, .. } => Some((
                *at,
                "a conditional group (?(name)yes|no) that cannot be expanded: regex-automata has none".to_string(),
            )),
            _ => None,
        }
    }

    /// The first construct inside this node that mailpipe cannot run: (offset, why).
    pub(super) fn first_bad(&self) -> Option<(usize, String)> {
        self.unrunnable().or_else(|| self.children().into_iter().find_map(Node::first_bad))
    }

    /// How many host tags the node holds.
    pub(super) fn hosts(&self) -> usize {
        match self {
            Node::Host { .. } => 1,
            _ => self.children().into_iter().map(Node::hosts).sum(),
        }
    }

    pub(super) fn has_tag(&self, name: &str) -> bool {
        self.any(&|n| matches!(n, Node::Tag { name: t, .. } if t == name))
    }
}

/// Offsets of a failregex's nodes start here, so those of the prefregex it is joined to stay
/// apart.
pub(super) const REBASE: usize = 1 << 40;

/// Adds `base` to every offset in `n`.
pub(super) fn rebase(n: &mut Node, base: usize) {
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
pub(super) fn items(n: Node) -> Vec<Node> {
    match n {
        Node::Concat(v) => v,
        Node::Empty => Vec::new(),
        x => vec![x],
    }
}

pub(super) fn concat(mut v: Vec<Node>) -> Node {
    match v.len() {
        0 => Node::Empty,
        1 => v.pop().expect("one"),
        _ => Node::Concat(v),
    }
}

pub(super) type PErr = (usize, String);

/// Python's `re` parser, for what fail2ban's filters write.
pub(super) struct Py<'a> {
    pub(super) s: &'a str,
    pub(super) chars: Vec<(usize, char)>,
    pub(super) i: usize,
    pub(super) verbose: bool,
    pub(super) open_tags: Vec<String>,
    /// Groups open at the cursor (bounded: the tree is walked recursively).
    pub(super) depth: usize,
}

/// The deepest nesting of groups read (fail2ban's filters nest a handful).
pub(super) const MAX_NESTING: usize = 100;

/// fail2ban's `R_GLOB2LOCFLAGS`: a group that starts with inline flags, `((?i)a|b)`, is the
/// scoped group `(?i:a|b)` (Python 3.11 refuses global flags anywhere but at the start).
pub(super) fn local_flags(body: Node) -> Node {
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
pub(super) fn tag_at(s: &str) -> Option<(&str, usize)> {
    let rest = s.strip_prefix('<')?;
    let end = rest.find('>')?;
    let inner = &rest[..end];
    let core = inner.strip_prefix('/').unwrap_or(inner);
    let core = core.strip_suffix('/').unwrap_or(core);
    (!core.is_empty() && core.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-')).then_some((inner, end + 2))
}

pub(super) fn parse_regex(s: &str) -> Result<Node, PErr> {
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
    pub(super) fn peek(&self) -> Option<char> {
        self.chars.get(self.i).map(|c| c.1)
    }

    pub(super) fn peek2(&self) -> Option<char> {
        self.chars.get(self.i + 1).map(|c| c.1)
    }

    pub(super) fn at(&self) -> usize {
        self.chars.get(self.i).map_or(self.s.len(), |c| c.0)
    }

    pub(super) fn rest(&self) -> &str {
        &self.s[self.at()..]
    }

    pub(super) fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.i += usize::from(c.is_some());
        c
    }

    pub(super) fn skip_chars(&mut self, bytes: usize) {
        let target = self.at() + bytes;
        while self.i < self.chars.len() && self.at() < target {
            self.i += 1;
        }
    }

    pub(super) fn skip_verbose(&mut self) {
        while self.verbose {
            match self.peek() {
                Some(c) if c.is_whitespace() => self.i += 1,
                Some('#') => while !matches!(self.next(), None | Some('\n')) {},
                _ => break,
            }
        }
    }

    /// `</F-NAME>` closing a tag that is open.
    pub(super) fn closing_tag(&self) -> Option<String> {
        let (inner, _) = tag_at(self.rest())?;
        let name = inner.strip_prefix("/F-")?;
        self.open_tags.iter().any(|t| t == name).then(|| name.to_string())
    }

    pub(super) fn alt(&mut self) -> Result<Node, PErr> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err((self.at(), format!("groups nested more than {MAX_NESTING} deep")));
        }
        let n = self.alt_inner();
        self.depth -= 1;
        n
    }

    pub(super) fn alt_inner(&mut self) -> Result<Node, PErr> {
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

    pub(super) fn concat(&mut self) -> Result<Node, PErr> {
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
    pub(super) fn brace(&self) -> Option<(u32, Option<u32>, usize)> {
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

    pub(super) fn quantified(&mut self, atom: Node, start: usize) -> Result<Node, PErr> {
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

    pub(super) fn atom(&mut self) -> Result<Node, PErr> {
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
    pub(super) fn tag(&mut self, inner: &str, len: usize, at: usize) -> Result<Option<Node>, PErr> {
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

    /// `)` closing the group opened at `at`.
    fn close(&mut self, at: usize) -> Result<(), PErr> {
        if self.next() == Some(')') {
            Ok(())
        } else {
            Err((at, "missing ), unterminated group".to_string()))
        }
    }

    /// A group, its `(` read: plain, a look-around, named, a comment, a condition, atomic or
    /// with flags.
    pub(super) fn group(&mut self, at: usize) -> Result<Node, PErr> {
        if self.peek() != Some('?') {
            let body = self.alt()?;
            self.close(at)?;
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
            self.close(at)?;
            return Ok(Node::Look {
                ahead,
                neg,
                body: Box::new(body),
                at,
            });
        }
        if let Some(r) = rest.strip_prefix("P<") {
            return self.named(r, at);
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
            self.close(at)?;
            return Ok(local_flags(body));
        }
        if rest.starts_with('(') {
            return self.condition(&rest, at);
        }
        if rest.starts_with('>') {
            self.i += 1;
            self.alt()?;
            self.close(at)?;
            return Ok(Node::Bad {
                at,
                why: "an atomic group (?>...): regex-automata has none".to_string(),
            });
        }
        self.flags(&rest, at)
    }

    /// `(?P<name>...)`, `rest` after its `P<`.
    fn named(&mut self, rest: &str, at: usize) -> Result<Node, PErr> {
        let end = rest.find('>').ok_or((at, "unterminated group name".to_string()))?;
        let name = rest[..end].to_string();
        self.skip_chars(2 + end + 1);
        let body = self.alt()?;
        self.close(at)?;
        if ["ip4", "ip6", "dns", "fid", "cidr", "mlfid"].contains(&name.as_str()) {
            return Ok(Node::Bad {
                at,
                why: format!("a group named {name:?} written by hand, which fail2ban takes as the failure's address or id: write <HOST>"),
            });
        }
        Ok(Node::Named {
            name,
            at,
            body: Box::new(body),
        })
    }

    /// `(?(name)yes|no)`, `rest` from its `(name)`.
    fn condition(&mut self, rest: &str, at: usize) -> Result<Node, PErr> {
        let end = rest.find(')').ok_or((at, "unterminated condition".to_string()))?;
        let name = rest[1..end].to_string();
        self.skip_chars(end + 1);
        let body = self.alt()?;
        self.close(at)?;
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
        Ok(Node::Cond {
            name,
            yes: Box::new(yes),
            no: Box::new(no),
            at,
        })
    }

    /// Flags: `(?aiLmsux)` or `(?aiLmsux-imsx:...)`, `rest` after the `?`.
    fn flags(&mut self, rest: &str, at: usize) -> Result<Node, PErr> {
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
                self.close(at)?;
                Ok(Node::Group {
                    flags: Some((on, off)),
                    body: Box::new(body),
                })
            }
            _ => Err((at, format!("unknown extension (?{}", rest.chars().take(3).collect::<String>()))),
        }
    }

    pub(super) fn hex(&mut self, n: usize, at: usize) -> Result<char, PErr> {
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

    pub(super) fn octal(&mut self, first: char, at: usize) -> Result<char, PErr> {
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
    pub(super) fn char_escape(&mut self, c: char, at: usize) -> Result<Option<char>, PErr> {
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

    pub(super) fn escape(&mut self, at: usize) -> Result<Node, PErr> {
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

    pub(super) fn class(&mut self, at: usize) -> Result<Node, PErr> {
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

    pub(super) fn class_escape(&mut self, at: usize) -> Result<ClassItem, PErr> {
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
