use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const V4: &str = "src=198.18.0.3 proto=17 sport=40000 dport=9999 syn=0 fragment=0 verdict=rate limit_proto=17 limit_port=9999 limit_syn=0 pps=1000 burst=100";

#[test]
fn the_kernels_record_becomes_a_line() {
    let line = parse_line(V4).expect("parses");
    assert_eq!(line.src, "198.18.0.3".parse::<IpAddr>().unwrap());
    assert_eq!((line.proto, line.sport, line.dport, line.syn), (17, 40000, 9999, false));
    assert_eq!((line.verdict.as_str(), line.limit.as_str()), ("rate", "udp port 9999"));
    assert_eq!((line.pps, line.burst), (1000, 100));
    let v6 = V4.replace("198.18.0.3", "fd00:18::2").replace("proto=17", "proto=6");
    let v6 = v6.replace("limit_proto=17", "limit_proto=6").replace("limit_syn=0", "limit_syn=1");
    let line = parse_line(&v6).expect("parses");
    assert_eq!(line.src, "fd00:18::2".parse::<IpAddr>().unwrap());
    assert_eq!(line.limit, "tcp port 9999 (SYN only)");
    let unlimited = parse_line(&V4.replace("pps=1000", "pps=0")).unwrap();
    assert_eq!(unlimited.limit, "none");
    let default = V4.replace("limit_proto=17 limit_port=9999", "limit_proto=0 limit_port=0");
    assert_eq!(parse_line(&default).unwrap().limit, "default");
    let fragment =
        V4.replace("fragment=0", "fragment=1").replace("limit_proto=17", "limit_proto=44");
    let fragment = fragment.replace("limit_port=9999", "limit_port=0");
    assert_eq!(parse_line(&fragment).unwrap().limit, "fragments");
}

#[test]
fn anything_else_is_refused() {
    for bad in [
        "",
        "hello",
        &V4.replace("src=198.18.0.3", "src=198.18.0"),
        &V4.replace("proto=17 ", "proto=300 "),
        &V4.replace("sport=40000", "sport=70000"),
        &V4.replace(" burst=100", ""),
        &V4.replace("limit_proto=17", "limit_proto=99"),
    ] {
        assert!(parse_line(bad).is_none(), "{bad}");
    }
}

proptest! {
    #[test]
    fn arbitrary_records_never_panic(s in "\\PC{0,300}") {
        let _ = parse_line(&s);
    }

    #[test]
    fn mutated_records_never_panic(pos in 0usize..200, byte in any::<u8>()) {
        let mut b = V4.as_bytes().to_vec();
        let pos = pos % b.len();
        b[pos] = byte;
        let _ = parse_line(&String::from_utf8_lossy(&b));
    }
}

#[test]
fn readers_see_their_prefix_from_their_cursor_and_the_log_stays_bounded() {
    let log = TraceLog::default();
    let line = |src: &str| parse_line(&V4.replace("198.18.0.3", src)).unwrap();
    log.push(line("198.18.0.3"));
    let cursor = log.cursor();
    log.push(line("198.18.0.3"));
    log.push(line("198.18.0.9"));
    log.push(line("10.0.0.1"));
    let net: IpNet = "198.18.0.0/24".parse().unwrap();
    let read = log.since(cursor, net);
    assert_eq!(read.lines.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!((read.cursor, read.skipped), (4, 0));
    assert!(log.since(read.cursor, net).lines.is_empty());
    let before = log.cursor();
    for _ in 0..MAX_READ + 5 {
        log.push(line("198.18.0.3"));
    }
    let read = log.since(before, net);
    assert_eq!(
        (read.lines.len(), read.skipped),
        (MAX_READ, 5),
        "a read is capped, the rest counted"
    );
    for _ in 0..KEEP * 2 {
        log.push(line("198.18.0.3"));
    }
    let read = log.since(before, net);
    assert_eq!(
        read.skipped as usize,
        KEEP * 2 + MAX_READ + 5 - MAX_READ,
        "lines gone unread are counted"
    );
    assert_eq!(log.inner.lock().unwrap().0.len(), KEEP, "only the newest lines are kept");
}

#[test]
fn sessions_end_at_their_deadline_and_are_bounded() {
    let now = Instant::now();
    let mut t = Traces::default();
    let net: IpNet = "198.18.0.3/24".parse().unwrap();
    let id = t.start(net, now + Duration::from_secs(10), now).unwrap();
    assert_eq!(t.net(id).unwrap(), "198.18.0.0/24".parse::<IpNet>().unwrap(), "truncated");
    assert!(t.active());
    assert_eq!(t.start(net, now + MAX_TRACE * 2, now), Err(TraceError::TooLong));
    assert!(!t.expire(now + Duration::from_secs(5)));
    assert!(t.expire(now + Duration::from_secs(10)));
    assert_eq!(t.net(id), Err(TraceError::Unknown(id)));
    assert!(!t.active());
    for _ in 0..MAX_TRACES {
        t.start(net, now + Duration::from_secs(1), now).unwrap();
    }
    assert_eq!(t.start(net, now + Duration::from_secs(1), now), Err(TraceError::Full));
    assert_eq!(t.nets().len(), 1, "one prefix in the kernel for sessions sharing it");
    assert!(t.stop(MAX_TRACES as u64 + 1));
    assert!(!t.stop(10_000));
}
