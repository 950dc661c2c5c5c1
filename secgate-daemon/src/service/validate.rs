//! What every change must satisfy, whoever asks: checked by the service, so the escalation
//! and the fleet get the same checks as the control socket (which runs them early, too, to
//! name the bad field in its reply).

use std::time::Duration;

use ipnet::IpNet;

use crate::config::{Rate, values};

/// Longest ban reason kept: reasons go into `ban list`, the audit log and the state file.
pub const MAX_REASON_BYTES: usize = 256;
/// Shortest TTL: anything shorter is a ban that is over before it starts.
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// Longest TTL (about 317 years): beyond it, leave the TTL out for a permanent ban.
pub const MAX_TTL: Duration = Duration::from_secs(10_000_000_000);

pub fn cidr(net: &IpNet) -> Result<(), String> {
    if net.trunc() != *net {
        return Err(format!("CIDR {net} has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(())
}

pub fn ttl(ttl: Option<Duration>) -> Result<(), String> {
    match ttl {
        Some(t) if !(MIN_TTL..=MAX_TTL).contains(&t) => Err(format!(
            "ttl {} is out of range {}–{}; leave it out for a permanent ban",
            humantime::format_duration(t),
            humantime::format_duration(MIN_TTL),
            humantime::format_duration(MAX_TTL),
        )),
        _ => Ok(()),
    }
}

/// At most [`MAX_REASON_BYTES`], and no control or text-direction characters, which would
/// reach terminals through `ban list` and could make a line read as something else.
pub fn reason(reason: &str) -> Result<(), String> {
    text("reason", reason)
}

/// The same rules for an escalation rule's name, which the audit log and metrics carry.
pub fn rule(rule: &str) -> Result<(), String> {
    text("rule name", rule)
}

fn text(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_REASON_BYTES {
        return Err(format!("{what} is longer than {MAX_REASON_BYTES} bytes"));
    }
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if s.chars().any(hidden) {
        return Err(format!("{what} contains control or text-direction characters"));
    }
    Ok(())
}

pub fn rate(rate: &Rate) -> Result<(), String> {
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    values::pps(int(rate.pps)).and_then(|_| values::burst(int(rate.burst))).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        assert!(cidr(&"198.18.0.5/24".parse().unwrap()).unwrap_err().contains("198.18.0.0/24"));
        assert!(ttl(Some(Duration::from_nanos(1))).unwrap_err().contains("out of range"));
        assert!(ttl(Some(MAX_TTL + Duration::from_secs(1))).is_err());
        assert!(ttl(None).is_ok() && ttl(Some(Duration::from_secs(60))).is_ok());
        assert!(reason("auth\u{1b}[2J").unwrap_err().contains("control"));
        assert!(reason("abc\u{202e}cba").is_err(), "a right-to-left override");
        assert!(reason("5 failed logins from 198.18.0.1").is_ok());
        assert!(reason(&"x".repeat(257)).is_err());
        assert!(rate(&Rate { pps: 0, burst: 1 }).unwrap_err().contains("pps 0"));
        assert!(rate(&Rate { pps: u64::MAX, burst: 1 }).is_err());
    }

    proptest::proptest! {
        #[test]
        fn reasons_never_panic(s in "\\PC{0,300}|[\\x00-\\x1f]{0,4}") {
            let _ = reason(&s);
        }
    }
}
