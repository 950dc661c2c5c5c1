use proptest::prelude::*;

use super::*;

const MAX: usize = 16 * 1024;
const FIELDS: usize = 100;

/// Feeds `input` in pieces cut at `cuts`; returns what was released and the refusal.
fn run(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<Refused>) {
    let mut scan = H1Scan::new(MAX, FIELDS);
    let mut out = Vec::new();
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    points.push(input.len());
    for p in points {
        if p < at {
            continue;
        }
        if let Err(r) = scan.feed(&input[at..p], &mut out) {
            return (out, Some(r));
        }
        at = p;
    }
    (out, None)
}

const GOOD: &[&str] = &[
    "GET /a HTTP/1.1\r\nHost: api.test\r\n\r\n",
    "\r\nGET /b?x=1 HTTP/1.1\r\nHost: api.test\r\nX-Tab:\tv\r\n\r\n",
    "POST /c HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello",
    "POST /d HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
    "PUT /e HTTP/1.1\r\nHost: api.test\r\ncontent-length: 0\r\n\r\n",
];

fn good_stream() -> Vec<u8> {
    GOOD.concat().into_bytes()
}

#[test]
fn valid_pipelined_requests_pass_byte_for_byte() {
    let input = good_stream();
    assert_eq!(run(&input, &[]), (input.clone(), None));
    // Body bytes that look like a bad head are a body, not a head.
    let tricky = b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\n\r\nGET / HTTP/1.1\nX: y\n\n12345678GET /g HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(run(tricky, &[]), (tricky.to_vec(), None));
}

#[test]
fn an_http2_connection_is_not_scanned_and_a_preface_on_http1_is_refused() {
    let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0, b'\n', b'\n']);
    let mut out = Vec::new();
    H1Scan::off().feed(&input, &mut out).unwrap();
    assert_eq!(out, input);
    assert_eq!(
        run(&input, &[3, 20]).1.map(|r| r.why),
        Some("an HTTP version other than 1.0 or 1.1")
    );
}

#[test]
fn chunked_framing_is_followed_strictly() {
    let head = "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let next = "GET /n HTTP/1.1\r\nHost: a\r\n\r\n";
    // Leading zeros are read as hyper reads them, and the next head is still found.
    let zeros = format!("{head}00000000000000000000005\r\nhello\r\n0\r\n\r\n{next}");
    assert_eq!(run(zeros.as_bytes(), &[]), (zeros.clone().into_bytes(), None));
    let long_line = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_LINE));
    for (body, why) in [
        ("10000000000000000\r\n", "an invalid chunk size"),
        ("zz\r\n", "an invalid chunk size"),
        ("5\nhello\r\n0\r\n\r\n", "bare LF"),
        ("5\r\nhello\r\n0\r\nX: a\n\r\n", "bare LF"),
        ("5\r\nhello\r\n0\r\n folded\r\n\r\n", "obs-fold"),
        ("5\r\nhello\r\n0\r\nX : a\r\n\r\n", "whitespace before the colon"),
        (long_line.as_str(), "too long"),
    ] {
        let input = format!("{head}{body}{next}");
        let (out, refused) = run(input.as_bytes(), &[7, 90]);
        let refused = refused.unwrap_or_else(|| panic!("not refused: {body:?}"));
        assert!(refused.why.contains(why) && refused.in_body, "{body:?}: {refused:?}");
        assert!(!String::from_utf8_lossy(&out).contains("GET /n"), "the next head never passes");
    }
}

#[test]
fn request_lines_are_read_strictly() {
    for line in [
        "GET  /a HTTP/1.1",
        "GET /a  HTTP/1.1",
        "GET /a HTTP/1.1 ",
        "G(T /a HTTP/1.1",
        "GET /a\u{7f} HTTP/1.1",
        "GET /a HTTP/2.0",
        "GET /a HTTP/1.2",
        "GET /a",
    ] {
        let input = format!("{line}\r\nHost: a\r\n\r\n");
        assert!(run(input.as_bytes(), &[]).1.is_some(), "{line:?}");
    }
    let ok = "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(run(ok.as_bytes(), &[]).1, None);
}

