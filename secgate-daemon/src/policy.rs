//! The running policy: the config plus run-time changes, held in memory and projected onto
//! the maps. Memory is the truth; the maps are written from it and never walked on a hot
//! path, so `status`, `ban list` and the sweeper cost nothing per tracked source or ban.
//!
//! Only [`crate::service::Service`] holds a `Policy`: it serialises changes, persists them
//! and audits them. At start the maps are reconciled with config + saved state (missing
//! entries written, stale ones removed); when there was no usable state file, entries the
//! pinned maps hold beyond the config are adopted rather than deleted.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use secgate_common::{
    maps::{Counter, LimitKey, MAX_DENY, RateRule, STATS_DROPPED, STATS_NEW_BUCKETS},
    verdict::Reason,
};

use crate::{
    bans::{Ban, Bans},
    clock::{Anchor, Clock, after},
    config::{DatapathSettings, Mode, Override, Rate, Selector},
    datapath::{Datapath, DatapathError},
    maps::MapsError,
    state::{Loaded, Runtime, StoredBan},
    views::{BanView, LimitsView, StatsView, StatusView, Traffic},
};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, PolicyError>;

pub struct Policy {
    datapath: Datapath,
    settings: DatapathSettings,
    bans: Bans,
    /// Allow entries added at run time (the config's are in `settings`).
    allow: BTreeSet<IpNet>,
    /// Set by `secgate mode`; `None` follows the config.
    mode: Option<Mode>,
    /// Set by `secgate limit`; `None` follows the config.
    limits: Option<LimitsView>,
    clock: Arc<dyn Clock>,
    anchor: Anchor,
    started: Instant,
    /// A map write failed midway: the next sweep rewrites the deny tries from memory.
    deny_stale: bool,
}

impl Policy {
    /// Restores the saved run-time state and reconciles the maps with config + state.
    /// Returns warnings for the log (state that was discarded, entries adopted).
    pub fn start(
        datapath: Datapath,
        settings: DatapathSettings,
        loaded: Loaded,
        clock: Arc<dyn Clock>,
    ) -> Result<(Policy, Vec<String>)> {
        let anchor = Anchor::take(clock.as_ref());
        let mut p = Policy {
            datapath,
            settings,
            bans: Bans::default(),
            allow: BTreeSet::new(),
            mode: None,
            limits: None,
            clock,
            anchor,
            started: Instant::now(),
            deny_stale: false,
        };
        let mut warnings = Vec::new();
        match loaded {
            Loaded::Saved(runtime) => p.restore(runtime),
            Loaded::Missing => warnings.extend(p.adopt("there was no state file")?),
            Loaded::Discarded(err) => {
                warnings.push(err.to_string());
                warnings.extend(p.adopt("the state file was unusable")?);
            }
        }
        warnings.extend(p.settings.warnings());
        p.bans.set_config(&p.settings.deny.iter().copied().collect());
        p.reconcile()?;
        Ok((p, warnings))
    }

    fn now(&self) -> u64 {
        self.clock.monotonic_ns()
    }

    /// Takes saved state. Expiries from this boot are used as saved; from another boot they
    /// are converted from wall time, once, here.
    fn restore(&mut self, r: Runtime) {
        let same_boot = r.boot_id.is_some() && r.boot_id == self.anchor.boot_id;
        let now = self.now();
        for (net, b) in r.bans {
            let expires_ns = match (b.expires_mono_ns, b.expires_unix_ms) {
                (Some(mono), _) if same_boot => Some(mono),
                (_, Some(ms)) => Some(self.anchor.to_monotonic_ns(ms)),
                (_, None) => None,
            };
            if expires_ns.is_none_or(|e| e > now) {
                self.bans.ban(net, Ban { expires_ns, reason: b.reason });
            }
        }
        self.allow = r.allow;
        self.mode = r.mode;
        self.limits = r.limits;
    }

