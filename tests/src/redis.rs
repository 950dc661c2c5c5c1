//! A `redis-server` (Debian's) of the test's own, on a Unix socket in a private directory,
//! so that daemons in any network namespace reach it and nothing else on the host does.
//! Nothing is saved to disk: a restart comes back empty, the hardest case for the fleet.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

pub struct Redis {
    pub dir: PathBuf,
    pub socket: PathBuf,
    password: String,
    /// Further arguments (a TLS port), and the namespace it listens in (with a port).
    args: Vec<String>,
    netns: Option<PathBuf>,
    child: Option<Child>,
}

impl Redis {
    /// Starts one requiring `password`, and waits until it answers.
    pub fn start(tag: &str, password: &str) -> Redis {
        Redis::start_with(tag, password, Vec::new(), None)
    }

    /// Also on TLS port `port` of 127.0.0.1 in `ns`, with `cert` and `key` (PEM).
    pub fn start_tls(
        tag: &str,
        password: &str,
        ns: &NetNs,
        port: u16,
        (cert, key): (&Path, &Path),
    ) -> Redis {
        let args = vec![
            "--tls-port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        Redis::start_with(tag, password, args, Some(ns.path()))
    }

    fn start_with(tag: &str, password: &str, args: Vec<String>, netns: Option<PathBuf>) -> Redis {
        let dir = std::env::temp_dir().join(format!("secgate-redis-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis dir");
        let socket = dir.join("redis.sock");
        let mut r = Redis { dir, socket, password: password.into(), args, netns, child: None };
        r.spawn();
        r
    }

    /// The URL the daemons' `[fleet] redis` takes.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn spawn(&mut self) {
        // The password in a file of its own, not on a command line anyone may read.
        let conf = self.dir.join("redis.conf");
        std::fs::write(&conf, format!("requirepass \"{}\"\n", self.password)).expect("redis.conf");
        {
            use std::os::unix::fs::PermissionsExt as _;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(&conf, private).expect("chmod redis.conf");
        }
        let mut cmd = Command::new("nsenter");
        if let Some(ns) = &self.netns {
            cmd.arg(format!("--net={}", ns.display()));
        }
        let child = cmd
            .args(["--", "redis-server"])
            .arg(&conf)
            .args(["--port", "0", "--unixsocket"])
            .arg(&self.socket)
            .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no"])
            .args(["--dir"])
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server (Debian's redis-server package; `cargo xtask setup` installs it)",
            );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not come up on {}",
                self.socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it outright, as a crash or a lost network would look to the daemons.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Stops it (SIGSTOP) or lets it go on (SIGCONT): a Redis that hangs, then comes back
    /// with everything it held, as after a network partition.
    pub fn freeze(&self, frozen: bool) {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32);
        kill(pid, if frozen { Signal::SIGSTOP } else { Signal::SIGCONT })
            .expect("signal redis-server");
    }

    /// `redis-cli ARGS…` against it; its output (empty if it is down).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .env("REDISCLI_AUTH", &self.password)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
