//! A messaging SaaS (seed 001): a message-history cache invalidated when a message
//! is inserted; company, user and contact caches, contacts found by phone (the
//! phone is the contact entry's alias, so a changed phone can never find a stale
//! contact) and preloaded per company; tool results shared by every instance; and
//! the hit/miss snapshot its metrics endpoint served.
//!
//! The database (Postgres in the seed) is simulated by a map in this process.
//! Written as an app would use `chatstate`, and shared as it is by the `saas`
//! example and `chatstate demo --scenario saas`.

use chatstate::{CacheKey, Codec, KvCache, KvCacheExt, Result, Stores};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// TTL of the entity caches (companies, users, contacts and their phones).
pub const ENTITY_TTL: Duration = Duration::from_secs(10 * 60);
/// TTL of a conversation's cached history.
pub const HISTORY_TTL: Duration = Duration::from_secs(5 * 60);
/// TTL of a tool's result.
pub const TOOL_TTL: Duration = Duration::from_secs(60);

/// A contact of a company.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Contact {
    /// The contact's id.
    pub id: u64,
    /// The company it belongs to.
    pub company: u64,
    /// The phone number, E.164.
    pub phone: String,
    /// The name.
    pub name: String,
}

/// The cache's hits and misses, as the metrics endpoint serves them.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct CacheMetrics {
    /// Reads the cache answered.
    pub hits: u64,
    /// Reads the database answered.
    pub misses: u64,
    /// hits / (hits + misses).
    pub hit_rate: f64,
}

/// The simulated database: conversations' messages.
#[derive(Default)]
struct Database {
    messages: HashMap<String, Vec<String>>,
}

/// One SaaS instance's caches.
#[derive(Clone)]
pub struct Saas {
    cache: Arc<dyn KvCache>,
    codec: Codec,
    db: Arc<Mutex<Database>>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl Saas {
    /// The caches over the configured stores.
    pub fn new(stores: &Stores) -> Saas {
        Saas {
            cache: stores.cache.clone(),
            codec: stores.codec,
            db: Arc::default(),
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Database> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A cached read: the value, or `load()` stored for `ttl`; counts a hit or a miss.
    async fn cached<T>(
        &self,
        key: &CacheKey,
        ttl: Duration,
        load: impl FnOnce() -> T + Send,
    ) -> Result<T>
    where
        T: Serialize + serde::de::DeserializeOwned + Send + Sync,
    {
        let misses = self.misses.clone();
        let value = self
            .cache
            .get_or_load(key, Some(ttl), self.codec, || async move {
                misses.fetch_add(1, Ordering::Relaxed);
                Ok(load())
            })
            .await?;
        Ok(value)
    }

    fn count_read(&self, before_misses: u64) {
        if self.misses.load(Ordering::Relaxed) == before_misses {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The cache key of a contact.
    fn contact_key(company: u64, id: u64) -> Result<CacheKey> {
        CacheKey::new("contacts", format!("{company}:{id}"))
    }

    /// The alias a contact is found by: its phone, within its company.
    fn phone_alias(company: u64, phone: &str) -> Result<CacheKey> {
        CacheKey::new("contact-phones", format!("{company}:{phone}"))
    }

    /// Caches a contact with its phone as its alias (one round trip on Redis): a
    /// changed phone replaces the old one, which stops finding the contact.
    pub async fn put_contact(&self, c: &Contact) -> Result<()> {
        let key = Self::contact_key(c.company, c.id)?;
        let phone = Self::phone_alias(c.company, &c.phone)?;
        self.cache
            .set_value_with_aliases(&key, c, Some(ENTITY_TTL), &[phone], self.codec)
            .await
    }

    /// Puts a company's contacts in the cache, each with its phone (the writes
    /// concurrently).
    pub async fn preload_contacts(&self, contacts: &[Contact]) -> Result<()> {
        futures_util::future::try_join_all(contacts.iter().map(|c| self.put_contact(c))).await?;
        Ok(())
    }

    /// The contact of `company` with `phone` (one round trip on Redis): `None`
    /// when no cached contact has that phone now.
    pub async fn contact_by_phone(&self, company: u64, phone: &str) -> Result<Option<Contact>> {
        let alias = Self::phone_alias(company, phone)?;
        let found = self
            .cache
            .get_value_by_alias::<Contact>(&alias, self.codec)
            .await?;
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(found.map(|(_, contact)| contact))
    }

    /// A company's display name (cached).
    pub async fn company_name(&self, company: u64) -> Result<String> {
        let key = CacheKey::new("companies", company.to_string())?;
        let before = self.misses.load(Ordering::Relaxed);
        let name = self
            .cached(&key, ENTITY_TTL, move || format!("Empresa {company}"))
            .await?;
        self.count_read(before);
        Ok(name)
    }

    /// A conversation's messages: the cache, or the database.
    pub async fn history(&self, conversation: &str) -> Result<Vec<String>> {
        let key = CacheKey::new("msg-history", conversation)?;
        // The last 50 messages, as the seed's query read them.
        let from_db: Vec<String> = self
            .db()
            .messages
            .get(conversation)
            .map(|m| m[m.len().saturating_sub(50)..].to_vec())
            .unwrap_or_default();
        let before = self.misses.load(Ordering::Relaxed);
        let messages = self.cached(&key, HISTORY_TTL, move || from_db).await?;
        self.count_read(before);
        Ok(messages)
    }

    /// Inserts a message in the database, then drops the conversation's cached
    /// history so the next read sees it.
    pub async fn insert_message(&self, conversation: &str, text: &str) -> Result<()> {
        self.db()
            .messages
            .entry(conversation.to_string())
            .or_default()
            .push(text.to_string());
        let key = CacheKey::new("msg-history", conversation)?;
        self.cache.delete(&key).await.map(drop)
    }

    /// The result of `tool` for `input`, shared by every instance through the cache
    /// (it was a per-process map in the seed).
    pub async fn tool_result(&self, tool: &str, input: &str) -> Result<String> {
        let key = CacheKey::new("tool-results", format!("{tool}:{input}"))?;
        let before = self.misses.load(Ordering::Relaxed);
        let (tool, input) = (tool.to_string(), input.to_string());
        let out = self
            .cached(&key, TOOL_TTL, move || format!("{tool}({input}) = ok"))
            .await?;
        self.count_read(before);
        Ok(out)
    }

    /// The metrics endpoint's snapshot.
    pub fn metrics(&self) -> CacheMetrics {
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let total = hits + misses;
        CacheMetrics {
            hits,
            misses,
            hit_rate: if total == 0 {
                0.0
            } else {
                hits as f64 / total as f64
            },
        }
    }
}
