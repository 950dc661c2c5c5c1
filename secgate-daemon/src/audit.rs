//! The audit trail of control changes: one JSON object per line, appended, with the caller's
//! uid and the time. Written by a serializer, never by string concatenation.

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
struct Entry<'a, R: Serialize> {
    time: String,
    uid: u32,
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

    /// Appends one entry. A failing audit write is logged loudly but does not undo the change
    /// it records: the change has already happened.
    pub fn record<R: Serialize>(
        &self,
        uid: u32,
        action: &str,
        request: &R,
        result: Result<(), &str>,
    ) {
        let entry = Entry {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            uid,
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
}
