//! The operator commands: `status`, `inspect`, `list sessions`, `stats`, `purge`,
//! `sweep`, `export`, `import`, `migrate`. Each returns a report that is printed
//! as text, or as JSON with `--json`.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use chatstate::{
    BackendKind, CacheKey, Config, CounterKey, Error, ErrorKind, FocusKey, Record, RecordKey,
    RecordKind, Result, SessionKey, Stores,
};
use chatstate_file::FileStore;
use serde::Serialize;

/// Records per inventory page when counting.
const PAGE: usize = 500;

/// The name of a backend as the command prints it.
pub fn backend_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Memory => "memory",
        BackendKind::File => "file",
        _ => "redis",
    }
}

/// What `chatstate status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The backend that serves.
    pub backend: &'static str,
    /// Where it lives (folder, or Redis described without a password).
    pub location: String,
    /// Whether a call reached it.
    pub reachable: bool,
    /// The configured backend, when a fallback serves instead, and why.
    pub fallback_from: Option<String>,
    /// Redis: the server's version (one server; `None` through Sentinel/Cluster).
    pub redis_version: Option<String>,
    /// Redis: whether `rediss://` is used.
    pub tls: Option<bool>,
    /// Redis: a warning about `maxmemory-policy`, when it may evict chatstate's keys.
    pub eviction_warning: Option<String>,
    /// Median of 5 cheap reads (an `exists` of a missing cache key), microseconds.
    pub round_trip_us: f64,
    /// Records per kind (live ones).
    pub counts: BTreeMap<String, u64>,
    /// File store: record files checked, and the ones that do not decode.
    pub verify: Option<Verify>,
    /// The configuration variables and whether each is set (never their values).
    pub env: Vec<EnvVar>,
}

/// The file store's check.
#[derive(Debug, Serialize)]
pub struct Verify {
    /// Files read in full.
    pub files: u64,
    /// Files that do not decode, with the reason.
    pub corrupt: Vec<String>,
}

/// One configuration variable.
#[derive(Debug, Serialize)]
pub struct EnvVar {
    /// Its name.
    pub name: &'static str,
    /// Its default, as the configuration docs give it.
    pub default: &'static str,
    /// Whether it is set (its value is never printed: it may hold a password).
    pub set: bool,
}

/// The variables of [`chatstate::config::env_vars`], with their defaults and
/// whether each is set.
pub fn env_vars() -> Vec<EnvVar> {
    chatstate::config::env_vars()
        .iter()
        .map(|var| EnvVar {
            name: var.name,
            default: var.default,
            set: std::env::var_os(var.name).is_some_and(|v| !v.is_empty()),
        })
        .collect()
}

/// Opens the file store of `config`'s folder (for `verify` and `sweep`).
fn file_store(config: &Config) -> Result<FileStore> {
    FileStore::from_config(config)
}

