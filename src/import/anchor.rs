//! Anchoring: a regex's head (`^`, the prefix line, inline flags), the prefregex cut at its
//! content, and rules made relative to the message mailpipe matches.

use super::*;

/// What precedes a regex's text: `^`, `%(__prefix_line)s`, inline flags.
pub(super) struct Head {
    pub(super) anchored: bool,
    pub(super) mark: bool,
    /// The `<F-MLFID>` group held the prefix line: fail2ban's multi-line matching.
    pub(super) mlfid: bool,
    pub(super) rest: Vec<Node>,
}

pub(super) fn strip_head(v: Vec<Node>) -> Head {
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
pub(super) fn daemon_extra() -> Node {
    parse_regex(r"(?:\[ID \d+ \S+\]\s+)?").expect("a valid regex")
}

pub(super) fn dot_star() -> Node {
    Node::Repeat {
        node: Box::new(Node::Dot),
        min: 0,
        max: None,
        greedy: true,
    }
}

/// A group around `v` when inline flags at its top would otherwise reach what follows.
pub(super) fn scoped(v: Vec<Node>) -> Vec<Node> {
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
pub(super) struct Pref {
    pub(super) anchored: bool,
    pub(super) mark: bool,
    pub(super) mlfid: bool,
    /// What comes between the prefix line and the content.
    pub(super) a: Vec<Node>,
}

impl Pref {
    /// The start of every rule this prefregex heads: what fail2ban's prefix line leaves
    /// (`__daemon_extra_re`, or `.*` when the prefregex is not anchored), then its part before
    /// the content.
    pub(super) fn head(&self) -> Vec<Node> {
        let mut v = Vec::new();
        if self.mark && self.anchored {
            v.push(daemon_extra());
        } else if !self.anchored {
            v.push(dot_star());
        }
        v.extend(self.a.iter().cloned());
        v
    }
}

pub(super) fn split_prefregex(n: Node) -> Result<Pref, String> {
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
pub(super) struct Problem {
    pub(super) at: usize,
    pub(super) message: String,
}

/// A failure regex made message-relative: the prefregex's part (if any), then the regex.
/// Notes about anchoring go to `notes`.
pub(super) fn compose(pref: Option<&Pref>, n: Node, notes: &mut Vec<Problem>) -> Result<Vec<Node>, Problem> {
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
            v.extend(p.head());
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
pub(super) fn compose_ignore(pref: Option<&Pref>, n: Node) -> Vec<Node> {
    let h = strip_head(items(n));
    let mut v = Vec::new();
    if h.mark || !h.anchored {
        if h.mark && h.anchored {
            v.push(daemon_extra());
        } else {
            v.push(dot_star());
        }
    } else if let Some(p) = pref {
        v.extend(p.head());
    }
    v.extend(h.rest);
    v
}
