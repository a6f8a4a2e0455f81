//! The rules of the ledger, from `formid-core`: credential kinds, what a
//! posted credential or a send request must look like, what each errcode
//! means, the stored states, and the template rules. The send path that
//! applies them is [`crate::sending`].

pub use formid_core::{
    collect, failure, kinds, message, settle, states, subscriptions, template_lint, templates,
    webhooks,
};
