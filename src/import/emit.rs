//! The regex tree written as mailpipe regex text.

use super::*;

/// mailpipe's `<USER>` pattern (matcher.rs): an F-USER group becomes `<USER>` only when its own
/// pattern is exactly this.
pub(super) const USER_PATTERN: &str = r"[^\s,>)]*";

pub(super) fn hir(re: &str) -> Option<regex_syntax::hir::Hir> {
    regex_syntax::ParserBuilder::new().unicode(false).utf8(false).build().parse(re).ok()
}

pub(super) fn lit_text(c: char) -> String {
    match c {
        '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' | '#' => format!("\\{c}"),
        '\n' => "\\n".to_string(),
        '\t' => "\\t".to_string(),
        '\r' => "\\r".to_string(),
        c if c.is_control() => format!("\\x{{{:X}}}", c as u32),
        c => c.to_string(),
    }
}

pub(super) fn class_char(c: char) -> String {
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
pub(super) fn keep_flags(f: &str) -> String {
    f.chars().filter(|c| matches!(c, 'i' | 's')).collect()
}

pub(super) struct Emit {
    pub(super) user_used: bool,
    /// Every literal `<` as `[<]`.
    pub(super) safe_lt: bool,
    /// Placeholders written (`<HOST>`, `<IP4>`, `<IP6>`, `<USER>`).
    pub(super) placed: usize,
}

/// The mailpipe placeholders a rule's text may hold.
pub(super) const PLACEHOLDERS: [&str; 6] = ["<HOST>", "<ADDR>", "<IP4>", "<IP6>", "<USER>", "<FORWARDED>"];

/// `n` as mailpipe regex text; `user_used`: no `<USER>` (one is written already, or an ignore
/// rule). A literal `<` that would make a placeholder of text with what follows it is written
/// `[<]`.
pub(super) fn emit_all(n: &Node, user_used: bool) -> Result<String, PErr> {
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
pub(super) fn is_atom(n: &Node) -> bool {
    match n {
        Node::Lit(_) | Node::Dot | Node::Perl(_) | Node::Class { .. } | Node::Raw(_) => true,
        Node::Group { flags: None, body } | Node::Named { body, .. } => is_atom(body) || !matches!(**body, Node::Empty),
        Node::Group { .. } => true,
        _ => false,
    }
}

impl Emit {
    pub(super) fn place(&mut self, kind: HostKind) -> HostKind {
        self.placed += 1;
        kind
    }

    /// `n` as mailpipe regex text.
    pub(super) fn emit(&mut self, n: &Node) -> Result<String, PErr> {
        Ok(match n {
            Node::Empty => String::new(),
            Node::Lit('<') if self.safe_lt => "[<]".to_string(),
            Node::Lit(c) => lit_text(*c),
            Node::Dot => ".".to_string(),
            Node::Perl(c) => format!("\\{c}"),
            Node::Class { neg, items } => class_text(*neg, items),
            Node::Start => "^".to_string(),
            Node::End => "$".to_string(),
            Node::Word(true) => "\\b".to_string(),
            Node::Word(false) => "\\B".to_string(),
            Node::Group { flags: None, body } | Node::Named { body, .. } if is_atom(body) => self.emit(body)?,
            Node::Group { flags, body } => group_text(flags.as_ref(), &self.emit(body)?),
            Node::Flags(on) => {
                let on = keep_flags(on);
                if on.is_empty() { String::new() } else { format!("(?{on})") }
            }
            Node::Concat(v) => self.concat(v)?,
            Node::Alt(v) => v.iter().map(|b| self.emit(b)).collect::<Result<Vec<_>, _>>()?.join("|"),
            Node::Repeat { node, min, max, greedy } => self.repeat(node, *min, *max, *greedy)?,
            Node::Host { kind, .. } => match self.place(*kind) {
                HostKind::Any => "\\[?<HOST>\\]?".to_string(),
                HostKind::V4 => "(?:::f{4,6}:)?<IP4>".to_string(),
                HostKind::V6 => "<IP6>".to_string(),
            },
            Node::Tag { name, body, .. } => self.tag(name, body)?,
            Node::Named { body, .. } => format!("(?:{})", self.emit(body)?),
            Node::Raw(r) => r.clone(),
            Node::Look { at, .. } => return Err((*at, "a look-around here cannot be rewritten".to_string())),
            Node::Cond { .. } | Node::Mark { .. } | Node::Bad { .. } => {
                return Err(n.unrunnable().expect("one of those mailpipe cannot run"));
            }
        })
    }

    /// Items in a row: a literal `<`, `<HOST>`, alternations and plain groups need their
    /// neighbours' view.
    fn concat(&mut self, v: &[Node]) -> Result<String, PErr> {
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
        Ok(s)
    }

    /// `node` repeated, in a group unless it is one atom as written.
    fn repeat(&mut self, node: &Node, min: u32, max: Option<u32>, greedy: bool) -> Result<String, PErr> {
        let inner = self.emit(node)?;
        let atomic = matches!(
            node,
            Node::Lit(_) | Node::Dot | Node::Perl(_) | Node::Class { .. } | Node::Group { .. } | Node::Named { .. } | Node::Raw(_)
        ) && !(matches!(node, Node::Lit(_)) && inner.starts_with("[<"));
        let inner = if atomic { inner } else { format!("(?:{inner})") };
        let q = match (min, max) {
            (0, None) => "*".to_string(),
            (1, None) => "+".to_string(),
            (0, Some(1)) => "?".to_string(),
            (m, None) => format!("{{{m},}}"),
            (m, Some(x)) if m == x => format!("{{{m}}}"),
            (m, Some(x)) => format!("{{{m},{x}}}"),
        };
        Ok(format!("{inner}{q}{}", if greedy { "" } else { "?" }))
    }

    /// `<F-NAME>...</F-NAME>`: `<USER>` where it is exactly mailpipe's user pattern (once per
    /// rule), else a plain group.
    fn tag(&mut self, name: &str, body: &Node) -> Result<String, PErr> {
        let b = self.emit(body)?;
        Ok(
            if name == "USER" && !self.user_used && hir(&b).is_some() && hir(&b) == hir(USER_PATTERN) {
                self.user_used = true;
                self.placed += 1;
                "<USER>".to_string()
            } else if is_atom(body) {
                b
            } else {
                format!("(?:{b})")
            },
        )
    }
}

/// A character class as mailpipe regex text.
fn class_text(neg: bool, items: &[ClassItem]) -> String {
    let mut s = String::from(if neg { "[^" } else { "[" });
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

/// A group around the emitted `body`, with the flags mailpipe's engine has.
fn group_text(flags: Option<&(String, String)>, body: &str) -> String {
    let Some((on, off)) = flags else {
        return format!("(?:{body})");
    };
    let (on, off) = (keep_flags(on), keep_flags(off));
    match (on.is_empty(), off.is_empty()) {
        (true, true) => format!("(?:{body})"),
        (false, true) => format!("(?{on}:{body})"),
        (_, false) => format!("(?{on}-{off}:{body})"),
    }
}
