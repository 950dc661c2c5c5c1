//! Deserialization that reports every unknown key (with its line) at once, rather than
//! serde's `deny_unknown_fields`, which stops at the first.

use toml::de::{DeTable, DeValue};

use super::{Problem, raw::RawConfig};

/// 1-based line of a byte offset.
pub fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

fn problem(src: &str, err: &toml::de::Error) -> Problem {
    Problem {
        line: err.span().map(|s| line_of(src, s.start)),
        message: err.message().trim().to_owned(),
    }
}

pub fn deserialize(src: &str) -> Result<RawConfig, Vec<Problem>> {
    let doc = DeTable::parse(src).map_err(|e| vec![problem(src, &e)])?;
    let mut unknown = Vec::new();
    let de = toml::de::Deserializer::from(doc.clone());
    let result = serde_ignored::deserialize(de, |path| unknown.push(segments(&path)));
    let mut problems: Vec<Problem> = unknown
        .iter()
        .map(|segs| Problem {
            line: locate(doc.get_ref(), segs).map(|o| line_of(src, o)),
            message: format!("unknown key `{}`", segs.join(".")),
        })
        .collect();
    match result {
        Ok(raw) if problems.is_empty() => Ok(raw),
        Ok(_) => Err(problems),
        Err(e) => {
            problems.push(problem(src, &e));
            Err(problems)
        }
    }
}

fn segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut v = segments(parent);
            v.push(index.to_string());
            v
        }
        Path::Map { parent, key } => {
            let mut v = segments(parent);
            // `toml::Spanned` wraps values in a private map; it is not part of the user's path.
            if !key.starts_with("$__serde_spanned") {
                v.push(key.clone());
            }
            v
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    }
}

/// Byte offset of the key at `segs` in the parsed document.
fn locate(table: &DeTable<'_>, segs: &[String]) -> Option<usize> {
    let (first, rest) = segs.split_first()?;
    let (key, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == first)?;
    if rest.is_empty() {
        return Some(key.span().start);
    }
    locate_value(value.get_ref(), rest).or(Some(key.span().start))
}

fn locate_value(value: &DeValue<'_>, segs: &[String]) -> Option<usize> {
    match value {
        DeValue::Table(t) => locate(t, segs),
        DeValue::Array(a) => {
            let (index, rest) = segs.split_first()?;
            let item = a.get(index.parse::<usize>().ok()?)?;
            if rest.is_empty() {
                Some(item.span().start)
            } else {
                locate_value(item.get_ref(), rest)
            }
        }
        _ => None,
    }
}
