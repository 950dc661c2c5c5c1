//! What the fleet keeps in Redis and publishes, as JSON. Anything read back is untrusted
//! (another node's bug, or a hand-edited key): it is decoded strictly, and a value that does
//! not decode is skipped and counted, never applied half-read.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::service::SharedBan;

/// A ban as the fleet's hash holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Unix ms; 0: permanent.
    pub expires_ms: u64,
    pub reason: String,
    /// The node that made it.
    pub origin: String,
    /// When it was made (Unix ms): changes of one CIDR are ordered by it, and the
    /// propagation delay runs from it (0: a republished ban of unknown age).
    pub at_ms: u64,
    /// An escalation ban's count of the source's bans so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strikes: Option<u32>,
}

impl Record {
    pub fn of(ban: &SharedBan, origin: &str, at_ms: u64) -> Record {
        Record {
            expires_ms: ban.expires_unix_ms.unwrap_or(0),
            reason: ban.reason.clone(),
            origin: origin.to_owned(),
            at_ms,
            strikes: ban.strikes,
        }
    }

    /// The ban it stands for; `shorten`: whether it may cut a longer one short.
    pub fn ban(&self, cidr: IpNet, shorten: bool) -> SharedBan {
        SharedBan {
            cidr,
            expires_unix_ms: (self.expires_ms != 0).then_some(self.expires_ms),
            reason: self.reason.clone(),
            shorten,
            strikes: self.strikes,
        }
    }
}

/// A change as published on the fleet's channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Event {
    Ban {
        cidr: IpNet,
        #[serde(flatten)]
        record: Record,
        /// An operator's ban, which replaces a longer one.
        shorten: bool,
    },
    Lift {
        cidr: IpNet,
        origin: String,
        at_ms: u64,
    },
}

impl Event {
    pub fn cidr(&self) -> IpNet {
        match self {
            Event::Ban { cidr, .. } | Event::Lift { cidr, .. } => *cidr,
        }
    }

    pub fn origin(&self) -> &str {
        match self {
            Event::Ban { record, .. } => &record.origin,
            Event::Lift { origin, .. } => origin,
        }
    }

    pub fn at_ms(&self) -> u64 {
        match self {
            Event::Ban { record, .. } => record.at_ms,
            Event::Lift { at_ms, .. } => *at_ms,
        }
    }
}

/// A published message: the change's place in the fleet's order of changes (the counter
/// the scripts raise), a space, the event.
pub fn decode_message(payload: &[u8]) -> Result<(u64, Event), String> {
    let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8".to_string())?;
    let (seq, json) = text.split_once(' ').ok_or("no sequence number")?;
    let seq = seq.parse::<u64>().map_err(|_| format!("bad sequence number {seq:?}"))?;
    let event = serde_json::from_str(json).map_err(|e| format!("bad event: {e}"))?;
    Ok((seq, event))
}

pub fn decode_record(value: &[u8]) -> Result<Record, String> {
    serde_json::from_slice(value).map_err(|e| format!("bad ban record: {e}"))
}

pub fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            expires_ms: 1_800_000_000_000,
            reason: "auth_failures".into(),
            origin: "a".into(),
            at_ms: 7,
            strikes: Some(2),
        }
    }

    #[test]
    fn events_round_trip() {
        let ban =
            Event::Ban { cidr: "198.18.0.9/32".parse().unwrap(), record: record(), shorten: false };
        let lift =
            Event::Lift { cidr: "fd00:1::/64".parse().unwrap(), origin: "b".into(), at_ms: 9 };
        for e in [ban, lift] {
            let msg = format!("42 {}", encode(&e));
            assert_eq!(decode_message(msg.as_bytes()).unwrap(), (42, e));
        }
        assert_eq!(decode_record(encode(&record()).as_bytes()).unwrap(), record());
    }

    #[test]
    fn malformed_messages_are_refused_by_name() {
        assert!(decode_message(b"ban").unwrap_err().contains("sequence"));
        assert!(decode_message(b"x {}").unwrap_err().contains("sequence number"));
        assert!(decode_message(b"1 {\"op\":\"ban\"}").unwrap_err().contains("bad event"));
        let extra = r#"1 {"op":"lift","cidr":"198.18.0.1/32","origin":"a","at_ms":1,"x":1}"#;
        assert!(decode_message(extra.as_bytes()).is_err(), "unknown fields are refused");
        assert!(
            decode_message(
                b"1 {\"op\":\"lift\",\"cidr\":\"300.1.1.1/32\",\"origin\":\"a\",\"at_ms\":1}"
            )
            .is_err()
        );
    }

    proptest::proptest! {
        /// Whatever another node (or anyone with access to Redis) publishes, decoding
        /// returns an answer and never panics.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_message(&bytes);
            let _ = decode_record(&bytes);
        }

        #[test]
        fn bans_survive_the_trip(expires in 0u64..u64::MAX / 2, at in 0u64..u64::MAX / 2, reason in "[ -~]{0,40}", shorten: bool, strikes: Option<u32>, a: u8, b: u8) {
            let record = Record { expires_ms: expires, reason, origin: "gw-1".into(), at_ms: at, strikes };
            let e = Event::Ban { cidr: format!("198.18.{a}.{b}/32").parse().unwrap(), record, shorten };
            proptest::prop_assert_eq!(decode_message(format!("3 {}", encode(&e)).as_bytes()).unwrap(), (3, e));
        }
    }
}
