//! A watch on each client connection: when its decrypted bytes last moved and when its
//! requests last made progress (for the idle timeout); on HTTP/1.1, a strict check of each
//! request's framing before hyper reads it ([`super::framing`]); and, on HTTP/2, how fast
//! the client resets streams.
//!
//! Hand-rolled because hyper exposes neither. h2 bounds resets only of streams the server
//! has not accepted yet (`max_pending_accept_reset_streams`); a gateway that accepts
//! streams quickly starts the work of every request a rapid-reset client opens and cancels
//! at once (CVE-2023-44487). So the frame headers the client sends are read here (only
//! their 9-byte headers; payloads are skipped unparsed) and a connection that resets
//! streams faster than its budget allows is cut. CONTINUATION floods are h2's to stop: it
//! bounds the frames of one header block by the header-list limit.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    framing::{H1Scan, Refused},
    validate,
};

/// Bytes read from the client at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The HTTP/2 connection preface a client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const RST_STREAM: u8 = 0x3;

/// Stream resets a client may send back to back, and per second after that. A browser that
/// navigates away resets a handful; a rapid-reset attack sends thousands.
pub const RESET_BURST: f64 = 100.0;
pub const RESETS_PER_SEC: f64 = 10.0;

/// When a connection's bytes last moved and when one of its requests last made progress
/// (began, moved a body frame either way, or ended), shared with its idle timer. Both count:
/// a client that only pings an HTTP/2 connection (or trickles a header block) is idle, and
/// so is one whose request stalls because it stopped reading the response.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    bytes_ms: AtomicU64,
    request_ms: AtomicU64,
    /// Part of an HTTP/1.1 head has come, not all of it.
    mid_head: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            bytes_ms: AtomicU64::new(0),
            request_ms: AtomicU64::new(0),
            mid_head: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.bytes_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether the connection is in the middle of sending a request head.
    pub fn mid_head(&self) -> bool {
        self.mid_head.load(Ordering::Relaxed)
    }

    /// A request began, moved a body frame, or ended.
    pub fn progress(&self) {
        self.request_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long the connection has been idle: the longer of the time since its bytes moved
    /// and the time since a request last made progress.
    pub fn quiet(&self) -> std::time::Duration {
        let now = self.now_ms();
        let bytes = now.saturating_sub(self.bytes_ms.load(Ordering::Relaxed));
        let requests = now.saturating_sub(self.request_ms.load(Ordering::Relaxed));
        std::time::Duration::from_millis(bytes.max(requests))
    }
}

/// Where the scanner is in the client's byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Matching the HTTP/2 preface; `n` bytes matched so far.
    Preface(usize),
    /// Collecting a frame header.
    Header,
    /// Skipping a frame's payload.
    Payload(u32),
    /// Not HTTP/2: nothing to scan.
    Off,
}

/// Reads HTTP/2 frame headers out of the client's bytes and keeps the reset budget.
#[derive(Debug)]
pub struct FrameScan {
    phase: Phase,
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Token bucket of stream resets.
    tokens: f64,
    refilled: Instant,
}

/// Why a connection was cut.
#[derive(Debug, PartialEq, Eq)]
pub enum Abuse {
    RapidReset,
    /// An HTTP/1.1 head with ambiguous framing (or too large): answered by the guard itself.
    Framing(Refused),
}

impl FrameScan {
    pub fn new() -> FrameScan {
        FrameScan {
            phase: Phase::Preface(0),
            header: [0; FRAME_HEADER],
            have: 0,
            tokens: RESET_BURST,
            refilled: Instant::now(),
        }
    }

    /// Scans bytes the client sent, in order, received at `now`.
    pub fn feed(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), Abuse> {
        while !bytes.is_empty() {
            match self.phase {
                Phase::Off => return Ok(()),
                Phase::Preface(n) => {
                    let take = (PREFACE.len() - n).min(bytes.len());
                    if bytes[..take] != PREFACE[n..n + take] {
                        self.phase = Phase::Off;
                        return Ok(());
                    }
                    self.phase = if n + take == PREFACE.len() {
                        Phase::Header
                    } else {
                        Phase::Preface(n + take)
                    };
                    bytes = &bytes[take..];
                }
                Phase::Header => {
                    let take = (FRAME_HEADER - self.have).min(bytes.len());
                    self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                    self.have += take;
                    bytes = &bytes[take..];
                    if self.have == FRAME_HEADER {
                        self.have = 0;
                        self.frame(now)?;
                    }
                }
                Phase::Payload(left) => {
                    let take = (left as usize).min(bytes.len());
                    bytes = &bytes[take..];
                    let left = left - take as u32;
                    self.phase = if left == 0 { Phase::Header } else { Phase::Payload(left) };
                }
            }
        }
        Ok(())
    }

    /// Judges one complete frame header.
    fn frame(&mut self, now: Instant) -> Result<(), Abuse> {
        let h = &self.header;
        let length = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        if h[3] == RST_STREAM {
            self.spend_reset(now)?;
        }
        self.phase = if length == 0 { Phase::Header } else { Phase::Payload(length) };
        Ok(())
    }