    /// Without a usable state file, bans and allow entries the pinned maps hold beyond the
    /// config are kept as dynamic ones: an unreadable file must not lift a ban.
    fn adopt(&mut self, why: &str) -> Result<Vec<String>> {
        if !self.datapath.reused() {
            return Ok(Vec::new());
        }
        let now = self.now();
        let mut adopted = 0;
        for (net, entry) in self.datapath.maps.deny()? {
            if self.settings.deny.contains(&net) || !entry.active(now) {
                continue;
            }
            let expires_ns = (!entry.permanent()).then_some(entry.expires_ns);
            let reason = format!("adopted from the pinned maps ({why})");
            self.bans.ban(net, Ban { expires_ns, reason });
            adopted += 1;
        }
        for (net, _) in self.datapath.maps.allow()? {
            if !self.settings.allow.contains(&net) && self.allow.insert(net) {
                adopted += 1;
            }
        }
        Ok((adopted > 0)
            .then(|| {
                format!("{why}: kept {adopted} ban(s) and allow entries from the pinned maps as dynamic ones; check them with `secgate ban list` and `secgate allow list`")
            })
            .into_iter()
            .collect())
    }

    /// The run-time state to save, expiries converted with the start anchor.
    pub fn runtime(&self) -> Runtime {
        let bans = self
            .bans
            .dynamics()
            .map(|(net, b)| {
                let stored = StoredBan {
                    expires_unix_ms: b.expires_ns.map(|e| self.anchor.to_unix_ms(e)),
                    expires_mono_ns: b.expires_ns,
                    reason: b.reason.clone(),
                };
                (*net, stored)
            })
            .collect();
        Runtime {
            version: 0,
            boot_id: self.anchor.boot_id.clone(),
            mode: self.mode,
            limits: self.limits.clone(),
            bans,
            allow: self.allow.clone(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(self.settings.mode)
    }

    pub fn limits(&self) -> LimitsView {
        self.limits.clone().unwrap_or_else(|| LimitsView {
            default: self.settings.default_limit,
            overrides: self.settings.limits.clone(),
        })
    }

    pub fn settings(&self) -> &DatapathSettings {
        &self.settings
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
            self.settings.allow.iter().chain(&self.allow).copied().collect();
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

    /// Writes every deny entry from memory and removes the ones memory does not hold (one
    /// walk of the tries: at start, and after a failed write).
    fn reconcile_deny(&mut self) -> Result<()> {
        let want = self.bans.projection();
        for (net, entry) in &want {
            self.datapath.maps.set_deny(*net, *entry)?;
        }
        for (net, _) in self.datapath.maps.deny()? {
            if !want.contains_key(&net) {
                self.datapath.maps.remove_deny(net)?;
            }
        }
        self.deny_stale = false;
        Ok(())
    }

    fn write_deny(&mut self, writes: &[crate::bans::Write]) -> Result<()> {
        self.datapath.maps.write_deny(writes).inspect_err(|_| self.deny_stale = true)?;
        Ok(())
    }

    pub fn ban_add(
        &mut self,
        cidr: IpNet,
        ttl: Option<Duration>,
        reason: String,
    ) -> Result<BanView> {
        if self.bans.is_config(&cidr) {
            return Err(PolicyError::Invalid(format!(
                "{cidr} is already denied permanently by the config"
            )));
        }
        if !self.bans.contains(&cidr) && self.bans.count_family(&cidr) >= MAX_DENY as usize {
            return Err(MapsError::Full { name: deny_map(&cidr), capacity: MAX_DENY }.into());
        }
        let expires_ns = ttl.map(|t| after(self.now(), t));
        let writes = self.bans.ban(cidr, Ban { expires_ns, reason: reason.clone() });
        self.write_deny(&writes)?;
        Ok(BanView { cidr, expires_in_secs: ttl.map(|t| t.as_secs_f64()), reason })
    }

    pub fn ban_del(&mut self, cidr: IpNet) -> Result<bool> {
        if self.bans.is_config(&cidr) {
            return Err(PolicyError::Invalid(format!(
                "{cidr} is denied by the config; remove it from datapath.deny and run `secgate reload`"
            )));
        }
        let Some((_, writes)) = self.bans.lift(cidr) else { return Ok(false) };
        self.write_deny(&writes)?;
        Ok(true)
    }

    /// Bans in force, each with its own time left.
    pub fn bans(&self) -> Vec<BanView> {
        self.bans.list(self.now())
    }

    /// Lifts the dynamic bans that are due (on the kernel's clock); returns how many. Costs
    /// nothing while none is due; rewrites the deny tries if an earlier write failed.
    pub fn sweep(&mut self) -> Result<usize> {
        if self.deny_stale {
            self.reconcile_deny()?;
        }
        let (lifted, writes) = self.bans.expire(self.now());
        self.write_deny(&writes)?;
        Ok(lifted.len())
    }

    pub fn allow_add(&mut self, cidr: IpNet) -> Result<()> {
        self.datapath.maps.set_allow(cidr)?;
        self.allow.insert(cidr);
        Ok(())
    }

    pub fn allow_del(&mut self, cidr: IpNet) -> Result<bool> {
        if self.settings.allow.contains(&cidr) {
            return Err(PolicyError::Invalid(format!(
                "{cidr} is allowed by the config; remove it from datapath.allow and run `secgate reload`"
            )));
        }
        if !self.allow.contains(&cidr) {
            return Ok(false);
        }
        self.datapath.maps.remove_allow(cidr)?;
        self.allow.remove(&cidr);
        Ok(true)
    }

    pub fn allow(&self) -> Vec<IpNet> {
        self.settings
            .allow
            .iter()
            .chain(&self.allow)
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
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
        self.change_limits(limits)
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
            self.change_limits(limits)?;
        }
        Ok(found)
    }

    fn change_limits(&mut self, limits: LimitsView) -> Result<()> {
        let previous = self.limits.replace(limits);
        self.reconcile_limits().inspect_err(|_| {
            self.limits = previous;
            let _ = self.reconcile_limits();
        })
    }

    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        let previous = self.mode.replace(mode);
        self.write_config().inspect_err(|_| self.mode = previous)
    }

    /// Applies a new config: limits, allow, deny, mode and interfaces follow it (run-time
    /// mode and limit changes give way to the file); dynamic bans and allows stay. On any
    /// failure the previous policy is restored in memory and in the maps.
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
        let saved = (self.settings.clone(), self.bans.clone(), self.mode, self.limits.clone());
        self.settings = new;
        self.mode = None;
        self.limits = None;
        let writes = self.bans.set_config(&self.settings.deny.iter().copied().collect());
        let applied = self
            .write_deny(&writes)
            .and_then(|()| self.reconcile_limits())
            .and_then(|()| self.reconcile_allow())
            .and_then(|()| self.sync_interfaces());
        match &applied {
            Ok(()) => self.settings.warnings().iter().for_each(|w| tracing::warn!("{w}")),
            Err(_) => {
                (self.settings, self.bans, self.mode, self.limits) = saved;
                let _ = self.reconcile();
                let _ = self.sync_interfaces();
            }
        }
        applied
    }

