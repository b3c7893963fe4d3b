//! Stage 2: a literal prefilter on the raw line.
//!
//! Most log lines are not failures. Every rule requires some literal text (`" authentication
//! failed:"`, `"(auth failed, "`); those literals are derived from the rules themselves and
//! searched with one Aho-Corasick automaton (LeftmostFirst, so its SIMD searcher is used) before
//! the line is even parsed. A line without any of them cannot match a rule that has literals.
//! Rules without a usable literal are reported by the matcher and checked on their own, so they
//! never cost the others their skipping.

use aho_corasick::{AhoCorasick, MatchKind};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Hir, HirKind};

/// The compiled prefilter.
#[derive(Debug, Clone)]
pub struct Prefilter {
    /// Is any literal in the line? LeftmostFirst, so the SIMD (Teddy) searcher is used.
    any: Option<AhoCorasick>,
    literals: Vec<Vec<u8>>,
    /// Every rule (pattern id), for lines with a literal.
    all: Vec<u32>,
    /// Rules without a literal: the only candidates on lines without one.
    always: Vec<u32>,
}

impl Prefilter {
    /// Builds the automaton; `sets[i]` is rule i's literal set (`None`: no usable literal).
    pub fn new(sets: &[Option<Vec<Vec<u8>>>]) -> Prefilter {
        let mut literals: Vec<Vec<u8>> = sets.iter().flatten().flatten().cloned().collect();
        literals.sort();
        literals.dedup();
        // A literal containing another is redundant: any line with it has the shorter one.
        let all = literals.clone();
        literals.retain(|l| !all.iter().any(|o| o.len() < l.len() && memchr::memmem::find(l, o).is_some()));
        let any = (!literals.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(&literals)
                .expect("literals are bounded in number and length")
        });
        Prefilter {
            any,
            literals,
            all: (0..sets.len() as u32).collect(),
            always: (0..sets.len() as u32).filter(|&i| sets[i as usize].is_none()).collect(),
        }
    }

    /// Whether `line` contains a literal of some rule.
    #[inline]
    pub fn is_candidate(&self, line: &[u8]) -> bool {
        self.any.as_ref().is_some_and(|ac| ac.is_match(line))
    }

    /// Whether some rule has no literal (then no line can be skipped unparsed).
    pub fn has_unliteral(&self) -> bool {
        !self.always.is_empty()
    }

    /// The rules worth trying on a line, ascending: all of them when it holds a literal
    /// (`any`), else only those without literals. Finding out *which* literals occur costs
    /// more than trying the rules: an anchored DFA rejects a wrong rule in a few bytes, and
    /// the matcher skips jails whose program does not fit.
    pub fn candidates(&self, any: bool) -> &[u32] {
        if any { &self.all } else { &self.always }
    }

    /// The literals found in `line`, for `explain`.
    pub fn hits(&self, line: &[u8]) -> Vec<String> {
        self.literals
            .iter()
            .filter(|l| memchr::memmem::find(line, l).is_some())
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    /// All literals searched for.
    pub fn literals(&self) -> &[Vec<u8>] {
        &self.literals
    }
}

/// A set of literals of which every match of `hir` contains at least one; `None` when the rule
/// has no usable literal (then it must be checked on every line).
///
/// Extracting prefixes of the whole rule is useless for rules that start with `[^\[]*` or a
/// program name, so every suffix of the top-level concatenation is tried: a match of the rule
/// contains a match of each suffix, hence one of that suffix's prefix literals. The best set has
/// the longest shortest literal (rarer in logs), then the fewest literals.
pub fn required_literals(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    let mut hir = hir;
    while let HirKind::Capture(c) = hir.kind() {
        hir = &c.sub;
    }
    let children: &[Hir] = match hir.kind() {
        HirKind::Concat(c) => c,
        _ => std::slice::from_ref(hir),
    };
    let mut extractor = Extractor::new();
    extractor
        .kind(ExtractKind::Prefix)
        .limit_class(4)
        .limit_repeat(4)
        .limit_literal_len(40)
        .limit_total(64);
    type Score = (usize, std::cmp::Reverse<usize>);
    let mut best: Option<(Score, Vec<Vec<u8>>)> = None;
    for i in 0..children.len() {
        let mut seq = extractor.extract(&Hir::concat(children[i..].to_vec()));
        seq.optimize_for_prefix_by_preference();
        let Some(lits) = seq.literals() else { continue };
        let Some(shortest) = lits.iter().map(|l| l.as_bytes().len()).min() else {
            continue;
        };
        if shortest < 3 {
            continue;
        }
        // Beyond 16 bytes a literal is as good as unique; then prefer fewer of them.
        let score = (shortest.min(16), std::cmp::Reverse(lits.len()));
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, lits.iter().map(|l| l.as_bytes().to_vec()).collect()));
        }
    }
    best.map(|(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lits(re: &str) -> Option<Vec<String>> {
        let hir = regex_syntax::ParserBuilder::new()
            .unicode(false)
            .utf8(false)
            .build()
            .parse(re)
            .unwrap();
        required_literals(&hir).map(|v| v.into_iter().map(|l| String::from_utf8(l).unwrap()).collect())
    }

    #[test]
    fn derives_inner_literal() {
        let l = lits(r"warning: [^\[]*\[(?P<host>\d+\.\d+\.\d+\.\d+)\]: SASL \w+ authentication failed:").unwrap();
        assert_eq!(l, vec![" authentication failed:"]);
    }

    #[test]
    fn no_literal_is_none() {
        assert_eq!(lits(r"\S+ \d+"), None);
    }

    #[test]
    fn skips_lines_without_literals() {
        let p = Prefilter::new(&[
            Some(vec![b"auth failed".to_vec()]),
            None,
            Some(vec![b"failed, ".to_vec(), b"unknown user".to_vec()]),
        ]);
        assert!(p.is_candidate(b"x (auth failed, 3 attempts)"));
        assert!(!p.is_candidate(b"connect from x"));
        assert_eq!(p.hits(b"(auth failed, 3"), vec!["auth failed", "failed, "]);
        assert_eq!(p.candidates(true), [0, 1, 2]);
        assert_eq!(p.candidates(false), [1]);
    }
}