    fn spend_reset(&mut self, now: Instant) -> Result<(), Abuse> {
        let refill = now.saturating_duration_since(self.refilled).as_secs_f64() * RESETS_PER_SEC;
        self.tokens = (self.tokens + refill).min(RESET_BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            return Err(Abuse::RapidReset);
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

/// A client connection's IO, watched.
pub struct Guarded<S> {
    inner: S,
    activity: Arc<Activity>,
    scan: FrameScan,
    h1: H1Scan,
    /// Client bytes the HTTP/1.1 scan has released and hyper has not read yet.
    ready: Vec<u8>,
    /// The answer to a refused head, written before the connection is shut down; hyper
    /// reads the end of the stream from then on.
    refusal: Option<Vec<u8>>,
    /// A body's framing was refused midway: hyper reads an error, which fails the request
    /// (the pipeline answers it as malformed framing).
    broken: bool,
    /// Called once when the connection is cut.
    on_abuse: Option<Box<dyn FnOnce(Abuse) + Send>>,
}

impl<S> Guarded<S> {
    pub fn new(
        inner: S,
        activity: Arc<Activity>,
        h1: H1Scan,
        on_abuse: Box<dyn FnOnce(Abuse) + Send>,
    ) -> Guarded<S> {
        Guarded {
            inner,
            activity,
            scan: FrameScan::new(),
            h1,
            ready: Vec::new(),
            refusal: None,
            broken: false,
            on_abuse: Some(on_abuse),
        }
    }

    fn report(&mut self, abuse: Abuse) {
        if let Some(report) = self.on_abuse.take() {
            report(abuse);
        }
    }
}

impl<S: AsyncRead + Unpin> Guarded<S> {
    /// An HTTP/2 connection's read: straight into hyper's buffer (nothing is held back),
    /// its frame headers scanned for the reset budget.
    fn poll_read_h2(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let fresh = &buf.filled()[before..];
        if !fresh.is_empty() {
            self.activity.touch();
        }
        if let Err(abuse) = self.scan.feed(fresh, Instant::now()) {
            self.report(abuse);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "HTTP/2 stream resets over budget",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    /// Reads the client through its protocol's scan. A refused HTTP/1.1 head never reaches hyper:
    /// what came before it is delivered, then the end of the stream, so hyper finishes the
    /// answers it owes and shuts the connection down, which writes the refusal last.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.h1.is_off() {
            return this.poll_read_h2(cx, buf);
        }
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.refusal.is_some() {
                return Poll::Ready(Ok(()));
            }
            if this.broken {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed chunked framing",
                )));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let fresh = read.filled();
            if fresh.is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.activity.touch();
            let fed = this.h1.feed(fresh, &mut this.ready);
            this.activity.mid_head.store(this.h1.mid_head(), Ordering::Relaxed);
            if let Err(refused) = fed {
                if refused.in_body {
                    this.broken = true;
                } else {
                    this.refusal = Some(validate::refused_head(refused).http1_bytes());
                }
                this.report(Abuse::Framing(refused));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.activity.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(answer) = &mut this.refusal {
            while !answer.is_empty() {
                let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, answer))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                answer.drain(..n);
            }
            std::task::ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_counts_both_bytes_and_requests() {
        let pause = std::time::Duration::from_millis(30);
        let a = Activity::new();
        std::thread::sleep(pause);
        assert!(a.quiet() >= pause, "nothing has happened yet");
        a.progress();
        a.touch();
        assert!(a.quiet() < pause, "a request moving, bytes moving");
        std::thread::sleep(pause);
        a.touch();
        assert!(a.quiet() >= pause, "bytes moving (pings) but no request progress");
        a.progress();
        std::thread::sleep(pause);
        assert!(a.quiet() >= pause, "a request whose bytes stopped (a slow reader)");
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    fn stream(resets: usize, pad: &[u8]) -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, &[]));
        for _ in 0..resets {
            bytes.extend(frame(0x1, pad));
            bytes.extend(frame(RST_STREAM, &[0, 0, 0, 8]));
        }
        bytes
    }

    #[test]
    fn a_reset_flood_is_cut_and_normal_use_is_not() {
        let now = Instant::now();
        assert_eq!(FrameScan::new().feed(&stream(100, b"headers"), now), Ok(()));
        assert_eq!(FrameScan::new().feed(&stream(101, b"headers"), now), Err(Abuse::RapidReset));
        let mut scan = FrameScan::new();
        scan.feed(&stream(100, b"h"), now).unwrap();
        let later = now + std::time::Duration::from_secs(1);
        let ten_more: Vec<u8> = stream(10, b"h")[PREFACE.len() + FRAME_HEADER..].to_vec();
        assert_eq!(scan.feed(&ten_more, later), Ok(()), "the budget refills at {RESETS_PER_SEC}/s");
    }

    #[test]
    fn not_http2_is_left_alone() {
        let mut scan = FrameScan::new();
        let mut bytes = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(RST_STREAM, 10_000));
        assert_eq!(scan.feed(&bytes, Instant::now()), Ok(()));
        assert_eq!(scan.phase, Phase::Off);
    }

    proptest::proptest! {
        /// However the bytes are split into reads, the scanner reaches the same verdict and
        /// the same place; arbitrary bytes never panic it.
        #[test]
        fn splitting_never_changes_the_verdict(
            resets in 0usize..300,
            pad in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            cuts in proptest::collection::vec(1usize..50, 1..200),
        ) {
            let bytes = stream(resets, &pad);
            let now = Instant::now();
            let want = FrameScan::new().feed(&bytes, now);
            let mut split = FrameScan::new();
            let mut rest = &bytes[..];
            let mut got = Ok(());
            for cut in cuts.iter().cycle() {
                if rest.is_empty() || got.is_err() {
                    break;
                }
                let (now_bytes, later) = rest.split_at((*cut).min(rest.len()));
                got = split.feed(now_bytes, now);
                rest = later;
            }
            if got.is_ok() && !rest.is_empty() {
                got = split.feed(rest, now);
            }
            proptest::prop_assert_eq!(got, want);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut scan = FrameScan::new();
            let mut with_preface = PREFACE.to_vec();
            with_preface.extend(&bytes);
            let _ = scan.feed(&with_preface, Instant::now());
            let _ = FrameScan::new().feed(&bytes, Instant::now());
        }
    }
}
