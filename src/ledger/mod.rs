//! The rules of the ledger: what a credential is, what a posted one must look
//! like, what each WeChat errcode means, and the send path that applies them.

pub mod collect;
pub mod failure;
pub mod kinds;
pub mod message;
pub mod send;
pub mod settle;
pub mod states;
pub mod subscriptions;
pub mod template_lint;
pub mod templates;
