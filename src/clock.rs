//! Which time a line counts at. A line's timestamp is written by whoever sent it, so it is
//! checked against a clock before windows and bans see it: one forged line dated 2099 must not
//! expire every window or lift every ban.
//!
//! - `Live` (`run`): the clock is the wall clock at arrival. A line stamped more than `future`
//!   seconds ahead of it or more than `past` behind it counts at its arrival time instead (and is
//!   reported as clamped). A backlog that rsyslog delivers hours late keeps its own times.
//! - `Replay` (`test`): the file's own clock rules: it is the latest trusted line time, starting
//!   from the reference time. Gaps are normal in a file (a quiet night), so a line up to `past`
//!   ahead of the clock moves it; a line further ahead or behind counts at the clock's time,
//!   unless the next line lands near it too: two lines agree on a real jump (a long gap, or a
//!   second file), one line alone is an outlier.
//!
//! Bans start and end by this clock's `now`; windows count by line times.
//! Imports nothing of ours.

/// The wall clock, in Unix seconds (0 before 1970).
pub fn wall_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How the clock advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The wall clock at arrival (`run`).
    Live,
    /// The file's own trusted line times (`test`).
    Replay,
}

/// A line placed in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// When the line counts (Unix seconds): its own time, or the clock's if that is not trusted.
    pub time: i64,
    /// The clock after this line: bans start, expire and are checked at this time.
    pub now: i64,
    /// The line's own time was outside the bounds and was replaced.
    pub clamped: bool,
}

/// The clock of one stream of lines.
#[derive(Debug, Clone)]
pub struct Clock {
    mode: Mode,
    future: i64,
    past: i64,
    /// Replay: the file's clock; `None` until a line sets it.
    now: Option<i64>,
    /// Replay: the time of the last line outside the bounds, waiting for a second opinion.
    jump: Option<i64>,
}

impl Clock {
    /// A clock that trusts line times up to `future` seconds ahead of it and `past` behind it.
    pub fn new(mode: Mode, future: u64, past: u64) -> Clock {
        let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX / 4);
        Clock {
            mode,
            future: secs(future),
            past: secs(past),
            now: None,
            jump: None,
        }
    }

    /// How the clock advances.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The reference for a year-less date of a line arriving at `arrival`, and whether to take
    /// the year nearest it (a file follows its own clock) rather than the latest one not in the
    /// future (live input, and the first line of a file).
    pub fn year_reference(&self, arrival: i64) -> (i64, bool) {
        match (self.mode, self.now) {
            (Mode::Replay, Some(now)) => (now, true),
            (Mode::Replay, None) | (Mode::Live, _) => (arrival, false),
        }
    }

    /// The current time: the wall clock (`arrival`) live, the file's clock in a replay (the
    /// reference `arrival` until a line has set it).
    pub fn now(&self, arrival: i64) -> i64 {
        match self.mode {
            Mode::Live => arrival,
            Mode::Replay => self.now.unwrap_or(arrival),
        }
    }

    fn trusted(&self, stamp: i64, now: i64) -> bool {
        let ahead = match self.mode {
            Mode::Live => self.future,
            Mode::Replay => self.past,
        };
        stamp <= now.saturating_add(ahead) && stamp >= now.saturating_sub(self.past)
    }

    /// Places a line stamped `stamp` (`None`: no usable time) that arrived at `arrival`.
    pub fn place(&mut self, stamp: Option<i64>, arrival: i64) -> Placed {
        let now = self.now(arrival);
        let Some(stamp) = stamp else {
            return Placed {
                time: now,
                now,
                clamped: false,
            };
        };
        match self.mode {
            Mode::Live if self.trusted(stamp, now) => Placed {
                time: stamp,
                now,
                clamped: false,
            },
            Mode::Live => Placed {
                time: now,
                now,
                clamped: true,
            },
            Mode::Replay => self.follow(stamp, now),
        }
    }

    fn follow(&mut self, stamp: i64, now: i64) -> Placed {
        let confirmed = self.jump.take().is_some_and(|j| (stamp - j).abs() <= self.past);
        if self.now.is_none() || confirmed || self.trusted(stamp, now) {
            // Out-of-order lines within the bounds do not move the clock back.
            let next = if self.now.is_none() || confirmed { stamp } else { now.max(stamp) };
            self.now = Some(next);
            return Placed {
                time: stamp,
                now: next,
                clamped: false,
            };
        }
        self.jump = Some(stamp);
        Placed {
            time: now,
            now,
            clamped: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn live_clamps_to_arrival_outside_the_bounds() {
        let mut c = Clock::new(Mode::Live, 120, DAY as u64);
        let t = 1_800_000_000;
        assert_eq!(c.place(Some(t - 7200), t).time, t - 7200, "a two-hour backlog keeps its time");
        assert_eq!(c.place(Some(t + 60), t).time, t + 60);
        let far = c.place(Some(4_070_908_800), t);
        assert_eq!((far.time, far.now, far.clamped), (t, t, true), "2099 counts at arrival");
        assert!(c.place(Some(t - 2 * DAY), t).clamped);
        assert_eq!(c.place(None, t).time, t);
    }

    #[test]
    fn replay_ignores_one_outlier_and_follows_a_confirmed_jump() {
        let mut c = Clock::new(Mode::Replay, 120, DAY as u64);
        let t = 1_100_000_000;
        assert_eq!(c.place(Some(t), 0).now, t, "the first line sets the clock");
        assert_eq!(c.place(Some(t + 10), 0).now, t + 10);
        let out = c.place(Some(4_070_908_800), 0);
        assert_eq!((out.time, out.now, out.clamped), (t + 10, t + 10, true));
        assert_eq!(c.place(Some(t + 20), 0).now, t + 20, "the outlier did not move the clock");
        // A quiet hour is no jump; three quiet days are, and two lines agree on them.
        assert_eq!(c.place(Some(t + 3600), 0).now, t + 3600);
        assert!(c.place(Some(t + 3 * DAY), 0).clamped);
        let second = c.place(Some(t + 3 * DAY + 5), 0);
        assert_eq!((second.time, second.now, second.clamped), (t + 3 * DAY + 5, t + 3 * DAY + 5, false));
        // Slightly out of order: kept, the clock does not go back.
        assert_eq!(
            c.place(Some(t + 3 * DAY), 0),
            Placed {
                time: t + 3 * DAY,
                now: t + 3 * DAY + 5,
                clamped: false
            }
        );
    }

    #[test]
    fn year_reference_follows_the_file_once_it_has_a_clock() {
        let mut c = Clock::new(Mode::Replay, 120, DAY as u64);
        assert_eq!(c.year_reference(42), (42, false));
        c.place(Some(1000), 42);
        assert_eq!(c.year_reference(42), (1000, true));
        assert_eq!(Clock::new(Mode::Live, 1, 1).year_reference(42), (42, false));
    }
}
