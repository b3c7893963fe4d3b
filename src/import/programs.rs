//! A filter's `_daemon` regex as the program globs of a converted jail.

use super::*;

/// A `_daemon` regex as program globs: `None` when it is too complex (then: any program).
pub(super) fn globs(n: &Node) -> Option<Vec<String>> {
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
pub(super) fn glob_covers(a: &str, b: &str) -> bool {
    fn m(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|k| m(rest, &s[k..])),
            Some((c, rest)) => s.first() == Some(c) && m(rest, &s[1..]),
        }
    }
    m(a.as_bytes(), b.as_bytes())
}
