//! The running policy: config plus run-time changes, written through to the maps.
//!
//! Each change is checked first and then written with a single map update (or an order in
//! which every intermediate state is valid), so a failure never leaves a change half-applied.

use std::{collections::HashMap, time::Duration};

use ipnet::IpNet;
use secgate_common::{maps::DenyEntry, verdict::Reason};
use serde::{Deserialize, Serialize};

use crate::{
    clock::{deadline, monotonic_ns},
    config::{DatapathSettings, Mode, Override, Rate, Selector},
    datapath::{Attachment, Datapath},
    maps::MapsError,
};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, PolicyError>;

/// A ban as `ban list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BanView {
    pub cidr: IpNet,
    /// Seconds until the ban lapses; `None` for a permanent ban.
    pub expires_in_secs: Option<f64>,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LimitsView {
    pub default: Option<Rate>,
    pub overrides: Vec<Override>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatsView {
    pub mode: Mode,
    /// Counters per verdict reason (`pass`, `non_ip`, `allow`, `deny`, `rate`, `malformed`).
    pub reasons: std::collections::BTreeMap<String, Traffic>,
    /// Packets actually dropped (zero in monitor mode).
    pub dropped: Traffic,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    pub mode: Mode,
    pub attachments: Vec<Attachment>,
    pub pin_path: String,
    pub bans: usize,
    pub allow: usize,
    pub overrides: usize,
    pub sources: usize,
    pub uptime_secs: u64,
}

pub struct Policy {
    pub datapath: Datapath,
    settings: DatapathSettings,
    mode: Mode,
    default_limit: Option<Rate>,
    limits: Vec<Override>,
    reasons: HashMap<IpNet, String>,
    started: std::time::Instant,
}

impl Policy {
    /// Writes the configured policy into the maps. Entries already in pinned maps (dynamic
    /// bans from an earlier run) are kept.
    pub fn start(datapath: Datapath, settings: DatapathSettings) -> Result<Policy> {
        let mut p = Policy {
            datapath,
            mode: settings.mode,
            default_limit: settings.default_limit,
            limits: settings.limits.clone(),
            settings,
            reasons: HashMap::new(),
            started: std::time::Instant::now(),
        };
        let maps = &mut p.datapath.maps;
        for (key, _) in maps.limits()? {
            maps.remove_limit(&key)?;
        }
        for o in &p.limits {
            for key in o.selector.keys() {
                maps.set_limit(key, o.rate.rule())?;
            }
        }
        for net in &p.settings.allow {
            maps.set_allow(*net)?;
        }
        for net in &p.settings.deny {
            maps.set_deny(*net, DenyEntry { expires_ns: 0 })?;
            p.reasons.insert(*net, "config".into());
        }
        p.write_config()?;
        Ok(p)
    }

    fn write_config(&mut self) -> Result<()> {
        let cfg = self
            .settings
            .datapath_config(self.mode, self.default_limit, &self.limits);
        Ok(self.datapath.maps.set_config(&cfg)?)
    }

    pub fn ban_add(
        &mut self,
        cidr: IpNet,
        ttl: Option<Duration>,
        reason: Option<String>,
    ) -> Result<BanView> {
        let expires_ns = ttl.map_or(0, deadline);
        self.datapath
            .maps
            .set_deny(cidr, DenyEntry { expires_ns })?;
        let reason = reason.unwrap_or_else(|| "manual".into());
        self.reasons.insert(cidr, reason.clone());
        Ok(BanView {
            cidr,
            expires_in_secs: ttl.map(|t| t.as_secs_f64()),
            reason,
        })
    }

    pub fn ban_del(&mut self, cidr: IpNet) -> Result<bool> {
        self.reasons.remove(&cidr);
        Ok(self.datapath.maps.remove_deny(cidr)?)
    }

    /// Active bans (expired ones no longer drop and are left out).
    pub fn bans(&self) -> Result<Vec<BanView>> {
        let now = monotonic_ns();
        let mut out: Vec<BanView> = self
            .datapath
            .maps
            .deny()?
            .into_iter()
            .filter(|(_, e)| e.active(now))
            .map(|(cidr, e)| BanView {
                cidr,
                expires_in_secs: (e.expires_ns != 0).then(|| (e.expires_ns - now) as f64 / 1e9),
                reason: self
                    .reasons
                    .get(&cidr)
                    .cloned()
                    .unwrap_or_else(|| "restored".into()),
            })
            .collect();
        out.sort_by_key(|b| b.cidr);
        Ok(out)
    }

    /// Removes bans whose expiry has passed; returns how many.
    pub fn sweep(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let expired: Vec<IpNet> = self
            .datapath
            .maps
            .deny()?
            .into_iter()
            .filter(|(_, e)| !e.active(now))
            .map(|(n, _)| n)
            .collect();
        for net in &expired {
            self.ban_del(*net)?;
        }
        Ok(expired.len())
    }

    pub fn allow_add(&mut self, cidr: IpNet) -> Result<()> {
        Ok(self.datapath.maps.set_allow(cidr)?)
    }

    pub fn allow_del(&mut self, cidr: IpNet) -> Result<bool> {
        Ok(self.datapath.maps.remove_allow(cidr)?)
    }

    pub fn allow(&self) -> Result<Vec<IpNet>> {
        let mut out: Vec<IpNet> = self
            .datapath
            .maps
            .allow()?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        out.sort();
        Ok(out)
    }

    pub fn limits(&self) -> LimitsView {
        LimitsView {
            default: self.default_limit,
            overrides: self.limits.clone(),
        }
    }

    /// Sets the default limit (`selector == None`) or an override.
    pub fn set_limit(&mut self, selector: Option<Selector>, rate: Rate) -> Result<()> {
        let Some(selector) = selector else {
            self.default_limit = Some(rate);
            return self.write_config();
        };
        if let Some(problem) = crate::config::selector_problem(&selector) {
            return Err(PolicyError::Invalid(problem));
        }
        for key in selector.keys() {
            self.datapath.maps.set_limit(key, rate.rule())?;
        }
        self.limits.retain(|o| o.selector != selector);
        self.limits.push(Override { selector, rate });
        self.write_config()
    }

    /// Removes the default limit or an override; `Ok(false)` if it was not set.
    pub fn del_limit(&mut self, selector: Option<Selector>) -> Result<bool> {
        let Some(selector) = selector else {
            let had = self.default_limit.take().is_some();
            self.write_config()?;
            return Ok(had);
        };
        let before = self.limits.len();
        self.limits.retain(|o| o.selector != selector);
        if before == self.limits.len() {
            return Ok(false);
        }
        self.write_config()?;
        for key in selector.keys() {
            self.datapath.maps.remove_limit(&key)?;
        }
        Ok(true)
    }

    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        self.mode = mode;
        self.write_config()
    }

    pub fn stats(&self) -> Result<StatsView> {
        let counters = self.datapath.maps.stats()?;
        let mut reasons = std::collections::BTreeMap::new();
        let mut dropped = Traffic::default();
        for r in Reason::ALL {
            let c = counters[r as usize];
            reasons.insert(
                r.name().to_string(),
                Traffic {
                    packets: c.packets,
                    bytes: c.bytes,
                },
            );
            let drops = r.drops()
                && self.mode == Mode::Enforce
                && !(r == Reason::Malformed && self.settings.pass_malformed);
            if drops {
                dropped.packets += c.packets;
                dropped.bytes += c.bytes;
            }
        }
        Ok(StatsView {
            mode: self.mode,
            reasons,
            dropped,
        })
    }

    pub fn status(&self) -> Result<StatusView> {
        Ok(StatusView {
            mode: self.mode,
            attachments: self.datapath.attachments.clone(),
            pin_path: self.datapath.pin_path().display().to_string(),
            bans: self.bans()?.len(),
            allow: self.allow()?.len(),
            overrides: self.limits.len(),
            sources: self.datapath.maps.source_count(),
            uptime_secs: self.started.elapsed().as_secs(),
        })
    }
}
