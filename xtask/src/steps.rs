//! Build, test, run and bench steps.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Runs a command in the workspace root, failing with the command line if it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    eprintln!("+ {line}");
    let status =
        cmd.current_dir(root()).status().with_context(|| format!("could not start {line}"))?;
    if !status.success() {
        bail!("{line} failed ({status})");
    }
    Ok(())
}

/// `cargo` of the nightly toolchain (the bpf target needs it), whatever invoked xtask.
pub fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]).env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO");
    cmd
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "secgate-daemon", "-p", "secgate-common"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)
}

pub fn run(release: bool, args: &[String]) -> Result<()> {
    let bin = root().join("target").join(if release { "release" } else { "debug" }).join("secgate");
    let default =
        ["run".to_string(), "-c".into(), root().join("secgate.example.toml").display().to_string()];
    let args = if args.is_empty() { &default[..] } else { args };
    run_cmd(Command::new(bin).args(args))
}

pub fn test(skip_privileged: bool) -> Result<()> {
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "secgate-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_cmd(
        nightly_cargo()
            .args(["clippy", "-p", "secgate-ebpf", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--release", "--", "-D", "warnings"])
            .env("CARGO_TARGET_DIR", root().join("target").join("bpf-clippy")),
    )?;
    run_cmd(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "secgate-ebpf",
        "--exclude",
        "secgate-tests",
    ]))?;
    // The privileged tests start the real `secgate` binary, so it must be built first, and
    // one of them installs the package.
    build(false)?;
    dist()?;
    let mut privileged = cargo();
    privileged.args(["test", "-p", "secgate-tests", "--", "--test-threads=1"]);
    if skip_privileged {
        privileged.env("SECGATE_SKIP_PRIV", "1");
    }
    run_cmd(&mut privileged)
}

/// Builds the daemon and the demo, then becomes the demo (exec), so Ctrl-C reaches the
/// demo alone among the builders and it tears its lab down before the shell returns.
pub fn demo(keep: bool) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    build(false)?;
    run_cmd(cargo().args(["build", "-p", "secgate-tests", "--bin", "secgate-demo"]))?;
    let mut cmd = Command::new(root().join("target/debug/secgate-demo"));
    cmd.arg("--out").arg(root().join("target/demo")).current_dir(root());
    if keep {
        cmd.arg("--keep");
    }
    Err(cmd.exec()).context("starting target/debug/secgate-demo")
}

/// Builds the release binary, has it write its man pages and completions (clap_mangen,
/// clap_complete) beside it, and packs them with cargo-deb into target/dist; returns the
/// package.
pub fn dist() -> Result<PathBuf> {
    build(true)?;
    let bin = root().join("target/release/secgate");
    let release = root().join("target/release");
    let dist = root().join("target/dist");
    let (man, completions) = (release.join("man"), release.join("completions"));
    for dir in [&dist, &man, &completions] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    run_cmd(Command::new(&bin).arg("man").arg(&man))?;
    for (shell, file) in [("bash", "secgate.bash"), ("zsh", "_secgate"), ("fish", "secgate.fish")] {
        let out = Command::new(&bin).args(["completions", shell]).output()?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!("secgate completions {shell} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(completions.join(file), out.stdout)?;
    }
    run_cmd(cargo().args(["deb", "-p", "secgate-daemon", "--no-build", "--output"]).arg(&dist))?;
    let deb = std::fs::read_dir(&dist)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("cargo-deb wrote no .deb into target/dist")?;
    Ok(deb)
}

pub fn bench(what: Option<&str>) -> Result<()> {
    // The escalation benchmark runs the real daemon, built as it ships.
    build(true)?;
    crate::setup::bench_packages(what)?;
    run_cmd(
        cargo()
            .args(["run", "--release", "-p", "secgate-tests", "--bin", "secgate-bench", "--"])
            .args(what),
    )
}
