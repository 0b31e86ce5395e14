//! Session lock cases: exclusion, ownership, leases, fencing.

use std::sync::Arc;
use std::time::Duration;

use chatstate_core::{ErrorKind, Lease, SessionStore};

use crate::cases::{Must, expect_err, skey};
use crate::{Ctx, Outcome};

async fn take(store: &dyn SessionStore, user: &str, name: &str, lease: Duration) -> Option<Lease> {
    store
        .try_lock(&skey("t", "c", user), name, lease)
        .await
        .must("try_lock")
}

fn forged(lease: &Lease) -> Lease {
    Lease {
        token: format!("{}-not-mine", lease.token),
        ..lease.clone()
    }
}

/// A held lock refuses a second holder; other sessions' locks are independent.
pub async fn lock_excludes_second_holder(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let s = fx.sessions.as_ref();
    let lease = ctx.unit() * 10;
    let first = take(s, "u", "reminder", lease)
        .await
        .expect("a free lock is taken");
    assert_eq!(first.key, skey("t", "c", "u"));
    assert_eq!(first.name, "reminder");
    assert!(
        take(s, "u", "reminder", lease).await.is_none(),
        "a held lock refuses"
    );
    assert!(
        take(s, "other", "reminder", lease).await.is_some(),
        "another session's lock is free"
    );
    assert!(
        fx.sessions
            .get(&skey("t", "c", "u"))
            .await
            .must("get")
            .is_none(),
        "a lock does not create the session"
    );
    Outcome::Passed
}

/// Only the owner's token releases; a forged or used lease releases nothing.
pub async fn lock_release_only_by_owner(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let s = fx.sessions.as_ref();
    let lease = ctx.unit() * 10;
    let held = take(s, "u", "job", lease).await.expect("free lock");
    assert!(
        !s.release_lock(&forged(&held)).await.must("forged release"),
        "forged token refused"
    );
    assert!(
        take(s, "u", "job", lease).await.is_none(),
        "still held after a forged release"
    );
    assert!(
        s.release_lock(&held).await.must("release"),
        "the owner releases"
    );
    assert!(
        !s.release_lock(&held).await.must("second release"),
        "a lease releases once"
    );
    let next = take(s, "u", "job", lease)
        .await
        .expect("free after release");
    assert!(
        !s.release_lock(&held).await.must("stale release"),
        "the old lease cannot release the new holder"
    );
    assert!(
        take(s, "u", "job", lease).await.is_none(),
        "the new holder keeps it"
    );
    assert!(s.release_lock(&next).await.must("release next"));
    Outcome::Passed
}

/// A lease runs out by itself; the expired holder can no longer extend or release.
pub async fn lock_expires_after_lease(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let s = fx.sessions.as_ref();
    let u = ctx.unit();
    let old = take(s, "u", "job", u).await.expect("free lock");
    fx.advance(u / 2).await;
    assert!(
        take(s, "u", "job", u).await.is_none(),
        "held within the lease"
    );
    fx.advance(u).await;
    let new = take(s, "u", "job", u * 10)
        .await
        .expect("free after the lease ran out");
    assert!(new.fence > old.fence);
    assert!(
        !s.extend_lock(&old, u * 10).await.must("extend expired"),
        "expired lease cannot extend"
    );
    assert!(
        !s.release_lock(&old).await.must("release expired"),
        "expired lease cannot release"
    );
    assert!(
        take(s, "u", "job", u).await.is_none(),
        "the new holder is untouched"
    );
    Outcome::Passed
}

/// The owner extends its lease; nobody else can.
pub async fn lock_extend_by_owner_only(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let s = fx.sessions.as_ref();
    let u = ctx.unit();
    let held = take(s, "u", "job", u * 2).await.expect("free lock");
    fx.advance(u).await;
    assert!(
        !s.extend_lock(&forged(&held), u * 10)
            .await
            .must("forged extend")
    );
    assert!(
        s.extend_lock(&held, u * 2).await.must("extend"),
        "the owner extends"
    );
    fx.advance(u * 3 / 2).await;
    assert!(
        take(s, "u", "job", u).await.is_none(),
        "held past the original lease"
    );
    fx.advance(u).await;
    assert!(
        take(s, "u", "job", u).await.is_some(),
        "free once the extension ran out"
    );
    let r = s.extend_lock(&held, Duration::ZERO).await;
    expect_err(r, ErrorKind::InvalidInput, "extend by zero");
    Outcome::Passed
}

