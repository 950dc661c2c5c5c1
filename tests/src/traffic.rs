//! Real traffic between the test namespaces: UDP counts, TCP connects and ICMP pings.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::NetNs;

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("ip"), port)
}

/// UDP payload size used by the senders (so byte counters can be checked).
pub const UDP_PAYLOAD: usize = 32;

/// A UDP socket listening in `ns` on both families.
pub fn udp_receiver(ns: &NetNs, port: u16) -> UdpSocket {
    ns.within(|| {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
        s.set_only_v6(false).expect("dual stack");
        s.set_recv_buffer_size(8 << 20).expect("rcvbuf");
        s.bind(&sa("::", port).into()).expect("bind receiver");
        let s: UdpSocket = s.into();
        s.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        s
    })
}

/// Reads until the socket has been quiet for its read timeout; returns datagrams received.
pub fn drain(sock: &UdpSocket) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while sock.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// UDP sockets in `ns` bound to `src`, one per flow (distinct source ports).
pub fn udp_senders(ns: &NetNs, src: &str, flows: usize) -> Vec<UdpSocket> {
    ns.within(|| (0..flows).map(|_| UdpSocket::bind(sa(src, 0)).expect("bind sender")).collect())
}

/// Sends `count` datagrams from `src` to `dst`, spread round-robin over `flows` flows.
pub fn udp_send(ns: &NetNs, src: &str, dst: SocketAddr, count: usize, flows: usize) {
    let socks = udp_senders(ns, src, flows);
    let payload = [0x5au8; UDP_PAYLOAD];
    for i in 0..count {
        socks[i % flows].send_to(&payload, dst).expect("send");
    }
}

/// Sends at `pps` for `duration` over the given sockets; returns (sent, elapsed).
pub fn udp_paced(
    socks: &[UdpSocket],
    dst: SocketAddr,
    pps: u64,
    duration: Duration,
) -> (u64, Duration) {
    const TICK: Duration = Duration::from_millis(5);
    let per_tick = (pps * TICK.as_micros() as u64 / 1_000_000).max(1);
    let payload = [0x5au8; UDP_PAYLOAD];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next = start;
    while start.elapsed() < duration {
        for _ in 0..per_tick {
            // ENOBUFS under load is the sender's problem, not the datapath's: retry later.
            if socks[sent as usize % socks.len()].send_to(&payload, dst).is_ok() {
                sent += 1;
            }
        }
        next += TICK;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    (sent, start.elapsed())
}

/// A TCP listener in `ns` on both families (the kernel completes handshakes by itself).
pub fn tcp_listener(ns: &NetNs, port: u16) -> std::net::TcpListener {
    ns.within(|| {
        let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        s.set_only_v6(false).expect("dual stack");
        s.set_reuse_address(true).expect("reuseaddr");
        s.bind(&sa("::", port).into()).expect("bind listener");
        s.listen(128).expect("listen");
        s.into()
    })
}

/// Whether a TCP connection from `src` to `dst` completes within `timeout`.
pub fn tcp_connects(ns: &NetNs, src: &str, dst: SocketAddr, timeout: Duration) -> bool {
    ns.within(|| {
        let domain = if dst.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        s.bind(&sa(src, 0).into()).expect("bind source");
        s.connect_timeout(&dst.into(), timeout).is_ok()
    })
}

/// Whether at least one of two pings from `src` to `dst` is answered.
pub fn ping(ns: &NetNs, src: &str, dst: &str) -> bool {
    ns.command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "1", "-I", src, dst])
        .output()
        .expect("run ping (iputils-ping; `cargo xtask setup` installs it)")
        .status
        .success()
}
