//! A WhatsApp service: a customer cache filled with `get_many_or_load` in batches of
//! 100 (one read, one API call for the misses, one write-back), TTL 5 minutes. Run:
//! `cargo run -p chatstate-cli --example whatsapp`.
//!
//! The app code is `src/seeds/whatsapp.rs`, included as it is: `chatstate demo
//! --scenario whatsapp` times the same method.

#[path = "../src/seeds/whatsapp.rs"]
mod whatsapp;

use chatstate::{Config, Stores};
use whatsapp::{BATCH, Customers};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stores = Stores::open(&Config::from_env()?).await?;
    let customers = Customers::new(&stores)?;
    let n = BATCH as u64;
    let first: Vec<u64> = (1..=n).collect();
    let second: Vec<u64> = (n / 2 + 1..=n + n / 2).collect();

    let a = customers.get_many(&first).await?;
    let fetched_first = customers.fetched();
    let b = customers.get_many(&second).await?;
    assert_eq!((a.len(), b.len()), (BATCH, BATCH));
    assert_eq!(customers.asked(), 2 * n);
    assert_eq!(b[0].id, 51, "answers come in the order asked");
    // The second batch overlaps the first by 50: at most 50 more go to the API.
    let fetched_second = customers.fetched() - fetched_first;
    assert!(fetched_second <= 50);
    println!(
        "whatsapp: 2 batches of 100, {} + {} customers fetched from the API, the rest from the cache",
        fetched_first, fetched_second
    );
    Ok(())
}
