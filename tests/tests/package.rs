//! The Debian package `cargo xtask dist` builds (`cargo xtask test` builds it before the
//! tests): it installs with dpkg, its binary runs and names the commit it was built from, its
//! unit passes `systemd-analyze verify`, its man pages and completions are where man and the
//! shells look, its example config is valid, and a purge leaves nothing of it behind while
//! the operator's own files stay.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use secgate_tests::privileged;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn package() -> PathBuf {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dist");
    std::fs::read_dir(&dist)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {}: run `cargo xtask dist` first", dist.display()))
}

/// Purges the package however the test ends, and removes what the test put in
/// `/etc/secgate` (which did not exist before it).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "secgate"]);
        let _ = std::fs::remove_dir_all("/etc/secgate");
    }
}

#[test]
fn debian_package_installs_runs_and_purges_cleanly() {
    if !privileged("debian_package_installs_runs_and_purges_cleanly") {
        return;
    }
    let deb = package();
    assert!(
        !Path::new("/etc/secgate").exists(),
        "/etc/secgate exists on this machine; move it aside before running this test"
    );
    assert!(
        !run("dpkg", &["-s", "secgate"]).status.success(),
        "a secgate package is already installed on this machine; purge it before running this test"
    );
    let installed = Installed;
    ok("dpkg", &["-i", deb.to_str().expect("utf-8 path")]);
    use std::os::unix::fs::PermissionsExt as _;
    let etc = std::fs::metadata("/etc/secgate").expect("the package makes /etc/secgate");
    assert_eq!(etc.permissions().mode() & 0o777, 0o700, "root's alone");
    ok("dpkg", &["-i", deb.to_str().expect("utf-8 path")]);
    let files: Vec<PathBuf> =
        ok("dpkg", &["-L", "secgate"]).lines().map(PathBuf::from).filter(|p| p.is_file()).collect();

    let version = ok("/usr/bin/secgate", &["--version"]);
    let head = ok("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short=12", "HEAD"]);
    assert_eq!(version.trim(), format!("secgate 0.1.0 (git {})", head.trim()));

    let unit = "/lib/systemd/system/secgate.service";
    let verify = run("systemd-analyze", &["verify", unit]);
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {verify:?}"
    );

    for page in ["secgate", "secgate-ban", "secgate-run"] {
        ok("man", &["-w", page]);
    }
    for (file, marker) in [
        ("/usr/share/bash-completion/completions/secgate", "_secgate()"),
        ("/usr/share/zsh/vendor-completions/_secgate", "#compdef secgate"),
        ("/usr/share/fish/vendor_completions.d/secgate.fish", "complete -c secgate"),
    ] {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(text.contains(marker) && text.contains("ban"), "{file} completes subcommands");
    }
    ok("/usr/bin/secgate", &["check-config", "-c", "/usr/share/doc/secgate/secgate.example.toml"]);

    // What an operator and the daemon leave: a config with its TLS key, saved state.
    std::fs::create_dir_all("/etc/secgate/tls").expect("config dir");
    std::fs::write("/etc/secgate/tls/key.pem", "operator's key").expect("key");
    std::fs::create_dir_all("/var/lib/secgate").expect("state dir");
    std::fs::write("/var/lib/secgate/state.json", "{}").expect("state");

    ok("dpkg", &["--purge", "secgate"]);
    assert!(!run("dpkg", &["-s", "secgate"]).status.success(), "purged");
    for f in &files {
        assert!(!f.exists(), "{} is left after purge", f.display());
    }
    assert!(!Path::new("/var/lib/secgate").exists(), "purge removes the daemon's state");
    assert!(Path::new("/etc/secgate/tls/key.pem").exists(), "purge keeps the operator's files");
    drop(installed);
}
