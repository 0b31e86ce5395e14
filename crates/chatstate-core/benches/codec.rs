//! The default codec, decided by numbers: bincode against JSON encoding and decoding
//! the typed values the seed systems store — a customer record (the WhatsApp
//! service's cache) and a flow context (Luni's session context) — with the size of
//! each encoding printed beside the timings. `cargo bench -p chatstate-core --bench codec`.

use std::hint::black_box;

use chatstate_core::Codec;
use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct Customer {
    id: u64,
    name: String,
    phone: String,
    email: String,
    plan: String,
    tags: Vec<String>,
    active: bool,
    created_at: i64,
}

#[derive(Clone, Serialize, Deserialize)]
struct FlowContext {
    step: String,
    order_items: Vec<(String, u32, f64)>,
    address: Option<String>,
    notes: Vec<String>,
    retries: u8,
}

fn customer() -> Customer {
    Customer {
        id: 4_242_424,
        name: "Ana Beatriz Souza".into(),
        phone: "+5511999990000".into(),
        email: "ana.souza@example.com".into(),
        plan: "pro".into(),
        tags: vec!["vip".into(), "sp".into(), "whatsapp".into()],
        active: true,
        created_at: 1_763_900_000,
    }
}

fn context() -> FlowContext {
    FlowContext {
        step: "confirm_order".into(),
        order_items: vec![
            ("margherita grande".into(), 1, 59.9),
            ("guaraná 2l".into(), 2, 12.5),
            ("borda recheada".into(), 1, 9.0),
        ],
        address: Some("Rua Augusta, 1500, ap 42, São Paulo".into()),
        notes: vec!["sem cebola".into(), "troco para 100".into()],
        retries: 1,
    }
}

fn bench<T: Serialize + for<'de> Deserialize<'de>>(c: &mut Criterion, what: &str, value: &T) {
    let mut group = c.benchmark_group(format!("codec/{what}"));
    for codec in [Codec::Bincode, Codec::Json] {
        let bytes = codec.encode(value).expect("encodes");
        eprintln!("codec/{what}/{}: {} bytes", codec.name(), bytes.len());
        group.bench_function(format!("encode/{}", codec.name()), |b| {
            b.iter(|| black_box(codec.encode(black_box(value)).expect("encodes")))
        });
        group.bench_function(format!("decode/{}", codec.name()), |b| {
            b.iter(|| black_box(codec.decode::<T>(black_box(&bytes)).expect("decodes")))
        });
    }
    group.finish();
}

fn codecs(c: &mut Criterion) {
    bench(c, "customer", &customer());
    bench(c, "context", &context());
}

criterion_group!(benches, codecs);
criterion_main!(benches);
