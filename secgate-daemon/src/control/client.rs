//! The CLI side of the control socket.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::proto::{Reply, Request};

/// How long to wait for a reply: a change is answered once it is on disk, which a slow or
/// failing disk can take a while to tell.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the daemon at {path}: {source}; is `secgate run` running, and is --socket (or SECGATE_SOCKET) right?"
    )]
    Connect { path: String, source: std::io::Error },
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent an unreadable reply: {0}")]
    Reply(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and returns the reply's data, or the daemon's error.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            return ClientError::Refused(format!(
                "permission denied on {}: the control socket only serves root; run the command with sudo",
                socket.display()
            ));
        }
        ClientError::Connect { path: socket.display().to_string(), source }
    })?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    // The daemon may answer (a refusal) and close before reading the request, so a failed
    // write is only reported if no reply follows it.
    let written = stream.write_all(&line);
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    if reply.is_empty() {
        written?;
        if let Err(e) = &read
            && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        {
            return Err(ClientError::Refused(format!(
                "no reply from the daemon within {}s: a change may still have been applied; check with `secgate status` and `secgate ban list`",
                REPLY_TIMEOUT.as_secs()
            )));
        }
        read?;
        return Err(ClientError::Refused(
            "the daemon closed the connection without a reply".into(),
        ));
    }
    let reply: Reply = serde_json::from_str(&reply)?;
    if reply.ok {
        Ok(reply.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ClientError::Refused(reply.error.unwrap_or_else(|| "request failed".into())))
    }
}
