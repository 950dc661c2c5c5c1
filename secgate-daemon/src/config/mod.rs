//! Configuration: parse the TOML file into its raw shape, then validate it into the
//! [`Config`] the daemon uses, collecting every problem (with its line) before failing.

mod auth;
mod escalation;
mod fleet;
mod gateway;
mod raw;
mod routes;
mod unknown;
mod validate;
pub mod values;

use std::{path::PathBuf, time::Duration};

use ipnet::IpNet;
use secgate_common::{
    limit::coarse_clock_fits,
    maps::{
        DatapathConfig, FLAG_COARSE_CLOCK, FLAG_DROP_FRAGMENTS, FLAG_PASS_MALFORMED, LimitKey,
        MODE_ENFORCE, MODE_MONITOR, RateRule,
    },
    model::prefix_mask,
};

use crate::clock;

pub use validate::{describe, selector_problem};
pub use values::Protocol;

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic (skb) mode with a warning.
    Auto,
    Native,
    Skb,
}

/// Whether the datapath drops or only counts.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Monitor,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "monitor" => Ok(Mode::Monitor),
            _ => Err(format!("invalid mode {s:?}: expected enforce or monitor")),
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Monitor => MODE_MONITOR,
        }
    }

    pub fn from_raw(v: u32) -> Mode {
        if v == MODE_MONITOR { Mode::Monitor } else { Mode::Enforce }
    }
}

/// A rate: packets per second and burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rate {
    pub pps: u64,
    pub burst: u64,
}

impl Rate {
    pub fn rule(self) -> RateRule {
        RateRule::from_rate(self.pps, self.burst)
    }
}

/// Which packets an override applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Selector {
    pub protocol: Protocol,
    /// `None`: any port.
    pub port: Option<u16>,
    pub syn_only: bool,
}

impl Selector {
    /// The map keys for this selector (ICMP covers two protocol numbers).
    pub fn keys(self) -> impl Iterator<Item = LimitKey> {
        self.protocol.numbers().iter().map(move |&proto| LimitKey {
            port: self.port.unwrap_or(0),
            proto,
            syn_only: u8::from(self.syn_only),
        })
    }

    pub fn from_key(key: &LimitKey) -> Option<Selector> {
        Some(Selector {
            protocol: Protocol::from_number(key.proto)?,
            port: (key.port != 0).then_some(key.port),
            syn_only: key.syn_only != 0,
        })
    }
}

/// A per-protocol/port limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Override {
    #[serde(flatten)]
    pub selector: Selector,
    #[serde(flatten)]
    pub rate: Rate,
}

/// The default limit and the overrides: from the config, or as changed at run time.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub default: Option<Rate>,
    pub overrides: Vec<Override>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DatapathSettings {
    pub interfaces: Vec<String>,
    pub attach: AttachMode,
    pub mode: Mode,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub max_sources: u32,
    pub pass_malformed: bool,
    /// Whether attached interfaces poll in kernel threads (`napi = "threaded"`).
    pub threaded_napi: bool,
    pub default_limit: Option<Rate>,
    /// Drop non-first fragments instead of limiting them.
    pub drop_fragments: bool,
    /// Limit for non-first fragments; `None` follows the default limit.
    pub fragment_limit: Option<Rate>,
    pub limits: Vec<Override>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub pin_path: PathBuf,
    pub event_interval: Duration,
    pub events_per_sec: u64,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub datapath: DatapathSettings,
    pub control_socket: PathBuf,
    /// `None` when metrics are disabled.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub audit_log: PathBuf,
    /// `None`: no `[gateway]`, the datapath runs alone.
    pub gateway: Option<crate::gateway::GatewaySettings>,
    /// `None`: no `[escalation]`, nobody is banned automatically.
    pub escalation: Option<crate::escalate::EscalationSettings>,
    /// `None`: no `[fleet]`, this gateway shares nothing.
    pub fleet: Option<crate::fleet::settings::FleetSettings>,
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the problem has a place.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Why a config was rejected: every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} has {} problem(s):\n{}", path.display(), problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&src)
            .map_err(|problems| ConfigError::Invalid { path: path.to_owned(), problems })
    }

    /// Where the config at `path` keeps the pins and the state, read even when the rest of
    /// it is invalid: `secgate detach` must still work when, say, a TLS key has been
    /// removed, or a package removal would leave a program filtering traffic. Only keys the
    /// file names itself count: a misspelled key must not send a detach to the default
    /// instance's pins and state.
    pub fn locations(path: &std::path::Path) -> Result<(PathBuf, PathBuf), ConfigError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            state_dir: Option<PathBuf>,
            #[serde(default)]
            datapath: RawPins,
        }
        #[derive(Default, serde::Deserialize)]
        struct RawPins {
            pin_path: Option<PathBuf>,
        }
        let src = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            problems: vec![Problem { line: None, message }],
        };
        let raw: Raw = toml::from_str(&src).map_err(|e| invalid(e.to_string()))?;
        match (raw.state_dir, raw.datapath.pin_path) {
            (Some(state), Some(pins)) if state.is_absolute() && pins.is_absolute() => Ok((pins, state)),
            _ => Err(invalid(
                "it does not name an absolute state_dir and [datapath] pin_path itself, so the pins and state to remove are unknown: fix the config, or run `secgate detach -c` on a file holding only those two keys".into(),
            )),
        }
    }

    /// Parses and validates config text, returning every problem found.
    pub fn parse(src: &str) -> Result<Config, Vec<Problem>> {
        let by_line = |mut problems: Vec<Problem>| {
            problems.sort_by_key(|p| p.line);
            problems
        };
        let raw = unknown::deserialize(src).map_err(by_line)?;
        validate::validate(src, raw).map_err(by_line)
    }
}

