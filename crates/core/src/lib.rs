//! The domain of formid-gateway: what a credential is and what WeChat allows
//! for each kind, every stored state, what each WeChat errcode means for a
//! credential and a message, what a posted credential, send request, prompt
//! result or template value must look like, and the value types the send
//! path and the storage exchange.
//!
//! Nothing here can reach a database, the network, an async runtime or the
//! clock: every time is handed in as Unix milliseconds. The gateway's
//! features apply these rules; its storage records what they decide.

pub mod broadcast;
pub mod collect;
pub mod failure;
pub mod kinds;
pub mod ledger;
pub mod message;
pub mod nulls;
pub mod proxy;
pub mod send;
pub mod sessions;
pub mod settle;
pub mod states;
pub mod subscriptions;
pub mod template_lint;
pub mod templates;
pub mod user_limits;
pub mod webhooks;
