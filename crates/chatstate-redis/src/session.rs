//! SessionStore on Redis: the Lua scripts and the Rust that calls them, side by side.
//!
//! A session is a hash (`…:ctx`, one field per session field, readable with
//! `HGETALL`), a list (`…:msgs`, `<seq>:<message JSON>` per message) and, once it
//! has side data, a second hash (`…:data`, one field per name), all under the
//! session's hash tag, always written together with the same TTL by one script.
//!
//! ## Why side data is a hash of its own
//!
//! Side values could be fields of `…:ctx` under a prefix, but then every script
//! that ships the record (`HGETALL` in create, update, load, `get_many`) would ship
//! them too, and the record's parser would have to skip them: a session with 64
//! tool results of 10 kB would send 640 kB on every `load`. A separate hash keeps
//! the record's reads exactly as they were; its price is one more `PEXPIRE` in
//! every session write (on a missing key when the session has no side data: about
//! 1 µs of server time, measured in `BENCHMARKS.md`) and a fifth key in the
//! writing scripts (same hash tag, so one slot still).
//!
//! ## The tenant index
//!
//! A tenant's sessions are members (`<channel>:<user>`) of two sorted sets:
//! `…:sessidx:{<tenant>}` (score 0, so `list` pages through it in member order) and
//! `…:sessidx:{<tenant>}:exp` (score = the session's expiry, server time in ms). The
//! same script that writes a session writes its member in both and sets both keys'
//! TTL to the latest deadline, atomically: so `update`/`touch` of a missing session
//! add nothing, and a `delete` (also one script) cannot interleave with an `append`
//! and leave a live session out of the index.
//!
//! The index stays off the per-message path: a member's deadline is set to 1.5
//! session TTLs from the write that indexes it, and recorded in the record's field
//! `index_until`; a later write touches the index only when that deadline would
//! end before the session's own new deadline (now + TTL). A busy session so
//! touches its index about once per half TTL; every other write reads
//! `index_until` (`HGET`) and only prunes (one `ZRANGE` when nothing expired)
//! instead of two `ZADD`, a second `ZRANGE` and two `PEXPIREAT`. The listing promise holds because a
//! member's deadline is never before its session's expiry: pruning removes only
//! members whose deadline passed (sessions already gone), and `list` checks each
//! member's session exists (a member outliving its session by up to half a TTL is
//! skipped and dropped there). A session created again after expiry or `delete`
//! has a new record without `index_until`, so its first write indexes it. Every
//! write also prunes up to 64 members whose deadline passed (`PRUNE_PER_WRITE` in
//! the Lua: bounded work, and a write adds at most one member), so a tenant with
//! many short sessions keeps an index of about its live sessions without any
//! `list` call. The index keys' TTL is the latest member deadline: up to 1.5
//! session TTLs.
//!
//! On one server the index is one pair per tenant, and the session scripts name
//! keys of two hash tags (the session's and the tenant's). On a Cluster
//! ([`KeyLayout::clustered`]) every script's keys must share a slot, so the tenant's
//! index is split into 16 shards and a session's hash tag names its tenant and
//! shard (`{<tenant>:<shard>}`): its keys and its shard's index share a slot, and
//! `list` walks the shards in order (`list_shard`), each in its own slot.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::ResultExt;
use chatstate_core::key::{check_lock_name, check_scope, unescape};
use chatstate_core::model::check_turn;
use chatstate_core::model::random_id;
use chatstate_core::{
    AppendReceipt, Change, Error, ErrorKind, Expected, KeyLayout, Lease, LoadedSession, Message,
    NewMessage, Page, Result, Role, Session, SessionKey, SessionPatch, SessionStore, StoreSettings,
    Timestamp, Turn, TurnReceipt,
};
use redis::Value;
use serde::{Deserialize, Serialize};

use crate::RedisStore;
use crate::conn::{Script, lua_int, lua_wrongtype, reply};

