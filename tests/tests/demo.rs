//! `cargo xtask demo`'s program: every scenario OK twice in a row with nothing left between
//! runs, and a Ctrl-C while the lab is built or during the flood leaves no namespace, pin,
//! link, file or process.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use secgate_tests::privileged;

const DEMO: &str = env!("CARGO_BIN_EXE_secgate-demo");

/// What a demo run could leave behind: namespaces, pins (maps and links live there),
/// temporary directories, processes.
fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    };
    for ns in names("/run/netns") {
        if ns.contains("-demo-") {
            found.push(format!("namespace {ns}"));
        }
    }
    for pin in names("/sys/fs/bpf") {
        if pin.contains("-demo-") {
            found.push(format!("pin /sys/fs/bpf/{pin}"));
        }
    }
    for tmp in names(&std::env::temp_dir().to_string_lossy()) {
        if tmp.contains("-demo-") {
            found.push(format!("temporary {tmp}"));
        }
    }
    for pid in names("/proc").iter().filter(|p| p.parse::<u32>().is_ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("secgate-e2e-demo-") {
            found.push(format!("process {pid}: {cmdline}"));
        }
    }
    found
}

#[test]
fn demo_passes_twice_and_ctrl_c_leaves_nothing() {
    if !privileged("demo_passes_twice_and_ctrl_c_leaves_nothing") {
        return;
    }
    let out_dir = tempfile::tempdir().expect("tmp");
    for run in 1..=2 {
        let out = Command::new(DEMO).arg("--out").arg(out_dir.path()).output().expect("demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.matches("\n  OK   ").count(),
            8,
            "run {run}: every scenario OK:\n{stdout}"
        );
        assert!(!stdout.contains("FAIL"), "run {run}:\n{stdout}");
        let chart = std::fs::read_to_string(out_dir.path().join("sources.svg")).expect("chart");
        assert_eq!(chart.matches("<polyline").count(), 6, "passed and dropped for three sources");
        assert_eq!(leftovers(), Vec::<String>::new(), "after run {run}");
    }

    // Ctrl-C as a terminal sends it: to the whole process group, the daemon included;
    // while the lab is being built, and during the flood.
    interrupt_at(out_dir.path(), "building the lab", Duration::ZERO);
    interrupt_at(out_dir.path(), "flood:", Duration::from_millis(500));
}

/// Runs the demo, sends SIGINT to its process group once it prints `cue` (and `after` more),
/// and checks that it says so, exits 130 and leaves nothing.
fn interrupt_at(out_dir: &std::path::Path, cue: &str, after: Duration) {
    let mut demo = Command::new(DEMO)
        .arg("--out")
        .arg(out_dir)
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("demo");
    let pgid = nix::unistd::Pid::from_raw(demo.id() as i32);
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let mut seen = String::new();
    let cued = lines.by_ref().map_while(Result::ok).any(|l| {
        seen.push_str(&l);
        seen.push('\n');
        l.contains(cue)
    });
    assert!(cued, "the demo reached {cue:?}:\n{seen}");
    std::thread::sleep(after);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = demo.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop within 60 s of Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: String = lines.map_while(Result::ok).collect::<Vec<_>>().join("\n");
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(rest.contains("interrupted: the lab is gone"), "{rest}");
    assert_eq!(leftovers(), Vec::<String>::new(), "after Ctrl-C at {cue:?}");
}
