//! `chatstate demo`: the seed systems' workloads ([`crate::seeds`]) run by N
//! simulated users for a while, each call timed.
//!
//! ## What is measured, and how
//!
//! - **Latency**: the wall time of each app call (a method of a seed module), per
//!   operation; p50 and p99 over every call of the run.
//! - **Round trips** (Redis only): each simulated user is an app instance of its
//!   own — its own `Stores::open`, hence its own connection and its own
//!   [`RoundTrips`](chatstate::RoundTrips) counter — and runs its calls one after
//!   the other, so the counter's change across a call is exactly that call's round
//!   trips (a flush or a write-back included), not another user's.
//! - **Naive**: what a client that sends one plain Redis command per call (no
//!   pipeline, no script, no local tier, no batching) would send for the same
//!   work, counted per call by the rule written beside each call below (e.g. an
//!   append = `RPUSH` + `LTRIM` + `EXPIRE` list + `HSET` + `EXPIRE` hash = 5; a
//!   customer batch = one `MGET`, plus, when some were missing, one `MSET` and an
//!   `EXPIRE` per missing key; a counter increment = one `HINCRBY`). The rules
//!   follow what the seed systems' notes describe, and lean towards the naive
//!   client where there is a choice (a focus document is one `SET EX`, not a
//!   compare-and-set).
//!
//! The data stays in the configured backend under the tenants `luni`, `saas`, ...
//! (inspect it with `chatstate list sessions --tenant luni`, remove it with
//! `chatstate purge`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chatstate::{BackendKind, Config, RedisStore, Result, RunId, Stores};
use serde::Serialize;

use crate::seeds::{lia, luni, saas, streaming, whatsapp};

/// A seed system's workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Luni: sessions, summary, focus documents, a reminder lock.
    Luni,
    /// LIA: a tiered assistants cache, threads, batched counters.
    Lia,
    /// The messaging SaaS: entity caches, invalidated history, tool results.
    Saas,
    /// The WhatsApp service: customers by `get_many_or_load` in batches of 100.
    Whatsapp,
    /// Streamed replies through the coalescing writer.
    Streaming,
    /// Every scenario above, one after the other.
    All,
}

impl Scenario {
    /// The scenarios `self` stands for.
    pub fn expand(self) -> Vec<Scenario> {
        match self {
            Scenario::All => vec![
                Scenario::Luni,
                Scenario::Lia,
                Scenario::Saas,
                Scenario::Whatsapp,
                Scenario::Streaming,
            ],
            one => vec![one],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Luni => "luni",
            Scenario::Lia => "lia",
            Scenario::Saas => "saas",
            Scenario::Whatsapp => "whatsapp",
            Scenario::Streaming => "streaming",
            Scenario::All => "all",
        }
    }
}

/// One operation's figures.
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    /// The operation (the app call).
    pub name: String,
    /// Calls made.
    pub count: u64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Round trips chatstate sent for all the calls (Redis only).
    pub round_trips: Option<u64>,
    /// Commands a one-command-per-call client would send for the same calls.
    pub naive_round_trips: u64,
}

/// One scenario's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    /// The scenario.
    pub scenario: Scenario,
    /// Simulated users (each an instance of its own on Redis).
    pub users: usize,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Per operation.
    pub operations: Vec<OpReport>,
    /// Cache hit rate of the scenario's reads, 0.0–1.0, when it has a cache.
    pub cache_hit_rate: Option<f64>,
    /// Counter batches flushed (LIA).
    pub counter_batches_flushed: Option<u64>,
    /// Anything else worth a line (e.g. chunks written by the coalescing writer).
    pub notes: Vec<String>,
}

#[derive(Default)]
struct Acc {
    samples_ns: Vec<u64>,
    round_trips: u64,
    naive: u64,
}

/// Collects timings per operation, from every user task.
#[derive(Default)]
struct Meter {
    ops: Mutex<BTreeMap<&'static str, Acc>>,
}

impl Meter {
    fn record(&self, op: &'static str, elapsed: Duration, round_trips: u64, naive: u64) {
        let mut ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        let acc = ops.entry(op).or_default();
        acc.samples_ns
            .push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        acc.round_trips += round_trips;
        acc.naive += naive;
    }

