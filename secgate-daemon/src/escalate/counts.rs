//! Offences per source over a sliding window. Exact, not sampled: a threshold of five failed
//! logins bans on the fifth within the window, never on a rounded estimate. Each kind keeps
//! at most its threshold's worth of timestamps per source, and the number of sources is
//! capped so that all of it fits `MEMORY` whatever the thresholds: an attacker spreading
//! over many addresses costs bounded memory.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use super::settings::{EscalationSettings, Kind};

/// Sources tracked at most (fewer when the thresholds are high, see `MEMORY`). Past it,
/// sources with no offence left in the window are forgotten first, then the half furthest
/// from any of their thresholds, so a source close to one is the last to be forgotten.
pub const MAX_SOURCES: usize = 100_000;
/// What the timestamps of all tracked sources may take at most.
const MEMORY: usize = 64 << 20;
/// Offences listed in a ban's audit record at most (the latest ones).
pub const LISTED: usize = 16;

/// One thing a source did that counts against it.
#[derive(Clone, Copy, Debug)]
pub struct Offence {
    /// As the datapath keys it (an IPv4 address or an IPv6 /64 by default).
    pub source: IpAddr,
    pub kind: Kind,
    /// The refusal's code (`invalid_token`, `payload_too_large`, `header_timeout`, …).
    pub what: &'static str,
    pub at: Instant,
}

/// A source over a threshold.
#[derive(Debug)]
pub struct Trip {
    pub source: IpAddr,
    pub kind: Kind,
    /// Offences of `kind` in the window.
    pub count: u32,
    /// The latest offences of any kind, oldest first.
    pub offences: Vec<Offence>,
}

#[derive(Default)]
struct Tally {
    by_kind: [VecDeque<Instant>; 5],
    latest: VecDeque<Offence>,
}

impl Tally {
    fn in_window(&self) -> usize {
        self.by_kind.iter().map(VecDeque::len).sum()
    }

    /// How close it is to banning, in thousandths of the nearest threshold.
    fn closeness(&self, s: &EscalationSettings) -> usize {
        Kind::ALL
            .iter()
            .filter(|k| s.threshold(**k) > 0)
            .map(|&k| self.by_kind[k.index()].len() * 1000 / s.threshold(k) as usize)
            .max()
            .unwrap_or(0)
    }

    fn forget_before(&mut self, window: Duration, now: Instant) {
        for times in &mut self.by_kind {
            while times.front().is_some_and(|&t| now.saturating_duration_since(t) > window) {
                times.pop_front();
            }
        }
    }
}

pub struct Counts {
    tallies: HashMap<IpAddr, Tally>,
    cap: usize,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts::with_cap(MAX_SOURCES)
    }
}

impl Counts {
    pub fn with_cap(cap: usize) -> Counts {
        Counts { tallies: HashMap::new(), cap: cap.max(2) }
    }

    pub fn tracked(&self) -> usize {
        self.tallies.len()
    }

    /// Counts `o`; returns a trip when it takes its source to the threshold of its kind in
    /// the window. The source then starts from nothing: its ban is what happens next.
    pub fn offend(&mut self, o: Offence, s: &EscalationSettings) -> Option<Trip> {
        let threshold = s.threshold(o.kind) as usize;
        if threshold == 0 {
            return None;
        }
        if !self.tallies.contains_key(&o.source) && self.tallies.len() >= self.cap(s) {
            self.make_room(s, o.at);
        }
        let tally = self.tallies.entry(o.source).or_default();
        tally.forget_before(s.window, o.at);
        let times = &mut tally.by_kind[o.kind.index()];
        times.push_back(o.at);
        if times.len() > threshold {
            times.pop_front();
        }
        if tally.latest.len() == LISTED {
            tally.latest.pop_front();
        }
        tally.latest.push_back(o);
        if times.len() < threshold {
            return None;
        }
        let tally = self.tallies.remove(&o.source).expect("just counted");
        Some(Trip {
            source: o.source,
            kind: o.kind,
            count: threshold as u32,
            offences: tally.latest.into(),
        })
    }

    /// How close `source` is to a threshold, in thousandths (0 when untracked).
    pub fn closeness(&self, source: &IpAddr, s: &EscalationSettings) -> usize {
        self.tallies.get(source).map_or(0, |t| t.closeness(s))
    }

    /// The cap for these thresholds: `MEMORY` over what one source may hold.
    fn cap(&self, s: &EscalationSettings) -> usize {
        let per_source: usize = s.thresholds.iter().map(|&t| t as usize).sum::<usize>()
            * size_of::<Instant>()
            + size_of::<Tally>()
            + LISTED * size_of::<Offence>();
        self.cap.min(MEMORY / per_source.max(1)).max(2)
    }

    /// Forgets sources with nothing in the window; if that is not enough for a quarter of
    /// the cap, keeps the half closest to a threshold.
    fn make_room(&mut self, s: &EscalationSettings, now: Instant) {
        let cap = self.cap(s);
        for tally in self.tallies.values_mut() {
            tally.forget_before(s.window, now);
        }
        self.tallies.retain(|_, t| t.in_window() > 0);
        if self.tallies.len() >= cap - cap / 4 {
            let mut close: Vec<usize> = self.tallies.values().map(|t| t.closeness(s)).collect();
            let middle = close.len() / 2;
            let threshold = *close.select_nth_unstable(middle).1;
            self.tallies.retain(|_, t| t.closeness(s) > threshold);
        }
    }
}

#[cfg(test)]
mod tests;
