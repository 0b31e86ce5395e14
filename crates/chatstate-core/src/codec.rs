//! The codec: how the user's typed values become stored bytes and back.
//!
//! Every encoded value starts with a 4-byte ASCII header: `CS`, the format version
//! (`1`), and the codec (`B` bincode 2, `J` JSON). A value in JSON therefore reads in
//! `redis-cli` as `CS1J{"name":"Ana"}`; another language strips four bytes and
//! parses the rest. Decoding checks the header first, so bytes of a future format
//! or of nothing of ours are a clear [`ErrorKind::Decode`] error, never garbage. A value decodes with the codec its header names, whichever codec the
//! caller holds: the codec chooses how values are *written*, so changing it (or the
//! default) leaves every stored value readable.
//!
//! JSON is the default: the Node and Python services that share the Redis, and an
//! operator in `redis-cli`, read it. Measured (`cargo bench -p chatstate-core --bench
//! codec`, `BENCHMARKS.md`), bincode saves about 1 µs per value encoded and decoded
//! and half the bytes of a customer record — about 1–2% of one Redis round trip —
//! so choose it (`CHATSTATE_CODEC=bincode`) only for values no other language
//! reads and whose size matters. Bincode cannot encode types that need
//! `deserialize_any` (`serde_json::Value`, untagged enums); use JSON for those. To add a codec, add a variant and its header letter here:
//! stored values name their codec, so old ones stay readable or fail clearly.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

/// The header's first two bytes.
pub const MAGIC: &[u8; 2] = b"CS";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = b'1';
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 4;
/// The largest value bincode decoding will allocate for, guarding against corrupt
/// length prefixes.
const BINCODE_LIMIT: usize = 256 * 1024 * 1024;

/// A serialization format for typed values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Codec {
    /// bincode 2 (standard config, varint integers). Compact; Rust-only.
    Bincode,
    /// JSON. Readable by any language (the default).
    #[default]
    Json,
}

impl Codec {
    /// The header letter of this codec.
    pub fn tag(self) -> u8 {
        match self {
            Codec::Bincode => b'B',
            Codec::Json => b'J',
        }
    }

    /// The codec's name, as `CHATSTATE_CODEC` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Bincode => "bincode",
            Codec::Json => "json",
        }
    }

    fn from_tag(tag: u8) -> Option<Codec> {
        match tag {
            b'B' => Some(Codec::Bincode),
            b'J' => Some(Codec::Json),
            _ => None,
        }
    }

    /// Encodes `value` with the header.
    ///
    /// ```
    /// use chatstate_core::Codec;
    /// let bytes = Codec::Json.encode(&vec![1, 2]).unwrap();
    /// assert_eq!(&bytes[..], b"CS1J[1,2]");
    /// let back: Vec<i32> = Codec::Json.decode(&bytes).unwrap();
    /// assert_eq!(back, vec![1, 2]);
    /// ```
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.push(self.tag());
        match self {
            Codec::Bincode => {
                bincode::serde::encode_into_std_write(value, &mut out, bincode_config()).map_err(
                    |e| Error::invalid_input("value cannot be encoded with bincode").with_source(e),
                )?;
            }
            Codec::Json => serde_json::to_writer(&mut out, value).map_err(|e| {
                Error::invalid_input("value cannot be encoded as JSON").with_source(e)
            })?,
        }
        Ok(Bytes::from(out))
    }

    /// Decodes bytes written by [`Codec::encode`], with the codec their header
    /// names (this one or another: see the module docs).
    ///
    /// Fails with [`ErrorKind::Decode`] when the header is missing or names another
    /// format version or an unknown codec, or the body does not decode as `T` in
    /// full.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        let (codec, body) = split_header(bytes)?;
        match codec {
            Codec::Bincode => {
                let (value, used) =
                    bincode::serde::decode_from_slice::<T, _>(body, bincode_config())
                        .map_err(|e| bincode_decode_error("stored bincode value", &e))?;
                if used != body.len() {
                    return Err(Error::decode(format!(
                        "stored bincode value has {} trailing bytes",
                        body.len() - used
                    )));
                }
                Ok(value)
            }
            Codec::Json => {
                serde_json::from_slice(body).map_err(|e| json_decode_error("stored JSON value", &e))
            }
        }
    }

    /// The codec `bytes` were written with, as their header says.
    pub fn of(bytes: &[u8]) -> Result<Codec> {
        split_header(bytes).map(|(codec, _)| codec)
    }
}

