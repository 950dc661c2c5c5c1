//! Every ban the policy holds (config denies and dynamic bans), and the values the kernel's
//! deny maps must hold so that no ban hides another.
//!
//! The XDP program reads a source's host entry (IPv4 /32, IPv6 /64) and, unless it is in
//! force, the longest trie prefix matching it. A ban on a /32 that expires inside a permanent
//! /24 would, read alone, let that host through until the entry was swept. So each entry is
//! written with its *effective* expiry: the longest-lasting of its own ban and every ban on a
//! prefix covering it. The prefixes covering an address form one chain, so the entry the
//! program decides by carries the expiry of the longest-lasting ban on the source.
//!
//! Pure apart from knowing which map a prefix goes into (`maps::holder`, for occupancy):
//! changes return the map writes they need, in an order where every intermediate
//! state drops at least what both the old and the new policy drop for bans still in force.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ipnet::IpNet;
use secgate_common::maps::DenyEntry;

use crate::{
    maps::{DENY_MAPS, holder},
    views::BanView,
};

/// A dynamic ban: from the operator, the escalation, or adopted from pinned maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// Monotonic (kernel clock) expiry; `None`: permanent.
    pub expires_ns: Option<u64>,
    /// Shared, so that copying every ban for a state snapshot copies no text.
    pub reason: Arc<str>,
}

impl Ban {
    /// The deny entry this ban alone would need.
    pub fn entry(&self) -> DenyEntry {
        // A ban due at 0 would read as permanent in the kernel; 1 ns is just as expired.
        DenyEntry { expires_ns: self.expires_ns.map_or(0, |e| e.max(1)) }
    }
}

/// What the deny maps must change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Set(IpNet, DenyEntry),
    Remove(IpNet),
}

#[derive(Clone, Debug, Default)]
struct Slot {
    config: bool,
    dynamic: Option<Ban>,
}

impl Slot {
    fn own(&self) -> Option<DenyEntry> {
        if self.config {
            Some(DenyEntry { expires_ns: 0 })
        } else {
            self.dynamic.as_ref().map(Ban::entry)
        }
    }
}

fn view(cidr: &IpNet, slot: &Slot, now_ns: u64) -> Option<BanView> {
    let own = slot.own()?;
    own.active(now_ns).then(|| BanView {
        cidr: *cidr,
        expires_in_secs: (!own.permanent())
            .then(|| own.expires_ns.saturating_sub(now_ns) as f64 / 1e9),
        reason: match &slot.dynamic {
            Some(b) if !slot.config => b.reason.to_string(),
            _ => "config".into(),
        },
    })
}

fn outlast(a: Option<DenyEntry>, b: Option<DenyEntry>) -> Option<DenyEntry> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.outlasting(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Clone, Debug, Default)]
pub struct Bans {
    slots: BTreeMap<IpNet, Slot>,
    /// Dynamic bans by expiry, so the sweeper finds what is due without a scan.
    due: BTreeSet<(u64, IpNet)>,
    /// Entries per deny map ([`crate::maps::holder`]): the maps' occupancy.
    counts: [usize; DENY_MAPS],
}

impl Bans {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Entries of the deny map a ban on `net` would go into.
    pub fn count_in_map(&self, net: &IpNet) -> usize {
        self.counts[holder(net).index]
    }

    pub fn contains(&self, net: &IpNet) -> bool {
        self.slots.contains_key(net)
    }

    pub fn is_config(&self, net: &IpNet) -> bool {
        self.slots.get(net).is_some_and(|s| s.config)
    }

    pub fn dynamic(&self, net: &IpNet) -> Option<&Ban> {
        self.slots.get(net).and_then(|s| s.dynamic.as_ref())
    }

    /// Every dynamic ban, by CIDR.
    pub fn dynamics(&self) -> impl Iterator<Item = (&IpNet, &Ban)> {
        self.slots.iter().filter_map(|(n, s)| s.dynamic.as_ref().map(|b| (n, b)))
    }

    /// What every entry of the deny maps must hold.
    pub fn projection(&self) -> BTreeMap<IpNet, DenyEntry> {
        self.effective_under(None)
    }

