//! The daemon side of the control socket: root only (mode 0600 and a peer-credential check),
//! bounded reads, one request per connection, a reply for every failure. It only translates:
//! every change goes through the [`Service`], which audits it.

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{info, warn};

use super::proto::{MAX_REQUEST_BYTES, Reply, Request, StatsReply, TraceStarted};
use crate::service::{Caller, Service, ServiceError};

const READ_TIMEOUT: Duration = Duration::from_secs(10);
const TOP_SOURCES: usize = 10;

/// Binds the socket, replacing a stale one, with permissions only root can use.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use: is another secgate daemon running?", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves requests until the process exits.
pub async fn serve(listener: UnixListener, service: Arc<Service>) {
    info!("control socket ready");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let service = service.clone();
                tokio::spawn(async move { connection(stream, service).await });
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(super::ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, service: Arc<Service>) {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    let reply = match uid {
        Some(0) => match read_request(read).await {
            Ok(line) => match Request::decode(&line) {
                Ok(req) => handle(&service, req, 0).await,
                Err(e) => {
                    service.count_action("invalid", false);
                    Reply::error(e.to_string())
                }
            },
            Err(msg) => Reply::error(msg),
        },
        other => {
            let uid = other.unwrap_or(u32::MAX);
            warn!(uid, "control request from non-root caller refused");
            let msg = "permission denied: the secgate control socket only serves root; run the command with sudo";
            service.refused(uid, msg);
            service.count_action("refused", false);
            Reply::error(msg)
        }
    };
    let mut line = serde_json::to_vec(&reply).unwrap_or_else(|_| br#"{"ok":false}"#.to_vec());
    line.push(b'\n');
    let _ = write.write_all(&line).await;
}

/// Reads one line, at most `MAX_REQUEST_BYTES`, within `READ_TIMEOUT`.
async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<Vec<u8>, String> {
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = Vec::new();
    match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err("timed out waiting for the request".into()),
        Ok(Err(e)) => return Err(format!("reading request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_REQUEST_BYTES {
        return Err(format!("request exceeds {MAX_REQUEST_BYTES} bytes"));
    }
    Ok(line)
}

/// Runs one request as operator `uid` through the service and counts it. Changes are
/// audited by the service; the reply comes once a change is on disk.
pub async fn handle(service: &Arc<Service>, req: Request, uid: u32) -> Reply {
    let action = req.action();
    let reply = dispatch(service, &Caller::Operator { uid }, req)
        .await
        .unwrap_or_else(|e| Reply::error(e.to_string()));
    service.count_action(action, reply.ok);
    reply
}

/// Translates the wire request into a service call and its result into reply data.
async fn dispatch(
    service: &Arc<Service>,
    caller: &Caller,
    req: Request,
) -> Result<Reply, ServiceError> {
    Ok(match req {
        Request::Status {} => Reply::data(service.status()?),
        Request::Stats {} => {
            let stats = service.stats()?;
            let events = service.events();
            Reply::data(StatsReply {
                stats,
                events_total: events.total,
                top_sources: events.top(TOP_SOURCES),
            })
        }
        Request::BanAdd { cidr, ttl_secs, reason } => {
            let ttl = ttl_secs.map(Duration::from_secs_f64);
            Reply::data(service.ban_add(caller, cidr, ttl, reason).await?)
        }
        Request::BanDel { cidr } => {
            service.ban_del(caller, cidr).await?;
            Reply::data(cidr)
        }
        Request::BanList {} => Reply::data(service.bans()),
        Request::AllowAdd { cidr } => {
            service.allow_add(caller, cidr).await?;
            Reply::data(cidr)
        }
        Request::AllowDel { cidr } => {
            service.allow_del(caller, cidr).await?;
            Reply::data(cidr)
        }
        Request::AllowList {} => Reply::data(service.allow()),
        Request::LimitShow {} => Reply::data(service.limits()),
        Request::LimitSet { selector, rate } => {
            Reply::data(service.limit_set(caller, selector, rate).await?)
        }
        Request::LimitDel { selector } => Reply::data(service.limit_del(caller, selector).await?),
        Request::Mode { mode } => {
            service.set_mode(caller, mode).await?;
            Reply::data(mode)
        }
        Request::Reload {} => {
            service.reload(caller.clone()).await?;
            Reply::data("reloaded")
        }
        Request::TraceStart { cidr, secs } => {
            let length = std::time::Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero() && *d <= crate::trace::MAX_TRACE)
                .ok_or_else(|| {
                    ServiceError::Invalid(format!(
                        "trace length {secs}s is out of range: give more than 0s and at most {}s",
                        crate::trace::MAX_TRACE.as_secs()
                    ))
                })?;
            let (id, cursor, suppressed) = service.trace_start(caller, cidr, length)?;
            Reply::data(TraceStarted { id, cursor, suppressed })
        }
        Request::TraceRead { id, cursor } => Reply::data(service.trace_read(id, cursor)?),
        Request::TraceStop { id } => Reply::data(service.trace_stop(id)?),
    })
}