impl DatapathSettings {
    /// The `SG_CONFIG` value for these settings and a run-time mode.
    pub fn datapath_config(
        &self,
        mode: Mode,
        default_limit: Option<Rate>,
        limits: &[Override],
    ) -> DatapathConfig {
        let override_protos =
            limits.iter().flat_map(|o| o.selector.keys()).fold(0u64, |acc, k| acc | (1 << k.proto));
        let flag = |on: bool, flag: u32| if on { flag } else { 0 };
        let default_rule = default_limit.map_or(RateRule::UNLIMITED, Rate::rule);
        let event_budget = RateRule::from_rate(self.events_per_sec, self.events_per_sec.max(1));
        let fragment_rule =
            self.fragment_limit(default_limit, limits).0.map_or(RateRule::UNLIMITED, Rate::rule);
        let overrides: Vec<RateRule> = limits.iter().map(|o| o.rate.rule()).collect();
        let rules = [default_rule, event_budget, fragment_rule];
        let coarse = coarse_clock_fits(rules.iter().chain(&overrides), clock::coarse_tick_ns());
        DatapathConfig {
            mode: mode.raw(),
            flags: flag(self.pass_malformed, FLAG_PASS_MALFORMED)
                | flag(self.drop_fragments, FLAG_DROP_FRAGMENTS)
                | flag(coarse, FLAG_COARSE_CLOCK),
            v4_mask: prefix_mask(u32::from(self.ipv4_prefix)),
            source_sets: 0,
            v6_mask: prefix_mask(u32::from(self.ipv6_prefix)),
            override_protos,
            default_rule,
            event_interval_ns: self.event_interval.as_nanos() as u64,
            event_budget,
            fragment_rule,
            // The maps layer fills in its table's geometry when it writes the config.
            source_seed: 0,
        }
    }

    /// The limit on non-first fragments and where it comes from: `fragment_limit`, else the
    /// default limit, else the most generous TCP or UDP limit that is not SYN-only.
    /// Fragments carry no ports, so no override can match them; without the last fallback a
    /// config of port limits alone would let a fragmented flood through unlimited. SYN and
    /// ICMP limits are left out: they are tighter than any fragmented datagram traffic needs.
    pub fn fragment_limit(
        &self,
        default: Option<Rate>,
        limits: &[Override],
    ) -> (Option<Rate>, &'static str) {
        let loosest = limits
            .iter()
            .filter(|o| !o.selector.syn_only && o.selector.protocol != Protocol::Icmp)
            .map(|o| o.rate)
            .max_by_key(|r| (r.pps, r.burst));
        match (self.fragment_limit, default, loosest) {
            (Some(r), ..) => (Some(r), "datapath.fragment_limit"),
            (None, Some(r), _) => (Some(r), "the default limit"),
            (None, None, Some(r)) => (Some(r), "the most generous TCP/UDP limit"),
            (None, None, None) => (None, "no TCP/UDP limit is set"),
        }
    }

    /// What happens to non-first fragments, for the log.
    pub fn describe_fragments(&self, default: Option<Rate>, limits: &[Override]) -> String {
        if self.drop_fragments {
            return "non-first IP fragments are dropped (fragments = \"drop\")".into();
        }
        match self.fragment_limit(default, limits) {
            (Some(r), from) => format!(
                "non-first IP fragments: {} pps, burst {} per source ({from})",
                r.pps, r.burst
            ),
            (None, why) => format!("non-first IP fragments are unlimited ({why})"),
        }
    }
}

#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod tests;
