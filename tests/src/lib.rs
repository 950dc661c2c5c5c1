//! Support for secgate's privileged tests: privilege checks, the XDP program under
//! `BPF_PROG_TEST_RUN`, a frame builder, model tables and network-namespace fixtures.

pub mod bare;
pub mod frames;
pub mod harness;
pub mod model_tables;
pub mod netns;
pub mod traffic;

/// Whether this process may load BPF programs and create namespaces.
///
/// Without privileges the test is skipped with a notice, unless `SECGATE_REQUIRE_PRIV=1`
/// (as in CI), where it fails: a privileged test must never pass by not running.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if root {
        return true;
    }
    if std::env::var("SECGATE_REQUIRE_PRIV").as_deref() == Ok("1") {
        panic!(
            "{test} needs root (CAP_BPF, CAP_NET_ADMIN) and SECGATE_REQUIRE_PRIV=1 forbids skipping"
        );
    }
    eprintln!("skipping {test}: needs root; run `sudo cargo xtask test`");
    false
}
