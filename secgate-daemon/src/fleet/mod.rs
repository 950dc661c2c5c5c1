//! Fleet mode (`[fleet]`): gateways share bans and L7 limits through Redis, never a
//! protocol of their own. A ban made on one node (by an operator or the escalation) is
//! written to Redis with its wall-clock expiry and published; every other node applies it
//! through its own service layer, so it reaches that node's kernel maps, state file and
//! audit (with the node it came from). While Redis is away each node keeps enforcing what
//! it has, queues what it changes, and brings itself back in line on reconnect.

mod claim;
mod lifts;
pub mod limits;
mod link;
mod reconcile;
pub mod settings;
mod store;
mod sync;
mod wire;

use std::{path::Path, sync::Arc, time::Duration};

use prometheus_client::registry::Registry;

use link::Link;
use settings::FleetSettings;

use crate::{
    config::Config,
    escalate::Escalation,
    service::{Reloadable, Service},
};

/// How long a starting node waits for its first sync before it opens its doors anyway
/// (enforcing what it has, and catching up once Redis answers).
pub const FIRST_SYNC_WAIT: Duration = Duration::from_secs(5);

/// The running fleet link.
pub struct Fleet {
    limits: Option<Arc<limits::FleetLimits>>,
}

impl Fleet {
    /// Connects to the fleet, loads its bans into this node and starts sharing. Waits for
    /// that first sync (at most [`FIRST_SYNC_WAIT`]), so a node that reports ready
    /// enforces every ban the fleet holds.
    pub async fn start(
        settings: &FleetSettings,
        (service, escalation): (&Arc<Service>, &Arc<Escalation>),
        state_dir: &Path,
        registry: &mut Registry,
    ) -> Fleet {
        let link = Link::new(settings.clone(), state_dir);
        link.register(registry);
        service.share_with(link.clone());
        let client = client(settings).expect("a validated Redis address opens a client");
        let task = sync::Task {
            link: link.clone(),
            service: service.clone(),
            escalation: escalation.clone(),
            client,
            store: store::Store::new(&settings.prefix),
            claim: claim::Claim::new(&settings.prefix, &settings.node, state_dir),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(task.run(Some(tx)));
        if tokio::time::timeout(FIRST_SYNC_WAIT, rx).await.is_err() || !link.is_connected() {
            tracing::warn!(redis = %settings.redis, "starting without the fleet's bans: Redis did not answer; they are applied once it does");
        }
        let limits = settings.share_limits.then(|| limits::FleetLimits::new(link.clone()));
        if let Some(l) = &limits {
            l.register(registry);
        }
        service.on_reload(Arc::new(FleetReload(settings.clone())));
        Fleet { limits }
    }

    /// The fleet's buckets, when it shares limits.
    pub fn limits(&self) -> Option<Arc<limits::FleetLimits>> {
        self.limits.clone()
    }
}

/// The Redis client for `settings`: with its password, and for `rediss://` its CAs.
pub fn client(settings: &FleetSettings) -> redis::RedisResult<redis::Client> {
    let info = settings.redis.with_password(settings.password().as_ref());
    match &settings.ca {
        None => redis::Client::open(info),
        Some(pem) => {
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) };
            redis::Client::build_with_tls(info, certs)
        }
    }
}

/// `[fleet]` is read at start: a reload that changes it is refused with the reason, rather
/// than half applied.
struct FleetReload(FleetSettings);

impl Reloadable for FleetReload {
    fn prepare(&self, config: &Config) -> Result<Box<dyn FnOnce() + Send>, String> {
        if config.fleet.as_ref() == Some(&self.0) {
            Ok(Box::new(|| {}))
        } else {
            Err("[fleet] changed (or its password file did): restart the daemon to apply it".into())
        }
    }
}
