//! The request audit: one JSON line per request (time, source, principal, route, method,
//! path, status, decision, reason, latency) in the audit log, after the control changes'.
//! Requests hand their line to a bounded queue and go on; a writer thread batches what has
//! queued and writes it, at most every 10 ms, and all that has queued when the daemon
//! stops. When the queue is full the line is counted as lost, never waited for: a slow disk
//! must not slow the API. No token, key, cookie or query string is recorded.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::audit::Audit;

/// Lines waiting to be written at most.
const QUEUE: usize = 16 * 1024;
/// How long the writer lets lines gather after each write.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

#[derive(Clone, Debug, Serialize)]
pub struct Line {
    pub kind: &'static str,
    pub time: String,
    pub source: IpAddr,
    pub principal: Option<String>,
    pub route: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `allow`, or the refusal's code.
    pub decision: &'static str,
    /// Why, when refused (never a credential).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub latency_ms: f64,
}

impl Line {
    /// A request refused before it was parsed (its head broke the framing rules).
    pub fn refused(source: IpAddr, status: u16, decision: &'static str, why: &str) -> Line {
        Line {
            method: "-".into(),
            status,
            decision,
            reason: why.into(),
            ..Line::new(source, &http::Method::GET)
        }
    }

    pub fn new(source: IpAddr, method: &http::Method) -> Line {
        Line {
            kind: "request",
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            source,
            principal: None,
            route: None,
            method: method.as_str().to_owned(),
            path: String::new(),
            status: 0,
            decision: "allow",
            reason: String::new(),
            latency_ms: 0.0,
        }
    }
}

/// What the writer is handed: a line, or a request to write what has queued and say so.
#[derive(Debug)]
enum Entry {
    Line(Line),
    Flush(tokio::sync::oneshot::Sender<()>),
}

#[derive(Debug)]
pub struct RequestLog {
    tx: mpsc::Sender<Entry>,
    lost: AtomicU64,
}

/// How long [`RequestLog::flush`] waits for room in the queue, then for the writer.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl RequestLog {
    /// Starts the writer thread.
    pub fn start(audit: Arc<Audit>) -> Arc<RequestLog> {
        let (tx, mut rx) = mpsc::channel::<Entry>(QUEUE);
        std::thread::Builder::new()
            .name("secgate-request-log".into())
            .spawn(move || {
                let (mut buf, mut flushed) = (Vec::new(), Vec::new());
                while let Some(entry) = rx.blocking_recv() {
                    take(entry, &mut buf, &mut flushed);
                    while let Ok(more) = rx.try_recv() {
                        take(more, &mut buf, &mut flushed);
                    }
                    audit.append_lines(&buf);
                    buf.clear();
                    let asked = !flushed.is_empty();
                    for done in flushed.drain(..) {
                        let _ = done.send(());
                    }
                    // Lines gather while this thread sleeps: woken for each one, it cost
                    // every request a context switch (a third of the gateway's CPU at
                    // 25,000 requests/s on one core); at this pace it wakes at most 100
                    // times a second, and a line is written within 10 ms.
                    if !asked {
                        std::thread::sleep(GATHER);
                    }
                }
            })
            .expect("spawn the request log writer");
        Arc::new(RequestLog { tx, lost: AtomicU64::new(0) })
    }

    /// Queues `line`, or counts it lost if the queue is full.
    pub fn record(&self, line: Line) {
        if self.tx.try_send(Entry::Line(line)).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes every line queued so far and returns once they are written: the daemon calls
    /// it as it stops, so the last requests' lines are not left in the queue. Bounded by
    /// [`FLUSH_WAIT`] twice (a writer stuck on its disk must not hold the stop up for good).
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.tx.send_timeout(Entry::Flush(done), FLUSH_WAIT).await.is_ok() {
            let _ = tokio::time::timeout(FLUSH_WAIT, written).await;
        }
    }

    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// Adds a line to `buf`, or a flush request to `flushed`.
fn take(entry: Entry, buf: &mut Vec<u8>, flushed: &mut Vec<tokio::sync::oneshot::Sender<()>>) {
    match entry {
        Entry::Line(line) => push(buf, &line),
        Entry::Flush(done) => flushed.push(done),
    }
}

fn push(buf: &mut Vec<u8>, line: &Line) {
    serde_json::to_writer(&mut *buf, line).expect("request lines serialize");
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_writes_what_waits_in_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = RequestLog::start(Arc::new(Audit::open(&path).unwrap()));
        let read = || std::fs::read_to_string(&path).unwrap_or_default();
        let source = IpAddr::from([198, 18, 0, 2]);
        // The first line wakes the writer, which then sleeps: the next ones wait for it.
        log.record(Line::new(source, &http::Method::GET));
        std::thread::sleep(std::time::Duration::from_millis(2));
        for _ in 0..3 {
            log.record(Line::new(source, &http::Method::POST));
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(log.flush());
        assert_eq!(read().lines().count(), 4, "{}", read());
        assert_eq!(read().matches(r#""method":"POST""#).count(), 3);
    }
}
