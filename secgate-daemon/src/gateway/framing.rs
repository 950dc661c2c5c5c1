//! A strict reader of HTTP/1.1 request framing, in front of hyper. hyper (through httparse)
//! is lenient where request smuggling lives: it takes a bare LF as a line end, and given both
//! `Content-Length` and `Transfer-Encoding` it drops the length and reads the body as chunked
//! (RFC 9112 §6.1 allows that), whereas another server on the path may frame the same bytes
//! differently. A gateway must refuse such requests outright (400, connection closed), so the
//! client's bytes pass through this scanner first.
//!
//! Each request head is held back until it is complete and checked, then released whole;
//! body bytes pass as they come, their framing followed (strictly: CRLF line ends, bounded
//! chunk lines, well-formed trailers) to know where the next head starts. Whatever the
//! scanner cannot follow exactly is refused, never passed on unchecked. Hand-rolled because
//! no HTTP parser offers a strict mode for line ends and framing headers; it reads only what
//! decides where messages start and end.

/// Why a head (or a body's framing) was refused, with the status and code to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    /// The error code of the JSON answer and the audit line.
    pub code: &'static str,
    pub why: &'static str,
    /// Refused in the middle of a message (its chunked framing), after part of it went on.
    pub in_body: bool,
}

const fn refuse(why: &'static str) -> Refused {
    Refused { status: 400, code: "bad_framing", why, in_body: false }
}

const fn refuse_body(why: &'static str) -> Refused {
    Refused { status: 400, code: "bad_framing", why, in_body: true }
}

const TOO_LARGE: Refused = Refused {
    status: 431,
    code: "headers_too_large",
    why: "the request head is too large",
    in_body: false,
};

const TOO_MANY: Refused = Refused {
    status: 431,
    code: "too_many_headers",
    why: "more header fields than max_headers allows",
    in_body: false,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Passing `n` more bytes of a body with a length.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Passing `n` more bytes of chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines after the last chunk, until an empty one.
    Trailers,
    /// An HTTP/2 connection: nothing to scan, everything passes.
    Off,
}

pub struct H1Scan {
    state: State,
    /// The head (or chunk line) being collected.
    held: Vec<u8>,
    max_head: usize,
    /// Header fields a head may have; more are refused here, so that hyper, told to parse
    /// no more than this, never meets more (its own refusal would not be the gateway's
    /// JSON), while it sizes its per-request field arrays by it: told 1000 for every head,
    /// it filled two 1000-entry arrays per request, 3-4% of a proxied request's CPU.
    max_fields: usize,
}

/// A chunk-size line (size and extensions) or trailer line at most; longer is refused.
const MAX_LINE: usize = 4096;

impl H1Scan {
    pub fn new(max_head: usize, max_fields: usize) -> H1Scan {
        H1Scan { state: State::Head, held: Vec::new(), max_head, max_fields }
    }

    /// Whether part of a request head has come and the rest has not: a head timeout then
    /// is a client trickling its head (slowloris), not a keep-alive connection at rest.
    pub fn mid_head(&self) -> bool {
        self.state == State::Head && self.held.iter().any(|&b| b != b'\r' && b != b'\n')
    }

    /// Whether it passes everything (made by [`H1Scan::off`]).
    pub fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// A scanner that passes everything (an HTTP/2 connection).
    pub fn off() -> H1Scan {
        H1Scan { state: State::Off, held: Vec::new(), max_head: 0, max_fields: 0 }
    }

    /// Takes `input`, the client's next bytes, and appends to `out` those that may go on
    /// to hyper now. On a refusal, `out` holds what came before the refused head, and the
    /// scanner takes nothing more.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
        while !input.is_empty() {
            input = match self.state {
                State::Off => {
                    out.extend_from_slice(input);
                    &[]
                }
                State::Head => self.head(input, out)?,
                State::Body(n) => {
                    let take = n.min(input.len() as u64) as usize;
                    out.extend_from_slice(&input[..take]);
                    self.state =
                        if n == take as u64 { State::Head } else { State::Body(n - take as u64) };
                    &input[take..]
                }
                State::ChunkData(n) => {
                    // The data, then its CRLF (two bytes more).
                    let take = n.min(input.len() as u64) as usize;
                    out.extend_from_slice(&input[..take]);
                    let left = n - take as u64;
                    self.state = if left == 0 { State::ChunkSize } else { State::ChunkData(left) };
                    &input[take..]
                }
                State::ChunkSize | State::Trailers => self.line(input, out)?,
            };
        }
        Ok(())
    }

    fn head<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> Result<&'a [u8], Refused> {
        let start = self.held.len();
        self.held.extend_from_slice(input);
        // Search from just before the new bytes: the end may straddle two reads.
        let Some(end) = find_end(&self.held, start.saturating_sub(3)) else {
            if self.held.len() > self.max_head {
                return Err(TOO_LARGE);
            }
            return Ok(&[]);
        };
        if end > self.max_head {
            return Err(TOO_LARGE);
        }
        let rest = &input[end - start..];
        let head = std::mem::take(&mut self.held);
        let head = &head[..end];
        self.state = check(head, self.max_fields)?;
        out.extend_from_slice(head);
        Ok(rest)
    }

    /// A chunk-size or trailer line: held until its end, checked, then passed on.
    fn line<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> Result<&'a [u8], Refused> {
        let Some(nl) = input.iter().position(|&b| b == b'\n') else {
            self.held.extend_from_slice(input);
            // Room for the CR: the same line is refused however it is split.
            if self.held.len() > MAX_LINE + 1 {
                return Err(refuse_body("a chunk or trailer line is too long"));
            }
            return Ok(&[]);
        };
        self.held.extend_from_slice(&input[..=nl]);
        if self.held.len() > MAX_LINE + 2 {
            return Err(refuse_body("a chunk or trailer line is too long"));
        }
        let line = std::mem::take(&mut self.held);
        let text = line
            .strip_suffix(b"\r\n")
            .ok_or(refuse_body("a bare LF ends a chunk or trailer line"))?;
        if text.contains(&b'\r') {
            return Err(refuse_body("a bare CR in a chunk or trailer line"));
        }
        self.state = match self.state {
            State::ChunkSize => match chunk_size(text) {
                Some(0) => State::Trailers,
                Some(n) => State::ChunkData(n.saturating_add(2)),
                None => return Err(refuse_body("an invalid chunk size")),
            },
            _ if text.is_empty() => State::Head,
            other => {
                field(text).map_err(|r| refuse_body(r.why))?;
                other
            }
        };
        out.extend_from_slice(&line);
        Ok(&input[nl + 1..])
    }
}

