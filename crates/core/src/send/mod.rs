//! The send path's rules: what a business service asks to send
//! ([`request`]), what each answer of WeChat means for the credential, the
//! message and the next step ([`decide`]), and the rules of a run around its
//! calls ([`run`]).

pub mod decide;
pub mod request;
pub mod run;

pub use request::{InvalidTemplateData, PreparedSend, SendRequest, SubscribeDefaults};
