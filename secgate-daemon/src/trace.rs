//! `secgate trace CIDR`: the XDP program's verdict for each packet from traced sources.
//!
//! The program writes an aya-log record per traced packet (see `secgate-ebpf/src/trace.rs`,
//! held to a per-CPU budget); [`Sink`] turns each into a [`TraceLine`] in a bounded
//! [`TraceLog`]; `trace_read` requests page through it from a cursor, each session seeing
//! only its own prefix. [`Traces`] holds the sessions: the kernel traces the union of their
//! prefixes while any runs, and a session ends at its deadline whether or not its client
//! is still there.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::IpAddr,
    os::fd::AsFd as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;
use secgate_common::maps::{LimitKey, MAX_TRACES};

use crate::{config::describe, views::TraceLine};

/// Lines kept for readers: at the kernel's budget (50 per second per CPU) several seconds'
/// worth on a large host, more than a reader polling every 200 ms needs.
const KEEP: usize = 8192;
/// The longest trace one request may ask for.
pub const MAX_TRACE: Duration = Duration::from_secs(3600);
/// Lines one read returns: at a read every 200 ms, 1000 lines a second reach a terminal
/// however many CPUs write them; the rest are counted as skipped.
pub const MAX_READ: usize = 200;

/// What one read got: lines, where to read from next, and how many it left out.
pub struct Read {
    pub lines: Vec<TraceLine>,
    pub cursor: u64,
    pub skipped: u64,
}

/// The program's trace lines, newest last, numbered from 1.
#[derive(Default)]
pub struct TraceLog {
    inner: Mutex<(VecDeque<TraceLine>, u64)>,
}

impl TraceLog {
    fn push(&self, mut line: TraceLine) {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.1 += 1;
        line.seq = inner.1;
        if inner.0.len() == KEEP {
            inner.0.pop_front();
        }
        inner.0.push_back(line);
    }

    /// Up to [`MAX_READ`] lines after `cursor` from sources in `net`. Skipped: the matching
    /// lines beyond those, and every line (of any source) dropped from the log unread.
    pub fn since(&self, cursor: u64, net: IpNet) -> Read {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let oldest = inner.0.front().map_or(inner.1 + 1, |l| l.seq);
        let mut skipped = oldest.saturating_sub(cursor + 1);
        let mut lines = Vec::new();
        for line in inner.0.iter().filter(|l| l.seq > cursor && net.contains(&l.src)) {
            if lines.len() < MAX_READ {
                lines.push(line.clone());
            } else {
                skipped += 1;
            }
        }
        Read { lines, cursor: inner.1, skipped }
    }

    /// The cursor a new reader starts from: only lines from now on.
    pub fn cursor(&self) -> u64 {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1
    }
}

/// What the kernel's record says, `key=value` words in the order `emit` writes them; `None`
/// for anything else (the parser of a stream the kernel writes, but a wrong build could
/// write otherwise).
pub fn parse_line(text: &str) -> Option<TraceLine> {
    let mut fields = BTreeMap::new();
    for word in text.split_ascii_whitespace() {
        let (k, v) = word.split_once('=')?;
        fields.insert(k, v);
    }
    let get = |k: &str| fields.get(k).copied();
    let num = |k: &str| get(k)?.parse::<u64>().ok();
    let proto = u8::try_from(num("proto")?).ok()?;
    let key = LimitKey {
        proto: u8::try_from(num("limit_proto")?).ok()?,
        port: u16::try_from(num("limit_port")?).ok()?,
        syn_only: u8::try_from(num("limit_syn")?).ok()?,
    };
    let limit = match key {
        _ if num("pps")? == 0 => "none".to_owned(),
        LimitKey::DEFAULT => "default".to_owned(),
        LimitKey::FRAGMENTS => "fragments".to_owned(),
        key => crate::config::Selector::from_key(&key).map(|s| describe(&s))?,
    };
    Some(TraceLine {
        seq: 0,
        at_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        src: get("src")?.parse::<IpAddr>().ok()?,
        proto,
        sport: u16::try_from(num("sport")?).ok()?,
        dport: u16::try_from(num("dport")?).ok()?,
        syn: num("syn")? == 1,
        fragment: num("fragment")? == 1,
        verdict: get("verdict")?.to_owned(),
        limit,
        pps: num("pps")?,
        burst: num("burst")?,
    })
}

/// The `log::Log` the program's aya-log records go to: trace lines into the log, anything
/// else (there is nothing else today) to the daemon's own log.
pub struct Sink(pub Arc<TraceLog>);

impl log::Log for Sink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        match parse_line(&text) {
            Some(line) => self.0.push(line),
            None => tracing::warn!(record = %text, "unexpected log record from the XDP program"),
        }
    }

    fn flush(&self) {}
}

/// Reads the program's records as they come, on a thread of its own that owns the logger
/// (and so keeps its ring buffer open for as long as the daemon runs).
pub fn spawn_reader(mut logger: aya_log::EbpfLogger<Sink>) -> std::io::Result<()> {
    std::thread::Builder::new().name("secgate-trace".into()).spawn(move || {
        loop {
            let mut fds = [nix::poll::PollFd::new(logger.as_fd(), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(500u16));
            // aya-log panics on a record it cannot decode; one bad record must not end
            // tracing for the daemon's life.
            let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush()));
            if flushed.is_err() {
                tracing::warn!("an undecodable record from the XDP program was dropped");
            }
        }
    })?;
    Ok(())
}

struct Session {
    net: IpNet,
    until: Instant,
}

/// The traces running, by id.
#[derive(Default)]
pub struct Traces {
    sessions: BTreeMap<u64, Session>,
    next: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TraceError {
    #[error("{MAX_TRACES} traces are running already; wait for one to end or stop one with Ctrl-C")]
    Full,
    #[error("trace {0} is not running (it ended, or the daemon restarted)")]
    Unknown(u64),
    #[error("a trace lasts at most {}s", MAX_TRACE.as_secs())]
    TooLong,
}

impl Traces {
    /// Starts a trace of `net` until `until`; returns its id.
    pub fn start(&mut self, net: IpNet, until: Instant, now: Instant) -> Result<u64, TraceError> {
        if until.saturating_duration_since(now) > MAX_TRACE {
            return Err(TraceError::TooLong);
        }
        if self.sessions.len() >= MAX_TRACES as usize {
            return Err(TraceError::Full);
        }
        self.next += 1;
        self.sessions.insert(self.next, Session { net: net.trunc(), until });
        Ok(self.next)
    }

    pub fn stop(&mut self, id: u64) -> bool {
        self.sessions.remove(&id).is_some()
    }

    /// The prefix trace `id` follows, if it is still running.
    pub fn net(&self, id: u64) -> Result<IpNet, TraceError> {
        self.sessions.get(&id).map(|s| s.net).ok_or(TraceError::Unknown(id))
    }

    /// Ends the traces whose time is up; returns whether any ended.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.until > now);
        self.sessions.len() != before
    }

    /// Every prefix traced, for the kernel's tries.
    pub fn nets(&self) -> BTreeSet<IpNet> {
        self.sessions.values().map(|s| s.net).collect()
    }

    pub fn active(&self) -> bool {
        !self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests;
