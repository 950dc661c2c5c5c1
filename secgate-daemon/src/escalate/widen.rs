//! Widening: once `sources` addresses of one prefix are banned at the same time, the prefix
//! is banned as a whole, so an attacker rotating through a range runs out of fresh addresses
//! after a few instead of after the whole range.

use std::{collections::HashMap, net::IpAddr, time::Instant};

use ipnet::IpNet;

use super::settings::Widen;

/// Prefixes tracked at most; past it those without a ban in force are forgotten.
const MAX_PREFIXES: usize = 100_000;

#[derive(Default)]
pub struct Neighbours {
    /// Banned sources per prefix, with when each ban lapses.
    by_prefix: HashMap<IpNet, Vec<(IpAddr, Instant)>>,
}

impl Neighbours {
    /// Records that `source` is banned until `until`; returns the prefix to ban, and the
    /// sources that made it, when it has `w.sources` banned sources.
    pub fn banned(
        &mut self,
        source: IpAddr,
        until: Instant,
        now: Instant,
        w: &Widen,
    ) -> Option<(IpNet, Vec<IpAddr>)> {
        let prefix = of(source, w);
        if !self.by_prefix.contains_key(&prefix) && self.by_prefix.len() >= MAX_PREFIXES {
            self.by_prefix.retain(|_, members| members.iter().any(|&(_, u)| u > now));
        }
        let members = self.by_prefix.entry(prefix).or_default();
        members.retain(|&(s, u)| u > now && s != source);
        members.push((source, until));
        if members.len() < w.sources as usize {
            return None;
        }
        let members = self.by_prefix.remove(&prefix).unwrap_or_default();
        Some((prefix, members.into_iter().map(|(s, _)| s).collect()))
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
    use std::time::Duration;

    use super::*;

    const W: Widen = Widen { v4_prefix: 24, v6_prefix: 48, sources: 3 };

    #[test]
    fn the_third_banned_source_of_a_prefix_bans_the_prefix() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut n = Neighbours::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(n.banned(ip("198.18.1.1"), later, now, &W).is_none());
        // The same source again, and one of another prefix, do not count.
        assert!(n.banned(ip("198.18.1.1"), later, now, &W).is_none());
        assert!(n.banned(ip("198.18.2.1"), later, now, &W).is_none());
        assert!(n.banned(ip("198.18.1.2"), later, now, &W).is_none());
        let (prefix, members) = n.banned(ip("198.18.1.3"), later, now, &W).unwrap();
        assert_eq!(prefix, "198.18.1.0/24".parse::<IpNet>().unwrap());
        assert_eq!(members.len(), 3);
        let v6 = n.banned(ip("fd00:1:2:3::"), later, now, &W);
        assert!(v6.is_none());
        assert_eq!(of(ip("fd00:1:2:3::"), &W), "fd00:1:2::/48".parse::<IpNet>().unwrap());
    }

    #[test]
    fn lapsed_bans_do_not_count() {
        let now = Instant::now();
        let mut n = Neighbours::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        n.banned(ip("198.18.1.1"), now + Duration::from_secs(1), now, &W);
        n.banned(ip("198.18.1.2"), now + Duration::from_secs(1), now, &W);
        let after = now + Duration::from_secs(2);
        assert!(n.banned(ip("198.18.1.3"), after + Duration::from_secs(60), after, &W).is_none());
    }
}
