use std::net::IpAddr;

use proptest::prelude::*;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ttl(expires_ns: u64) -> Ban {
    Ban { expires_ns: Some(expires_ns), reason: "test".into() }
}

/// The kernel's view: the deny maps as the writes leave them, read as the program reads them
/// (the host entry if in force, else the longest prefix of the others).
#[derive(Default)]
struct Tries(BTreeMap<IpNet, DenyEntry>);

impl Tries {
    fn apply(&mut self, w: &Write) {
        match *w {
            Write::Set(n, e) => {
                self.0.insert(n, e);
            }
            Write::Remove(n) => {
                self.0.remove(&n);
            }
        }
    }

    fn drops(&self, addr: IpAddr, now: u64) -> bool {
        let is_host = |n: &IpNet| n.prefix_len() == if n.addr().is_ipv4() { 32 } else { 64 };
        let covering = || self.0.iter().filter(|(n, _)| n.contains(&addr));
        if covering().any(|(n, e)| is_host(n) && e.active(now)) {
            return true;
        }
        covering()
            .filter(|(n, _)| !is_host(n))
            .max_by_key(|(n, _)| n.prefix_len())
            .is_some_and(|(_, e)| e.active(now))
    }

    /// Entries per deny map.
    fn per_map(&self) -> [usize; DENY_MAPS] {
        let mut out = [0; DENY_MAPS];
        for n in self.0.keys() {
            out[holder(n).index] += 1;
        }
        out
    }
}

/// The specification: a source drops while any ban covering it is in force.
fn spec(bans: &Bans, addr: IpAddr, now: u64) -> bool {
    bans.slots.iter().any(|(n, s)| n.contains(&addr) && s.own().is_some_and(|e| e.active(now)))
}

#[test]
fn short_ban_inside_a_permanent_one_does_not_hide_it() {
    // Regression: a 1 s ban on a /32 inside a permanent /25 let the host through once the
    // /32 expired, until the sweeper removed it (9 of 30 pings over 3 s got through).
    let mut bans = Bans::default();
    let mut tries = Tries::default();
    for w in bans.set_config(&[net("198.18.0.0/25")].into()) {
        tries.apply(&w);
    }
    for w in bans.ban(net("198.18.0.7/32"), ttl(1_000)) {
        tries.apply(&w);
    }
    let host: IpAddr = "198.18.0.7".parse().unwrap();
    assert_eq!(tries.0[&net("198.18.0.7/32")], DenyEntry { expires_ns: 0 });
    assert!(tries.drops(host, 5_000), "after the /32's own expiry the /25 still drops it");
    let (lifted, writes) = bans.expire(5_000);
    assert_eq!(lifted, vec![net("198.18.0.7/32")]);
    assert_eq!(writes, vec![Write::Remove(net("198.18.0.7/32"))]);
    assert_eq!(bans.list(5_000).len(), 1, "only the /25 is listed");
}

#[test]
fn lifting_a_covering_ban_restores_the_inner_expiry() {
    let mut bans = Bans::default();
    bans.ban(net("fd00:1::/64"), ttl(10_000));
    let writes = bans.ban(net("fd00::/16"), Ban { expires_ns: None, reason: "wide".into() });
    assert_eq!(
        writes,
        vec![
            Write::Set(net("fd00::/16"), DenyEntry { expires_ns: 0 }),
            Write::Set(net("fd00:1::/64"), DenyEntry { expires_ns: 0 })
        ]
    );
    let (_, writes) = bans.lift(net("fd00::/16")).unwrap();
    assert_eq!(
        writes,
        vec![
            Write::Set(net("fd00:1::/64"), DenyEntry { expires_ns: 10_000 }),
            Write::Remove(net("fd00::/16"))
        ],
        "the inner entry is shortened before the outer one goes"
    );
}

