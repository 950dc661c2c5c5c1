//! `cargo xtask bench gateway`: secgate's TLS gateway against Debian's nginx as the same
//! reverse proxy, in one run on one machine.
//!
//! Both serve the same certificate in the gateway namespace and proxy to the same upstream
//! (a second nginx); each runs on CPU 1 alone (nginx: one worker; secgate: taskset, so its
//! runtime has one worker thread), while the load generator and the upstream share CPU 0.
//! secgate does more per request than nginx: an API key checked against its hash, an ACL
//! by role, a per-principal limit, path and header normalization, a JSON-Schema check of
//! POST bodies, a JSON audit line; nginx checks the key by a `map`, limits by `limit_req`
//! and writes its access log. Both pass through secgate's XDP program on the gateway's
//! veth, unlimited. Rounds alternate which proxy goes first, so drift hits both alike;
//! each figure is a median of [`ROUNDS`].

mod enforce;
mod flood;
mod handshake;
mod load;
mod nginx;
mod report;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use nix::unistd::Pid;
use secgate_tests::{
    gateway::{Gw, HOST, Opts, PORT, client::H1},
    netns::{Launch, addr::GW_V4},
};

use self::{
    handshake::Kind,
    load::{Done, Load, Proto},
    nginx::Nginx,
};
use crate::median;

const ROUNDS: usize = 3;
const SECONDS: u32 = 5;
/// Concurrent connections in the throughput runs.
const CLIENTS: [u32; 3] = [8, 32, 128];
/// The concurrency of the POST and fixed-rate runs.
const FIXED_CLIENTS: u32 = 32;
const NGINX_PORT: u16 = 9443;
/// nginx's `auth_basic` login, which fail2ban watches.
const LOGIN_PORT: u16 = 9444;
const UPSTREAM: &str = "127.0.0.1:18080";
/// The generator's and upstream's CPU, and the proxies'.
const LOAD_CPU: usize = 0;
const PROXY_CPU: usize = 1;
const ORDER: &str = r#"{"item": "widget", "qty": 2}"#;

/// The two gateways compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Server {
    Nginx,
    Secgate,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Nginx => "nginx",
            Server::Secgate => "secgate",
        }
    }
}

/// One load: its protocol, concurrency, whether it POSTs an order, and its offered rate
/// (requests per second in all; `None`: as fast as the gateway answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Case {
    pub proto: Proto,
    pub clients: u32,
    pub post: bool,
    pub rate: Option<u32>,
}

/// A median run of one server on one case, and the server's CPU time per request.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub done: Done,
    pub cpu_us_per_request: f64,
    /// The server's CPU time over the run's wall time: near 1, the server was the bound.
    pub busy: f64,
}

/// Everything one run measured.
#[derive(Default)]
pub struct Results {
    pub loads: Vec<(Case, Server, Run)>,
    pub handshakes: Vec<(Kind, Server, handshake::Rate)>,
    pub enforcement: Option<Enforcement>,
    /// Legitimate load without and with a flood: (server, flooded, run, flood).
    pub attack: Vec<(Server, bool, Run, FloodRate)>,
}

/// A flood as sent and as the gateway's interface took it (the rest its ring dropped; the
/// legitimate load's own packets, some 0.05 Mpps, are in it too), and the share of CPU 0
/// the generator took from the legitimate client and the upstream.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodRate {
    pub sent_pps: f64,
    pub taken_pps: f64,
    pub generator_cpu: f64,
}

/// The time from an attacker's last failed login to its first stopped connection.
pub struct Enforcement {
    /// p50, p99 and max in ms over [`enforce::RUNS`] attackers.
    pub fail2ban: [f64; 3],
    pub secgate: [f64; 3],
    /// Attackers whose connections were dropped rather than refused.
    pub dropped: [usize; 2],
    /// secgate's own offence → ban-in-map histogram (p50, p99 ms) over the same bans.
    pub secgate_own: [f64; 2],
}

/// The bench's gateways, upstream and files.
struct Bench {
    gw: Gw,
    _upstream: Nginx,
    nginx: Nginx,
    dir: PathBuf,
    key: String,
}

