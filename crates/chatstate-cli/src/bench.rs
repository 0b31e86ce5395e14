//! `chatstate bench` (what `cargo xtask bench` runs): the benchmark workloads
//! against memory, file and Redis, and the raw contenders doing the same work —
//! moka for memory, redis-rs for Redis — in the same run, then a Markdown table, a
//! JSON file and an SVG chart.
//!
//! ## How the figures are made
//!
//! A small timing harness, not criterion (which stays for `cargo bench`): each
//! operation runs `warmup` times unmeasured, then `iterations` times, each call
//! timed alone with `Instant` (the clock reads, ~30–50 ns, are inside every sample,
//! on both sides of a ratio); the figures are the median and the 99th percentile of
//! those samples. chatstate and its raw contender run one after the other in the
//! same process, on the same runtime (2 worker threads), against the same server,
//! so a ratio compares numbers measured side by side. The ratio is chatstate's
//! median over the raw contender's median.
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

/// Times `warmup + iterations` calls of `call(i)`; returns the median and p99.
async fn measure<F, Fut>(size: BenchSize, mut call: F) -> Result<Figures>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    for i in 0..size.warmup {
        call(i).await?;
    }
    let mut samples = Vec::with_capacity(size.iterations as usize);
    for i in 0..size.iterations {
        let started = Instant::now();
        call(size.warmup + i).await?;
        samples.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    samples.sort_unstable();
    Ok(Figures {
        p50_ns: crate::demo::percentile(&samples, 0.50),
        p99_ns: crate::demo::percentile(&samples, 0.99),
    })
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

/// chatstate's side of every operation on `stores`.
async fn chatstate_side(
    stores: &Stores,
    size: BenchSize,
    mut step: impl FnMut(&str),
) -> Result<Vec<Figures>> {
    let cache = stores.cache.clone();
    let keys: Vec<CacheKey> = (0..KEYS)
        .map(|i| CacheKey::new("bench", i.to_string()))
        .collect::<Result<_>>()?;
    cache
        .set_many(
            keys.iter().map(|k| (k.clone(), value())).collect(),
            Some(TTL),
        )
        .await?;
    let session = SessionKey::new("bench", "whatsapp", "+5511999990000")?;
    for i in 0..20 {
        stores
            .sessions
            .append_message(
                &session,
                NewMessage::user(format!("message {i:03} {}", "x".repeat(200))),
            )
            .await?;
    }
    let counter = CounterKey::new("bench_messages")?;
    let keys = &keys;
    let mut out = Vec::new();
    let n = keys.len();
    step("cache_get");
    out.push(
        measure(size, |i| {
            let c = cache.clone();
            async move { c.get(&keys[i as usize % n]).await.map(drop) }
        })
        .await?,
    );
    step("cache_set");
    out.push(
        measure(size, |i| {
            let c = cache.clone();
            async move { c.set(&keys[i as usize % n], value(), Some(TTL)).await }
        })
        .await?,
    );
    step("cache_get_many_100");
    out.push(
        measure(size, |i| {
            let c = cache.clone();
            let start = (i as usize * 100) % (n - 100);
            async move { c.get_many(&keys[start..start + 100]).await.map(drop) }
        })
        .await?,
    );
    step("append_message");
    let text = format!("message {}", "x".repeat(200));
    out.push(
        measure(size, |_| {
            let s = stores.sessions.clone();
            let t = text.clone();
            let k = &session;
            async move { s.append_message(k, NewMessage::user(t)).await.map(drop) }
        })
        .await?,
    );
    step("load_session");
    out.push(
        measure(size, |_| {
            let s = stores.sessions.clone();
            let k = &session;
            async move { s.load(k).await.map(drop) }
        })
        .await?,
    );
    step("counter_add");
    out.push(
        measure(size, |_| {
            let c = stores.counters.clone();
            let k = &counter;
            async move { c.add(k, 1).await.map(drop) }
        })
        .await?,
    );
    Ok(out)
}

/// raw moka doing the cache operations (the session and counter rows have no moka
/// contender).
async fn moka_side(size: BenchSize) -> Result<Vec<Option<Figures>>> {
    let cache: moka::future::Cache<String, Bytes> = moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TTL)
        .build();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("bench:{i}")).collect();
    for k in &keys {
        cache.insert(k.clone(), value()).await;
    }
    let (keys, n) = (&keys, keys.len());
    let get = measure(size, |i| {
        let c = cache.clone();
        async move {
            c.get(&keys[i as usize % n]).await;
            Ok(())
        }
    })
    .await?;
    let set = measure(size, |i| {
        let c = cache.clone();
        async move {
            c.insert(keys[i as usize % n].clone(), value()).await;
            Ok(())
        }
    })
    .await?;
    let many = measure(size, |i| {
        let c = cache.clone();
        let start = (i as usize * 100) % (n - 100);
        async move {
            for k in &keys[start..start + 100] {
                c.get(k).await;
            }
            Ok(())
        }
    })
    .await?;
    Ok(vec![Some(get), Some(set), Some(many), None, None, None])
}

