//! Widening: once `sources` distinct addresses of one prefix have offended within the
//! window, the prefix is banned as a whole, so an attacker rotating through a range (each
//! address staying under its own thresholds) is stopped after a few addresses instead of
//! after the whole range.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use super::settings::Widen;

/// Prefixes tracked at most; past it, those with no offence left in the window are
/// forgotten, and if that is not enough, all of them (bounded work and memory, at the cost
/// of starting over).
const MAX_PREFIXES: usize = 100_000;

#[derive(Default)]
pub struct Neighbours {
    /// Offending sources per prefix, with when each last offended.
    by_prefix: HashMap<IpNet, Vec<(IpAddr, Instant)>>,
}

impl Neighbours {
    /// Records an offence of `source` at `at`; returns the prefix's offending sources when
    /// they are `w.sources` within `window` (and forgets them: the prefix's ban is next).
    pub fn offended(
        &mut self,
        source: IpAddr,
        at: Instant,
        window: Duration,
        w: &Widen,
    ) -> Option<Vec<IpAddr>> {
        let prefix = of(source, w);
        if !self.by_prefix.contains_key(&prefix) && self.by_prefix.len() >= MAX_PREFIXES {
            self.by_prefix
                .retain(|_, m| m.iter().any(|&(_, t)| at.saturating_duration_since(t) <= window));
            // Not enough freed to last a while: start over rather than scan again soon.
            if self.by_prefix.len() >= MAX_PREFIXES - MAX_PREFIXES / 4 {
                self.by_prefix.clear();
            }
        }
        let members = self.by_prefix.entry(prefix).or_default();
        members.retain(|&(s, t)| s != source && at.saturating_duration_since(t) <= window);
        members.push((source, at));
        if members.len() < w.sources as usize {
            return None;
        }
        let members = self.by_prefix.remove(&prefix).unwrap_or_default();
        Some(members.into_iter().map(|(s, _)| s).collect())
    }
}

/// The prefix `source` widens to.
pub fn of(source: IpAddr, w: &Widen) -> IpNet {
    let len = match source {
        IpAddr::V4(_) => w.v4_prefix,
        IpAddr::V6(_) => w.v6_prefix,
    };
    IpNet::new(source, len).expect("prefix lengths are validated").trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Widen = Widen { v4_prefix: 24, v6_prefix: 48, sources: 3 };
    const MINUTE: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_third_offending_source_of_a_prefix_widens_to_it() {
        let now = Instant::now();
        let mut n = Neighbours::default();
        assert!(n.offended(ip("198.18.1.1"), now, MINUTE, &W).is_none());
        // The same source again, and one of another prefix, do not count.
        assert!(n.offended(ip("198.18.1.1"), now, MINUTE, &W).is_none());
        assert!(n.offended(ip("198.18.2.1"), now, MINUTE, &W).is_none());
        assert!(n.offended(ip("198.18.1.2"), now, MINUTE, &W).is_none());
        let members = n.offended(ip("198.18.1.3"), now, MINUTE, &W).unwrap();
        assert_eq!(members.len(), 3);
        assert!(n.offended(ip("198.18.1.4"), now, MINUTE, &W).is_none(), "it starts over");
        assert_eq!(of(ip("fd00:1:2:3::"), &W), "fd00:1:2::/48".parse::<IpNet>().unwrap());
    }

    #[test]
    fn offences_out_of_the_window_do_not_count() {
        let now = Instant::now();
        let mut n = Neighbours::default();
        n.offended(ip("198.18.1.1"), now, MINUTE, &W);
        n.offended(ip("198.18.1.2"), now, MINUTE, &W);
        let later = now + MINUTE + Duration::from_secs(1);
        assert!(n.offended(ip("198.18.1.3"), later, MINUTE, &W).is_none());
    }

    #[test]
    fn tracking_stays_bounded() {
        let now = Instant::now();
        let mut n = Neighbours::default();
        for i in 0..(MAX_PREFIXES as u32 + 10) {
            n.offended(IpAddr::from((i << 8).to_be_bytes()), now, MINUTE, &W);
            assert!(n.by_prefix.len() <= MAX_PREFIXES);
        }
    }
}