/// Checks the header and returns the codec it names and the body.
fn split_header(bytes: &[u8]) -> Result<(Codec, &[u8])> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(Error::decode(format!(
            "stored value is {} bytes, too short for the chatstate header",
            bytes.len()
        )));
    };
    if &header[..2] != MAGIC {
        return Err(Error::decode(
            "stored value has no chatstate header (not written by chatstate)",
        ));
    }
    if header[2] != FORMAT_VERSION {
        return Err(Error::decode(format!(
            "stored value has format version {}, this build reads version {}",
            char::from(header[2]).escape_default(),
            char::from(FORMAT_VERSION)
        )));
    }
    match Codec::from_tag(header[3]) {
        Some(c) => Ok((c, body)),
        None => Err(Error::decode(format!(
            "stored value names an unknown codec {}",
            char::from(header[3]).escape_default()
        ))),
    }
}

/// A [`ErrorKind::Decode`] error for JSON that did not decode: what went wrong (its
/// category) and where (line and column), never the offending value. serde's own
/// message quotes the value (`invalid type: string "+5511…"`), and stored values —
/// phone numbers, messages — must not reach errors or logs, so the serde error is
/// neither quoted nor kept as the source. `what` names the data ("stored JSON
/// value", "session record", ...).
pub fn json_decode_error(what: &str, e: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    let problem = match e.classify() {
        Category::Syntax => "is not valid JSON",
        Category::Data => "does not match the expected type",
        Category::Eof => "ends early (truncated)",
        Category::Io => "could not be read",
    };
    Error::decode(format!(
        "{what} {problem} (at line {}, column {})",
        e.line(),
        e.column()
    ))
}

