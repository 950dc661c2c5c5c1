//! `secgate` binary: parses the command line and hands off to the library.

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{CommandFactory, Parser, error::ErrorKind};
use secgate::{
    cli::{
        AllowCommand, BanCommand, Cli, Command, LimitCommand, RemoteCommand, TokenCommand, rate,
    },
    config::{Config, ConfigError},
    control::{DEFAULT_SOCKET, client, proto::Request},
    daemon, datapath,
    lock::InstanceLock,
    render,
    state::StateFile,
};
use serde::de::DeserializeOwned;

/// mimalloc rather than glibc's allocator: a proxied request allocates and frees dozens of
/// small buffers and header maps, and glibc's malloc and free were 11.6% of the gateway's
/// CPU samples against mimalloc's 4.8% (`cargo xtask bench gateway-profile`, see the
/// README). Without mimalloc's `secure` feature (guard pages, encoded free lists): the
/// code that allocates is safe Rust, and the hardening costs throughput on every request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for invalid input (usage errors and invalid configs), as clap uses.
const EXIT_INVALID: u8 = 2;

/// How a command's reply is printed: (request, print as JSON, human renderer).
type Call = (Request, bool, fn(serde_json::Value) -> anyhow::Result<String>);

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
    let call = match cli.command {
        Command::Run(arg) => {
            let config = match load_config(&arg.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(daemon::run(&arg.config, config, cli.socket))?;
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
        Command::Detach(arg) => return detach(&arg.config),
        Command::Token(cmd) => return token(cmd),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "secgate", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { dir } => {
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Remote(RemoteCommand::Stats(a)) if a.watch => return watch(&socket),
        Command::Trace(a) => return trace(&socket, &a),
        Command::Remote(remote) => request(remote),
    };
    let (req, json, show) = call;
    let data = client::call(&socket, &req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        println!("{}", show(data)?.trim_end_matches('\n'));
    }
    Ok(ExitCode::SUCCESS)
}

/// `token new|hash`: local, no daemon involved; a bad id or key exits with status 2.
fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let printed = match cmd {
        TokenCommand::New { id, roles, argon2, json } => {
            secgate::token::new(id.as_deref(), &roles, argon2).map(|k| {
                if json {
                    serde_json::to_string_pretty(&k).expect("serializes")
                } else {
                    secgate::token::render(&k)
                }
            })
        }
        TokenCommand::Hash { argon2 } => {
            let mut key = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut key)
                .context("reading the key from stdin")?;
            secgate::token::hash(&key, argon2)
        }
    };
    match printed {
        Ok(text) => {
            println!("{}", text.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_INVALID))
        }
    }
}

/// The control request for a command that talks to the daemon.
fn request(command: RemoteCommand) -> Call {
    match command {
        RemoteCommand::Status(a) => {
            (Request::Status {}, a.json, |v| Ok(render::status(&parse(v)?)))
        }
        RemoteCommand::Stats(a) => (Request::Stats {}, a.json, |v| Ok(render::stats(&parse(v)?))),
        RemoteCommand::Reload => (Request::Reload {}, false, |_| Ok("config reloaded".into())),
        RemoteCommand::Mode { mode } => {
            (Request::Mode { mode }, false, |v| Ok(format!("mode: {v}")))
        }
        RemoteCommand::Ban(BanCommand::Add { cidr, ttl, reason }) => {
            let ttl_secs = ttl.map(|t| t.as_secs_f64());
            (Request::BanAdd { cidr, ttl_secs, reason }, false, |v| Ok(render::bans(&[parse(v)?])))
        }
        RemoteCommand::Ban(BanCommand::Del { cidr }) => {
            (Request::BanDel { cidr }, false, |v| Ok(format!("removed ban {v}")))
        }
        RemoteCommand::Ban(BanCommand::List(a)) => {
            (Request::BanList {}, a.json, |v| Ok(render::bans(&parse::<Vec<_>>(v)?)))
        }
        RemoteCommand::Allow(AllowCommand::Add { cidr }) => {
            (Request::AllowAdd { cidr }, false, |v| Ok(format!("allowed {v}")))
        }
        RemoteCommand::Allow(AllowCommand::Del { cidr }) => {
            (Request::AllowDel { cidr }, false, |v| Ok(format!("removed allow entry {v}")))
        }
        RemoteCommand::Allow(AllowCommand::List(a)) => {
            (Request::AllowList {}, a.json, |v| Ok(render::nets(&parse::<Vec<_>>(v)?)))
        }
        RemoteCommand::Limit(LimitCommand::Show(a)) => {
            (Request::LimitShow {}, a.json, |v| Ok(render::limits(&parse(v)?)))
        }
        RemoteCommand::Limit(LimitCommand::Set { pps, burst, selector }) => {
            let selector = selector.selector().unwrap_or_else(|e| usage_error(&e));
            let req = Request::LimitSet { selector, rate: rate(pps, burst) };
            (req, false, |v| Ok(render::limits(&parse(v)?)))
        }
        RemoteCommand::Limit(LimitCommand::Del { selector }) => {
            let selector = selector.selector().unwrap_or_else(|e| usage_error(&e));
            (Request::LimitDel { selector }, false, |v| Ok(render::limits(&parse(v)?)))
        }
    }
}

