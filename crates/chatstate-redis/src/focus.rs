//! FocusStore on Redis: a hash per document (`value`, `version`, `updated_at`) and a
//! set of a scope's names, both under the scope's hash tag so one script reads or
//! writes them together. `list` walks the set with SSCAN, one script per step of
//! about 200 names, so a large scope never blocks the server in one long script.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::ResultExt;
use chatstate_core::key::{check_scope, unescape};
use chatstate_core::{
    Error, ErrorKind, FocusDoc, FocusKey, FocusStore, PutMode, Result, Timestamp,
};
use redis::Value;

use crate::RedisStore;
use crate::conn::{Script, lua_wrongtype, reply};

/// Writes a document under a precondition.
/// KEYS: doc, index. ARGV: mode (0 overwrite, 1 create, 2 if version), expected,
/// value, now, ttl_ms, escaped name.
/// Returns {-1, version} exists (create), {-2, version or 0} conflict, {version} written.
const PUT: &str = concat!(
    lua_wrongtype!(),
    r#"
local e = wrongtype(KEYS[1], 'hash') or wrongtype(KEYS[2], 'set')
if e then return e end
local v = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] == '1' and v then return {-1, tonumber(v)} end
if ARGV[1] == '2' and (not v or tonumber(v) ~= tonumber(ARGV[2])) then return {-2, tonumber(v or 0)} end
local nv = tonumber(v or 0) + 1
redis.call('HSET', KEYS[1], 'value', ARGV[3], 'version', nv, 'updated_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[6])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
return {nv}
"#
);

/// Deletes a document and its index entry. KEYS: doc, index. ARGV: escaped name.
const DELETE: &str = concat!(
    lua_wrongtype!(),
    r#"
local e = wrongtype(KEYS[1], 'hash') or wrongtype(KEYS[2], 'set')
if e then return e end
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return n
"#
);

/// Documents of a scope read per round trip (the SSCAN COUNT hint): `list` is a
/// loop of bounded steps, never one script over the whole scope.
const LIST_PAGE: usize = 200;

/// Reads one SSCAN step of a scope's documents, dropping index entries of expired
/// ones. KEYS: index. ARGV: the document key prefix, the SSCAN cursor, the COUNT.
/// (The documents' keys are built from the index inside the script; they share the
/// index's hash tag, so the script stays within one slot.) Returns {next cursor,
/// name, value, version, updated_at, ...}.
const LIST_PAGE_SCRIPT: &str = r#"
local step = redis.call('SSCAN', KEYS[1], ARGV[2], 'COUNT', ARGV[3])
local out = {step[1]}
for _, name in ipairs(step[2]) do
  local d = redis.call('HMGET', ARGV[1] .. name, 'value', 'version', 'updated_at')
  if d[2] then
    table.insert(out, name); table.insert(out, d[1]); table.insert(out, d[2]); table.insert(out, d[3])
  else
    redis.call('SREM', KEYS[1], name)
  end
end
return out
"#;

pub(crate) struct FocusScripts {
    put: Script,
    delete: Script,
    list: Script,
}

impl FocusScripts {
    pub fn new() -> Self {
        FocusScripts {
            put: Script::new("focus_put", PUT),
            delete: Script::new("focus_delete", DELETE),
            list: Script::new("focus_list_page", LIST_PAGE_SCRIPT),
        }
    }
}

pub(crate) fn doc_from(
    key: FocusKey,
    value: Value,
    version: Value,
    updated_at: Value,
    redis_key: &str,
) -> Result<FocusDoc> {
    let bad = || Error::decode("a focus document hash is malformed").with_key(redis_key);
    Ok(FocusDoc {
        key,
        value: Bytes::from(reply::bytes(value)?.ok_or_else(bad)?),
        version: u64::try_from(reply::int(&version).map_err(|_| bad())?).map_err(|_| bad())?,
        updated_at: Timestamp(reply::int(&updated_at).map_err(|_| bad())?),
    })
}

/// The fields a document is read by, in the order [`doc_of_hmget`] takes them.
pub(crate) const DOC_FIELDS: [&str; 3] = ["value", "version", "updated_at"];

/// A document from the `HMGET` of its [`DOC_FIELDS`]; `None` when it has no
/// version (no document).
pub(crate) fn doc_of_hmget(
    key: &FocusKey,
    redis_key: &str,
    v: Vec<Value>,
) -> Result<Option<FocusDoc>> {
    let mut it = v.into_iter();
    let (value, version, updated_at) = (
        it.next().unwrap_or(Value::Nil),
        it.next().unwrap_or(Value::Nil),
        it.next().unwrap_or(Value::Nil),
    );
    if version == Value::Nil {
        return Ok(None);
    }
    doc_from(key.clone(), value, version, updated_at, redis_key).map(Some)
}

