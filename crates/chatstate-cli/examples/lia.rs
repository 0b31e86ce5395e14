//! LIA CORTEX (an AI assistant): assistant configurations through a local tier in
//! front of the shared cache, threads written with their metadata in one call and
//! read many at once, usage counters batched and flushed. Run:
//! `cargo run -p chatstate-cli --example lia` (`USE_REDIS=1` for Redis).
//!
//! The app code is `src/seeds/lia.rs`, included as it is: `chatstate demo
//! --scenario lia` times the same methods.

#[path = "../src/seeds/lia.rs"]
mod lia;

use chatstate::{Config, Stores};
use lia::{Lia, Thread, ThreadMeta};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_env()?;
    let stores = Stores::open(&config).await?;
    let app = Lia::new(&stores, &config)?;

    let mut ids = Vec::new();
    for turn in 0..30u64 {
        // Three assistants, read every turn: loaded once each, then served locally.
        let assistant = app.assistant((turn % 3) as u32).await?;
        let thread = Thread {
            id: format!("example-thread-{}", turn % 5),
            assistant: assistant.id,
            last: vec![format!("pergunta {turn}"), format!("resposta {turn}")],
        };
        app.save_thread(
            &thread,
            &ThreadMeta {
                messages: turn + 1,
                tokens: 120 * turn,
            },
        )
        .await?;
        if !ids.contains(&thread.id) {
            ids.push(thread.id.clone());
        }
        app.count_usage(&assistant)?;
    }
    let threads = app.threads(&ids).await?;
    assert!(
        threads.iter().all(Option::is_some),
        "every saved thread reads back"
    );
    app.flush_counters().await?;

    let stats = app.cache_stats();
    println!(
        "lia: {} threads read in one call; assistants cache: {} local hits, {} loads; {} counter batch(es) flushed for 60 increments",
        threads.len(),
        stats.local_hits,
        stats.loads,
        app.batches_flushed()
    );
    Ok(())
}
