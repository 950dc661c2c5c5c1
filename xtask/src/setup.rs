//! `cargo xtask setup`: everything a fresh machine needs, idempotently. Each step checks
//! first and only acts when something is missing, so a second run takes seconds.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::steps::{nightly_cargo, run_cmd};

/// Debian packages the tests and the daemon's operators use.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("iputils-ping", "ping"),
    ("ethtool", "ethtool"),
    ("util-linux", "nsenter"),
    ("nftables", "nft"),
    ("strace", "strace"),
    ("curl", "curl"),
    // The package test: the unit is checked with `systemd-analyze verify`, which looks up
    // its man page.
    ("systemd", "systemd-analyze"),
    ("man-db", "man"),
    // The fleet tests share bans and limits through a Redis of their own.
    ("redis-server", "redis-server"),
];
/// What `cargo xtask bench gateway` compares secgate with and loads it by: nginx, h2load,
/// fail2ban with the inotify backend it uses by default; and perf for `gateway-profile`.
const BENCH_PACKAGES: &[&str] =
    &["nginx-light", "nghttp2-client", "fail2ban", "python3-pyinotify", "linux-perf"];
/// Debian's hook that lets package scripts start services; 101 says "not now".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// The hook this writes, marked so that one left by an interrupted run is known as ours.
const OUR_POLICY: &str =
    "#!/bin/sh\n# written by cargo xtask bench while it installs packages\nexit 101\n";
/// The services the bench packages would bring up, with servers of the bench's own.
const BENCH_SERVICES: &[&str] = &["nginx", "fail2ban"];
const CARGO_DEB_VERSION: &str = "3";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_FEATURE: &str = "llvm-22";

pub fn run() -> Result<()> {
    build_and_run()?;
    cargo_deb()
}

/// What building and running secgate needs (the demo); `run` adds the packaging tools.
pub fn build_and_run() -> Result<()> {
    packages()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    eprintln!("setup: done");
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Debian packages the benchmark `what` needs beyond the tests' (none for most).
/// nginx's and fail2ban's packages would start and enable their services where an init
/// system runs, nginx on the host's port 80: the bench runs servers of its own, so their
/// scripts are told not to start them (`policy-rc.d`) for the install, and under systemd
/// they are disabled after it.
pub fn bench_packages(what: Option<&str>) -> Result<()> {
    if !matches!(what, None | Some("all" | "gateway" | "gateway-profile")) {
        return Ok(());
    }
    let missing: Vec<&str> = BENCH_PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return apt_install(&missing);
    }
    let policy = NoServiceStarts::new()?;
    apt_install(&missing)?;
    drop(policy);
    if Path::new("/run/systemd/system").exists() {
        run_cmd(Command::new("systemctl").arg("disable").args(BENCH_SERVICES))?;
    }
    Ok(())
}

/// `policy-rc.d` refusing every service start while it lives, unless the host has a policy
/// of its own (then that one rules). Removed on drop, on failure too; one an interrupted
/// run left is recognised by its text and taken over.
struct NoServiceStarts {
    ours: bool,
}

impl NoServiceStarts {
    fn new() -> Result<NoServiceStarts> {
        let found = std::fs::read_to_string(POLICY_RC_D).ok();
        let ours = found.is_none_or(|text| text == OUR_POLICY);
        if ours {
            std::fs::write(POLICY_RC_D, OUR_POLICY)
                .and_then(|()| {
                    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
                    std::fs::set_permissions(POLICY_RC_D, mode)
                })
                .with_context(|| format!("writing {POLICY_RC_D}"))?;
        }
        Ok(NoServiceStarts { ours })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.ours {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

/// Whether dpkg has `package` installed.
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

fn packages() -> Result<()> {
    let missing: Vec<&str> =
        PACKAGES.iter().filter(|(_, tool)| !have(tool)).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        eprintln!("setup: system packages present");
        return Ok(());
    }
    apt_install(&missing)
}

fn apt_install(missing: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing packages {missing:?}; run `sudo apt-get update && sudo apt-get install -y {}`",
            missing.join(" ")
        );
    }
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rustup(args: &[&str]) -> Result<String> {
    let out = Command::new("rustup")
        .args(args)
        .output()
        .context("rustup is not installed; install Rust with rustup")?;
    if !out.status.success() {
        bail!("rustup {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rust_src() -> Result<()> {
    if !rustup(&["toolchain", "list"])?.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "the nightly toolchain is missing; install it with `rustup toolchain install nightly`"
        );
    }
    if rustup(&["component", "list", "--toolchain", "nightly", "--installed"])?
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("setup: nightly rust-src present");
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("installing rust-src for nightly (needed to build core for the bpf target)")
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out =
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output()?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// cargo-deb for `cargo xtask dist`, built with the stable toolchain.
fn cargo_deb() -> Result<()> {
    let ok = || {
        Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|o| o.status.success())
    };
    if ok() {
        eprintln!("setup: cargo-deb present");
        return Ok(());
    }
    run_cmd(
        Command::new("cargo")
            .args(["install", "cargo-deb", "--locked", "--version"])
            .arg(format!("^{CARGO_DEB_VERSION}")),
    )
    .context("building cargo-deb; check network access to crates.io")?;
    if !ok() {
        bail!("cargo-deb was installed but `cargo deb` does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    })
}

/// Builds bpf-linker against the nightly toolchain's own libLLVM (no system LLVM needed).
/// The binary's rpath points at the prefix made here, so the prefix lives in a cache that
/// is named after the library and kept.
fn bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    let lib = find_libllvm(&nightly_sysroot()?.join("lib"))?;
    let soname = lib.file_name().expect("file name").to_owned();
    let prefix = home()
        .join(".cache/secgate")
        .join(soname.to_string_lossy().replace("libLLVM.so.", "llvm-"));
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir).with_context(|| format!("creating {}", libdir.display()))?;
    for name in [Path::new("libLLVM.so"), Path::new(&soname)] {
        let link = libdir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    run_cmd(
        nightly_cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", LLVM_FEATURE, "--force"])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker; check network access to crates.io")?;
    if !bpf_linker_ok() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn find_libllvm(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with("libLLVM.so.")
                    && n.to_string_lossy().contains("-rust-")
            })
        })
        .with_context(|| {
            format!("no libLLVM.so.*-rust-* in {}; reinstall the nightly toolchain", dir.display())
        })
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn bpffs() -> Result<()> {
    let out = Command::new("stat").args(["-f", "-c", "%t", "/sys/fs/bpf"]).output()?;
    let magic = i64::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 16).unwrap_or(0);
    if magic == BPF_FS_MAGIC {
        eprintln!("setup: bpffs mounted");
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "setup: bpffs not mounted (needs root: `sudo mount -t bpf bpf /sys/fs/bpf`); the daemon mounts it when it starts"
        );
        return Ok(());
    }
    run_cmd(Command::new("mount").args(["-t", "bpf", "-o", "mode=0700", "bpf", "/sys/fs/bpf"]))
}