    fn report(&self, redis: bool) -> Vec<OpReport> {
        let mut ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        ops.iter_mut()
            .map(|(name, acc)| {
                acc.samples_ns.sort_unstable();
                OpReport {
                    name: name.to_string(),
                    count: acc.samples_ns.len() as u64,
                    p50_us: percentile(&acc.samples_ns, 0.50) / 1e3,
                    p99_us: percentile(&acc.samples_ns, 0.99) / 1e3,
                    round_trips: redis.then_some(acc.round_trips),
                    naive_round_trips: acc.naive,
                }
            })
            .collect()
    }
}

/// The `q` quantile of sorted samples (nearest rank).
pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

/// One simulated user's app instance: its stores, and on Redis the store whose
/// round trips it counts.
struct Instance {
    stores: Stores,
    redis: Option<RedisStore>,
    meter: Arc<Meter>,
}

impl Instance {
    fn round_trips(&self) -> u64 {
        self.redis
            .as_ref()
            .map_or(0, |r| r.round_trips().round_trips)
    }

    /// Runs `call`, recording its latency, its round trips and `naive(&result)`.
    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T>>,
        naive: impl FnOnce(&T) -> u64,
    ) -> Result<T> {
        let before = self.round_trips();
        let started = Instant::now();
        let out = call.await?;
        let elapsed = started.elapsed();
        let sent = self.round_trips() - before;
        self.meter.record(op, elapsed, sent, naive(&out));
        Ok(out)
    }
}

/// What `chatstate demo` runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Simulated users per scenario.
    pub users: usize,
    /// How long each scenario runs.
    pub duration: Duration,
}

/// Runs `options.scenarios` on the backend `config` selects; `progress` is told
/// each scenario as it starts (its name and duration).
pub async fn run(
    config: &Config,
    options: &DemoOptions,
    mut progress: impl FnMut(Scenario, Duration),
) -> Result<Vec<ScenarioReport>> {
    let shared = Stores::open(config).await?;
    let mut reports = Vec::new();
    for scenario in &options.scenarios {
        progress(*scenario, options.duration);
        reports.push(run_one(config, &shared, *scenario, options).await?);
    }
    Ok(reports)
}

/// The stores of user `n`'s instance: on Redis a new `Stores` (a connection and a
/// round-trip counter of its own); memory and file share one (a second memory
/// store would not see the first one's data).
async fn instance(config: &Config, shared: &Stores, meter: &Arc<Meter>) -> Result<Instance> {
    let stores = if shared.backend == BackendKind::Redis && shared.redis_store().is_some() {
        Stores::open(config).await?
    } else {
        shared.clone()
    };
    Ok(Instance {
        redis: stores.redis_store().cloned(),
        stores,
        meter: meter.clone(),
    })
}

async fn run_one(
    config: &Config,
    shared: &Stores,
    scenario: Scenario,
    options: &DemoOptions,
) -> Result<ScenarioReport> {
    let meter = Arc::new(Meter::default());
    let mut instances = Vec::with_capacity(options.users);
    for _ in 0..options.users.max(1) {
        instances.push(instance(config, shared, &meter).await?);
    }
    let started = Instant::now();
    let deadline = started + options.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (user, inst) in instances.into_iter().enumerate() {
        let config = config.clone();
        tasks.spawn(async move {
            match scenario {
                Scenario::Luni => luni_user(&inst, user, deadline).await,
                Scenario::Lia => lia_user(&inst, &config, user, deadline).await,
                Scenario::Saas => saas_user(&inst, user, deadline).await,
                Scenario::Whatsapp => whatsapp_user(&inst, user, deadline).await,
                Scenario::Streaming | Scenario::All => streaming_user(&inst, user, deadline).await,
            }
        });
    }
    let mut extras = Extras::default();
    while let Some(joined) = tasks.join_next().await {
        let user = joined.map_err(|e| {
            chatstate::Error::new(
                chatstate::ErrorKind::Internal,
                format!("a demo user task ended: {e}"),
            )
        })??;
        extras.add(user);
    }
    Ok(ScenarioReport {
        scenario,
        users: options.users.max(1),
        seconds: started.elapsed().as_secs_f64(),
        operations: meter.report(shared.redis_store().is_some()),
        cache_hit_rate: extras.hit_rate(),
        counter_batches_flushed: (scenario == Scenario::Lia).then_some(extras.batches),
        notes: extras.notes(),
    })
}

