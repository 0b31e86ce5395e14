//! A WhatsApp service (seed 003): a customer cache filled with `get_many_or_load`
//! — one read for a batch of 100 ids, the missing ones fetched from the API in one
//! call, written back in one write — with a 5 minute TTL.
//!
//! Written as an app would use `chatstate`, and shared as it is by the `whatsapp`
//! example and `chatstate demo --scenario whatsapp`.

use chatstate::{CacheKey, Codec, KvCache, KvCacheExt, Result, Stores};
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
    cache: Arc<dyn KvCache>,
    codec: Codec,
    /// Customers fetched from the API (cache misses).
    fetched: Arc<AtomicU64>,
    /// Customers asked for.
    asked: Arc<AtomicU64>,
}

impl Customers {
    /// The cache over the configured stores.
    pub fn new(stores: &Stores) -> Customers {
        Customers {
            cache: stores.cache.clone(),
            codec: stores.codec,
            fetched: Arc::default(),
            asked: Arc::default(),
        }
    }

    /// The customers `ids`, in order, from the cache or (the missing ones, in one
    /// call) from the API.
    pub async fn get_many(&self, ids: &[u64]) -> Result<Vec<Customer>> {
        let keys = ids
            .iter()
            .map(|id| CacheKey::new("customers", id.to_string()))
            .collect::<Result<Vec<_>>>()?;
        self.asked.fetch_add(ids.len() as u64, Ordering::Relaxed);
        let found = self.load_batch(&keys).await?;
        // The API returns every id it is asked for, so nothing stays missing.
        Ok(found.into_iter().flatten().collect())
    }

    /// One `get_many_or_load`: the cache read, the API call for the misses, the
    /// write-back. (Kept in one function so it can move to a newer call alone.)
    async fn load_batch(&self, keys: &[CacheKey]) -> Result<Vec<Option<Customer>>> {
        let fetched = self.fetched.clone();
        self.cache
            .get_many_or_load(keys, Some(CUSTOMER_TTL), self.codec, |missing| async move {
                fetched.fetch_add(missing.len() as u64, Ordering::Relaxed);
                Ok(fetch_from_api(missing))
            })
            .await
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
fn fetch_from_api(keys: Vec<CacheKey>) -> Vec<(CacheKey, Customer)> {
    keys.into_iter()
        .filter_map(|k| {
            let id: u64 = k.key().parse().ok()?;
            let customer = Customer {
                id,
                name: format!("Cliente {id}"),
                phone: format!("+55 11 9{id:08}"),
            };
            Some((k, customer))
        })
        .collect()
}
