//! Text with the place each part was written: a file and line for every byte, kept through
//! interpolation so a note can point at the line a construct was typed on.

use super::*;

/// Where a piece of text was written: a file (relative to DIR) and a 1-based line (0: nowhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pos {
    pub(super) file: Rc<str>,
    pub(super) line: usize,
}

impl Pos {
    pub(super) fn none() -> Pos {
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
pub(super) struct Spanned {
    pub(super) s: String,
    /// (offset, where the bytes from there on were written), ascending offsets.
    pub(super) marks: Vec<(usize, Pos)>,
}

impl Spanned {
    pub(super) fn new(s: &str, pos: Pos) -> Spanned {
        let mut t = Spanned::default();
        t.push_str(s, &pos);
        t
    }

    pub(super) fn push_str(&mut self, s: &str, pos: &Pos) {
        if s.is_empty() {
            return;
        }
        if self.marks.last().map(|(_, p)| p) != Some(pos) {
            self.marks.push((self.s.len(), pos.clone()));
        }
        self.s.push_str(s);
    }

    pub(super) fn push(&mut self, other: &Spanned) {
        for (i, (off, pos)) in other.marks.iter().enumerate() {
            let end = other.marks.get(i + 1).map_or(other.s.len(), |m| m.0);
            self.push_str(&other.s[*off..end], pos);
        }
    }

    pub(super) fn slice(&self, from: usize, to: usize) -> Spanned {
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
    pub(super) fn splice(&self, from: usize, to: usize, with: &Spanned) -> Spanned {
        let mut out = self.slice(0, from);
        out.push(with);
        out.push(&self.slice(to, self.s.len()));
        out
    }

    pub(super) fn pos_at(&self, off: usize) -> Pos {
        self.marks
            .iter()
            .rev()
            .find(|(o, _)| *o <= off)
            .or(self.marks.first())
            .map_or_else(Pos::none, |(_, p)| p.clone())
    }

    pub(super) fn lines(&self) -> Vec<Spanned> {
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

    pub(super) fn trim(&self) -> Spanned {
        let start = self.s.len() - self.s.trim_start().len();
        let end = self.s.trim_end().len().max(start);
        self.slice(start, end)
    }
}
