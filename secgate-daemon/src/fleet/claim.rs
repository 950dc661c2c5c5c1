//! Node names must be unique in a fleet: a node ignores what its own name published, so two
//! gateways sharing a name would silently ignore each other's bans. Each node claims its
//! name in Redis with an id of its own (kept in the state directory, so a restart is the
//! same claimant), refreshed on every ping; finding another id there is reported.

use std::path::Path;

use redis::{Script, aio::MultiplexedConnection};

/// A claim lapses this long after its node stopped refreshing it.
const CLAIM_MS: u64 = 30_000;
const ID_FILE: &str = "fleet-node-id";

/// Claims `KEYS[1]` for id `ARGV[1]` for `ARGV[2]` ms, unless another id holds it; returns
/// that id, or nothing.
const CLAIM: &str = r"
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

pub struct Claim {
    key: String,
    id: String,
    script: Script,
}

impl Claim {
    /// The claim of `node` under `prefix`, with this node's id from `state_dir` (made on
    /// first use).
    pub fn new(prefix: &str, node: &str, state_dir: &Path) -> Claim {
        let path = state_dir.join(ID_FILE);
        let id = match std::fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => {
                let id = format!("{:016x}", rand::random::<u64>());
                if let Err(e) = crate::state::write_atomically(state_dir, ID_FILE, id.as_bytes()) {
                    tracing::warn!(error = %e, "could not keep this node's fleet id; a restart may be taken for another node for 30 s");
                }
                id
            }
        };
        Claim { key: format!("{prefix}:node:{node}"), id, script: Script::new(CLAIM) }
    }

    /// Claims the name (again); the id of another gateway holding it, if one does.
    pub async fn renew(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> redis::RedisResult<Option<String>> {
        let mut invocation = self.script.key(&self.key);
        invocation.arg(&self.id).arg(CLAIM_MS);
        invocation.invoke_async(conn).await
    }
}