/// What a user task reports besides its timings.
#[derive(Default)]
struct Extras {
    hits: u64,
    reads: u64,
    batches: u64,
    chunk_appends: u64,
    chunk_writes: u64,
}

impl Extras {
    fn add(&mut self, other: Extras) {
        self.hits += other.hits;
        self.reads += other.reads;
        self.batches += other.batches;
        self.chunk_appends += other.chunk_appends;
        self.chunk_writes += other.chunk_writes;
    }

    fn notes(&self) -> Vec<String> {
        if self.chunk_appends == 0 {
            return Vec::new();
        }
        vec![format!(
            "coalescing writer: {} token appends written as {} chunks",
            self.chunk_appends, self.chunk_writes
        )]
    }

    fn hit_rate(&self) -> Option<f64> {
        (self.reads > 0).then(|| self.hits as f64 / self.reads as f64)
    }
}

fn phone(user: usize) -> String {
    format!("+55119{user:08}")
}

async fn luni_user(inst: &Instance, user: usize, deadline: Instant) -> Result<Extras> {
    let bot = luni::Luni::new(&inst.stores);
    let key = luni::Luni::user("luni", &phone(user))?;
    let mut turn = 0u64;
    // At least one round, however late the preload or the machine.
    let mut first = true;
    while std::mem::take(&mut first) || Instant::now() < deadline {
        // naive: HGETALL session + LRANGE window + GET focus.
        inst.timed("luni.load_turn", bot.load_turn(&key), |_| 3)
            .await?;
        let text = format!("mensagem {turn}: quero remarcar a consulta");
        // naive: RPUSH (both messages) + LTRIM + EXPIRE list + HSET + EXPIRE hash.
        inst.timed(
            "luni.commit_turn",
            bot.commit_turn(&key, &text, "Claro! Para quando?"),
            |_| 5,
        )
        .await?;
        if turn % 5 == 4 {
            let summary = "O usuário quer remarcar a consulta. ".repeat(20);
            // naive: HSET summary + EXPIRE.
            inst.timed(
                "luni.update_summary",
                bot.update_summary(&key, summary),
                |_| 2,
            )
            .await?;
            let focus = luni::Focus {
                flow: "reagendamento".into(),
                step: (turn / 5) as u32,
            };
            // naive: SET EX of the document.
            inst.timed("luni.set_focus", bot.set_focus(&key, &focus), |_| 1)
                .await?;
        }
        if turn.is_multiple_of(10) {
            // naive: SET NX PX, then GET + DEL to release.
            inst.timed("luni.schedule_reminder", bot.schedule_reminder(&key), |_| 3)
                .await?;
        }
        turn += 1;
        // Memory calls never wait: let the other users' tasks run.
        tokio::task::yield_now().await;
    }
    Ok(Extras::default())
}

async fn lia_user(
    inst: &Instance,
    config: &Config,
    user: usize,
    deadline: Instant,
) -> Result<Extras> {
    let lia = lia::Lia::new(&inst.stores, config)?;
    let mut turn = 0u64;
    let mut mine: Vec<String> = Vec::new();
    // At least one round, however late the preload or the machine.
    let mut first = true;
    while std::mem::take(&mut first) || Instant::now() < deadline {
        let loads = lia.cache_stats().loads;
        // naive: GET, plus SET EX when the database was read.
        let assistant = inst
            .timed("lia.assistant", lia.assistant((turn % 20) as u32), |_| {
                1 + (lia.cache_stats().loads - loads)
            })
            .await?;
        let id = format!("u{user}-t{}", turn % 10);
        if mine.len() < 10 {
            mine.push(id.clone());
        }
        let thread = lia::Thread {
            id,
            assistant: assistant.id,
            last: vec!["oi".into(), "olá, como posso ajudar?".into()],
        };
        let meta = lia::ThreadMeta {
            messages: turn,
            tokens: turn * 120,
        };
        // naive: SET EX thread + SET EX metadata.
        inst.timed("lia.save_thread", lia.save_thread(&thread, &meta), |_| 2)
            .await?;
        // naive: one MGET.
        inst.timed("lia.read_threads", lia.threads(&mine), |_| 1)
            .await?;
        // naive: HINCRBY messages + HINCRBY ai_responses.
        inst.timed(
            "lia.count_usage",
            async { lia.count_usage(&assistant) },
            |_| 2,
        )
        .await?;
        turn += 1;
        // Memory calls never wait: let the other users' tasks run.
        tokio::task::yield_now().await;
    }
    // The minute timer's flush, now (the run is shorter than a minute).
    // naive: nothing more (each increment was sent already).
    inst.timed("lia.flush_counters", lia.flush_counters(), |_| 0)
        .await?;
    let stats = lia.cache_stats();
    Ok(Extras {
        hits: stats.local_hits + stats.remote_hits,
        reads: stats.local_hits + stats.local_misses,
        batches: lia.batches_flushed(),
        ..Extras::default()
    })
}

