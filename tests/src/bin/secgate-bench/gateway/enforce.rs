//! Enforcement speed: the time from the end of an attacker's N-th failed login to its first
//! connection that is refused or dropped, for secgate (escalation bans the source in the
//! XDP deny map: its SYNs are dropped at the NIC) and for what a user would build without
//! it: nginx with `auth_basic`, and fail2ban (Debian's package, its `nginx-http-auth` jail
//! with `maxretry = 5`, the nftables ban action, its pyinotify backend) watching nginx's
//! error log.
//!
//! Each run is a fresh attacker address: [`FAILURES`] logins, each on a connection of its
//! own, then connection attempts back to back from the same address until one fails
//! (refused, or no answer within [`PROBE_TIMEOUT`]); the time is from the last failed
//! login's answer to the start of that attempt.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{ClientConfig, pki_types::ServerName};
use secgate_tests::netns::NetNs;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Failed logins that get a source banned, on both sides.
pub const FAILURES: u32 = 5;
/// Runs per side (each a fresh attacker address, so 2 × this must fit [`NET`]).
pub const RUNS: usize = 100;
const _: () = assert!(2 * RUNS <= 254, "the attackers must fit NET");
const PROBE_TIMEOUT: Duration = Duration::from_millis(20);
/// A run whose attacker is not stopped within this long is a failure of the setup.
const GIVE_UP: Duration = Duration::from_secs(10);
/// The attackers' addresses: 198.18.8.0/24, on the client's link.
pub const NET: &str = "198.18.8.0/24";

pub fn attacker(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xc612_0800u32 + 1 + i as u32)
}

/// How runs ended: their times, and how many attackers were dropped (no answer) rather than
/// refused.
pub struct Stopped {
    pub times: Vec<Duration>,
    pub dropped: usize,
}

/// [`RUNS`] runs against `addr`, each failing with `request`, from the attackers from
/// `first` on.
pub fn measure(
    ns: &NetNs,
    cpu: usize,
    tls: &ClientConfig,
    addr: SocketAddr,
    request: &str,
    first: usize,
) -> Stopped {
    let config = Arc::new(tls.clone());
    let request = request.to_owned();
    ns.within(move || {
        secgate_tests::harness::pin_to_cpu(cpu);
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut stopped = Stopped { times: Vec::new(), dropped: 0 };
            for i in first..first + RUNS {
                let src = SocketAddr::new(attacker(i).into(), 0);
                for _ in 0..FAILURES {
                    fail_once(&config, src, addr, &request).await;
                }
                let (time, dropped) = until_stopped(src, addr).await;
                stopped.times.push(time);
                stopped.dropped += usize::from(dropped);
                // Let the ban's bookkeeping settle before the next attacker starts.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            stopped
        })
    })
}

async fn connect(src: SocketAddr, dst: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(src)?;
    socket.connect(dst).await
}

/// One failed login from `src`: a connection, the TLS handshake, `request`, its whole
/// answer, which must be a 401.
async fn fail_once(config: &Arc<ClientConfig>, src: SocketAddr, dst: SocketAddr, request: &str) {
    let tcp = connect(src, dst)
        .await
        .unwrap_or_else(|e| panic!("attacker {src} connecting to {dst}: {e}"));
    let name = ServerName::try_from("api.test").expect("server name");
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(request.as_bytes()).await.expect("request");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer))
        .await
        .expect("an answer");
    assert!(read.is_ok() || !answer.is_empty(), "no answer to a failed login: {read:?}");
    assert!(
        answer.starts_with(b"HTTP/1.1 401"),
        "a failed login answered {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(60)])
    );
}

/// How long after now a connection from `src` first fails, and whether it was dropped (no
/// answer) rather than refused.
async fn until_stopped(src: SocketAddr, dst: SocketAddr) -> (Duration, bool) {
    let t0 = Instant::now();
    loop {
        let start = Instant::now();
        match tokio::time::timeout(PROBE_TIMEOUT, connect(src, dst)).await {
            Ok(Ok(stream)) => drop(stream),
            // Refused (a reject rule, a reset) or dropped (no answer): stopped.
            Ok(Err(_)) => return (start - t0, false),
            Err(_) => return (start - t0, true),
        }
        assert!(
            t0.elapsed() < GIVE_UP,
            "attacker {src} still connects {GIVE_UP:?} after its last failed login"
        );
    }
}

/// fail2ban's server in a namespace, with a configuration of its own under `dir`, stopped
/// on drop (which removes its nftables table).
pub struct Fail2ban {
    child: Child,
    conf: PathBuf,
}

impl Fail2ban {
    /// Starts fail2ban-server in `ns` watching `log` (nginx's error log) with the
    /// `nginx-http-auth` jail, and waits until the jail runs.
    pub fn start(ns: &NetNs, cpu: usize, dir: &Path, log: &Path) -> Fail2ban {
        let conf = dir.join("fail2ban");
        let _ = std::fs::remove_dir_all(&conf);
        let out = Command::new("cp").args(["-r", "/etc/fail2ban"]).arg(&conf).output().expect("cp");
        assert!(out.status.success(), "copying /etc/fail2ban (install fail2ban)");
        // Debian's jail.d enables sshd on the systemd backend: only ours runs here.
        let _ = std::fs::remove_dir_all(conf.join("jail.d"));
        std::fs::create_dir_all(conf.join("jail.d")).expect("jail.d");
        let d = dir.display();
        std::fs::write(
            conf.join("fail2ban.local"),
            format!("[Definition]\nlogtarget = {d}/fail2ban.log\nsocket = {d}/fail2ban.sock\npidfile = {d}/fail2ban.pid\ndbfile = :memory:\n"),
        )
        .expect("fail2ban.local");
        std::fs::write(
            conf.join("jail.local"),
            format!(
                "[DEFAULT]\nbackend = pyinotify\nbanaction = nftables-allports\nbantime = 3600\nfindtime = 600\nmaxretry = {FAILURES}\n\n\
                 [nginx-http-auth]\nenabled = true\nport = all\nlogpath = {}\n",
                log.display()
            ),
        )
        .expect("jail.local");
        std::fs::write(log, "").expect("the watched log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["--", "taskset", "-c", &cpu.to_string(), "fail2ban-server", "-f", "-x", "-c"])
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("fail2ban.stderr")).expect("stderr file"))
            .spawn()
            .expect("fail2ban-server (install fail2ban)");
        let f2b = Fail2ban { child, conf };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f2b.client(&["status", "nginx-http-auth"]).contains("Currently banned") {
            let log = std::fs::read_to_string(dir.join("fail2ban.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "fail2ban's jail did not start: {log}");
            std::thread::sleep(Duration::from_millis(100));
        }
        f2b
    }

    fn client(&self, args: &[&str]) -> String {
        let out = Command::new("fail2ban-client")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("fail2ban-client");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Addresses the jail has banned.
    pub fn banned(&self) -> usize {
        let status = self.client(&["status", "nginx-http-auth"]);
        status
            .lines()
            .find_map(|l| l.split("Total banned:").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        let _ = self.client(&["stop"]);
        super::reap(&mut self.child, Duration::from_secs(10));
    }
}

/// p50, p99 and max of `times`, in ms.
pub fn quantiles(times: &[Duration]) -> [f64; 3] {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    [at(0.5), at(0.99), at(1.0)]
}
