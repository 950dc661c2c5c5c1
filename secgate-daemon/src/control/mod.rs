//! The control plane: a JSON-lines protocol over a root-only Unix socket.

pub mod client;
pub mod proto;
pub mod server;

/// Default socket path (also `[control] socket` in the config).
pub const DEFAULT_SOCKET: &str = "/run/secgate/control.sock";

/// How long an accept loop waits after a failed `accept` (out of descriptors, say), so a
/// lasting failure neither spins a CPU nor floods the log.
pub const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