/// Shared Lua of the session-writing scripts. KEYS are always ctx, msgs, index,
/// deadlines, data; the index member is the last ARGV.
///
/// - `apply_patch(ctx, argv, at)`: the patch's sets and deletes.
/// - `check_record(ctx)`: a `CHATSTATE_CORRUPT` reply (Decode naming the record)
///   when an existing record's `version` or `message_count` is not an integer in
///   `0..i64::MAX` as HINCRBY reads it: every write refuses a corrupt record before
///   its first write, as every read does. Otherwise `nil` and the two fields, so
///   the caller reads them once.
/// - `check_live()`: `check_keys`, then whether the session exists (`nil, false`
///   when not) and, when it does, `check_record` (`nil, true` when it passes).
/// - `check_keys()`: a WRONGTYPE reply when any of the five keys holds another
///   type, checked before the first write.
/// - `index_write(ttl_ms)`: when the session's index deadline (the record's
///   `index_until`) would end before the session's new one (now + ttl, server
///   time: the same clock as the PEXPIRE of its keys), sets it to now + 1.5 ttl
///   in the index and the record, prunes expired members, and sets both index
///   keys' TTL to the latest deadline; otherwise only prunes.
/// - `index_remove()`: drops this session's member, prunes, and re-sets the TTL.
/// - `refresh(ttl_ms)`: every write's tail: ctx, msgs and data expire `ttl_ms` from
///   now, and the index records it.
///
/// It includes `lua_wrongtype!` and `lua_int!`, which it calls.
macro_rules! lua_prelude {
    () => {
        concat!(
            lua_wrongtype!(),
            lua_int!(),
            r#"
local function apply_patch(ctx, argv, at)
  local nsets = tonumber(argv[at])
  for i = 0, nsets - 1 do
    redis.call('HSET', ctx, argv[at + 1 + 2 * i], argv[at + 2 + 2 * i])
  end
  local d = at + 1 + 2 * nsets
  local ndels = tonumber(argv[d])
  for i = 1, ndels do
    redis.call('HDEL', ctx, argv[d + i])
  end
end
local function check_record(ctx)
  local f = redis.call('HMGET', ctx, 'version', 'message_count')
  if not nonneg_below_max(f[1]) then
    return corrupt(ctx, 'field version is not a non-negative integer')
  end
  if not nonneg_below_max(f[2]) then
    return corrupt(ctx, 'field message_count is not a non-negative integer')
  end
  return nil, f
end
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function check_keys()
  return wrongtype(KEYS[1], 'hash') or wrongtype(KEYS[2], 'list')
    or wrongtype(KEYS[3], 'zset') or wrongtype(KEYS[4], 'zset') or wrongtype(KEYS[5], 'hash')
end
local function check_live()
  local e = check_keys()
  if e then return e end
  if redis.call('EXISTS', KEYS[1]) == 0 then return nil, false end
  e = check_record(KEYS[1])
  if e then return e end
  return nil, true
end
local PRUNE_PER_WRITE = 64
local function index_prune(now)
  local dead = redis.call('ZRANGE', KEYS[4], '-inf', string.format('(%d', now), 'BYSCORE',
    'LIMIT', 0, PRUNE_PER_WRITE)
  if #dead > 0 then
    redis.call('ZREM', KEYS[3], unpack(dead))
    redis.call('ZREM', KEYS[4], unpack(dead))
  end
end
local function index_prune_and_expire(now)
  index_prune(now)
  local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  if #last == 2 then
    redis.call('PEXPIREAT', KEYS[3], last[2])
    redis.call('PEXPIREAT', KEYS[4], last[2])
  end
end
local function index_write(ttl_ms)
  local now = server_ms()
  local ttl = tonumber(ttl_ms)
  local indexed = tonumber(redis.call('HGET', KEYS[1], 'index_until') or '0') or 0
  if indexed >= now + ttl then
    -- Not due: only the pruning (removing expired members never moves the
    -- index keys' TTL, which is the latest deadline).
    index_prune(now)
    return
  end
  local deadline = now + ttl + math.floor(ttl / 2)
  local member = ARGV[#ARGV]
  redis.call('ZADD', KEYS[3], 0, member)
  redis.call('ZADD', KEYS[4], deadline, member)
  index_prune_and_expire(now)
  redis.call('HSET', KEYS[1], 'index_until', deadline)
end
local function index_remove()
  local member = ARGV[#ARGV]
  redis.call('ZREM', KEYS[3], member)
  redis.call('ZREM', KEYS[4], member)
  index_prune_and_expire(server_ms())
end
local function refresh(ttl_ms)
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
  redis.call('PEXPIRE', KEYS[5], ttl_ms)
  index_write(ttl_ms)
end
"#
        )
    };
}
pub(crate) use lua_prelude;

/// Creates a session (mode 0: refuse an existing one; mode 1: return it).
/// KEYS: ctx, msgs, index, deadlines, data. ARGV: now, ttl_ms, id, mode, patch (nsets, f,
/// v, ..., ndels, f, ...), member.
/// Returns {0} when it exists (mode 0), {1, hash} when it exists (mode 1), {2, hash}
/// when created.
const CREATE: &str = concat!(
    lua_prelude!(),
    r#"
local ctx, msgs = KEYS[1], KEYS[2]
local e = check_keys()
if e then return e end
if redis.call('EXISTS', ctx) == 1 then
  if ARGV[4] == '0' then return {0} end
  return {1, redis.call('HGETALL', ctx)}
end
redis.call('DEL', msgs, KEYS[5])
redis.call('HSET', ctx, 'id', ARGV[3], 'created_at', ARGV[1], 'last_activity', ARGV[1],
  'updated_at', ARGV[1], 'paused', '0', 'token_estimate', '0', 'message_count', '0', 'version', '1')
apply_patch(ctx, ARGV, 5)
refresh(ARGV[2])
return {2, redis.call('HGETALL', ctx)}
"#
);

/// Commits a turn (`SessionState::commit_turn`): checks the expected version,
/// applies the patch, appends the messages (numbered, the window trimmed),
/// sets last_activity and refreshes every part's TTL, creating the session when
/// missing and no version is expected. `append_messages` is a turn with messages
/// only. KEYS: ctx, msgs, index, deadlines, data. ARGV: now, ttl_ms, window, new
/// id, expected version (-1: any), return the record (0/1), n, message JSON × n,
/// patch (nsets, f, v, ..., ndels, f, ...), member.
/// Returns {0} no session (a version other than 0 was expected: a missing session
/// is at version 0), {1, version} conflict, or
/// {2, message_count, window length, created (0/1), trimmed messages, trimmed
/// tokens, version[, hash]}.
///
/// Everything that can refuse is checked before the first write: the keys' types,
/// the stored `version` and `message_count` (integers in range, as HINCRBY reads
/// them: else Decode naming the record), the version, room in `message_count`,
/// and the stored messages the window trims (their tokens are
/// `chatstate_core::model::estimate_tokens` of each content: characters, not
/// bytes, / 4 rounded up; one that does not parse is Decode). The trimmed
/// messages are the oldest `LLEN + n - window` (stored ones first, then new ones
/// when the turn brings more than the window).
const TURN: &str = concat!(
    lua_prelude!(),
    r#"
local ctx, msgs = KEYS[1], KEYS[2]
local e = check_keys()
if e then return e end
local n = tonumber(ARGV[7])
local patch_at = 8 + n
local nsets = tonumber(ARGV[patch_at])
local has_patch = nsets > 0 or ARGV[patch_at + 1 + 2 * nsets] ~= '0'
local exists = redis.call('EXISTS', ctx) == 1
local version
if exists then
  local f
  e, f = check_record(ctx)
  if e then return e end
  version = f[1]
  if ARGV[5] ~= '-1' and version ~= ARGV[5] then return {1, version} end
  if not fits_sum(f[2], ARGV[7]) then
    return corrupt(ctx, 'field message_count is at its maximum')
  end
elseif ARGV[5] ~= '-1' and ARGV[5] ~= '0' then
  return {0}
end
local function tokens(json)
  local ok, m = pcall(cjson.decode, json)
  if not ok or type(m) ~= 'table' or type(m.content) ~= 'string' then return nil end
  local _, chars = string.gsub(m.content, '[^\128-\191]', '')
  return math.ceil(chars / 4)
end
local window = tonumber(ARGV[3])
local old = exists and redis.call('LLEN', msgs) or 0
local excess = old + n - window
local trimmed_tokens = 0
if excess > 0 then
  local stored = math.min(excess, old)
  if stored > 0 then
    for _, raw in ipairs(redis.call('LRANGE', msgs, 0, stored - 1)) do
      local t = tokens(string.match(raw, '^%d+:(.*)$') or '')
      if not t then return corrupt(msgs, 'a stored message is malformed') end
      trimmed_tokens = trimmed_tokens + t
    end
  end
  for i = 1, excess - stored do
    trimmed_tokens = trimmed_tokens + (tokens(ARGV[7 + i]) or 0)
  end
else
  excess = 0
end
local created = 0
if not exists then
  redis.call('DEL', msgs, KEYS[5])
  redis.call('HSET', ctx, 'id', ARGV[4], 'created_at', ARGV[1], 'updated_at', ARGV[1],
    'paused', '0', 'token_estimate', '0', 'message_count', '0', 'version', '1')
  apply_patch(ctx, ARGV, patch_at)
  version = 1
  created = 1
elseif has_patch then
  apply_patch(ctx, ARGV, patch_at)
  version = redis.call('HINCRBY', ctx, 'version', 1)
end
local count = redis.call('HINCRBY', ctx, 'message_count', n)
if n > 0 then
  local batch = {}
  for i = 1, n do
    batch[#batch + 1] = (count - n + i) .. ':' .. ARGV[7 + i]
    if #batch == 1000 or i == n then
      redis.call('RPUSH', msgs, unpack(batch))
      batch = {}
    end
  end
end
if old + n > window then redis.call('LTRIM', msgs, -window, -1) end
if exists and has_patch then
  redis.call('HSET', ctx, 'last_activity', ARGV[1], 'updated_at', ARGV[1])
else
  redis.call('HSET', ctx, 'last_activity', ARGV[1])
end
refresh(ARGV[2])
local out = {2, count, math.min(old + n, window), created, excess, trimmed_tokens, version}
if ARGV[6] == '1' then out[8] = redis.call('HGETALL', ctx) end
return out
"#
);

/// Applies a patch, optionally only at an expected version.
/// KEYS: ctx, msgs, index, deadlines, data. ARGV: now, ttl_ms, expected version (-1: any),
/// patch, member.
/// Returns {0} missing, {1, version} conflict, {2, hash} done.
///
/// The stored version must be an integer in `0..i64::MAX` (as HINCRBY reads it)
/// before anything is written; else Decode naming the record. The version check
/// mirrors `chatstate_core::Expected`: both sides are canonical integer strings.
const UPDATE: &str = concat!(
    lua_prelude!(),
    r#"
local ctx, msgs = KEYS[1], KEYS[2]
local e = check_keys()
if e then return e end
if redis.call('EXISTS', ctx) == 0 then return {0} end
local f
e, f = check_record(ctx)
if e then return e end
local version = f[1]
if ARGV[3] ~= '-1' and version ~= ARGV[3] then return {1, version} end
apply_patch(ctx, ARGV, 4)
redis.call('HINCRBY', ctx, 'version', 1)
redis.call('HSET', ctx, 'updated_at', ARGV[1])
refresh(ARGV[2])
return {2, redis.call('HGETALL', ctx)}
"#
);

/// Sets last_activity and refreshes the TTL. KEYS: ctx, msgs, index, deadlines,
/// data. ARGV: now, ttl_ms, member. Returns 1, or 0 when there is no session (and then
/// writes nothing, the index included).
const TOUCH: &str = concat!(
    lua_prelude!(),
    r#"
local e, live = check_live()
if e then return e end
if not live then return 0 end
redis.call('HSET', KEYS[1], 'last_activity', ARGV[1])
refresh(ARGV[2])
return 1
"#
);

/// Deletes a session and its index member in one step (so it cannot interleave
/// with a write of the same session). KEYS: ctx, msgs, index, deadlines, data.
/// ARGV: member. Returns how many of ctx, msgs and data existed.
const DELETE: &str = concat!(
    lua_prelude!(),
    r#"
local e = wrongtype(KEYS[3], 'zset') or wrongtype(KEYS[4], 'zset')
if e then return e end
local n = redis.call('DEL', KEYS[1], KEYS[2], KEYS[5])
index_remove()
return n
"#
);

/// Sets one side value of a live session (`SessionState::set_data`) and refreshes
/// every part's TTL. KEYS: ctx, msgs, index, deadlines, data. ARGV: ttl_ms, name,
/// value, most names, member. Returns 1 done, 0 no session, -1 a new name over the
/// limit (nothing written either way).
const SET_DATA: &str = concat!(
    lua_prelude!(),
    r#"
local e, live = check_live()
if e then return e end
if not live then return 0 end
if redis.call('HEXISTS', KEYS[5], ARGV[2]) == 0
  and redis.call('HLEN', KEYS[5]) >= tonumber(ARGV[4]) then
  return -1
end
redis.call('HSET', KEYS[5], ARGV[2], ARGV[3])
refresh(ARGV[1])
return 1
"#
);

/// Deletes one side value of a live session and refreshes every part's TTL.
/// KEYS: ctx, msgs, index, deadlines, data. ARGV: ttl_ms, name, member. Returns 1
/// deleted, 0 no such value, -1 no session (nothing written).
const DELETE_DATA: &str = concat!(
    lua_prelude!(),
    r#"
local e, live = check_live()
if e then return e end
if not live then return -1 end
local n = redis.call('HDEL', KEYS[5], ARGV[2])
refresh(ARGV[1])
return n
"#
);

/// Which of a page of index members still have a session; removes the others from
/// the index in the same step. KEYS: index, deadlines, then each member's ctx key.
/// ARGV: the members. Returns 1/0 per member.
const LIST_LIVE: &str = r#"
local out = {}
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 2]) == 1 then
    out[i] = 1
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    out[i] = 0
  end
end
return out
"#;

/// Lua shared by the lock scripts: `keep_fence(fence, ms)` keeps the fencing number
/// at least `ms` from now and never shortens an earlier deadline (`LockState::keep_until`
/// in core). PTTL is -1 for a key without a TTL (a fresh fence) and below `ms` for a
/// shorter one; both get `ms`. (Not `PEXPIRE … GT`: it needs Redis 7, and a script
/// failing after its `SET NX` and `INCR` would leave them written.) `ms` is
/// `chatstate_core::StoreSettings::fence_retention(lease left)`: lease + session TTL.
macro_rules! lua_fence {
    () => {
        r#"
local function keep_fence(fence, ms)
  if redis.call('PTTL', fence) < tonumber(ms) then
    redis.call('PEXPIRE', fence, ms)
  end
end
"#
    };
}

/// Takes a lock and its next fencing number.
/// KEYS: lock, fence. ARGV: token, lease_ms, fence retention_ms. Returns the fence, or 0.
///
/// The fencing number must be an integer in `0..i64::MAX` (as INCR reads it) before
/// the lock is set, so a corrupt one leaves no orphan lock: Decode naming it.
const TRY_LOCK: &str = concat!(
    lua_wrongtype!(),
    lua_int!(),
    lua_fence!(),
    r#"
local e = wrongtype(KEYS[1], 'string') or wrongtype(KEYS[2], 'string')
if e then return e end
local old = redis.call('GET', KEYS[2])
if old and not nonneg_below_max(old) then
  return corrupt(KEYS[2], 'the fencing number is not an integer in 0..i64::MAX')
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  keep_fence(KEYS[2], ARGV[3])
  return fence
end
return 0
"#
);

/// Extends a lock held with this token. KEYS: lock, fence. ARGV: token, lease_ms,
/// fence retention_ms (for the new lease).
const EXTEND_LOCK: &str = concat!(
    lua_fence!(),
    r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  keep_fence(KEYS[2], ARGV[3])
  return 1
end
return 0
"#
);

/// Releases a lock held with this token. KEYS: lock, fence. ARGV: token, fence
/// retention_ms (for a lease of 0: the session TTL).
const RELEASE_LOCK: &str = concat!(
    lua_fence!(),
    r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  keep_fence(KEYS[2], ARGV[2])
  return 1
end
return 0
"#
);

/// The session scripts, hashed once per store.
pub(crate) struct SessionScripts {
    create: Script,
    turn: Script,
    update: Script,
    touch: Script,
    delete: Script,
    set_data: Script,
    delete_data: Script,
    list_live: Script,
    try_lock: Script,
    extend_lock: Script,
    release_lock: Script,
}

impl SessionScripts {
    pub fn new() -> Self {
        SessionScripts {
            create: Script::new("create", CREATE),
            turn: Script::new("turn", TURN),
            update: Script::new("update", UPDATE),
            touch: Script::new("touch", TOUCH),
            delete: Script::new("delete", DELETE),
            set_data: Script::new("set_data", SET_DATA),
            delete_data: Script::new("delete_data", DELETE_DATA),
            list_live: Script::new("list_live", LIST_LIVE),
            try_lock: Script::new("try_lock", TRY_LOCK),
            extend_lock: Script::new("extend_lock", EXTEND_LOCK),
            release_lock: Script::new("release_lock", RELEASE_LOCK),
        }
    }
}

/// A message as stored in the list, after its `<seq>:`.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredMessage {
    pub(crate) role: Role,
    pub(crate) content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) metadata: Option<Bytes>,
    pub(crate) at: Timestamp,
}

