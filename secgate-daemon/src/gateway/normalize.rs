//! Request-path normalization, before any route is matched, so that one resource has one
//! spelling: `/%61dmin`, `//admin` and `/public/../admin` all become `/admin` and meet the
//! ACL of `/admin`. The upstream receives the normalized path, so it cannot read the request
//! differently from the gateway.
//!
//! Anything whose meaning differs between servers is refused rather than guessed: an
//! encoded `/` or `\`, a raw `\`, NUL and other control bytes, invalid or overlong UTF-8,
//! malformed percent escapes, `;` path parameters (Tomcat drops them: `/public/..;/admin`),
//! and dot segments that climb above the root.
//!
//! Hand-rolled: URL crates normalize for browsers (WHATWG), which resolves `..` above the root
//! silently and decodes differently from the servers behind the gateway.

/// Why a path was refused (answered with 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path has a malformed percent escape")]
    BadEscape,
    #[error("the path encodes a `/` or `\\`, which servers read differently")]
    EncodedSeparator,
    #[error("the path contains a `\\`")]
    Backslash,
    #[error("the path contains a control character")]
    Control,
    #[error("the path is not valid UTF-8")]
    NotUtf8,
    #[error("the path contains `;` parameters, which servers read differently")]
    Parameters,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error(
        "the path encodes a `%` before two hex digits (`%252e`), which servers that decode twice read differently"
    )]
    DoubleEncoded,
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
}

/// Longest path accepted, in bytes, before and after decoding.
pub const MAX_PATH_BYTES: usize = 8 * 1024;

/// The normalized form of `path` (without the query): percent-escapes of unreserved
/// characters decoded, other escapes kept with upper-case hex, empty and `.` segments
/// dropped, `..` resolved; case is kept. Normalizing twice changes nothing.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    let decoded = decode(path)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') && !segments.is_empty();
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