pub fn run() -> Results {
    println!(
        "gateway: secgate against nginx, {ROUNDS} rounds of {SECONDS} s, proxies on CPU {PROXY_CPU}"
    );
    let bench = Bench::start();
    let mut results = Results::default();
    let mut cases: Vec<Case> = [Proto::H1, Proto::H2]
        .into_iter()
        .flat_map(|proto| {
            let gets = CLIENTS.map(|clients| Case { proto, clients, post: false, rate: None });
            let post = Case { proto, clients: FIXED_CLIENTS, post: true, rate: None };
            gets.into_iter().chain([post])
        })
        .collect();
    for case in cases.clone() {
        results.loads.extend(bench.measure(case));
    }
    for proto in [Proto::H1, Proto::H2] {
        let rate = fixed_rate(&results, proto);
        cases.push(Case { proto, clients: FIXED_CLIENTS, post: false, rate: Some(rate) });
        results.loads.extend(bench.measure(*cases.last().expect("pushed")));
    }
    for kind in [Kind::Full, Kind::Resumed] {
        results.handshakes.extend(bench.handshakes(kind));
    }
    results.attack = bench.under_attack();
    results.enforcement = Some(bench.enforcement());
    bench.check_logs();
    report::write(&results);
    results
}

/// Half the slower server's rate at [`FIXED_CLIENTS`] GETs: a load both meet with room.
fn fixed_rate(results: &Results, proto: Proto) -> u32 {
    let slowest = results
        .loads
        .iter()
        .filter(|(c, _, _)| {
            c.proto == proto && c.clients == FIXED_CLIENTS && !c.post && c.rate.is_none()
        })
        .map(|(_, _, r)| r.done.rps())
        .fold(f64::INFINITY, f64::min);
    ((slowest / 2.0) as u32).max(FIXED_CLIENTS)
}

impl Bench {
    fn start() -> Bench {
        let tag = "gwb";
        let dir = std::env::temp_dir().join(format!("secgate-gw-{tag}-{}", std::process::id()));
        let schema = dir.join("order.schema.json");
        let routes = format!(
            r#"
[[routes]]
name = "api-orders"
methods = ["POST"]
path = "/api/orders"
auth = ["api_key"]
allow_roles = ["user"]
content_types = ["application/json"]
body_schema = "{}"
rate_limit = {{ per = "principal", rps = 1000000, burst = 100000 }}

[[routes]]
name = "api"
methods = ["GET"]
path = "/api/*"
auth = ["api_key"]
allow_roles = ["user"]
rate_limit = {{ per = "principal", rps = 1000000, burst = 100000 }}
"#,
            schema.display()
        );
        let escalation = format!("auth_failures = {}\nban_ttl = \"1h\"", enforce::FAILURES);
        let opts = Opts {
            escalation: Some(escalation),
            upstream: Some(format!("http://{UPSTREAM}")),
            routes_extra: Box::leak(routes.into_boxed_str()),
            ..Opts::default()
        };
        let mut gw = Gw::start(tag, opts);
        assert_eq!(gw.dir, dir, "the schema named in the routes is the harness's");
        gw.daemon.stop();
        gw.daemon.launch = Launch { log: Some("info"), cpus: Some(PROXY_CPU.to_string()) };
        gw.daemon.spawn();
        let up: SocketAddr = UPSTREAM.parse().expect("upstream address");
        let cpu = |c: usize| c.to_string();
        let upstream = Nginx::start(
            &gw.topo.gw,
            &cpu(LOAD_CPU),
            &dir,
            "upstream",
            &nginx::upstream_conf(&dir, up),
            up,
        );
        let key = gw.key("user-key").to_owned();
        let listen = SocketAddr::new(GW_V4.parse().expect("address"), NGINX_PORT);
        let login = SocketAddr::new(listen.ip(), LOGIN_PORT);
        let (cert, tls_key) = (dir.join("api.pem"), dir.join("api.key"));
        let conf = nginx::proxy_conf(&dir, listen, login, &cert, &tls_key, &key, up);
        let nginx = Nginx::start(&gw.topo.gw, &cpu(PROXY_CPU), &dir, "nginx", &conf, listen);
        let out = gw
            .topo
            .client
            .command("sysctl")
            .args(["-qw", "net.ipv4.ip_local_port_range=1024 65000"])
            .output();
        assert!(out.is_ok_and(|o| o.status.success()), "widening the client's port range");
        std::fs::write(dir.join("order.json"), ORDER).expect("order body");
        let attackers: Vec<_> = (0..2 * enforce::RUNS).map(enforce::attacker).collect();
        gw.topo.add_client_addresses(enforce::NET, &attackers);
        Bench { gw, _upstream: upstream, nginx, dir, key }
    }

    fn port(server: Server) -> u16 {
        match server {
            Server::Nginx => NGINX_PORT,
            Server::Secgate => PORT,
        }
    }