/// `chatstate status`.
/// Counting records (`counts`) reads every record of every kind: a full scan.
pub async fn status(config: &Config, stores: &Stores, counts: bool) -> Result<Status> {
    let probe = CacheKey::new("chatstate-status", "probe")?;
    let mut samples = Vec::new();
    let mut reachable = true;
    for _ in 0..5 {
        let started = Instant::now();
        if stores.cache.exists(&probe).await.is_err() {
            reachable = false;
            break;
        }
        samples.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    samples.sort_unstable();
    let round_trip_us = crate::demo::percentile(&samples, 0.5) / 1e3;
    let counts = if reachable && counts {
        count_records(stores).await?
    } else {
        BTreeMap::new()
    };
    let (mut redis_version, mut tls, mut eviction_warning) = (None, None, None);
    if let Some(redis) = stores.redis_store() {
        tls = Some(config.redis.url.is_tls());
        // INFO through the store: works on one server, through Sentinel and on a
        // Cluster alike.
        redis_version = stores
            .server_summary()
            .await
            .ok()
            .flatten()
            .map(|s| s.version);
        eviction_warning = match redis.eviction_risk().await {
            Ok(Some(risk)) if format!("{risk:?}") != "None" => Some(format!(
                "maxmemory-policy may evict chatstate's keys ({risk:?}): run Redis with \
                 maxmemory-policy noeviction"
            )),
            Ok(Some(_)) => None,
            Ok(None) => Some(
                "the server does not answer CONFIG GET: check maxmemory-policy yourself \
                 (noeviction)"
                    .into(),
            ),
            Err(e) => Some(format!("could not read maxmemory-policy: {e}")),
        };
    }
    let verify = if stores.backend == BackendKind::File {
        let report = file_store(config)?.verify().await?;
        Some(Verify {
            files: report.files,
            corrupt: report
                .corrupt
                .iter()
                .map(|(path, why)| format!("{}: {why}", path.display()))
                .collect(),
        })
    } else {
        None
    };
    let health = stores.health();
    Ok(Status {
        backend: backend_name(stores.backend),
        location: match stores.backend {
            BackendKind::Memory => "process memory (empty at every start)".into(),
            BackendKind::File => config.file_dir.display().to_string(),
            _ => format!("{} (prefix {})", config.redis.url, config.key_prefix),
        },
        reachable: reachable && health.reachable,
        fallback_from: health
            .fallback_from
            .map(|f| format!("{}: {}", backend_name(f.configured), f.reason)),
        redis_version,
        tls,
        eviction_warning,
        round_trip_us,
        counts,
        verify,
        env: env_vars(),
    })
}

/// Calls `each` with every live record of `kind`, a page at a time.
async fn for_each_record(
    stores: &Stores,
    kind: RecordKind,
    mut each: impl FnMut(Record),
) -> Result<()> {
    let mut cursor = None;
    loop {
        let page = stores.inventory.scan(kind, cursor, PAGE).await?;
        page.records.into_iter().for_each(&mut each);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(()),
        }
    }
}

/// Live records per kind, counted through the inventory.
pub async fn count_records(stores: &Stores) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for kind in RecordKind::ALL {
        let mut n = 0u64;
        for_each_record(stores, kind, |_| n += 1).await?;
        counts.insert(kind.as_str().to_string(), n);
    }
    Ok(counts)
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "backend:     {} — {}", self.backend, self.location)?;
        writeln!(
            f,
            "reachable:   {}",
            if self.reachable { "yes" } else { "NO" }
        )?;
        if let Some(from) = &self.fallback_from {
            writeln!(f, "fallback:    serving instead of {from}")?;
        }
        if let Some(v) = &self.redis_version {
            writeln!(f, "server:      Redis {v}")?;
        }
        if let Some(tls) = self.tls {
            writeln!(f, "tls:         {}", if tls { "yes" } else { "no" })?;
        }
        if let Some(w) = &self.eviction_warning {
            writeln!(f, "WARNING:     {w}")?;
        }
        writeln!(f, "round trip:  {:.0} µs (median of 5)", self.round_trip_us)?;
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "records:     {}", counts.join(", "))?;
        if let Some(v) = &self.verify {
            writeln!(
                f,
                "verify:      {} files, {} corrupt",
                v.files,
                v.corrupt.len()
            )?;
            for c in &v.corrupt {
                writeln!(f, "  corrupt: {c}")?;
            }
        }
        let set: Vec<&str> = self.env.iter().filter(|e| e.set).map(|e| e.name).collect();
        writeln!(
            f,
            "env set:     {}",
            if set.is_empty() {
                "(none: the defaults)".to_string()
            } else {
                set.join(", ")
            }
        )
    }
}

/// Text for a stored value: UTF-8 as it is, anything else as its length and hex.
pub fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n') => s.to_string(),
        _ => {
            let hex: String = b.iter().take(32).map(|x| format!("{x:02x}")).collect();
            format!(
                "({} bytes) {hex}{}",
                b.len(),
                if b.len() > 32 { "…" } else { "" }
            )
        }
    }
}

