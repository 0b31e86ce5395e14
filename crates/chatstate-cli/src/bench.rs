//! `chatstate bench` (what `cargo xtask bench` runs): the benchmark workloads
//! against memory, file and Redis, and the raw contenders doing the same work —
//! moka for memory, redis-rs for Redis — in the same run, then a Markdown table, a
//! JSON file and an SVG chart.
//!
//! ## How the figures are made
//!
//! A small timing harness, not criterion (which stays for `cargo bench`): each
//! operation runs `warmup` times unmeasured, then `iterations` times, each call
//! timed alone with `Instant`; the figures are the median and the 99th percentile
//! of those samples. chatstate and its raw contender run in the same process, on
//! the same runtime, against the same server, **alternating call by call**, so a
//! burst of load elsewhere on the machine hits both sides of a ratio alike. Every
//! call of either side goes through the same boxed closure and future, and the
//! clock reads (together ~50–100 ns) are inside every sample: sub-microsecond
//! figures carry that constant on both sides. The ratio is chatstate's median over
//! the raw contender's median.
//!
//! What each side does, per operation (values are 256 bytes; the session has a full
//! window of 20 messages):
//!
//! | operation | chatstate | raw redis-rs (one multiplexed connection) | raw moka |
//! | --- | --- | --- | --- |
//! | cache_get | `KvCache::get` | `GET` | `get` |
//! | cache_set | `KvCache::set` with a TTL | `SET … PX` | `insert` |
//! | cache_get_many_100 | `get_many` of 100 keys | `MGET` of 100 keys | 100 `get`s |
//! | append_message | `append_message` (window trim, TTLs, activity, index; one script) | `MULTI` `RPUSH` `LTRIM` `PEXPIRE` `HSET` `PEXPIRE` `EXEC` in one pipeline | — |
//! | load_session | `load` (record + 20 messages) | `HGETALL` + `LRANGE` in one pipeline | — |
//! | counter_add | `CounterSink::add` | `HINCRBY` | — |
//!
//! The raw contenders skip what chatstate adds (key validation, the codec, type
//! checks, the tenant index, the circuit breaker): the ratio is that cost.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatstate::{
    BackendKind, CacheKey, Config, CounterKey, Error, ErrorKind, NewMessage, Result, SessionKey,
    SessionStoreExt, Stores,
};
use serde::Serialize;

/// The operations, in table order.
pub const OPERATIONS: [&str; 6] = [
    "cache_get",
    "cache_set",
    "cache_get_many_100",
    "append_message",
    "load_session",
    "counter_add",
];

/// The operations' names on the chart's axis, in [`OPERATIONS`] order.
const SHORT: [&str; 6] = ["get", "set", "get ×100", "append", "load", "counter"];

/// How long a run is.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BenchSize {
    /// Unmeasured calls before the samples.
    pub warmup: u32,
    /// Measured calls.
    pub iterations: u32,
}

impl BenchSize {
    /// `--quick`: 100 warm-up calls, 2,000 samples (under two minutes in all).
    pub const QUICK: BenchSize = BenchSize {
        warmup: 100,
        iterations: 2_000,
    };
    /// The default: 1,000 warm-up calls, 20,000 samples.
    pub const FULL: BenchSize = BenchSize {
        warmup: 1_000,
        iterations: 20_000,
    };
}

/// Median and p99 of one side, nanoseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Figures {
    /// Median.
    pub p50_ns: f64,
    /// 99th percentile.
    pub p99_ns: f64,
}

/// One operation on one backend, with its raw contender when there is one.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The operation.
    pub operation: String,
    /// `memory`, `file` or `redis`.
    pub backend: String,
    /// chatstate's figures.
    pub chatstate: Figures,
    /// The raw contender's name (`moka`, `redis-rs`).
    pub raw_name: Option<String>,
    /// Its figures.
    pub raw: Option<Figures>,
    /// chatstate p50 / raw p50.
    pub ratio: Option<f64>,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The run's size.
    pub size: BenchSize,
    /// The rows.
    pub rows: Vec<Row>,
    /// Where Redis was (no password), or why it was left out.
    pub redis: String,
    /// Logical CPUs of the machine.
    pub cpus: usize,
}

/// One call of a workload: the call number in, a future out (boxed, so every
/// operation of every side has one type; both sides of a ratio pay the same box).
type Call<'a> =
    Box<dyn FnMut(u32) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>> + Send + 'a>;

