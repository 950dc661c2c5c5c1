//! Keeps the XDP program on the configured interfaces while they come and go: a deleted and
//! re-created interface (a veth re-made, a driver reloaded) has lost its link, and one
//! missing at start is attached when it appears.
//!
//! Link events from rtnetlink (`RTNLGRP_LINK`) trigger a re-check at once; a re-check every
//! second covers events lost to a full socket buffer, or a kernel without the subscription.

use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use rtnetlink::sys::{AsyncSocket as _, SocketAddr};
use tracing::{info, warn};

use crate::service::Service;

const RECHECK_EVERY: Duration = Duration::from_secs(1);
const RTMGRP_LINK: u32 = 1;

type Events = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
    SocketAddr,
)>;

/// Subscribes to link events; the returned handle keeps the connection alive.
fn subscribe() -> std::io::Result<(rtnetlink::Handle, Events)> {
    let (mut conn, handle, events) = rtnetlink::new_connection()?;
    conn.socket_mut().socket_mut().bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    tokio::spawn(conn);
    Ok((handle, events))
}

pub async fn watch(service: Arc<Service>) {
    let mut subscription = match subscribe() {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot subscribe to link events; re-checking interfaces every second");
            None
        }
    };
    let mut tick = tokio::time::interval(RECHECK_EVERY);
    let mut last: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            event = next(&mut subscription) => {
                if event.is_none() {
                    warn!("link events stopped; re-checking interfaces every second");
                    subscription = None;
                }
                // A burst of events (a veth pair is several) needs one re-check.
                while let Some((_, events)) = subscription.as_mut()
                    && events.try_recv().is_ok()
                {}
            }
        }
        let failures: Vec<String> =
            service.sync_interfaces().into_iter().map(|(name, e)| format!("{name}: {e}")).collect();
        if failures != last {
            match failures.as_slice() {
                [] => info!("every configured interface that exists has the XDP program"),
                f => {
                    warn!(failures = ?f, "attaching the XDP program failed; retrying on link events")
                }
            }
            last = failures;
        }
    }
}

async fn next(subscription: &mut Option<(rtnetlink::Handle, Events)>) -> Option<()> {
    match subscription {
        Some((_, events)) => events.next().await.map(|_| ()),
        None => std::future::pending().await,
    }
}
