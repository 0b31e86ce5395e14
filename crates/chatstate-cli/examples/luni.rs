//! Luni (a WhatsApp assistant): a short conversation with a summary, a focus
//! document and a reminder scheduled once, on the backend the environment selects
//! (the file store in `./chatstate-data` by default; `CHATSTATE_BACKEND=memory`,
//! `USE_REDIS=1`). Run: `cargo run -p chatstate-cli --example luni`.
//!
//! The app code is `src/seeds/luni.rs`, included as it is: `chatstate demo
//! --scenario luni` times the same methods.

#[path = "../src/seeds/luni.rs"]
mod luni;

use chatstate::{Config, Stores};
use luni::{Focus, Luni};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stores = Stores::open(&Config::from_env()?).await?;
    let bot = Luni::new(&stores);
    let user = Luni::user("luni-example", "+5511987654321")?;

    let before = bot.load_turn(&user).await?;
    let known = before
        .conversation
        .as_ref()
        .map_or(0, |c| c.session.message_count);
    for (text, reply) in [
        (
            "oi, preciso remarcar minha consulta",
            "Claro! Para qual dia?",
        ),
        ("sexta de manhã", "Sexta às 9h está livre. Confirmo?"),
        ("sim", "Remarcado para sexta às 9h."),
    ] {
        bot.commit_turn(&user, text, reply).await?;
    }
    bot.update_summary(&user, "Remarcou a consulta para sexta às 9h. ".repeat(30))
        .await?;
    bot.set_focus(
        &user,
        &Focus {
            flow: "reagendamento".into(),
            step: 3,
        },
    )
    .await?;

    let turn = bot.load_turn(&user).await?;
    let conversation = turn.conversation.ok_or("the session is missing")?;
    let summary = conversation.session.summary.unwrap_or_default();
    assert_eq!(conversation.session.message_count, known + 6);
    assert!(
        conversation.messages.len() <= 20,
        "the window keeps the newest 20"
    );
    assert!(
        summary.chars().count() <= 400,
        "the summary is cut at 400 characters"
    );
    let (focus, version) = turn.focus.ok_or("the focus document is missing")?;
    println!(
        "luni: {} messages in all, {} in the window, summary {} chars, focus {}/{} (v{version})",
        conversation.session.message_count,
        conversation.messages.len(),
        summary.chars().count(),
        focus.flow,
        focus.step
    );

    // Another instance holds the reminder lock: this one does not schedule it too.
    let held = stores
        .sessions
        .try_lock(&user, "reminder", std::time::Duration::from_secs(30))
        .await?
        .ok_or("the reminder lock is free at first")?;
    assert!(
        !bot.schedule_reminder(&user).await?,
        "locked: not scheduled twice"
    );
    stores.sessions.release_lock(&held).await?;
    assert!(bot.schedule_reminder(&user).await?, "released: scheduled");
    println!(
        "luni: the reminder was refused while another instance held the lock, then scheduled once"
    );
    Ok(())
}