/// A session as `inspect session` shows it.
#[derive(Debug, Serialize)]
pub struct SessionView {
    /// The session's id.
    pub id: String,
    /// Messages appended in its life.
    pub message_count: u64,
    /// Its version (bumped by updates).
    pub version: u64,
    /// Created, last activity (RFC 3339, UTC).
    pub created_at: String,
    /// Last activity.
    pub last_activity: String,
    /// The summary.
    pub summary: Option<String>,
    /// The focus.
    pub focus: Option<String>,
    /// Whether the bot is paused.
    pub paused: bool,
    /// Time left, seconds.
    pub ttl_seconds: Option<u64>,
    /// The window, oldest first: `(role, content)`.
    pub messages: Vec<(String, String)>,
}

/// `chatstate inspect session`.
pub async fn inspect_session(stores: &Stores, key: &SessionKey) -> Result<SessionView> {
    let loaded = stores
        .sessions
        .load(key)
        .await?
        .ok_or_else(|| Error::not_found("no such session"))?;
    let ttl = stores.sessions.ttl(key).await?;
    let s = loaded.session;
    Ok(SessionView {
        id: s.id.clone(),
        message_count: s.message_count,
        version: s.version,
        created_at: s.created_at.to_string(),
        last_activity: s.last_activity.to_string(),
        summary: s.summary.clone(),
        focus: s.focus.clone(),
        paused: s.paused,
        ttl_seconds: ttl.map(|d| d.as_secs()),
        messages: loaded
            .messages
            .iter()
            .map(|m| (format!("{:?}", m.role).to_lowercase(), m.content.clone()))
            .collect(),
    })
}

/// A focus document as `inspect focus` shows it.
#[derive(Debug, Serialize)]
pub struct FocusView {
    /// Its version.
    pub version: u64,
    /// When it was written.
    pub updated_at: String,
    /// The value (text, or length and hex).
    pub value: String,
}

/// `chatstate inspect focus`.
pub async fn inspect_focus(stores: &Stores, key: &FocusKey) -> Result<FocusView> {
    let doc = stores
        .focus
        .get(key)
        .await?
        .ok_or_else(|| Error::not_found("no such focus document"))?;
    Ok(FocusView {
        version: doc.version,
        updated_at: doc.updated_at.to_string(),
        value: show_bytes(&doc.value),
    })
}

/// A counter's values per labels, as `inspect counter` and `stats` show them.
#[derive(Debug, Serialize)]
pub struct CounterView {
    /// The counter's name.
    pub name: String,
    /// Labels (`a=1,b=2`, empty for none).
    pub labels: String,
    /// The day or hour bucket, if any.
    pub bucket: Option<String>,
    /// The value.
    pub value: i64,
}

/// `chatstate inspect counter`: every label set of `name`, unbucketed and per bucket.
pub async fn inspect_counter(stores: &Stores, name: &str) -> Result<Vec<CounterView>> {
    CounterKey::new(name)?;
    Ok(counters(stores)
        .await?
        .into_iter()
        .filter(|c| c.name == name)
        .collect())
}

/// Every counter, through the inventory.
pub async fn counters(stores: &Stores) -> Result<Vec<CounterView>> {
    let mut out = Vec::new();
    for_each_record(stores, RecordKind::Counter, |record| {
        if let Record::Counter(c) = record {
            out.push(CounterView {
                name: c.key.name().to_string(),
                labels: c.key.labels().escaped(),
                bucket: c.key.bucket().map(|b| b.to_string()),
                value: c.value,
            });
        }
    })
    .await?;
    out.sort_by(|a, b| (&a.name, &a.bucket, &a.labels).cmp(&(&b.name, &b.bucket, &b.labels)));
    Ok(out)
}

/// A cache entry as `inspect cache` shows it.
#[derive(Debug, Serialize)]
pub struct CacheView {
    /// The value (text, or length and hex).
    pub value: String,
    /// Bytes.
    pub bytes: usize,
    /// Time left, seconds (`None`: no expiry).
    pub ttl_seconds: Option<u64>,
    /// The entry's aliases (`<namespace>:<key>`, escaped), those that resolve to it.
    pub aliases: Vec<String>,
}

