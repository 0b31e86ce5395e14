//! An LLM streaming app: a reply streamed as 1–5 character tokens through the
//! coalescing writer (a write per 50 ms or 256 bytes, not per token), then read
//! back whole. Run: `cargo run -p chatstate-cli --example streaming`.
//!
//! The app code is `src/seeds/streaming.rs`, included as it is: `chatstate demo
//! --scenario streaming` times the same methods.

#[path = "../src/seeds/streaming.rs"]
mod streaming;

use chatstate::{Config, RunId, Stores};
use streaming::Streamer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stores = Stores::open(&Config::from_env()?).await?;
    let streamer = Streamer::new(&stores);
    let text =
        "Olá! Seu pedido saiu para entrega e chega em 30 minutos. Obrigado pela preferência.";
    let tokens: Vec<&str> = text.split_inclusive(' ').collect();
    let run = RunId::random();
    streamer.stream(&run, &tokens).await?;
    let back = streamer.read(&run).await?;
    assert_eq!(back, text);
    println!(
        "streaming: {} tokens written as {} chunk(s); read back {} characters",
        tokens.len(),
        streamer.writes(),
        back.chars().count()
    );
    Ok(())
}
