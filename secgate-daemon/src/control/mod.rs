//! The control plane: a JSON-lines protocol over a root-only Unix socket.

pub mod client;
pub mod proto;
pub mod server;

/// Default socket path (also `[control] socket` in the config).
pub const DEFAULT_SOCKET: &str = "/run/secgate/control.sock";
