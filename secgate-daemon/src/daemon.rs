//! `secgate run`: bring the datapath up, apply the config, serve control requests, sweep
//! expired bans and drain events until SIGINT/SIGTERM. The XDP links stay pinned on exit,
//! so stopping or restarting the daemon never leaves the host unprotected.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{config::Config, control::server, datapath::Datapath, events, policy::Policy};

const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub async fn run(config: Config, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = config.datapath.clone();
    let mut datapath = Datapath::open(&settings).context("starting the datapath")?;
    let events = datapath.take_events();
    let mut policy = Policy::start(datapath, settings.clone()).context("applying the config")?;
    for iface in &settings.interfaces {
        policy
            .datapath
            .attach(iface, settings.attach)
            .with_context(|| format!("attaching to {iface}"))?;
    }
    let policy = Arc::new(Mutex::new(policy));
    let socket = socket.unwrap_or(config.control_socket.clone());
    let listener = server::bind(&socket)
        .with_context(|| format!("binding control socket {}", socket.display()))?;
    tokio::spawn(server::serve(listener, policy.clone(), socket.clone()));
    tokio::spawn(sweep(policy.clone()));
    if let Some(ring) = events {
        tokio::spawn(events::drain(ring));
    }
    wait_for_shutdown().await?;
    let _ = std::fs::remove_file(&socket);
    info!(
        "stopping; the XDP program stays attached through its pinned links (`secgate detach` removes it)"
    );
    Ok(())
}

async fn sweep(policy: Arc<Mutex<Policy>>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let swept = policy.lock().map(|mut p| p.sweep());
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(count = n, "expired bans removed"),
            Ok(Err(e)) => warn!(error = %e, "sweeping expired bans failed"),
            Err(_) => return,
        }
    }
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
