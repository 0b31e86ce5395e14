//! The conformance runner's printing and verdict, in process, on a backend that
//! passes and on one that is deliberately broken (its cache forgets every write).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate::{CacheKey, KvCache, ManualClock, Result, StoreSettings};
use chatstate_cli::conformance::run_and_report;
use chatstate_conformance::runner::{RunOptions, all_cases};
use chatstate_conformance::{Backend, Fixture, TimeControl};
use chatstate_memory::MemoryStore;
use std::time::Duration;

/// Memory stores; with `broken`, a cache whose `get` never finds anything.
struct Memory {
    broken: bool,
}

/// A cache that accepts writes and forgets them.
struct Forgetful(Arc<MemoryStore>);

#[async_trait]
impl KvCache for Forgetful {
    async fn get(&self, _: &CacheKey) -> Result<Option<Bytes>> {
        Ok(None)
    }
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        Ok(vec![None; keys.len()])
    }
    async fn set(&self, k: &CacheKey, v: Bytes, ttl: Option<Duration>) -> Result<()> {
        KvCache::set(self.0.as_ref(), k, v, ttl).await
    }
    async fn set_many(&self, e: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        self.0.set_many(e, ttl).await
    }
    async fn set_many_with_ttls(&self, e: Vec<(CacheKey, Bytes, Option<Duration>)>) -> Result<()> {
        self.0.set_many_with_ttls(e).await
    }
    async fn set_with_aliases(
        &self,
        k: &CacheKey,
        v: Bytes,
        ttl: Option<Duration>,
        aliases: &[CacheKey],
    ) -> Result<()> {
        self.0.set_with_aliases(k, v, ttl, aliases).await
    }
    async fn get_by_alias(&self, _: &CacheKey) -> Result<Option<(CacheKey, Bytes)>> {
        Ok(None)
    }
    async fn delete(&self, k: &CacheKey) -> Result<bool> {
        KvCache::delete(self.0.as_ref(), k).await
    }
    async fn delete_many(&self, k: &[CacheKey]) -> Result<u64> {
        self.0.delete_many(k).await
    }
    async fn exists(&self, k: &CacheKey) -> Result<bool> {
        self.0.exists(k).await
    }
    async fn expire(&self, k: &CacheKey, ttl: Duration) -> Result<bool> {
        self.0.expire(k, ttl).await
    }
    async fn ttl(&self, k: &CacheKey) -> Result<Option<Duration>> {
        KvCache::ttl(self.0.as_ref(), k).await
    }
    async fn clear_prefix(&self, ns: &str, p: &str) -> Result<u64> {
        self.0.clear_prefix(ns, p).await
    }
}

#[async_trait]
impl Backend for Memory {
    fn name(&self) -> &'static str {
        if self.broken {
            "broken-memory"
        } else {
            "memory"
        }
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        let clock = ManualClock::starting_now();
        let store = Arc::new(
            MemoryStore::builder()
                .settings(settings.clone())
                .clock(clock.shared())
                .build(),
        );
        let mut fixture = Fixture::of_one(
            store.clone(),
            store.clone(),
            TimeControl::Manual(clock),
            settings,
            None,
        );
        if self.broken {
            fixture.cache = Arc::new(Forgetful(store));
        }
        Ok(fixture)
    }
}

fn kv_cases() -> Vec<chatstate_conformance::runner::Case> {
    all_cases()
        .into_iter()
        .filter(|c| c.name.starts_with("kv_"))
        .collect()
}

async fn run(broken: bool, json: bool) -> (bool, String) {
    let mut out = Vec::new();
    let ok = run_and_report(
        Arc::new(Memory { broken }),
        &kv_cases(),
        RunOptions::default(),
        json,
        &mut out,
    )
    .await
    .expect("writing to a Vec");
    (ok, String::from_utf8(out).expect("utf-8"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_backend_passes_every_case() {
    let (ok, text) = run(false, false).await;
    assert!(ok, "{text}");
    let n = kv_cases().len();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("passed ")).count(),
        n,
        "{text}"
    );
    assert!(
        text.ends_with(&format!("{n} passed, 0 skipped, 0 failed\n")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_backend_fails_names_the_cases_and_says_why() {
    let (ok, text) = run(true, false).await;
    assert!(!ok, "a broken cache must fail the run:\n{text}");
    let failed: Vec<&str> = text.lines().filter(|l| l.starts_with("failed ")).collect();
    assert!(
        failed.iter().any(|l| l.contains("kv_set_get_overwrite")),
        "{text}"
    );
    // Cases that only read a missing key still pass: the verdict is per case.
    assert!(
        text.lines()
            .any(|l| l.starts_with("passed ") && l.contains("kv_get_missing_is_none")),
        "{text}"
    );
    let (ok, json) = run(true, true).await;
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON document");
    assert_eq!(v["failed"].as_u64(), Some(failed.len() as u64));
    let case = v["cases"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "kv_set_get_overwrite"))
        .expect("the case is listed");
    assert_eq!(case["result"], "failed");
    assert!(
        case["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a failure says why"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_test_is_a_case_and_fails_on_the_broken_backend() {
    let model: Vec<_> = all_cases()
        .into_iter()
        .filter(|c| c.name == chatstate_conformance::runner::MODEL_CASE)
        .collect();
    assert_eq!(model.len(), 1);
    for (broken, passes) in [(false, true), (true, false)] {
        let mut out = Vec::new();
        let ok = run_and_report(
            Arc::new(Memory { broken }),
            &model,
            RunOptions::default(),
            false,
            &mut out,
        )
        .await
        .expect("writing to a Vec");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(ok, passes, "broken: {broken}\n{text}");
    }
}
