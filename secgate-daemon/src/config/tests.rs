use super::*;

const GOOD: &str = r#"
state_dir = "/var/lib/secgate"
[datapath]
interfaces = ["eth0"]
default_limit = { pps = 1000, burst = 50 }
allow = ["198.18.0.1"]
deny = ["203.0.113.0/24", "2001:db8::/32"]
[[datapath.limits]]
protocol = "tcp"
port = 443
syn_only = true
pps = 100
burst = 10
[control]
socket = "/run/secgate/control.sock"
"#;

#[test]
fn good_config_parses_with_defaults() {
    let cfg = Config::parse(GOOD).expect("valid");
    let d = &cfg.datapath;
    assert_eq!(
        (d.ipv4_prefix, d.ipv6_prefix, d.mode, d.attach),
        (32, 64, Mode::Enforce, AttachMode::Auto)
    );
    assert_eq!(d.limits.len(), 1);
    assert_eq!(d.deny.len(), 2);
    assert_eq!(d.pin_path, PathBuf::from("/sys/fs/bpf/secgate"));
    let dc = d.datapath_config(d.mode, d.default_limit, &d.limits);
    assert_eq!(dc.override_protos, 1 << 6);
    assert_eq!(dc.default_rule.pps(), 1000);
    assert_eq!(dc.fragment_rule, dc.default_rule, "fragments follow the default limit");
}

#[test]
fn fragments_are_limited_or_dropped_never_free() {
    // Regression: non-first fragments carry no ports, so with only port overrides they
    // passed unlimited.
    let base = "[datapath]\ninterfaces = [\"eth0\"]\n[[datapath.limits]]\nprotocol = \"udp\"\nport = 53\npps = 10\nburst = 5\n";
    let cfg = Config::parse(base).unwrap();
    let d = &cfg.datapath;
    let dc = d.datapath_config(Mode::Enforce, None, &d.limits);
    assert_eq!((dc.fragment_rule.pps(), dc.fragment_rule.burst()), (10, 5), "the loosest override");
    let dc = d.datapath_config(Mode::Enforce, None, &[]);
    assert!(dc.fragment_rule.is_unlimited(), "unlimited only when nothing is limited");
    let syn = Override {
        selector: Selector { protocol: Protocol::Tcp, port: Some(443), syn_only: true },
        rate: Rate { pps: 5, burst: 1 },
    };
    let dc = d.datapath_config(Mode::Enforce, None, &[syn]);
    assert!(dc.fragment_rule.is_unlimited(), "a SYN limit is no limit for fragments");
    assert!(d.describe_fragments(None, &d.limits).contains("10 pps, burst 5 per source"));
    let with = |extra: &str| {
        Config::parse(
            &base.replace("[[datapath.limits]]", &format!("{extra}\n[[datapath.limits]]")),
        )
    };
    let limited = with("fragment_limit = { pps = 100, burst = 10 }").unwrap();
    let dc = limited.datapath.datapath_config(Mode::Enforce, None, &limited.datapath.limits);
    assert_eq!((dc.fragment_rule.pps(), dc.fragment_rule.burst()), (100, 10));
    let dropped = with("fragments = \"drop\"").unwrap();
    let dc = dropped.datapath.datapath_config(Mode::Enforce, None, &dropped.datapath.limits);
    assert_ne!(dc.flags & secgate_common::maps::FLAG_DROP_FRAGMENTS, 0);
    let both = with("fragments = \"drop\"\nfragment_limit = { pps = 1, burst = 1 }").unwrap_err();
    assert!(both.iter().any(|p| p.message.contains("no effect")), "{both:?}");
    let typo = with("fragments = \"dorp\"").unwrap_err();
    assert!(typo[0].message.contains("\"dorp\""), "{typo:?}");
}

#[test]
fn napi_is_left_alone_unless_threaded_is_asked_for() {
    let base = "[datapath]\ninterfaces = [\"eth0\"]\n";
    let with = |extra: &str| Config::parse(&format!("{base}{extra}\n"));
    assert!(!with("").unwrap().datapath.threaded_napi);
    assert!(!with("napi = \"kernel\"").unwrap().datapath.threaded_napi);
    assert!(with("napi = \"threaded\"").unwrap().datapath.threaded_napi);
    let typo = with("napi = \"thread\"").unwrap_err();
    assert_eq!(typo[0].line, Some(3), "{typo:?}");
    assert!(typo[0].message.contains("\"thread\": expected kernel or threaded"), "{typo:?}");
}

