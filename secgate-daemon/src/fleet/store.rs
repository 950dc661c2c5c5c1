//! The fleet's bans in Redis: a hash of bans by CIDR, a sorted set of their expiries (so
//! lapsed ones are pruned without a scan), a sorted set of recent lifts (so a node that was
//! away learns what was lifted meanwhile), and a counter that orders every change. Each
//! change is one server-side script, so the hash, the sets, the counter and the published
//! message never disagree, whichever node writes at once. Keys share one hash tag, so a
//! Redis Cluster keeps them in one slot.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use redis::{Script, aio::MultiplexedConnection};

use super::wire::{self, Event, Record};

/// Lifts are remembered this long: a node away for longer than this may bring back a ban
/// lifted meanwhile (it republishes the bans it holds that the fleet does not know).
pub const LIFT_MEMORY_MS: u64 = 7 * 86_400 * 1000;

/// Stores a ban made at `ARGV[8]` unless a later lift or a later ban of the CIDR is held
/// (order is by the nodes' wall clocks), and with `mode = "max"` only when it outlasts the
/// ban held. Publishes it; returns its number, 0 when refused as older (its node then takes
/// the fleet's), or -1 when the fleet already holds a ban at least as long.
const PUT: &str = r"
local at = tonumber(ARGV[8])
local lifted = redis.call('ZSCORE', KEYS[3], ARGV[1])
if lifted and tonumber(lifted) > at then return 0 end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and tonumber(rec.at_ms) and tonumber(rec.at_ms) > at then return 0 end
  if ARGV[3] == 'max' then
    local held = redis.call('ZSCORE', KEYS[2], ARGV[1])
    if not held then return -1 end
    held = tonumber(held)
    local want = tonumber(ARGV[2])
    if held > tonumber(ARGV[4]) and want ~= 0 and held >= want then return -1 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
redis.call('ZREM', KEYS[3], ARGV[1])
local seq = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[7], seq .. ' ' .. ARGV[6])
return seq
";

/// Removes a ban unless it was made after the lift (made at `ARGV[2]`), remembers the lift
/// (never moving a remembered lift back in time), forgets lifts older than the memory by
/// Redis's clock. Publishes it; returns its number, or 0 when refused.
const LIFT: &str = r"
local at = tonumber(ARGV[2])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and tonumber(rec.at_ms) and tonumber(rec.at_ms) > at then return 0 end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local prev = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not prev or tonumber(prev) < at then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%.0f', now - tonumber(ARGV[3])))
local seq = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[5], seq .. ' ' .. ARGV[4])
return seq
";

/// Prunes lapsed bans; returns the counter, every ban, and every remembered lift.
const LOAD: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, cidr in ipairs(gone) do redis.call('HDEL', KEYS[1], cidr) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local seq = redis.call('GET', KEYS[4]) or '0'
return {seq, redis.call('HGETALL', KEYS[1]), redis.call('ZRANGE', KEYS[3], 0, -1)}
";

/// The fleet's key names under its prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    bans: String,
    expiries: String,
    lifts: String,
    seq: String,
    pub channel: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let key = |name: &str| format!("{{{prefix}}}:{name}");
        Keys {
            bans: key("bans"),
            expiries: key("ban-expiries"),
            lifts: key("lifts"),
            seq: key("seq"),
            channel: format!("{prefix}:ban-events"),
        }
    }

    fn four<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(&self.bans).key(&self.expiries).key(&self.lifts).key(&self.seq);
        inv
    }
}

/// The load script's answer: the counter, the bans' hash as pairs, the lifts.
type Loaded = (u64, Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>);

/// The fleet's bans as one load saw them.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The counter at the load: a published change numbered at most this is in it.
    pub seq: u64,
    pub bans: BTreeMap<IpNet, Record>,
    pub lifted: BTreeSet<IpNet>,
    /// Entries that did not decode (skipped).
    pub unreadable: usize,
}

pub struct Store {
    keys: Keys,
    put: Script,
    lift: Script,
    load: Script,
}

impl Store {
    pub fn new(prefix: &str) -> Store {
        Store {
            keys: Keys::new(prefix),
            put: Script::new(PUT),
            lift: Script::new(LIFT),
            load: Script::new(LOAD),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Stores and publishes `record` for `cidr`; with `extend_only`, only where it outlasts
    /// the ban the fleet holds. Its number in the fleet's order; 0 if refused as older; -1
    /// if the fleet holds a ban at least as long.
    pub async fn put(
        &self,
        conn: &mut MultiplexedConnection,
        cidr: IpNet,
        record: &Record,
        extend_only: bool,
        now_ms: u64,
    ) -> redis::RedisResult<i64> {
        let event = Event::Ban { cidr, record: record.clone(), shorten: !extend_only };
        self.keys
            .four(&self.put)
            .arg(cidr.to_string())
            .arg(record.expires_ms)
            .arg(if extend_only { "max" } else { "set" })
            .arg(now_ms)
            .arg(wire::encode(record))
            .arg(wire::encode(&event))
            .arg(&self.keys.channel)
            .arg(record.at_ms)
            .invoke_async(conn)
            .await
    }

    /// Removes and publishes the lift of `cidr` made at `at_ms`. Its number in the fleet's
    /// order, or 0 if refused (the ban held was made later).
    pub async fn lift(
        &self,
        conn: &mut MultiplexedConnection,
        cidr: IpNet,
        origin: &str,
        at_ms: u64,
    ) -> redis::RedisResult<i64> {
        let event = Event::Lift { cidr, origin: origin.to_owned(), at_ms };
        self.keys
            .four(&self.lift)
            .arg(cidr.to_string())
            .arg(at_ms)
            .arg(LIFT_MEMORY_MS)
            .arg(wire::encode(&event))
            .arg(&self.keys.channel)
            .invoke_async(conn)
            .await
    }

    /// How many bans the fleet holds.
    pub async fn count(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<usize> {
        redis::cmd("HLEN").arg(&self.keys.bans).query_async(conn).await
    }

    /// Every ban in force and every remembered lift, lapsed bans pruned first.
    pub async fn load(
        &self,
        conn: &mut MultiplexedConnection,
        now_ms: u64,
    ) -> redis::RedisResult<Snapshot> {
        let (seq, pairs, lifted): Loaded =
            self.keys.four(&self.load).arg(now_ms).invoke_async(conn).await?;
        let mut snapshot = Snapshot { seq, ..Snapshot::default() };
        let net = |b: &[u8]| std::str::from_utf8(b).ok().and_then(|s| s.parse::<IpNet>().ok());
        for (cidr, value) in pairs {
            match (net(&cidr), wire::decode_record(&value)) {
                (Some(cidr), Ok(record)) if super::settings::node(&record.origin).is_ok() => {
                    snapshot.bans.insert(cidr, record);
                }
                _ => snapshot.unreadable += 1,
            }
        }
        for cidr in lifted {
            match net(&cidr) {
                Some(cidr) => {
                    snapshot.lifted.insert(cidr);
                }
                None => snapshot.unreadable += 1,
            }
        }
        Ok(snapshot)
    }
}
