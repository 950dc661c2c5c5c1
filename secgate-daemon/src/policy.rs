//! The running policy: the config plus run-time changes, kept in the maps and in the state
//! file.
//!
//! A run-time change is saved to the state file first and then written to the maps; if the
//! maps refuse it, the previous state is restored in both, so a change is never left
//! half-applied. At start and on reload the maps are reconciled with config + state: missing
//! entries are written, stale ones removed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use secgate_common::{
    maps::{Counter, DenyEntry, LimitKey, RateRule, STATS_DROPPED},
    verdict::Reason,
};
use serde::{Deserialize, Serialize};

use crate::{
    clock::{deadline, monotonic_ns},
    config::{DatapathSettings, Mode, Override, Rate, Selector},
    datapath::{Attachment, Datapath, DatapathError},
    maps::MapsError,
    state::{Runtime, StateError, StateFile, StoredBan, unix_ms},
};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
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
    pub reasons: BTreeMap<String, Traffic>,
    /// Packets actually dropped (none while in monitor mode).
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
    runtime: Runtime,
    state: StateFile,
    started: std::time::Instant,
}

impl Policy {
    /// Restores the saved run-time state and reconciles the maps with config + state. A
    /// corrupt state file is not fatal: it is moved aside and returned as a warning.
    pub fn start(
        datapath: Datapath,
        settings: DatapathSettings,
        state: StateFile,
    ) -> Result<(Policy, Option<StateError>)> {
        let (runtime, warning) = state.load();
        let mut p =
            Policy { datapath, settings, runtime, state, started: std::time::Instant::now() };
        p.reconcile()?;
        Ok((p, warning))
    }

    pub fn mode(&self) -> Mode {
        self.runtime.mode.unwrap_or(self.settings.mode)
    }

    pub fn limits(&self) -> LimitsView {
        self.runtime.limits.clone().unwrap_or_else(|| LimitsView {
            default: self.settings.default_limit,
            overrides: self.settings.limits.clone(),
        })
    }

    fn write_config(&mut self) -> Result<()> {
        let limits = self.limits();
        let cfg = self.settings.datapath_config(self.mode(), limits.default, &limits.overrides);
        Ok(self.datapath.maps.set_config(&cfg)?)
    }

    fn reconcile(&mut self) -> Result<()> {
        self.reconcile_limits()?;
        self.reconcile_allow()?;
        self.reconcile_deny()
    }

    /// New overrides first, then the config that routes lookups to them, then removal of
    /// stale ones: every intermediate state is a valid policy.
    fn reconcile_limits(&mut self) -> Result<()> {
        let want: HashMap<LimitKey, RateRule> = self
            .limits()
            .overrides
            .iter()
            .flat_map(|o| o.selector.keys().map(move |k| (k, o.rate.rule())))
            .collect();
        for (key, rule) in &want {
            self.datapath.maps.set_limit(*key, *rule)?;
        }
        self.write_config()?;
        for (key, _) in self.datapath.maps.limits()? {
            if !want.contains_key(&key) {
                self.datapath.maps.remove_limit(&key)?;
            }
        }
        Ok(())
    }

    fn reconcile_allow(&mut self) -> Result<()> {
        let want: BTreeSet<IpNet> =
            self.settings.allow.iter().chain(&self.runtime.allow).copied().collect();
        for net in &want {
            self.datapath.maps.set_allow(*net)?;
        }
        for (net, _) in self.datapath.maps.allow()? {
            if !want.contains(&net) {
                self.datapath.maps.remove_allow(net)?;
            }
        }
        Ok(())
    }

    fn reconcile_deny(&mut self) -> Result<()> {
        let now = SystemTime::now();
        self.runtime.bans.retain(|_, b| !b.expired(now));
        let mut want: BTreeMap<IpNet, DenyEntry> = self
            .runtime
            .bans
            .iter()
            .map(|(net, b)| (*net, DenyEntry { expires_ns: b.remaining(now).map_or(0, deadline) }))
            .collect();
        for net in &self.settings.deny {
            want.insert(*net, DenyEntry { expires_ns: 0 });
        }
        for (net, entry) in &want {
            self.datapath.maps.set_deny(*net, *entry)?;
        }
        for (net, _) in self.datapath.maps.deny()? {
            if !want.contains_key(&net) {
                self.datapath.maps.remove_deny(net)?;
            }
        }
        Ok(())
    }

