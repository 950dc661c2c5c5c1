//! `cargo xtask demo`: secgate protecting a host, in a lab of network namespaces made for
//! the run. A client and a flooder (one namespace) and an attacker (another) reach a
//! gateway namespace whose veths carry the XDP program; the real `secgate run` terminates
//! TLS there and proxies to a real upstream. Each scenario is checked and reported with the
//! counters that show it, a chart goes to `OUT/sources.svg`, and everything is torn down at
//! the end, on failure, and on Ctrl-C. Exits non-zero if any scenario misbehaved.
//!
//! `--keep` leaves the lab up (until Ctrl-C) and prints commands to explore it.

mod chart;
mod counters;
mod scenarios;

use std::{
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use secgate_tests::{
    gateway::{Gw, HOST, Opts, PORT},
    netns::{NetNs, addr::GW_V4, secgate_bin},
};

use crate::{
    counters::{Counters, SOURCES},
    scenarios::{BAN_TTL_SECS, FAILED_LOGINS, FLOOD_PORT, FLOOD_PPS, Outcome},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Whether Ctrl-C (or SIGTERM) asked the demo to stop: it then tears the lab down.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub fn progress(line: &str) {
    println!("  … {line}");
    let _ = std::io::stdout().flush();
}

/// The running lab. The sampler is declared (and so dropped) first: it must stop before
/// the namespaces it reads go.
pub struct Lab {
    pub counters: Counters,
    pub gw: Gw,
}

impl Lab {
    pub fn attacker(&self) -> &NetNs {
        self.gw.neighbour.as_ref().expect("the attacker's namespace")
    }
}

fn start() -> Lab {
    let escalation = format!(
        "auth_failures = {FAILED_LOGINS}\nwindow = \"1m\"\nban_ttl = \"{BAN_TTL_SECS}s\"\nmax_ttl = \"1m\""
    );
    let datapath: &'static str = Box::leak(
        format!(
            "[[datapath.limits]]\nprotocol = \"udp\"\nport = {FLOOD_PORT}\npps = {FLOOD_PPS}\nburst = 100\n"
        )
        .into_boxed_str(),
    );
    let gw = Gw::start(
        "demo",
        Opts {
            escalation: Some(escalation),
            neighbour: true,
            datapath_extra: datapath,
            ..Opts::default()
        },
    );
    let senders = vec![
        (gw.topo.client.name.clone(), vec![SOURCES[0], SOURCES[1]]),
        (gw.neighbour.as_ref().expect("attacker").name.clone(), vec![SOURCES[2]]),
    ];
    let counters = Counters::start(senders, gw.topo.gw.name.clone());
    Lab { gw, counters }
}

/// Runs every scenario, printing each as it ends; returns how many misbehaved, with the
/// time each began (for the chart).
fn run(lab: &Lab) -> (usize, Vec<(f64, String)>) {
    let t0 = lab.counters.started();
    let mut failed = 0;
    let mut marks = Vec::new();
    for (i, (name, label, scenario)) in scenarios::ALL.iter().enumerate() {
        if interrupted() {
            break;
        }
        println!("[{}/{}] {name}", i + 1, scenarios::ALL.len());
        if let Some(label) = label {
            marks.push((t0.elapsed().as_secs_f64(), (*label).to_owned()));
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(lab)))
            .unwrap_or_else(|e| Outcome {
                expected: "-".into(),
                observed: "failed".into(),
                proof: e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default(),
                ok: false,
            });
        let verdict = if outcome.ok && !interrupted() { "OK" } else { "FAIL" };
        failed += usize::from(verdict == "FAIL");
        println!(
            "  {verdict:<4} expected {}, observed {}\n       {}",
            outcome.expected, outcome.observed, outcome.proof
        );
    }
    (failed, marks)
}

/// The lab's directories (keys, config, logs) under the temporary directory, should a
/// failure have left them for debugging: a demo leaves nothing.
fn remove_files() {
    let pid = std::process::id();
    for dir in [format!("secgate-gw-demo-{pid}"), format!("secgate-e2e-demo-{pid}")] {
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(dir));
    }
}

fn explore(lab: &Lab) {
    let gw = &lab.gw;
    let bin = format!("sudo {}", secgate_bin().display());
    let sock = gw.daemon.socket.display();
    let inside = |ns: &str| format!("sudo nsenter --net=/run/netns/{ns} --");
    println!("\nThe lab is up; explore it from another terminal (Ctrl-C here tears it down):");
    println!("  {} status", format_args!("{bin} --socket {sock}"));
    println!("  {} stats --watch", format_args!("{bin} --socket {sock}"));
    println!("  {} ban list", format_args!("{bin} --socket {sock}"));
    println!("  {} trace 198.18.0.0/16 --for 30s", format_args!("{bin} --socket {sock}"));
    println!(
        "  {} curl --cacert {} --resolve {HOST}:{PORT}:{GW_V4} https://{HOST}:{PORT}/admin/demo -H 'X-Api-Key: {}'",
        inside(&gw.topo.client.name),
        gw.pki.ca_pem.display(),
        gw.key("admin-key")
    );
    println!("  config: {}", gw.daemon.config.display());
    println!("  daemon log: {}", gw.daemon.log.display());
    println!("  audit log: {}", gw.daemon.audit.display());
    while !interrupted() {
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() -> ExitCode {
    let mut out = PathBuf::from("target/demo");
    let mut keep = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--keep" => keep = true,
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            other => {
                eprintln!("unknown argument {other:?}: expected --keep or --out DIR");
                return ExitCode::from(2);
            }
        }
    }
    // A closed terminal (SIGHUP) or Ctrl-\\ must tear the lab down too.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    // A scenario cut short by Ctrl-C fails loudly (its daemon got the signal too); the
    // demo says it was interrupted instead.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !interrupted() {
            report(info);
        }
    }));
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the demo creates network namespaces and loads XDP: run it as root");
        return ExitCode::FAILURE;
    }
    println!("secgate demo: building the lab (namespaces, veths, certificates, daemon, upstream)");
    // Whatever `start` made before it failed is torn down by unwinding; its files too.
    let Ok(lab) = std::panic::catch_unwind(start) else {
        remove_files();
        return if interrupted() {
            println!("interrupted: the lab is gone");
            ExitCode::from(130)
        } else {
            println!("building the lab failed (above)");
            ExitCode::FAILURE
        };
    };
    let (failed, marks) = run(&lab);
    let samples = lab.counters.samples();
    if let Err(e) = std::fs::create_dir_all(&out)
        .and_then(|()| std::fs::write(out.join("sources.svg"), chart::svg(&samples, &marks)))
    {
        eprintln!("writing the chart into {}: {e}", out.display());
    } else {
        println!("chart: {}", out.join("sources.svg").display());
    }
    // Ctrl-C is how a kept lab ends, not an interruption of the scenarios.
    let stopped = interrupted();
    if keep && !stopped {
        explore(&lab);
    }
    println!("tearing the lab down");
    // A second Ctrl-C must not cut the teardown short (it would also reach the `ip` and
    // `secgate detach` it runs).
    for signal in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP] {
        // SAFETY: ignoring a signal has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    drop(lab);
    remove_files();
    match (stopped, failed) {
        (true, _) => {
            println!("interrupted: the lab is gone");
            ExitCode::from(130)
        }
        (false, 0) => {
            println!("every scenario OK");
            ExitCode::SUCCESS
        }
        (false, n) => {
            println!("{n} scenario(s) misbehaved");
            ExitCode::FAILURE
        }
    }
}
