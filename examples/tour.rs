//! The tour: one short WhatsApp-style conversation that uses all four stores, on the
//! embedded default backend — the file store in `./chatstate-data` — with no server.
//! Run it with `cargo run --example tour`; run it again and the conversation is still
//! there.
//!
//! The backend and settings come from the environment (`USE_REDIS=1` with
//! `REDIS_URL`, `CHATSTATE_BACKEND=memory`, `CHATSTATE_FILE_DIR`,
//! `CHATSTATE_WINDOW_SIZE`, ...; see `chatstate_core::config`).
//! A malformed variable stops the tour with an error that names it.

use std::process::ExitCode;
use std::time::Duration;

use chatstate::{
    BackendKind, Bucket, CacheHandles, Codec, Config, CounterBatch, CounterKey, Expected,
    FocusHandles, Labels, NewMessage, SessionKey, SessionPatch, Stores, Timestamp,
};
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

async fn tour() -> chatstate::Result<()> {
    let config = Config::from_env()?;
    // The facade opens the backend the environment selects (USE_REDIS, ...).
    let stores = Stores::open(&config).await?;
    let (sessions, focus, counters, cache) =
        (stores.sessions, stores.focus, stores.counters, stores.cache);
    let codec = Codec::Json;
    match config.backend {
        BackendKind::File => println!("backend: file store in {}", config.file_dir.display()),
        BackendKind::Redis => println!(
            "backend: Redis at {} (prefix {})",
            config.redis.url, config.key_prefix
        ),
        other => println!("backend: {other:?}"),
    }
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
        sessions
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
    let loaded = sessions
        .load(&who)
        .await?
        .expect("the conversation was just written");
    let session = sessions
        .update(
            &who,
            SessionPatch::new()
                .summary("Cliente pediu margherita grande e guaraná; pedido confirmado.")
                .focus("delivery")
                .context(&flow, codec)?,
            Expected::Version(loaded.session.version),
        )
        .await?;
    let loaded = sessions.load(&who).await?.expect("still there");
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
    let stale = sessions
        .update(&who, SessionPatch::new().paused(true), Expected::Version(1))
        .await;
    println!(
        "a write from a stale copy is refused: {}",
        stale.err().map(|e| e.to_string()).unwrap_or_default()
    );

    // A lock so the delivery reminder is scheduled once, whatever the number of workers.
    let first = sessions
        .try_lock(&who, "delivery-reminder", Duration::from_secs(30))
        .await?;
    let second = sessions
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
        sessions.release_lock(&lease).await?;
    }

    // Focus: what the bot works on for this flow, with compare-and-set, through a
    // handle that names the scope and codec once.
    let order = focus.scope("flow:pizza")?.codec(codec);
    let v1 = order.put("current-order", &flow.order_items).await?;
    let v2 = order
        .put_if_version(
            "current-order",
            &["margherita grande", "guaraná", "brownie"],
            v1,
        )
        .await?;
    let current = order
        .get::<Vec<String>>("current-order")
        .await?
        .expect("just put");
    println!(
        "focus flow:pizza/current-order: {:?} at version {} (was {v1}, now {v2})",
        current.value, current.version
    );
    println!(
        "focus docs in scope: {}",
        order.list::<Vec<String>>().await?.len()
    );

    // Counters: traffic per day, errors by type, flushed as one idempotent batch.
    let today = Bucket::day_of(Timestamp(loaded.session.last_activity.0));
    let messages = CounterKey::new("messages")?.in_bucket(today);
    let mut batch = CounterBatch::new();
    batch.add(&messages, turns.len() as i64 * 2);
    for kind in ["timeout", "timeout", "rate_limit"] {
        let errors = CounterKey::new("errors")?.with_labels(Labels::from_pairs([("type", kind)])?);
        batch.add(&errors, 1);
    }
    let first_flush = counters.apply(&batch).await?;
    let retried_flush = counters.apply(&batch).await?;
    println!(
        "counters: messages@{today} = {}, flush {first_flush:?} then retry {retried_flush:?}",
        counters.get(&messages).await?
    );
    for (labels, n) in counters.list("errors", None).await? {
        println!("  errors{labels:?} = {n}");
    }

    // Cache: customers by id through a namespace handle (TTL and codec set once),
    // fetched in one get_many, loaded when missing.
    let customers = cache
        .namespace("customers")?
        .ttl(Duration::from_secs(300))
        .codec(codec);
    let ana = Customer {
        id: 42,
        name: "Ana".into(),
        plan: "pro".into(),
    };
    customers.set("42", &ana).await?;
    let found: Vec<Option<Customer>> = customers.get_many(&["42", "43"]).await?;
    println!(
        "cache: customers 42 and 43 -> {:?}",
        found
            .iter()
            .map(|c| c.as_ref().map(|c| c.name.as_str()))
            .collect::<Vec<_>>()
    );
    let loaded_43: Customer = customers
        .get_or_load("43", || async {
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
        customers.ttl_of("42").await?.map(|d| d.as_secs())
    );
    let cleared = customers.clear().await?;
    println!("cache: cleared {cleared} customers (only that namespace)");
    println!("tour done");
    Ok(())
}