/// Removes links, pins and the state file (threaded NAPI, if set, stays). Refused while a
/// daemon holds the instance lock.
///
/// With a config invalid elsewhere it still finds the pins and state (see
/// [`Config::locations`]) and says so, rather than leave the program attached.
fn detach(config: &Path) -> anyhow::Result<ExitCode> {
    let (pin_path, state_dir) = match Config::load(config) {
        Ok(c) => (c.datapath.pin_path, c.state_dir),
        Err(e @ ConfigError::Invalid { .. }) => {
            let (pin_path, state_dir) = match Config::locations(config) {
                Ok(l) => l,
                Err(second) => {
                    eprintln!(
                        "error: {e}\n{second}\nnothing was detached: the XDP program stays attached"
                    );
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
            };
            eprintln!(
                "warning: {e}\ndetaching anyway, with pin_path {} and state_dir {}",
                pin_path.display(),
                state_dir.display()
            );
            (pin_path, state_dir)
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let pin_path = &pin_path;
    if !pin_path.exists() && !StateFile::new(&state_dir).path().exists() {
        println!("nothing to detach: {} does not exist", pin_path.display());
        return Ok(ExitCode::SUCCESS);
    }
    datapath::prepare(pin_path)?;
    let lock = InstanceLock::acquire(pin_path, &state_dir)
        .context("refusing to detach: stop the daemon first (`systemctl stop secgate`)")?;
    let detached = datapath::detach(pin_path, &lock)?;
    let state = StateFile::new(&state_dir);
    let removed = state.remove()?;
    println!("detached from {} interface(s): {}", detached.len(), detached.join(", "));
    if removed {
        println!("removed {}", state.path().display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `trace`: starts a trace, prints its lines as they come until its time is up or Ctrl-C,
/// then stops it (the daemon also ends it at its deadline, should this process die).
fn trace(socket: &Path, args: &secgate::cli::TraceArgs) -> anyhow::Result<ExitCode> {
    use secgate::{control::proto::TraceStarted, views::TraceView};
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
        signal_hook_flag(signal, &interrupted);
    }
    let start = Request::TraceStart { cidr: args.cidr, secs: args.length.as_secs_f64() };
    let started: TraceStarted = parse(client::call(socket, &start)?)?;
    eprintln!("tracing {} for {}s (Ctrl-C stops)", args.cidr, args.length.as_secs());
    let deadline = std::time::Instant::now() + args.length;
    let (mut cursor, mut shown, mut skipped, mut suppressed) = (started.cursor, 0u64, 0u64, 0);
    while std::time::Instant::now() < deadline
        && !interrupted.load(std::sync::atomic::Ordering::Relaxed)
    {
        std::thread::sleep(Duration::from_millis(200));
        let read = Request::TraceRead { id: started.id, cursor };
        let view: TraceView = parse(client::call(socket, &read)?)?;
        suppressed = view.suppressed.saturating_sub(started.suppressed);
        skipped += view.skipped;
        for line in &view.lines {
            if args.json {
                println!("{}", serde_json::to_string(line)?);
            } else {
                println!("{}", render::trace_line(line));
            }
        }
        shown += view.lines.len() as u64;
        cursor = view.cursor;
        if !view.running {
            break;
        }
    }
    let _ = client::call(socket, &Request::TraceStop { id: started.id });
    eprintln!(
        "{shown} line(s); {suppressed} held back by the kernel's rate limit (all traces), {skipped} more than a terminal should take"
    );
    Ok(ExitCode::SUCCESS)
}

/// Sets `flag` on `signal` instead of dying, so the trace is stopped on the way out.
fn signal_hook_flag(
    signal: nix::sys::signal::Signal,
    flag: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
        std::sync::OnceLock::new();
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _ = FLAG.set(flag.clone());
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_signal),
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only loads a set OnceLock and stores to an atomic.
    unsafe {
        let _ = nix::sys::signal::sigaction(signal, &action);
    }
}

/// `stats --watch`: redraws rates and top sources every second until interrupted.
fn watch(socket: &Path) -> anyhow::Result<ExitCode> {
    let mut previous = None;
    loop {
        let now = std::time::Instant::now();
        let reply = parse(client::call(socket, &Request::Stats {})?)?;
        let frame = render::watch(previous.as_ref(), &reply);
        print!("\x1b[2J\x1b[H{frame}");
        std::io::Write::flush(&mut std::io::stdout())?;
        previous = Some((now, reply));
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn parse<T: DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(v).context("unexpected reply from the daemon (is it the same version?)")
}

fn usage_error(msg: &str) -> ! {
    Cli::command().error(ErrorKind::ArgumentConflict, msg).exit()
}