/// Every new lease of a lock has a larger fencing number, through release and expiry.
pub async fn lock_fence_only_grows(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let s = fx.sessions.as_ref();
    let u = ctx.unit();
    let mut last = 0;
    for round in 0..6 {
        let lease = take(s, "u", "job", u).await.expect("free lock");
        assert!(
            lease.fence > last,
            "round {round}: fence {} after {last}",
            lease.fence
        );
        last = lease.fence;
        if round % 2 == 0 {
            assert!(s.release_lock(&lease).await.must("release"));
        } else {
            fx.advance(u * 3 / 2).await;
        }
    }
    Outcome::Passed
}

/// Of 64 tasks racing for one lock, exactly one gets it.
pub async fn lock_concurrent_acquire_has_one_winner(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let lease = ctx.unit() * 30;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let store = Arc::clone(&fx.sessions);
            tokio::spawn(async move {
                store
                    .try_lock(&skey("t", "c", "u"), "reminder", lease)
                    .await
                    .must("try_lock")
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if t.await.expect("task").is_some() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one task holds the lock");
    Outcome::Passed
}

/// Locks of different names on one session are independent; bad names and leases
/// are InvalidInput.
pub async fn lock_names_are_independent(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let s = fx.sessions.as_ref();
    let lease = ctx.unit() * 10;
    let a = take(s, "u", "reminder", lease)
        .await
        .expect("reminder lock");
    let b = take(s, "u", "billing", lease)
        .await
        .expect("billing lock on the same session");
    assert!(s.release_lock(&a).await.must("release a"));
    assert!(
        take(s, "u", "billing", lease).await.is_none(),
        "releasing one name leaves the other"
    );
    assert!(s.release_lock(&b).await.must("release b"));
    let k = skey("t", "c", "u");
    expect_err(
        s.try_lock(&k, "", lease).await,
        ErrorKind::InvalidInput,
        "empty lock name",
    );
    expect_err(
        s.try_lock(&k, &"n".repeat(10_000), lease).await,
        ErrorKind::InvalidInput,
        "10 KB lock name",
    );
    expect_err(
        s.try_lock(&k, "zero", Duration::ZERO).await,
        ErrorKind::InvalidInput,
        "zero lease",
    );
    Outcome::Passed
}

/// With a lease longer than the session TTL, the lock's fence is still remembered
/// after the lease ends: the next holder's fence is larger than the stale holder's,
/// whether the stale lease expired, was extended, or was released.
pub async fn lock_fence_outlives_a_lease_longer_than_the_ttl(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(1).await;
    let s = fx.sessions.as_ref();
    let u = ctx.unit();
    let long = u * 2;
    let expired = take(s, "u", "expires", long).await.expect("free lock");
    let extended = take(s, "u", "extended", u / 2).await.expect("free lock");
    assert!(
        s.extend_lock(&extended, long).await.must("extend"),
        "the holder extends its lease"
    );
    let released = take(s, "u", "released", long).await.expect("free lock");
    assert!(s.release_lock(&released).await.must("release"));
    // Past every lease and past a session TTL after each was taken.
    fx.advance(long + u / 2).await;
    for (name, stale) in [
        ("expires", &expired),
        ("extended", &extended),
        ("released", &released),
    ] {
        let next = take(s, "u", name, u).await.expect("the lock is free again");
        assert!(
            next.fence > stale.fence,
            "lock {name}: the new holder's fence {} must be above the stale holder's {}",
            next.fence,
            stale.fence
        );
    }
    Outcome::Passed
}