/// Where the head in `held` ends, looking from `from` on: just past its first empty line
/// (CRLF CRLF, or with a bare LF taking part, which [`check`] then refuses). Empty lines
/// before the request line do not end it (RFC 9112 §2.2).
fn find_end(held: &[u8], from: usize) -> Option<usize> {
    let lead = held.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    let start = from.max(lead);
    let rest = &held[start..];
    rest.windows(2).enumerate().find_map(|(j, w)| match w {
        b"\n\n" => Some(start + j + 2),
        b"\n\r" if rest.get(j + 2) == Some(&b'\n') => Some(start + j + 3),
        _ => None,
    })
}

/// The size of a chunk from its size line (hex digits, then extensions after `;`); `None`
/// if it is not one or does not fit 64 bits (leading zeros aside, as hyper reads it).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = trim_ows(line.split(|&b| b == b';').next()?);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let significant = &digits[digits.iter().take_while(|&&b| b == b'0').count()..];
    match significant.len() {
        0 => Some(0),
        17.. => None,
        _ => u64::from_str_radix(std::str::from_utf8(significant).ok()?, 16).ok(),
    }
}

/// Checks a complete head strictly; returns how its body is framed.
fn check(head: &[u8], max_fields: usize) -> Result<State, Refused> {
    let head = trim_leading_empty_lines(head);
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' if i == 0 || head[i - 1] != b'\r' => return Err(refuse("a bare LF ends a line")),
            b'\r' if head.get(i + 1) != Some(&b'\n') => return Err(refuse("a bare CR")),
            _ => {}
        }
    }
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let http10 = request_line(lines.next().unwrap_or_default())?;
    let (mut length, mut chunked, mut te) = (None::<&[u8]>, false, false);
    for (n, line) in lines.take_while(|l| !l.is_empty()).enumerate() {
        if n == max_fields {
            return Err(TOO_MANY);
        }
        let (name, value) = field(line)?;
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some_and(|l| l != value) {
                return Err(refuse("differing Content-Length fields"));
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if te {
                return Err(refuse("more than one Transfer-Encoding field"));
            }
            te = true;
            chunked = value.eq_ignore_ascii_case(b"chunked");
        }
    }
    match (length, te) {
        (Some(_), true) => Err(refuse("both Transfer-Encoding and Content-Length")),
        (None, true) if !chunked || http10 => {
            Err(refuse("a Transfer-Encoding other than one `chunked` on HTTP/1.1"))
        }
        (None, true) => Ok(State::ChunkSize),
        (Some(l), false) => match std::str::from_utf8(l)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(0) => Ok(State::Head),
            Some(n) => Ok(State::Body(n)),
            None => Err(refuse("an invalid Content-Length")),
        },
        (None, false) => Ok(State::Head),
    }
}

/// Checks `METHOD SP target SP HTTP/1.x` (RFC 9112 §3) strictly: one space each, a token
/// method, a target of visible characters; returns whether it is HTTP/1.0.
fn request_line(line: &[u8]) -> Result<bool, Refused> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse("a malformed request line"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(refuse("an invalid method"));
    }
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(refuse("an invalid request target"));
    }
    match version {
        b"HTTP/1.1" => Ok(false),
        b"HTTP/1.0" => Ok(true),
        _ => Err(refuse("an HTTP version other than 1.0 or 1.1")),
    }
}

fn trim_leading_empty_lines(head: &[u8]) -> &[u8] {
    let lead = head.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    &head[lead..]
}

/// A field line's name and value (RFC 9110 §5.5, RFC 9112 §5): a token name right before
/// the colon, a value without control bytes but tab.
fn field(line: &[u8]) -> Result<(&[u8], &[u8]), Refused> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return Err(refuse("a folded header line (obs-fold)"));
    }
    let colon =
        line.iter().position(|&b| b == b':').ok_or(refuse("a header line without a colon"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(refuse("an invalid header name (or whitespace before the colon)"));
    }
    let value = trim_ows(&line[colon + 1..]);
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(refuse("a control byte in a header value"));
    }
    Ok((name, value))
}

/// Without the optional whitespace (space and tab only, RFC 9110 §5.6.3) around it.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
