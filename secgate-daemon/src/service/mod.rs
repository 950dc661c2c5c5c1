//! The one way to change policy. Every caller (an operator on the control socket, the config
//! file on reload, the escalation of abusive sources) goes through a [`Service`] method, which
//! validates the change, applies it to the maps, waits until it is on disk, audits it with
//! the caller, and counts it. Nothing else holds the [`Policy`], so the maps cannot be
//! reached around it.
//!
//! Persisting is a group commit ([`journal`]): a change is applied under the policy lock and
//! the caller then waits for the journal thread to write a state file that includes it.
//! Changes that arrive while one write is under way share the next one, so a thousand bans
//! issued at once cost a handful of fsyncs instead of a thousand rewrites of the file.

mod enforcement;
mod journal;
mod share;
pub mod validate;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::{
    audit::Audit,
    clock::Clock,
    config::{Config, Mode, Rate, Selector, describe},
    datapath::DatapathError,
    events::EventCounts,
    maps::{FirstDeny, SourceCheck, SourceVerdict},
    policy::{Policy, PolicyError, Started},
    state::{Loaded, StateFile},
    views::{BanView, LimitsView, StatsView, StatusView, TraceView},
};

pub use enforcement::Enforcement;
pub use journal::JournalStats;
pub use share::{FleetChange, Share, SharedBan};

/// Who asks for a change; recorded in every audit line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "caller", rename_all = "snake_case")]
pub enum Caller {
    /// A user of the control socket (always root: the socket refuses anyone else).
    Operator { uid: u32 },
    /// The config file, on reload.
    Config,
    /// The escalation of an abusive source, by the rule it tripped.
    Escalation { rule: String },
    /// Another gateway of the fleet, by its `fleet.node` name.
    Fleet { node: String },
    /// A user the control socket refused (not root); appears only in refusals.
    Unauthorized { uid: u32 },
}