fn call<'a, F, Fut>(mut f: F) -> Call<'a>
where
    F: FnMut(u32) -> Fut + Send + 'a,
    Fut: Future<Output = Result<()>> + Send + 'a,
{
    Box::new(move |i| Box::pin(f(i)))
}

fn figures(mut samples: Vec<u64>) -> Figures {
    samples.sort_unstable();
    Figures {
        p50_ns: crate::demo::percentile(&samples, 0.50),
        p99_ns: crate::demo::percentile(&samples, 0.99),
    }
}

/// Times `ours` and, when given, `raw`: `warmup` unmeasured calls of each, then
/// `iterations` calls of each, alternating call by call so both sides run under
/// the same conditions (a burst of load elsewhere on the machine hits both).
async fn measure(
    size: BenchSize,
    mut ours: Call<'_>,
    mut raw: Option<Call<'_>>,
) -> Result<(Figures, Option<Figures>)> {
    for i in 0..size.warmup {
        ours(i).await?;
        if let Some(raw) = raw.as_mut() {
            raw(i).await?;
        }
    }
    let n = size.iterations as usize;
    let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let ns = |t: Instant| u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
    for i in size.warmup..size.warmup + size.iterations {
        let t = Instant::now();
        ours(i).await?;
        a.push(ns(t));
        if let Some(raw) = raw.as_mut() {
            let t = Instant::now();
            raw(i).await?;
            b.push(ns(t));
        }
    }
    Ok((figures(a), raw.map(|_| figures(b))))
}

const VALUE_BYTES: usize = 256;
const KEYS: u32 = 1_000;
const TTL: Duration = Duration::from_secs(600);

fn value() -> Bytes {
    Bytes::from(vec![b'x'; VALUE_BYTES])
}

fn redis_err(e: redis::RedisError) -> Error {
    Error::new(ErrorKind::Unavailable, "raw redis-rs call failed").with_source(e)
}

/// The first of 100 consecutive keys for call `i`.
fn window(i: u32) -> usize {
    (i as usize * 100) % (KEYS as usize - 100)
}

/// chatstate's calls on `stores`, in [`OPERATIONS`] order, after writing the keys,
/// the session and its 20 messages they read.
async fn chatstate_calls(stores: &Stores) -> Result<Vec<Call<'static>>> {
    let keys: Arc<Vec<CacheKey>> = Arc::new(
        (0..KEYS)
            .map(|i| CacheKey::new("bench", i.to_string()))
            .collect::<Result<_>>()?,
    );
    let cache = stores.cache.clone();
    cache
        .set_many(
            keys.iter().map(|k| (k.clone(), value())).collect(),
            Some(TTL),
        )
        .await?;
    let session = Arc::new(SessionKey::new("bench", "whatsapp", "+5511999990000")?);
    let text = format!("message {}", "x".repeat(200));
    for _ in 0..20 {
        stores
            .sessions
            .append_message(&session, NewMessage::user(text.clone()))
            .await?;
    }
    let counter = Arc::new(CounterKey::new("bench_messages")?);
    let n = keys.len();
    let (c1, c2, c3) = (cache.clone(), cache.clone(), cache);
    let (k1, k2, k3) = (keys.clone(), keys.clone(), keys);
    let (s1, s2, counters) = (
        stores.sessions.clone(),
        stores.sessions.clone(),
        stores.counters.clone(),
    );
    let session2 = session.clone();
    Ok(vec![
        call(move |i| {
            let (c, k) = (c1.clone(), k1.clone());
            async move { c.get(&k[i as usize % n]).await.map(drop) }
        }),
        call(move |i| {
            let (c, k) = (c2.clone(), k2.clone());
            async move { c.set(&k[i as usize % n], value(), Some(TTL)).await }
        }),
        call(move |i| {
            let (c, k) = (c3.clone(), k3.clone());
            async move { c.get_many(&k[window(i)..window(i) + 100]).await.map(drop) }
        }),
        call(move |_| {
            let (s, k, t) = (s1.clone(), session.clone(), text.clone());
            async move { s.append_message(&k, NewMessage::user(t)).await.map(drop) }
        }),
        call(move |_| {
            let (s, k) = (s2.clone(), session2.clone());
            async move { s.load(&k).await.map(drop) }
        }),
        call(move |_| {
            let (c, k) = (counters.clone(), counter.clone());
            async move { c.add(&k, 1).await.map(drop) }
        }),
    ])
}