#[test]
fn ambiguous_heads_are_refused_and_never_released() {
    let h = "Host: api.test\r\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "POST /a HTTP/1.1\r\n{h}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            "both",
        ),
        (
            format!(
                "POST /a HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
            ),
            "both",
        ),
        (format!("GET /a HTTP/1.1\n{h}\r\n"), "bare LF"),
        (format!("GET /a HTTP/1.1\r\n{h}X: 1\n\n"), "bare LF"),
        (format!("GET /a HTTP/1.1\r\n{h}X: 1\rY: 2\r\n\r\n"), "bare CR"),
        (format!("GET /a HTTP/1.1\r\n{h}X: 1\r\n folded\r\n\r\n"), "obs-fold"),
        (format!("GET /a HTTP/1.1\r\n{h}X : 1\r\n\r\n"), "whitespace before the colon"),
        (format!("GET /a HTTP/1.1\r\n{h}X: a\0b\r\n\r\n"), "control byte"),
        (
            format!("POST /a HTTP/1.1\r\n{h}Content-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            "differing",
        ),
        (format!("POST /a HTTP/1.1\r\n{h}Content-Length: +1\r\n\r\n"), "invalid Content-Length"),
        (format!("POST /a HTTP/1.1\r\n{h}Transfer-Encoding: gzip\r\n\r\n"), "other than one"),
        (
            format!(
                "POST /a HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            "more than one",
        ),
        (format!("POST /a HTTP/1.0\r\n{h}Transfer-Encoding: chunked\r\n\r\n"), "other than one"),
        (format!("GET /a HTTP/1.1\r\n{h}NoColon\r\n\r\n"), "without a colon"),
    ];
    for (bad, why) in cases {
        let first = GOOD[2];
        let input = format!("{first}{bad}GET /smuggled HTTP/1.1\r\n{h}\r\n");
        let (out, refused) = run(input.as_bytes(), &[]);
        let refused = refused.unwrap_or_else(|| panic!("not refused: {bad:?}"));
        assert!(refused.why.contains(why), "{bad:?}: {refused:?}");
        assert_eq!(refused.status, 400);
        assert_eq!(out, first.as_bytes(), "only the request before it is released: {bad:?}");
    }
}

#[test]
fn an_endless_head_is_refused_as_too_large() {
    let mut scan = H1Scan::new(MAX, usize::MAX);
    let mut out = Vec::new();
    scan.feed(b"GET / HTTP/1.1\r\n", &mut out).unwrap();
    let mut refused = None;
    for _ in 0..2000 {
        if let Err(r) = scan.feed(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n", &mut out) {
            refused = Some(r);
            break;
        }
    }
    assert_eq!(refused.map(|r| r.status), Some(431));
    assert!(out.is_empty(), "nothing of it reached hyper");
}

#[test]
fn more_fields_than_allowed_are_refused_before_hyper() {
    let head = |fields: usize| {
        let lines: String = (0..fields).map(|i| format!("X-H{i}: 1\r\n")).collect();
        format!("GET / HTTP/1.1\r\n{lines}\r\n").into_bytes()
    };
    let (out, refused) = run(&head(FIELDS), &[7, 300]);
    assert_eq!((out, refused), (head(FIELDS), None), "as many as allowed pass");
    let (out, refused) = run(&head(FIELDS + 1), &[7, 300]);
    let refused = refused.expect("one more is refused");
    assert_eq!((refused.status, refused.code), (431, "too_many_headers"));
    assert!(out.is_empty(), "nothing of it reached hyper");
    // Trailers are checked here for their form only: hyper counts them against the cap.
    let chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n";
    let trailers: String = (0..FIELDS + 5).map(|i| format!("T{i}: 1\r\n")).collect();
    let input = format!("{chunked}{trailers}\r\n").into_bytes();
    assert_eq!(run(&input, &[]), (input.clone(), None));
}

proptest! {
    #[test]
    fn however_the_bytes_arrive_valid_streams_pass_unchanged(cuts in prop::collection::vec(any::<usize>(), 0..40)) {
        let input = good_stream();
        prop_assert_eq!(run(&input, &cuts), (input.clone(), None));
    }

    #[test]
    fn however_the_bytes_arrive_a_smuggling_head_is_refused(cuts in prop::collection::vec(any::<usize>(), 0..40), bare_lf in any::<bool>()) {
        let bad = if bare_lf {
            "GET /x HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n"
        } else {
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        };
        let input = format!("{}{bad}0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", GOOD.concat());
        let (out, refused) = run(input.as_bytes(), &cuts);
        prop_assert!(refused.is_some());
        prop_assert_eq!(out, good_stream());
    }

    /// Whatever the client sends, the scanner releases a prefix of it, in order, and never
    /// panics.
    #[test]
    fn any_bytes_release_a_prefix(input in prop::collection::vec(any::<u8>(), 0..2048), cuts in prop::collection::vec(any::<usize>(), 0..10)) {
        let (out, _) = run(&input, &cuts);
        prop_assert!(input.starts_with(&out));
    }
}
