//! Raw config → [`Config`], collecting every problem with its line.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use toml::Spanned;

use super::{
    AttachMode, Config, DatapathSettings, Mode, Override, Problem, Rate, Selector,
    raw::{RawConfig, RawDatapath, RawOverride, RawRate},
    unknown::line_of,
    values,
};
use crate::gateway::slots::SourceKey;

const DEFAULT_STATE_DIR: &str = "/var/lib/secgate";
const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/secgate";
const DEFAULT_SOCKET: &str = "/run/secgate/control.sock";
const DEFAULT_EVENT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_EVENTS_PER_SEC: u64 = 1000;
const DEFAULT_METRICS: &str = "127.0.0.1:9477";
const DEFAULT_AUDIT_LOG: &str = "/var/log/secgate/audit.log";

/// Collects problems while validating.
pub(super) struct Check<'a> {
    src: &'a str,
    problems: Vec<Problem>,
}

impl Check<'_> {
    /// The value of `r`, or records its error at `span`'s line.
    pub(super) fn take<T, U>(&mut self, at: &Spanned<U>, r: Result<T, String>) -> Option<T> {
        r.map_err(|message| {
            self.problems.push(Problem { line: Some(line_of(self.src, at.span().start)), message })
        })
        .ok()
    }

    pub(super) fn say<U>(&mut self, at: &Spanned<U>, message: String) {
        self.problems.push(Problem { line: Some(line_of(self.src, at.span().start)), message });
    }
}

pub fn validate(src: &str, raw: RawConfig) -> Result<Config, Vec<Problem>> {
    let mut c = Check { src, problems: Vec::new() };
    let datapath = datapath(&mut c, &raw.datapath);
    let path = |s: &Option<Spanned<String>>, default: &str| {
        PathBuf::from(s.as_ref().map_or(default, |s| s.get_ref().as_str()))
    };
    let state_dir = path(&raw.state_dir, DEFAULT_STATE_DIR);
    let control_socket = path(&raw.control.socket, DEFAULT_SOCKET);
    let audit_log = path(&raw.audit.path, DEFAULT_AUDIT_LOG);
    let metrics_listen = metrics(&mut c, &raw.metrics);
    // The gateway counts sources as the datapath keys them.
    let sources = datapath.as_ref().map(|d| SourceKey::new(d.ipv4_prefix, d.ipv6_prefix));
    let gateway = super::gateway::settings(&mut c, &raw, sources);
    let escalation = super::escalation::settings(&mut c, raw.escalation.as_ref());
    let fleet = super::fleet::settings(&mut c, raw.fleet.as_ref());
    if let Some(fleet) = &fleet {
        fleet_scopes(&mut c, &raw, fleet.as_ref());
    }
    if let (Some(d), Some(Some(e)), Some(raw)) = (&datapath, &escalation, &raw.escalation)
        && let Some(w) = &e.widen
        && (w.v4_prefix >= d.ipv4_prefix || w.v6_prefix >= d.ipv6_prefix)
    {
        c.say(
            raw,
            format!(
                "escalation.widen prefixes (/{}, /{}) must be shorter than the datapath's source prefixes (/{}, /{}): a source is already that wide",
                w.v4_prefix, w.v6_prefix, d.ipv4_prefix, d.ipv6_prefix
            ),
        );
    }
    for (p, at) in [
        (&state_dir, &raw.state_dir),
        (&control_socket, &raw.control.socket),
        (&audit_log, &raw.audit.path),
    ] {
        if let Some(at) = at
            && !p.is_absolute()
        {
            c.say(at, format!("path {:?} must be absolute", p.display().to_string()));
        }
    }
    match (datapath, gateway, escalation, fleet) {
        (Some(datapath), Some(gateway), Some(escalation), Some(fleet)) if c.problems.is_empty() => {
            Ok(Config {
                state_dir,
                datapath,
                control_socket,
                metrics_listen: metrics_listen.flatten(),
                audit_log,
                gateway,
                escalation,
                fleet,
            })
        }
        _ => Err(c.problems),
    }
}