/// A [`ErrorKind::Decode`] error for bincode that did not decode: the category of
/// the failure, never the value (see [`json_decode_error`] for why).
pub fn bincode_decode_error(what: &str, e: &bincode::error::DecodeError) -> Error {
    use bincode::error::DecodeError as D;
    let problem = match e {
        D::UnexpectedEnd { .. } => "ends early (truncated)",
        D::LimitExceeded => "declares a length over the decoding limit",
        D::Utf8 { .. } | D::InvalidCharEncoding(_) => "holds text that is not UTF-8",
        D::InvalidBooleanValue(_) => "holds an invalid boolean",
        D::UnexpectedVariant { .. } | D::EmptyEnum { .. } => "holds an unknown enum variant",
        D::InvalidIntegerType { .. }
        | D::NonZeroTypeIsZero { .. }
        | D::OutsideUsizeRange(_)
        | D::ArrayLengthMismatch { .. } => "holds a number or length out of range",
        _ => "does not match the expected type",
    };
    Error::decode(format!("{what} {problem}"))
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<BINCODE_LIMIT>()
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Codec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bincode" => Ok(Codec::Bincode),
            "json" => Ok(Codec::Json),
            _ => Err(Error::new(
                ErrorKind::Config,
                "codec must be one of: bincode, json",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Customer {
        id: u64,
        name: String,
        tags: Vec<String>,
        vip: Option<bool>,
    }

    fn ana() -> Customer {
        Customer {
            id: 7,
            name: "Ana 👋".into(),
            tags: vec!["a".into()],
            vip: None,
        }
    }

    #[test]
    fn both_codecs_roundtrip() {
        for codec in [Codec::Bincode, Codec::Json] {
            let bytes = codec.encode(&ana()).unwrap();
            assert_eq!(&bytes[..3], b"CS1");
            assert_eq!(codec.decode::<Customer>(&bytes).unwrap(), ana());
        }
    }

    #[test]
    fn json_is_readable_after_the_header() {
        let bytes = Codec::Json.encode(&ana()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes[HEADER_LEN..]).unwrap();
        assert_eq!(v["name"], "Ana 👋");
    }

    #[test]
    fn a_value_decodes_by_the_codec_its_header_names() {
        for written in [Codec::Bincode, Codec::Json] {
            let bytes = written.encode(&ana()).unwrap();
            assert_eq!(Codec::of(&bytes).unwrap(), written);
            for reader in [Codec::Bincode, Codec::Json] {
                assert_eq!(reader.decode::<Customer>(&bytes).unwrap(), ana());
            }
        }
        assert_eq!(Codec::default(), Codec::Json);
    }

    #[test]
    fn future_format_and_foreign_bytes_are_decode_errors() {
        let mut bytes = Codec::Bincode.encode(&ana()).unwrap().to_vec();
        bytes[2] = b'2';
        let err = Codec::Bincode.decode::<Customer>(&bytes).unwrap_err();
        assert!(err.message().contains("format version 2"), "{err}");
        for foreign in [&b""[..], b"CS", b"{\"id\":1}", b"CS1X...."] {
            let err = Codec::Json.decode::<Customer>(foreign).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Decode, "{foreign:?}");
        }
    }

    #[test]
    fn truncated_and_trailing_bodies_are_decode_errors() {
        for codec in [Codec::Bincode, Codec::Json] {
            let bytes = codec.encode(&ana()).unwrap();
            let cut = &bytes[..bytes.len() - 2];
            assert_eq!(
                codec.decode::<Customer>(cut).unwrap_err().kind(),
                ErrorKind::Decode
            );
            let mut longer = bytes.to_vec();
            longer.extend_from_slice(b"zz");
            assert_eq!(
                codec.decode::<Customer>(&longer).unwrap_err().kind(),
                ErrorKind::Decode
            );
        }
    }

    /// A stored value that does not decode as the asked type: no error path may carry
    /// the value (a phone number here) in its message, Display, Debug or source.
    #[test]
    fn decode_errors_never_quote_the_stored_value() {
        let secret = "+5511987654321";
        let mut cases: Vec<Error> = Vec::new();
        for codec in [Codec::Bincode, Codec::Json] {
            let bytes = codec.encode(&(secret, secret)).unwrap();
            cases.push(codec.decode::<Customer>(&bytes).unwrap_err());
            cases.push(codec.decode::<u64>(&bytes).unwrap_err());
            cases.push(codec.decode::<Vec<u8>>(&bytes).unwrap_err());
            let one = codec.encode(secret).unwrap();
            cases.push(codec.decode::<bool>(&one).unwrap_err());
            cases.push(codec.decode::<(u8, u8)>(&one).unwrap_err());
        }
        let mut json = b"CS1J{\"id\":\"".to_vec();
        json.extend_from_slice(secret.as_bytes());
        json.extend_from_slice(b"\"}");
        cases.push(Codec::Json.decode::<Customer>(&json).unwrap_err());
        cases.push(
            Codec::Json
                .decode::<Customer>(&json[..json.len() - 1])
                .unwrap_err(),
        );
        for err in cases {
            assert_eq!(err.kind(), ErrorKind::Decode);
            let shown = format!("{err} {err:?} {:?}", std::error::Error::source(&err));
            assert!(!shown.contains("5511987654321"), "value leaked: {shown}");
        }
    }

    #[test]
    fn json_decode_errors_say_where() {
        let err = Codec::Json
            .decode::<Customer>(b"CS1J{\"id\": \"x\"}")
            .unwrap_err();
        assert!(
            err.message().contains("does not match the expected type"),
            "{err}"
        );
        assert!(err.message().contains("column"), "{err}");
    }

    #[test]
    fn codec_names_parse() {
        assert_eq!("JSON".parse::<Codec>().unwrap(), Codec::Json);
        assert_eq!(" bincode ".parse::<Codec>().unwrap(), Codec::Bincode);
        assert_eq!(
            "xml".parse::<Codec>().unwrap_err().kind(),
            ErrorKind::Config
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut with_header = b"CS1B".to_vec();
            with_header.extend_from_slice(&bytes);
            let _ = Codec::Bincode.decode::<Customer>(&with_header);
            let _ = Codec::Bincode.decode::<Vec<String>>(&with_header);
            let mut json = b"CS1J".to_vec();
            json.extend_from_slice(&bytes);
            let _ = Codec::Json.decode::<Customer>(&json);
        }
    }
}
