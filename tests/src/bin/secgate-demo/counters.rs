//! Packets sent and passed per source, counted outside secgate: nftables counters on each
//! sender's output (sent) and on the gateway's prerouting (passed: what XDP let into the
//! stack). Dropped is the difference. Sampled four times a second for the chart.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use std::process::Command;

/// The sources the demo follows: (name in the report, address).
pub const SOURCES: [(&str, &str); 3] =
    [("client", "198.18.0.2"), ("flooder", "198.18.0.3"), ("attacker", "198.18.1.2")];

const TABLE: &str = "secgate_demo";
pub const PERIOD: Duration = Duration::from_millis(250);
/// Samples kept: an hour's worth, for a lab left up with `--keep`.
const KEEP: usize = 4 * 3600;

/// One sample: seconds since the start, and per source (sent, passed) so far.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: f64,
    pub counts: BTreeMap<&'static str, (u64, u64)>,
}

/// `nft` in the namespace named `ns`.
fn nft(ns: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).arg("--").arg("nft");
    cmd
}

/// Adds a counter per source to `ns` on `hook` ("output" or "prerouting").
fn install(ns: &str, hook: &str, prefix: &str, sources: &[(&str, &str)]) {
    let mut rules = format!(
        "table inet {TABLE} {{\n chain c {{ type filter hook {hook} priority -400; policy accept;\n"
    );
    for (name, addr) in sources {
        rules.push_str(&format!("  ip saddr {addr} counter name {prefix}_{name}\n"));
    }
    rules.push_str(" }\n");
    for (name, _) in sources {
        rules.push_str(&format!(" counter {prefix}_{name} {{ }}\n"));
    }
    rules.push_str("}\n");
    let file = std::env::temp_dir().join(format!("secgate-demo-nft-{}", std::process::id()));
    std::fs::write(&file, rules).expect("nft rules file");
    let out = nft(ns).arg("-f").arg(&file).output().expect("nft");
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
}

/// `prefix_name` → packets, from `nft -j list counters`.
fn read(ns: &str) -> BTreeMap<String, u64> {
    let out = nft(ns).args(["-j", "list", "counters", "table", "inet", TABLE]).output();
    let Ok(out) = out else { return BTreeMap::new() };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let c = &o["counter"];
            Some((c["name"].as_str()?.to_owned(), c["packets"].as_u64()?))
        })
        .collect()
}

/// The counters of every source, sampled on a thread until dropped.
pub struct Counters {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    start: Instant,
}

impl Counters {
    /// `senders`: each namespace (by name) sources send from, with its sources; `gw`: the
    /// gateway's namespace.
    pub fn start(
        senders: Vec<(String, Vec<(&'static str, &'static str)>)>,
        gw: String,
    ) -> Counters {
        for (ns, sources) in &senders {
            install(ns, "output", "sent", sources);
        }
        install(&gw, "prerouting", "passed", &SOURCES);
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let start = Instant::now();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                // Senders first: a packet in flight then counts as passed early rather than as
                // dropped for one sample.
                let mut all = BTreeMap::new();
                for (ns, _) in &senders {
                    all.extend(read(ns));
                }
                all.extend(read(&gw));
                let counts = SOURCES
                    .iter()
                    .map(|(name, _)| {
                        let get = |p: &str| all.get(&format!("{p}_{name}")).copied().unwrap_or(0);
                        (*name, (get("sent"), get("passed")))
                    })
                    .collect();
                let mut kept = s.lock().expect("samples");
                if kept.len() == KEEP {
                    kept.remove(0);
                }
                kept.push(Sample { at: start.elapsed().as_secs_f64(), counts });
                drop(kept);
                std::thread::sleep(PERIOD);
            }
        });
        Counters { samples, stop, thread: Some(thread), start }
    }

    /// When sampling began: time zero on the chart.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// The latest (sent, passed) of `source`.
    pub fn now(&self, source: &str) -> (u64, u64) {
        self.samples
            .lock()
            .expect("samples")
            .last()
            .and_then(|s| s.counts.get(source).copied())
            .unwrap_or((0, 0))
    }

    /// Waits one sampling period so `now` includes what was just sent.
    pub fn settle(&self) {
        std::thread::sleep(PERIOD * 2);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples").clone()
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
