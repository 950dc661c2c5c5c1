//! Pinned maps from a build with another layout are refused before the program is loaded
//! against them, with a message that says what to do, unless they hold only what the daemon
//! rebuilds.

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

/// A directory of pins under bpffs, removed however the test ends.
fn pin_dir(what: &str) -> (RemoveOnDrop, std::path::PathBuf) {
    let pins = RemoveOnDrop(format!("/sys/fs/bpf/secgate-{what}-{}", std::process::id()).into());
    let maps = pins.0.join("maps");
    std::fs::create_dir_all(&maps).expect("bpffs (cargo xtask setup mounts it)");
    (pins, maps)
}

fn open(pins: &std::path::Path) -> Result<Datapath, secgate::datapath::DatapathError> {
    open_sized(pins, secgate_common::maps::DEFAULT_MAX_SOURCES)
}

fn open_sized(
    pins: &std::path::Path,
    max_sources: u32,
) -> Result<Datapath, secgate::datapath::DatapathError> {
    let toml = format!(
        "[datapath]\ninterfaces = [\"lo\"]\npin_path = \"{}\"\nmax_sources = {max_sources}\n",
        pins.display()
    );
    let config = Config::parse(&toml).expect("valid config");
    let state = tempfile::tempdir().expect("state dir");
    let lock = InstanceLock::acquire(pins, state.path()).expect("lock");
    Datapath::open(&config.datapath, lock)
}

#[test]
fn stale_pinned_map_is_refused_with_advice() {
    if !privileged("stale_pinned_map_is_refused_with_advice") {
        return;
    }
    let (pins, maps) = pin_dir("stale");
    let wrong = Array::<MapData, u64>::create(1, 0).expect("create a map");
    wrong.pin(maps.join(secgate_common::maps::LIMITS)).expect("pin it");
    let err = open(&pins.0).err().expect("a stale pin must be refused").to_string();
    assert!(err.contains("SG_LIMITS") && err.contains("another secgate version"), "{err}");
    assert!(err.contains(&maps.display().to_string()), "the message names what to remove: {err}");
}

/// What the daemon rebuilds: the config, the limiter table and the counters.
const REPLACEABLE: [&str; 4] = [
    secgate_common::maps::CONFIG,
    secgate_common::maps::SOURCES,
    secgate_common::maps::STATS,
    secgate_common::maps::OVERRIDE_PORTS,
];

/// The config, the limiter table and the counters hold nothing the daemon cannot rebuild (a
/// counter restarts from zero), so an upgrade that changes their layout replaces their pins
/// instead of asking the operator to remove every pin (and with them the bans).
#[test]
fn stale_config_limiter_and_counter_pins_are_replaced() {
    if !privileged("stale_config_limiter_and_counter_pins_are_replaced") {
        return;
    }
    let (pins, maps) = pin_dir("replace");
    drop(open(&pins.0).expect("a first start pins every map"));
    let kept = pinned_id(&maps, secgate_common::maps::DENY_V4);
    for name in REPLACEABLE {
        pin_another_layout(&maps, name);
    }
    let datapath = open(&pins.0).expect("replaceable pins are replaced");
    assert!(datapath.reused(), "the other pins are reused");
    assert!(!datapath.config_reused(), "a replaced config holds no run-time change to adopt");
    drop(datapath);
    for name in REPLACEABLE {
        let info = aya::maps::MapInfo::from_pin(maps.join(name)).expect("a new pin");
        let (key, value, _) = secgate::maps::layout(name).expect("a known map");
        assert_eq!((info.key_size(), info.value_size()), (key, value), "{name} was replaced");
    }
    assert_eq!(pinned_id(&maps, secgate_common::maps::DENY_V4), kept, "the bans' map is kept");
}

/// Counters of another layout are replaced, and the limiter table with them (the sources
/// `status` reports are counted from the buckets made); the bans' maps stay.
#[test]
fn replaced_counters_take_the_limiter_table_with_them() {
    if !privileged("replaced_counters_take_the_limiter_table_with_them") {
        return;
    }
    use secgate_common::maps::{DENY_V4, SOURCES, STATS};
    let (pins, maps) = pin_dir("stats");
    drop(open(&pins.0).expect("a first start pins every map"));
    let (table, deny) = (pinned_id(&maps, SOURCES), pinned_id(&maps, DENY_V4));
    pin_another_layout(&maps, STATS);
    drop(open(&pins.0).expect("replaceable pins are replaced"));
    assert_ne!(pinned_id(&maps, SOURCES), table, "the limiter table is made anew");
    assert_eq!(pinned_id(&maps, DENY_V4), deny, "the bans' map is kept");
    let info = aya::maps::MapInfo::from_pin(maps.join(STATS)).expect("a new pin");
    assert_eq!(info.max_entries(), secgate_common::maps::STATS_SLOTS);
    // A start killed between the two removals leaves no counters: the table goes too.
    let table = pinned_id(&maps, SOURCES);
    std::fs::remove_file(maps.join(STATS)).expect("unpin");
    drop(open(&pins.0).expect("a start without counters"));
    assert_ne!(pinned_id(&maps, SOURCES), table, "no fresh counters beside a kept table");
}