    /// Saves an edited run-time state, then applies it; restores the old one on failure.
    fn commit<T>(
        &mut self,
        edit: impl FnOnce(&mut Runtime),
        apply: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let before = self.runtime.clone();
        edit(&mut self.runtime);
        if let Err(e) = self.state.save(&self.runtime) {
            self.runtime = before;
            return Err(e.into());
        }
        apply(self).inspect_err(|_| {
            self.runtime = before;
            let _ = self.state.save(&self.runtime);
            let _ = self.reconcile();
        })
    }

    fn is_config_deny(&self, net: &IpNet) -> bool {
        self.settings.deny.contains(net)
    }

    pub fn ban_add(
        &mut self,
        cidr: IpNet,
        ttl: Option<Duration>,
        reason: Option<String>,
    ) -> Result<BanView> {
        if self.is_config_deny(&cidr) {
            return Err(PolicyError::Invalid(format!(
                "{cidr} is already denied permanently by the config"
            )));
        }
        let reason = reason.unwrap_or_else(|| "manual".into());
        let stored = StoredBan {
            expires_unix_ms: ttl.map(|t| unix_ms(SystemTime::now() + t)),
            reason: reason.clone(),
        };
        let entry = DenyEntry { expires_ns: ttl.map_or(0, deadline) };
        self.commit(
            |r| {
                r.bans.insert(cidr, stored);
            },
            |p| Ok(p.datapath.maps.set_deny(cidr, entry)?),
        )?;
        Ok(BanView { cidr, expires_in_secs: ttl.map(|t| t.as_secs_f64()), reason })
    }

