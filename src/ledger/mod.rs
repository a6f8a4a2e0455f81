//! The rules of the ledger (from `formid-core`) and the send path that
//! applies them.

pub use formid_core::{
    collect, failure, kinds, message, settle, states, subscriptions, template_lint, templates,
};
pub mod send;
