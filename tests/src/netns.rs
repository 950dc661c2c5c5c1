//! Network-namespace fixtures: a client and a gateway joined by a veth pair, with RAII
//! teardown that runs even when a test panics. Only 198.18.0.0/15 and fd00::/8 are used.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// Runs a command and panics with its output if it fails.
pub fn sh(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> NetNs {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh("ip", &["netns", "add", name]);
        let ns = NetNs { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS…`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// The MAC address of `dev`, as `ip` prints it.
    pub fn mac(&self, dev: &str) -> String {
        let out = self.ip(&["-br", "link", "show", dev]);
        String::from_utf8_lossy(&out.stdout).split_whitespace().nth(2).expect("mac").to_string()
    }

    /// A command run inside the namespace (network only: `/sys/fs/bpf` stays the host's).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets created there stay in
    /// the namespace wherever they are used afterwards.
    pub fn within<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let file = File::open(self.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Addresses of the two hosts.
pub mod addr {
    pub const GW_V4: &str = "198.18.0.1";
    pub const CLIENT_V4: &str = "198.18.0.2";
    pub const OTHER_V4: &str = "198.18.0.3";
    pub const GW_V6: &str = "fd00:18::1";
    pub const CLIENT_V6: &str = "fd00:18::2";
    /// In the same /64 as `CLIENT_V6`.
    pub const CLIENT_V6_SAME_64: &str = "fd00:18::3";
    /// In another /64 than `CLIENT_V6`.
    pub const OTHER_V6: &str = "fd00:19::2";
    /// The neighbour namespace's address, and the gateway's on that link.
    pub const NEIGHBOUR_V4: &str = "198.18.1.2";
    pub const GW_NEIGHBOUR_V4: &str = "198.18.1.1";
    pub const GW_V6_OTHER: &str = "fd00:19::1";
}

/// client ↔ veth ↔ gateway. The veth has two queues each way so flows spread over CPUs, and
/// neighbours are static so banning a source never blocks address resolution.
pub struct Topology {
    pub client: NetNs,
    pub gw: NetNs,
    pub gw_if: String,
    pub client_if: String,
}

impl Topology {
    pub fn new(tag: &str) -> Topology {
        Topology::with_interfaces(tag, "sg-c", "sg-g")
    }

    /// With the veth's ends named `client_if` and `gw_if`, for a test that must tell its
    /// interfaces from other namespaces' (their kernel threads share one name space).
    pub fn with_interfaces(tag: &str, client_if: &str, gw_if: &str) -> Topology {
        let id = std::process::id() % 100_000;
        let client = NetNs::new(&format!("sgc-{tag}-{id}"));
        let gw = NetNs::new(&format!("sgg-{tag}-{id}"));
        let (client_if, gw_if) = (client_if.to_string(), gw_if.to_string());
        let t = Topology { client, gw, gw_if, client_if };
        t.create_pair();
        t
    }

    fn create_pair(&self) {
        self.client.ip(&[
            "link",
            "add",
            &self.client_if,
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "name",
            &self.gw_if,
            "netns",
            &self.gw.name,
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
        ]);
        self.configure();
    }

    /// The gateway end's MAC address, as bytes (the destination of frames made by hand).
    pub fn gw_mac(&self) -> [u8; 6] {
        let text = self.gw.mac(&self.gw_if);
        let bytes: Vec<u8> =
            text.split(':').map(|b| u8::from_str_radix(b, 16).expect("a MAC address")).collect();
        bytes.try_into().expect("six bytes")
    }

    /// Gives the client `addrs` (in `net`, e.g. `198.18.4.0/22`), and the gateway a route
    /// back and a static neighbour entry for each (as for the topology's own clients:
    /// resolving a few hundred new neighbours at once loses some of the answers).
    pub fn add_client_addresses(&self, net: &str, addrs: &[std::net::Ipv4Addr]) {
        let len = net.split_once('/').map(|(_, l)| l).expect("a prefix length");
        let client_if = &self.client_if;
        let mac = self.client.mac(client_if);
        let addrs_batch: String =
            addrs.iter().map(|a| format!("addr add {a}/{len} dev {client_if}\n")).collect();
        let neighs: String = addrs
            .iter()
            .map(|a| format!("neigh replace {a} lladdr {mac} dev {} nud permanent\n", self.gw_if))
            .collect();
        self.gw.ip(&["route", "add", net, "dev", &self.gw_if]);
        for (ns, lines) in [(&self.client, addrs_batch), (&self.gw, neighs)] {
            let batch = tempfile::NamedTempFile::new().expect("batch file");
            std::fs::write(batch.path(), lines).expect("batch file");
            ns.ip(&["-batch", batch.path().to_str().expect("utf-8 path")]);
        }
    }

    /// Deletes the veth pair, which detaches whatever XDP program was on it.
    pub fn delete_pair(&self) {
        self.client.ip(&["link", "del", &self.client_if]);
    }

    /// Creates the veth pair again under the same names and addresses (new interface
    /// indexes), as a re-made interface or a reloaded driver would.
    pub fn recreate_pair(&self) {
        self.create_pair();
    }

    /// The id of the XDP program on `dev` in the gateway namespace, if any.
    pub fn gw_xdp_prog(&self, dev: &str) -> Option<u64> {
        let out = self.gw.ip(&["-j", "-d", "link", "show", dev]);
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        links[0]["xdp"]["prog"]["id"].as_u64()
    }

    /// Adds another veth pair (no addresses) between the two namespaces; returns the
    /// gateway-side name.
    pub fn add_link(&self, client_if: &str, gw_if: &str) -> String {
        self.client.ip(&[
            "link",
            "add",
            client_if,
            "type",
            "veth",
            "peer",
            "name",
            gw_if,
            "netns",
            &self.gw.name,
        ]);
        self.client.ip(&["link", "set", client_if, "up"]);
        self.gw.ip(&["link", "set", gw_if, "up"]);
        gw_if.to_string()
    }

    /// A second client namespace on its own veth pair (`sg-n` on the gateway side), with
    /// address `NEIGHBOUR_V4` and a route to the gateway's addresses: a client that shares
    /// nothing with the one in `client`.
    pub fn add_neighbour(&self, tag: &str) -> NetNs {
        use addr::*;
        let id = std::process::id() % 100_000;
        let ns = NetNs::new(&format!("sgn-{tag}-{id}"));
        ns.ip(&[
            "link",
            "add",
            "sg-nc",
            "type",
            "veth",
            "peer",
            "name",
            NEIGHBOUR_IF,
            "netns",
            &self.gw.name,
        ]);
        ns.ip(&["addr", "add", &format!("{NEIGHBOUR_V4}/24"), "dev", "sg-nc"]);
        ns.ip(&["link", "set", "sg-nc", "up"]);
        self.gw.ip(&["addr", "add", &format!("{GW_NEIGHBOUR_V4}/24"), "dev", NEIGHBOUR_IF]);
        self.gw.ip(&["link", "set", NEIGHBOUR_IF, "up"]);
        ns.ip(&["route", "add", "198.18.0.0/24", "via", GW_NEIGHBOUR_V4]);
        ns
    }

    /// Whether an XDP program is attached to `dev` in the gateway namespace.
    pub fn gw_has_xdp(&self, dev: &str) -> bool {
        let out = self.gw.ip(&["link", "show", dev]);
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }

    fn configure(&self) {
        use addr::*;
        let (c, g) = (&self.client, &self.gw);
        let client_addrs = [CLIENT_V4, OTHER_V4, CLIENT_V6, CLIENT_V6_SAME_64, OTHER_V6];
        for (ns, dev, addrs) in [
            (c, &self.client_if, &client_addrs[..]),
            (g, &self.gw_if, &[GW_V4, GW_V6, GW_V6_OTHER][..]),
        ] {
            for a in addrs {
                let with_len = if a.contains(':') { format!("{a}/64") } else { format!("{a}/24") };
                let mut args = vec!["addr", "add", with_len.as_str(), "dev", dev.as_str()];
                if a.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args);
            }
            ns.ip(&["link", "set", dev, "up"]);
        }
        let (cmac, gmac) = (c.mac(&self.client_if), g.mac(&self.gw_if));
        for a in [GW_V4, GW_V6, GW_V6_OTHER] {
            c.ip(&[
                "neigh",
                "replace",
                a,
                "lladdr",
                &gmac,
                "dev",
                &self.client_if,
                "nud",
                "permanent",
            ]);
        }
        for a in client_addrs {
            g.ip(&["neigh", "replace", a, "lladdr", &cmac, "dev", &self.gw_if, "nud", "permanent"]);
        }
    }
}

/// The gateway side of the neighbour's link (see [`Topology::add_neighbour`]).
pub const NEIGHBOUR_IF: &str = "sg-n";

/// Path of the `secgate` binary built next to this test (`cargo xtask test` builds it).
pub fn secgate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SECGATE_BIN") {
        return p.into();
    }
    // Next to a binary (`target/release/secgate-bench`), or one up from a test's `deps/`.
    let exe = std::env::current_exe().expect("current_exe");
    let beside = exe.with_file_name("secgate");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = if beside.exists() { beside } else { dir.join("secgate") };
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p secgate-daemon`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// A `secgate run` daemon inside the gateway namespace, stopped and detached on drop.
pub struct Daemon {
    child: Option<std::process::Child>,
    gw: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub pin_path: PathBuf,
    pub audit: PathBuf,
    /// Top-level config tables written after the daemon's own (`[gateway]`, `[auth]`…).
    pub extra: String,
    /// How the daemon is started: its log filter and CPUs (see [`Launch`]).
    pub launch: Launch,
}

/// How [`Daemon::spawn`] starts `secgate run`.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// `SECGATE_LOG`; by default `info`, and a gateway's own debug lines too, so that the
    /// tests that grep the log for credentials see everything it could write.
    pub log: Option<&'static str>,
    /// CPUs to run on (`taskset -c`); its async runtime then has as many worker threads.
    pub cpus: Option<String>,
}

impl Daemon {
    /// Writes a config with `datapath_extra` appended to `[datapath]` and starts the daemon.
    pub fn start(topo: &Topology, tag: &str, datapath_extra: &str) -> Daemon {
        Daemon::start_with(topo, tag, datapath_extra, String::new())
    }

    /// Like [`Daemon::start`], with `extra` tables (the gateway's) in the config.
    pub fn start_with(topo: &Topology, tag: &str, datapath_extra: &str, extra: String) -> Daemon {
        Daemon::start_on(topo, &[&topo.gw_if], tag, datapath_extra, extra)
    }

    /// Like [`Daemon::start_with`], with XDP on each of `interfaces`.
    pub fn start_on(
        topo: &Topology,
        interfaces: &[&str],
        tag: &str,
        datapath_extra: &str,
        extra: String,
    ) -> Daemon {
        let dir = std::env::temp_dir().join(format!("secgate-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let mut d = Daemon {
            child: None,
            gw: topo.gw.path(),
            config: dir.join("secgate.toml"),
            socket: dir.join("control.sock"),
            log: dir.join("daemon.log"),
            audit: dir.join("audit.log"),
            pin_path: PathBuf::from(format!(
                "/sys/fs/bpf/secgate-e2e-{tag}-{}",
                std::process::id()
            )),
            dir,
            extra,
            launch: Launch::default(),
        };
        d.write_config_for(interfaces, datapath_extra);
        d.spawn();
        d
    }

    /// Rewrites the config file (the daemon sees it on reload or restart).
    pub fn write_config(&self, interface: &str, datapath_extra: &str) {
        self.write_config_for(&[interface], datapath_extra);
    }

    pub fn write_config_for(&self, interfaces: &[&str], datapath_extra: &str) {
        let interfaces =
            interfaces.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ");
        let toml = format!(
            "state_dir = \"{}\"\n[datapath]\ninterfaces = [{interfaces}]\npin_path = \"{}\"\n{datapath_extra}\n\
             [control]\nsocket = \"{}\"\n[audit]\npath = \"{}\"\n{}",
            self.dir.join("state").display(),
            self.pin_path.display(),
            self.socket.display(),
            self.audit.display(),
            self.extra,
        );
        std::fs::write(&self.config, toml).expect("write config");
    }

    /// Starts `secgate run` and waits until its control socket answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.gw.display())).arg("--");
        if let Some(cpus) = &self.launch.cpus {
            cmd.args(["taskset", "-c", cpus]);
        }
        let filter = if self.extra.is_empty() { "info" } else { "secgate=debug,info" };
        let child = cmd
            .arg(secgate_bin())
            .args(["run", "-c"])
            .arg(&self.config)
            .env("SECGATE_LOG", self.launch.log.unwrap_or(filter))
            .stderr(log)
            .spawn()
            .expect("spawn secgate run");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("secgate run exited with {status}: {}", self.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon did not come up: {}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signal daemon");
    }

    /// SIGTERM, and waits (at most 10 s) for the daemon to finish its shutdown.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
            let out = wait_bounded(child, std::time::Duration::from_secs(10), "secgate shutdown");
            assert!(out.status.success(), "secgate run exited with {}", out.status);
        }
    }

    /// SIGKILL, as a crash would: no cleanup runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Runs `secgate run` on this daemon's config a second time, in the gateway namespace;
    /// returns (status code, stderr) once it exits.
    pub fn run_again(&self, config: &Path) -> (i32, String) {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.gw.display()))
            .arg("--")
            .arg(secgate_bin())
            .args(["run", "-c"])
            .arg(config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn secgate run");
        let out = wait_bounded(child, std::time::Duration::from_secs(20), "a second secgate run");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs `secgate ARGS…` against this daemon; returns (status code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(secgate_bin())
            .args(args)
            .env("SECGATE_SOCKET", &self.socket)
            .output()
            .expect("run secgate");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    /// Runs a CLI command that must succeed and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cli(args);
        assert_eq!(code, 0, "secgate {args:?} failed: {out}{err}");
        out
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("json output")
    }
}

/// Waits for `child` at most `limit`; kills it and panics if it is still running then.
pub fn wait_bounded(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        let _ = Command::new(secgate_bin()).arg("detach").arg("-c").arg(&self.config).output();
        // No daemon runs on these pins any more, so the lock file can go too.
        let _ = std::fs::remove_file(secgate::lock::pin_lock_file(&self.pin_path));
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("daemon log kept at {}", self.log.display());
        }
    }
}
