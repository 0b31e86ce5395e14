//! Streamed replies on Redis: a realistic LLM token stream — 2,000 tokens of 1–5
//! characters at 50 tokens/s — written per token and through the coalescing writer,
//! read live by a follower on another instance (a second `RedisStore`, its own
//! connections). Reports the round trips of the writer and of the reader, and the
//! latency from a token's append to the moment the reader has it (p50/p99/max).
//! A last variant reads by polling `read` every 10 ms instead of following (the
//! design pub/sub wake-ups were chosen over).
//!
//! Run: `cargo bench --bench replies` (about 3.5 minutes: each variant streams for
//! 40 s). `REPLY_BENCH_TOKENS=500`, or `--quick` (300 tokens), shortens every
//! variant. Starts its own
//! `redis-server` on a free loopback port (never 6379).

#[path = "../crates/chatstate-redis/tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatstate_core::{RedisUrl, ReplyEvent, ReplyStream, RunId, RunStatus};
use chatstate_layers::{CoalesceConfig, CoalescingWriter};
use chatstate_redis::RedisStore;
use futures_util::StreamExt;

const TOKENS_PER_SECOND: u64 = 50;

/// How the reader reads.
#[derive(Clone, Copy)]
enum Reader {
    /// `follow`: pub/sub wake-ups, `XRANGE` per wake-up.
    Follow,
    /// `read` from the next offset every interval.
    Poll(Duration),
}

struct Variant {
    name: &'static str,
    coalesce: Option<CoalesceConfig>,
    reader: Reader,
}

struct Outcome {
    writer_round_trips: u64,
    reader_round_trips: u64,
    chunks: u64,
    latencies: Vec<Duration>,
}

/// 1–5 character tokens from a fixed LCG: the same stream for every variant.
fn tokens(n: usize) -> Vec<String> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let letters: Vec<char> = "abcdefghijklmnopqrstuvwxyz áé".chars().collect();
    (0..n)
        .map(|_| {
            let len = 1 + next() % 5;
            (0..len).map(|_| letters[next() % letters.len()]).collect()
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run_variant(
    writer_store: &RedisStore,
    reader_store: &RedisStore,
    variant: &Variant,
    toks: &[String],
) -> Outcome {
    let run = RunId::random();
    let direct: Arc<dyn ReplyStream> = Arc::new(writer_store.clone());
    let writer: Arc<dyn ReplyStream> = match variant.coalesce {
        Some(config) => Arc::new(CoalescingWriter::new(direct, config)),
        None => direct,
    };
    writer.start(&run, None).await.expect("start");
    // Where each token ends in the reply's bytes, and when it was appended.
    let ends: Vec<usize> = toks
        .iter()
        .scan(0, |acc, t| {
            *acc += t.len();
            Some(*acc)
        })
        .collect();
    let appended: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::with_capacity(toks.len())));

    let w0 = writer_store.round_trips().round_trips;
    let r0 = reader_store.round_trips().round_trips;

    let reader = {
        let (reader_store, run, appended, ends) = (
            reader_store.clone(),
            run.clone(),
            appended.clone(),
            ends.clone(),
        );
        let mode = variant.reader;
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(ends.len());
            let mut bytes = 0usize;
            let mut seen_tokens = 0usize;
            let mut chunks = 0u64;
            let mut on_text = |text: &str, latencies: &mut Vec<Duration>| {
                let now = Instant::now();
                bytes += text.len();
                let at = appended.lock().expect("timestamps").clone();
                while seen_tokens < ends.len() && ends[seen_tokens] <= bytes {
                    latencies.push(now.saturating_duration_since(at[seen_tokens]));
                    seen_tokens += 1;
                }
            };
            match mode {
                Reader::Follow => {
                    let mut events = reader_store.follow(&run, 0, Duration::from_secs(30));
                    while let Some(event) = events.next().await {
                        match event.expect("follow") {
                            ReplyEvent::Chunk(c) => {
                                chunks += 1;
                                on_text(&c.text, &mut latencies);
                            }
                            ReplyEvent::Finished(_) => break,
                        }
                    }
                }
                Reader::Poll(every) => {
                    let mut next = 0;
                    loop {
                        let read = reader_store.read(&run, next).await.expect("read");
                        for c in &read.chunks {
                            chunks += 1;
                            next = c.offset + 1;
                            on_text(&c.text, &mut latencies);
                        }
                        if read.finished.is_some() {
                            break;
                        }
                        tokio::time::sleep(every).await;
                    }
                }
            }
            (latencies, chunks)
        })
    };

    let mut tick = tokio::time::interval(Duration::from_millis(1000 / TOKENS_PER_SECOND));
    for t in toks {
        tick.tick().await;
        appended.lock().expect("timestamps").push(Instant::now());
        writer.append(&run, t).await.expect("append");
    }
    writer.finish(&run, RunStatus::Done).await.expect("finish");
    let (mut latencies, chunks) = reader.await.expect("reader task");
    latencies.sort();
    Outcome {
        writer_round_trips: writer_store.round_trips().round_trips - w0,
        reader_round_trips: reader_store.round_trips().round_trips - r0,
        chunks,
        latencies,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: only
    // stream when asked to bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // `cargo xtask bench -- --quick` passes `--quick` to every bench: 300 tokens.
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = std::env::var("REPLY_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 300 } else { 2000 });
    let server = common::RedisServer::start(&[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = server.url();
    let connect = || async {
        RedisStore::builder(RedisUrl::parse(&url).expect("url"))
            .prefix("bench")
            .connect()
            .await
            .expect("store")
    };
    let (writer_store, reader_store) = rt.block_on(async { (connect().await, connect().await) });
    let toks = tokens(n);
    let coalesced = |ms: u64, bytes: usize| {
        Some(CoalesceConfig {
            max_delay: Duration::from_millis(ms),
            max_bytes: bytes,
        })
    };
    let variants = [
        Variant {
            name: "per token, follow",
            coalesce: None,
            reader: Reader::Follow,
        },
        Variant {
            name: "coalesced 25 ms / 256 B, follow",
            coalesce: coalesced(25, 256),
            reader: Reader::Follow,
        },
        Variant {
            name: "coalesced 50 ms / 256 B, follow (default)",
            coalesce: coalesced(50, 256),
            reader: Reader::Follow,
        },
        Variant {
            name: "coalesced 100 ms / 256 B, follow",
            coalesce: coalesced(100, 256),
            reader: Reader::Follow,
        },
        Variant {
            name: "per token, poll read every 10 ms",
            coalesce: None,
            reader: Reader::Poll(Duration::from_millis(10)),
        },
    ];
    println!(
        "{n} tokens of 1-5 chars at {TOKENS_PER_SECOND}/s ({} bytes), reader on another RedisStore",
        toks.iter().map(String::len).sum::<usize>()
    );
    println!("| variant | writer round trips | reader round trips | chunks | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for v in &variants {
        let o = rt.block_on(run_variant(&writer_store, &reader_store, v, &toks));
        assert_eq!(o.latencies.len(), n, "{}: every token read", v.name);
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            v.name,
            o.writer_round_trips,
            o.reader_round_trips,
            o.chunks,
            ms(percentile(&o.latencies, 0.5)),
            ms(percentile(&o.latencies, 0.99)),
            ms(*o.latencies.last().unwrap_or(&Duration::ZERO)),
        );
    }
}