/// Decodes escapes of unreserved characters and checks the rest; the result is still an
/// escaped path (reserved characters stay escaped), so decoding it again changes nothing.
fn decode(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut raw = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let value = hex_byte(hex).ok_or(PathError::BadEscape)?;
            match value {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                v if unreserved(v) => raw.push(Decoded::Plain(v)),
                v => raw.push(Decoded::Escaped(v)),
            }
            i += 3;
            continue;
        }
        raw.push(Decoded::Plain(b));
        i += 1;
    }
    check(&raw)?;
    let mut out = String::with_capacity(path.len());
    for d in raw {
        match d {
            Decoded::Plain(b) => out.push(char::from(b)),
            Decoded::Escaped(b) => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
    Ok(out)
}

/// A byte of the path, as written or from an escape that stays escaped.
#[derive(Clone, Copy)]
enum Decoded {
    Plain(u8),
    Escaped(u8),
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Refuses what servers disagree about, on the bytes the path stands for: control bytes,
/// `\`, `;`, anything that is not valid UTF-8 (overlong forms included), and an encoded `%`
/// that a second decoding would turn into an escape (`%2561`, `%25%32%65`).
fn check(raw: &[Decoded]) -> Result<(), PathError> {
    let hex = |d: Option<&Decoded>| matches!(d, Some(Decoded::Plain(b)) if b.is_ascii_hexdigit());
    for (i, d) in raw.iter().enumerate() {
        if matches!(d, Decoded::Escaped(b'%')) && hex(raw.get(i + 1)) && hex(raw.get(i + 2)) {
            return Err(PathError::DoubleEncoded);
        }
    }
    let mut bytes = Vec::with_capacity(raw.len());
    for d in raw {
        let b = match *d {
            Decoded::Plain(b) => {
                match b {
                    b'\\' => return Err(PathError::Backslash),
                    b';' => return Err(PathError::Parameters),
                    0x80.. => return Err(PathError::NotUtf8),
                    _ => {}
                }
                b
            }
            Decoded::Escaped(b) => b,
        };
        if b < 0x20 || b == 0x7f {
            return Err(PathError::Control);
        }
        bytes.push(b);
    }
    // `from_utf8` refuses overlong encodings (`%C0%AF` for `/`) and surrogates.
    std::str::from_utf8(&bytes).map(|_| ()).map_err(|_| PathError::NotUtf8)
}

fn hex_byte(hex: &[u8]) -> Option<u8> {
    let digit = |c: u8| char::from(c).to_digit(16);
    Some((digit(hex[0])? * 16 + digit(hex[1])?) as u8)
}

/// RFC 3986 unreserved characters: decoding their escapes never changes meaning.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_per_resource() {
        for (path, want) in [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("//admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/./admin/.", "/admin"),
            ("/a//b///c/", "/a/b/c/"),
            ("/Admin", "/Admin"),
            ("/a%20b", "/a%20b"),
            ("/a%2a", "/a%2A"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/%7Euser", "/~user"),
            ("/100%25", "/100%25"),
            ("/100%25x", "/100%25x"),
            ("/%25%3A", "/%25%3A"),
        ] {
            assert_eq!(normalize(path).as_deref(), Ok(want), "{path}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (path, why) in [
            ("admin", PathError::NotAbsolute),
            ("/admin%2fx", PathError::EncodedSeparator),
            ("/admin%5Cx", PathError::EncodedSeparator),
            ("/admin\\x", PathError::Backslash),
            ("/admin%00", PathError::Control),
            ("/a%0d%0aSet-Cookie:x", PathError::Control),
            ("/%C0%AFadmin", PathError::NotUtf8),
            ("/%E0%80%AF", PathError::NotUtf8),
            ("/%ff", PathError::NotUtf8),
            ("/admin;jsessionid=1", PathError::Parameters),
            ("/public/..;/admin", PathError::Parameters),
            ("/..", PathError::AboveRoot),
            ("/a/../../etc/passwd", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
            ("/a%", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/public/%252e%252e/admin", PathError::DoubleEncoded),
            ("/a%252Fb", PathError::DoubleEncoded),
            ("/a%255cb", PathError::DoubleEncoded),
            ("/%2561dmin", PathError::DoubleEncoded),
            ("/public/%25%32%65%25%32%65/admin/x", PathError::DoubleEncoded),
            ("/public/%252%65", PathError::DoubleEncoded),
            ("/public/%25%32f", PathError::DoubleEncoded),
            (&format!("/{}", "a".repeat(MAX_PATH_BYTES)), PathError::TooLong),
        ] {
            assert_eq!(normalize(path), Err(why), "{path}");
        }
    }

    /// Paths built from the pieces normalization is about, weighted towards encoded percents
    /// and what decodes to hex digits (the double-encoding cases), with few pieces that are
    /// refused outright, so that most inputs are valid and the hard ones meet often.
    const PATHS: &str = "/(%25|%25|%25|%3[0-9]|%[46][1-6]|[a-f0-9]|[0-9]|/|//|\\.|\\.\\.|%2[eE]|%7[eE]|[A-Z]|~){0,16}";
    /// Anything else: refusals of every kind.
    const ODD_PATHS: &str =
        "/(%2[fF5]|%5[cC]|%[cC]0|%[aA][fF]|;|\\\\|%00|%|[a-z]){0,12}|/\\PC{0,20}";

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any input gives a normalized path or an error, never a panic; normalizing the
        /// output again changes nothing; the output has no empty or dot segments.
        #[test]
        fn idempotent_and_clean(path in PATHS) {
            if let Ok(once) = normalize(&path) {
                proptest::prop_assert_eq!(normalize(&once), Ok(once.clone()));
                proptest::prop_assert!(once.starts_with('/'));
                // A server that decodes twice reads the same path as the gateway.
                let twice = once.as_bytes().windows(5).any(|w| {
                    w.starts_with(b"%25") && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit()
                });
                proptest::prop_assert!(!twice, "{} decodes again", once);
                proptest::prop_assert!(!once.contains("//"), "{}", once);
                proptest::prop_assert!(once.split('/').all(|s| s != "." && s != ".."), "{}", once);
            }
        }

        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = normalize(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn odd_paths_are_refused_or_clean(path in ODD_PATHS) {
            if let Ok(once) = normalize(&path) {
                proptest::prop_assert_eq!(normalize(&once), Ok(once.clone()));
            }
        }
    }
}