/// A limit counted fleet-wide needs a fleet that shares limits.
fn fleet_scopes(
    c: &mut Check<'_>,
    raw: &RawConfig,
    fleet: Option<&crate::fleet::settings::FleetSettings>,
) {
    let shares = fleet.is_some_and(|f| f.share_limits);
    for route in &raw.routes {
        if let Some(scope) =
            route.get_ref().rate_limit.as_ref().and_then(|l| l.get_ref().scope.as_ref())
            && scope.get_ref() == "fleet"
            && !shares
        {
            c.say(
                scope,
                "rate_limit.scope = \"fleet\" needs [fleet] with \"limits\" in fleet.share".into(),
            );
        }
    }
}

/// `Some(None)`: disabled; `None`: invalid (recorded).
fn metrics(c: &mut Check<'_>, m: &super::raw::RawMetrics) -> Option<Option<std::net::SocketAddr>> {
    if m.enabled == Some(false) {
        return Some(None);
    }
    let Some(listen) = &m.listen else {
        return Some(DEFAULT_METRICS.parse().ok());
    };
    let parsed = listen.get_ref().parse().map_err(|_| {
        format!(
            "invalid metrics listen address {:?}: expected IP:PORT like 127.0.0.1:9477",
            listen.get_ref()
        )
    });
    c.take(listen, parsed).map(Some)
}

fn datapath(c: &mut Check<'_>, d: &RawDatapath) -> Option<DatapathSettings> {
    let interfaces: Vec<String> =
        d.interfaces.get_ref().iter().map(|i| i.get_ref().clone()).collect();
    if interfaces.is_empty() {
        c.say(&d.interfaces, "datapath.interfaces is empty: name at least one interface".into());
    }
    for i in d.interfaces.get_ref() {
        let name = i.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            c.say(i, format!("invalid interface name {name:?}"));
        }
    }
    let attach = d.attach.as_ref().map_or(Some(AttachMode::Auto), |a| {
        let r = match a.get_ref().as_str() {
            "auto" => Ok(AttachMode::Auto),
            "native" => Ok(AttachMode::Native),
            "skb" => Ok(AttachMode::Skb),
            other => Err(format!("invalid attach mode {other:?}: expected auto, native or skb")),
        };
        c.take(a, r)
    });
    let mode = d.mode.as_ref().map_or(Some(Mode::Enforce), |m| c.take(m, Mode::parse(m.get_ref())));
    let pass_malformed = choice(c, &d.malformed, "malformed", ["drop", "pass"]);
    let threaded_napi = choice(c, &d.napi, "napi", ["kernel", "threaded"]);
    let int = |c: &mut Check<'_>,
               v: &Option<Spanned<i64>>,
               default: i64,
               f: &dyn Fn(i64) -> Result<u64, String>| {
        v.as_ref().map_or(f(default).ok(), |v| c.take(v, f(*v.get_ref())))
    };
    let ipv4_prefix =
        int(c, &d.ipv4_prefix, 32, &|v| values::prefix("ipv4_prefix", v, 32).map(u64::from));
    let ipv6_prefix =
        int(c, &d.ipv6_prefix, 64, &|v| values::prefix("ipv6_prefix", v, 128).map(u64::from));
    let max_sources =
        int(c, &d.max_sources, i64::from(secgate_common::maps::DEFAULT_MAX_SOURCES), &|v| {
            u64::try_from(v)
                .ok()
                .filter(|v| (1024..=1 << 26).contains(v))
                .ok_or_else(|| format!("max_sources {v} is out of range 1024–67108864"))
        });
    let events_per_sec = int(c, &d.events_per_sec, DEFAULT_EVENTS_PER_SEC as i64, &values::pps);
    let event_interval = d
        .event_interval
        .as_ref()
        .map_or(Some(DEFAULT_EVENT_INTERVAL), |v| c.take(v, values::duration(v.get_ref())));
    let default_limit = optional_rate(c, &d.default_limit);
    let drop_fragments = choice(c, &d.fragments, "fragments", ["limit", "drop"]);
    let fragment_limit = optional_rate(c, &d.fragment_limit);
    if let (Some(true), Some(r)) = (drop_fragments, &d.fragment_limit) {
        c.say(
            r,
            "fragment_limit has no effect with fragments = \"drop\"; remove one of them".into(),
        );
    }
    let limits = overrides(c, &d.limits);
    let allow = cidrs(c, &d.allow);
    let deny = cidrs(c, &d.deny);
    let pin_path =
        PathBuf::from(d.pin_path.as_ref().map_or(DEFAULT_PIN_PATH, |p| p.get_ref().as_str()));
    if let Some(p) = &d.pin_path
        && !pin_path.is_absolute()
    {
        c.say(p, format!("pin_path {:?} must be an absolute path on a bpffs", p.get_ref()));
    }
    Some(DatapathSettings {
        interfaces,
        attach: attach?,
        mode: mode?,
        ipv4_prefix: ipv4_prefix? as u8,
        ipv6_prefix: ipv6_prefix? as u8,
        max_sources: max_sources? as u32,
        pass_malformed: pass_malformed?,
        threaded_napi: threaded_napi?,
        default_limit: default_limit?,
        drop_fragments: drop_fragments?,
        fragment_limit: fragment_limit?,
        limits: limits?,
        allow: allow?,
        deny: deny?,
        pin_path,
        event_interval: event_interval?,
        events_per_sec: events_per_sec?,
    })
}