    fn pids(&self, server: Server) -> Vec<Pid> {
        match server {
            Server::Nginx => self.nginx.pids(),
            Server::Secgate => vec![self.gw.daemon.pid()],
        }
    }

    /// Both servers on `case`, [`ROUNDS`] times, alternating which goes first.
    fn measure(&self, case: Case) -> Vec<(Case, Server, Run)> {
        let mut runs: [Vec<Run>; 2] = Default::default();
        for round in 0..ROUNDS {
            for server in order(round) {
                runs[server as usize].push(self.once(case, server, round));
            }
        }
        let out: Vec<_> = [Server::Nginx, Server::Secgate]
            .into_iter()
            .map(|server| (case, server, median_result(std::mem::take(&mut runs[server as usize]))))
            .collect();
        println!("  {}", report::line(&case, &out[0].2, &out[1].2));
        out
    }

    fn once(&self, case: Case, server: Server, round: usize) -> Run {
        let port = Self::port(server);
        let path = if case.post { "/api/orders" } else { "/api/items" };
        let order = self.dir.join("order.json");
        let load = Load {
            proto: case.proto,
            clients: case.clients,
            seconds: SECONDS,
            rps: case.rate.map(|r| (r / case.clients).max(1)),
            url: format!("https://{HOST}:{port}{path}"),
            connect_to: format!("{GW_V4}:{port}"),
            headers: vec![format!("x-api-key: {}", self.key)],
            body: case.post.then_some(order.as_path()),
        };
        let log = self.dir.join(format!("h2load-{}-{round}.log", server.name()));
        let pids = self.pids(server);
        let before = cpu_seconds(&pids);
        let done = load.run(&self.gw.topo.client, LOAD_CPU, &log);
        let cpu = cpu_seconds(&pids) - before;
        let _ = std::fs::remove_file(&log);
        assert!(
            done.ok * 100 >= done.requests * 99 && done.ok > 0,
            "{} answered {} of {} requests 2xx on {case:?}",
            server.name(),
            done.ok,
            done.requests
        );
        Run { cpu_us_per_request: cpu * 1e6 / done.requests as f64, busy: cpu / done.seconds, done }
    }

    fn handshakes(&self, kind: Kind) -> Vec<(Kind, Server, handshake::Rate)> {
        let tls = self.gw.tls(H1, None);
        let request = format!(
            "GET /api/items HTTP/1.1\r\nHost: {HOST}\r\nX-Api-Key: {}\r\nConnection: close\r\n\r\n",
            self.key
        );
        let mut runs: [Vec<handshake::Rate>; 2] = Default::default();
        for round in 0..ROUNDS {
            for server in order(round) {
                let addr = SocketAddr::new(GW_V4.parse().expect("address"), Self::port(server));
                let rate = handshake::run(
                    &self.gw.topo.client,
                    LOAD_CPU,
                    &tls.config,
                    (addr, &request),
                    kind,
                    f64::from(SECONDS),
                );
                runs[server as usize].push(rate);
            }
        }
        let out: Vec<_> = [Server::Nginx, Server::Secgate]
            .into_iter()
            .map(|server| {
                let rates = std::mem::take(&mut runs[server as usize]);
                let per_sec = median(rates.iter().map(|r| r.per_sec).collect());
                let resumed = median(rates.iter().map(|r| r.resumed).collect());
                (kind, server, handshake::Rate { per_sec, resumed })
            })
            .collect();
        println!("  {}", report::handshake_line(kind, &out[0].2, &out[1].2));
        out
    }

