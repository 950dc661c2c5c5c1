//! The load generator: h2load (Debian's nghttp2-client), the same for both gateways and
//! both protocols, run in the client namespace on a CPU of its own. Its per-request log
//! gives the latency percentiles; its summary, the requests done and their status codes.

use std::{path::Path, process::Command};

use secgate_tests::netns::NetNs;

/// HTTP/1.1 or HTTP/2, as ALPN offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::H1 => "http/1.1",
            Proto::H2 => "h2",
        }
    }
}

/// One h2load run.
pub struct Load<'a> {
    pub proto: Proto,
    /// Connections, each with one request in flight at a time.
    pub clients: u32,
    pub seconds: u32,
    /// Requests per second per connection (`--rps`); unbounded when `None`.
    pub rps: Option<u32>,
    pub url: String,
    pub connect_to: String,
    pub headers: Vec<String>,
    /// A request body (then every request is a POST).
    pub body: Option<&'a Path>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Done {
    pub requests: u64,
    pub ok: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Done {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
}

impl Load<'_> {
    /// Runs h2load in `ns` on `cpu`, its per-request log in `log`.
    pub fn run(&self, ns: &NetNs, cpu: usize, log: &Path) -> Done {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path().display()));
        cmd.args(["--", "taskset", "-c", &cpu.to_string(), "h2load", "-t", "1", "-m", "1"]);
        cmd.args(["-c", &self.clients.to_string(), "-D", &self.seconds.to_string()]);
        cmd.arg(format!("--connect-to={}", self.connect_to));
        cmd.arg(format!("--log-file={}", log.display()));
        if self.proto == Proto::H1 {
            cmd.arg("--h1");
        }
        if let Some(rps) = self.rps {
            cmd.arg(format!("--rps={rps}"));
        }
        for h in &self.headers {
            cmd.args(["-H", h]);
        }
        if let Some(body) = self.body {
            cmd.arg("-d").arg(body).args(["-H", "content-type: application/json"]);
        }
        let out = cmd.arg(&self.url).output().expect("h2load (install nghttp2-client)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut done = summary(&text);
        let (p50, p99) = percentiles(&std::fs::read_to_string(log).expect("h2load's log"));
        (done.p50_ms, done.p99_ms) = (p50, p99);
        done
    }
}

/// The requests done, those answered 2xx and the run's length, from h2load's summary:
/// `finished in 5.00s, …`, `requests: N total, N started, N done, N succeeded, …` and
/// `status codes: N 2xx, …`.
fn summary(text: &str) -> Done {
    let field = |prefix: &str, nth: usize| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in h2load's output: {text}"));
        let word = line[prefix.len()..].split_whitespace().nth(nth).unwrap_or_default();
        word.trim_end_matches([',', 's'])
            .parse()
            .unwrap_or_else(|_| panic!("{prefix:?} in {line:?}"))
    };
    Done {
        seconds: field("finished in", 0),
        requests: field("requests:", 4) as u64,
        ok: field("status codes:", 0) as u64,
        ..Done::default()
    }
}

/// p50 and p99 in ms of the requests in an h2load log (tab-separated: start time, status,
/// microseconds to the end of the response), 2xx answers only.
fn percentiles(log: &str) -> (f64, f64) {
    let mut us: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let (_, status, took) = (cols.next()?, cols.next()?, cols.next()?);
            status.starts_with('2').then(|| took.trim().parse().ok())?
        })
        .collect();
    if us.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    us.sort_unstable();
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    (at(0.50), at(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_and_log_are_read() {
        let text = "finished in 5.00s, 20480.40 req/s, 2.31MB/s\n\
                    requests: 102402 total, 102434 started, 102402 done, 102400 succeeded, 2 failed, 2 errored, 0 timeout\n\
                    status codes: 102400 2xx, 0 3xx, 2 4xx, 0 5xx\n";
        let done = summary(text);
        assert_eq!((done.requests, done.ok), (102_402, 102_400));
        assert!((done.seconds - 5.0).abs() < 1e-9);
        let log: String =
            (1..=100).map(|i| format!("1700000000000000\t200\t{}\n", i * 1000)).collect();
        let log = log + "1700000000000000\t503\t999999999\n";
        assert_eq!(percentiles(&log), (51.0, 99.0));
    }
}
