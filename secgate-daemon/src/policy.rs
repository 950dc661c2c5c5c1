//! The running policy: the config plus run-time changes, held in memory and projected onto
//! the maps. Memory is the truth; the maps are written from it and never walked on a hot
//! path, so `status`, `ban list` and the sweeper cost nothing per tracked source or ban.
//!
//! Only [`crate::service::Service`] holds a `Policy`: it serialises changes, persists them
//! and audits them. At start the maps are reconciled with config + saved state (missing
//! entries written, stale ones removed); when there was no usable state file, entries the
//! pinned maps hold beyond the config are adopted rather than deleted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use secgate_common::{
    maps::{
        Counter, FLAG_NO_ALLOW, FLAG_TRACE, LimitKey, RateRule, STATS_DROPPED,
        STATS_EVICTED_BUCKETS, STATS_NEW_BUCKETS,
    },
    verdict::Reason,
};

use crate::{
    bans::{Ban, Bans},
    clock::{Anchor, Clock, after},
    config::{DatapathSettings, Limits, Mode, Override, Rate, Selector},
    datapath::{Datapath, DatapathError},
    maps::MapsError,
    state::{Loaded, Runtime, StoredBan},
    trace::{TraceLog, Traces},
    views::{BanView, StatsView, StatusView, Traffic},
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

/// A started policy, what to log, and whether the state must be written at once.
pub struct Started {
    pub policy: Policy,
    pub warnings: Vec<String>,
    pub dirty: bool,
}

/// What the saved state accounts for in the pinned maps.
#[derive(Default)]
struct Explained {
    deny: BTreeSet<IpNet>,
    allow: BTreeSet<IpNet>,
    /// Everything beyond the state is a leftover (states from before the config was saved).
    complete: bool,
}

/// The rule every limit key gets, to compare limits whatever order or form they came in.
fn rules(limits: &Limits) -> (RateRule, BTreeMap<LimitKey, RateRule>) {
    let default = limits.default.map_or(RateRule::UNLIMITED, Rate::rule);
    let keys =
        limits.overrides.iter().flat_map(|o| o.selector.keys().map(move |k| (k, o.rate.rule())));
    (default, keys.collect())
}

pub struct Policy {
    datapath: Datapath,
    settings: DatapathSettings,
    bans: Bans,
    /// Allow entries added at run time (the config's are in `settings`).
    allow: BTreeSet<IpNet>,
    /// Set by `secgate mode`; `None` follows the config.
    mode: Option<Mode>,
    /// Set by `secgate limit`; `None` follows the config.
    limits: Option<Limits>,
    clock: Arc<dyn Clock>,
    anchor: Anchor,
    started: Instant,
    /// A map write failed and could not be undone: the deny maps are rewritten from memory
    /// when this comes due (backing off while it keeps failing).
    deny_repair: Option<Repair>,
    /// `secgate trace` sessions: the kernel traces the union of their prefixes.
    traces: Traces,
    /// The kernel's trace tries or flag may not match `traces` (a write failed).
    traces_dirty: bool,
}

/// When to rewrite the deny maps next, and how long to wait after that if it fails again.
#[derive(Clone, Copy, Debug)]
struct Repair {
    at: Instant,
    backoff: Duration,
}

const REPAIR_FIRST: Duration = Duration::from_secs(1);
const REPAIR_MAX: Duration = Duration::from_secs(60);

impl Policy {
    /// Restores the saved run-time state and reconciles the maps with config + state, keeping
    /// what the pinned maps hold that neither explains. Returns warnings for the log, and
    /// whether the state must be written at once (it was discarded, or entries were kept).
    pub fn start(
        datapath: Datapath,
        settings: DatapathSettings,
        loaded: Loaded,
        clock: Arc<dyn Clock>,
    ) -> Result<Started> {
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
            deny_repair: None,
            traces: Traces::default(),
            traces_dirty: false,
        };
        let mut warnings = Vec::new();
        let explained = match loaded {
            Loaded::Saved(runtime) => p.restore(runtime),
            Loaded::Missing => Explained::default(),
            Loaded::Discarded(e) | Loaded::Unreadable(e) => {
                warnings.push(e.to_string());
                warnings.extend(p.adopt_settings()?);
                Explained::default()
            }
        };
        // Config denies first, so that they explain the entries nested under them.
        p.bans.set_config(&p.settings.deny.iter().copied().collect());
        let kept = p.adopt(&explained)?;
        if kept > 0 {
            warnings.push(format!(
                "kept {kept} ban(s) and allow entries from the pinned maps that the state file did not hold; check them with `secgate ban list` and `secgate allow list`"
            ));
        }
        let dirty = kept > 0 || !warnings.is_empty();
        p.reconcile()?;
        Ok(Started { policy: p, warnings, dirty })
    }

    fn now(&self) -> u64 {
        self.clock.monotonic_ns()
    }

    /// Takes saved state. Expiries from this boot are used as saved; from another boot they
    /// are converted from wall time, once, here. Returns what the state file accounts for:
    /// its own bans (lapsed ones too) and the config entries it was saved with.
    fn restore(&mut self, r: Runtime) -> Explained {
        let same_boot = r.boot_id.is_some() && r.boot_id == self.anchor.boot_id;
        let now = self.now();
        let mut deny = r.config_deny;
        for (net, b) in r.bans {
            deny.insert(net);
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
        // Version 1 saved state before applying each change and did not record the config,
        // so what its maps hold beyond it is a config entry dropped since, not a lost change.
        Explained { deny, allow: r.config_allow, complete: r.version == 1 }
    }

    /// Keeps, as dynamic, the entries the pinned maps hold that nothing accounts for: not the
    /// saved state, not the config, not the config the state was saved with, and not a ban in
    /// memory covering the entry for at least as long (whose projection the entry may be). A
    /// change applied but not saved, or a state file that was lost, must never lift a ban.
    /// Returns how many were kept.
    fn adopt(&mut self, explained: &Explained) -> Result<usize> {
        if !self.datapath.reused() || explained.complete {
            return Ok(0);
        }
        let now = self.now();
        let mut kept = 0;
        for (net, entry) in self.datapath.maps.deny()? {
            let covered = self.bans.covering(net).is_some_and(|c| c.outlasting(entry) == c);
            let known = self.bans.contains(&net) || explained.deny.contains(&net) || covered;
            if known || !entry.active(now) {
                continue;
            }
            // The kernel holds each entry's effective expiry, which a covering ban may have
            // lengthened: the kept ban may outlast its own, never the other way round.
            let expires_ns = (!entry.permanent()).then_some(entry.expires_ns);
            let reason = "kept from the pinned maps (not in the state file)".into();
            self.bans.ban(net, Ban { expires_ns, reason });
            kept += 1;
        }
        for (net, _) in self.datapath.maps.allow()? {
            let known = self.settings.allow.contains(&net) || explained.allow.contains(&net);
            if !known && self.allow.insert(net) {
                kept += 1;
            }
        }
        Ok(kept)
    }

    /// Without a usable state file, a mode or limits the pinned maps hold that differ from the
    /// config were run-time changes: keep them, so that a bad state file cannot switch
    /// enforcement off or loosen a limit. Returns what it kept, for the log. A config map
    /// made anew (none pinned, or one of another build replaced) holds no such change, and
    /// its zeroed limits must not be read as one.
    fn adopt_settings(&mut self) -> Result<Vec<String>> {
        if !self.datapath.config_reused() {
            return Ok(Vec::new());
        }
        let cfg = self.datapath.maps.config()?;
        let mut kept = Vec::new();
        let mode = Mode::from_raw(cfg.mode);
        if mode != self.settings.mode {
            self.mode = Some(mode);
            kept.push(format!(
                "kept mode {mode:?} from the pinned maps (the config says {:?})",
                self.settings.mode
            ));
        }
        let rate =
            |r: RateRule| (!r.is_unlimited()).then(|| Rate { pps: r.pps(), burst: r.burst() });
        let mut overrides: Vec<Override> = Vec::new();
        for (key, rule) in self.datapath.maps.limits()? {
            if let (Some(selector), Some(rate)) = (Selector::from_key(&key), rate(rule))
                && !overrides.iter().any(|o| o.selector == selector)
            {
                overrides.push(Override { selector, rate });
            }
        }
        let pinned = Limits { default: rate(cfg.default_rule), overrides };
        if rules(&pinned) != rules(&self.limits()) {
            self.limits = Some(pinned);
            kept.push("kept the limits the pinned maps hold, which differ from the config (see `secgate limit show`)".into());
        }
        Ok(kept)
    }

    /// The run-time state to save.
    pub fn runtime(&self) -> Runtime {
        // A fresh pairing of the two clocks for each save: should NTP correct the wall clock
        // after start, the saved times follow it, and a ban keeps its duration across reboot.
        let now = Anchor::take(self.clock.as_ref());
        let bans = self
            .bans
            .dynamics()
            .map(|(net, b)| {
                let stored = StoredBan {
                    expires_unix_ms: b.expires_ns.map(|e| now.to_unix_ms(e)),
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
            config_deny: self.settings.deny.iter().copied().collect(),
            config_allow: self.settings.allow.iter().copied().collect(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(self.settings.mode)
    }

    pub fn limits(&self) -> Limits {
        self.limits.clone().unwrap_or_else(|| Limits {
            default: self.settings.default_limit,
            overrides: self.settings.limits.clone(),
        })
    }

    fn write_config(&mut self) -> Result<()> {
        let limits = self.limits();
        let mut cfg = self.settings.datapath_config(self.mode(), limits.default, &limits.overrides);
        if self.traces.active() {
            cfg.flags |= FLAG_TRACE;
        }
        if self.settings.allow.is_empty() && self.allow.is_empty() {
            cfg.flags |= FLAG_NO_ALLOW;
        }
        Ok(self.datapath.maps.set_config(&cfg)?)
    }

    /// Starts tracing `net` for `length`; returns the trace's id, where its lines start and
    /// the held-back count so far.
    pub fn trace_start(&mut self, net: IpNet, length: Duration) -> Result<(u64, u64, u64)> {
        let now = Instant::now();
        let id = self
            .traces
            .start(net, now + length, now)
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        if let Err(e) = self.apply_traces() {
            self.traces.stop(id);
            let _ = self.apply_traces();
            return Err(e);
        }
        Ok((id, self.datapath.trace.cursor(), self.datapath.maps.trace.suppressed()?))
    }

    /// Ends trace `id`; false if it was not running.
    pub fn trace_stop(&mut self, id: u64) -> Result<bool> {
        let stopped = self.traces.stop(id);
        if stopped {
            self.apply_traces()?;
        }
        Ok(stopped)
    }

    /// Ends every trace (at shutdown): a program left attached must not keep tracing.
    pub fn end_traces(&mut self) -> Result<()> {
        self.traces = Traces::default();
        self.apply_traces()
    }

    /// Where trace `id` reads from: its prefix (`None` once it has ended), the log, and the
    /// held-back count; the lines themselves are read off the policy lock.
    pub fn trace_source(&self, id: u64) -> Result<(Option<IpNet>, Arc<TraceLog>, u64)> {
        let suppressed = self.datapath.maps.trace.suppressed()?;
        Ok((self.traces.net(id).ok(), self.datapath.trace.clone(), suppressed))
    }

    /// The kernel's trace tries, then its flag, in line with the sessions; a failure is
    /// retried at the next sweep.
    fn apply_traces(&mut self) -> Result<()> {
        self.traces_dirty = true;
        self.datapath.maps.trace.set(&self.traces.nets())?;
        self.write_config()?;
        self.traces_dirty = false;
        Ok(())
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
        let limits = self.limits();
        tracing::info!("{}", self.settings.describe_fragments(limits.default, &limits.overrides));
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
    /// walk of the deny maps: at start, and after a failed write).
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
        self.deny_repair = None;
        Ok(())
    }

    /// Writes a change to the deny maps. If that fails, `undo` puts memory back as it was
    /// and its writes put back what was already written; should even that fail, the maps
    /// are rewritten from memory later.
    fn write_deny(
        &mut self,
        writes: &[crate::bans::Write],
        undo: impl FnOnce(&mut Bans) -> Vec<crate::bans::Write>,
    ) -> Result<()> {
        let Err(e) = self.datapath.maps.write_deny(writes) else { return Ok(()) };
        let back = undo(&mut self.bans);
        if self.datapath.maps.write_deny(&back).is_err() {
            self.schedule_repair(REPAIR_FIRST);
        }
        Err(e.into())
    }

    /// Schedules a rewrite of the deny maps from memory. A repair already pending keeps its
    /// (earlier) time, so failures that keep coming cannot put it off.
    fn schedule_repair(&mut self, backoff: Duration) {
        if self.deny_repair.is_none() {
            self.deny_repair = Some(Repair { at: Instant::now() + backoff, backoff });
        }
    }

    /// Bans `cidr`. Unless `may_shorten`, a ban already in force on it that lasts at least
    /// as long (a config deny included) stays as it is.
    pub fn ban_add(
        &mut self,
        cidr: IpNet,
        ttl: Option<Duration>,
        reason: String,
        may_shorten: bool,
    ) -> Result<BanView> {
        let now = self.now();
        let expires_ns = ttl.map(|t| after(now, t));
        let wanted = crate::bans::Ban { expires_ns, reason: reason.as_str().into() };
        if !may_shorten
            && let Some(held) = self.bans.own(&cidr).filter(|e| e.active(now))
            && held.outlasting(wanted.entry()) == held
        {
            return Ok(self.bans.list_one(&cidr, now).expect("a ban in force is listed"));
        }
        if self.bans.is_config(&cidr) {
            return Err(PolicyError::Invalid(format!(
                "{cidr} is already denied permanently by the config"
            )));
        }
        let map = crate::maps::holder(&cidr);
        if !self.bans.contains(&cidr) && self.bans.count_in_map(&cidr) >= map.capacity as usize {
            return Err(MapsError::Full { name: map.name, capacity: map.capacity }.into());
        }
        let previous = self.bans.dynamic(&cidr).cloned();
        let writes = self.bans.ban(cidr, wanted);
        self.write_deny(&writes, |b| b.set_dynamic(cidr, previous))?;
        Ok(BanView { cidr, expires_in_secs: ttl.map(|t| t.as_secs_f64()), reason })
    }

    /// Writes the entry the bans need for exactly `cidr` into the deny maps (or removes it),
    /// over whatever another writer left there.
    pub fn resync_deny(&mut self, cidr: IpNet) -> Result<()> {
        match self.bans.effective(&cidr) {
            Some(entry) => self.datapath.maps.set_deny(cidr, entry)?,
            None => {
                self.datapath.maps.remove_deny(cidr)?;
            }
        }
        Ok(())
    }

    pub fn ban_del(&mut self, cidr: IpNet) -> Result<bool> {
        if self.bans.is_config(&cidr) {
            return Err(PolicyError::Invalid(format!(
                "{cidr} is denied by the config; remove it from datapath.deny and run `secgate reload`"
            )));
        }
        let Some((ban, writes)) = self.bans.lift(cidr) else { return Ok(false) };
        self.write_deny(&writes, |b| b.set_dynamic(cidr, Some(ban)))?;
        Ok(true)
    }

    /// Bans in force, each with its own time left.
    pub fn bans(&self) -> Vec<BanView> {
        self.bans.list(self.now())
    }

    /// Whether a dynamic ban on exactly `cidr` is held (in force or not yet swept).
    pub fn holds_dynamic(&self, cidr: &IpNet) -> bool {
        self.bans.dynamic(cidr).is_some() && !self.bans.is_config(cidr)
    }

    /// Dynamic bans in force (config denies aside), each with its own time left.
    pub fn dynamic_bans(&self) -> Vec<BanView> {
        self.bans.list_dynamic(self.now())
    }

    /// Lifts the dynamic bans that are due (on the kernel's clock); returns how many. Costs
    /// nothing while none is due, and rewrites the deny maps when a repair is due.
    pub fn sweep(&mut self) -> Result<usize> {
        if let Some(repair) = self.deny_repair
            && Instant::now() >= repair.at
        {
            self.deny_repair = None;
            self.reconcile_deny()
                .inspect_err(|_| self.schedule_repair((repair.backoff * 2).min(REPAIR_MAX)))?;
        }
        if (self.traces.expire(Instant::now()) || self.traces_dirty)
            && let Err(e) = self.apply_traces()
        {
            tracing::warn!(error = %e, "updating the kernel's trace sources failed; retried in a second");
        }
        let (lifted, writes) = self.bans.expire(self.now());
        // Lapsed bans no longer drop in the kernel either way, so a failed removal is only
        // repaired later, never undone.
        if self.datapath.maps.write_deny(&writes).is_err() {
            self.schedule_repair(REPAIR_FIRST);
        }
        Ok(lifted.len())
    }

    /// The program looks the allowlist up again (the flag cleared) before the entry is
    /// written, so it is honoured from its first packet.
    pub fn allow_add(&mut self, cidr: IpNet) -> Result<()> {
        let added = self.allow.insert(cidr);
        let written = self.write_config().and_then(|()| Ok(self.datapath.maps.set_allow(cidr)?));
        if written.is_err() && added {
            self.allow.remove(&cidr);
            let _ = self.write_config();
        }
        written
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
        self.write_config()?;
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

    fn change_limits(&mut self, limits: Limits) -> Result<()> {
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
        let added: BTreeSet<String> = new
            .interfaces
            .iter()
            .filter(|i| !self.settings.interfaces.contains(i))
            .cloned()
            .collect();
        self.settings = new;
        self.mode = None;
        self.limits = None;
        let writes = self.bans.set_config(&self.settings.deny.iter().copied().collect());
        let applied = self
            .datapath
            .maps
            .write_deny(&writes)
            .map_err(PolicyError::from)
            .and_then(|()| self.reconcile_limits())
            .and_then(|()| self.reconcile_allow())
            .and_then(|()| self.attach_added(&added));
        if applied.is_err() {
            (self.settings, self.bans, self.mode, self.limits) = saved;
            if self.reconcile().is_err() {
                self.schedule_repair(REPAIR_FIRST);
            }
            let _ = self.sync_interfaces();
        }
        applied
    }

    /// Syncs the interfaces after a reload. An interface the reload adds that refuses the
    /// program fails the reload; one that failed before stays as it was reported, so that it
    /// cannot block every reload (an urgent deny edit among them).
    fn attach_added(&mut self, added: &BTreeSet<String>) -> Result<()> {
        let failures = self.sync_interfaces();
        match failures.into_iter().find(|(name, _)| added.contains(name)) {
            Some((_, e)) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Once this build's program is on every interface, removes the host bans earlier builds
    /// kept in the deny tries or their host maps (see `DenyMaps::retire_legacy_hosts`):
    /// until then an earlier program may still read them, so both copies were written.
    fn retire_legacy_hosts(&mut self) {
        if !self.datapath.maps.legacy_hosts_pending() {
            return;
        }
        match self.datapath.maps.retire_legacy_hosts() {
            Ok(0) => {}
            Ok(n) => tracing::info!(moved = n, "host bans moved into the host tables"),
            Err(e) => tracing::warn!(error = %e, "host bans stay in the old maps as well"),
        }
    }

    /// Brings the XDP links in line with the configured interfaces and the interfaces that
    /// exist now (called at start, on reload, on link events and every second). Returns the
    /// interfaces that failed, with why.
    pub fn sync_interfaces(&mut self) -> Vec<(String, DatapathError)> {
        let want = self.settings.interfaces.clone();
        let failures =
            self.datapath.sync_links(&want, self.settings.attach, self.settings.threaded_napi);
        if failures.is_empty() {
            self.retire_legacy_hosts();
        }
        failures
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

    pub fn buckets_evicted(&self) -> Result<u64> {
        Ok(self.datapath.maps.stats()?[STATS_EVICTED_BUCKETS as usize].packets)
    }

    /// A fixed number of syscalls whatever the number of sources or bans: sources are
    /// counted from the bucket-insert counter, never by walking the limiter table.
    pub fn status(&self) -> Result<StatusView> {
        let stats = self.datapath.maps.stats()?;
        let created = stats[STATS_NEW_BUCKETS as usize].packets;
        Ok(StatusView {
            mode: self.mode(),
            attachments: self.datapath.links().attachments(),
            pin_path: self.datapath.pin_path().display().to_string(),
            bans: self.bans.len(),
            allow: self.allow().len(),
            overrides: self.limits().overrides.len(),
            sources: created.min(u64::from(self.datapath.maps.sources_capacity())),
            buckets_created: created,
            buckets_evicted: stats[STATS_EVICTED_BUCKETS as usize].packets,
            uptime_secs: self.started.elapsed().as_secs(),
            enforcement: Default::default(),
            fleet: None,
        })
    }

    /// The loaded datapath, for tests that run frames through the program.
    #[cfg(any(test, feature = "test-util"))]
    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }
}