impl Caller {
    fn kind(&self) -> &'static str {
        match self {
            Caller::Operator { .. } => "operator",
            Caller::Config => "config",
            Caller::Escalation { .. } => "escalation",
            Caller::Fleet { .. } => "fleet",
            Caller::Unauthorized { .. } => "unauthorized",
        }
    }

    /// Whether a ban from this caller may shorten an existing one. Only an operator's may:
    /// an automatic ban must never cut short what someone banned for longer.
    fn may_shorten(&self) -> bool {
        matches!(self, Caller::Operator { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Refused; nothing changed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Refused: a value is out of range or malformed; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// Refused: there was nothing to remove.
    #[error("{0}")]
    NotFound(String),
    /// The change is in force but saving the state failed: it will not survive a restart
    /// until a later save succeeds.
    #[error("the change is in force but could not be saved: {0}")]
    NotSaved(String),
    #[error("reload rejected, the running policy stays: {0}")]
    Reload(String),
}

type Result<T> = std::result::Result<T, ServiceError>;

/// How far state writes have got: every change up to `written` is on disk; the write of
/// changes up to `failed_through` failed with `error`.
#[derive(Clone, Debug, Default)]
struct Durable {
    written: u64,
    failed_through: u64,
    error: Option<Arc<str>>,
}

/// What the policy lock guards, shared with the journal thread.
struct Inner {
    policy: Policy,
    /// Number of changes applied so far; the journal writes up to it.
    version: u64,
    /// Audit records waiting for their change to be written.
    queue: Vec<journal::Record>,
    stop: bool,
}

struct Core {
    inner: Mutex<Inner>,
    /// Wakes the journal thread.
    wake: Condvar,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct Service {
    core: Arc<Core>,
    durable: watch::Receiver<Durable>,
    journal: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<JournalStats>,
    /// Shared with the journal: refusals are audited at once, changes once written.
    audit: Arc<Audit>,
    config_path: PathBuf,
    /// Held from reading the config file to applying it, so reloads apply in the order they
    /// read (not the policy lock: reading must not stall other changes).
    reloading: Mutex<()>,
    events: Mutex<EventCounts>,
    /// Control requests served, by (action, ok).
    actions: Mutex<BTreeMap<(String, bool), u64>>,
    /// Lookups in the allow tries and deny maps that need no policy lock.
    sources: SourceCheck,
    clock: Arc<dyn Clock>,
    /// Parts outside the policy that take settings from the config on reload.
    reloadables: Mutex<Vec<Arc<dyn Reloadable>>>,
    enforcement: Enforcement,
    /// The escalation's first writes of its bans (and their undoing, should the policy
    /// refuse one).
    first_deny: Mutex<FirstDeny>,
    /// Where this node's ban changes go to be shared (`[fleet]`), once it is up.
    share: std::sync::OnceLock<Arc<dyn Share>>,
}

/// A ban the escalation orders, with what it is for.
pub struct EscalatedBan<'a> {
    /// The threshold it tripped (`auth_failures`, …, or `widen`).
    pub rule: &'a str,
    pub cidr: IpNet,
    pub ttl: Duration,
    /// The source's bans so far, this one included (the repeat-offender count the fleet
    /// shares).
    pub strikes: u32,
    pub reason: String,
    /// The offences that caused it, for the audit.
    pub offences: serde_json::Value,
    /// When the offence that tripped it was seen: the enforcement latency runs from here.
    pub since: Instant,
}

impl EscalatedBan<'_> {
    fn request(&self) -> serde_json::Value {
        json!({
            "cidr": self.cidr,
            "ttl_secs": self.ttl.as_secs_f64(),
            "reason": self.reason,
            "offences": self.offences,
        })
    }
}

/// A part of the daemon outside the policy (the gateway) that takes its settings from the
/// config file, so that a reload changes it together with the policy or not at all.
pub trait Reloadable: Send + Sync {
    /// Checks `config` and readies everything it needs; the returned commit makes it
    /// current and cannot fail. An error refuses the whole reload.
    fn prepare(&self, config: &Config) -> std::result::Result<Box<dyn FnOnce() + Send>, String>;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Service {
    /// Restores the saved state into a policy over `datapath`, attaches to the configured
    /// interfaces and starts the journal thread. Returns warnings for the log.
    pub fn start(
        datapath: crate::datapath::Datapath,
        config: &Config,
        config_path: &Path,
        state: StateFile,
        loaded: Loaded,
        audit: Arc<Audit>,
        clock: Arc<dyn Clock>,
    ) -> std::result::Result<(Service, Vec<String>), PolicyError> {
        let sources = datapath.source_check()?;
        let first_deny = Mutex::new(datapath.first_deny()?);
        let frozen = match &loaded {
            Loaded::Unreadable(e) => Some(e.to_string()),
            _ => None,
        };
        let Started { mut policy, warnings, dirty } =
            Policy::start(datapath, config.datapath.clone(), loaded, clock.clone())?;
        // A missing interface only waits; one that exists and refuses the program is a
        // configuration error, as it is on reload. A lookup that failed is retried.
        let not_ready = policy.sync_interfaces();
        for (name, e) in not_ready {
            match e {
                DatapathError::Attach { .. } => return Err(e.into()),
                e => tracing::warn!(interface = %name, error = %e, "interface not ready; retrying"),
            }
        }
        // What start discarded or kept is written at once, not at the next change.
        let version = u64::from(dirty);
        let core = Arc::new(Core {
            inner: Mutex::new(Inner { policy, version, queue: Vec::new(), stop: false }),
            wake: Condvar::new(),
        });
        let (tx, durable) = watch::channel(Durable::default());
        let stats = Arc::new(JournalStats::default());
        let sinks = journal::Sinks { state, frozen, audit: audit.clone() };
        let journal = journal::spawn(core.clone(), sinks, tx, stats.clone());
        let service = Service {
            core,
            durable,
            journal: Mutex::new(Some(journal)),
            stats,
            audit,
            config_path: config_path.to_owned(),
            reloading: Mutex::default(),
            events: Mutex::default(),
            actions: Mutex::default(),
            sources,
            clock,
            reloadables: Mutex::default(),
            enforcement: Enforcement::default(),
            first_deny,
            share: std::sync::OnceLock::new(),
        };
        Ok((service, warnings))
    }

    /// Applies `change` under the policy lock and queues its audit record. On success the
    /// change gets a version the caller can wait on with [`Service::durable`].
    fn apply<T>(
        &self,
        caller: &Caller,
        action: &'static str,
        request: serde_json::Value,
        change: impl FnOnce(&mut Policy) -> Result<T>,
    ) -> Result<(T, u64)> {
        let mut inner = self.core.lock();
        let result = match caller {
            Caller::Escalation { rule } => valid(validate::rule(rule)),
            _ => Ok(()),
        }
        .and_then(|()| change(&mut inner.policy));
        let Ok(value) = result else {
            drop(inner);
            // A refusal has nothing to write: it is audited before the caller hears of it.
            let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
            let record = journal::Record::new(caller.clone(), action, request, None, outcome);
            journal::record(&self.audit, &self.stats, record, None);
            return result.map(|v| (v, 0));
        };
        inner.version += 1;
        let version = inner.version;
        let record = journal::Record::new(caller.clone(), action, request, Some(version), Ok(()));
        inner.queue.push(record);
        drop(inner);
        self.core.wake.notify_one();
        Ok((value, version))
    }

    /// Waits until change `version` is on disk.
    async fn durable(&self, version: u64) -> Result<()> {
        let mut rx = self.durable.clone();
        let state = rx
            .wait_for(|d| d.written >= version || d.failed_through >= version)
            .await
            .map_err(|_| ServiceError::NotSaved("the state journal has stopped".into()))?;
        if state.written >= version {
            Ok(())
        } else {
            Err(ServiceError::NotSaved(state.error.as_deref().unwrap_or("unknown").to_owned()))
        }
    }

    async fn commit<T>(
        &self,
        caller: &Caller,
        action: &'static str,
        request: serde_json::Value,
        change: impl FnOnce(&mut Policy) -> Result<T>,
    ) -> Result<T> {
        let (value, version) = self.apply(caller, action, request, change)?;
        self.durable(version).await?;
        Ok(value)
    }

    /// Bans `cidr` in the kernel, for `ttl` or for good.
    pub async fn ban_add(
        &self,
        caller: &Caller,
        cidr: IpNet,
        ttl: Option<Duration>,
        reason: Option<String>,
    ) -> Result<BanView> {
        let reason = reason.unwrap_or_else(|| "manual".into());
        let request =
            json!({ "cidr": cidr, "ttl_secs": ttl.map(|t| t.as_secs_f64()), "reason": reason });
        let may_shorten = caller.may_shorten();
        let (view, version) = self.apply(caller, "ban_add", request, |p| {
            valid(validate::cidr(&cidr).and(validate::ttl(ttl)).and(validate::reason(&reason)))?;
            Ok(p.ban_add(cidr, ttl, reason, may_shorten)?)
        })?;
        self.share_ban(caller, &view, (version, None));
        self.durable(version).await?;
        Ok(view)
    }

    /// The first half of an escalation ban: the kernel entry, written on a handle of its
    /// own without the policy lock; whether it was written (the latency from the offence to
    /// here is recorded then). [`Service::ban_escalated`] records it next.
    ///
    /// Under attack the policy lock may be held by a thread the scheduler has put aside
    /// (the journal copying the table), and an attacker's packets must not pass meanwhile.
    /// The entry is written only where none denies the address yet, so it never cuts short
    /// a ban the policy keeps (a longer one, or a nested one outlasting its parent).
    pub fn deny_first(&self, ban: &EscalatedBan<'_>) -> bool {
        let valid = validate::cidr(&ban.cidr)
            .and(validate::ttl(Some(ban.ttl)))
            .and(validate::reason(&ban.reason));
        let now = self.clock.monotonic_ns();
        if valid.is_err()
            || self.sources.verdict(ban.cidr.network(), now).ok() != Some(SourceVerdict::Neither)
        {
            return false;
        }
        let expires = crate::clock::after(now, ban.ttl);
        match lock(&self.first_deny).insert(ban.cidr, expires) {
            Ok(()) => {
                self.enforcement.observe(ban.since.elapsed());
                true
            }
            Err(e) => {
                tracing::debug!(cidr = %ban.cidr, error = %e, "first write of an escalation ban failed; the policy makes it");
                false
            }
        }
    }

    /// Takes back a first write the policy will not record (the recorder is behind).
    pub fn undo_first(&self, cidr: IpNet) {
        if let Err(e) = lock(&self.first_deny).remove(cidr) {
            tracing::warn!(%cidr, error = %e, "could not take back an escalation ban's first write; it lapses with its expiry");
        }
    }

    /// Bans for the escalation, after [`Service::deny_first`] (`first`: it wrote the entry):
    /// in the policy and the kernel's deny map when this returns, on disk once
    /// [`Service::saved`] says so. Never shortens a longer ban. After a first write, the
    /// policy's own entry is written over it: another writer may have banned the address
    /// for longer between the first write's check and its insert. If the policy refuses
    /// the ban, a first write is taken back.
    pub fn ban_escalated(&self, ban: &EscalatedBan<'_>, first: bool) -> Result<(BanView, u64)> {
        let caller = Caller::Escalation { rule: ban.rule.to_owned() };
        let reason = ban.reason.clone();
        let (cidr, ttl) = (ban.cidr, Some(ban.ttl));
        let done = self.apply(&caller, "ban_add", ban.request(), |p| {
            valid(validate::cidr(&cidr).and(validate::ttl(ttl)).and(validate::reason(&reason)))?;
            let view = p.ban_add(cidr, ttl, reason, false)?;
            if first && let Err(e) = p.resync_deny(cidr) {
                // The ban stands; the next repair of the deny map writes the entry again.
                tracing::warn!(%cidr, error = %e, "could not rewrite an escalation ban's entry");
            }
            Ok(view)
        });
        match (&done, first) {
            (Err(_), true) => {
                let _ = lock(&self.first_deny).remove(cidr);
            }
            (Ok(_), false) => self.enforcement.observe(ban.since.elapsed()),
            _ => {}
        }
        if let Ok((view, version)) = &done {
            self.share_ban(&caller, view, (*version, Some(ban.strikes)));
        }
        done
    }

    /// Waits until change `version` (from [`Service::ban_escalated`]) is on disk.
    pub async fn saved(&self, version: u64) -> Result<()> {
        self.durable(version).await
    }

    /// Records a ban that `monitor` mode does not make: audited, counted and listed in
    /// `status`, and nothing else.
    pub fn would_ban(&self, ban: &EscalatedBan<'_>) {
        let caller = Caller::Escalation { rule: ban.rule.to_owned() };
        self.audit.record(&caller, "would_ban", &ban.request(), Ok(()));
        self.enforcement.would_ban(ban.cidr, ban.rule, ban.ttl, &ban.reason);
    }

    /// Whether `ip` is allow-listed (the escalation never bans it).
    pub fn allowed(&self, ip: IpAddr) -> bool {
        match self.sources.verdict(ip, self.clock.monotonic_ns()) {
            Ok(v) => v == SourceVerdict::Allowed,
            // Unknown: not banning is the safe side.
            Err(_) => true,
        }
    }

    /// The enforcement-latency histogram, for the metrics registry.
    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    pub async fn ban_del(&self, caller: &Caller, cidr: IpNet) -> Result<()> {
        let ((), version) = self.apply(caller, "ban_del", json!({ "cidr": cidr }), |p| {
            valid(validate::cidr(&cidr))?;
            found(p.ban_del(cidr)?, || format!("no ban for {cidr}"))
        })?;
        self.share_lift(caller, cidr, version);
        self.durable(version).await
    }

    pub async fn allow_add(&self, caller: &Caller, cidr: IpNet) -> Result<()> {
        self.commit(caller, "allow_add", json!({ "cidr": cidr }), |p| {
            valid(validate::cidr(&cidr))?;
            Ok(p.allow_add(cidr)?)
        })
        .await
    }

    pub async fn allow_del(&self, caller: &Caller, cidr: IpNet) -> Result<()> {
        self.commit(caller, "allow_del", json!({ "cidr": cidr }), |p| {
            valid(validate::cidr(&cidr))?;
            found(p.allow_del(cidr)?, || format!("no allow entry for {cidr}"))
        })
        .await
    }

    /// Sets the default limit (`selector == None`) or an override; returns the limits now.
    pub async fn limit_set(
        &self,
        caller: &Caller,
        selector: Option<Selector>,
        rate: Rate,
    ) -> Result<LimitsView> {
        let request = json!({ "selector": selector, "rate": rate });
        self.commit(caller, "limit_set", request, |p| {
            valid(validate::rate(&rate))?;
            p.set_limit(selector, rate)?;
            Ok(p.limits())
        })
        .await
    }

    pub async fn limit_del(
        &self,
        caller: &Caller,
        selector: Option<Selector>,
    ) -> Result<LimitsView> {
        self.commit(caller, "limit_del", json!({ "selector": selector }), |p| {
            let what = || {
                selector.map_or("no default limit is set".into(), |s| {
                    format!("no limit for {}", describe(&s))
                })
            };
            found(p.del_limit(selector)?, what)?;
            Ok(p.limits())
        })
        .await
    }

    pub async fn set_mode(&self, caller: &Caller, mode: Mode) -> Result<()> {
        self.commit(caller, "mode", json!({ "mode": mode }), |p| Ok(p.set_mode(mode)?)).await
    }

    /// Re-reads the config file and applies it; on any problem the running policy stays and
    /// the error lists every problem. Runs on a blocking thread: a large config means many
    /// map writes.
    pub async fn reload(self: &Arc<Self>, caller: Caller) -> Result<()> {
        let this = self.clone();
        let version = tokio::task::spawn_blocking(move || {
            // Read outside the policy lock: a slow filesystem must not stall other changes.
            let _one_at_a_time = lock(&this.reloading);
            let config = Config::load(&this.config_path);
            let reloadables = lock(&this.reloadables).clone();
            this.apply(&caller, "reload", json!({ "config": this.config_path }), |p| {
                let config = config.map_err(|e| ServiceError::Reload(e.to_string()))?;
                let commits = reloadables
                    .iter()
                    .map(|r| r.prepare(&config))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(ServiceError::Reload)?;
                p.reload(config.datapath).map_err(|e| ServiceError::Reload(e.to_string()))?;
                commits.into_iter().for_each(|commit| commit());
                Ok(())
            })
        })
        .await
        .map_err(|e| ServiceError::Reload(format!("internal error: {e}")))??
        .1;
        self.durable(version).await
    }

    /// Registers a part that takes its settings from the config on every reload.
    pub fn on_reload(&self, part: Arc<dyn Reloadable>) {
        lock(&self.reloadables).push(part);
    }

    /// Whether connections from `ip` are to be refused before any byte is answered: it is
    /// under an active ban and not allow-listed, exactly as the XDP program would judge it,
    /// whatever the datapath's mode. Reads the maps without the policy lock. A failed lookup
    /// refuses nothing: the connection still has to pass TLS and authentication.
    pub fn refuses(&self, ip: IpAddr) -> bool {
        match self.sources.verdict(ip, self.clock.monotonic_ns()) {
            Ok(v) => v == SourceVerdict::Denied,
            Err(e) => {
                tracing::warn!(source = %ip, error = %e, "ban lookup failed; the connection goes on");
                false
            }
        }
    }

    /// Lifts the bans that are due. Persisted like any change (without waiting) but not
    /// audited: the expiry was recorded with the ban.
    pub fn sweep(&self) -> std::result::Result<usize, PolicyError> {
        let mut inner = self.core.lock();
        let lifted = inner.policy.sweep()?;
        if lifted > 0 {
            inner.version += 1;
            drop(inner);
            self.core.wake.notify_one();
        }
        Ok(lifted)
    }

    /// Re-checks the XDP links against the interfaces that exist now.
    pub fn sync_interfaces(&self) -> Vec<(String, DatapathError)> {
        self.core.lock().policy.sync_interfaces()
    }

    /// Writes what is pending and stops the journal thread (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.core.lock().policy.end_traces() {
            tracing::warn!(error = %e, "could not end the running traces; the program keeps tracing until the next start");
        }
        self.core.lock().stop = true;
        self.core.wake.notify_one();
        if let Some(handle) = lock(&self.journal).take() {
            let _ = handle.join();
        }
    }

    pub fn bans(&self) -> Vec<BanView> {
        self.core.lock().policy.bans()
    }

    pub fn allow(&self) -> Vec<IpNet> {
        self.core.lock().policy.allow()
    }

    pub fn limits(&self) -> LimitsView {
        self.core.lock().policy.limits()
    }

    pub fn stats(&self) -> std::result::Result<StatsView, PolicyError> {
        self.core.lock().policy.stats()
    }

    /// Starts `secgate trace` of `net` for `length`: (id, cursor, held back so far). A
    /// diagnostic, not a policy change: logged, not audited or saved, and gone with the
    /// daemon.
    pub fn trace_start(
        &self,
        caller: &Caller,
        net: IpNet,
        length: Duration,
    ) -> std::result::Result<(u64, u64, u64), PolicyError> {
        let started = self.core.lock().policy.trace_start(net, length)?;
        tracing::info!(caller = ?caller, %net, secs = length.as_secs_f64(), id = started.0, "trace started");
        Ok(started)
    }

    /// Trace `id`'s lines after `cursor`, at most `crate::trace::MAX_READ` of them (the
    /// rest counted as skipped); a trace that has ended reads as not running.
    pub fn trace_read(&self, id: u64, cursor: u64) -> std::result::Result<TraceView, PolicyError> {
        let (net, log, suppressed) = self.core.lock().policy.trace_source(id)?;
        let Some(net) = net else {
            return Ok(TraceView {
                lines: Vec::new(),
                cursor,
                skipped: 0,
                suppressed,
                running: false,
            });
        };
        let read = log.since(cursor, net);
        Ok(TraceView {
            lines: read.lines,
            cursor: read.cursor,
            skipped: read.skipped,
            suppressed,
            running: true,
        })
    }

    pub fn trace_stop(&self, id: u64) -> std::result::Result<bool, PolicyError> {
        self.core.lock().policy.trace_stop(id)
    }

    /// Live buckets the limiter evicted, from the counters alone (no netlink, unlike
    /// [`Service::status`]).
    pub fn buckets_evicted(&self) -> std::result::Result<u64, PolicyError> {
        self.core.lock().policy.buckets_evicted()
    }

    /// Asks rtnetlink how each attached interface runs XDP, and sysfs how it polls, after
    /// the policy lock is let go: a round trip per interface has no business holding up
    /// changes.
    pub fn status(&self) -> std::result::Result<StatusView, PolicyError> {
        let mut status = self.core.lock().policy.status()?;
        status.enforcement = self.enforcement.view();
        status.fleet = self.fleet_view();
        for a in &mut status.attachments {
            if let Some(ifindex) = a.ifindex {
                a.xdp = crate::datapath::kernel_mode(ifindex).unwrap_or("unknown").into();
                a.napi = napi_view(&a.interface, &a.napi);
            }
        }
        Ok(status)
    }

    /// State-file writes and the changes they carried, for metrics and benchmarks.
    pub fn journal_stats(&self) -> &JournalStats {
        &self.stats
    }

    /// Records a refused connection to the control socket.
    pub fn refused(&self, uid: u32, reason: &str) {
        let caller = Caller::Unauthorized { uid };
        let outcome = Err(reason.to_owned());
        let record =
            journal::Record::new(caller, "connect", serde_json::Value::Null, None, outcome);
        journal::record(&self.audit, &self.stats, record, None);
    }

    pub fn record_event(&self, source: IpAddr) {
        lock(&self.events).record(source);
    }

    pub fn events(&self) -> MutexGuard<'_, EventCounts> {
        lock(&self.events)
    }

    pub fn count_action(&self, action: &str, ok: bool) {
        *lock(&self.actions).entry((action.to_string(), ok)).or_default() += 1;
    }

    pub fn actions(&self) -> BTreeMap<(String, bool), u64> {
        lock(&self.actions).clone()
    }

    /// Changes by (action, caller kind, ok), as audited.
    pub fn changes(&self) -> BTreeMap<(&'static str, &'static str, bool), u64> {
        self.stats.changes()
    }

    /// The loaded datapath, for tests that run frames through the program.
    #[cfg(any(test, feature = "test-util"))]
    pub fn with_datapath<R>(&self, f: impl FnOnce(&crate::datapath::Datapath) -> R) -> R {
        f(self.core.lock().policy.datapath())
    }
}

fn valid(check: std::result::Result<(), String>) -> Result<()> {
    check.map_err(ServiceError::Invalid)
}

fn found(found: bool, what: impl FnOnce() -> String) -> Result<()> {
    if found { Ok(()) } else { Err(ServiceError::NotFound(what())) }
}

/// How `iface` polls as the kernel says, with why threading it failed (`tried`, from the
/// links) if it did.
fn napi_view(iface: &str, tried: &str) -> String {
    match (crate::datapath::napi_threaded(iface), tried.strip_prefix("failed: ")) {
        (Ok(true), _) => "threaded".into(),
        (Ok(false), Some(why)) => format!("softirq (threading failed: {why})"),
        (Ok(false), None) => "softirq".into(),
        (Err(e), _) => format!("unknown ({e})"),
    }
}
