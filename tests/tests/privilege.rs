//! A privileged test never passes by not running: without root it fails, unless the run
//! opted out explicitly, and CI's `SECGATE_REQUIRE_PRIV=1` overrides even that.

use secgate_tests::privileged;

/// Run as an unprivileged user by the test below; on its own it checks that a test is only
/// told to go ahead as root.
#[test]
fn probe() {
    if privileged("probe") {
        assert!(nix::unistd::geteuid().is_root(), "privileged() said yes without root");
    }
}

/// Runs this test binary's `probe` as uid 65534 with `env`; returns (passed, output). The
/// binary is copied where that user can run it, wherever the checkout is.
fn probe_as_nobody(env: &[(&str, &str)]) -> (bool, String) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("probe");
    std::fs::copy(std::env::current_exe().expect("test binary"), &exe)
        .expect("copy the test binary");
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(exe)
        .args(["--exact", "probe", "--nocapture"])
        .env_remove("SECGATE_REQUIRE_PRIV")
        .env_remove("SECGATE_SKIP_PRIV")
        .envs(env.iter().copied());
    let out = cmd.output().expect("setpriv (util-linux)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_privileged_test_without_root_fails_unless_opted_out() {
    // Regression: without root, privileged tests skipped silently and passed unless
    // SECGATE_REQUIRE_PRIV=1 was set.
    if !privileged("a_privileged_test_without_root_fails_unless_opted_out") {
        return;
    }
    let (passed, out) = probe_as_nobody(&[]);
    assert!(!passed && out.contains("needs root") && out.contains("--skip-privileged"), "{out}");
    let (passed, out) = probe_as_nobody(&[("SECGATE_SKIP_PRIV", "1")]);
    assert!(passed && out.contains("skipping probe"), "an explicit opt-out skips: {out}");
    let (passed, out) =
        probe_as_nobody(&[("SECGATE_SKIP_PRIV", "1"), ("SECGATE_REQUIRE_PRIV", "1")]);
    assert!(!passed, "CI's requirement overrides the opt-out: {out}");
}
