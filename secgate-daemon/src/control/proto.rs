//! Control requests and replies: one JSON object per line, one request per connection.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{Mode, Rate, Selector};

/// Requests larger than this are refused unread: nothing legitimate comes close.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {},
    Stats {},
    BanAdd {
        cidr: IpNet,
        ttl_secs: Option<f64>,
        reason: Option<String>,
    },
    BanDel {
        cidr: IpNet,
    },
    BanList {},
    AllowAdd {
        cidr: IpNet,
    },
    AllowDel {
        cidr: IpNet,
    },
    AllowList {},
    LimitShow {},
    /// `selector: None` sets the default limit.
    LimitSet {
        selector: Option<Selector>,
        rate: Rate,
    },
    LimitDel {
        selector: Option<Selector>,
    },
    Mode {
        mode: Mode,
    },
    /// Re-read and apply the config file.
    Reload {},
    /// Start tracing the datapath's verdicts for sources in `cidr`, for `secs` seconds.
    TraceStart {
        cidr: IpNet,
        secs: f64,
    },
    /// The lines of trace `id` after `cursor`.
    TraceRead {
        id: u64,
        cursor: u64,
    },
    TraceStop {
        id: u64,
    },
}

impl Request {
    /// The request's name as it appears on the wire (`ban_add`, …).
    pub fn action(&self) -> &'static str {
        match self {
            Request::Status {} => "status",
            Request::Stats {} => "stats",
            Request::BanAdd { .. } => "ban_add",
            Request::BanDel { .. } => "ban_del",
            Request::BanList {} => "ban_list",
            Request::AllowAdd { .. } => "allow_add",
            Request::AllowDel { .. } => "allow_del",
            Request::AllowList {} => "allow_list",
            Request::LimitShow {} => "limit_show",
            Request::LimitSet { .. } => "limit_set",
            Request::LimitDel { .. } => "limit_del",
            Request::Mode { .. } => "mode",
            Request::Reload {} => "reload",
            Request::TraceStart { .. } => "trace_start",
            Request::TraceRead { .. } => "trace_read",
            Request::TraceStop { .. } => "trace_stop",
        }
    }
}

/// Reply data of `stats`: the datapath counters plus what only the daemon knows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatsReply {
    #[serde(flatten)]
    pub stats: crate::views::StatsView,
    /// Over-limit events received since the daemon started.
    pub events_total: u64,
    /// Sources with the most over-limit events.
    pub top_sources: Vec<crate::events::SourceEvents>,
}

/// Reply data of `trace_start`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TraceStarted {
    pub id: u64,
    pub cursor: u64,
    /// Lines held back by the kernel's budget so far (all traces), to count from.
    pub suppressed: u64,
}

/// `{"ok":true,"data":…}` or `{"ok":false,"error":"…"}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn data(value: impl Serialize) -> Reply {
        match serde_json::to_value(value) {
            Ok(v) => Reply { ok: true, data: Some(v), error: None },
            Err(e) => Reply::error(format!("encoding reply: {e}")),
        }
    }

    pub fn error(msg: impl Into<String>) -> Reply {
        Reply { ok: false, data: None, error: Some(msg.into()) }
    }
}

/// Why a request could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("request exceeds {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("request is not UTF-8")]
    NotUtf8,
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl Request {
    /// Decodes one request line (without its newline).
    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(DecodeError::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
        let req: Request =
            serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        req.check()?;
        Ok(req)
    }

    /// Semantic checks the types cannot express: the service's own, run early so the reply
    /// names the bad field before anything is queued.
    fn check(&self) -> Result<(), DecodeError> {
        use crate::service::validate;
        let checked = match self {
            Request::BanAdd { cidr, ttl_secs, reason } => validate::cidr(cidr)
                .and(ttl_secs.map_or(Ok(()), ttl))
                .and(reason.as_deref().map_or(Ok(()), validate::reason)),
            Request::BanDel { cidr } | Request::AllowAdd { cidr } | Request::AllowDel { cidr } => {
                validate::cidr(cidr)
            }
            Request::LimitSet { rate, .. } => validate::rate(rate),
            _ => Ok(()),
        };
        checked.map_err(DecodeError::Malformed)
    }
}

/// A TTL in seconds as sent on the wire.
fn ttl(secs: f64) -> Result<(), String> {
    if !(secs.is_finite() && secs > 0.0 && secs <= crate::service::validate::MAX_TTL.as_secs_f64())
    {
        return Err(format!("ttl_secs {secs} must be a positive number of seconds"));
    }
    crate::service::validate::ttl(Some(std::time::Duration::from_secs_f64(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let req = Request::BanAdd {
            cidr: "198.18.0.0/24".parse().unwrap(),
            ttl_secs: Some(2.0),
            reason: None,
        };
        let line = serde_json::to_vec(&req).unwrap();
        assert_eq!(Request::decode(&line).unwrap(), req);
    }

    #[test]
    fn rejects_bad_requests_with_reasons() {
        assert_eq!(Request::decode(&vec![b' '; MAX_REQUEST_BYTES + 1]), Err(DecodeError::TooLarge));
        assert_eq!(Request::decode(&[0xff, 0xfe]), Err(DecodeError::NotUtf8));
        assert!(matches!(Request::decode(br#"{"cmd":"nuke"}"#), Err(DecodeError::Malformed(_))));
        assert!(matches!(
            Request::decode(br#"{"cmd":"ban_add","cidr":"1.2.3.4/40"}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Request::decode(br#"{"cmd":"ban_add","cidr":"1.2.3.4/32","ttl_secs":-1}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Request::decode(br#"{"cmd":"status","extra":1}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Request::decode(br#"{"cmd":"allow_add","cidr":"10.0.0.1/8"}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(Request::decode(br#"{"cmd":"status"}"#), Ok(Request::Status {}));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Request::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_jsonish(s in r#"\{"cmd":"(ban_add|limit_set|mode|allow_add)"(,"[a-z_]{1,9}":("[^"]{0,20}"|-?[0-9.e]{1,8}|null|\{\}))*\}"#) {
            let _ = Request::decode(s.as_bytes());
        }
    }
}