/// raw moka doing the cache operations (the session and counter rows have no moka
/// contender).
async fn moka_calls() -> Vec<Option<Call<'static>>> {
    let cache: moka::future::Cache<String, Bytes> = moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TTL)
        .build();
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("bench:{i}")).collect());
    for k in keys.iter() {
        cache.insert(k.clone(), value()).await;
    }
    let n = keys.len();
    let (c1, c2, c3) = (cache.clone(), cache.clone(), cache);
    let (k1, k2, k3) = (keys.clone(), keys.clone(), keys);
    vec![
        Some(call(move |i| {
            let (c, k) = (c1.clone(), k1.clone());
            async move {
                c.get(&k[i as usize % n]).await;
                Ok(())
            }
        })),
        Some(call(move |i| {
            let (c, k) = (c2.clone(), k2.clone());
            async move {
                c.insert(k[i as usize % n].clone(), value()).await;
                Ok(())
            }
        })),
        Some(call(move |i| {
            let (c, k) = (c3.clone(), k3.clone());
            async move {
                for key in &k[window(i)..window(i) + 100] {
                    c.get(key).await;
                }
                Ok(())
            }
        })),
        None,
        None,
        None,
    ]
}

/// raw redis-rs doing the same work under `stem`, over one multiplexed connection
/// (as chatstate uses).
async fn redis_calls(
    conn: &redis::aio::ConnectionManager,
    stem: &str,
) -> Result<Vec<Option<Call<'static>>>> {
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("{stem}raw:kv:{i}")).collect());
    let mut c = conn.clone();
    for k in keys.iter() {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(value().as_ref())
            .arg("PX")
            .arg(600_000)
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
    }
    let n = keys.len();
    let list = Arc::new(format!("{stem}raw:sess:msgs"));
    let hash = Arc::new(format!("{stem}raw:sess:ctx"));
    let counter = Arc::new(format!("{stem}raw:cnt"));
    let text = Arc::new(format!("message {}", "x".repeat(200)));
    let (k1, k2, k3) = (keys.clone(), keys.clone(), keys);
    let (c1, c2, c3, c4, c5, c6) = (
        conn.clone(),
        conn.clone(),
        conn.clone(),
        conn.clone(),
        conn.clone(),
        conn.clone(),
    );
    let (l1, h1, l2, h2) = (list.clone(), hash.clone(), list, hash);
    Ok(vec![
        Some(call(move |i| {
            let (mut c, k) = (c1.clone(), k1.clone());
            async move {
                let _: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&k[i as usize % n])
                    .query_async(&mut c)
                    .await
                    .map_err(redis_err)?;
                Ok(())
            }
        })),
        Some(call(move |i| {
            let (mut c, k) = (c2.clone(), k2.clone());
            async move {
                let _: () = redis::cmd("SET")
                    .arg(&k[i as usize % n])
                    .arg(value().as_ref())
                    .arg("PX")
                    .arg(600_000)
                    .query_async(&mut c)
                    .await
                    .map_err(redis_err)?;
                Ok(())
            }
        })),
        Some(call(move |i| {
            let (mut c, k) = (c3.clone(), k3.clone());
            async move {
                let _: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(&k[window(i)..window(i) + 100])
                    .query_async(&mut c)
                    .await
                    .map_err(redis_err)?;
                Ok(())
            }
        })),
        Some(call(move |i| {
            let (mut c, list, hash, text) = (c4.clone(), l1.clone(), h1.clone(), text.clone());
            async move {
                let mut p = redis::pipe();
                p.atomic()
                    .cmd("RPUSH")
                    .arg(list.as_str())
                    .arg(format!("{i}:{text}"))
                    .ignore()
                    .cmd("LTRIM")
                    .arg(list.as_str())
                    .arg(-20)
                    .arg(-1)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(list.as_str())
                    .arg(259_200_000)
                    .ignore()
                    .cmd("HSET")
                    .arg(hash.as_str())
                    .arg("last_activity")
                    .arg(i)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(hash.as_str())
                    .arg(259_200_000)
                    .ignore();
                let _: () = p.query_async(&mut c).await.map_err(redis_err)?;
                Ok(())
            }
        })),
        Some(call(move |_| {
            let (mut c, list, hash) = (c5.clone(), l2.clone(), h2.clone());
            async move {
                let mut p = redis::pipe();
                p.cmd("HGETALL")
                    .arg(hash.as_str())
                    .cmd("LRANGE")
                    .arg(list.as_str())
                    .arg(0)
                    .arg(-1);
                let _: (Vec<(String, String)>, Vec<String>) =
                    p.query_async(&mut c).await.map_err(redis_err)?;
                Ok(())
            }
        })),
        Some(call(move |_| {
            let (mut c, k) = (c6.clone(), counter.clone());
            async move {
                let _: i64 = redis::cmd("HINCRBY")
                    .arg(k.as_str())
                    .arg("")
                    .arg(1)
                    .query_async(&mut c)
                    .await
                    .map_err(redis_err)?;
                Ok(())
            }
        })),
    ])
}

