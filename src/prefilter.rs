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
use smallvec::SmallVec;

/// The compiled prefilter.
#[derive(Debug, Clone)]
pub struct Prefilter {
    /// Is any literal in the line? LeftmostFirst, so the SIMD (Teddy) searcher is used.
    any: Option<AhoCorasick>,
    /// The same question, asked of Teddy searchers of about `TEDDY` literals each: Teddy's
    /// cost grows with the literals per bucket, so three small searchers (the 8-bucket kind,
    /// 32 bytes a step) beat one over all the literals (16 buckets, 16 bytes a step) by 40%.
    /// Empty where Teddy is unavailable. Pattern ids run on from one searcher to the next.
    packed: Vec<aho_corasick::packed::Searcher>,
    /// Literals per searcher in `packed` (the last may have fewer).
    per_searcher: usize,
    literals: Vec<Vec<u8>>,
    /// Every occurrence of every literal (overlapping), to tell which rules a line may match.
    each: Option<AhoCorasick>,
    /// For each literal, the rules that have it (or a longer literal holding it), as bits.
    rules_of: Vec<Box<[u64]>>,
    /// `always` as bits.
    always_bits: Box<[u64]>,
    /// Every rule (pattern id), for lines whose literals cannot be trusted (escaped JSON).
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
        let mut literals = fold(literals);
        // A literal containing another is redundant: any line with it has the shorter one.
        let all = literals.clone();
        literals.retain(|l| !all.iter().any(|o| o.len() < l.len() && memchr::memmem::find(l, o).is_some()));
        let build = |kind| {
            (!literals.is_empty()).then(|| {
                AhoCorasick::builder()
                    .match_kind(kind)
                    .build(&literals)
                    .expect("literals are bounded in number and length")
            })
        };
        let per_searcher = per_searcher(literals.len());
        let packed: Option<Vec<_>> = literals
            .chunks(per_searcher)
            .map(|chunk| {
                aho_corasick::packed::Config::new()
                    .heuristic_pattern_limits(false)
                    .builder()
                    .extend(chunk)
                    .build()
            })
            .collect();
        // The automata are the fallback where Teddy is not available (no SIMD): built only then.
        let (packed, any, each) = match packed {
            Some(p) => (p, None, None),
            None => (Vec::new(), build(MatchKind::LeftmostFirst), build(MatchKind::Standard)),
        };
        // Each rule's literals were folded or dropped only in favour of literals they contain.
        let bits = |has: &dyn Fn(usize) -> bool| -> Box<[u64]> {
            let mut w = vec![0u64; sets.len().div_ceil(64)];
            for r in (0..sets.len()).filter(|&r| has(r)) {
                w[r / 64] |= 1 << (r % 64);
            }
            w.into()
        };
        let rules_of = literals
            .iter()
            .map(|f| bits(&|r| sets[r].iter().flatten().any(|l| memchr::memmem::find(l, f).is_some())))
            .collect();
        Prefilter {
            any,
            per_searcher,
            packed,
            each,
            rules_of,
            always_bits: bits(&|r| sets[r].is_none()),
            literals,
            all: (0..sets.len() as u32).collect(),
            always: (0..sets.len() as u32).filter(|&i| sets[i as usize].is_none()).collect(),
        }
    }

    /// Whether `line` contains a literal of some rule.
    #[inline]
    pub fn is_candidate(&self, line: &[u8]) -> bool {
        match &self.any {
            None => self.packed.iter().any(|p| p.find(line).is_some()),
            Some(ac) => ac.is_match(line),
        }
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

    /// The rules to try on `line`, ascending; `None` when it can be skipped unparsed (no literal
    /// in it, and every rule has one). A line holding literals gets the rules whose literals it
    /// holds; a JSON journal line whose escapes may hide a literal gets every rule. `known` is
    /// the literals `scan_block` already found in the line, when it was scanned ahead.
    pub fn select<'s>(&'s self, line: &[u8], known: Option<&[u32]>, scratch: &'s mut Vec<u32>) -> Option<&'s [u32]> {
        if json_hides_literals(line) {
            return Some(&self.all);
        }
        // One scan both decides and lists: no literal found means no candidate.
        let found = match known {
            Some(k) => {
                scratch.clear();
                scratch.extend_from_slice(k);
                !k.is_empty()
            }
            None => self.literals_in(line, scratch),
        };
        if found {
            return Some(self.rules_for(scratch));
        }
        (!self.always.is_empty()).then_some(&self.always[..])
    }

    /// Every literal occurrence in `block` (many lines), as (start, end, literal id) by start,
    /// into `out`: the same scan as `select`'s, done ahead of the lines on another core. False
    /// (and nothing found) for a block beyond 4 GiB.
    pub fn scan_block(&self, block: &[u8], out: &mut Vec<(u32, u32, u32)>) -> bool {
        out.clear();
        if u32::try_from(block.len()).is_err() {
            return false;
        }
        if let Some(each) = &self.each {
            out.extend(
                each.find_overlapping_iter(block)
                    .map(|m| (m.start() as u32, m.end() as u32, m.pattern().as_u32())),
            );
        } else {
            for (k, p) in self.packed.iter().enumerate() {
                let first = (k * self.per_searcher) as u32;
                let mut at = 0;
                while let Some(m) = p.find_in(block, aho_corasick::Span::from(at..block.len())) {
                    out.push((m.start() as u32, m.end() as u32, first + m.pattern().as_u32()));
                    at = m.start() + 1;
                }
            }
        }
        out.sort_unstable();
        true
    }

    /// The rules worth trying on a line that holds a literal, ascending: those whose literals
    /// it holds, and those without literals. `scratch` is reused from line to line.
    pub fn candidates_in<'s>(&self, line: &[u8], scratch: &'s mut Vec<u32>) -> &'s [u32] {
        self.literals_in(line, scratch);
        self.rules_for(scratch)
    }

    /// Puts the literals occurring in `line` (ids, possibly repeated) into `found`; whether any.
    fn literals_in(&self, line: &[u8], found: &mut Vec<u32>) -> bool {
        found.clear();
        if let Some(each) = &self.each {
            found.extend(each.find_overlapping_iter(line).map(|m| m.pattern().as_u32()));
            return !found.is_empty();
        }
        // No literal holds another, so at most one starts at each byte: searching again one
        // byte after each match's start finds every occurrence.
        for (k, p) in self.packed.iter().enumerate() {
            let first = (k * self.per_searcher) as u32;
            let mut at = 0;
            while let Some(m) = p.find_in(line, aho_corasick::Span::from(at..line.len())) {
                found.push(first + m.pattern().as_u32());
                at = m.start() + 1;
            }
        }
        !found.is_empty()
    }

    /// Replaces the literal ids in `scratch` by the rules they stand for and the rules without a
    /// literal, ascending and once each: a union of bit sets, so a literal an attacker repeats
    /// a thousand times costs a thousand ORs, not a sort.
    fn rules_for<'s>(&self, scratch: &'s mut Vec<u32>) -> &'s [u32] {
        let mut bits: SmallVec<[u64; 16]> = SmallVec::from_slice(&self.always_bits);
        for &lit in scratch.iter() {
            for (w, r) in bits.iter_mut().zip(&self.rules_of[lit as usize][..]) {
                *w |= r;
            }
        }
        scratch.clear();
        for (i, &w) in bits.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                scratch.push((i * 64) as u32 + w.trailing_zeros());
                w &= w - 1;
            }
        }
        scratch
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

