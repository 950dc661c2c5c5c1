//! Real TLS clients for gateway tests: rustls with a chosen ALPN, TLS versions and client
//! certificate, then hyper's HTTP/1.1 or HTTP/2 client on top, or raw bytes.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::pki::ClientCert;
use crate::netns::NetNs;

/// How a client connects.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub sni: String,
}

pub const H1: &[&[u8]] = &[b"http/1.1"];
pub const H2: &[&[u8]] = &[b"h2"];

impl Tls {
    /// Trusts `ca`, offers `alpn`, presents `cert` if given; TLS 1.2 and 1.3.
    pub fn new(ca: &Path, sni: &str, alpn: &[&[u8]], cert: Option<ClientCert>) -> Tls {
        Tls::with_versions(ca, sni, alpn, cert, &[&rustls::version::TLS13, &rustls::version::TLS12])
    }

    pub fn with_versions(
        ca: &Path,
        sni: &str,
        alpn: &[&[u8]],
        cert: Option<ClientCert>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Tls {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("ca file") {
            roots.add(c.expect("ca pem")).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match cert {
            Some(c) => builder.with_client_auth_cert(c.chain, c.key).expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Tls { config: Arc::new(config), sni: sni.into() }
    }

    /// A TCP connection from `src` in `ns` to `dst`, then the TLS handshake.
    pub async fn connect(
        &self,
        ns: &NetNs,
        src: &str,
        dst: SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = tcp(ns, src, dst)?;
        let name = ServerName::try_from(self.sni.clone()).expect("server name");
        let connect = TlsConnector::from(self.config.clone()).connect(name, tcp);
        tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
    }
}

/// A TCP connection from `src` (an address of `ns`) to `dst`, opened inside `ns`.
pub fn tcp(ns: &NetNs, src: &str, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let src: SocketAddr = SocketAddr::new(src.parse().expect("source address"), 0);
    let std = ns.within(move || -> std::io::Result<std::net::TcpStream> {
        let domain = socket2::Domain::for_address(dst);
        let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        sock.bind(&src.into())?;
        sock.connect_timeout(&dst.into(), Duration::from_secs(5))?;
        Ok(sock.into())
    })?;
    std.set_nonblocking(true)?;
    TcpStream::from_std(std)
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP connection over TLS, sending bodies of type `B`.
pub enum Http<B = Full<Bytes>> {
    H1(hyper::client::conn::http1::SendRequest<B>),
    H2(hyper::client::conn::http2::SendRequest<B>),
}

impl<B> Http<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Speaks whatever ALPN chose over `tls`.
    pub async fn over(tls: TlsStream<TcpStream>) -> Http<B> {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            Http::H2(send)
        } else {
            let (send, conn) =
                hyper::client::conn::http1::handshake(io).await.expect("h1 handshake");
            tokio::spawn(conn);
            Http::H1(send)
        }
    }

    /// Sends `req` and returns the response as soon as its head is in.
    pub async fn head(&mut self, req: Request<B>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Http::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Http::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// Sends `req` and returns the first chunk of the response body, as soon as it arrives.
    pub async fn first_chunk(&mut self, req: Request<B>) -> Result<Bytes, hyper::Error> {
        let mut body = self.head(req).await?.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data()
                && !data.is_empty()
            {
                return Ok(data);
            }
        }
        Ok(Bytes::new())
    }

    pub async fn send(&mut self, req: Request<B>) -> Result<Reply, hyper::Error> {
        let resp = self.head(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes().to_vec();
        Ok(Reply {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }
}

/// A request for `path` on `host` with `headers`.
pub fn request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(format!("https://{host}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body))).expect("request")
}

/// Sends `bytes` over `tls` and reads until the server closes or 3 s pass.
pub async fn raw(tls: &mut TlsStream<TcpStream>, bytes: &[u8]) -> Vec<u8> {
    tls.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}
