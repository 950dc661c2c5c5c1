//! The override rules (`SG_LIMITS`) and the bitmap of their ports (`SG_OVERRIDE_PORTS`),
//! written together so the program's port test never hides a rule: a port's bit is set
//! before its first rule goes in and cleared only once its last rule is out. The bitmap is
//! derived data, rebuilt from the rules whenever the maps are taken, so a fresh or replaced
//! bitmap beside rules an earlier run left is made whole before the program is attached.

use aya::maps::{Array, HashMap, MapData};
use secgate_common::{
    limit::override_port_bit,
    maps::{self as names, LimitKey, OVERRIDE_PORT_WORDS, RateRule},
};

use super::{MapsError, Result, convert, found, ignore_missing, is_full, wrap};

pub struct Limits {
    rules: HashMap<MapData, LimitKey, RateRule>,
    ports: Array<MapData, u64>,
}

impl Limits {
    pub fn take(bpf: &mut aya::Ebpf) -> Result<Limits> {
        let mut limits = Limits {
            rules: convert(bpf, names::LIMITS)?,
            ports: convert(bpf, names::OVERRIDE_PORTS)?,
        };
        limits.rebuild_ports()?;
        Ok(limits)
    }

    pub fn list(&self) -> Result<Vec<(LimitKey, RateRule)>> {
        self.rules.iter().collect::<std::result::Result<_, _>>().map_err(wrap(names::LIMITS))
    }

    pub fn set(&mut self, key: LimitKey, rule: RateRule) -> Result<()> {
        self.mark(&key, true)?;
        let inserted = self.rules.insert(key, rule, 0).map_err(|e| {
            if is_full(&e) {
                MapsError::Full { name: names::LIMITS, capacity: names::MAX_LIMIT_RULES }
            } else {
                wrap(names::LIMITS)(e)
            }
        });
        if inserted.is_err() {
            // The insert's error is the one to report; a bit this refresh fails to clear
            // costs only a lookup that misses.
            let _ = self.refresh(&key);
        }
        inserted
    }

    pub fn remove(&mut self, key: &LimitKey) -> Result<()> {
        ignore_missing(self.rules.remove(key)).map_err(wrap(names::LIMITS))?;
        self.refresh(key)
    }

    /// Writes every word of the bitmap from the rules held.
    fn rebuild_ports(&mut self) -> Result<()> {
        let mut words = vec![0u64; OVERRIDE_PORT_WORDS as usize];
        for (key, _) in self.list()? {
            if let Some((word, bit)) = override_port_bit(key.proto, key.port) {
                words[word as usize] |= bit;
            }
        }
        for (word, want) in (0..OVERRIDE_PORT_WORDS).zip(words) {
            if self.word(word)? != want {
                self.ports.set(word, want, 0).map_err(wrap(names::OVERRIDE_PORTS))?;
            }
        }
        Ok(())
    }

    /// Sets `key`'s port bit to whether any rule for its protocol and port is held.
    fn refresh(&mut self, key: &LimitKey) -> Result<()> {
        let held = |syn_only| {
            let key = LimitKey { syn_only, ..*key };
            found(self.rules.get(&key, 0), names::LIMITS).map(|rule| rule.is_some())
        };
        let any = held(0)? || held(1)?;
        self.mark(key, any)
    }

    fn mark(&mut self, key: &LimitKey, on: bool) -> Result<()> {
        let Some((word, bit)) = override_port_bit(key.proto, key.port) else {
            return Ok(());
        };
        let old = self.word(word)?;
        let new = if on { old | bit } else { old & !bit };
        if new != old {
            self.ports.set(word, new, 0).map_err(wrap(names::OVERRIDE_PORTS))?;
        }
        Ok(())
    }

    fn word(&self, word: u32) -> Result<u64> {
        self.ports.get(&word, 0).map_err(wrap(names::OVERRIDE_PORTS))
    }
}
