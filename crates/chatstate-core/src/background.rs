//! Periodic background work owned by a store: the loop the memory and file
//! sweepers and the batched counters' flush share.
//!
//! The loop holds only a [`Weak`] reference, so it never keeps its owner alive, and
//! ends on the first tick after the owner is dropped (owners also abort it on drop).
//! This module builds the loop; the caller spawns it (the core never spawns).

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Runs `work` every `interval` (at least 1 ms: tokio's interval refuses zero) for
/// as long as `owner` lives. Missed ticks are delayed, not bunched; the first run is
/// one interval after the start.
pub async fn every<T, F, Fut>(owner: Weak<T>, interval: Duration, mut work: F)
where
    F: FnMut(Arc<T>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(owner) = owner.upgrade() else { return };
        work(owner).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn runs_while_the_owner_lives_and_survives_a_zero_interval() {
        let owner = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(every(
            Arc::downgrade(&owner),
            Duration::ZERO,
            |o: Arc<AtomicUsize>| async move {
                o.fetch_add(1, Ordering::SeqCst);
            },
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(owner.load(Ordering::SeqCst) >= 5, "ran every millisecond");
        drop(owner);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(task.is_finished(), "the loop ends once its owner is gone");
    }
}