/// `chatstate inspect cache`.
pub async fn inspect_cache(stores: &Stores, key: &CacheKey) -> Result<CacheView> {
    let value = stores
        .cache
        .get(key)
        .await?
        .ok_or_else(|| Error::not_found("no such cache entry"))?;
    let ttl = stores.cache.ttl(key).await?;
    let aliases = match stores
        .inventory
        .read(&RecordKey::Cache(key.clone()))
        .await?
    {
        Some(Record::Cache(c)) => c.aliases.iter().map(ToString::to_string).collect(),
        _ => Vec::new(),
    };
    Ok(CacheView {
        value: show_bytes(&value),
        bytes: value.len(),
        ttl_seconds: ttl.filter(|d| *d != Duration::MAX).map(|d| d.as_secs()),
        aliases,
    })
}

/// Every session key of `tenant`.
pub async fn list_sessions(stores: &Stores, tenant: &str) -> Result<Vec<SessionKey>> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = stores.sessions.list(tenant, cursor, PAGE).await?;
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(out)
}

/// What `purge` found and removed.
#[derive(Debug, Serialize)]
pub struct PurgeReport {
    /// Whether this was a dry run (nothing removed).
    pub dry_run: bool,
    /// What was selected (`tenant acme`, `namespace customers, prefix 4`).
    pub selection: String,
    /// Records that match.
    pub matched: u64,
    /// Records removed (0 on a dry run).
    pub removed: u64,
}

/// `chatstate purge --tenant T`: the tenant's sessions (record, window, side data).
pub async fn purge_tenant(stores: &Stores, tenant: &str, yes: bool) -> Result<PurgeReport> {
    let keys = list_sessions(stores, tenant).await?;
    let mut removed = 0;
    if yes {
        for key in &keys {
            if stores.sessions.delete(key).await? {
                removed += 1;
            }
        }
    }
    Ok(PurgeReport {
        dry_run: !yes,
        selection: format!("sessions of tenant {tenant}"),
        matched: keys.len() as u64,
        removed,
    })
}

/// `chatstate purge --namespace N [--prefix P]`: the cache entries of `namespace`
/// whose key starts with `prefix`.
pub async fn purge_namespace(
    stores: &Stores,
    namespace: &str,
    prefix: &str,
    yes: bool,
) -> Result<PurgeReport> {
    // Validates the namespace (and the prefix as a key) the way every key is.
    CacheKey::new(namespace, if prefix.is_empty() { "x" } else { prefix })?;
    let mut keys = Vec::new();
    for_each_record(stores, RecordKind::Cache, |record| {
        if let Record::Cache(c) = record
            && c.key.namespace() == namespace
            && c.key.key().starts_with(prefix)
        {
            keys.push(c.key);
        }
    })
    .await?;
    let mut removed = 0;
    if yes {
        for chunk in keys.chunks(PAGE) {
            removed += stores.cache.delete_many(chunk).await?;
        }
    }
    Ok(PurgeReport {
        dry_run: !yes,
        selection: if prefix.is_empty() {
            format!("cache namespace {namespace}")
        } else {
            format!("cache namespace {namespace}, keys starting {prefix:?}")
        },
        matched: keys.len() as u64,
        removed,
    })
}

impl std::fmt::Display for PurgeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dry_run {
            writeln!(
                f,
                "{}: {} would be removed (dry run: add --yes to remove them)",
                self.selection, self.matched
            )
        } else {
            writeln!(
                f,
                "{}: {} matched, {} removed",
                self.selection, self.matched, self.removed
            )
        }
    }
}

/// What `sweep` did.
#[derive(Debug, Serialize)]
pub struct SweepView {
    /// The backend.
    pub backend: &'static str,
    /// Record files looked at (file store).
    pub scanned: u64,
    /// Expired records removed.
    pub removed: u64,
    /// Files that do not decode (left in place).
    pub corrupt: u64,
    /// What the sweep means on this backend.
    pub note: String,
}

