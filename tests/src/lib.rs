//! Support for secgate's privileged tests: privilege checks, the XDP program under
//! `BPF_PROG_TEST_RUN`, a frame builder, model tables and network-namespace fixtures.

pub mod bare;
pub mod frames;
pub mod gateway;
pub mod harness;
pub mod metrics;
pub mod model_tables;
pub mod netns;
pub mod pinned_hosts;
pub mod redis;
pub mod service;
pub mod traffic;

/// Whether this process may load BPF programs and create namespaces.
///
/// A privileged test must never pass by not running: without root it fails, unless the run
/// opted out explicitly with `SECGATE_SKIP_PRIV=1` (`cargo xtask test --skip-privileged`),
/// and `SECGATE_REQUIRE_PRIV=1` (as in CI) overrides even that.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let env = |name| std::env::var(name).as_deref() == Ok("1");
    if env("SECGATE_SKIP_PRIV") && !env("SECGATE_REQUIRE_PRIV") {
        eprintln!("skipping {test}: needs root, and SECGATE_SKIP_PRIV=1 opted out");
        return false;
    }
    panic!(
        "{test} needs root (CAP_BPF, CAP_NET_ADMIN): run `sudo cargo xtask test`, or opt out of privileged tests with `cargo xtask test --skip-privileged`"
    );
}
