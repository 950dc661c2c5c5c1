//! `model::Tables` over plain collections: the specification the kernel maps are held to.
//! `deny` holds each ban with its own expiry, as the operator set it; what the kernel holds
//! is the daemon's projection of them (`secgate::bans`).

use std::collections::HashMap;

use ipnet::IpNet;
use secgate_common::{
    maps::{BucketKey, DenyEntry, FAMILY_V4, LimitKey, RateRule, SourceState},
    model::Tables,
};

#[derive(Clone, Default, Debug)]
pub struct ModelTables {
    pub allow: Vec<IpNet>,
    pub deny: Vec<(IpNet, DenyEntry)>,
    pub rules: HashMap<LimitKey, RateRule>,
    pub sources: HashMap<BucketKey, SourceState>,
    pub budget: u64,
}

fn addr(family: u8, a: &[u8; 16]) -> std::net::IpAddr {
    if family == FAMILY_V4 {
        std::net::IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        std::net::IpAddr::from(*a)
    }
}

impl Tables for ModelTables {
    fn allowed(&self, family: u8, a: &[u8; 16]) -> bool {
        let ip = addr(family, a);
        self.allow.iter().any(|n| n.contains(&ip))
    }

    fn denied(&self, family: u8, a: &[u8; 16]) -> Option<DenyEntry> {
        let ip = addr(family, a);
        self.deny
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .map(|(_, e)| *e)
            .reduce(DenyEntry::outlasting)
    }

    fn rule(&self, key: &LimitKey) -> Option<RateRule> {
        self.rules.get(key).copied()
    }

    fn source(&self, key: &BucketKey) -> Option<SourceState> {
        self.sources.get(key).copied()
    }

    fn set_source(&mut self, key: &BucketKey, state: SourceState) {
        self.sources.insert(*key, state);
    }

    fn event_budget(&mut self) -> &mut u64 {
        &mut self.budget
    }
}
