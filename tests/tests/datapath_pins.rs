//! Pinned maps from a build with another layout are refused before the program is loaded
//! against them, with a message that says what to do.

use aya::maps::{Array, MapData};
use secgate::{config::Config, datapath::Datapath, lock::InstanceLock};
use secgate_tests::privileged;

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(secgate::lock::pin_lock_file(&self.0));
    }
}

#[test]
fn stale_pinned_map_is_refused_with_advice() {
    if !privileged("stale_pinned_map_is_refused_with_advice") {
        return;
    }
    let pins = RemoveOnDrop(format!("/sys/fs/bpf/secgate-stale-{}", std::process::id()).into());
    let maps = pins.0.join("maps");
    std::fs::create_dir_all(&maps).expect("bpffs (cargo xtask setup mounts it)");
    let wrong = Array::<MapData, u64>::create(1, 0).expect("create a map");
    wrong.pin(maps.join(secgate_common::maps::CONFIG)).expect("pin it");
    let toml = format!("[datapath]\ninterfaces = [\"lo\"]\npin_path = \"{}\"\n", pins.0.display());
    let config = Config::parse(&toml).expect("valid config");
    let state = tempfile::tempdir().expect("state dir");
    let lock = InstanceLock::acquire(&pins.0, state.path()).expect("lock");
    let err = Datapath::open(&config.datapath, lock)
        .err()
        .expect("a stale pin must be refused")
        .to_string();
    assert!(err.contains("SG_CONFIG") && err.contains("another secgate version"), "{err}");
    assert!(err.contains(&maps.display().to_string()), "the message names what to remove: {err}");
}