pub(crate) struct Keys {
    pub(crate) ctx: String,
    pub(crate) msgs: String,
    pub(crate) data: String,
    index: String,
    deadlines: String,
    member: String,
}

impl Keys {
    /// The key each command [`queue_read`] queues concerns, in its order.
    pub(crate) fn read_keys(&self) -> [&str; READ_CMDS] {
        [&self.ctx, &self.ctx, &self.msgs, &self.ctx]
    }

    /// The KEYS of a session-writing script: ctx, msgs, index, deadlines, data.
    pub(crate) fn script_keys(&self) -> [&str; 5] {
        [
            &self.ctx,
            &self.msgs,
            &self.index,
            &self.deadlines,
            &self.data,
        ]
    }
}

/// How many commands [`queue_read`] queues.
pub(crate) const READ_CMDS: usize = 4;

/// Queues the read of a session with its window — `MULTI`, `HGETALL` of the record,
/// `LRANGE` of the window, `EXEC` — as `load` and the read batch send it: both read
/// at one instant. Chosen over a Lua script by measurement (`BENCHMARKS.md`, "A
/// turn"): the same atomicity at about half the server time per read, and no
/// script to load. `EXEC`'s answer (the last) goes to [`loaded_of_exec`].
pub(crate) fn queue_read(pipe: &mut redis::Pipeline, k: &Keys) {
    pipe.cmd("MULTI")
        .cmd("HGETALL")
        .arg(&k.ctx)
        .cmd("LRANGE")
        .arg(&k.msgs)
        .arg(0)
        .arg(-1)
        .cmd("EXEC");
}

