//! WeChat's message push (docs/wechat/message-push.md): the pure,
//! database-free core. No I/O and no clock: `now` is handed in.
//!
//! - [`signature`]: `sha1(sorted(parts))`, constant-time verification, the
//!   GET handshake.
//! - [`crypto`]: the EncodingAESKey, AES-256-CBC with the 32-byte PKCS#7 pad
//!   and WeChat's layout, key rotation.
//! - [`document`]: XML or JSON (sniffed) into one generic field map; no
//!   entity expansion.
//! - [`envelope`]: one push opened: modes, signatures, replay window, size.
//! - [`events`]: the typed subscribe events and their dedupe identities.
//!
//! An endpoint needs two calls: [`handshake`] for a GET, [`open`] for a POST
//! (then [`Opened::event`] and [`Opened::dedupe_keys`]).

pub mod crypto;
pub mod document;
pub mod envelope;
pub mod events;
pub mod signature;

#[cfg(test)]
mod tests;

pub use crypto::{AesKey, DecryptError, Decrypted, KeyError, KeyUsed};
pub use document::{DocError, Fields, Format, Node};
pub use envelope::{handshake, open, Limits, Mode, Opened, PushError, PushKeys, PushQuery};
pub use events::{
    ChangeEvent, ChangeItem, EventError, EventHeader, OtherEvent, PopupEvent, PopupItem, PushEvent,
    SentEvent, SentItem, SubscribeStatus,
};
