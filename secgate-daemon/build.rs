//! Builds the XDP program with the nightly toolchain and bpf-linker (`cargo xtask setup`
//! installs both) so that the daemon embeds the exact object built from this tree.
//!
//! Hand-rolled rather than `aya_build::build_ebpf`: that helper replaces RUSTFLAGS wholesale,
//! and the limiter needs `-C target-cpu=v3` for its 64-bit compare-and-swap.
use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

const EBPF_CRATE: &str = "secgate-ebpf";
const TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("..").join(EBPF_CRATE).canonicalize()?;
    let common_dir = manifest_dir.join("..").join("secgate-common").canonicalize()?;
    for dir in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out_dir.join("ebpf-target");
    let rustflags = ["-Ctarget-cpu=v3", "-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f");
    let status = Command::new("rustup")
        .args(["run", "nightly", "cargo", "build", "--release", "--package", EBPF_CRATE])
        .args(["--target", TARGET, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .status()
        .context("could not run `rustup run nightly cargo`; run `cargo xtask setup`")?;
    if !status.success() {
        bail!(
            "building the XDP program failed ({status}); run `cargo xtask setup` to install the nightly toolchain, rust-src and bpf-linker"
        );
    }
    let built = target_dir.join(TARGET).join("release").join("secgate");
    std::fs::copy(&built, out_dir.join("secgate"))
        .with_context(|| format!("copying {}", built.display()))?;
    git_revision(&manifest_dir);
    Ok(())
}

/// `SECGATE_GIT_REV` for `secgate --version`: the commit built, or `unknown` outside a git
/// checkout (a source tarball). Rebuilt when HEAD moves.
fn git_revision(manifest_dir: &std::path::Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(manifest_dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let rev = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    for file in ["HEAD", "refs/heads"] {
        if let Some(path) = git(&["rev-parse", "--git-path", file]) {
            println!("cargo:rerun-if-changed={}", manifest_dir.join(path).display());
        }
    }
    println!("cargo:rustc-env=SECGATE_GIT_REV={rev}");
}