#[async_trait]
impl FocusStore for RedisStore {
    async fn put(
        &self,
        key: &FocusKey,
        value: Bytes,
        mode: PutMode,
        ttl: Option<Duration>,
    ) -> Result<FocusDoc> {
        let ttl = self
            .inner
            .settings
            .focus_put_ttl(value.len(), ttl)
            .in_op("put")?;
        let doc_key = self.inner.layout.focus(key);
        let index = self.inner.layout.focus_index(key.scope());
        let (mode_arg, expected) = match mode {
            PutMode::Overwrite => ("0", 0),
            PutMode::Create => ("1", 0),
            PutMode::IfVersion(v) => ("2", v),
        };
        let now = self.inner.clock.now();
        let name = chatstate_core::key::escape(key.name()).into_owned();
        let owned: Vec<Vec<u8>> = vec![
            mode_arg.as_bytes().to_vec(),
            expected.to_string().into_bytes(),
            value.to_vec(),
            now.0.to_string().into_bytes(),
            ttl.as_millis().to_string().into_bytes(),
            name.into_bytes(),
        ];
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let v = self
            .inner
            .conn
            .script(
                &self.inner.scripts.focus.put,
                &[&doc_key, &index],
                &refs,
                "put",
            )
            .await?;
        let r = reply::array(v)?;
        let first = reply::int(r.first().unwrap_or(&Value::Nil))?;
        let other = r.get(1).map(reply::int).transpose()?.unwrap_or(0);
        match first {
            -1 => Err(
                Error::new(ErrorKind::AlreadyExists, "the document already exists")
                    .with_operation("put")
                    .with_key(key),
            ),
            -2 if other == 0 => Err(Error::conflict(format!(
                "expected version {expected}, there is no document"
            ))
            .with_operation("put")
            .with_key(key)),
            -2 => Err(Error::conflict(format!(
                "expected version {expected}, the document is at version {other}"
            ))
            .with_operation("put")
            .with_key(key)),
            version => Ok(FocusDoc {
                key: key.clone(),
                value,
                version: u64::try_from(version).unwrap_or(0),
                updated_at: now,
            }),
        }
    }

    async fn get(&self, key: &FocusKey) -> Result<Option<FocusDoc>> {
        let doc_key = self.inner.layout.focus(key);
        let v: Vec<Value> = self
            .inner
            .conn
            .cmd(
                redis::cmd("HMGET")
                    .arg(&doc_key)
                    .arg(DOC_FIELDS[0])
                    .arg(DOC_FIELDS[1])
                    .arg(DOC_FIELDS[2]),
                "get",
                Some(&doc_key),
            )
            .await?;
        doc_of_hmget(key, &doc_key, v)
    }

    async fn delete(&self, key: &FocusKey) -> Result<bool> {
        let doc_key = self.inner.layout.focus(key);
        let index = self.inner.layout.focus_index(key.scope());
        let name = chatstate_core::key::escape(key.name()).into_owned();
        let v = self
            .inner
            .conn
            .script(
                &self.inner.scripts.focus.delete,
                &[&doc_key, &index],
                &[name.as_bytes()],
                "delete",
            )
            .await?;
        Ok(reply::int(&v)? > 0)
    }

    async fn list(&self, scope: &str) -> Result<Vec<FocusDoc>> {
        check_scope("focus scope", scope).in_op("list")?;
        let index = self.inner.layout.focus_index(scope);
        // Every document key of the scope is this prefix plus the escaped name.
        let probe = FocusKey::new(scope, "x")?;
        let full = self.inner.layout.focus(&probe);
        let prefix = &full[..full.len() - 1];
        // SSCAN returns every name present for the whole walk, some maybe twice:
        // keyed by name, each document is kept once.
        let mut docs: std::collections::BTreeMap<String, FocusDoc> = Default::default();
        let count = LIST_PAGE.to_string();
        let mut cursor = b"0".to_vec();
        loop {
            let v = self
                .inner
                .conn
                .script(
                    &self.inner.scripts.focus.list,
                    &[&index],
                    &[prefix.as_bytes(), &cursor, count.as_bytes()],
                    "list",
                )
                .await?;
            let mut flat = reply::array(v)?.into_iter();
            cursor = reply::bytes(flat.next().unwrap_or(Value::Nil))?.ok_or_else(|| {
                Error::decode("unexpected Redis reply shape: an SSCAN cursor").with_key(&index)
            })?;
            while let (Some(name), Some(value), Some(version), Some(updated_at)) =
                (flat.next(), flat.next(), flat.next(), flat.next())
            {
                let name = reply::bytes(name)?
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|n| unescape(&n))
                    .ok_or_else(|| {
                        Error::decode("a focus index entry is malformed").with_key(&index)
                    })?;
                let key = FocusKey::new(scope, name.clone())?;
                docs.insert(name, doc_from(key, value, version, updated_at, &index)?);
            }
            if cursor == b"0" {
                break;
            }
        }
        Ok(docs.into_values().collect())
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        RedisStore::capabilities(self)
    }
}