/// The most literals one Teddy searcher takes: up to 32 it uses its fastest form.
const TEDDY: usize = 32;

/// Literals per Teddy searcher for `n` literals: `TEDDY`, unless that would leave a last
/// searcher with a few. Each searcher is a pass over every block however few literals it has,
/// so those few go to the others instead, a searcher of 33 becoming the 16-bucket kind: with
/// all.ron's 98 literals, 3 searchers of 33 scan 7% faster than 4 (32, 32, 32 and 2).
fn per_searcher(n: usize) -> usize {
    let passes = n.div_ceil(TEDDY).max(1);
    let passes = if passes > 1 && n - (passes - 1) * TEDDY < TEDDY / 4 {
        passes - 1
    } else {
        passes
    };
    n.div_ceil(passes).max(1)
}

/// Whether a JSON journal line may hide a literal: a message with escapes, or one journald wrote
/// as an array of bytes (not UTF-8). Such lines are parsed whatever the literals say.
pub fn json_hides_literals(line: &[u8]) -> bool {
    line.first() == Some(&b'{') && (memchr::memchr(b'\\', line).is_some() || memchr::memmem::find(line, b"\"MESSAGE\":[").is_some())
}

/// Literals sharing a start (`Aborted login (`, `Aborted login: `) or an end (`Unknown user`,
/// `unknown user`) of at least `FOLD` bytes become that shared part, when ordinary lines do not
/// have it more often than they had the literals: a line with any of them has it, so no rule is
/// missed, and fewer literals keep the automaton on its SIMD search.
fn fold(mut literals: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    const FOLD: usize = 10;
    let ordinary = |l: &[u8]| ORDINARY.iter().filter(|o| memchr::memmem::find(o.as_bytes(), l).is_some()).count();
    for from_end in [false, true] {
        let key = |l: &[u8]| -> Vec<u8> { if from_end { l.iter().rev().copied().collect() } else { l.to_vec() } };
        let mut keyed: Vec<Vec<u8>> = literals.iter().map(|l| key(l)).collect();
        keyed.sort();
        let mut out: Vec<Vec<u8>> = Vec::new();
        for k in keyed {
            if let Some(last) = out.last_mut() {
                let shared = last.iter().zip(&k).take_while(|(a, b)| a == b).count();
                if shared >= FOLD {
                    let common = key(&last[..shared]);
                    if ordinary(&common) <= ordinary(&key(last)).max(ordinary(&key(&k))) {
                        last.truncate(shared);
                        continue;
                    }
                }
            }
            out.push(k);
        }
        literals = out.iter().map(|k| key(k)).collect();
        literals.sort();
        literals.dedup();
    }
    literals
}

