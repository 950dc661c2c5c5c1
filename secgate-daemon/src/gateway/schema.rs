//! JSON Schema (draft 2020-12, the `jsonschema` crate) for request bodies, query parameters
//! and responses. Schemas are read and compiled once, when the config is checked; a broken
//! one is a config problem naming its file. Violations are reported as a JSON pointer and a
//! message made from the schema (the keyword and where it is), never from the instance, so
//! nothing the client sent is echoed back.

use std::path::{Path, PathBuf};

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, MapAccess, SeqAccess, Visitor},
};
use serde_json::Value;

/// Deepest nesting of arrays and objects accepted in a JSON body: real APIs stay far below,
/// and deep documents cost stack and time in every parser behind the gateway.
pub const MAX_JSON_DEPTH: usize = 64;
/// Violations reported at most, so a huge invalid document gets a bounded answer.
const MAX_VIOLATIONS: usize = 32;
/// A pointer into the client's document is cut to this many characters.
const MAX_POINTER_CHARS: usize = 200;

pub struct Schema {
    path: PathBuf,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Schema").field(&self.path).finish()
    }
}

impl PartialEq for Schema {
    fn eq(&self, other: &Schema) -> bool {
        self.path == other.path
    }
}

impl Eq for Schema {}

/// One way a document breaks its schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Where in the document (RFC 6901).
    pub pointer: String,
    pub message: String,
}

impl Schema {
    /// Reads and compiles the schema at `path`; references to other files or URLs are not
    /// followed (the crate is built without resolvers).
    pub fn load(path: &Path, what: &str) -> Result<Schema, String> {
        let text = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
        let json: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{what} {}: not JSON: {e}", path.display()))?;
        let validator = jsonschema::draft202012::options()
            .build(&json)
            .map_err(|e| format!("{what} {}: not a valid JSON Schema: {e}", path.display()))?;
        Ok(Schema { path: path.to_owned(), validator })
    }

    pub fn check(&self, instance: &Value) -> Result<(), Vec<Violation>> {
        let violations: Vec<Violation> = self
            .validator
            .iter_errors(instance)
            .take(MAX_VIOLATIONS)
            .map(|e| {
                let schema_path = e.schema_path().to_string();
                let keyword = schema_path.rsplit('/').next().unwrap_or("schema").to_owned();
                Violation {
                    pointer: e
                        .instance_path()
                        .to_string()
                        .chars()
                        .take(MAX_POINTER_CHARS)
                        .collect(),
                    message: format!("does not satisfy `{keyword}` (schema {schema_path})"),
                }
            })
            .collect();
        if violations.is_empty() { Ok(()) } else { Err(violations) }
    }
}

/// Why a body is not a JSON document the gateway will check.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("the body is not valid JSON")]
    Malformed,
    #[error("the body nests deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("the route needs a JSON body")]
    Missing,
    #[error("an object in the body repeats a key")]
    DuplicateKey,
}

/// Parses a JSON body, refusing malformed text, deep nesting and repeated keys. A repeated
/// key is refused because parsers disagree on which value counts (serde_json keeps the
/// last, others the first): the schema would judge one value and the upstream read another.
pub fn parse_body(bytes: &[u8]) -> Result<Value, JsonError> {
    // serde_json stops at 128 levels itself; deeper text is malformed to it, and still too
    // deep to us.
    match serde_json::from_slice::<Unique>(bytes) {
        Ok(Unique(v)) if depth(&v) > MAX_JSON_DEPTH => Err(JsonError::TooDeep),
        Ok(Unique(v)) => Ok(v),
        Err(e) if e.to_string().contains("recursion limit") => Err(JsonError::TooDeep),
        Err(e) if e.to_string().contains(DUPLICATE) => Err(JsonError::DuplicateKey),
        Err(_) => Err(JsonError::Malformed),
    }
}

const DUPLICATE: &str = "duplicate object key";

