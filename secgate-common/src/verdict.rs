//! Why a packet got its verdict: one counter slot per reason.

/// The reason behind a verdict. The discriminant is the index into the `STATS` map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Reason {
    /// IP packet within its limit.
    Pass = 0,
    /// Not IPv4 or IPv6 (ARP, LLDP…): never judged.
    NonIp = 1,
    /// Source on the allowlist.
    Allow = 2,
    /// Source on the denylist with an unexpired entry.
    Deny = 3,
    /// Source over its rate limit.
    Rate = 4,
    /// Truncated or malformed Ethernet/VLAN/IP/L4 header.
    Malformed = 5,
    /// Non-first IP fragment, dropped because `fragment_limit = "drop"`.
    Fragment = 6,
    /// Let through because other CPUs kept winning the race for the source's bucket: not a
    /// plain pass, so an operator can see when contention (not the limit) decided.
    Contended = 7,
}

/// Number of [`Reason`]s, i.e. entries in the `STATS` map.
pub const REASON_COUNT: u32 = 8;

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Pass,
        Reason::NonIp,
        Reason::Allow,
        Reason::Deny,
        Reason::Rate,
        Reason::Malformed,
        Reason::Fragment,
        Reason::Contended,
    ];

    /// Stable lower-case name used in stats output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Pass => "pass",
            Reason::NonIp => "non_ip",
            Reason::Allow => "allow",
            Reason::Deny => "deny",
            Reason::Rate => "rate",
            Reason::Malformed => "malformed",
            Reason::Fragment => "fragment",
            Reason::Contended => "contended",
        }
    }

    /// Whether enforce mode drops a packet for this reason.
    pub const fn drops(self) -> bool {
        matches!(self, Reason::Deny | Reason::Rate | Reason::Malformed | Reason::Fragment)
    }
}

/// What happens to the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
}

/// A reason plus the action the mode and flags turn it into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    pub action: Action,
}
