//! The `mock` feature: an app unit-tests its own code against mockall mocks of the
//! traits, with no backend at all.

use std::sync::Arc;

use chatstate_core::mock::{MockCounterSink, MockSessionStore};
use chatstate_core::{
    AppendReceipt, CounterKey, CounterSink, Error, ErrorKind, NewMessage, SessionKey, SessionStore,
    SessionStoreExt,
};

/// App code under test: records a message and counts it; a store outage is
/// reported, not swallowed.
async fn on_message(
    sessions: Arc<dyn SessionStore>,
    counters: Arc<dyn CounterSink>,
    key: &SessionKey,
    text: &str,
) -> chatstate_core::Result<u64> {
    let receipt = sessions.append_message(key, NewMessage::user(text)).await?;
    counters.add(&CounterKey::new("messages")?, 1).await?;
    Ok(receipt.message_count)
}

#[tokio::test]
async fn app_code_runs_against_mocks() {
    let mut sessions = MockSessionStore::new();
    sessions
        .expect_append_messages()
        .withf(|key, msgs| key.user() == "u1" && msgs.len() == 1 && msgs[0].content == "oi")
        .times(1)
        .returning(|_, _| {
            Ok(AppendReceipt {
                message_count: 7,
                window_len: 7,
                created: false,
                trimmed_messages: 0,
                trimmed_tokens: 0,
            })
        });
    let mut counters = MockCounterSink::new();
    counters
        .expect_add()
        .withf(|key, delta| key.name() == "messages" && *delta == 1)
        .times(1)
        .returning(|_, d| Ok(d));
    let key = SessionKey::new("t", "c", "u1").unwrap();
    let n = on_message(Arc::new(sessions), Arc::new(counters), &key, "oi")
        .await
        .unwrap();
    assert_eq!(n, 7);
}

#[tokio::test]
async fn mocks_can_simulate_an_outage() {
    let mut sessions = MockSessionStore::new();
    sessions
        .expect_append_messages()
        .returning(|_, _| Err(Error::new(ErrorKind::Unavailable, "redis is down")));
    let mut counters = MockCounterSink::new();
    counters.expect_add().never();
    let key = SessionKey::new("t", "c", "u1").unwrap();
    let err = on_message(Arc::new(sessions), Arc::new(counters), &key, "oi")
        .await
        .unwrap_err();
    assert!(err.is_temporary());
}

/// The side data calls mock like every other: `get_data` (in `SessionStoreExt`)
/// reaches the mocked `get_data_many`.
#[tokio::test]
async fn side_data_calls_are_mockable() {
    use bytes::Bytes;
    let mut sessions = MockSessionStore::new();
    sessions
        .expect_set_data()
        .withf(|_, name, value| name == "thread_id" && &value[..] == b"thr_1")
        .times(1)
        .returning(|_, _, _| Ok(()));
    sessions
        .expect_get_data_many()
        .withf(|_, names| names == ["thread_id".to_string()])
        .times(1)
        .returning(|_, _| Ok(vec![Some(Bytes::from_static(b"thr_1"))]));
    sessions
        .expect_delete_data()
        .times(1)
        .returning(|_, _| Ok(true));
    let key = SessionKey::new("t", "c", "u1").unwrap();
    sessions
        .set_data(&key, "thread_id", Bytes::from_static(b"thr_1"))
        .await
        .unwrap();
    assert_eq!(
        sessions.get_data(&key, "thread_id").await.unwrap(),
        Some(Bytes::from_static(b"thr_1"))
    );
    assert!(sessions.delete_data(&key, "thread_id").await.unwrap());
}