/// A JSON value whose objects repeat no key (serde_json's own `Value` keeps the last).
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Unique, E> {
        Ok(Unique(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Unique, E> {
        Ok(Unique(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Unique, E> {
        Ok(Unique(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Unique(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Unique(v) = map.next_value()?;
            if fields.insert(key, v).is_some() {
                return Err(de::Error::custom(DUPLICATE));
            }
        }
        Ok(Unique(Value::Object(fields)))
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The query string as a JSON object for `query_schema`: each parameter a string, or an
/// array of strings when it is repeated (`form_urlencoded` decoding, `+` as space).
pub fn query_object(query: Option<&str>) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let v = Value::String(v.into_owned());
        match out.get_mut(k.as_ref()) {
            Some(Value::Array(items)) => items.push(v),
            Some(first) => *first = Value::Array(vec![first.take(), v]),
            None => {
                out.insert(k.into_owned(), v);
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema(v: Value) -> Schema {
        let dir = std::env::temp_dir().join(format!("secgate-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.json", rand::random::<u32>()));
        std::fs::write(&path, v.to_string()).unwrap();
        let s = Schema::load(&path, "body_schema").unwrap();
        std::fs::remove_file(&path).unwrap();
        s
    }

    #[test]
    fn violations_point_without_echoing() {
        let s = schema(json!({
            "type": "object",
            "required": ["name"],
            "properties": { "name": { "type": "string", "maxLength": 8 }, "n": { "type": "integer" } },
            "additionalProperties": false
        }));
        assert!(s.check(&json!({"name": "ok"})).is_ok());
        let secret = "<script>steal()</script>";
        let errs = s.check(&json!({"name": secret, "n": "x", "evil": 1})).unwrap_err();
        let pointers: Vec<&str> = errs.iter().map(|v| v.pointer.as_str()).collect();
        assert!(pointers.contains(&"/name") && pointers.contains(&"/n"), "{errs:?}");
        assert!(
            errs.iter().all(|v| !v.message.contains(secret) && !v.message.contains("steal")),
            "{errs:?}"
        );
        assert!(s.check(&json!([])).unwrap_err()[0].message.contains("`type`"));
    }

    #[test]
    fn broken_schemas_are_named() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("secgate-bad-schema-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"type": 5}"#).unwrap();
        let e = Schema::load(&path, "body_schema").unwrap_err();
        assert!(e.contains("not a valid JSON Schema") && e.contains("secgate-bad-schema"), "{e}");
        std::fs::write(&path, "{").unwrap();
        assert!(Schema::load(&path, "query_schema").unwrap_err().contains("not JSON"));
        std::fs::remove_file(&path).unwrap();
        assert!(Schema::load(&path, "body_schema").unwrap_err().contains("No such file"));
    }

    #[test]
    fn bodies_are_parsed_with_a_depth_bound() {
        assert_eq!(parse_body(b"{\"a\": [1, {\"b\": null}]}").map(|v| depth(&v)), Ok(3));
        assert_eq!(parse_body(b"{\"a\": "), Err(JsonError::Malformed));
        assert_eq!(parse_body(b"\xff"), Err(JsonError::Malformed));
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_body(deep(MAX_JSON_DEPTH).as_bytes()).is_ok());
        assert_eq!(parse_body(deep(MAX_JSON_DEPTH + 1).as_bytes()), Err(JsonError::TooDeep));
        assert_eq!(parse_body(deep(10_000).as_bytes()), Err(JsonError::TooDeep));
    }

    #[test]
    fn a_repeated_key_is_refused_at_any_depth() {
        assert!(parse_body(br#"{"qty": 1, "item": "x"}"#).is_ok());
        assert_eq!(parse_body(br#"{"qty": 1, "qty": -5}"#), Err(JsonError::DuplicateKey));
        assert_eq!(parse_body(br#"[{"a": {"b": 1, "b": 2}}]"#), Err(JsonError::DuplicateKey));
        // Escapes spell the same key.
        assert_eq!(parse_body(br#"{"a": 1, "\u0061": 2}"#), Err(JsonError::DuplicateKey));
        let v = parse_body(
            br#"{"n": -1, "u": 18446744073709551615, "f": 1.5, "s": "x", "z": null, "t": true}"#,
        );
        assert_eq!(
            v,
            Ok(
                json!({"n": -1, "u": 18446744073709551615u64, "f": 1.5, "s": "x", "z": null, "t": true})
            )
        );
    }

    proptest::proptest! {
        /// Without repeated keys, the strict parse is serde_json's own.
        #[test]
        fn the_strict_parse_agrees_with_serde_json(doc in json_doc()) {
            let text = doc.to_string();
            proptest::prop_assert_eq!(parse_body(text.as_bytes()), Ok(doc));
        }
    }

    fn json_doc() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            "[a-z\\u{e9}\"]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn queries_become_objects_of_strings() {
        assert_eq!(
            query_object(Some("a=1&b=x+y&a=2&c")),
            json!({"a": ["1", "2"], "b": "x y", "c": ""})
        );
        assert_eq!(query_object(None), json!({}));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200), q in "\\PC{0,80}") {
            let _ = parse_body(&bytes);
            let _ = query_object(Some(&q));
        }
    }
}