/// The session read by [`queue_read`], from `EXEC`'s `[record hash, messages]`
/// (`None` when there is no session).
pub(crate) fn loaded_of_exec(
    key: &SessionKey,
    k: &Keys,
    exec: Value,
) -> Result<Option<LoadedSession>> {
    let mut both = reply::array(exec)?.into_iter();
    let hash = both.next().unwrap_or(Value::Nil);
    loaded_from(key, k, hash, both.next().unwrap_or(Value::Nil))
}

pub(crate) fn keys(layout: &KeyLayout, key: &SessionKey) -> Keys {
    let base = layout.session_base(key);
    let index = layout.session_index_of(key);
    Keys {
        ctx: format!("{base}:ctx"),
        msgs: format!("{base}:msgs"),
        data: format!("{base}:data"),
        deadlines: KeyLayout::index_deadlines(&index),
        index,
        member: KeyLayout::session_index_member(key),
    }
}

impl RedisStore {
    /// Up to `want` live sessions of one index shard of `tenant`, in member order
    /// after `after`, with their members. Reads members in batches, keeps the live
    /// ones and drops the dead ones from the index; every command stays in the
    /// shard's slot.
    async fn list_shard(
        &self,
        tenant: &str,
        shard: u16,
        after: Option<String>,
        want: usize,
    ) -> Result<Vec<(String, SessionKey)>> {
        let layout = &self.inner.layout;
        let index = layout.session_index_shard(tenant, shard);
        let deadlines = KeyLayout::index_deadlines(&index);
        let mut start = match after {
            Some(m) => format!("({m}"),
            None => "-".to_string(),
        };
        let mut items: Vec<(String, SessionKey)> = Vec::new();
        loop {
            let batch = (want - items.len()).clamp(64, 1000);
            let members: Vec<String> = self
                .inner
                .conn
                .cmd(
                    redis::cmd("ZRANGE")
                        .arg(&index)
                        .arg(&start)
                        .arg("+")
                        .arg("BYLEX")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(batch),
                    "list",
                    Some(&index),
                )
                .await?;
            if members.is_empty() {
                break;
            }
            let mut candidates = Vec::new();
            for m in &members {
                let parsed = m
                    .split_once(':')
                    .and_then(|(c, u)| Some((unescape(c)?, unescape(u)?)))
                    .and_then(|(c, u)| SessionKey::new(tenant, c, u).ok());
                // A member listed in another shard's index than its own would be
                // found twice (or its session's keys are not where the index is).
                if let Some(key) = parsed.filter(|k| layout.session_shard(k) == shard) {
                    candidates.push((m.clone(), key));
                }
            }
            // One script checks which candidates live and drops the dead from the
            // index atomically, so a session re-created meanwhile is never dropped.
            let ctx_keys: Vec<String> = candidates
                .iter()
                .map(|(_, key)| format!("{}:ctx", layout.session_base(key)))
                .collect();
            let alive: Vec<i64> = if candidates.is_empty() {
                Vec::new()
            } else {
                let mut script_keys: Vec<&str> = vec![index.as_str(), deadlines.as_str()];
                script_keys.extend(ctx_keys.iter().map(String::as_str));
                let members: Vec<&[u8]> = candidates.iter().map(|(m, _)| m.as_bytes()).collect();
                let v = self
                    .inner
                    .conn
                    .script(
                        &self.inner.scripts.session.list_live,
                        &script_keys,
                        &members,
                        "list",
                    )
                    .await?;
                reply::array(v)?
                    .iter()
                    .map(reply::int)
                    .collect::<Result<_>>()?
            };
            for ((member, key), live) in candidates.into_iter().zip(alive) {
                if live == 1 && items.len() < want {
                    items.push((member, key));
                }
            }
            if items.len() >= want || members.len() < batch {
                break;
            }
            if let Some(last) = members.last() {
                start = format!("({last}");
            }
        }
        Ok(items)
    }
}

