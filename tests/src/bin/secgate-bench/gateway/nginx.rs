//! Debian's nginx, twice: as the upstream both gateways proxy to, and as the TLS reverse
//! proxy secgate is compared with, configured as a user would build the same gateway (the
//! same certificate, an access log, `limit_req`, an API-key check through a `map`, a pool
//! of keep-alive upstream connections, the same security headers).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use secgate_tests::netns::NetNs;

/// One nginx (a master and one worker) in a namespace, pinned to CPUs, stopped on drop.
pub struct Nginx {
    child: Child,
}

/// The upstream's one answer, to every path and method.
pub const ANSWER: &str = r#"{"ok":true}"#;

impl Nginx {
    /// Starts `conf` (a complete nginx.conf, `daemon off`) as `name` in `ns` on `cpus` and
    /// waits until `probe` accepts connections.
    pub fn start(
        ns: &NetNs,
        cpus: &str,
        dir: &Path,
        name: &'static str,
        conf: &str,
        probe: SocketAddr,
    ) -> Nginx {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).expect("nginx.conf");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["--", "taskset", "-c", cpus, "nginx", "-q", "-p"])
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .stderr(std::fs::File::create(dir.join(format!("{name}.stderr"))).expect("stderr file"))
            .spawn()
            .expect("nginx (install nginx-light)");
        let mut nginx = Nginx { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while ns
            .within(|| std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(200)))
            .is_err()
        {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let err = std::fs::read_to_string(dir.join(format!("{name}.stderr")));
                panic!("nginx {name} exited with {status}: {}", err.unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "nginx {name} did not listen on {probe}");
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    /// The master and its workers, whose CPU time is the proxy's.
    pub fn pids(&self) -> Vec<Pid> {
        let master = self.child.id() as i32;
        let mut pids = vec![Pid::from_raw(master)];
        pids.extend(children(master));
        pids
    }
}

/// Processes whose parent is `parent`. nsenter execs taskset, which execs nginx, so the
/// spawned child is the master itself.
fn children(parent: i32) -> Vec<Pid> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // The fields after the command (in parentheses): state, then the parent.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(parent)
            })
        })
        .map(Pid::from_raw)
        .collect()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGQUIT);
        super::reap(&mut self.child, Duration::from_secs(5));
    }
}

/// The settings both nginx configs share: no daemon, one worker, files under `dir`.
fn preamble(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nuser root;\nworker_processes 1;\npid {d}/{name}.pid;\n\
         error_log {d}/{name}-error.log warn;\nevents {{ worker_connections 16384; }}\n"
    )
}

/// The upstream: one small JSON answer, no log, connections kept for good.
pub fn upstream_conf(dir: &Path, listen: SocketAddr) -> String {
    preamble(dir, "upstream")
        + &format!(
            "http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n  \
             server {{\n    listen {listen} reuseport backlog=4096;\n    location / {{\n      \
             default_type application/json;\n      return 200 '{ANSWER}';\n    }}\n  }}\n}}\n"
        )
}

/// The reverse proxy: TLS on `listen` with `cert`/`key`, `/api/` open to the one API key
/// `api_key` (401 otherwise), limited per key far above the load (so the limiter runs and
/// never refuses), every request in an access log, proxied over a keep-alive pool. And on
/// `login`, `/login` behind `auth_basic` (user `bench`, password `right`), its failures in
/// [`auth_log`] for fail2ban.
pub fn proxy_conf(
    dir: &Path,
    listen: SocketAddr,
    login: SocketAddr,
    cert: &Path,
    key: &Path,
    api_key: &str,
    upstream: SocketAddr,
) -> String {
    let d = dir.display();
    std::fs::write(dir.join("htpasswd"), "bench:{PLAIN}right\n").expect("htpasswd");
    preamble(dir, "nginx")
        + &format!(
            r#"http {{
  log_format gw '$remote_addr $api_client [$time_local] "$request" $status $body_bytes_sent $request_time';
  access_log {d}/nginx-access.log gw;
  map_hash_bucket_size 128;
  map $http_x_api_key $api_client {{
    default "";
    "{api_key}" "user-key";
  }}
  limit_req_zone $api_client zone=per_key:10m rate=1000000r/s;
  upstream api {{
    server {upstream};
    keepalive 256;
    keepalive_requests 100000000;
  }}
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_session_timeout 1h;
  server {{
    listen {listen} ssl http2 backlog=4096;
    server_name api.test;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    add_header Strict-Transport-Security "max-age=31536000" always;
    add_header X-Content-Type-Options nosniff always;
    add_header Content-Security-Policy "default-src 'none'; frame-ancestors 'none'" always;
    add_header Referrer-Policy no-referrer always;
    location /api/ {{
      if ($api_client = "") {{
        return 401;
      }}
      limit_req zone=per_key burst=100000 nodelay;
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Api-Key "";
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
    }}
  }}
  server {{
    listen {login} ssl;
    server_name api.test;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    error_log {d}/auth-error.log error;
    location /login {{
      auth_basic "secgate bench";
      auth_basic_user_file {d}/htpasswd;
      proxy_pass http://api;
    }}
  }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
        )
}

/// Where nginx writes its access log, to check it was on.
pub fn access_log(dir: &Path) -> PathBuf {
    dir.join("nginx-access.log")
}

/// Where nginx logs failed logins (fail2ban watches it).
pub fn auth_log(dir: &Path) -> PathBuf {
    dir.join("auth-error.log")
}
