//! The machinery the local session and focus tiers share ([`crate::local_sessions`],
//! [`crate::local_focus`]): copies held in moka, and the per-stripe write
//! generations that decide whether an answer of the store may still be kept when
//! it arrives. Each tier decides itself how long a copy may be served.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chatstate_core::{Result, SharedClock, Timestamp};
use moka::ops::compute::{CompResult, Op};

/// How many [`Stripe`]s the keys are spread over.
const STRIPES: usize = 64;

/// Writes in flight through a tier on the keys of one stripe: what decides
/// whether an answer of the store may still be kept when it arrives.
///
/// A write bumps `generation` and counts itself in `in_flight` before it goes to
/// the store, and bumps `generation` again when it ends (answered, failed or
/// cancelled); a read notes `generation` before it goes to the store. An answer
/// is kept only when, at that moment (inside the copy's per-key compute step),
/// `generation` is still what the operation noted and no *other* write is in
/// flight. So no answer is kept that overlapped another write in any way — one
/// that started before it and ended during it (its end bumped `generation`),
/// one still running, or one that started after it — since the store may have
/// applied that write on either side of it, and the answer could lack it. Keys
/// share stripes, so this only ever errs towards keeping less. (Hand-written:
/// moka's per-key compute orders the copies, but not the store's answers, which
/// arrive in any order.)
#[derive(Default)]
struct Stripe {
    generation: AtomicU64,
    in_flight: AtomicU64,
}

/// A write through a tier, counted in its stripe until dropped (see [`Stripe`]).
pub(crate) struct Writing<'a> {
    stripe: &'a Stripe,
    generation: u64,
    /// When the write began: the age of the copy it may keep counts from here.
    pub(crate) began: Timestamp,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        // The end of a write is a change every overlapping answer must see.
        self.stripe.generation.fetch_add(1, Ordering::SeqCst);
        self.stripe.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A read of one key on its way to the store (see [`Copies::begin_read`]).
pub(crate) struct Reading<'a> {
    stripe: &'a Stripe,
    generation: u64,
    taken: Timestamp,
}

impl Reading<'_> {
    /// Whether no write through the tier overlapped the read so far.
    fn quiet(&self) -> bool {
        self.stripe.generation.load(Ordering::SeqCst) == self.generation
            && self.stripe.in_flight.load(Ordering::SeqCst) == 0
    }
}

/// A copy and when it was taken (when the read or write that made it began).
pub(crate) struct Held<V> {
    pub(crate) value: V,
    pub(crate) taken: Timestamp,
}

/// Copies of `V` by key, bounded, with the stripes that order the store's
/// answers against the writes through the tier.
pub(crate) struct Copies<K, V> {
    held: moka::future::Cache<K, Arc<Held<V>>>,
    stripes: Box<[Stripe]>,
    pub(crate) clock: SharedClock,
}

impl<K, V> Copies<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// At most `capacity` copies, none held in memory past `max_age` (whether one
    /// may be served is the tier's decision, on `clock`).
    pub(crate) fn new(capacity: u64, max_age: Duration, clock: SharedClock) -> Self {
        let held = moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(max_age.max(Duration::from_millis(1)))
            .build();
        Copies {
            held,
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            clock,
        }
    }

    /// How many copies are held (moka's estimate).
    pub(crate) fn len(&self) -> u64 {
        self.held.entry_count()
    }

    fn stripe(&self, key: &K) -> &Stripe {
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::with_seed(0).hash_one(key);
        &self.stripes[(h % STRIPES as u64) as usize]
    }

    /// Starts a write on `key`: counted until the returned guard drops.
    pub(crate) fn writing(&self, key: &K) -> Writing<'_> {
        let stripe = self.stripe(key);
        stripe.in_flight.fetch_add(1, Ordering::SeqCst);
        let generation = stripe.generation.fetch_add(1, Ordering::SeqCst) + 1;
        Writing {
            stripe,
            generation,
            began: self.clock.now(),
        }
    }

    /// Settles `key`'s copy after a write the store answered: keeps `copy` when
    /// no other write overlapped this one (see [`Stripe`]), else drops what is
    /// held. Whether `copy` was kept.
    pub(crate) async fn settle_write(&self, key: &K, w: &Writing<'_>, copy: Option<V>) -> bool {
        let taken = w.began;
        let result = self
            .held
            .entry_by_ref(key)
            .and_compute_with(|old| {
                // Decided inside the key's compute step, so no other write's
                // copy lands between the check and the put.
                let alone = w.stripe.generation.load(Ordering::SeqCst) == w.generation
                    && w.stripe.in_flight.load(Ordering::SeqCst) == 1;
                let op = match copy {
                    Some(value) if alone => Op::Put(Arc::new(Held { value, taken })),
                    _ if old.is_some() => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        )
    }

    /// Notes a read of `key` about to go to the store: what
    /// [`Copies::keep_read`] checks when its answer arrives.
    pub(crate) fn begin_read(&self, key: &K) -> Reading<'_> {
        let stripe = self.stripe(key);
        Reading {
            stripe,
            generation: stripe.generation.load(Ordering::SeqCst),
            taken: self.clock.now(),
        }
    }

    /// Keeps what the store answered a read of `key` begun with `reading`
    /// (`None`: nothing there, so nothing is held), unless a write through the
    /// tier overlapped the read: its answer could then lack that write.
    pub(crate) async fn keep_read(&self, key: &K, reading: Reading<'_>, read: Option<V>) {
        let _ = self
            .held
            .entry_by_ref(key)
            .and_compute_with(|old| {
                let op = match read {
                    Some(value) if reading.quiet() => Op::Put(Arc::new(Held {
                        value,
                        taken: reading.taken,
                    })),
                    None if reading.quiet() && old.is_some() => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    /// [`Copies::begin_read`], `read`, then [`Copies::keep_read`] with the part
    /// of its answer `value_of` picks.
    pub(crate) async fn read_through<T, Fut>(
        &self,
        key: &K,
        read: Fut,
        value_of: impl FnOnce(&T) -> Option<V>,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let reading = self.begin_read(key);
        let answer = read.await?;
        self.keep_read(key, reading, value_of(&answer)).await;
        Ok(answer)
    }

    /// The copy of `key`, servable or not.
    pub(crate) async fn get(&self, key: &K) -> Option<Arc<Held<V>>> {
        self.held.get(key).await
    }

    /// Takes `key`'s copy out (for a write that may change it: nothing is served
    /// while the write runs, so a write whose caller stops waiting leaves no copy
    /// that may predate it).
    pub(crate) async fn take(&self, key: &K) -> Option<Arc<Held<V>>> {
        self.held.remove(key).await
    }

    /// Drops `key`'s copy.
    pub(crate) async fn drop_copy(&self, key: &K) {
        self.held.invalidate(key).await;
    }
}
