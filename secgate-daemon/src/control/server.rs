//! The daemon side of the control socket: root only (mode 0600 and a peer-credential check),
//! bounded reads, one request per connection, a reply for every failure, and an audit entry
//! for every change.

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{info, warn};

use super::proto::{MAX_REQUEST_BYTES, Reply, Request, StatsReply};
use crate::shared::Shared;

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
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    info!("control socket ready");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move { connection(stream, shared).await });
            }
            Err(e) => warn!(error = %e, "control socket accept failed"),
        }
    }
}

async fn connection(stream: UnixStream, shared: Arc<Shared>) {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    let reply = match uid {
        Some(0) => match read_request(read).await {
            Ok(line) => match Request::decode(&line) {
                Ok(req) => {
                    let shared = shared.clone();
                    tokio::task::spawn_blocking(move || handle(&shared, req, 0))
                        .await
                        .unwrap_or_else(|e| Reply::error(format!("internal error: {e}")))
                }
                Err(e) => {
                    shared.count_action("invalid", false);
                    Reply::error(e.to_string())
                }
            },
            Err(msg) => Reply::error(msg),
        },
        other => {
            let uid = other.unwrap_or(u32::MAX);
            warn!(uid, "control request from non-root caller refused");
            let msg = "permission denied: the secgate control socket only serves root; run the command with sudo";
            shared.audit.record(uid, "connect", &serde_json::Value::Null, Err(msg));
            shared.count_action("refused", false);
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

/// Runs one request, audits it if it changes policy, and counts it.
pub fn handle(shared: &Shared, req: Request, uid: u32) -> Reply {
    let reply = dispatch(shared, &req);
    if req.is_change() {
        shared.audit.record(uid, req.action(), &req, reply.error.as_deref().map_or(Ok(()), Err));
    }
    shared.count_action(req.action(), reply.ok);
    reply
}

fn dispatch(shared: &Shared, req: &Request) -> Reply {
    let mut p = shared.policy();
    let result = match req.clone() {
        Request::Status {} => p.status().map(Reply::data),
        Request::Stats {} => p.stats().map(|stats| {
            let events = shared.events();
            Reply::data(StatsReply {
                stats,
                events_total: events.total,
                top_sources: events.top(TOP_SOURCES),
            })
        }),
        Request::BanAdd { cidr, ttl_secs, reason } => {
            p.ban_add(cidr, ttl_secs.map(Duration::from_secs_f64), reason).map(Reply::data)
        }
        Request::BanDel { cidr } => p.ban_del(cidr).map(|found| removed(found, "ban", &cidr)),
        Request::BanList {} => p.bans().map(Reply::data),
        Request::AllowAdd { cidr } => p.allow_add(cidr).map(|()| Reply::data(cidr)),
        Request::AllowDel { cidr } => {
            p.allow_del(cidr).map(|found| removed(found, "allow entry", &cidr))
        }
        Request::AllowList {} => p.allow().map(Reply::data),
        Request::LimitShow {} => Ok(Reply::data(p.limits())),
        Request::LimitSet { selector, rate } => {
            p.set_limit(selector, rate).map(|()| Reply::data(p.limits()))
        }
        Request::LimitDel { selector } => p.del_limit(selector).map(|found| {
            if found { Reply::data(p.limits()) } else { Reply::error("no such limit") }
        }),
        Request::Mode { mode } => p.set_mode(mode).map(|()| Reply::data(mode)),
        Request::Reload {} => Ok(match shared.reload(&mut p) {
            Ok(()) => Reply::data("reloaded"),
            Err(e) => Reply::error(format!("reload rejected, the running policy stays: {e}")),
        }),
    };
    result.unwrap_or_else(|e| Reply::error(e.to_string()))
}

fn removed(found: bool, what: &str, cidr: &ipnet::IpNet) -> Reply {
    if found { Reply::data(cidr) } else { Reply::error(format!("no {what} for {cidr}")) }
}
