//! `cargo xtask setup|build|run|test|bench|demo|dist`: builds secgate's kernel and userspace parts and
//! installs what they need, so a fresh machine needs nothing by hand.

mod setup;
mod steps;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, test and run secgate")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces and system packages (idempotent; seconds when done).
    Setup,
    /// Build the XDP object and the daemon.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, and run `secgate` with the given arguments (default: `run -c secgate.example.toml`).
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, lint, and run every test, privileged ones included (needs root: without it
    /// they fail unless --skip-privileged opts out).
    Test {
        /// Skip `setup` (for repeated local runs).
        #[arg(long)]
        no_setup: bool,
        /// Skip the tests that need root instead of failing them (never in CI).
        #[arg(long)]
        skip_privileged: bool,
    },
    /// Run the benchmarks and print ratios against baselines measured in the same run.
    Bench {
        /// `datapath` (per-packet cost and live drop rates), `cost` (the per-packet cost
        /// alone), `live` (the live floods, both CPU arrangements, and rate accuracy alone),
        /// `split` (the live floods with the receiver on a CPU of its own alone), `bans`
        /// (service layer) or `escalation` (offence-to-ban latency through the real daemon);
        /// all when omitted.
        what: Option<String>,
    },
    /// Show secgate protecting a host: a lab of namespaces, the real daemon, scenarios
    /// checked and reported, a chart under target/demo; torn down at the end or on Ctrl-C.
    Demo {
        /// Leave the lab running (until Ctrl-C) and print commands to explore it.
        #[arg(long)]
        keep: bool,
    },
    /// Build the Debian package (binary, systemd unit, example config, man pages,
    /// completions) into target/dist.
    Dist,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => steps::build(release),
        Cmd::Run { release, args } => {
            setup::run()?;
            steps::build(release)?;
            steps::run(release, &args)
        }
        Cmd::Test { no_setup, skip_privileged } => {
            if !no_setup {
                setup::run()?;
            }
            steps::test(skip_privileged)
        }
        Cmd::Bench { what } => {
            setup::run()?;
            steps::bench(what.as_deref())
        }
        Cmd::Demo { keep } => {
            setup::build_and_run()?;
            steps::demo(keep)
        }
        Cmd::Dist => {
            setup::run()?;
            steps::dist().map(|deb| println!("{}", deb.display()))
        }
    }
}