    pub fn ban_del(&mut self, cidr: IpNet) -> Result<bool> {
        if self.is_config_deny(&cidr) {
            return Err(PolicyError::Invalid(format!(
                "{cidr} is denied by the config; remove it from datapath.deny and run `secgate reload`"
            )));
        }
        if !self.runtime.bans.contains_key(&cidr) {
            return Ok(self.datapath.maps.remove_deny(cidr)?);
        }
        self.commit(
            |r| {
                r.bans.remove(&cidr);
            },
            |p| Ok(p.datapath.maps.remove_deny(cidr)?),
        )
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
                reason: match self.runtime.bans.get(&cidr) {
                    Some(b) => b.reason.clone(),
                    None if self.is_config_deny(&cidr) => "config".into(),
                    None => "unknown".into(),
                },
            })
            .collect();
        out.sort_by_key(|b| b.cidr);
        Ok(out)
    }

    /// Removes bans whose expiry has passed; returns how many. The in-memory state says
    /// cheaply whether any dynamic ban is due (config bans never expire), so the deny maps
    /// are only walked then; the kernel's own expiry decides what goes.
    pub fn sweep(&mut self) -> Result<usize> {
        let wall = SystemTime::now();
        if !self.runtime.bans.values().any(|b| b.expired(wall)) {
            return Ok(0);
        }
        let now = monotonic_ns();
        let expired: Vec<IpNet> = self
            .datapath
            .maps
            .deny()?
            .into_iter()
            .filter(|(_, e)| !e.active(now))
            .map(|(n, _)| n)
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        self.commit(
            |r| r.bans.retain(|n, _| !expired.contains(n)),
            |p| {
                for net in &expired {
                    p.datapath.maps.remove_deny(*net)?;
                }
                Ok(expired.len())
            },
        )
    }

    pub fn allow_add(&mut self, cidr: IpNet) -> Result<()> {
        self.commit(
            |r| {
                r.allow.insert(cidr);
            },
            |p| Ok(p.datapath.maps.set_allow(cidr)?),
        )
    }

    pub fn allow_del(&mut self, cidr: IpNet) -> Result<bool> {
        if self.settings.allow.contains(&cidr) {
            return Err(PolicyError::Invalid(format!(
                "{cidr} is allowed by the config; remove it from datapath.allow and run `secgate reload`"
            )));
        }
        if !self.runtime.allow.contains(&cidr) {
            return Ok(false);
        }
        self.commit(
            |r| {
                r.allow.remove(&cidr);
            },
            |p| Ok(p.datapath.maps.remove_allow(cidr)?),
        )
    }

    pub fn allow(&self) -> Result<Vec<IpNet>> {
        let mut out: Vec<IpNet> = self.datapath.maps.allow()?.into_iter().map(|(n, _)| n).collect();
        out.sort();
        Ok(out)
    }

    /// Sets the default limit (`selector == None`) or an override.
    pub fn set_limit(&mut self, selector: Option<Selector>, rate: Rate) -> Result<()> {
        let mut limits = self.limits();
        match selector {
            None => limits.default = Some(rate),
            Some(selector) => {
                if let Some(problem) = crate::config::selector_problem(&selector) {
                    return Err(PolicyError::Invalid(problem));
                }
                limits.overrides.retain(|o| o.selector != selector);
                limits.overrides.push(Override { selector, rate });
            }
        }
        self.commit(|r| r.limits = Some(limits), Policy::reconcile_limits)
    }

    /// Removes the default limit or an override; `Ok(false)` if it was not set.
    pub fn del_limit(&mut self, selector: Option<Selector>) -> Result<bool> {
        let mut limits = self.limits();
        let found = match selector {
            None => limits.default.take().is_some(),
            Some(selector) => {
                let before = limits.overrides.len();
                limits.overrides.retain(|o| o.selector != selector);
                before != limits.overrides.len()
            }
        };
        if found {
            self.commit(|r| r.limits = Some(limits), Policy::reconcile_limits)?;
        }
        Ok(found)
    }

    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        self.commit(|r| r.mode = Some(mode), Policy::write_config)
    }

    /// Applies a new config: limits, allow, deny, mode and interfaces follow it (run-time
    /// mode and limit changes give way to the file); dynamic bans and allows stay.
    pub fn reload(&mut self, new: DatapathSettings) -> Result<()> {
        let old = &self.settings;
        let mut refused = Vec::new();
        if new.pin_path != old.pin_path {
            refused.push("datapath.pin_path");
        }
        if new.max_sources != old.max_sources {
            refused.push("datapath.max_sources");
        }
        if !refused.is_empty() {
            return Err(PolicyError::Invalid(format!(
                "{} cannot change on reload; restart the daemon to apply {}",
                refused.join(" and "),
                if refused.len() == 1 { "it" } else { "them" }
            )));
        }
        let previous = std::mem::replace(&mut self.settings, new);
        let applied = self.commit(
            |r| {
                r.mode = None;
                r.limits = None;
            },
            |p| {
                p.reconcile()?;
                p.sync_interfaces()
            },
        );
        if applied.is_err() {
            self.settings = previous;
            let _ = self.reconcile();
            let _ = self.sync_interfaces();
        }
        applied
    }

    /// Attaches to every configured interface not attached yet, and detaches from the rest,
    /// including links pinned by an earlier run for interfaces no longer configured.
    pub fn sync_interfaces(&mut self) -> Result<()> {
        let want = self.settings.interfaces.clone();
        for iface in &want {
            if !self.datapath.attachments().iter().any(|a| &a.interface == iface) {
                self.datapath.attach(iface, self.settings.attach)?;
            }
        }
        let gone: BTreeSet<String> = self
            .datapath
            .attachments()
            .into_iter()
            .map(|a| a.interface)
            .chain(self.datapath.pinned_interfaces())
            .filter(|i| !want.contains(i))
            .collect();
        for iface in gone {
            self.datapath.detach(&iface)?;
        }
        Ok(())
    }

    pub fn stats(&self) -> Result<StatsView> {
        let counters = self.datapath.maps.stats()?;
        let traffic = |c: Counter| Traffic { packets: c.packets, bytes: c.bytes };
        let reasons = Reason::ALL
            .iter()
            .map(|r| (r.name().to_string(), traffic(counters[*r as usize])))
            .collect();
        let dropped = traffic(counters[STATS_DROPPED as usize]);
        Ok(StatsView { mode: self.mode(), reasons, dropped })
    }

    pub fn status(&self) -> Result<StatusView> {
        Ok(StatusView {
            mode: self.mode(),
            attachments: self.datapath.attachments(),
            pin_path: self.datapath.pin_path().display().to_string(),
            bans: self.bans()?.len(),
            allow: self.allow()?.len(),
            overrides: self.limits().overrides.len(),
            sources: self.datapath.maps.source_count(),
            uptime_secs: self.started.elapsed().as_secs(),
        })
    }
}
