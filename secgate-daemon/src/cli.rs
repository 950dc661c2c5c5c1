//! Command-line interface. Values are parsed with the same functions the config uses, so a
//! bad CIDR, duration, port or rate exits with status 2 and a message naming it.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::config::{Mode, Protocol, Rate, Selector, values};

#[derive(Debug, Parser)]
#[command(
    name = "secgate",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("SECGATE_GIT_REV"), ")"),
    about = "XDP security gateway: per-source allow, deny and rate limits at the NIC"
)]
pub struct Cli {
    /// Control socket [default: /run/secgate/control.sock; `run` uses the config's [control] socket].
    #[arg(long, global = true, env = "SECGATE_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the datapath, apply the config and serve the control socket.
    Run(ConfigArg),
    /// Validate a config file and print every problem in it.
    CheckConfig(ConfigArg),
    /// Remove the pinned program links (detaching XDP), maps and saved state.
    Detach(ConfigArg),
    /// API keys for the gateway's `[[auth.api_keys]]` (works offline, no daemon needed).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print shell completions (for packaging: `secgate completions bash > …`).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (secgate.1 and one per subcommand) into DIR (for packaging).
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Stream the datapath's verdict for each packet from sources in CIDR (reason,
    /// protocol, ports, the limit that applied), at most 50 lines a second per CPU.
    Trace(TraceArgs),
    /// Commands sent to the running daemon over the control socket.
    #[command(flatten)]
    Remote(RemoteCommand),
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Show what the daemon is doing.
    Status(JsonArg),
    /// Packet and byte counters per verdict reason.
    Stats(StatsArgs),
    /// Re-read the config file and apply it (like SIGHUP); an invalid file changes nothing.
    Reload,
    /// Kernel-level bans (denylist).
    #[command(subcommand)]
    Ban(BanCommand),
    /// Sources exempt from every limit and ban.
    #[command(subcommand)]
    Allow(AllowCommand),
    /// Per-source rate limits.
    #[command(subcommand)]
    Limit(LimitCommand),
    /// Switch between dropping (enforce) and only counting (monitor).
    Mode { mode: Mode },
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[arg(value_parser = values::cidr)]
    pub cidr: IpNet,
    /// How long to trace, e.g. 10s, 5m (at most 1h); Ctrl-C stops sooner.
    #[arg(long = "for", value_parser = values::duration, default_value = "10s")]
    pub length: Duration,
    /// Print each line as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file.
    #[arg(short, long, default_value = "/etc/secgate/secgate.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Redraw every second: packets per second and drops per reason, and the top sources.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random API key, once, and the config entry holding only its hash.
    New {
        /// The key's id (the part before its first `.`) [default: a random one].
        #[arg(long)]
        id: Option<String>,
        /// Roles for the config entry; repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Hash with argon2id instead of SHA-256 (needless for these random keys; costly).
        #[arg(long)]
        argon2: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hash an API key read from standard input, for a config entry's `hash`.
    Hash {
        /// argon2id instead of SHA-256: for keys that are not random (a person chose them).
        #[arg(long)]
        argon2: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BanCommand {
    /// Ban a CIDR (or single address).
    Add {
        #[arg(value_parser = values::cidr)]
        cidr: IpNet,
        /// Lift the ban after this long, e.g. 30s, 10m, 2h (default: permanent).
        #[arg(long, value_parser = values::duration)]
        ttl: Option<Duration>,
        /// Why, for `ban list` and the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban.
    Del {
        #[arg(value_parser = values::cidr)]
        cidr: IpNet,
    },
    /// List active bans with time left.
    List(JsonArg),
}

#[derive(Debug, Subcommand)]
pub enum AllowCommand {
    Add {
        #[arg(value_parser = values::cidr)]
        cidr: IpNet,
    },
    Del {
        #[arg(value_parser = values::cidr)]
        cidr: IpNet,
    },
    List(JsonArg),
}

#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Show the default limit and the overrides.
    Show(JsonArg),
    /// Set the default limit, or an override when --proto is given.
    Set {
        /// Packets per second.
        #[arg(long, value_parser = pps_arg)]
        pps: u64,
        /// Packets allowed back to back.
        #[arg(long, value_parser = burst_arg)]
        burst: u64,
        #[command(flatten)]
        selector: SelectorArgs,
    },
    /// Remove the default limit, or an override when --proto is given.
    Del {
        #[command(flatten)]
        selector: SelectorArgs,
    },
}

#[derive(Debug, Args)]
pub struct SelectorArgs {
    /// Protocol the override applies to.
    #[arg(long)]
    pub proto: Option<Protocol>,
    /// Destination port (tcp and udp only).
    #[arg(long, requires = "proto", value_parser = port_arg)]
    pub port: Option<u16>,
    /// Only TCP SYNs (connection attempts).
    #[arg(long, requires = "proto")]
    pub syn_only: bool,
}

impl SelectorArgs {
    /// The selector, or `None` for the default limit; an impossible combination is an error.
    pub fn selector(&self) -> Result<Option<Selector>, String> {
        let Some(protocol) = self.proto else { return Ok(None) };
        let selector = Selector { protocol, port: self.port, syn_only: self.syn_only };
        match crate::config::selector_problem(&selector) {
            Some(problem) => Err(problem),
            None => Ok(Some(selector)),
        }
    }
}

pub fn rate(pps: u64, burst: u64) -> Rate {
    Rate { pps, burst }
}

fn int(s: &str) -> Result<i64, String> {
    s.trim().parse().map_err(|_| format!("{s:?} is not a whole number"))
}

fn pps_arg(s: &str) -> Result<u64, String> {
    values::pps(int(s)?)
}

fn burst_arg(s: &str) -> Result<u64, String> {
    values::burst(int(s)?)
}

fn port_arg(s: &str) -> Result<u16, String> {
    values::port(int(s)?)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_value() {
        for (args, needle) in [
            (vec!["secgate", "ban", "add", "10.0.0.1/40"], "10.0.0.1/40"),
            (vec!["secgate", "ban", "add", "10.0.0.0/8", "--ttl", "forever"], "forever"),
            (vec!["secgate", "limit", "set", "--pps", "0", "--burst", "1"], "pps 0"),
            (
                vec![
                    "secgate", "limit", "set", "--pps", "5", "--burst", "1", "--proto", "tcp",
                    "--port", "70000",
                ],
                "port 70000",
            ),
        ] {
            let err = Cli::try_parse_from(&args).expect_err("must be rejected");
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
    }
}
