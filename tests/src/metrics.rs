//! Scraping the daemon's Prometheus endpoint from inside the gateway namespace.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use crate::netns::Topology;

/// GET /metrics on the default listener, parsed.
pub fn scrape(topo: &Topology) -> prometheus_parse::Scrape {
    let body = topo.gw.within(|| {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9477").expect("metrics listener");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("a scrape within 20 s");
        resp
    });
    let (head, body) = body.split_once("\r\n\r\n").expect("http response");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("text/plain; version=0.0.4"),
        "{head}"
    );
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format")
}

/// The value of `name` (with `label`, if given) in `scrape`.
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {name} {label:?} in scrape"));
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

/// One unlabelled sample, scraped now.
pub fn metric(topo: &Topology, name: &str) -> f64 {
    sample(&scrape(topo), name, None)
}

/// Sum of `name` over the samples whose labels include all of `labels`, scraped now.
pub fn sum(topo: &Topology, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(topo)
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
