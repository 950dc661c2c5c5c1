//! `[escalation]`: thresholds, ban lengths, mode and widening.

use std::time::Duration;

use toml::Spanned;

use super::{
    Mode,
    raw::{RawEscalation, RawWiden},
    validate::Check,
    values,
};
use crate::escalate::settings::{
    DEFAULT_BAN_TTL, DEFAULT_MAX_TTL, DEFAULT_THRESHOLDS, DEFAULT_TTL_FACTOR, DEFAULT_WIDEN_V4,
    DEFAULT_WIDEN_V6, DEFAULT_WINDOW, EscalationSettings, Kind, MAX_THRESHOLD, MAX_WIDEN_SOURCES,
    Widen,
};

/// The longest window: offences are remembered this long at most.
const MAX_WINDOW: Duration = Duration::from_secs(86_400);
/// The longest ban the escalation may make (a year); longer is for an operator to decide.
const MAX_BAN: Duration = Duration::from_secs(365 * 86_400);

/// `Some(None)` without `[escalation]`; `None` if invalid (recorded).
pub(super) fn settings(
    c: &mut Check<'_>,
    raw: Option<&Spanned<RawEscalation>>,
) -> Option<Option<EscalationSettings>> {
    let Some(raw) = raw else { return Some(None) };
    let e = raw.get_ref();
    let window = duration(c, &e.window, DEFAULT_WINDOW, MAX_WINDOW, "window");
    let ban_ttl = duration(c, &e.ban_ttl, DEFAULT_BAN_TTL, MAX_BAN, "ban_ttl");
    let max_ttl = duration(c, &e.max_ttl, DEFAULT_MAX_TTL, MAX_BAN, "max_ttl");
    let ttl_factor = factor(c, e.ttl_factor.as_ref());
    let mode = e.mode.as_ref().map_or(Some(Mode::Enforce), |m| c.take(m, Mode::parse(m.get_ref())));
    let mut thresholds = [0; 5];
    let mut valid = true;
    for kind in Kind::ALL {
        let raw = match kind {
            Kind::AuthFailure => &e.auth_failures,
            Kind::ValidationFailure => &e.validation_failures,
            Kind::RateLimited => &e.rate_limited,
            Kind::TlsFailure => &e.tls_failures,
            Kind::OverlimitEvent => &e.overlimit_events,
        };
        let value = match raw {
            None => Some(DEFAULT_THRESHOLDS[kind.index()]),
            Some(v) => c
                .take(v, values::range(kind.key(), *v.get_ref(), 0, MAX_THRESHOLD))
                .map(|n| n as u32),
        };
        match value {
            Some(n) => thresholds[kind.index()] = n,
            None => valid = false,
        }
    }
    let widen = e.widen.as_ref().map_or(Some(None), |w| widen(c, w).map(Some));
    if let (Some(ban), Some(max)) = (ban_ttl, max_ttl)
        && max < ban
    {
        let at = e.max_ttl.as_ref().map_or(raw.span(), Spanned::span);
        c.say(
            &Spanned::new(at, ()),
            format!("max_ttl ({max:?}) is shorter than ban_ttl ({ban:?}); raise max_ttl or lower ban_ttl"),
        );
        return None;
    }
    if !valid {
        return None;
    }
    Some(Some(EscalationSettings {
        window: window?,
        thresholds,
        ban_ttl: ban_ttl?,
        ttl_factor: ttl_factor?,
        max_ttl: max_ttl?,
        mode: mode?,
        widen: widen?,
    }))
}

fn duration(
    c: &mut Check<'_>,
    v: &Option<Spanned<String>>,
    default: Duration,
    max: Duration,
    name: &str,
) -> Option<Duration> {
    let Some(v) = v else { return Some(default) };
    let d = values::duration(v.get_ref()).and_then(|d| {
        if d > max {
            Err(format!(
                "{name} {:?} is longer than {}",
                v.get_ref(),
                humantime::format_duration(max)
            ))
        } else {
            Ok(d)
        }
    });
    c.take(v, d)
}

fn factor(c: &mut Check<'_>, v: Option<&Spanned<toml::Value>>) -> Option<f64> {
    let Some(v) = v else { return Some(DEFAULT_TTL_FACTOR) };
    let f = match v.get_ref() {
        toml::Value::Integer(i) => Ok(*i as f64),
        toml::Value::Float(f) => Ok(*f),
        other => Err(format!("ttl_factor must be a number, not {}", other.type_str())),
    }
    .and_then(|f| {
        if (1.0..=100.0).contains(&f) {
            Ok(f)
        } else {
            Err(format!("ttl_factor {f} is out of range: expected 1 to 100"))
        }
    });
    c.take(v, f)
}

fn widen(c: &mut Check<'_>, w: &Spanned<RawWiden>) -> Option<Widen> {
    let w = w.get_ref();
    let prefix = |c: &mut Check<'_>, v: &Option<Spanned<i64>>, name, lo, hi, default| match v {
        None => Some(default),
        Some(v) => c.take(v, values::range(name, *v.get_ref(), lo, hi).map(|p| p as u8)),
    };
    let v4 = prefix(c, &w.v4_prefix, "widen.v4_prefix", 8, 32, DEFAULT_WIDEN_V4);
    let v6 = prefix(c, &w.v6_prefix, "widen.v6_prefix", 16, 128, DEFAULT_WIDEN_V6);
    let sources = c.take(
        &w.sources,
        values::range("widen.sources", *w.sources.get_ref(), 2, MAX_WIDEN_SOURCES),
    );
    Some(Widen { v4_prefix: v4?, v6_prefix: v6?, sources: sources? as u32 })
}