/// `chatstate sweep`: removes expired records of the file store now (the store
/// also does it in the background); Redis and memory expire on their own.
pub async fn sweep(config: &Config, stores: &Stores) -> Result<SweepView> {
    let backend = backend_name(stores.backend);
    if stores.backend != BackendKind::File {
        return Ok(SweepView {
            backend,
            scanned: 0,
            removed: 0,
            corrupt: 0,
            note: format!("{backend} expires records itself: nothing to sweep"),
        });
    }
    let r = file_store(config)?.sweep().await?;
    Ok(SweepView {
        backend,
        scanned: r.scanned,
        removed: r.removed,
        corrupt: r.corrupt,
        note: format!(
            "{} files skipped, {} stale temp files removed",
            r.skipped, r.stale_temp_files
        ),
    })
}

/// A migration report as JSON (`chatstate::Report` prints itself as a table).
#[derive(Debug, Serialize)]
pub struct MoveReport {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Per kind: read, written, unchanged, skipped_newer, failed.
    pub kinds: BTreeMap<String, [u64; 5]>,
    /// Failures (kind, error kind, message; never a value).
    pub failures: Vec<String>,
}

impl From<&chatstate::Report> for MoveReport {
    fn from(r: &chatstate::Report) -> Self {
        let kinds = RecordKind::ALL
            .into_iter()
            .map(|k| {
                let x = r.kind(k);
                (
                    k.as_str().to_string(),
                    [x.read, x.written, x.unchanged, x.skipped_newer, x.failed],
                )
            })
            .collect();
        MoveReport {
            dry_run: r.dry_run,
            kinds,
            failures: r
                .failures
                .iter()
                .map(|f| format!("{}: {} ({})", f.kind, f.message, f.error))
                .collect(),
        }
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::new(ErrorKind::InvalidInput, what).with_source(e)
}

/// `chatstate export --out FILE`.
pub async fn export(stores: &Stores, out: &Path, include_cache: bool) -> Result<chatstate::Report> {
    // The export holds conversations and phone numbers: readable by the owner only,
    // as the file store's own records are.
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let file = open
        .open(out)
        .map_err(io_err(format!("cannot create {}", out.display())))?;
    let mut w = BufWriter::new(file);
    let report = chatstate::export(
        stores.inventory.as_ref(),
        &mut w,
        chatstate::ExportOptions {
            include_cache,
            ..Default::default()
        },
    )
    .await?;
    w.flush()
        .map_err(io_err(format!("cannot write {}", out.display())))?;
    Ok(report)
}

/// `chatstate import --in FILE`.
pub async fn import(stores: &Stores, input: &Path, dry_run: bool) -> Result<chatstate::Report> {
    let file =
        std::fs::File::open(input).map_err(io_err(format!("cannot open {}", input.display())))?;
    chatstate::import(
        stores.inventory.as_ref(),
        &mut BufReader::new(file),
        chatstate::ImportOptions {
            dry_run,
            ..Default::default()
        },
    )
    .await
}

/// `chatstate migrate --to BACKEND`: from the configured backend to `to` (its
/// settings from the same environment; Redis must be reached, no fallback).
pub async fn migrate(
    config: &Config,
    from: &Stores,
    to: BackendKind,
    to_dir: Option<&Path>,
    dry_run: bool,
    include_cache: bool,
) -> Result<chatstate::Report> {
    if to == from.backend && to != BackendKind::File {
        return Err(Error::invalid_input(
            "the target is the configured backend: nothing to migrate",
        ));
    }
    let mut target = config.clone();
    target.backend = to;
    target.redis.fail_fast = true;
    target.redis.fallback = chatstate::RedisFallback::None;
    if let Some(dir) = to_dir {
        target.file_dir = dir.to_path_buf();
    }
    if to == BackendKind::File
        && from.backend == BackendKind::File
        && target.file_dir == config.file_dir
    {
        return Err(Error::invalid_input(
            "the target folder is the configured one: pass --to-dir",
        ));
    }
    let target = Stores::open(&target).await?;
    chatstate::migrate(
        from.inventory.as_ref(),
        target.inventory.as_ref(),
        chatstate::MigrateOptions {
            dry_run,
            include_cache,
            ..Default::default()
        },
    )
    .await
}
