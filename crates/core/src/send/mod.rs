//! The send path's rules: what a business service asks to send
//! ([`request`]) and what each answer of WeChat means for the credential,
//! the message and the next step ([`decide`]).

pub mod decide;
pub mod request;

pub use request::{InvalidTemplateData, PreparedSend, SendRequest, SubscribeDefaults};
