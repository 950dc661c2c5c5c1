//! The audit trail of policy changes: one JSON object per line, appended, with the caller
//! (an operator's uid, the config, the escalation rule…) and the time. Written by a
//! serializer, never by string concatenation.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use serde::Serialize;
use tracing::warn;

pub struct Audit {
    path: PathBuf,
    file: Mutex<File>,
}

#[derive(Serialize)]
struct Entry<'a, C: Serialize, R: Serialize> {
    time: String,
    #[serde(flatten)]
    caller: &'a C,
    action: &'a str,
    request: &'a R,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl Audit {
    /// Opens (creating, mode 0600) the audit log for appending.
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(Audit { path: path.to_owned(), file: Mutex::new(file) })
    }

    /// Appends one entry; `caller` is flattened into it. A failing audit write is logged
    /// loudly but does not undo the change it records: the change has already happened.
    pub fn record(
        &self,
        caller: &impl Serialize,
        action: &str,
        request: &impl Serialize,
        result: Result<(), &str>,
    ) {
        let entry = Entry {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            caller,
            action,
            request,
            ok: result.is_ok(),
            error: result.err(),
        };
        let mut line = serde_json::to_vec(&entry).expect("audit entries serialize");
        line.push(b'\n');
        let written = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("audit lock poisoned"))
            .and_then(|mut f| f.write_all(&line));
        if let Err(e) = written {
            warn!(path = %self.path.display(), error = %e, "writing the audit log failed");
        }
    }

    /// Appends lines, one JSON object each, in one write: for the request log, whose writer
    /// batches what has queued up.
    pub fn append_lines(&self, lines: &[u8]) {
        let written = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("audit lock poisoned"))
            .and_then(|mut f| f.write_all(lines));
        if let Err(e) = written {
            warn!(path = %self.path.display(), error = %e, "writing the audit log failed");
        }
    }

    /// Makes what was recorded durable.
    pub fn sync(&self) {
        let synced = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("audit lock poisoned"))
            .and_then(|f| f.sync_data());
        if let Err(e) = synced {
            warn!(path = %self.path.display(), error = %e, "syncing the audit log failed");
        }
    }
}