    /// Bans in force at `now_ns`, each with its own expiry, as `ban list` shows them.
    pub fn list(&self, now_ns: u64) -> Vec<BanView> {
        self.slots.iter().filter_map(|(cidr, slot)| view(cidr, slot, now_ns)).collect()
    }

    /// Dynamic bans in force at `now_ns` on prefixes the config does not deny: what this
    /// node's operators and escalation (or the fleet) decided, as the fleet shares them.
    pub fn list_dynamic(&self, now_ns: u64) -> Vec<BanView> {
        self.slots
            .iter()
            .filter(|(_, slot)| !slot.config && slot.dynamic.is_some())
            .filter_map(|(cidr, slot)| view(cidr, slot, now_ns))
            .collect()
    }

    /// The entry `net`'s own bans (config and dynamic) need, covering ones aside.
    pub fn own(&self, net: &IpNet) -> Option<DenyEntry> {
        self.slots.get(net).and_then(Slot::own)
    }

    /// The entry the deny maps must hold for exactly `net` (its own bans, or a covering one's
    /// if that outlasts them); `None`: no entry.
    pub fn effective(&self, net: &IpNet) -> Option<DenyEntry> {
        self.effective_under(Some(*net)).get(net).copied()
    }

    /// The ban on exactly `net`, if one is in force.
    pub fn list_one(&self, net: &IpNet, now_ns: u64) -> Option<BanView> {
        view(net, self.slots.get(net)?, now_ns)
    }

    /// Makes `nets` the config denies (replacing the previous ones).
    pub fn set_config(&mut self, nets: &BTreeSet<IpNet>) -> Vec<Write> {
        let old: Vec<IpNet> =
            self.slots.iter().filter(|(_, s)| s.config).map(|(n, _)| *n).collect();
        let mut deltas = Vec::new();
        for net in old.iter().filter(|n| !nets.contains(n)) {
            deltas.extend(self.change(*net, |s| s.config = false));
        }
        for net in nets {
            if !self.is_config(net) {
                deltas.extend(self.change(*net, |s| s.config = true));
            }
        }
        plan(deltas)
    }

    /// Adds or replaces a dynamic ban.
    pub fn ban(&mut self, net: IpNet, ban: Ban) -> Vec<Write> {
        self.set_dynamic(net, Some(ban))
    }

    /// Lifts a dynamic ban; `None` if there was none.
    pub fn lift(&mut self, net: IpNet) -> Option<(Ban, Vec<Write>)> {
        let ban = self.dynamic(&net)?.clone();
        Some((ban, self.set_dynamic(net, None)))
    }

    /// Sets or clears `net`'s dynamic ban (to undo a change whose writes failed, too).
    pub fn set_dynamic(&mut self, net: IpNet, ban: Option<Ban>) -> Vec<Write> {
        plan(self.change(net, |s| s.dynamic = ban))
    }

    /// Lifts every dynamic ban due by `now_ns`; returns the CIDRs lifted and the writes.
    pub fn expire(&mut self, now_ns: u64) -> (Vec<IpNet>, Vec<Write>) {
        let due: Vec<IpNet> =
            self.due.iter().take_while(|(t, _)| *t <= now_ns).map(|(_, n)| *n).collect();
        let mut deltas = Vec::new();
        for net in &due {
            deltas.extend(self.change(*net, |s| s.dynamic = None));
        }
        (due, plan(deltas))
    }