#[test]
fn locations_are_read_only_where_the_file_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let at = |text: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::locations(&path)
    };
    let named = "state_dir = \"/srv/sg\"\n[datapath]\npin_path = \"/sys/fs/bpf/x\"\nbogus = 1\n";
    assert_eq!(at(named).unwrap(), ("/sys/fs/bpf/x".into(), "/srv/sg".into()));
    for wrong in [
        "statedir = \"/srv/sg\"\n[datapath]\npin_path = \"/sys/fs/bpf/x\"\n",
        "state_dir = \"/srv/sg\"\npin_path = \"/sys/fs/bpf/x\"\n",
        "state_dir = \"srv\"\n[datapath]\npin_path = \"/sys/fs/bpf/x\"\n",
        "state_dir = \"/srv/sg\"\n[datapath]\npin_path = \"x\"\n",
        "[datapath\n",
    ] {
        let e = at(wrong).unwrap_err().to_string();
        assert!(e.contains("state_dir") || e.contains("expected"), "{wrong}: {e}");
    }
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let bad = r#"
[datapath]
interfaces = ["eth0"]
mode = "block"
ipv4_prefix = 40
default_limit = { pps = 0, burst = 5 }
deny = ["10.0.0.1/8", "not-an-ip"]
[[datapath.limits]]
protocol = "sctp"
port = 70000
pps = 10
burst = 1
"#;
    let problems = Config::parse(bad).expect_err("invalid");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let want = [
        ("line 4", "\"block\""),
        ("line 5", "ipv4_prefix 40"),
        ("line 6", "pps 0"),
        ("line 7", "10.0.0.1/8"),
        ("line 7", "not-an-ip"),
        ("line 9", "\"sctp\""),
        ("line 10", "port 70000"),
    ];
    for (line, needle) in want {
        assert!(
            text.iter().any(|t| t.starts_with(line) && t.contains(needle)),
            "missing {line} {needle} in {text:#?}"
        );
    }
    assert_eq!(problems.len(), want.len(), "{text:#?}");
}

#[test]
fn unknown_keys_are_all_reported() {
    let bad = "[datapath]\ninterfaces = [\"eth0\"]\nmodee = \"enforce\"\n[datapath.default_limit]\npps = 1\nburst = 1\nbrust = 2\n[gatewey]\nlisten = 1\n";
    let problems = Config::parse(bad).expect_err("unknown keys");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|t| t.starts_with("line 3") && t.contains("datapath.modee")),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.starts_with("line 7") && t.contains("brust")), "{text:?}");
    assert!(text.iter().any(|t| t.starts_with("line 8") && t.contains("gatewey")), "{text:?}");
}

#[test]
fn icmp_port_and_udp_syn_are_rejected() {
    let bad = "[datapath]\ninterfaces=[\"e\"]\n[[datapath.limits]]\nprotocol=\"icmp\"\nport=1\npps=1\nburst=1\n[[datapath.limits]]\nprotocol=\"udp\"\nsyn_only=true\npps=1\nburst=1\n";
    let text: Vec<String> =
        Config::parse(bad).unwrap_err().iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|t| t.contains("port only applies")), "{text:?}");
    assert!(text.iter().any(|t| t.contains("syn_only only applies")), "{text:?}");
}

#[test]
fn example_config_is_valid() {
    let src = include_str!("../../../secgate.example.toml");
    Config::parse(src).unwrap_or_else(|p| panic!("secgate.example.toml: {p:#?}"));
}

proptest::proptest! {
    /// Arbitrary text never panics the parser; it is either a config or a list of problems.
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
        let _ = Config::parse(&s);
    }

    /// Mutations of a valid file never panic and, when rejected, always say why.
    #[test]
    fn mutated_config_is_handled(pos in 0usize..400, byte in proptest::num::u8::ANY) {
        let mut bytes = GOOD.as_bytes().to_vec();
        let at = pos % bytes.len();
        bytes[at] = byte;
        if let Ok(s) = String::from_utf8(bytes)
            && let Err(problems) = Config::parse(&s)
        {
            proptest::prop_assert!(!problems.is_empty());
        }
    }
}