#[test]
fn config_and_dynamic_ban_on_one_cidr_leave_nothing_due() {
    // Regression: a reload that turned a dynamic ban into a config one left the dynamic ban
    // due forever, and the sweeper walked the deny maps every second.
    let mut bans = Bans::default();
    bans.ban(net("198.18.3.0/24"), ttl(1_000));
    bans.set_config(&[net("198.18.3.0/24")].into());
    let (lifted, writes) = bans.expire(2_000);
    assert_eq!(lifted, vec![net("198.18.3.0/24")], "the dynamic part lapses");
    assert!(writes.is_empty(), "the config keeps the entry as it was");
    assert!(bans.due.is_empty());
    assert!(bans.is_config(&net("198.18.3.0/24")));
    let writes = bans.set_config(&BTreeSet::new());
    assert_eq!(writes, vec![Write::Remove(net("198.18.3.0/24"))]);
    assert!(bans.is_empty() && bans.count_in_map(&net("198.18.3.0/24")) == 0);
}

/// A pool of nested prefixes, so that generated bans overlap.
fn pool() -> Vec<IpNet> {
    [
        "198.18.0.0/15",
        "198.18.0.0/16",
        "198.18.0.0/24",
        "198.18.0.0/25",
        "198.18.0.0/32",
        "198.18.0.7/32",
        "198.18.1.0/24",
        "198.19.0.0/16",
        "fd00::/16",
        "fd00:1::/64",
        "fd00:1::7/128",
        "fd00:2::/48",
    ]
    .iter()
    .map(|s| net(s))
    .collect()
}

fn addrs() -> Vec<IpAddr> {
    [
        "198.18.0.0",
        "198.18.0.7",
        "198.18.0.200",
        "198.18.1.9",
        "198.19.5.5",
        "fd00:1::7",
        "fd00:1::8",
        "fd00:2::1",
        "fd00:9::1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Ban(usize, Option<u64>),
    Lift(usize),
    Config(Vec<usize>),
    Expire(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..12usize, proptest::option::of(1u64..100)).prop_map(|(n, e)| Op::Ban(n, e)),
        2 => (0..12usize).prop_map(Op::Lift),
        1 => proptest::collection::vec(0..12usize, 0..3).prop_map(Op::Config),
        2 => (0u64..100).prop_map(Op::Expire),
    ]
}

proptest! {
    /// After any sequence of changes, the deny maps read as the program reads them drop what the
    /// bans say; and while a change's writes are applied one by one, no instant drops less
    /// than both the policy before and the policy after it.
    #[test]
    fn longest_prefix_agrees_with_every_ban(ops in proptest::collection::vec(op(), 1..40)) {
        let (pool, addrs) = (pool(), addrs());
        let mut bans = Bans::default();
        let mut tries = Tries::default();
        for op in ops {
            let before = bans.clone();
            let writes = match op {
                Op::Ban(i, e) => bans.ban(pool[i], Ban { expires_ns: e, reason: "".into() }),
                Op::Lift(i) => bans.lift(pool[i]).map(|(_, w)| w).unwrap_or_default(),
                Op::Config(idx) => bans.set_config(&idx.iter().map(|i| pool[*i]).collect()),
                Op::Expire(now) => bans.expire(now).1,
            };
            for w in &writes {
                tries.apply(w);
                for a in &addrs {
                    for now in [0, 50, 150] {
                        let kept = spec(&before, *a, now) && spec(&bans, *a, now);
                        prop_assert!(!kept || tries.drops(*a, now), "{a} passes at {now} mid-change");
                    }
                }
            }
            for a in &addrs {
                for now in [0, 1, 50, 99, 150] {
                    prop_assert_eq!(tries.drops(*a, now), spec(&bans, *a, now), "{} at {}", a, now);
                }
            }
            prop_assert_eq!(&tries.0, &bans.projection());
            // One prefix of each deny map: IPv4 net and host, IPv6 net and host.
            let mut counted = [0; DENY_MAPS];
            for i in [0, 4, 8, 9] {
                counted[holder(&pool[i]).index] = bans.count_in_map(&pool[i]);
            }
            prop_assert_eq!(counted, tries.per_map());
        }
    }
}
