//! The rules of the ledger, from `formid-core`: credential kinds, what a
//! posted credential or a send request must look like, what each errcode
//! means, the stored states, the template rules, the sessions' rules, the
//! per-user limits, the broadcasts' rules and the webhooks' rules. The send
//! path that applies them is the `sending` module.

pub use formid_core::{
    broadcast, collect, failure, kinds, ledger as values, message, sessions, settle, states,
    subscriptions, template_lint, templates, user_limits, webhooks,
};