/// Measures every operation of `backend`, beside `raw` (named `raw_name`) where
/// there is a contender.
async fn rows(
    backend: &str,
    ours: Vec<Call<'static>>,
    raw_name: Option<&str>,
    raw: Vec<Option<Call<'static>>>,
    size: BenchSize,
    step: &mut dyn FnMut(&str),
) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    let raw = raw.into_iter().chain(std::iter::repeat_with(|| None));
    for ((op, ours), raw) in OPERATIONS.iter().zip(ours).zip(raw) {
        step(&format!("{backend} {op}"));
        let (figures, raw) = measure(size, ours, raw).await?;
        out.push(Row {
            operation: op.to_string(),
            backend: backend.to_string(),
            chatstate: figures,
            raw_name: raw.and(raw_name.map(str::to_string)),
            raw,
            ratio: raw.map(|r| figures.p50_ns / r.p50_ns),
        });
    }
    Ok(out)
}

/// Runs the workloads: memory beside moka, file (in a temporary folder), and Redis
/// at `redis_url` beside redis-rs (left out when `None`). `step` is told each
/// step's name.
pub async fn run(
    redis_url: Option<&str>,
    size: BenchSize,
    mut step: impl FnMut(&str),
) -> Result<BenchReport> {
    let mut all = Vec::new();
    let base = Config::default();

    let mut memory = base.clone();
    memory.backend = BackendKind::Memory;
    let stores = Stores::open(&memory).await?;
    let ours = chatstate_calls(&stores).await?;
    all.extend(
        rows(
            "memory",
            ours,
            Some("moka"),
            moka_calls().await,
            size,
            &mut step,
        )
        .await?,
    );

    let dir =
        std::env::temp_dir().join(format!("chatstate-bench-{}", uuid::Uuid::new_v4().simple()));
    let mut file = base.clone();
    file.backend = BackendKind::File;
    file.file_dir = dir.clone();
    let measured = async {
        let stores = Stores::open(&file).await?;
        let ours = chatstate_calls(&stores).await?;
        rows("file", ours, None, vec![], size, &mut step).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    all.extend(measured?);

    let redis = match redis_url {
        None => "left out (no Redis given)".to_string(),
        Some(url) => {
            let stem = format!(
                "chatstate-bench-{}-",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            let mut config = base.clone();
            config.backend = BackendKind::Redis;
            config.redis.url = chatstate::RedisUrl::parse(url)?;
            config.redis.fail_fast = true;
            config.key_prefix = format!("{stem}cs");
            let stores = Stores::open(&config).await?;
            let client = redis::Client::open(url).map_err(redis_err)?;
            let conn = client.get_connection_manager().await.map_err(redis_err)?;
            let measured = async {
                let ours = chatstate_calls(&stores).await?;
                let raw = redis_calls(&conn, &stem).await?;
                rows("redis", ours, Some("redis-rs"), raw, size, &mut step).await
            }
            .await;
            // chatstate's keys and the raw ones share the stem: remove them all.
            let redis = stores.redis_store().ok_or_else(|| {
                chatstate::Error::new(
                    chatstate::ErrorKind::Unavailable,
                    "the bench's Redis stores opened a fallback",
                )
            })?;
            redis.unlink_matching(&format!("{stem}*")).await?;
            all.extend(measured?);
            config.redis.url.to_string()
        }
    };
    Ok(BenchReport {
        size,
        rows: all,
        redis,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// A latency in ns as text (`135 ns`, `40.3 µs`, `5.98 ms`).
pub fn human(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// The Markdown table of a report.
pub fn markdown(report: &BenchReport) -> String {
    let mut out = String::from(
        "| operation | backend | chatstate p50 | chatstate p99 | raw contender | raw p50 | raw p99 | chatstate / raw (p50) |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in &report.rows {
        let (name, p50, p99, ratio) = match (&r.raw_name, r.raw, r.ratio) {
            (Some(n), Some(raw), Some(ratio)) => (
                n.clone(),
                human(raw.p50_ns),
                human(raw.p99_ns),
                format!("{ratio:.2}x"),
            ),
            _ => ("—".into(), "—".into(), "—".into(), "—".into()),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.operation,
            r.backend,
            human(r.chatstate.p50_ns),
            human(r.chatstate.p99_ns),
            name,
            p50,
            p99,
            ratio
        ));
    }
    out
}

/// The start and end markers of the generated section in `BENCHMARKS.md`.
pub const MARKERS: (&str, &str) = (
    "<!-- chatstate bench: start -->",
    "<!-- chatstate bench: end -->",
);

/// `text` with the part between [`MARKERS`] replaced by `table` (the markers are
/// appended, with the table, when missing).
pub fn splice(text: &str, table: &str) -> String {
    let (start, end) = MARKERS;
    match (text.find(start), text.find(end)) {
        (Some(s), Some(e)) if s < e => format!("{}{start}\n{table}{}", &text[..s], &text[e..]),
        _ => format!("{}\n{start}\n{table}{end}\n", text.trim_end()),
    }
}

/// Writes the SVG chart: latency per operation and backend (log scale, p50), and
/// the chatstate / raw ratios.
pub fn chart(report: &BenchReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: String| Error::new(ErrorKind::InvalidInput, format!("chart: {e}"));
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (left, right) = root.split_horizontally(640);
    let backends = ["memory", "file", "redis"];
    let colors = [
        RGBColor(76, 114, 176),
        RGBColor(221, 132, 82),
        RGBColor(85, 168, 104),
    ];
    let n = OPERATIONS.len();
    let op_label = move |x: &f64| -> String {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
            SHORT[i as usize].to_string()
        } else {
            String::new()
        }
    };
    let lat: Vec<f64> = report.rows.iter().map(|r| r.chatstate.p50_ns).collect();
    let (lo, hi) = lat
        .iter()
        .fold((f64::MAX, 1.0f64), |(a, b), &v| (a.min(v), b.max(v)));
    let mut c = ChartBuilder::on(&left)
        .caption(
            "chatstate p50 latency per operation (ns, log)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            -0.5f64..(n as f64 - 0.5),
            ((lo / 2.0).max(1.0)..hi * 2.0).log_scale(),
        )
        .map_err(|e| err(e.to_string()))?;
    c.configure_mesh()
        .x_labels(n)
        .x_label_formatter(&op_label)
        .y_label_formatter(&|v| human(*v))
        .disable_x_mesh()
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (b, (name, color)) in backends.iter().zip(colors).enumerate() {
        let bars: Vec<_> = report
            .rows
            .iter()
            .filter(|r| r.backend == *name)
            .filter_map(|r| {
                let i = OPERATIONS.iter().position(|o| *o == r.operation)? as f64;
                let x0 = i - 0.4 + b as f64 * 0.27;
                Some(Rectangle::new(
                    [(x0, (lo / 2.0).max(1.0)), (x0 + 0.25, r.chatstate.p50_ns)],
                    color.filled(),
                ))
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        c.draw_series(bars)
            .map_err(|e| err(e.to_string()))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(e.to_string()))?;

    let ratios: Vec<&Row> = report.rows.iter().filter(|r| r.ratio.is_some()).collect();
    let top = ratios.iter().filter_map(|r| r.ratio).fold(1.0f64, f64::max) * 1.2;
    let mut c = ChartBuilder::on(&right)
        .caption("chatstate / raw (p50): moka, redis-rs", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
        .map_err(|e| err(e.to_string()))?;
    c.configure_mesh()
        .x_labels(n)
        .x_label_formatter(&op_label)
        .y_label_formatter(&|v| format!("{v:.1}x"))
        .disable_x_mesh()
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (b, (name, color)) in [("memory", colors[0]), ("redis", colors[2])]
        .into_iter()
        .enumerate()
    {
        let bars: Vec<_> = ratios
            .iter()
            .filter(|r| r.backend == name)
            .filter_map(|r| {
                let i = OPERATIONS.iter().position(|o| *o == r.operation)? as f64;
                let x0 = i - 0.4 + b as f64 * 0.4;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.38, r.ratio?)],
                    color.filled(),
                ))
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        let label = if name == "memory" {
            "memory / moka"
        } else {
            "redis / redis-rs"
        };
        c.draw_series(bars)
            .map_err(|e| err(e.to_string()))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    c.draw_series(LineSeries::new(
        [(-0.5, 1.0), (n as f64 - 0.5, 1.0)],
        BLACK.mix(0.5),
    ))
    .map_err(|e| err(e.to_string()))?;
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
