//! The log lines behind a ban, for the ban mail: a ring of the most recent counted failures,
//! each with its jail and address, searched only when a ban is made.
//!
//! Fixed memory (`SLOTS` lines of at most `LINE` bytes, 4 MiB allocated once): a flood of attackers
//! only pushes older lines out, so a ban quotes the lines that counted as far back as the last
//! `SLOTS` failures of all addresses.

use std::sync::Arc;

use ipnet::IpNet;

/// Failures remembered, at most.
const SLOTS: usize = 4096;
/// Bytes kept of each line.
const LINE: usize = 1024;

#[derive(Debug, Default)]
struct Slot {
    jail: u16,
    key: Option<IpNet>,
    line: String,
}

/// The ring.
#[derive(Debug)]
pub struct Evidence {
    slots: Vec<Slot>,
    next: usize,
}

impl Default for Evidence {
    fn default() -> Self {
        Evidence {
            // Grown once, here: recording a line never allocates.
            slots: (0..SLOTS)
                .map(|_| Slot {
                    line: String::with_capacity(LINE),
                    ..Slot::default()
                })
                .collect(),
            next: 0,
        }
    }
}

impl Evidence {
    /// Remembers a counted failure (no allocation once the slot's buffer has grown).
    pub fn record(&mut self, jail: u16, key: IpNet, line: &str) {
        let slot = &mut self.slots[self.next];
        self.next = (self.next + 1) % SLOTS;
        slot.jail = jail;
        slot.key = Some(key);
        slot.line.clear();
        let mut cut = line.len().min(LINE);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        slot.line.push_str(line[..cut].trim_end());
    }

    /// The lines `jail` counted for `key`, oldest first, at most `max` (the most recent).
    pub fn lines(&self, jail: u16, key: IpNet, max: usize) -> Arc<[Box<str>]> {
        let newest_first = (0..SLOTS).map(|i| &self.slots[(self.next + SLOTS - 1 - i) % SLOTS]);
        let mut found: Vec<Box<str>> = newest_first
            .filter(|s| s.key == Some(key) && s.jail == jail)
            .take(max)
            .map(|s| s.line.as_str().into())
            .collect();
        found.reverse();
        found.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bans_lines_oldest_first_and_bounded() {
        let mut e = Evidence::default();
        let (a, b): (IpNet, IpNet) = ("192.0.2.1/32".parse().unwrap(), "192.0.2.2/32".parse().unwrap());
        for i in 0..5 {
            e.record(0, a, &format!("a{i}\n"));
            e.record(0, b, "b");
            e.record(1, a, "other jail");
        }
        assert_eq!(&*e.lines(0, a, 3), &["a2".into(), "a3".into(), "a4".into()] as &[Box<str>]);
        for _ in 0..SLOTS {
            e.record(0, b, &"x".repeat(5000));
        }
        assert!(e.lines(0, a, 10).is_empty(), "pushed out by newer failures");
        assert_eq!(e.lines(0, b, 1)[0].len(), LINE);
    }
}
