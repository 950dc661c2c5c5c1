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
    // The privileged tests start the real `secgate` binary, so it must be built first.
    build(false)?;
    let mut privileged = cargo();
    privileged.args(["test", "-p", "secgate-tests", "--", "--test-threads=1"]);
    if skip_privileged {
        privileged.env("SECGATE_SKIP_PRIV", "1");
    }
    run_cmd(&mut privileged)
}

pub fn bench(what: Option<&str>) -> Result<()> {
    // The escalation benchmark runs the real daemon, built as it ships.
    build(true)?;
    run_cmd(
        cargo()
            .args(["run", "--release", "-p", "secgate-tests", "--bin", "secgate-bench", "--"])
            .args(what),
    )
}
