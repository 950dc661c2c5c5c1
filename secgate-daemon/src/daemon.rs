//! `secgate run`: bring the datapath up, apply config + saved state, serve control requests
//! and metrics, sweep expired bans, drain events, reload on SIGHUP, until SIGINT/SIGTERM.
//! The XDP links stay pinned on exit, so stopping or restarting the daemon never leaves the
//! host unprotected.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    audit::Audit, config::Config, control::server, datapath::Datapath, events, metrics,
    policy::Policy, shared::Shared, state::StateFile,
};

const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub async fn run(
    config_path: &Path,
    config: Config,
    socket: Option<PathBuf>,
) -> anyhow::Result<()> {
    let settings = config.datapath.clone();
    let mut datapath = Datapath::open(&settings).context("starting the datapath")?;
    let ring = datapath.take_events();
    let state = StateFile::new(&config.state_dir);
    let (mut policy, warning) =
        Policy::start(datapath, settings.clone(), state).context("applying the config")?;
    if let Some(w) = warning {
        error!("{w}");
    }
    policy.sync_interfaces().context("attaching the XDP program")?;
    let audit = Audit::open(&config.audit_log)
        .with_context(|| format!("opening the audit log {}", config.audit_log.display()))?;
    let shared = Arc::new(Shared {
        policy: Mutex::new(policy),
        audit,
        config_path: config_path.to_owned(),
        events: Mutex::default(),
        actions: Mutex::default(),
    });
    let socket = socket.unwrap_or(config.control_socket.clone());
    let listener = server::bind(&socket)
        .with_context(|| format!("binding control socket {}", socket.display()))?;
    tokio::spawn(server::serve(listener, shared.clone()));
    if let Some(addr) = config.metrics_listen {
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, shared).await {
                error!(%addr, error = %e, "metrics endpoint failed; fix [metrics] listen or set enabled = false");
            }
        });
    }
    tokio::spawn(sweep(shared.clone()));
    if let Some(ring) = ring {
        tokio::spawn(events::drain(ring, shared.clone()));
    }
    signals(shared).await?;
    let _ = std::fs::remove_file(&socket);
    info!(
        "stopping; the XDP program stays attached through its pinned links (`secgate detach` removes it)"
    );
    Ok(())
}

async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        match shared.policy().sweep() {
            Ok(0) => {}
            Ok(n) => info!(count = n, "expired bans removed"),
            Err(e) => warn!(error = %e, "sweeping expired bans failed"),
        }
    }
}

/// Reloads on SIGHUP; returns on SIGINT or SIGTERM.
async fn signals(shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                let shared = shared.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let r = shared.reload(&mut shared.policy());
                    shared.audit.record(0, "reload", &"SIGHUP", r.as_ref().map(|_| ()).map_err(String::as_str));
                    shared.count_action("reload", r.is_ok());
                    r
                })
                .await?;
                match result {
                    Ok(()) => info!("config reloaded (SIGHUP)"),
                    Err(e) => error!("reload rejected, the running policy stays: {e}"),
                }
            }
        }
    }
}