/// Lines every mail server writes by the million that are no attack. A literal set that occurs
/// in fewer of them makes a better prefilter than a longer one that occurs in more: `auth=0/`
/// rather than `disconnect from ` for a rule about failed AUTH in a disconnect line.
const ORDINARY: &[&str] = &[
    "postfix/smtpd[1]: connect from mail.example.com[192.0.2.1]",
    "postfix/smtpd[1]: connect from unknown[192.0.2.1]",
    "postfix/smtpd[1]: disconnect from mail.example.com[192.0.2.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
    "postfix/smtpd[1]: disconnect from unknown[192.0.2.1] ehlo=2 starttls=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=8",
    "postfix/smtpd[1]: 4F3A2B: client=unknown[192.0.2.1], sasl_method=PLAIN, sasl_username=alice@example.org",
    "postfix/smtpd[1]: Anonymous TLS connection established from unknown[192.0.2.1]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
    "postfix/cleanup[2]: 4F3A2B: message-id=<20260101.abc@example.org>",
    "postfix/qmgr[3]: 4F3A2B: from=<alice@example.org>, size=1234, nrcpt=1 (queue active)",
    "postfix/smtp[4]: 4F3A2B: to=<bob@example.net>, relay=mx.example.net[198.51.100.1]:25, delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 OK)",
    "postfix/lmtp[5]: 4F3A2B: to=<bob@example.org>, relay=mail.example.org[private/dovecot-lmtp], delay=0.1, dsn=2.0.0, status=sent (250 2.0.0 <bob@example.org> Saved)",
    "postfix/qmgr[3]: 4F3A2B: removed",
    "postfix/anvil[6]: statistics: max cache size 2 at Jun 17 03:14:07",
    "dovecot: imap-login: Login: user=<alice@example.org>, method=PLAIN, rip=192.0.2.1, lip=192.0.2.10, mpid=1234, TLS, session=<abcdEFGH>",
    "dovecot: pop3-login: Login: user=<alice>, method=PLAIN, rip=192.0.2.1, lip=192.0.2.10, mpid=1234, TLS, session=<abcdEFGH>",
    "dovecot: imap(alice@example.org)<1234><abcdEFGH>: Logged out in=100 out=2000 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0",
    "dovecot: imap(alice@example.org)<1234><abcdEFGH>: Disconnected: Logged out in=100 out=2000",
    "dovecot: lmtp(1234): Connect from local",
    "dovecot: lmtp(bob@example.org)<1234><abcdEFGH>: msgid=<20260101.abc@example.org>: saved mail to INBOX",
    "sshd[7]: Accepted publickey for alice from 192.0.2.1 port 50000 ssh2: ED25519 SHA256:abc",
    "sshd[7]: Received disconnect from 192.0.2.1 port 50000:11: disconnected by user",
    "sshd[7]: Disconnected from user alice 192.0.2.1 port 50000",
    "sshd[7]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
    "CRON[8]: pam_unix(cron:session): session closed for user root",
    "exim[9]: 1TrBzo-0003Z3-Oq <= alice@example.org H=mail.example.org [192.0.2.1] P=esmtps X=TLS1.3 S=1234",
    "exim[9]: 1TrBzo-0003Z3-Oq => bob <bob@example.org> R=localuser T=local_delivery",
    "exim[9]: 1TrBzo-0003Z3-Oq Completed",
    "roundcube: <abcdEFGH> Successful login for alice (ID: 1) from 192.0.2.1 in session abcdEFGH",
];

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
        .limit_total(256);
    // Fewest ordinary lines first, then the longest shortest literal, then the fewest.
    type Score = (std::cmp::Reverse<usize>, usize, std::cmp::Reverse<usize>);
    let mut best: Option<(Score, Vec<Vec<u8>>)> = None;
    for i in 0..children.len() {
        let mut seq = extractor.extract(&Hir::concat(children[i..].to_vec()));
        seq.minimize_by_preference();
        let Some(lits) = seq.literals() else { continue };
        let Some(shortest) = lits.iter().map(|l| l.as_bytes().len()).min() else {
            continue;
        };
        if shortest < 3 {
            continue;
        }
        // Beyond 16 bytes a literal is as good as unique; then prefer fewer of them.
        let finders: Vec<_> = lits.iter().map(|l| memchr::memmem::Finder::new(l.as_bytes())).collect();
        let ordinary = ORDINARY
            .iter()
            .filter(|line| finders.iter().any(|f| f.find(line.as_bytes()).is_some()))
            .count();
        // A literal of a few bytes occurs in many lines no list above can name.
        let ordinary = ordinary + if shortest < 5 { ORDINARY.len() / 4 } else { 0 };
        let score = (std::cmp::Reverse(ordinary), shortest.min(16), std::cmp::Reverse(lits.len()));
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
    fn a_few_literals_left_over_join_the_other_searchers() {
        assert_eq!([0, 14, 32, 33, 40, 64, 98, 130].map(per_searcher), [1, 14, 32, 33, 20, 32, 33, 33]);
    }

    #[test]
    fn derives_inner_literal() {
        let l = lits(r"warning: [^\[]*\[(?P<host>\d+\.\d+\.\d+\.\d+)\]: SASL \w+ authentication failed:").unwrap();
        assert_eq!(l, vec![" authentication failed:"]);
    }

    #[test]
    fn shared_starts_and_ends_fold_into_one_literal() {
        let l = |s: &[&str]| s.iter().map(|x| x.as_bytes().to_vec()).collect::<Vec<_>>();
        let folded = fold(l(&[
            "Aborted login (",
            "Aborted login: ",
            ": Unknown user",
            ": unknown user",
            "short (",
            "short: ",
        ]));
        assert_eq!(folded, l(&["Aborted login", "nknown user", "short (", "short: "]));
        // Not when ordinary lines have the shared part more often: `Disconnected:` is in them.
        assert_eq!(
            fold(l(&["Disconnected (", "Disconnected -x"])),
            l(&["Disconnected (", "Disconnected -x"])
        );
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
        let mut scratch = Vec::new();
        assert_eq!(p.candidates_in(b"x (auth failed, 3 attempts)", &mut scratch), [0, 1, 2]);
        assert_eq!(p.candidates_in(b"x unknown user", &mut scratch), [1, 2]);
        assert_eq!(
            p.select(b"connect from x", None, &mut scratch),
            Some(&[1u32][..]),
            "only the rule without a literal"
        );
        assert_eq!(
            p.select(br#"{"MESSAGE":"a \"b\""}"#, None, &mut scratch),
            Some(&[0u32, 1, 2][..]),
            "escapes may hide a literal"
        );
        assert!(json_hides_literals(br#"{"MESSAGE":[104,105]}"#));
    }
}