async fn saas_user(inst: &Instance, user: usize, deadline: Instant) -> Result<Extras> {
    let app = saas::Saas::new(&inst.stores);
    let company = (user % 3) as u64 + 1;
    if user < 3 {
        let contacts: Vec<saas::Contact> = (0..100)
            .map(|id| saas::Contact {
                id,
                company,
                phone: format!("+55219{id:08}"),
                name: format!("Contato {id}"),
            })
            .collect();
        // naive: SET EX per contact and per phone index entry (chatstate: one
        // set_with_aliases per contact, concurrently).
        inst.timed(
            "saas.preload_contacts",
            app.preload_contacts(&contacts),
            |_| 200,
        )
        .await?;
    }
    let mut turn = 0u64;
    let conversation = format!("{company}:{user}");
    // At least one round, however late the preload or the machine.
    let mut first = true;
    while std::mem::take(&mut first) || Instant::now() < deadline {
        // Each cached read below: naive GET, plus SET EX on a miss.
        let misses = || app.metrics().misses;
        let m = misses();
        inst.timed("saas.company", app.company_name(company), |_| {
            1 + (misses() - m)
        })
        .await?;
        let m = misses();
        let phone = format!("+55219{:08}", (turn * 7 + user as u64) % 100);
        // naive: GET phone index + GET contact (chatstate: one get_by_alias).
        inst.timed(
            "saas.contact_by_phone",
            app.contact_by_phone(company, &phone),
            |_| 2 + (misses() - m),
        )
        .await?;
        let m = misses();
        inst.timed("saas.history", app.history(&conversation), |_| {
            1 + (misses() - m)
        })
        .await?;
        if turn % 3 == 2 {
            // naive: DEL of the cached history.
            inst.timed(
                "saas.insert_message",
                app.insert_message(&conversation, "nova mensagem"),
                |_| 1,
            )
            .await?;
        }
        let m = misses();
        let input = (turn % 5).to_string();
        inst.timed(
            "saas.tool_result",
            app.tool_result("cep_lookup", &input),
            |_| 1 + (misses() - m),
        )
        .await?;
        turn += 1;
        // Memory calls never wait: let the other users' tasks run.
        tokio::task::yield_now().await;
    }
    let m = app.metrics();
    Ok(Extras {
        hits: m.hits,
        reads: m.hits + m.misses,
        ..Extras::default()
    })
}

async fn whatsapp_user(inst: &Instance, user: usize, deadline: Instant) -> Result<Extras> {
    let customers = whatsapp::Customers::new(&inst.stores)?;
    let mut turn = 0u64;
    // At least one round, however late the preload or the machine.
    let mut first = true;
    while std::mem::take(&mut first) || Instant::now() < deadline {
        // 100 ids from a pool of 2,000 customers: early batches miss, later ones hit.
        let seed = user as u64 * 1_000 + turn * 101;
        let ids: Vec<u64> = (0..whatsapp::BATCH as u64)
            .map(|k| (seed + k * 19) % 2_000)
            .collect();
        let fetched = customers.fetched();
        // naive: one MGET; when some were missing, one MSET and an EXPIRE per
        // missing key (MSET takes no TTL).
        let got = inst
            .timed(
                "whatsapp.customers_batch",
                customers.get_many(&ids),
                |_| match customers.fetched() - fetched {
                    0 => 1,
                    missing => 2 + missing,
                },
            )
            .await?;
        if got.len() != ids.len() {
            return Err(chatstate::Error::new(
                chatstate::ErrorKind::Internal,
                "a customer batch came back short",
            ));
        }
        turn += 1;
        // Memory calls never wait: let the other users' tasks run.
        tokio::task::yield_now().await;
    }
    Ok(Extras {
        hits: customers.asked() - customers.fetched(),
        reads: customers.asked(),
        ..Extras::default()
    })
}

