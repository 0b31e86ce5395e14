//! Luni, a WhatsApp assistant (seed 002): a session per user with the last 20
//! messages and a summary cut at 400 characters (the store's settings), a focus
//! document per user (what the bot is working on), and a lock so a reminder is
//! never scheduled twice.
//!
//! Written as an app would use `chatstate`, and shared as it is by the `luni`
//! example and `chatstate demo --scenario luni` (which times each method).

use chatstate::{
    Codec, Expected, FocusKey, FocusStore, FocusStoreExt, LoadedSession, NewMessage, PutMode,
    Result, SessionKey, SessionPatch, SessionStore, Stores,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// What the bot is focused on for one user (a flow and its step).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Focus {
    /// The flow, e.g. `"order"`.
    pub flow: String,
    /// The step within it.
    pub step: u32,
}

/// What a turn starts from: the conversation and the focus.
#[derive(Debug)]
pub struct TurnContext {
    /// The session and its recent messages (`None` for a new user).
    pub conversation: Option<LoadedSession>,
    /// The focus document and its version.
    pub focus: Option<(Focus, u64)>,
}

/// The Luni bot's memory.
#[derive(Clone)]
pub struct Luni {
    sessions: Arc<dyn SessionStore>,
    focus: Arc<dyn FocusStore>,
    codec: Codec,
}

impl Luni {
    /// The bot over the configured stores.
    pub fn new(stores: &Stores) -> Luni {
        Luni {
            sessions: stores.sessions.clone(),
            focus: stores.focus.clone(),
            codec: stores.codec,
        }
    }

    /// The session key of a WhatsApp user of `tenant`.
    pub fn user(tenant: &str, phone: &str) -> Result<SessionKey> {
        SessionKey::new(tenant, "whatsapp", phone)
    }

    fn focus_key(user: &SessionKey) -> Result<FocusKey> {
        FocusKey::new(format!("{}:{}", user.tenant(), user.user()), "flow")
    }

    /// Reads what a turn needs before the model is called.
    pub async fn load_turn(&self, user: &SessionKey) -> Result<TurnContext> {
        let conversation = self.sessions.load(user).await?;
        let focus = self
            .focus
            .get_value::<Focus>(&Self::focus_key(user)?, self.codec)
            .await?;
        Ok(TurnContext {
            conversation,
            focus,
        })
    }

    /// Stores the user's message and the reply, in one atomic append (the window
    /// keeps the newest 20, the TTL slides). Returns the conversation's message count.
    pub async fn commit_turn(&self, user: &SessionKey, text: &str, reply: &str) -> Result<u64> {
        let receipt = self
            .sessions
            .append_messages(
                user,
                vec![NewMessage::user(text), NewMessage::assistant(reply)],
            )
            .await?;
        Ok(receipt.message_count)
    }

    /// Replaces the summary (the store cuts it at `CHATSTATE_SUMMARY_MAX_CHARS`,
    /// 400 by default, on a character boundary).
    pub async fn update_summary(&self, user: &SessionKey, summary: String) -> Result<()> {
        self.sessions
            .update(user, SessionPatch::new().summary(summary), Expected::Any)
            .await
            .map(drop)
    }

    /// Moves the user's focus to `focus`.
    pub async fn set_focus(&self, user: &SessionKey, focus: &Focus) -> Result<u64> {
        self.focus
            .put_value(
                &Self::focus_key(user)?,
                focus,
                PutMode::Overwrite,
                None,
                self.codec,
            )
            .await
    }

    /// Schedules the user's reminder unless another instance holds the lock:
    /// `true` when this call scheduled it.
    pub async fn schedule_reminder(&self, user: &SessionKey) -> Result<bool> {
        let Some(lease) = self
            .sessions
            .try_lock(user, "reminder", Duration::from_secs(30))
            .await?
        else {
            return Ok(false);
        };
        // The scheduling itself (a job queue) would go here, tagged with
        // `lease.fence` so a stale holder's job can be told apart.
        self.sessions.release_lock(&lease).await?;
        Ok(true)
    }
}