    /// Applies `edit` to `net`'s slot and returns how the effective entry of `net` and of
    /// every entry under it changed.
    fn change(&mut self, net: IpNet, edit: impl FnOnce(&mut Slot)) -> Vec<Delta> {
        let net = net.trunc();
        let before = self.effective_under(Some(net));
        let existed = self.slots.contains_key(&net);
        let slot = self.slots.entry(net).or_default();
        if let Some(e) = slot.dynamic.as_ref().and_then(|b| b.expires_ns) {
            self.due.remove(&(e, net));
        }
        edit(slot);
        if let Some(e) = slot.dynamic.as_ref().and_then(|b| b.expires_ns) {
            self.due.insert((e, net));
        }
        if slot.own().is_none() {
            self.slots.remove(&net);
        }
        match (existed, self.slots.contains_key(&net)) {
            (false, true) => self.counts[holder(&net).index] += 1,
            (true, false) => self.counts[holder(&net).index] -= 1,
            _ => {}
        }
        let after = self.effective_under(Some(net));
        let nets: BTreeSet<IpNet> = before.keys().chain(after.keys()).copied().collect();
        nets.into_iter()
            .map(|n| Delta {
                net: n,
                before: before.get(&n).copied(),
                after: after.get(&n).copied(),
            })
            .filter(|d| d.before != d.after)
            .collect()
    }

    /// The effective entry of every slot at or under `root` (every slot when `None`). One
    /// ordered pass: `(address, prefix length)` order visits a prefix before the prefixes
    /// inside it, so a stack of the enclosing prefixes' effective entries suffices.
    fn effective_under(&self, root: Option<IpNet>) -> BTreeMap<IpNet, DenyEntry> {
        let (slots, base): (Box<dyn Iterator<Item = (&IpNet, &Slot)>>, _) = match root {
            None => (Box::new(self.slots.iter()), None),
            Some(root) => {
                let lo = IpNet::new(root.network(), 0).expect("prefix 0 is valid");
                let hi = IpNet::new(root.broadcast(), root.max_prefix_len())
                    .expect("the longest prefix is valid");
                let inside = self.slots.range(lo..=hi).filter(move |(n, _)| root.contains(*n));
                (Box::new(inside), self.covering(root))
            }
        };
        let mut enclosing: Vec<(IpNet, Option<DenyEntry>)> = Vec::new();
        let mut out = BTreeMap::new();
        for (net, slot) in slots {
            while enclosing.last().is_some_and(|(outer, _)| !outer.contains(net)) {
                enclosing.pop();
            }
            let effective = outlast(slot.own(), enclosing.last().map_or(base, |(_, e)| *e));
            enclosing.push((*net, effective));
            if let Some(e) = effective {
                out.insert(*net, e);
            }
        }
        out
    }

    /// The longest-lasting ban on any prefix strictly covering `net`.
    pub fn covering(&self, net: IpNet) -> Option<DenyEntry> {
        (0..net.prefix_len())
            .filter_map(|len| {
                let outer = IpNet::new(net.addr(), len).expect("shorter prefix is valid").trunc();
                self.slots.get(&outer).and_then(Slot::own)
            })
            .fold(None, |acc, e| outlast(acc, Some(e)))
    }
}

/// How one entry's effective value changes.
struct Delta {
    net: IpNet,
    before: Option<DenyEntry>,
    after: Option<DenyEntry>,
}

/// Orders the writes of one or more changes (for each entry, from its first value to its
/// last): first every write that makes an entry drop for longer or adds one, then those that
/// shorten an entry, then removals. While the new entries are in and the old ones not yet
/// gone, every source's longest match holds at least what the old or the new policy says for
/// it, so no instant drops less than the bans in force both before and after.
fn plan(deltas: Vec<Delta>) -> Vec<Write> {
    let mut merged: BTreeMap<IpNet, (Option<DenyEntry>, Option<DenyEntry>)> = BTreeMap::new();
    for d in deltas {
        merged
            .entry(d.net)
            .and_modify(|(_, after)| *after = d.after)
            .or_insert((d.before, d.after));
    }
    let (mut grow, mut shrink, mut remove) = (Vec::new(), Vec::new(), Vec::new());
    for (net, (before, after)) in merged {
        match (before, after) {
            (_, None) if before.is_some() => remove.push(Write::Remove(net)),
            (Some(b), Some(a)) if a != b && a.outlasting(b) == b => shrink.push(Write::Set(net, a)),
            (b, Some(a)) if b != Some(a) => grow.push(Write::Set(net, a)),
            _ => {}
        }
    }
    grow.into_iter().chain(shrink).chain(remove).collect()
}

#[cfg(test)]
mod tests;
