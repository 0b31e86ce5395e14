//! The tour: one short WhatsApp-style conversation that uses all four stores, on the
//! embedded backend (no server needed). Run it with `cargo run --example tour`.
//!
//! Settings come from the environment (`CHATSTATE_WINDOW_SIZE`,
//! `CHATSTATE_SUMMARY_MAX_CHARS`, ...; see `chatstate_core::config`). A malformed
//! variable stops the tour with an error that names it.

use std::process::ExitCode;
use std::time::Duration;

use chatstate_core::{
    BackendKind, Bucket, CacheKey, Codec, Config, CounterBatch, CounterKey, CounterSink, Expected,
    FocusKey, FocusStore, FocusStoreExt, KvCache, KvCacheExt, Labels, NewMessage, PutMode,
    SessionKey, SessionPatch, SessionStore, Timestamp,
};
use chatstate_memory::MemoryStore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Customer {
    id: u64,
    name: String,
    plan: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct FlowContext {
    step: String,
    order_items: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match tour().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tour failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn tour() -> chatstate_core::Result<()> {
    let config = Config::from_env()?;
    if config.backend != BackendKind::Memory {
        println!(
            "config selects the {:?} backend; this build ships the memory backend, so the tour runs in memory",
            config.backend
        );
    }
    let store = MemoryStore::from_config(&config);
    let codec = Codec::Json;
    println!(
        "chatstate tour: window {} messages, summary {} chars, session TTL {:?}",
        config.store.window_size, config.store.summary_max_chars, config.store.session_ttl
    );

    // Sessions: a conversation with a sliding window.
    let who = SessionKey::new("acme", "whatsapp", "+55 11 99999-0000")?;
    let turns = [
        ("oi, quero pedir uma pizza", "Olá! Qual sabor?"),
        ("margherita grande", "Anotado. Mais alguma coisa?"),
        (
            "um guaraná",
            "Pedido: margherita grande + guaraná. Confirma?",
        ),
        ("sim", "Confirmado! Chega em 40 minutos."),
    ];
    for (user, bot) in turns {
        store
            .append_messages(
                &who,
                vec![NewMessage::user(user), NewMessage::assistant(bot)],
            )
            .await?;
    }
    let flow = FlowContext {
        step: "confirmed".into(),
        order_items: vec!["margherita grande".into(), "guaraná".into()],
    };
    let loaded = store
        .load(&who)
        .await?
        .expect("the conversation was just written");
    let session = store
        .update(
            &who,
            SessionPatch::new()
                .summary("Cliente pediu margherita grande e guaraná; pedido confirmado.")
                .focus("delivery")
                .context(&flow, codec)?,
            Expected::Version(loaded.session.version),
        )
        .await?;
    let loaded = store.load(&who).await?.expect("still there");
    println!(
        "session {}: {} messages so far, {} in the window (~{} tokens), version {}",
        session.id,
        loaded.session.message_count,
        loaded.messages.len(),
        loaded.window_tokens(),
        loaded.session.version
    );
    for m in &loaded.messages {
        println!("  #{:<2} {:?}: {}", m.seq, m.role, m.content);
    }
    let stale = store
        .update(&who, SessionPatch::new().paused(true), Expected::Version(1))
        .await;
    println!(
        "a write from a stale copy is refused: {}",
        stale.err().map(|e| e.to_string()).unwrap_or_default()
    );

    // A lock so the delivery reminder is scheduled once, whatever the number of workers.
    let first = store
        .try_lock(&who, "delivery-reminder", Duration::from_secs(30))
        .await?;
    let second = store
        .try_lock(&who, "delivery-reminder", Duration::from_secs(30))
        .await?;
    println!(
        "reminder lock: first worker {}, second worker {}",
        first.as_ref().map_or("refused".into(), |l| format!(
            "holds it (fence {})",
            l.fence
        )),
        second
            .as_ref()
            .map_or("refused".to_string(), |_| "holds it".into())
    );
    if let Some(lease) = first {
        store.release_lock(&lease).await?;
    }

    // Focus: what the bot works on for this flow, with compare-and-set.
    let focus_key = FocusKey::new("flow:pizza", "current-order")?;
    let v1 = store
        .put_value(&focus_key, &flow.order_items, PutMode::Create, None, codec)
        .await?;
    let v2 = store
        .put_value(
            &focus_key,
            &["margherita grande", "guaraná", "brownie"],
            PutMode::IfVersion(v1),
            None,
            codec,
        )
        .await?;
    let (items, version): (Vec<String>, u64) = FocusStoreExt::get_value(&store, &focus_key, codec)
        .await?
        .expect("just put");
    println!("focus {focus_key}: {items:?} at version {version} (was {v1}, now {v2})");
    println!(
        "focus docs in scope: {}",
        FocusStore::list(&store, "flow:pizza").await?.len()
    );

    // Counters: traffic per day, errors by type, flushed as one idempotent batch.
    let today = Bucket::day_of(Timestamp(loaded.session.last_activity.0));
    let messages = CounterKey::new("messages")?.in_bucket(today);
    let mut batch = CounterBatch::new();
    batch.add(&messages, loaded.session.message_count as i64);
    for kind in ["timeout", "timeout", "rate_limit"] {
        let errors = CounterKey::new("errors")?.with_labels(Labels::from_pairs([("type", kind)])?);
        batch.add(&errors, 1);
    }
    let first_flush = store.apply(&batch).await?;
    let retried_flush = store.apply(&batch).await?;
    println!(
        "counters: messages@{today} = {}, flush {first_flush:?} then retry {retried_flush:?}",
        CounterSink::get(&store, &messages).await?
    );
    for (labels, n) in CounterSink::list(&store, "errors", None).await? {
        println!("  errors{labels:?} = {n}");
    }

    // Cache: customers by id, fetched in one get_many, loaded when missing.
    let customer = Customer {
        id: 42,
        name: "Ana".into(),
        plan: "pro".into(),
    };
    let keys = [
        CacheKey::new("customers", "42")?,
        CacheKey::new("customers", "43")?,
    ];
    store
        .set_value(&keys[0], &customer, Some(Duration::from_secs(300)), codec)
        .await?;
    let found: Vec<Option<Customer>> = store.get_many_values(&keys, codec).await?;
    println!(
        "cache: customers 42 and 43 -> {:?}",
        found
            .iter()
            .map(|c| c.as_ref().map(|c| c.name.as_str()))
            .collect::<Vec<_>>()
    );
    let loaded_43: Customer = store
        .get_or_load(&keys[1], None, codec, || async {
            Ok(Customer {
                id: 43,
                name: "Bruno".into(),
                plan: "free".into(),
            })
        })
        .await?;
    println!(
        "cache: loaded {} on a miss; TTL left on 42: {:?}",
        loaded_43.name,
        KvCache::ttl(&store, &keys[0]).await?.map(|d| d.as_secs())
    );
    let cleared = store.clear_prefix("customers", "").await?;
    println!("cache: cleared {cleared} customers (only that namespace)");
    println!("tour done");
    Ok(())
}
