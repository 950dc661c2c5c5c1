//! Parsers for the values operators type, shared by the config file and the CLI so both
//! accept exactly the same spellings and name the bad value the same way.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use secgate_common::{
    limit::{MAX_BURST, MAX_PPS},
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

/// A CIDR, or a bare address meaning a single host. Host bits must be zero so that
/// `10.0.0.1/8` (probably a typo) is not silently widened.
pub fn cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = s.parse().map_err(|_| {
        format!("invalid CIDR {s:?}: expected an address or address/prefix like 198.51.100.0/24")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "invalid CIDR {s:?}: host bits are set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A duration like `30s`, `10m`, `2h` or `1d`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?}: {e}; use forms like 30s, 10m, 2h"))?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be longer than zero"));
    }
    Ok(d)
}

pub fn pps(v: i64) -> Result<u64, String> {
    range("pps", v, 1, MAX_PPS)
}

pub fn burst(v: i64) -> Result<u64, String> {
    range("burst", v, 1, MAX_BURST)
}

pub fn port(v: i64) -> Result<u16, String> {
    range("port", v, 1, 65535).map(|p| p as u16)
}

pub fn prefix(name: &str, v: i64, max: u64) -> Result<u8, String> {
    range(name, v, 1, max).map(|p| p as u8)
}

pub fn range(name: &str, v: i64, lo: u64, hi: u64) -> Result<u64, String> {
    u64::try_from(v)
        .ok()
        .filter(|v| (lo..=hi).contains(v))
        .ok_or_else(|| format!("{name} {v} is out of range {lo}–{hi}"))
}

/// A protocol an override can name.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Protocol, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmp" => Ok(Protocol::Icmp),
            _ => Err(format!("invalid protocol {s:?}: expected tcp, udp or icmp")),
        }
    }

    /// IP protocol numbers this name covers (ICMP covers both families).
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Protocol::Tcp => &[IPPROTO_TCP],
            Protocol::Udp => &[IPPROTO_UDP],
            Protocol::Icmp => &[IPPROTO_ICMP, secgate_common::net::IPPROTO_ICMPV6],
        }
    }

    pub fn from_number(p: u8) -> Option<Protocol> {
        match p {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            IPPROTO_ICMP | secgate_common::net::IPPROTO_ICMPV6 => Some(Protocol::Icmp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_forms() {
        assert_eq!(cidr("198.51.100.7").unwrap().to_string(), "198.51.100.7/32");
        assert_eq!(cidr("fd00::/64").unwrap().to_string(), "fd00::/64");
        assert!(cidr("10.0.0.1/8").unwrap_err().contains("did you mean 10.0.0.0/8"));
        assert!(cidr("300.1.1.1").unwrap_err().contains("\"300.1.1.1\""));
        assert!(cidr("1.2.3.0/33").is_err());
    }

    #[test]
    fn durations_and_ranges() {
        assert_eq!(duration("2s").unwrap(), Duration::from_secs(2));
        assert!(duration("0s").is_err());
        assert!(duration("soon").unwrap_err().contains("\"soon\""));
        assert!(port(0).is_err() && port(65536).is_err() && port(443).is_ok());
        assert!(pps(0).unwrap_err().contains("pps 0"));
    }

    proptest::proptest! {
        #[test]
        fn cidr_never_panics(s in "\\PC{0,60}") {
            let _ = cidr(&s);
            let _ = duration(&s);
        }

        #[test]
        fn cidr_round_trips(a in proptest::array::uniform16(0u8..), len in 0u8..=128) {
            let net = IpNet::new(IpAddr::from(a), len).unwrap().trunc();
            proptest::prop_assert_eq!(cidr(&net.to_string()).unwrap(), net);
        }
    }
}