    /// The legitimate load ([`FIXED_CLIENTS`] HTTP/1.1 connections of GETs) on each server
    /// without and with a flood from a banned prefix ([`flood`]), the gateway's interface
    /// polled by kernel threads on the proxies' CPU (as a NIC's interrupts would land on
    /// the gateway's cores), so the flood's cost falls where the proxy runs.
    fn under_attack(&self) -> Vec<(Server, bool, Run, FloodRate)> {
        let napi = crate::own_cpu::OwnCpu::new(&self.gw.topo, PROXY_CPU);
        napi.realtime();
        let flood = flood::Flood::new(&self.gw.topo);
        let case = Case { proto: Proto::H1, clients: FIXED_CLIENTS, post: false, rate: None };
        let mut runs: std::collections::BTreeMap<(Server, bool), Vec<(Run, FloodRate)>> =
            Default::default();
        let taken = || crate::live::rx_queue_packets(&self.gw.topo).iter().sum::<u64>();
        for round in 0..ROUNDS {
            for server in order(round) {
                for flooded in [false, true] {
                    if flooded {
                        self.ban(server, true);
                    }
                    let measured = if flooded {
                        let stop = std::sync::atomic::AtomicBool::new(false);
                        let before = taken();
                        std::thread::scope(|s| {
                            let flooding = s.spawn(|| flood.run(&self.gw.topo, LOAD_CPU, &stop));
                            let stopper = flood::StopOnDrop(&stop);
                            let run = self.once(case, server, round);
                            drop(stopper);
                            let (sent, took, cpu) = flooding.join().expect("flood thread");
                            let secs = took.as_secs_f64();
                            let taken_pps = (taken() - before) as f64 / secs;
                            let generator_cpu = cpu.as_secs_f64() / secs;
                            (
                                run,
                                FloodRate {
                                    sent_pps: sent as f64 / secs,
                                    taken_pps,
                                    generator_cpu,
                                },
                            )
                        })
                    } else {
                        (self.once(case, server, round), FloodRate::default())
                    };
                    if flooded {
                        self.ban(server, false);
                    }
                    runs.entry((server, flooded)).or_default().push(measured);
                }
            }
        }
        let out: Vec<_> = runs
            .into_iter()
            .map(|((server, flooded), v)| {
                let rate = FloodRate {
                    sent_pps: median(v.iter().map(|(_, f)| f.sent_pps).collect()),
                    taken_pps: median(v.iter().map(|(_, f)| f.taken_pps).collect()),
                    generator_cpu: median(v.iter().map(|(_, f)| f.generator_cpu).collect()),
                };
                (server, flooded, median_result(v.into_iter().map(|(r, _)| r).collect()), rate)
            })
            .collect();
        for line in report::attack_lines(&out) {
            println!("  {line}");
        }
        out
    }

    /// Bans the flood's prefix (or lifts the ban) where `server`'s operator would: secgate
    /// in its deny map, nginx's in nftables.
    fn ban(&self, server: Server, on: bool) {
        let gw = &self.gw.topo.gw;
        match (server, on) {
            (Server::Secgate, _) => {
                self.gw.daemon.ok(&["ban", if on { "add" } else { "del" }, flood::BANNED]);
            }
            (Server::Nginx, true) => crate::live::nft(gw, &flood::nft_ban(&self.gw.topo)),
            (Server::Nginx, false) => crate::live::nft(gw, "delete table netdev sgbench\n"),
        }
    }

    /// fail2ban behind nginx's `auth_basic`, then secgate's escalation, each on
    /// [`enforce::RUNS`] attackers of their own.
    fn enforcement(&self) -> Enforcement {
        let client = &self.gw.topo.client;
        let tls = self.gw.tls(H1, None).config;
        let f2b = enforce::Fail2ban::start(
            &self.gw.topo.gw,
            PROXY_CPU,
            &self.dir,
            &nginx::auth_log(&self.dir),
        );
        let basic =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "bench:wrong");
        let login = format!(
            "GET /login HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Basic {basic}\r\nConnection: close\r\n\r\n"
        );
        let at = |port| SocketAddr::new(GW_V4.parse().expect("address"), port);
        let fail2ban = enforce::measure(client, LOAD_CPU, &tls, at(LOGIN_PORT), &login, 0);
        assert_eq!(f2b.banned(), enforce::RUNS, "fail2ban banned every attacker");
        drop(f2b);
        let wrong = format!("user-key.{}", "A".repeat(43));
        let login = format!(
            "GET /api/items HTTP/1.1\r\nHost: {HOST}\r\nX-Api-Key: {wrong}\r\nConnection: close\r\n\r\n"
        );
        let secgate = enforce::measure(client, LOAD_CPU, &tls, at(PORT), &login, enforce::RUNS);
        let status = self.gw.daemon.json(&["status", "--json"]);
        let e = &status["enforcement"];
        assert_eq!(
            e["bans"].as_u64(),
            Some(enforce::RUNS as u64),
            "escalation banned every attacker: {status}"
        );
        let ms = |k: &str| e[k].as_f64().unwrap_or(f64::NAN);
        let out = Enforcement {
            fail2ban: enforce::quantiles(&fail2ban.times),
            secgate: enforce::quantiles(&secgate.times),
            dropped: [fail2ban.dropped, secgate.dropped],
            secgate_own: [ms("p50_ms"), ms("p99_ms")],
        };
        println!("  {}", report::enforcement_line(&out));
        out
    }

    /// Both gateways logged every request: nginx's access log and secgate's audit grew.
    fn check_logs(&self) {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        assert!(size(&nginx::access_log(&self.dir)) > 0, "nginx wrote no access log");
        let audit = std::fs::read_to_string(&self.gw.daemon.audit).unwrap_or_default();
        assert!(
            audit.lines().any(|l| l.contains(r#""kind":"request""#)),
            "secgate wrote no request audit"
        );
    }
}

/// Waits up to `limit` for `child`, asked to stop, to exit, then kills it: for a drop, which
/// must neither hang nor panic (`netns::wait_bounded` panics).
fn reap(child: &mut std::process::Child, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Which server goes first in `round`.
fn order(round: usize) -> [Server; 2] {
    if round.is_multiple_of(2) {
        [Server::Nginx, Server::Secgate]
    } else {
        [Server::Secgate, Server::Nginx]
    }
}

/// The run with the median rate.
fn median_result(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.done.rps().total_cmp(&b.done.rps()));
    runs.swap_remove(runs.len() / 2)
}

/// Each thread of `pids` by id: its name, CPU seconds, voluntary and involuntary context
/// switches so far.
fn threads(pids: &[Pid]) -> std::collections::BTreeMap<i32, (String, f64, u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for tid in tasks.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map_or(0, |v| v.trim().parse().unwrap_or(0))
            };
            let name = status
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .unwrap_or("?")
                .trim()
                .to_owned();
            let cpu = stat_seconds(&format!("/proc/{pid}/task/{tid}/stat"));
            out.insert(
                tid,
                (
                    name,
                    cpu,
                    field("voluntary_ctxt_switches:"),
                    field("nonvoluntary_ctxt_switches:"),
                ),
            );
        }
    }
    out
}