/// The override ports are derived from the rules: a start beside rules an earlier run left
/// (here with the ports' pin of another layout, as an upgrade finds it) sets each rule's
/// port bit, and clears a bit no rule holds.
#[test]
fn override_ports_are_rebuilt_from_the_pinned_rules() {
    if !privileged("override_ports_are_rebuilt_from_the_pinned_rules") {
        return;
    }
    use aya::maps::{HashMap, Map};
    use secgate_common::{
        limit::override_port_bit,
        maps::{LIMITS, LimitKey, OVERRIDE_PORTS, RateRule},
        net::IPPROTO_TCP,
    };
    let (pins, maps) = pin_dir("ports");
    drop(open(&pins.0).expect("a first start pins every map"));
    let pinned = |name: &str| MapData::from_pin(maps.join(name)).expect("pinned");
    let mut rules: HashMap<MapData, LimitKey, RateRule> =
        HashMap::try_from(Map::HashMap(pinned(LIMITS))).expect("rules");
    let key = LimitKey { port: 443, proto: IPPROTO_TCP, syn_only: 1 };
    rules.insert(key, RateRule::from_rate(10, 10), 0).expect("a rule");
    pin_another_layout(&maps, OVERRIDE_PORTS);
    drop(open(&pins.0).expect("the ports' pin is replaced"));
    let ports = |maps: &std::path::Path| -> Array<MapData, u64> {
        let data = MapData::from_pin(maps.join(OVERRIDE_PORTS)).expect("pinned");
        Array::try_from(Map::Array(data)).expect("ports")
    };
    let (word, bit) = override_port_bit(IPPROTO_TCP, 443).expect("a TCP port");
    let words = |maps: &std::path::Path| -> Vec<u64> {
        let ports = ports(maps);
        (0..secgate_common::maps::OVERRIDE_PORT_WORDS).map(|w| ports.get(&w, 0).unwrap()).collect()
    };
    let set: Vec<(usize, u64)> =
        words(&maps).into_iter().enumerate().filter(|(_, w)| *w != 0).collect();
    assert_eq!(set, [(word as usize, bit)], "443's bit, and only it");
    let (stray, stray_bit) = override_port_bit(IPPROTO_TCP, 80).expect("a TCP port");
    ports(&maps).set(stray, stray_bit, 0).expect("a stray bit");
    drop(open(&pins.0).expect("a restart"));
    assert_eq!(ports(&maps).get(&stray, 0).expect("read"), 0, "a bit without a rule is cleared");
    assert_eq!(ports(&maps).get(&word, 0).expect("read"), bit, "443's bit stays");
}

/// Puts a map of another layout in the place of `name`'s pin, as another build leaves it.
fn pin_another_layout(maps: &std::path::Path, name: &str) {
    std::fs::remove_file(maps.join(name)).expect("unpin");
    let wrong = Array::<MapData, u64>::create(1, 0).expect("create a map");
    wrong.pin(maps.join(name)).expect("pin it");
}

fn pinned_id(maps: &std::path::Path, name: &str) -> u32 {
    aya::maps::MapInfo::from_pin(maps.join(name)).expect("pinned").id()
}

/// `max_sources` applies at a restart: the limiter table (soft state) is rebuilt at the new
/// size, and the bans and config are kept.
#[test]
fn a_changed_max_sources_rebuilds_only_the_limiter_table() {
    if !privileged("a_changed_max_sources_rebuilds_only_the_limiter_table") {
        return;
    }
    use secgate_common::{maps::*, sources::sets_for};
    let (pins, maps) = pin_dir("resize");
    drop(open_sized(&pins.0, 1024).expect("first start"));
    let (table, deny, config) =
        (pinned_id(&maps, SOURCES), pinned_id(&maps, DENY_V4), pinned_id(&maps, CONFIG));
    let again = open_sized(&pins.0, 1024).expect("same size");
    assert!(again.config_reused(), "a restart keeps the config");
    drop(again);
    assert_eq!(pinned_id(&maps, SOURCES), table, "the same size keeps the table");
    drop(open_sized(&pins.0, 4096).expect("a larger table"));
    let info = aya::maps::MapInfo::from_pin(maps.join(SOURCES)).expect("pinned");
    assert_ne!(info.id(), table, "the table was rebuilt");
    assert_eq!(info.max_entries(), sets_for(4096), "at the new size");
    assert_eq!((pinned_id(&maps, DENY_V4), pinned_id(&maps, CONFIG)), (deny, config));
}
