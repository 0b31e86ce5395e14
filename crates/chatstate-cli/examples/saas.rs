//! A messaging SaaS: contacts preloaded and found by phone (an alias), a message history
//! invalidated on insert, tool results shared across instances, and the metrics
//! endpoint's hit/miss snapshot. Run: `cargo run -p chatstate-cli --example saas`.
//!
//! The app code is `src/seeds/saas.rs`, included as it is: `chatstate demo
//! --scenario saas` times the same methods.

#[path = "../src/seeds/saas.rs"]
mod saas;

use chatstate::{Config, Stores};
use saas::{Contact, Saas};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stores = Stores::open(&Config::from_env()?).await?;
    let app = Saas::new(&stores);
    let company = 42;
    let contacts: Vec<Contact> = (0..10)
        .map(|id| Contact {
            id,
            company,
            phone: format!("+5521988880{id:03}"),
            name: format!("Contato {id}"),
        })
        .collect();
    app.preload_contacts(&contacts).await?;

    let found = app.contact_by_phone(company, "+5521988880003").await?;
    assert_eq!(found.map(|c| c.id), Some(3), "the phone finds the contact");
    // The contact changes phone: the new one finds it, the old one finds nothing.
    let moved = Contact {
        phone: "+5521977770003".to_string(),
        ..contacts[3].clone()
    };
    app.put_contact(&moved).await?;
    assert_eq!(
        app.contact_by_phone(company, &moved.phone).await?,
        Some(moved)
    );
    assert_eq!(app.contact_by_phone(company, "+5521988880003").await?, None);
    println!("saas: company {}", app.company_name(company).await?);

    let conversation = "example-conversation";
    app.insert_message(conversation, "olá").await?;
    assert_eq!(app.history(conversation).await?.len(), 1);
    app.insert_message(conversation, "tudo bem?").await?;
    // The insert dropped the cached history: the next read sees both messages.
    assert_eq!(app.history(conversation).await?.len(), 2);

    for _ in 0..3 {
        app.tool_result("cep_lookup", "01310-100").await?;
    }
    let m = app.metrics();
    println!(
        "saas: cache {} hits, {} misses ({:.0}% hit rate)",
        m.hits,
        m.misses,
        m.hit_rate * 100.0
    );
    Ok(())
}