fn ms(d: Duration) -> Vec<u8> {
    d.as_millis().to_string().into_bytes()
}

pub(crate) fn num(n: impl ToString) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// The patch as script arguments: nsets, field, value, ..., ndels, field, ...
fn patch_args(patch: &SessionPatch) -> Vec<Vec<u8>> {
    let mut sets: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut dels: Vec<&str> = Vec::new();
    let mut text = |name: &'static str, c: &Change<String>| match c {
        Change::Keep => {}
        Change::Set(v) => sets.push((name, v.clone().into_bytes())),
        Change::Clear => dels.push(name),
    };
    text("summary", &patch.summary);
    text("focus", &patch.focus);
    for (name, c) in [
        ("metadata", &patch.metadata),
        ("context", &patch.context),
        ("stats", &patch.stats),
    ] {
        match c {
            Change::Keep => {}
            Change::Set(v) => sets.push((name, v.to_vec())),
            Change::Clear => dels.push(name),
        }
    }
    if let Some(p) = patch.paused {
        sets.push(("paused", if p { b"1".to_vec() } else { b"0".to_vec() }));
    }
    if let Some(t) = patch.token_estimate {
        sets.push(("token_estimate", num(t)));
    }
    let mut out = vec![num(sets.len())];
    for (f, v) in sets {
        out.push(f.as_bytes().to_vec());
        out.push(v);
    }
    out.push(num(dels.len()));
    out.extend(dels.into_iter().map(|f| f.as_bytes().to_vec()));
    out
}

/// The scripts' expected-version argument: `-1` for any version.
fn expected_arg(expected: Expected) -> Vec<u8> {
    match expected {
        Expected::Any => b"-1".to_vec(),
        Expected::Version(v) => num(v),
    }
}

/// The `Conflict` of a script that found the session at version `have` (its
/// reply's second item), or the error decoding that item.
fn conflict(
    expected: Expected,
    have: Option<&Value>,
    op: &'static str,
    key: &SessionKey,
) -> Result<Error> {
    let have = have.map(reply::int).transpose()?.unwrap_or(0);
    let want = match expected {
        Expected::Version(v) => v,
        Expected::Any => 0,
    };
    Ok(Error::conflict(format!(
        "expected version {want}, the session is at version {have}"
    ))
    .with_operation(op)
    .with_key(key))
}

fn corrupt(key: &str, what: &str) -> Error {
    Error::decode(format!("session hash {what}")).with_key(key)
}

/// A session record from its hash fields.
pub(crate) fn session_from(
    key: &SessionKey,
    redis_key: &str,
    fields: Vec<(String, Vec<u8>)>,
) -> Result<Session> {
    let mut map: HashMap<String, Vec<u8>> = fields.into_iter().collect();
    let text = |map: &mut HashMap<String, Vec<u8>>, f: &str| -> Result<Option<String>> {
        map.remove(f)
            .map(|b| {
                String::from_utf8(b)
                    .map_err(|_| corrupt(redis_key, &format!("field {f} is not UTF-8")))
            })
            .transpose()
    };
    let int = |map: &mut HashMap<String, Vec<u8>>, f: &str| -> Result<i64> {
        let raw = map
            .remove(f)
            .ok_or_else(|| corrupt(redis_key, &format!("lacks field {f}")))?;
        reply::redis_int(&raw)
            .ok_or_else(|| corrupt(redis_key, &format!("field {f} is not a number")))
    };
    let unsigned = |v: i64, f: &str| {
        u64::try_from(v).map_err(|_| corrupt(redis_key, &format!("field {f} is negative")))
    };
    let id = text(&mut map, "id")?.ok_or_else(|| corrupt(redis_key, "lacks field id"))?;
    let created_at = Timestamp(int(&mut map, "created_at")?);
    let last_activity = Timestamp(int(&mut map, "last_activity").unwrap_or(created_at.0));
    let updated_at = Timestamp(int(&mut map, "updated_at")?);
    let paused = int(&mut map, "paused")? != 0;
    let token_estimate = unsigned(int(&mut map, "token_estimate")?, "token_estimate")?;
    let message_count = unsigned(int(&mut map, "message_count")?, "message_count")?;
    let version = unsigned(int(&mut map, "version")?, "version")?;
    Ok(Session {
        key: key.clone(),
        id,
        created_at,
        last_activity,
        updated_at,
        summary: text(&mut map, "summary")?,
        focus: text(&mut map, "focus")?,
        metadata: map.remove("metadata").map(Bytes::from),
        context: map.remove("context").map(Bytes::from),
        stats: map.remove("stats").map(Bytes::from),
        paused,
        token_estimate,
        message_count,
        version,
    })
}

