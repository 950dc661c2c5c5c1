//! `secgate` binary: parses the command line and hands off to the library.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory, Parser, error::ErrorKind};
use secgate::{
    cli::{AllowCommand, BanCommand, Cli, Command, LimitCommand, rate},
    config::{Config, ConfigError},
    control::{DEFAULT_SOCKET, client, proto::Request},
    daemon, datapath, render,
};
use serde::de::DeserializeOwned;

/// Exit status for invalid input (usage errors and invalid configs), as clap uses.
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SECGATE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        match e {
            ConfigError::Invalid { .. } => ExitCode::from(EXIT_INVALID),
            ConfigError::Read { .. } => ExitCode::FAILURE,
        }
    })
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let socket = cli.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into());
    let (req, json, show): (
        Request,
        bool,
        fn(serde_json::Value) -> anyhow::Result<String>,
    ) = match cli.command {
        Command::Run(arg) => {
            let config = match load_config(&arg.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(daemon::run(config, cli.socket))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::CheckConfig(arg) => {
            return Ok(match load_config(&arg.config) {
                Ok(_) => {
                    println!("{}: ok", arg.config.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            });
        }
        Command::Detach(arg) => {
            let config = match load_config(&arg.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let detached = datapath::detach(&config.datapath.pin_path)?;
            println!(
                "detached from {} interface(s): {}",
                detached.len(),
                detached.join(", ")
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Status(a) => (Request::Status {}, a.json, |v| {
            Ok(render::status(&parse(v)?))
        }),
        Command::Stats(a) => (Request::Stats {}, a.json, |v| Ok(render::stats(&parse(v)?))),
        Command::Mode { mode } => (Request::Mode { mode: mode.into() }, false, |v| {
            Ok(format!("mode: {v}"))
        }),
        Command::Ban(BanCommand::Add { cidr, ttl, reason }) => {
            let ttl_secs = ttl.map(|t| t.as_secs_f64());
            (
                Request::BanAdd {
                    cidr,
                    ttl_secs,
                    reason,
                },
                false,
                |v| Ok(render::bans(&[parse(v)?])),
            )
        }
        Command::Ban(BanCommand::Del { cidr }) => (Request::BanDel { cidr }, false, |v| {
            Ok(format!("removed ban {v}"))
        }),
        Command::Ban(BanCommand::List(a)) => (Request::BanList {}, a.json, |v| {
            Ok(render::bans(&parse::<Vec<_>>(v)?))
        }),
        Command::Allow(AllowCommand::Add { cidr }) => (Request::AllowAdd { cidr }, false, |v| {
            Ok(format!("allowed {v}"))
        }),
        Command::Allow(AllowCommand::Del { cidr }) => (Request::AllowDel { cidr }, false, |v| {
            Ok(format!("removed allow entry {v}"))
        }),
        Command::Allow(AllowCommand::List(a)) => (Request::AllowList {}, a.json, |v| {
            Ok(render::nets(&parse::<Vec<_>>(v)?))
        }),
        Command::Limit(LimitCommand::Show(a)) => (Request::LimitShow {}, a.json, |v| {
            Ok(render::limits(&parse(v)?))
        }),
        Command::Limit(LimitCommand::Set {
            pps,
            burst,
            selector,
        }) => {
            let selector = selector.selector().unwrap_or_else(|e| usage_error(&e));
            (
                Request::LimitSet {
                    selector,
                    rate: rate(pps, burst),
                },
                false,
                |v| Ok(render::limits(&parse(v)?)),
            )
        }
        Command::Limit(LimitCommand::Del { selector }) => {
            let selector = selector.selector().unwrap_or_else(|e| usage_error(&e));
            (Request::LimitDel { selector }, false, |v| {
                Ok(render::limits(&parse(v)?))
            })
        }
    };
    let data = client::call(&socket, &req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        print!("{}", show(data)?.trim_end_matches('\n'));
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

fn parse<T: DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(v).context("unexpected reply from the daemon (is it the same version?)")
}

fn usage_error(msg: &str) -> ! {
    Cli::command()
        .error(ErrorKind::ArgumentConflict, msg)
        .exit()
}
