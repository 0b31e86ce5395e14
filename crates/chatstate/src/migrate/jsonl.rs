//! The export file: JSON lines, one record per line, readable by any language.
//! The format is documented in the parent module; this file is its one encoder and
//! decoder.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use chatstate_core::{
    Bucket, CacheKey, CacheRecord, CounterKey, CounterRecord, Error, FocusDoc, FocusKey,
    FocusRecord, Labels, Message, Record, Role, Session, SessionKey, SessionRecord, Timestamp,
};

/// The `format` of the header line.
pub(crate) const FORMAT_NAME: &str = "chatstate-export";
/// The format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u64 = 1;

/// The first line of every export.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Header {
    pub format: String,
    pub version: u64,
    pub exported_at_ms: i64,
    pub include_cache: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageLine {
    seq: u64,
    role: Role,
    content: String,
    metadata_b64: Option<String>,
    at_ms: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionLine {
    kind: String,
    tenant: String,
    channel: String,
    user: String,
    id: String,
    version: u64,
    message_count: u64,
    created_at_ms: i64,
    last_activity_ms: i64,
    updated_at_ms: i64,
    summary: Option<String>,
    focus: Option<String>,
    paused: bool,
    token_estimate: u64,
    metadata_b64: Option<String>,
    context_b64: Option<String>,
    stats_b64: Option<String>,
    ttl_ms: u64,
    messages: Vec<MessageLine>,
    /// The side data, name → base64. Absent in files written before side data
    /// existed (read as none), and left out when a session has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    data_b64: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FocusLine {
    kind: String,
    scope: String,
    name: String,
    version: u64,
    updated_at_ms: i64,
    value_b64: String,
    ttl_ms: u64,
}

/// A counter value: written as a decimal string (an i64 can exceed the 2^53 that
/// JavaScript numbers hold exactly); a JSON integer is accepted too.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CounterValue {
    Number(i64),
    Text(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterLine {
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    bucket: Option<String>,
    value: CounterValue,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheLine {
    kind: String,
    namespace: String,
    key: String,
    value_b64: String,
    ttl_ms: u64,
    /// The entry's aliases. Absent in files written before aliases existed (read
    /// as none), and left out when an entry has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<AliasLine>,
}

/// One alias of a cache entry.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasLine {
    namespace: String,
    key: String,
}

fn b64_opt(b: &Option<Bytes>) -> Option<String> {
    b.as_deref().map(base64::encode)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn encode_error(e: serde_json::Error) -> Error {
    Error::new(
        chatstate_core::ErrorKind::Internal,
        "a record does not encode",
    )
    .with_source(e)
}

/// The header line (without the newline).
pub(crate) fn header_line(exported_at: Timestamp, include_cache: bool) -> Result<String, Error> {
    serde_json::to_string(&Header {
        format: FORMAT_NAME.to_string(),
        version: FORMAT_VERSION,
        exported_at_ms: exported_at.0,
        include_cache,
    })
    .map_err(encode_error)
}

/// One record as one line (without the newline).
pub(crate) fn encode(record: &Record) -> Result<String, Error> {
    let json = match record {
        Record::Session(r) => {
            let s = &r.session;
            serde_json::to_string(&SessionLine {
                kind: "session".into(),
                tenant: s.key.tenant().into(),
                channel: s.key.channel().into(),
                user: s.key.user().into(),
                id: s.id.clone(),
                version: s.version,
                message_count: s.message_count,
                created_at_ms: s.created_at.0,
                last_activity_ms: s.last_activity.0,
                updated_at_ms: s.updated_at.0,
                summary: s.summary.clone(),
                focus: s.focus.clone(),
                paused: s.paused,
                token_estimate: s.token_estimate,
                metadata_b64: b64_opt(&s.metadata),
                context_b64: b64_opt(&s.context),
                stats_b64: b64_opt(&s.stats),
                ttl_ms: ms(r.ttl),
                messages: r
                    .messages
                    .iter()
                    .map(|m| MessageLine {
                        seq: m.seq,
                        role: m.role,
                        content: m.content.clone(),
                        metadata_b64: b64_opt(&m.metadata),
                        at_ms: m.at.0,
                    })
                    .collect(),
                data_b64: r
                    .data
                    .iter()
                    .map(|(name, value)| (name.clone(), base64::encode(value)))
                    .collect(),
            })
        }
        Record::Focus(r) => serde_json::to_string(&FocusLine {
            kind: "focus".into(),
            scope: r.doc.key.scope().into(),
            name: r.doc.key.name().into(),
            version: r.doc.version,
            updated_at_ms: r.doc.updated_at.0,
            value_b64: base64::encode(&r.doc.value),
            ttl_ms: ms(r.ttl),
        }),
        Record::Counter(r) => serde_json::to_string(&CounterLine {
            kind: "counter".into(),
            name: r.key.name().into(),
            labels: r
                .key
                .labels()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            bucket: r.key.bucket().map(|b| b.to_string()),
            value: CounterValue::Text(r.value.to_string()),
        }),
        Record::Cache(r) => serde_json::to_string(&CacheLine {
            kind: "cache".into(),
            namespace: r.key.namespace().into(),
            key: r.key.key().into(),
            value_b64: base64::encode(&r.value),
            ttl_ms: ms(r.ttl),
            aliases: r
                .aliases
                .iter()
                .map(|a| AliasLine {
                    namespace: a.namespace().into(),
                    key: a.key().into(),
                })
                .collect(),
        }),
    };
    json.map_err(encode_error)
}

/// A `Decode` error for line `n`: what is wrong, never the line's values.
pub(crate) fn line_error(n: u64, what: impl std::fmt::Display) -> Error {
    Error::decode(format!("line {n}: {what}")).with_operation("import")
}

/// serde's message when it names only a field ("missing field `x`", "unknown
/// field `y`"); anything else could quote a value, so it becomes a category.
fn field_problem(e: &serde_json::Error) -> String {
    let m = e.to_string();
    if m.starts_with("missing field") || m.starts_with("unknown field") {
        m.split(", expected").next().unwrap_or(&m).to_string()
    } else {
        "a field has the wrong type or an invalid value".to_string()
    }
}

/// Parses the JSON of line `n` into an object.
fn object(n: u64, line: &[u8]) -> Result<serde_json::Map<String, Value>, Error> {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(line_error(n, "is not a JSON object")),
        Err(e) => {
            let inner = chatstate_core::codec::json_decode_error("the line", &e);
            Err(line_error(n, inner.message()))
        }
    }
}

fn fields<T: serde::de::DeserializeOwned>(
    n: u64,
    kind: &str,
    map: serde_json::Map<String, Value>,
) -> Result<T, Error> {
    serde_json::from_value(Value::Object(map))
        .map_err(|e| line_error(n, format_args!("{kind} record: {}", field_problem(&e))))
}

/// Parses the header (line `n`, the first that is not blank).
pub(crate) fn decode_header(n: u64, line: &[u8]) -> Result<Header, Error> {
    let map = object(n, line)?;
    if map.get("format").and_then(Value::as_str) != Some(FORMAT_NAME) {
        return Err(line_error(
            n,
            format_args!(
                "not a chatstate export (the first line must be the header with \"format\": \"{FORMAT_NAME}\")"
            ),
        ));
    }
    let header: Header = fields(n, "header", map)?;
    if header.version != FORMAT_VERSION {
        return Err(line_error(
            n,
            format_args!(
                "export format version {} is not one this build reads ({FORMAT_VERSION})",
                header.version
            ),
        ));
    }
    Ok(header)
}

fn b64(n: u64, field: &str, s: &str) -> Result<Bytes, Error> {
    base64::decode(s)
        .map(Bytes::from)
        .ok_or_else(|| line_error(n, format_args!("field {field} is not base64")))
}

fn b64_field(n: u64, field: &str, s: Option<String>) -> Result<Option<Bytes>, Error> {
    s.map(|s| b64(n, field, &s)).transpose()
}

fn ttl(n: u64, ms: u64) -> Result<Duration, Error> {
    if ms == 0 {
        return Err(line_error(n, "ttl_ms must be positive"));
    }
    Ok(Duration::from_millis(ms))
}

/// Parses record line `n`. Every problem is a `Decode` error naming the line.
pub(crate) fn decode(n: u64, line: &[u8]) -> Result<Record, Error> {
    let map = object(n, line)?;
    let kind = match map.get("kind") {
        Some(Value::String(k)) => k.clone(),
        Some(_) => return Err(line_error(n, "field kind is not a string")),
        None => return Err(line_error(n, "has no kind")),
    };
    let invalid = |e: Error| line_error(n, format_args!("{kind} record: {}", e.message()));
    match kind.as_str() {
        "session" => {
            let l: SessionLine = fields(n, &kind, map)?;
            let key = SessionKey::new(l.tenant, l.channel, l.user).map_err(invalid)?;
            let messages = l
                .messages
                .into_iter()
                .map(|m| {
                    Ok(Message {
                        seq: m.seq,
                        role: m.role,
                        content: m.content,
                        metadata: b64_field(n, "metadata_b64", m.metadata_b64)?,
                        at: Timestamp(m.at_ms),
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            Ok(Record::Session(SessionRecord {
                session: Session {
                    key,
                    id: l.id,
                    created_at: Timestamp(l.created_at_ms),
                    last_activity: Timestamp(l.last_activity_ms),
                    updated_at: Timestamp(l.updated_at_ms),
                    metadata: b64_field(n, "metadata_b64", l.metadata_b64)?,
                    context: b64_field(n, "context_b64", l.context_b64)?,
                    stats: b64_field(n, "stats_b64", l.stats_b64)?,
                    summary: l.summary,
                    focus: l.focus,
                    paused: l.paused,
                    token_estimate: l.token_estimate,
                    message_count: l.message_count,
                    version: l.version,
                },
                messages,
                data: l
                    .data_b64
                    .iter()
                    .map(|(name, value)| Ok((name.clone(), b64(n, "data_b64", value)?)))
                    .collect::<Result<_, Error>>()?,
                ttl: ttl(n, l.ttl_ms)?,
            }))
        }
        "focus" => {
            let l: FocusLine = fields(n, &kind, map)?;
            Ok(Record::Focus(FocusRecord {
                doc: FocusDoc {
                    key: FocusKey::new(l.scope, l.name).map_err(invalid)?,
                    value: b64(n, "value_b64", &l.value_b64)?,
                    version: l.version,
                    updated_at: Timestamp(l.updated_at_ms),
                },
                ttl: ttl(n, l.ttl_ms)?,
            }))
        }
        "counter" => {
            let l: CounterLine = fields(n, &kind, map)?;
            let value = match l.value {
                CounterValue::Number(v) => v,
                CounterValue::Text(s) => s
                    .parse::<i64>()
                    .ok()
                    .filter(|v| v.to_string() == s)
                    .ok_or_else(|| line_error(n, "counter record: value is not an i64"))?,
            };
            let labels = Labels::from_pairs(l.labels).map_err(invalid)?;
            let mut key = CounterKey::new(l.name)
                .map_err(invalid)?
                .with_labels(labels);
            if let Some(b) = l.bucket {
                key = key.in_bucket(b.parse::<Bucket>().map_err(invalid)?);
            }
            Ok(Record::Counter(CounterRecord { key, value }))
        }
        "cache" => {
            let l: CacheLine = fields(n, &kind, map)?;
            Ok(Record::Cache(CacheRecord {
                key: CacheKey::new(l.namespace, l.key).map_err(invalid)?,
                value: b64(n, "value_b64", &l.value_b64)?,
                ttl: ttl(n, l.ttl_ms)?,
                aliases: l
                    .aliases
                    .into_iter()
                    .map(|a| CacheKey::new(a.namespace, a.key).map_err(invalid))
                    .collect::<Result<_, _>>()?,
            }))
        }
        _ => Err(line_error(
            n,
            "unknown kind (this build reads session, focus, counter, cache)",
        )),
    }
}

/// Standard base64 (RFC 4648, `+/`, `=` padding): what every language's standard
/// library decodes. Hand-written (40 lines) rather than a dependency.
pub(crate) mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Encodes with padding.
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn value(c: u8) -> Option<u32> {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    }

    /// Decodes padded base64; `None` for anything else (wrong length, a character
    /// outside the alphabet, misplaced padding, non-zero trailing bits).
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let s = s.as_bytes();
        if !s.len().is_multiple_of(4) {
            return None;
        }
        let mut out = Vec::with_capacity(s.len() / 4 * 3);
        for (i, chunk) in s.chunks(4).enumerate() {
            let last = i == s.len() / 4 - 1;
            let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && !last) {
                return None;
            }
            let mut n = 0u32;
            for &c in &chunk[..4 - pad] {
                n = (n << 6) | value(c)?;
            }
            n <<= 6 * pad as u32;
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            let keep = 3 - pad;
            if bytes[keep..].iter().any(|&b| b != 0) {
                return None;
            }
            out.extend_from_slice(&bytes[..keep]);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_and_refuses_junk() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64::encode(plain.as_bytes()), coded);
            assert_eq!(base64::decode(coded).as_deref(), Some(plain.as_bytes()));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64::decode(&base64::encode(&all)), Some(all));
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zh==", "Zm9v!A==", "===="] {
            assert_eq!(base64::decode(bad), None, "{bad}");
        }
    }
}
