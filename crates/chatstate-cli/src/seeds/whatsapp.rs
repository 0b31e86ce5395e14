//! A WhatsApp service (seed 003): a customer cache filled with `get_many_or_load`
//! — one read for a batch of 100 ids, the missing ones fetched from the API in one
//! call, written back in one write — with a 5 minute TTL.
//!
//! Written as an app would use `chatstate`, and shared as it is by the `whatsapp`
//! example and `chatstate demo --scenario whatsapp`.

use chatstate::{CacheHandles, CacheNamespace, Result, Stores};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The customers' TTL in the cache.
pub const CUSTOMER_TTL: Duration = Duration::from_secs(5 * 60);

/// How many ids a batch asks for.
pub const BATCH: usize = 100;

/// A customer as the API returns it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Customer {
    /// The API's id.
    pub id: u64,
    /// The display name.
    pub name: String,
    /// The phone number.
    pub phone: String,
}

/// The customer cache of one service instance.
#[derive(Clone)]
pub struct Customers {
    /// The `customers` namespace, its TTL and codec set once.
    cache: CacheNamespace,
    /// Customers fetched from the API (cache misses).
    fetched: Arc<AtomicU64>,
    /// Customers asked for.
    asked: Arc<AtomicU64>,
}

impl Customers {
    /// The cache over the configured stores.
    pub fn new(stores: &Stores) -> Result<Customers> {
        Ok(Customers {
            cache: stores
                .cache
                .namespace("customers")?
                .ttl(CUSTOMER_TTL)
                .codec(stores.codec),
            fetched: Arc::default(),
            asked: Arc::default(),
        })
    }

    /// The customers `ids`, in order, from the cache or (the missing ones, in one
    /// call) from the API.
    pub async fn get_many(&self, ids: &[u64]) -> Result<Vec<Customer>> {
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        self.asked.fetch_add(ids.len() as u64, Ordering::Relaxed);
        let fetched = &self.fetched;
        // One cache read for the batch, one API call with the misses, one write-back.
        let found = self
            .cache
            .get_many_or_load(&ids, |missing| {
                fetched.fetch_add(missing.len() as u64, Ordering::Relaxed);
                async move { Ok(fetch_from_api(missing)) }
            })
            .await?;
        // The API returns every id it is asked for, so nothing stays missing.
        Ok(found.into_iter().flatten().collect())
    }

    /// Customers asked for so far.
    pub fn asked(&self) -> u64 {
        self.asked.load(Ordering::Relaxed)
    }

    /// Customers fetched from the API so far (the cache's misses).
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

/// The customers API (simulated: it makes a customer from the id).
fn fetch_from_api(ids: Vec<String>) -> Vec<(String, Customer)> {
    ids.into_iter()
        .filter_map(|k| {
            let id: u64 = k.parse().ok()?;
            let customer = Customer {
                id,
                name: format!("Cliente {id}"),
                phone: format!("+55 11 9{id:08}"),
            };
            Some((k, customer))
        })
        .collect()
}