/// A policy spelled `off` or `on` (`off` when absent); `None` if invalid (recorded).
fn choice(
    c: &mut Check<'_>,
    v: &Option<Spanned<String>>,
    what: &str,
    [off, on]: [&str; 2],
) -> Option<bool> {
    let Some(v) = v else { return Some(false) };
    let r = match v.get_ref().as_str() {
        s if s == off => Ok(false),
        s if s == on => Ok(true),
        other => Err(format!("invalid {what} policy {other:?}: expected {off} or {on}")),
    };
    c.take(v, r)
}

/// `Some(None)` when absent; `None` if invalid (recorded).
fn optional_rate(c: &mut Check<'_>, r: &Option<Spanned<RawRate>>) -> Option<Option<Rate>> {
    match r {
        None => Some(None),
        Some(r) => rate(c, r.get_ref()).map(Some),
    }
}

fn rate(c: &mut Check<'_>, r: &RawRate) -> Option<Rate> {
    let pps = c.take(&r.pps, values::pps(*r.pps.get_ref()));
    let burst = c.take(&r.burst, values::burst(*r.burst.get_ref()));
    Some(Rate { pps: pps?, burst: burst? })
}

fn overrides(c: &mut Check<'_>, raw: &[Spanned<RawOverride>]) -> Option<Vec<Override>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut ok = true;
    for o in raw {
        match one_override(c, o) {
            Some(v) if !seen.insert(v.selector) => {
                c.say(o, format!("duplicate limit for {}", describe(&v.selector)));
                ok = false;
            }
            Some(v) => out.push(v),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn one_override(c: &mut Check<'_>, o: &Spanned<RawOverride>) -> Option<Override> {
    let r = o.get_ref();
    let protocol = c.take(&r.protocol, values::Protocol::parse(r.protocol.get_ref()));
    let port = match &r.port {
        None => Some(None),
        Some(p) => c.take(p, values::port(*p.get_ref())).map(Some),
    };
    let rate = rate(c, &RawRate { pps: r.pps.clone(), burst: r.burst.clone() });
    let (protocol, port, rate) = (protocol?, port?, rate?);
    let selector = Selector { protocol, port, syn_only: r.syn_only };
    let problem = selector_problem(&selector);
    c.take(o, problem.map_or(Ok(()), Err))?;
    Some(Override { selector, rate })
}

/// Combinations that cannot match anything.
pub fn selector_problem(s: &Selector) -> Option<String> {
    if s.port.is_some() && s.protocol == values::Protocol::Icmp {
        return Some("a port only applies to tcp and udp limits".into());
    }
    if s.syn_only && s.protocol != values::Protocol::Tcp {
        return Some("syn_only only applies to tcp limits".into());
    }
    None
}

pub fn describe(s: &Selector) -> String {
    let port = s.port.map_or("any port".to_string(), |p| format!("port {p}"));
    let syn = if s.syn_only { " (SYN only)" } else { "" };
    format!("{} {port}{syn}", s.protocol.name())
}

fn cidrs(c: &mut Check<'_>, raw: &[Spanned<String>]) -> Option<Vec<ipnet::IpNet>> {
    let parsed: Vec<_> = raw.iter().map(|s| c.take(s, values::cidr(s.get_ref()))).collect();
    parsed.into_iter().collect()
}