async fn streaming_user(inst: &Instance, user: usize, deadline: Instant) -> Result<Extras> {
    let streamer = streaming::Streamer::new(&inst.stores);
    // A reply of 200 tokens of 1–5 characters (the seed's "real problem").
    let words = [
        "Olá", ", ", "tudo", " bem", "?", " Seu", " pedido", " saiu", ".", " ",
    ];
    let tokens: Vec<&str> = (0..200).map(|i| words[i % words.len()]).collect();
    let mut turn = 0u64;
    // At least one round, however late the preload or the machine.
    let mut first = true;
    while std::mem::take(&mut first) || Instant::now() < deadline {
        let run = RunId::new(format!(
            "demo-{user}-{turn}-{}",
            uuid::Uuid::new_v4().simple()
        ))?;
        // naive: RPUSH + PUBLISH + EXPIRE per token, + the finish marker.
        inst.timed(
            "streaming.stream_200_tokens",
            streamer.stream(&run, &tokens),
            |_| 3 * tokens.len() as u64 + 1,
        )
        .await?;
        // naive: LRANGE from 0.
        let text = inst
            .timed("streaming.read_reply", streamer.read(&run), |_| 1)
            .await?;
        if text.len() != tokens.iter().map(|t| t.len()).sum::<usize>() {
            return Err(chatstate::Error::new(
                chatstate::ErrorKind::Internal,
                "a streamed reply read back different",
            ));
        }
        turn += 1;
        // Memory calls never wait: let the other users' tasks run.
        tokio::task::yield_now().await;
    }
    Ok(Extras {
        chunk_appends: turn * tokens.len() as u64,
        chunk_writes: streamer.writes(),
        ..Extras::default()
    })
}

/// The reports as text: one table per scenario.
pub fn render(reports: &[ScenarioReport], backend: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "backend: {backend}");
    for r in reports {
        let _ = writeln!(
            out,
            "\n== {} — {} users, {:.1} s",
            r.scenario.name(),
            r.users,
            r.seconds
        );
        let _ = writeln!(
            out,
            "{:<38} {:>8} {:>10} {:>10} {:>12} {:>12}",
            "operation", "count", "p50 µs", "p99 µs", "round trips", "naive"
        );
        let (mut rt_total, mut naive_total) = (0u64, 0u64);
        for op in &r.operations {
            naive_total += op.naive_round_trips;
            rt_total += op.round_trips.unwrap_or(0);
            let rt = op
                .round_trips
                .map_or_else(|| "—".to_string(), |n| n.to_string());
            let _ = writeln!(
                out,
                "{:<38} {:>8} {:>10.1} {:>10.1} {:>12} {:>12}",
                op.name, op.count, op.p50_us, op.p99_us, rt, op.naive_round_trips
            );
        }
        if r.operations.iter().any(|o| o.round_trips.is_some()) {
            let _ = writeln!(
                out,
                "total round trips: chatstate {rt_total}, naive client {naive_total} ({:.1}x fewer)",
                naive_total as f64 / rt_total.max(1) as f64
            );
        } else {
            let _ = writeln!(
                out,
                "a naive one-command-per-call Redis client would send {naive_total} commands for this work (round trips are counted on Redis: USE_REDIS=1)"
            );
        }
        if let Some(h) = r.cache_hit_rate {
            let _ = writeln!(out, "cache hit rate: {:.1}%", h * 100.0);
        }
        if let Some(b) = r.counter_batches_flushed {
            let _ = writeln!(out, "counter batches flushed: {b}");
        }
        for note in &r.notes {
            let _ = writeln!(out, "{note}");
        }
    }
    out
}
