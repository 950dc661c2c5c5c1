//! The recorder: makes the worker's bans bans of the policy (audited, listed, swept, saved)
//! or, in monitor mode, reports them; and saves the repeat-offender history. A thread of
//! normal priority: it takes the policy lock and writes to disk, which the worker must not.

use std::{
    sync::{
        Arc,
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::Instant,
};

use tracing::{info, warn};

use super::{Escalation, Order, RuleLabels, SAVE_EVERY};
use crate::service::Service;

pub(super) struct Recorder {
    escalation: Arc<Escalation>,
    service: Arc<Service>,
    /// Where it waits for bans to be on disk.
    runtime: tokio::runtime::Handle,
}

impl Recorder {
    pub(super) fn new(
        escalation: Arc<Escalation>,
        service: Arc<Service>,
        runtime: tokio::runtime::Handle,
    ) -> Recorder {
        Recorder { escalation, service, runtime }
    }

    pub(super) fn run(self, orders: Receiver<Order>) {
        let mut next_save = Instant::now() + SAVE_EVERY;
        loop {
            match orders.recv_timeout(next_save.saturating_duration_since(Instant::now())) {
                Ok(order) => self.record(order),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_save {
                self.escalation.save();
                next_save = Instant::now() + SAVE_EVERY;
            }
        }
    }

    fn record(&self, order: Order) {
        let Order { ban, first, monitor, strikes } = order;
        let (cidr, rule, ttl) = (ban.cidr, ban.rule, ban.ttl);
        let metrics = &self.escalation.metrics;
        if monitor {
            self.service.would_ban(&ban);
            metrics.would_ban.get_or_create(&RuleLabels { rule }).inc();
            info!(%cidr, rule, ?ttl, reason = %ban.reason, "escalation would ban (monitor mode)");
            return;
        }
        match self.service.ban_escalated(&ban, first) {
            Ok((_, version)) => {
                metrics.bans.get_or_create(&RuleLabels { rule }).inc();
                warn!(%cidr, rule, ?ttl, strikes, reason = %ban.reason, "escalation banned a source");
                let service = self.service.clone();
                self.runtime.spawn(async move {
                    if let Err(e) = service.saved(version).await {
                        warn!(%cidr, error = %e, "escalation ban is in force but not saved");
                    }
                });
            }
            Err(e) => warn!(%cidr, rule, error = %e, "escalation could not ban a source"),
        }
    }
}