/// CPU time (user and system) of `pids` so far, in seconds.
fn cpu_seconds(pids: &[Pid]) -> f64 {
    pids.iter().map(|pid| stat_seconds(&format!("/proc/{pid}/stat"))).sum()
}

/// The user and system CPU seconds a `stat` file of /proc records (of a process, all its
/// threads; of a task, that thread).
fn stat_seconds(path: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map_or(vec![], |(_, r)| r.split_whitespace().collect());
    // After the command: utime and stime are the 12th and 13th fields.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / tick
}

/// `cargo xtask bench gateway-profile`: where each proxy's CPU goes on one load (HTTP/1.1,
/// [`FIXED_CLIENTS`] connections of GETs), sampled by `perf record` (the CPU clock: this
/// VM has no hardware counters), written as `target/bench/gateway-SERVER.profile.txt`.
pub fn profile() {
    let bench = Bench::start();
    let case = Case { proto: Proto::H1, clients: FIXED_CLIENTS, post: false, rate: None };
    for server in [Server::Nginx, Server::Secgate] {
        let data = PathBuf::from(format!("target/bench/gateway-{}.perf.data", server.name()));
        let pids: Vec<String> = bench.pids(server).iter().map(ToString::to_string).collect();
        let mut perf = std::process::Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "1999"])
            .arg(
                std::env::var("SECGATE_PERF_CALL_GRAPH")
                    .map_or("-g".into(), |g| format!("--call-graph={g}")),
            )
            .arg("-o")
            .arg(&data)
            .args(["-p", &pids.join(",")])
            .spawn()
            .expect("perf (install linux-perf)");
        let before = threads(&bench.pids(server));
        let run = bench.once(case, server, 0);
        let after = threads(&bench.pids(server));
        let _ = nix::sys::signal::kill(
            Pid::from_raw(perf.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = perf.wait();
        let report = std::process::Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--percent-limit",
                "0.5",
                "--sort",
                "dso,symbol",
                "-i",
            ])
            .arg(&data)
            .output()
            .expect("perf report");
        let path = format!("target/bench/gateway-{}.profile.txt", server.name());
        let mut head = format!(
            "{} at {:.0} req/s, {:.1} us CPU per request\n",
            server.name(),
            run.done.rps(),
            run.cpu_us_per_request
        );
        head.push_str("thread: CPU ms, context switches per request (voluntary, involuntary)\n");
        for (tid, (name, cpu, vol, invol)) in &after {
            let (_, cpu0, vol0, invol0) = before.get(tid).cloned().unwrap_or_default();
            let per = |n: u64, n0: u64| (n - n0) as f64 / run.done.requests as f64;
            head.push_str(&format!(
                "  {name} ({tid}): {:.0} ms, {:.3}, {:.3}\n",
                (cpu - cpu0) * 1e3,
                per(*vol, vol0),
                per(*invol, invol0)
            ));
        }
        std::fs::write(&path, head + &String::from_utf8_lossy(&report.stdout)).expect("profile");
        println!("wrote {path}");
    }
}
