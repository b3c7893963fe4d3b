//! Rewrites of what regex-automata lacks (look-arounds, conditionals, tempered tokens,
//! fail2ban's no-failure marks) into rules and ignore rules that count no more than fail2ban.

use super::*;

/// Plain and named groups at the top level dissolved into their items, and fail2ban's
/// `<F-...>` groups that hold a look-around (they cannot be `<USER>` anyway).
pub(super) fn flatten(v: Vec<Node>) -> Vec<Node> {
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

pub(super) fn has_look(n: &Node) -> bool {
    n.any(&|x| matches!(x, Node::Look { .. }))
}

/// fail2ban's no-failure marks, which decide a rule's line is no failure (with `<F-MLFID>`).
pub(super) fn has_nofail(n: &Node) -> bool {
    n.any(&|x| matches!(x, Node::Tag { name, .. } if name == "NOFAIL" || name == "MLFGAINED"))
}

/// One rule of a jail: a failure rule (or, `nofail`, a line fail2ban decides is no failure),
/// the ignore rules its look-aheads became, and what was done.
#[derive(Debug)]
pub(super) struct Lowered {
    pub(super) rule: Vec<Node>,
    pub(super) ignores: Vec<Vec<Node>>,
    pub(super) rewrites: Vec<Problem>,
    pub(super) nofail: bool,
}

/// How [`lower`] treats a regex.
#[derive(Debug, Clone, Copy)]
pub(super) struct LowerMode {
    /// A failure regex (its negative look-aheads may become ignore rules); false: an ignore
    /// regex.
    pub(super) failure: bool,
    /// The filter ties lines together (`<F-MLFID>`): `<F-NOFAIL>` parts are no failure.
    pub(super) mlfid: bool,
}

/// The first conditional group in `n`: (group name, offset).
pub(super) fn first_cond(n: &Node) -> Option<(String, usize)> {
    match n {
        Node::Cond { name, at, .. } => Some((name.clone(), *at)),
        _ => n.children().into_iter().find_map(first_cond),
    }
}

/// `n` in the variants that decide whether group `name` took part in the match: each with
/// the group's part fixed, and whether it did. `Ok(None)`: the group is not in `n`.
pub(super) fn cond_variants(n: &Node, name: &str) -> Result<Option<Vec<(Node, bool)>>, String> {
    let plain = |b: Node| Node::Group {
        flags: None,
        body: Box::new(b),
    };
    let holds = |x: &Node| x.any(&|y| matches!(y, Node::Named { name: g, .. } if g == name));
    Ok(match n {
        Node::Named { name: g, body, .. } if g == name => Some(vec![(plain((**body).clone()), true)]),
        Node::Group { flags, body } => cond_variants(body, name)?.map(|vs| {
            rewrap(vs, |b| Node::Group {
                flags: flags.clone(),
                body: Box::new(b),
            })
        }),
        Node::Named { name: g, at, body } => cond_variants(body, name)?.map(|vs| {
            rewrap(vs, |b| Node::Named {
                name: g.clone(),
                at: *at,
                body: Box::new(b),
            })
        }),
        Node::Tag { name: t, at, body } => cond_variants(body, name)?.map(|vs| {
            rewrap(vs, |b| Node::Tag {
                name: t.clone(),
                at: *at,
                body: Box::new(b),
            })
        }),
        Node::Concat(items) => first_variants(items, name)?.map(|(k, vs)| {
            rewrap(vs, |b| {
                let mut v = items.clone();
                v[k] = b;
                Node::Concat(v)
            })
        }),
        // The other branches are cases where the group did not take part.
        Node::Alt(branches) => first_variants(branches, name)?.map(|(k, vs)| {
            let others = branches.iter().enumerate().filter(|(i, _)| *i != k);
            let mut out = rewrap(vs, plain);
            out.extend(others.map(|(_, b)| (plain(b.clone()), false)));
            out
        }),
        Node::Repeat { node, min, max, .. } => match cond_variants(node, name)? {
            None => None,
            Some(mut out) if *min <= 1 && *max == Some(1) => {
                if *min == 0 {
                    out.push((Node::Empty, false));
                }
                Some(out)
            }
            Some(_) => return Err(format!("the group {name:?} a condition tests is repeated")),
        },
        Node::Look { .. } if holds(n) => return Err(format!("the group {name:?} a condition tests is inside a look-around")),
        Node::Cond { yes, no, .. } if holds(yes) || holds(no) => {
            return Err(format!("the group {name:?} a condition tests is inside another condition"));
        }
        _ => None,
    })
}

/// Each variant put back into the node it came from.
fn rewrap(vs: Vec<(Node, bool)>, wrap: impl Fn(Node) -> Node) -> Vec<(Node, bool)> {
    vs.into_iter().map(|(b, st)| (wrap(b), st)).collect()
}

/// The cases of one conditional group: each node with whether the group took part.
type Variants = Vec<(Node, bool)>;

/// The first of `nodes` that holds group `name`: its index and its variants.
fn first_variants(nodes: &[Node], name: &str) -> Result<Option<(usize, Variants)>, String> {
    for (k, it) in nodes.iter().enumerate() {
        if let Some(vs) = cond_variants(it, name)? {
            return Ok(Some((k, vs)));
        }
    }
    Ok(None)
}

/// Conditions on group `name` replaced by their branch.
pub(super) fn resolve_cond(n: Node, name: &str, took_part: bool) -> Node {
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
pub(super) fn literal(n: &Node) -> Option<String> {
    match n {
        Node::Lit(c) => Some(c.to_string()),
        Node::Concat(v) => v.iter().map(literal).collect(),
        Node::Group { flags: None, body } => literal(body),
        _ => None,
    }
}

/// A tempered token `(?:(?!L).)*` (or `+`, lazy or not) with L literal: (L, its minimum).
pub(super) fn tempered(n: &Node) -> Option<(String, u32)> {
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

pub(super) fn lits(s: &str) -> Vec<Node> {
    s.chars().map(Node::Lit).collect()
}

/// fail2ban's `(?:<F-NOFAIL>WORD</F-NOFAIL>|C+)` (sshd's `publickey` or any method): the
/// failure is `C+` but WORD, written as a regex (`[C&&[^w]]C*|w...`); `None` when `n` is not of
/// that shape. Exact where what follows fixes the word's end (sshd's ` for`): Python takes the
/// WORD branch first, so only a `C+` of another length at the same place could differ.
pub(super) fn minus_nofail(n: &Node) -> Option<Node> {
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
pub(super) fn lower(v: Vec<Node>, mode: LowerMode, budget: &mut usize) -> Vec<Result<Lowered, Problem>> {
    let whole = concat(v.clone());
    if let Some((name, at)) = first_cond(&whole) {
        return lower_cond(&whole, &name, at, mode, budget);
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
        return lower_split(&v, k, mode, budget);
    }
    vec![lower_items(v, mode)]
}

/// [`lower`] per case of the conditional group `name` (at `at`) in `whole`.
fn lower_cond(whole: &Node, name: &str, at: usize, mode: LowerMode, budget: &mut usize) -> Vec<Result<Lowered, Problem>> {
    match cond_variants(whole, name) {
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
                out.extend(lower(items(resolve_cond(n, name, took_part)), mode, budget));
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
    }
}

/// [`lower`] per branch of the alternation at item `k` of `v`.
fn lower_split(v: &[Node], k: usize, mode: LowerMode, budget: &mut usize) -> Vec<Result<Lowered, Problem>> {
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
    out
}

/// One case of a rule, its items rewritten one by one (see [`lower`]).
fn lower_items(v: Vec<Node>, mode: LowerMode) -> Result<Lowered, Problem> {
    if let Some((at, message)) = concat(v.clone()).first_bad() {
        return Err(Problem { at, message });
    }
    let nofail = mode.mlfid && has_nofail(&concat(v.clone()));
    // An ignore rule cannot have exceptions of its own.
    let may_ignore = mode.failure && !nofail;
    let mut out = Lowered {
        rule: Vec::new(),
        ignores: Vec::new(),
        rewrites: Vec::new(),
        nofail,
    };
    let last = v.len().saturating_sub(1);
    for (k, n) in v.iter().enumerate() {
        if let Some((l, min)) = tempered(n) {
            push_tempered(&mut out, n, &l, min, &v[k + 1..], may_ignore)?;
        } else {
            push_item(&mut out, n, k == last, may_ignore)?;
        }
    }
    Ok(out)
}

/// A tempered token `n`, `(?:(?!L).)*` (at least `min`), followed by `rest`: `.*` in the rule
/// and ignore rules for the lines where L is inside it.
fn push_tempered(out: &mut Lowered, n: &Node, l: &str, min: u32, rest: &[Node], may_ignore: bool) -> Result<(), Problem> {
    let Node::Repeat { node, .. } = n else { unreachable!() };
    let at = match &**node {
        Node::Group { body, .. } => find_look(body),
        other => find_look(other),
    }
    .and_then(|x| if let Node::Look { at, .. } = x { Some(at) } else { None })
    .unwrap_or(0);
    if !may_ignore {
        return Err(Problem { at, message: "a look-ahead in a repetition (a tempered token) in an ignore or no-failure regex: an ignore rule cannot have exceptions of its own".to_string() });
    }
    let rule = &out.rule;
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
        ig.extend(lits(l));
        out.ignores.push(ig);
    } else if rest.len() >= l.chars().count() && literal(&Node::Concat(rest[..l.chars().count()].to_vec())).as_deref() == Some(l) {
        // `X(?:(?!L).)*L...`: the L that follows must be the first after X, so a second
        // one before it (or overlapping it) means no match.
        let chars: Vec<char> = l.chars().collect();
        let mut ig = rule.clone();
        ig.push(anything());
        ig.extend(lits(l));
        ig.push(anything());
        ig.extend(lits(l));
        out.ignores.push(ig);
        for d in 1..chars.len() {
            if chars[d..] == chars[..chars.len() - d] {
                let mut ig = rule.clone();
                ig.push(anything());
                ig.extend(chars[..d].iter().map(|c| Node::Lit(*c)));
                ig.extend(lits(l));
                out.ignores.push(ig);
            }
        }
    } else {
        return Err(Problem {
            at,
            message: "a look-ahead in a repetition (a tempered token) followed by other text than its own: regex-automata has none"
                .to_string(),
        });
    }
    out.rule.push(Node::Repeat {
        node: Box::new(Node::Dot),
        min,
        max: None,
        greedy: true,
    });
    out.rewrites.push(Problem {
        at,
        message: format!("the tempered token (?:(?!{l}).)* is written as `.*` and a jail ignore rule for lines with {l:?} inside it: a line that rule matches is not counted by any rule of the jail"),
    });
    Ok(())
}

/// Item `n` of a rule (`last`: its last item): kept, a look-ahead rewritten, or an `Err` where
/// it cannot be.
fn push_item(out: &mut Lowered, n: &Node, last: bool, may_ignore: bool) -> Result<(), Problem> {
    match n {
        Node::Look {
            ahead: true,
            neg: true,
            body,
            at,
        } if may_ignore && !has_look(body) => {
            let mut ig = out.rule.clone();
            ig.push(Node::Group {
                flags: None,
                body: body.clone(),
            });
            out.ignores.push(ig);
            out.rewrites.push(Problem {
                at: *at,
                message: "the negative look-ahead (?!...) is written as a jail ignore rule (the text before it, then its own): a line that rule matches is not counted by any rule of the jail".to_string(),
            });
        }
        Node::Look {
            ahead: true,
            neg: false,
            body,
            ..
        } if last && !has_look(body) => {
            out.rule.push(Node::Group {
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
            return Err(Problem {
                at: *at,
                message: why.to_string(),
            });
        }
        other => {
            if let Some(Node::Look { at, .. }) = find_look(other) {
                return Err(Problem {
                    at,
                    message: "a look-around inside a group or repetition: regex-automata has none, and only one at the top level of the rule can be rewritten".to_string(),
                });
            }
            out.rule.push(other.clone());
        }
    }
    Ok(())
}

pub(super) fn find_look(n: &Node) -> Option<Node> {
    match n {
        Node::Look { .. } => Some(n.clone()),
        _ => n.children().into_iter().find_map(find_look),
    }
}