pub(crate) fn message_from(raw: &[u8], redis_key: &str) -> Result<Message> {
    let bad = || Error::decode("a stored message is malformed").with_key(redis_key);
    let text = std::str::from_utf8(raw).map_err(|_| bad())?;
    let (seq, json) = text.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    // Never the serde error as source: its message quotes the stored text.
    let m: StoredMessage = serde_json::from_str(json).map_err(|e| {
        let detail = chatstate_core::codec::json_decode_error("a stored message", &e);
        Error::decode(detail.message().to_string()).with_key(redis_key)
    })?;
    Ok(Message {
        seq,
        role: m.role,
        content: m.content,
        metadata: m.metadata,
        at: m.at,
    })
}

/// A loaded session from its record hash and its window's list (`None` when the
/// hash is empty: no session).
fn loaded_from(
    key: &SessionKey,
    k: &Keys,
    hash: Value,
    messages: Value,
) -> Result<Option<LoadedSession>> {
    let hash = reply::pairs(hash)?;
    if hash.is_empty() {
        return Ok(None);
    }
    let session = session_from(key, &k.ctx, hash)?;
    let messages = reply::array(messages)?
        .into_iter()
        .map(|m| {
            let raw = reply::bytes(m)?.unwrap_or_default();
            message_from(&raw, &k.msgs)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(LoadedSession { session, messages }))
}

/// The `{created/exists, hash}` reply of CREATE and UPDATE: the status and the hash.
fn status_and_hash(v: Value) -> Result<(i64, Option<Value>)> {
    let mut items = reply::array(v)?.into_iter();
    let status = reply::int(&items.next().unwrap_or(Value::Nil))?;
    Ok((status, items.next()))
}

impl RedisStore {
    /// `err` naming the session key that holds another Redis type. A command
    /// inside `MULTI`/`EXEC` that fails reaches the client as `EXEC`'s error,
    /// which says neither which command nor which key: on a `WrongType` error
    /// this asks the two keys' `TYPE` (one more round trip, on that path only).
    pub(crate) async fn name_wrong_type(&self, err: Error, k: &Keys, op: &'static str) -> Error {
        // Only `EXEC`'s error is named after the record by default (the first
        // key of the session's read); another command's error names its own key.
        if err.kind() != ErrorKind::WrongType || err.key() != Some(k.ctx.as_str()) {
            return err;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("TYPE").arg(&k.ctx).cmd("TYPE").arg(&k.msgs);
        let types: Result<Vec<String>> = self.inner.conn.pipe(&pipe, op, &[&k.ctx, &k.msgs]).await;
        let wrong = match types.as_deref() {
            Ok([ctx, _]) if !matches!(ctx.as_str(), "hash" | "none") => &k.ctx,
            Ok([_, msgs]) if !matches!(msgs.as_str(), "list" | "none") => &k.msgs,
            _ => return err,
        };
        err.with_key(wrong)
    }
}

impl RedisStore {
    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn ttl_ms(&self) -> Vec<u8> {
        ms(self.inner.settings.session_ttl)
    }

    /// Runs a session-writing script: one round trip, which writes the session and
    /// its tenant index together (the member is the script's last argument).
    pub(crate) async fn session_write(
        &self,
        script: &Script,
        k: &Keys,
        mut args: Vec<Vec<u8>>,
        op: &'static str,
    ) -> Result<Value> {
        args.push(k.member.as_bytes().to_vec());
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        self.inner
            .conn
            .script(script, &k.script_keys(), &refs, op)
            .await
    }
}

impl RedisStore {
    /// Runs the TURN script for a checked turn (`op` names the caller in errors
    /// and the round-trip accounting).
    async fn turn(&self, key: &SessionKey, turn: Turn, op: &'static str) -> Result<TurnReceipt> {
        let now = self.now();
        let k = keys(&self.inner.layout, key);
        let mut args = vec![
            num(now.0),
            self.ttl_ms(),
            num(self.inner.settings.window_size),
            random_id().into_bytes(),
            expected_arg(turn.expected),
            if turn.return_session {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
            num(turn.messages.len()),
        ];
        for m in turn.messages {
            let stored = StoredMessage {
                role: m.role,
                content: m.content,
                metadata: m.metadata,
                at: m.at.unwrap_or(now),
            };
            args.push(serde_json::to_vec(&stored).map_err(|e| {
                Error::new(ErrorKind::Internal, "a message does not encode").with_source(e)
            })?);
        }
        args.extend(patch_args(&turn.patch));
        let v = self
            .session_write(&self.inner.scripts.session.turn, &k, args, op)
            .await?;
        let r = reply::array(v)?;
        match r.first().map(reply::int).transpose()? {
            Some(0) => Err(Error::not_found("no live session has this key")
                .with_operation(op)
                .with_key(key)),
            Some(1) => Err(conflict(turn.expected, r.get(1), op, key)?),
            Some(2) if r.len() >= 7 => {
                let unsigned = |i: usize| -> Result<u64> {
                    u64::try_from(reply::int(&r[i])?)
                        .map_err(|_| corrupt(&k.ctx, "turn reply has a negative count"))
                };
                let append = AppendReceipt {
                    message_count: unsigned(1)?,
                    window_len: usize::try_from(unsigned(2)?).unwrap_or(usize::MAX),
                    created: unsigned(3)? == 1,
                    trimmed_messages: unsigned(4)?,
                    trimmed_tokens: unsigned(5)?,
                };
                let version = unsigned(6)?;
                let session = match r.into_iter().nth(7) {
                    Some(h) => Some(session_from(key, &k.ctx, reply::pairs(h)?)?),
                    None => None,
                };
                Ok(TurnReceipt {
                    version,
                    append,
                    session,
                })
            }
            _ => Err(corrupt(&k.ctx, "turn reply has the wrong shape")),
        }
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, key: &SessionKey, init: SessionPatch) -> Result<Session> {
        let init = init.normalize(&self.inner.settings).in_op("create")?;
        let k = keys(&self.inner.layout, key);
        let mut args = vec![
            num(self.now().0),
            self.ttl_ms(),
            random_id().into_bytes(),
            b"0".to_vec(),
        ];
        args.extend(patch_args(&init));
        let v = self
            .session_write(&self.inner.scripts.session.create, &k, args, "create")
            .await?;
        match status_and_hash(v)? {
            (0, _) => Err(
                Error::new(ErrorKind::AlreadyExists, "a live session has this key")
                    .with_operation("create")
                    .with_key(key),
            ),
            (_, Some(h)) => session_from(key, &k.ctx, reply::pairs(h)?),
            _ => Err(corrupt(&k.ctx, "create returned no record")),
        }
    }

    async fn get_or_create(&self, key: &SessionKey) -> Result<Session> {
        let k = keys(&self.inner.layout, key);
        let mut args = vec![
            num(self.now().0),
            self.ttl_ms(),
            random_id().into_bytes(),
            b"1".to_vec(),
        ];
        args.extend(patch_args(&SessionPatch::new()));
        let v = self
            .session_write(
                &self.inner.scripts.session.create,
                &k,
                args,
                "get_or_create",
            )
            .await?;
        match status_and_hash(v)? {
            (_, Some(h)) => session_from(key, &k.ctx, reply::pairs(h)?),
            _ => Err(corrupt(&k.ctx, "get_or_create returned no record")),
        }
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<Session>> {
        Ok(self
            .get_many(std::slice::from_ref(key))
            .await?
            .pop()
            .flatten())
    }

    async fn get_many(&self, keys_in: &[SessionKey]) -> Result<Vec<Option<Session>>> {
        if keys_in.is_empty() {
            return Ok(Vec::new());
        }
        let ks: Vec<Keys> = keys_in
            .iter()
            .map(|k| keys(&self.inner.layout, k))
            .collect();
        // One pipeline of HGETALLs: one round trip (one per slot on a Cluster, sent
        // concurrently).
        let ctx_keys: Vec<&str> = ks.iter().map(|k| k.ctx.as_str()).collect();
        let ctx_keys = &ctx_keys;
        let parts = self
            .inner
            .conn
            .per_slot(ctx_keys, |group| async move {
                let mut pipe = redis::pipe();
                let slot_keys: Vec<&str> = group.iter().map(|&i| ctx_keys[i]).collect();
                for k in &slot_keys {
                    pipe.cmd("HGETALL").arg(*k);
                }
                let values: Vec<Value> =
                    self.inner.conn.pipe(&pipe, "get_many", &slot_keys).await?;
                Ok(group.into_iter().zip(values))
            })
            .await?;
        let mut replies: Vec<Value> = vec![Value::Nil; ks.len()];
        for (i, v) in parts.into_iter().flatten() {
            replies[i] = v;
        }
        replies
            .into_iter()
            .zip(keys_in.iter().zip(&ks))
            .map(|(v, (key, k))| {
                let pairs = reply::pairs(v)?;
                if pairs.is_empty() {
                    Ok(None)
                } else {
                    session_from(key, &k.ctx, pairs).map(Some)
                }
            })
            .collect()
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<LoadedSession>> {
        let k = keys(&self.inner.layout, key);
        let mut pipe = redis::pipe();
        queue_read(&mut pipe, &k);
        let values: Result<Vec<Value>> = self.inner.conn.pipe(&pipe, "load", &k.read_keys()).await;
        let values = match values {
            Ok(v) => v,
            Err(e) => return Err(self.name_wrong_type(e, &k, "load").await),
        };
        let exec = values.into_iter().nth(READ_CMDS - 1).unwrap_or(Value::Nil);
        loaded_of_exec(key, &k, exec)
    }

    async fn append_messages(
        &self,
        key: &SessionKey,
        messages: Vec<NewMessage>,
    ) -> Result<AppendReceipt> {
        chatstate_core::model::check_append(&messages, &self.inner.settings)
            .in_op("append_messages")?;
        let turn = Turn::new().messages(messages);
        Ok(self.turn(key, turn, "append_messages").await?.append)
    }

    async fn commit_turn(&self, key: &SessionKey, turn: Turn) -> Result<TurnReceipt> {
        let turn = check_turn(turn, &self.inner.settings).in_op("commit_turn")?;
        self.turn(key, turn, "commit_turn").await
    }

    async fn update(
        &self,
        key: &SessionKey,
        patch: SessionPatch,
        expected: Expected,
    ) -> Result<Session> {
        let patch = patch.normalize(&self.inner.settings).in_op("update")?;
        let k = keys(&self.inner.layout, key);
        let mut args = vec![num(self.now().0), self.ttl_ms(), expected_arg(expected)];
        args.extend(patch_args(&patch));
        let v = self
            .session_write(&self.inner.scripts.session.update, &k, args, "update")
            .await?;
        match status_and_hash(v)? {
            (0, _) => Err(Error::not_found("no live session has this key")
                .with_operation("update")
                .with_key(key)),
            (1, have) => Err(conflict(expected, have.as_ref(), "update", key)?),
            (_, Some(h)) => session_from(key, &k.ctx, reply::pairs(h)?),
            _ => Err(corrupt(&k.ctx, "update returned no record")),
        }
    }

    async fn set_data(&self, key: &SessionKey, name: &str, value: Bytes) -> Result<()> {
        chatstate_core::model::check_set_data(name, &value, &self.inner.settings)
            .in_op("set_data")?;
        let k = keys(&self.inner.layout, key);
        let args = vec![
            self.ttl_ms(),
            name.as_bytes().to_vec(),
            value.to_vec(),
            num(chatstate_core::model::MAX_SESSION_DATA_NAMES),
        ];
        let v = self
            .session_write(&self.inner.scripts.session.set_data, &k, args, "set_data")
            .await?;
        match reply::int(&v)? {
            1 => Ok(()),
            0 => Err(Error::not_found("no live session has this key")
                .with_operation("set_data")
                .with_key(key)),
            _ => Err(chatstate_core::transition::too_many_data_names()
                .with_operation("set_data")
                .with_key(key)),
        }
    }

    async fn get_data_many(
        &self,
        key: &SessionKey,
        names: &[String],
    ) -> Result<Vec<Option<Bytes>>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        // One HMGET: the data hash lives and dies with the session (same TTL, same
        // scripts), so no session means no hash and all `None`.
        let k = keys(&self.inner.layout, key);
        let values: Vec<Option<Vec<u8>>> = self
            .inner
            .conn
            .cmd(
                redis::cmd("HMGET").arg(&k.data).arg(names),
                "get_data_many",
                Some(&k.data),
            )
            .await?;
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn delete_data(&self, key: &SessionKey, name: &str) -> Result<bool> {
        let k = keys(&self.inner.layout, key);
        let args = vec![self.ttl_ms(), name.as_bytes().to_vec()];
        let v = self
            .session_write(
                &self.inner.scripts.session.delete_data,
                &k,
                args,
                "delete_data",
            )
            .await?;
        Ok(reply::int(&v)? == 1)
    }

    async fn touch(&self, key: &SessionKey) -> Result<bool> {
        let k = keys(&self.inner.layout, key);
        let args = vec![num(self.now().0), self.ttl_ms()];
        let v = self
            .session_write(&self.inner.scripts.session.touch, &k, args, "touch")
            .await?;
        Ok(reply::int(&v)? == 1)
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let k = keys(&self.inner.layout, key);
        // The record and the window are written and expire together, so "a key was
        // deleted" is "the session existed".
        let v = self
            .session_write(&self.inner.scripts.session.delete, &k, Vec::new(), "delete")
            .await?;
        Ok(reply::int(&v)? > 0)
    }

    async fn ttl(&self, key: &SessionKey) -> Result<Option<Duration>> {
        let k = keys(&self.inner.layout, key);
        let pttl: i64 = self
            .inner
            .conn
            .cmd(redis::cmd("PTTL").arg(&k.ctx), "ttl", Some(&k.ctx))
            .await?;
        Ok(crate::pttl_to_duration(pttl))
    }

    async fn list(
        &self,
        tenant: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<SessionKey>> {
        check_scope("tenant", tenant).in_op("list")?;
        chatstate_core::model::check_list_limit(limit).in_op("list")?;
        let layout = &self.inner.layout;
        let shards = layout.session_shards();
        // The cursor: the last member returned (`<shard>~<member>` in the cluster
        // layout, whose shards are walked in order).
        let (mut shard, mut after) = match &cursor {
            Some(c) => {
                let (shard, member) = if layout.is_clustered() {
                    c.split_once('~')
                        .and_then(|(s, m)| Some((s.parse::<u16>().ok()?, m)))
                        .filter(|(s, _)| *s < shards)
                        .ok_or_else(|| {
                            Error::invalid_input("list cursor is malformed").with_operation("list")
                        })?
                } else {
                    (0, c.as_str())
                };
                if member.is_empty() || member.contains(['\0', ' ']) || unescape(member).is_none() {
                    return Err(
                        Error::invalid_input("list cursor is malformed").with_operation("list")
                    );
                }
                (shard, Some(member.to_string()))
            }
            None => (0, None),
        };
        let mut items: Vec<(u16, String, SessionKey)> = Vec::new();
        // Shard by shard (one in the standalone layout), until the page is full plus
        // one (to know whether there is a next page).
        while shard < shards {
            let want = limit.saturating_add(1) - items.len();
            let found = self.list_shard(tenant, shard, after.take(), want).await?;
            items.extend(found.into_iter().map(|(m, k)| (shard, m, k)));
            if items.len() > limit {
                break;
            }
            shard += 1;
        }
        let more = items.len() > limit;
        items.truncate(limit);
        Ok(Page {
            next_cursor: if more {
                items.last().map(|(shard, m, _)| {
                    if layout.is_clustered() {
                        format!("{shard}~{m}")
                    } else {
                        m.clone()
                    }
                })
            } else {
                None
            },
            items: items.into_iter().map(|(_, _, k)| k).collect(),
        })
    }

    async fn try_lock(
        &self,
        key: &SessionKey,
        name: &str,
        lease: Duration,
    ) -> Result<Option<Lease>> {
        check_lock_name(name).in_op("try_lock")?;
        let lease = StoreSettings::check_ttl(lease).in_op("try_lock")?;
        let (lock, fence) = lock_keys(&self.inner.layout, key, name);
        let token = random_id();
        let retention = ms(self.inner.settings.fence_retention(lease));
        let v = self
            .inner
            .conn
            .script(
                &self.inner.scripts.session.try_lock,
                &[&lock, &fence],
                &[token.as_bytes(), &ms(lease), &retention],
                "try_lock",
            )
            .await?;
        let fence = reply::int(&v)?;
        Ok((fence > 0).then(|| Lease {
            key: key.clone(),
            name: name.to_string(),
            token,
            fence: fence as u64,
        }))
    }

    async fn extend_lock(&self, held: &Lease, lease: Duration) -> Result<bool> {
        let lease = StoreSettings::check_ttl(lease).in_op("extend_lock")?;
        let (lock, fence) = lock_keys(&self.inner.layout, &held.key, &held.name);
        let retention = ms(self.inner.settings.fence_retention(lease));
        let v = self
            .inner
            .conn
            .script(
                &self.inner.scripts.session.extend_lock,
                &[&lock, &fence],
                &[held.token.as_bytes(), &ms(lease), &retention],
                "extend_lock",
            )
            .await?;
        Ok(reply::int(&v)? == 1)
    }

    async fn release_lock(&self, held: &Lease) -> Result<bool> {
        let (lock, fence) = lock_keys(&self.inner.layout, &held.key, &held.name);
        let retention = ms(self.inner.settings.fence_retention(Duration::ZERO));
        let v = self
            .inner
            .conn
            .script(
                &self.inner.scripts.session.release_lock,
                &[&lock, &fence],
                &[held.token.as_bytes(), &retention],
                "release_lock",
            )
            .await?;
        Ok(reply::int(&v)? == 1)
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        RedisStore::capabilities(self)
    }
}

fn lock_keys(layout: &KeyLayout, key: &SessionKey, name: &str) -> (String, String) {
    let base = layout.session_base(key);
    let name = chatstate_core::key::escape(name);
    (
        format!("{base}:lock:{name}"),
        format!("{base}:fence:{name}"),
    )
}
