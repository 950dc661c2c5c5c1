//! Connection slots: at most `max_connections` open client connections, and at most
//! `max_connections_per_source` from one source, so that one host cannot take them all.
//!
//! Sources are counted as the datapath keys them ([`SourceKey`]: by default an IPv4 address,
//! or the /64 of an IPv6 address, since one host usually holds a whole /64). The count lives
//! in a map behind a lock taken once per accept and once per close, far from a connection's
//! cost.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use secgate_common::model::prefix_mask;

/// Why a connection got no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Total,
    Source,
}

impl Full {
    /// The metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            Full::Total => "connection_limit",
            Full::Source => "source_connection_limit",
        }
    }
}

#[derive(Debug, Default)]
pub struct Slots {
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: u32,
    by_source: HashMap<IpAddr, u32>,
}

/// A taken slot, given back on drop.
pub struct Slot {
    slots: Arc<Slots>,
    source: IpAddr,
}

impl Slots {
    /// A slot for `source` (already keyed by [`SourceKey::of`]).
    pub fn take(
        self: &Arc<Self>,
        source: IpAddr,
        total: u32,
        per_source: u32,
    ) -> Result<Slot, Full> {
        let mut open = self.open.lock().expect("slot counts are never left inconsistent");
        if open.total >= total {
            return Err(Full::Total);
        }
        let mine = open.by_source.entry(source).or_default();
        if *mine >= per_source {
            return Err(Full::Source);
        }
        *mine += 1;
        open.total += 1;
        Ok(Slot { slots: self.clone(), source })
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.open.lock().unwrap().by_source.len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("slot counts are never left inconsistent");
        open.total -= 1;
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// What a connection or request is counted as: its address masked to the datapath's
/// `ipv4_prefix` / `ipv6_prefix`, so that the gateway and XDP agree on what one source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceKey {
    v4: [u8; 4],
    v6: [u8; 16],
}

impl SourceKey {
    pub fn new(ipv4_prefix: u8, ipv6_prefix: u8) -> SourceKey {
        SourceKey {
            v4: prefix_mask(u32::from(ipv4_prefix)),
            v6: prefix_mask(u32::from(ipv6_prefix)),
        }
    }

    pub fn of(&self, ip: IpAddr) -> IpAddr {
        fn masked<const N: usize>(octets: [u8; N], mask: [u8; N]) -> [u8; N] {
            std::array::from_fn(|i| octets[i] & mask[i])
        }
        match ip {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(masked(a.octets(), self.v4))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(masked(a.octets(), self.v6))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_every_slot() {
        let slots = Arc::new(Slots::default());
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        let b: IpAddr = "198.18.0.3".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| slots.take(a, 5, 3).unwrap()).collect();
        assert_eq!(slots.take(a, 5, 3).err(), Some(Full::Source));
        let other = slots.take(b, 5, 3).unwrap();
        let more = slots.take(b, 5, 3).unwrap();
        assert_eq!(slots.take(b, 5, 3).err(), Some(Full::Total));
        drop((other, more, held));
        assert_eq!(slots.sources(), 0, "no entry outlives its connections");
        assert!(slots.take(a, 5, 3).is_ok());
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let key = SourceKey::new(32, 64);
        let of = |s: &str| key.of(s.parse().unwrap());
        let slots = Arc::new(Slots::default());
        let _one = slots.take(of("fd00:18::1"), 10, 1).unwrap();
        assert_eq!(slots.take(of("fd00:18::ffff:2"), 10, 1).err(), Some(Full::Source));
        assert!(slots.take(of("fd00:18:0:1::1"), 10, 1).is_ok(), "another /64");
        let wide = SourceKey::new(24, 48);
        assert_eq!(
            wide.of("198.18.0.77".parse().unwrap()),
            "198.18.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            wide.of("fd00:18:0:1::1".parse().unwrap()),
            "fd00:18::".parse::<IpAddr>().unwrap()
        );
    }
}
