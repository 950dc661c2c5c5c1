//! New connections per second: each a TCP connection, a TLS handshake (full, or resumed
//! from a ticket the same gateway issued), one request and its answer, and a close, from
//! many clients at once. h2load cannot resume sessions, so this client is rustls's (with
//! its default ticket cache); it runs on one thread in the client namespace, pinned to the
//! generator's CPU.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustls::{ClientConfig, pki_types::ServerName};
use secgate_tests::netns::NetNs;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Full handshakes, or resumed ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Full,
    Resumed,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Resumed => "resumed",
        }
    }
}

/// What a run did: connections completed per second, and the share that resumed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rate {
    pub per_sec: f64,
    pub resumed: f64,
}

/// Clients opening connections at once.
const CLIENTS: usize = 16;

/// Runs [`CLIENTS`] loops of connect, handshake, request, close against `addr` for `secs`.
pub fn run(
    ns: &NetNs,
    cpu: usize,
    tls: &ClientConfig,
    (addr, request): (SocketAddr, &str),
    kind: Kind,
    secs: f64,
) -> Rate {
    let mut config = tls.clone();
    if kind == Kind::Full {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let config = Arc::new(config);
    let request = request.to_owned();
    ns.within(move || {
        secgate_tests::harness::pin_to_cpu(cpu);
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            // One connection first, so that resumed runs start with a ticket.
            let _ = once(&config, addr, &request).await;
            let (done, resumed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let start = Instant::now();
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    let (config, request) = (config.clone(), request.clone());
                    let (done, resumed) = (done.clone(), resumed.clone());
                    tokio::spawn(async move {
                        while Instant::now() < end {
                            match once(&config, addr, &request).await {
                                Ok(was_resumed) => {
                                    done.fetch_add(1, Ordering::Relaxed);
                                    resumed.fetch_add(u64::from(was_resumed), Ordering::Relaxed);
                                }
                                Err(e) => panic!("a new connection to {addr} failed: {e}"),
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("client task");
            }
            let n = done.load(Ordering::Relaxed) as f64;
            Rate {
                per_sec: n / start.elapsed().as_secs_f64(),
                resumed: resumed.load(Ordering::Relaxed) as f64 / n.max(1.0),
            }
        })
    })
}

/// One connection: handshake, `request`, its whole answer (the server closes), and whether
/// the handshake resumed a session.
async fn once(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    request: &str,
) -> std::io::Result<bool> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("api.test").expect("server name");
    let connect = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp);
    let mut tls = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(80)])
        )));
    }
    Ok(resumed)
}
