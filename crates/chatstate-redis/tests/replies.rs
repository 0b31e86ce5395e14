//! What is particular to streamed replies on Redis: one round trip per append,
//! finish and read; every key with the run's TTL, under the run's hash tag; a
//! follower that loses its subscription keeps every chunk, once, in order.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use chatstate_core::{RedisUrl, ReplyEvent, ReplyStream, RunId, RunStatus};
use chatstate_redis::RedisStore;
use futures_util::StreamExt;

async fn connect(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(RedisUrl::parse(url).unwrap())
        .prefix(prefix)
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn append_finish_and_read_are_one_round_trip_each() {
    let server = common::shared();
    let s = connect(&server.url(), &common::unique_prefix()).await;
    let warm = RunId::new("warm").unwrap();
    // Warm-up: the server learns every script once.
    s.start(&warm, None).await.unwrap();
    s.append(&warm, "x").await.unwrap();
    s.read(&warm, 0).await.unwrap();
    s.finish(&warm, RunStatus::Done).await.unwrap();
    let run = RunId::new("counted").unwrap();
    let before = s.round_trips().round_trips;
    s.start(&run, None).await.unwrap();
    for i in 0..10 {
        s.append(&run, &format!("t{i}")).await.unwrap();
    }
    s.read(&run, 3).await.unwrap();
    s.finish(&run, RunStatus::Done).await.unwrap();
    assert_eq!(s.round_trips().round_trips - before, 13);
}

#[tokio::test]
async fn every_key_has_the_run_ttl_and_the_run_hash_tag() {
    let server = common::shared();
    let prefix = common::unique_prefix();
    let s = connect(&server.url(), &prefix).await;
    let run = RunId::new("a run:{x}").unwrap();
    s.start(&run, Some(Duration::from_secs(100))).await.unwrap();
    s.append(&run, "hello").await.unwrap();
    let keys = server.cli(&["--scan", "--pattern", &format!("{prefix}:reply:*")]);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in keys {
        assert!(
            key.starts_with(&format!("{prefix}:reply:{{a%20run%3A%7Bx%7D}}:")),
            "one hash tag, the escaped run id: {key}"
        );
        let pttl: i64 = server.cli(&["PTTL", key]).trim().parse().unwrap();
        assert!(pttl > 90_000 && pttl <= 100_000, "{key}: {pttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_subscription_is_killed_loses_and_repeats_nothing() {
    // A server of its own: the test kills every subscribed connection on it.
    let server = common::RedisServer::start(&[]);
    let prefix = common::unique_prefix();
    let writer = connect(&server.url(), &prefix).await;
    let reader = connect(&server.url(), &prefix).await;
    let run = RunId::new("killed").unwrap();
    writer.start(&run, None).await.unwrap();
    let mut events = reader.follow(&run, 0, Duration::from_secs(10));
    let producer = {
        let (writer, run) = (writer.clone(), run.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                writer.append(&run, &format!("{i} ")).await.unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            writer.finish(&run, RunStatus::Done).await.unwrap();
        })
    };
    let mut seen = Vec::new();
    let mut killed = 0;
    while let Some(event) = events.next().await {
        match event.unwrap() {
            ReplyEvent::Chunk(c) => {
                assert_eq!(
                    c.offset,
                    seen.len() as u64,
                    "in order, none skipped or repeated"
                );
                seen.push(c.text);
                if seen.len() % 100 == 50 {
                    // Drops every subscribed connection (this follower's among them).
                    server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
                    killed += 1;
                }
            }
            ReplyEvent::Finished(status) => assert_eq!(status, RunStatus::Done),
        }
    }
    producer.await.unwrap();
    assert_eq!(killed, 3);
    let want: Vec<String> = (0..300).map(|i| format!("{i} ")).collect();
    assert_eq!(seen, want);
}