#[test]
fn escalation_parses_with_defaults_and_every_key() {
    let cfg = Config::parse(GOOD).unwrap();
    assert!(cfg.escalation.is_none(), "no [escalation]: nobody is banned automatically");
    let cfg = Config::parse(&format!("{GOOD}[escalation]\n")).unwrap();
    let e = cfg.escalation.unwrap();
    assert_eq!(
        (e.window, e.thresholds, e.mode),
        (Duration::from_secs(60), [10, 20, 100, 20, 0], Mode::Enforce)
    );
    let src = format!(
        "{GOOD}[escalation]\nwindow = \"30s\"\nauth_failures = 3\nvalidation_failures = 0\nrate_limited = 50\ntls_failures = 5\noverlimit_events = 2\nban_ttl = \"2m\"\nttl_factor = 1.5\nmax_ttl = \"1h\"\nmode = \"monitor\"\nwiden = {{ v4_prefix = 24, v6_prefix = 56, sources = 4 }}\n"
    );
    let e = Config::parse(&src).unwrap().escalation.unwrap();
    assert_eq!(e.thresholds, [3, 0, 50, 5, 2]);
    assert_eq!(
        (e.ban_ttl, e.ttl_factor, e.max_ttl),
        (Duration::from_secs(120), 1.5, Duration::from_secs(3600))
    );
    assert_eq!(e.mode, Mode::Monitor);
    let w = e.widen.unwrap();
    assert_eq!((w.v4_prefix, w.v6_prefix, w.sources), (24, 56, 4));
    // ban_ttl × 1.5^n, capped at max_ttl.
    assert_eq!(e.ttl(0), Duration::from_secs(120));
    assert_eq!(e.ttl(2), Duration::from_secs(270));
    assert_eq!(e.ttl(40), Duration::from_secs(3600));
}

#[test]
fn escalation_problems_are_all_reported_at_their_lines() {
    let src = format!(
        "{GOOD}[escalation]\nwindow = \"soon\"\nauth_failures = -1\nttl_factor = 0.5\nban_ttl = \"2h\"\nmax_ttl = \"1h\"\nmode = \"ban\"\nwiden = {{ v4_prefix = 40, sources = 1 }}\n"
    );
    let problems = Config::parse(&src).unwrap_err();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let base = GOOD.lines().count() + 1; // the line of [escalation]
    for (line, needle) in [
        (base + 1, "invalid duration \"soon\""),
        (base + 2, "auth_failures"),
        (base + 3, "ttl_factor 0.5 is out of range"),
        (base + 5, "max_ttl (3600s) is shorter than ban_ttl (7200s)"),
        (base + 6, "invalid mode \"ban\""),
        (base + 7, "widen.v4_prefix"),
        (base + 7, "widen.sources"),
    ] {
        assert!(
            text.iter().any(|t| t.contains(needle) && t.starts_with(&format!("line {line}:"))),
            "{needle:?} at line {line} in {text:#?}"
        );
    }
}

#[test]
fn widening_must_be_wider_than_a_source() {
    let src =
        format!("{GOOD}[escalation]\nwiden = {{ v4_prefix = 32, v6_prefix = 48, sources = 3 }}\n");
    let problems = Config::parse(&src).unwrap_err();
    assert!(
        problems[0].message.contains("must be shorter than the datapath's source prefixes"),
        "{problems:?}"
    );
}

#[test]
fn the_coarse_clock_is_used_only_where_every_rule_fits_it() {
    use secgate_common::maps::FLAG_COARSE_CLOCK;
    let flags = |src: &str| {
        let d = Config::parse(src).expect("valid").datapath;
        d.datapath_config(d.mode, d.default_limit, &d.limits).flags & FLAG_COARSE_CLOCK
    };
    assert_ne!(flags(GOOD), 0, "bursts of 50 ms and 90 ms carry over any tick");
    // 100,000 pps in bursts of 10 last 90 µs: a coarse clock would hold it to 10 a tick.
    let tight = GOOD.replace("pps = 1000, burst = 50", "pps = 100000, burst = 10");
    assert_eq!(flags(&tight), 0, "one tight rule keeps the fine clock");
    let tight_override = GOOD.replace("pps = 100\nburst = 10", "pps = 100000\nburst = 10");
    assert_eq!(flags(&tight_override), 0, "an override counts as much as the default");
}