/// raw redis-rs doing the same work under `stem` (one multiplexed connection, as
/// chatstate uses).
async fn redis_side(url: &str, stem: &str, size: BenchSize) -> Result<Vec<Option<Figures>>> {
    let client = redis::Client::open(url).map_err(redis_err)?;
    let conn = client.get_connection_manager().await.map_err(redis_err)?;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("{stem}raw:kv:{i}")).collect();
    let mut c = conn.clone();
    for k in &keys {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(value().as_ref())
            .arg("PX")
            .arg(600_000)
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
    }
    let (keys, n) = (&keys, keys.len());
    let get = measure(size, |i| {
        let mut c = conn.clone();
        async move {
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&keys[i as usize % n])
                .query_async(&mut c)
                .await
                .map_err(redis_err)?;
            Ok(())
        }
    })
    .await?;
    let set = measure(size, |i| {
        let mut c = conn.clone();
        async move {
            let _: () = redis::cmd("SET")
                .arg(&keys[i as usize % n])
                .arg(value().as_ref())
                .arg("PX")
                .arg(600_000)
                .query_async(&mut c)
                .await
                .map_err(redis_err)?;
            Ok(())
        }
    })
    .await?;
    let many = measure(size, |i| {
        let mut c = conn.clone();
        let start = (i as usize * 100) % (n - 100);
        async move {
            let _: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys[start..start + 100])
                .query_async(&mut c)
                .await
                .map_err(redis_err)?;
            Ok(())
        }
    })
    .await?;
    let (list, hash) = (
        format!("{stem}raw:sess:msgs"),
        format!("{stem}raw:sess:ctx"),
    );
    let text = format!("message {}", "x".repeat(200));
    let append = measure(size, |i| {
        let mut c = conn.clone();
        let (list, hash, text) = (&list, &hash, &text);
        async move {
            let mut p = redis::pipe();
            p.atomic()
                .cmd("RPUSH")
                .arg(list)
                .arg(format!("{i}:{text}"))
                .ignore()
                .cmd("LTRIM")
                .arg(list)
                .arg(-20)
                .arg(-1)
                .ignore()
                .cmd("PEXPIRE")
                .arg(list)
                .arg(259_200_000)
                .ignore()
                .cmd("HSET")
                .arg(hash)
                .arg("last_activity")
                .arg(i)
                .ignore()
                .cmd("PEXPIRE")
                .arg(hash)
                .arg(259_200_000)
                .ignore();
            let _: () = p.query_async(&mut c).await.map_err(redis_err)?;
            Ok(())
        }
    })
    .await?;
    let load = measure(size, |_| {
        let mut c = conn.clone();
        let (list, hash) = (&list, &hash);
        async move {
            let mut p = redis::pipe();
            p.cmd("HGETALL")
                .arg(hash)
                .cmd("LRANGE")
                .arg(list)
                .arg(0)
                .arg(-1);
            let _: (Vec<(String, String)>, Vec<String>) =
                p.query_async(&mut c).await.map_err(redis_err)?;
            Ok(())
        }
    })
    .await?;
    let counter = format!("{stem}raw:cnt");
    let incr = measure(size, |_| {
        let mut c = conn.clone();
        let k = &counter;
        async move {
            let _: i64 = redis::cmd("HINCRBY")
                .arg(k)
                .arg("")
                .arg(1)
                .query_async(&mut c)
                .await
                .map_err(redis_err)?;
            Ok(())
        }
    })
    .await?;
    let mut c = conn.clone();
    crate::ops::unlink_matching(&mut c, &format!("{stem}*")).await?;
    Ok(vec![
        Some(get),
        Some(set),
        Some(many),
        Some(append),
        Some(load),
        Some(incr),
    ])
}

fn rows(
    backend: &str,
    ours: Vec<Figures>,
    raw_name: Option<&str>,
    raw: Vec<Option<Figures>>,
) -> Vec<Row> {
    OPERATIONS
        .iter()
        .zip(ours)
        .zip(raw.into_iter().chain(std::iter::repeat(None)))
        .map(|((op, ours), raw)| Row {
            operation: op.to_string(),
            backend: backend.to_string(),
            chatstate: ours,
            raw_name: raw.and(raw_name.map(str::to_string)),
            raw,
            ratio: raw.map(|r| ours.p50_ns / r.p50_ns),
        })
        .collect()
}

/// Runs the workloads: memory vs moka, file (in a temporary folder), and Redis at
/// `redis_url` vs redis-rs (left out when `None`). `step` is told each step's name.
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
    let ours = chatstate_side(&stores, size, |op| step(&format!("memory {op}"))).await?;
    step("moka");
    let raw = moka_side(size).await?;
    all.extend(rows("memory", ours, Some("moka"), raw));

    let dir =
        std::env::temp_dir().join(format!("chatstate-bench-{}", uuid::Uuid::new_v4().simple()));
    let mut file = base.clone();
    file.backend = BackendKind::File;
    file.file_dir = dir.clone();
    let stores = Stores::open(&file).await?;
    let ours = chatstate_side(&stores, size, |op| step(&format!("file {op}"))).await;
    drop(stores);
    let _ = std::fs::remove_dir_all(&dir);
    all.extend(rows("file", ours?, None, vec![]));

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
            let ours = chatstate_side(&stores, size, |op| step(&format!("redis {op}"))).await?;
            step("redis-rs");
            let raw = redis_side(url, &stem, size).await?;
            all.extend(rows("redis", ours, Some("redis-rs"), raw));
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
            OPERATIONS[i as usize].replace("cache_", "").to_string()
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
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
