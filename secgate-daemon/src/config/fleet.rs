//! `[fleet]`: where Redis is, this node's name, what is shared.

use toml::Spanned;

use super::{raw::RawFleet, validate::Check};
use crate::fleet::settings::{self, DEFAULT_PREFIX, FleetSettings, OnUnavailable, Target};

/// `Some(None)` without `[fleet]`; `None` if invalid (recorded).
pub(super) fn settings(
    c: &mut Check<'_>,
    raw: Option<&Spanned<RawFleet>>,
) -> Option<Option<FleetSettings>> {
    let Some(raw) = raw else { return Some(None) };
    let f = raw.get_ref();
    let redis = c.take(&f.redis, Target::parse(f.redis.get_ref()));
    let node = c.take(&f.node, settings::node(f.node.get_ref()));
    let prefix = f
        .prefix
        .as_ref()
        .map_or(Some(DEFAULT_PREFIX.to_owned()), |p| c.take(p, settings::prefix(p.get_ref())));
    let on_unavailable = f
        .on_unavailable
        .as_ref()
        .map_or(Some(OnUnavailable::Local), |o| c.take(o, OnUnavailable::parse(o.get_ref())));
    let password = match &f.password_file {
        None => Some(None),
        Some(p) => c.take(p, settings::password_file(p.get_ref())).map(Some),
    };
    let ca = match &f.ca_file {
        None => Some(None),
        Some(p) if !redis.as_ref().is_some_and(Target::is_tls) => {
            c.say(p, "fleet.ca_file needs a rediss:// URL in fleet.redis".into());
            None
        }
        Some(p) => c.take(p, settings::ca_file(p.get_ref())).map(Some),
    };
    let (share_bans, share_limits) = share(c, f)?;
    let settings = FleetSettings {
        redis: redis?,
        node: node?,
        prefix: prefix?,
        share_bans,
        share_limits,
        on_unavailable: on_unavailable?,
        password: password?,
        ca: ca?,
    };
    // Built here (nothing connects yet), so a CA file rustls cannot use is a config error.
    if let Err(e) = crate::fleet::client(&settings) {
        let detail = e.detail().unwrap_or(e.category()).to_owned();
        c.say(&f.redis, format!("fleet: cannot set up the Redis client: {detail}"));
        return None;
    }
    Some(Some(settings))
}

/// `(bans, limits)`: what `share` names; both by default.
fn share(c: &mut Check<'_>, f: &RawFleet) -> Option<(bool, bool)> {
    let Some(list) = &f.share else { return Some((true, true)) };
    let (mut bans, mut limits, mut valid) = (false, false, true);
    for item in list.get_ref() {
        match item.get_ref().as_str() {
            "bans" => bans = true,
            "limits" => limits = true,
            other => {
                c.say(
                    item,
                    format!("invalid fleet.share entry {other:?}: expected \"bans\" or \"limits\""),
                );
                valid = false;
            }
        }
    }
    if valid && !bans && !limits {
        c.say(
            list,
            "fleet.share is empty: name \"bans\", \"limits\" or both, or remove [fleet]".into(),
        );
        valid = false;
    }
    valid.then_some((bans, limits))
}
