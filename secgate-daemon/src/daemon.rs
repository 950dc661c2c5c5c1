//! `secgate run`: take the instance lock, bring the datapath up, apply config + saved state,
//! serve control requests and metrics, keep the program on the interfaces, sweep expired
//! bans, drain events, reload on SIGHUP, until SIGINT/SIGTERM. The XDP links stay pinned on
//! exit, so stopping or restarting the daemon never leaves the host unprotected.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    audit::Audit,
    clock::SystemClock,
    config::Config,
    control::server,
    datapath::{self, Datapath},
    escalate::{Escalation, EscalationReload},
    events,
    fleet::{Fleet, limits::FleetLimits},
    gateway::{Gateway, GatewayReload, NoGateway, audit::RequestLog, metrics::GatewayMetrics},
    link_watch,
    lock::InstanceLock,
    metrics,
    service::{Caller, Service},
    state::StateFile,
};

const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often the limiter table's eviction count is looked at (a warning at most this often).
const EVICTIONS_EVERY: Duration = Duration::from_secs(60);

pub async fn run(
    config_path: &Path,
    config: Config,
    socket: Option<PathBuf>,
) -> anyhow::Result<()> {
    raise_fd_limit();
    let settings = &config.datapath;
    datapath::prepare(&settings.pin_path).context("preparing the pin directory")?;
    let lock = InstanceLock::acquire(&settings.pin_path, &config.state_dir)?;
    let state = StateFile::new(&config.state_dir);
    let loaded = state.load();
    let mut datapath = Datapath::open(settings, lock).context("starting the datapath")?;
    let ring = datapath.take_events();
    // The audit log and the control socket are trusted records and a trusted door: their
    // directories get the same checks as the state's.
    for file in [&config.audit_log, &socket_path(&config, socket.as_deref())] {
        if let Some(dir) = file.parent() {
            crate::lock::private_dir(dir)?;
        }
    }
    let audit = Arc::new(
        Audit::open(&config.audit_log)
            .with_context(|| format!("opening the audit log {}", config.audit_log.display()))?,
    );
    let (service, warnings) = Service::start(
        datapath,
        &config,
        config_path,
        state,
        loaded,
        audit.clone(),
        Arc::new(SystemClock),
    )
    .context("applying the config")?;
    for w in warnings {
        error!("{w}");
    }
    let service = Arc::new(service);
    let mut registry = metrics::registry(service.clone());
    let (escalation, warning) = Escalation::start(&config, service.clone());
    if let Some(w) = warning {
        error!("{w}");
    }
    escalation.register(&mut registry);
    service.on_reload(Arc::new(EscalationReload(escalation.clone())));
    // Before any door opens: a node that answers enforces every ban the fleet holds.
    let fleet = match &config.fleet {
        Some(settings) => {
            let parts = (&service, &escalation);
            Some(Fleet::start(settings, parts, &config.state_dir, &mut registry).await)
        }
        None => None,
    };
    let fleet_limits = fleet.as_ref().and_then(Fleet::limits);
    let request_log =
        start_gateway(&config, (&service, &escalation, fleet_limits), &audit, &mut registry)
            .await?;
    start_metrics(config.metrics_listen, registry).await;
    // The control socket last of the listeners: once it answers, the gateway and the metrics
    // endpoint are listening (scripts and tests wait for the socket).
    let socket = socket_path(&config, socket.as_deref());
    let listener = server::bind(&socket)
        .with_context(|| format!("binding control socket {}", socket.display()))?;
    tokio::spawn(server::serve(listener, service.clone()));
    tokio::spawn(link_watch::watch(service.clone()));
    tokio::spawn(sweep(service.clone()));
    tokio::spawn(watch_evictions(service.clone()));
    if let Some(ring) = ring {
        tokio::spawn(events::drain(ring, service.clone(), escalation.clone()));
    }
    signals(&service).await?;
    escalation.save();
    if let Some(log) = request_log {
        log.flush().await;
    }
    let _ = std::fs::remove_file(&socket);
    tokio::task::spawn_blocking(move || service.shutdown()).await?;
    info!(
        "stopping; the XDP program stays attached through its pinned links (`secgate detach` removes it)"
    );
    Ok(())
}

/// Binds and serves the metrics endpoint if the config has one. A busy address is logged, not
/// fatal: losing metrics must not take the datapath's policy down with it.
async fn start_metrics(
    addr: Option<std::net::SocketAddr>,
    registry: prometheus_client::registry::Registry,
) {
    let Some(addr) = addr else { return };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            info!(%addr, "metrics endpoint ready");
            tokio::spawn(metrics::serve(listener, registry));
        }
        Err(e) => {
            error!(%addr, error = %e, "metrics endpoint failed; fix [metrics] listen or set enabled = false");
        }
    }
}

/// Binds and serves the gateway if the config has one (a listen address that cannot be bound
/// is fatal), and registers its part of every reload. Returns its request log, to flush at
/// the end.
async fn start_gateway(
    config: &Config,
    (service, escalation, fleet): (&Arc<Service>, &Arc<Escalation>, Option<Arc<FleetLimits>>),
    audit: &Arc<Audit>,
    registry: &mut prometheus_client::registry::Registry,
) -> anyhow::Result<Option<Arc<RequestLog>>> {
    let Some(settings) = &config.gateway else {
        service.on_reload(Arc::new(NoGateway));
        return Ok(None);
    };
    let log = RequestLog::start(audit.clone());
    let gateway_metrics = Arc::new(GatewayMetrics::default());
    gateway_metrics.register(registry, log.clone());
    let gateway = Gateway::new(
        settings,
        service.clone(),
        escalation.clone(),
        (gateway_metrics, log.clone()),
        fleet,
    )?;
    let listeners = gateway.bind().await?;
    gateway.serve(listeners);
    service.on_reload(Arc::new(GatewayReload(gateway)));
    Ok(Some(log))
}

/// Raises the soft descriptor limit to the hard one: connections, map and link descriptors
/// and state writes share it, and the default 1024 is easily reached under load.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        warn!(error = %e, soft, "could not raise the open-file limit");
    }
}

fn socket_path(config: &Config, overridden: Option<&Path>) -> PathBuf {
    overridden.map_or_else(|| config.control_socket.clone(), Path::to_owned)
}

async fn sweep(service: Arc<Service>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        match service.sweep() {
            Ok(0) => {}
            Ok(n) => info!(count = n, "expired bans lifted"),
            Err(e) => warn!(error = %e, "lifting expired bans failed"),
        }
    }
}

/// Warns when the limiter table evicted live buckets since the last look: the flood has
/// more sources than `max_sources` holds, and an evicted source starts afresh within its
/// limit each time it returns. Evictions counted before this start are not warned about
/// again; `status` and the metric carry the total.
async fn watch_evictions(service: Arc<Service>) {
    let mut tick = tokio::time::interval(EVICTIONS_EVERY);
    let mut seen = None;
    loop {
        tick.tick().await;
        let Ok(total) = service.buckets_evicted() else {
            continue;
        };
        if let Some(before) = seen
            && total > before
        {
            warn!(
                evicted = total - before,
                total,
                "the limiter table is full: live buckets were evicted for new sources, which \
                 then start within their limit again; raise [datapath] max_sources"
            );
        }
        seen = Some(total);
    }
}

/// Reloads on SIGHUP; returns on SIGINT or SIGTERM.
async fn signals(service: &Arc<Service>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match service.reload(Caller::Config).await {
                Ok(()) => info!("config reloaded (SIGHUP)"),
                Err(e) => error!("{e}"),
            },
        }
    }
}