    /// Brings the XDP links in line with the configured interfaces and the interfaces that
    /// exist now (called at start, on reload, on link events and every second).
    pub fn sync_interfaces(&mut self) -> Result<()> {
        let want = self.settings.interfaces.clone();
        Ok(self.datapath.sync_links(&want, self.settings.attach)?)
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

    /// A fixed number of syscalls whatever the number of sources or bans: sources are
    /// counted from the bucket-insert counter, never by walking the LRU map.
    pub fn status(&self) -> Result<StatusView> {
        let created = self.datapath.maps.stats()?[STATS_NEW_BUCKETS as usize].packets;
        Ok(StatusView {
            mode: self.mode(),
            attachments: self.datapath.links().attachments(),
            pin_path: self.datapath.pin_path().display().to_string(),
            bans: self.bans.len(),
            allow: self.allow().len(),
            overrides: self.limits().overrides.len(),
            sources: created.min(u64::from(self.datapath.maps.sources_capacity())),
            buckets_created: created,
            uptime_secs: self.started.elapsed().as_secs(),
        })
    }

    /// The loaded datapath, for tests that run frames through the program.
    #[cfg(any(test, feature = "test-util"))]
    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }
}

fn deny_map(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => secgate_common::maps::DENY_V4,
        IpNet::V6(_) => secgate_common::maps::DENY_V6,
    }
}
