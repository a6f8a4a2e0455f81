//! Opening one push: the query, the body, the signature of its mode, the
//! replay window, the decryption, and the event inside
//! (docs/wechat/message-push.md, "The handshake" to "Retries and
//! duplicates").
//!
//! What is accepted, by `encrypt_type`:
//!
//! * `aes` (safe mode, and compatible mode, which sends the plaintext fields
//!   beside `Encrypt`): the body must carry `Encrypt`, the query
//!   `msg_signature = sha1(sorted(token, timestamp, nonce, Encrypt))`, and the
//!   decrypted document (addressed to this appid) is the only one read; the
//!   plaintext fields of compatible mode are ignored. `signature` is never
//!   enough: it signs nothing of the body.
//! * absent or `raw` (plain mode): `signature` must match. If the body also
//!   carries `Encrypt` and the query a `msg_signature`, that is verified too
//!   and the decrypted document is read instead (as in compatible mode); an
//!   `Encrypt` without `msg_signature` is ignored, since a query without
//!   `encrypt_type`, or with `raw`, means plaintext only
//!   (docs/wechat/message-push.md, "The three modes of a push"). A plain
//!   document is authenticated by nothing but a signature over (token,
//!   timestamp, nonce), so an app can refuse plain pushes altogether
//!   ([`PushKeys::plain_allowed`]).
//! * anything else: refused.
//!
//! The order of checks is size, query, replay window, document, signature,
//! decryption, event; the first failure wins and nothing is decrypted before
//! its signature matched.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::crypto::{try_keys, AesKey, DecryptError, KeyUsed};
use super::document::{parse, DocError, Fields, Format};
use super::events::{EventError, PushEvent};
use super::signature;

/// Largest body accepted by default. Pushes are a few hundred bytes; even a
/// compatible-mode body with many templates stays far below.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// The replay window: a timestamp further than this from now is refused.
pub const DEFAULT_MAX_SKEW_SECS: i64 = 300;

/// The query string of a push, GET or POST. Unknown parameters (`openid`, …)
/// are ignored.
#[derive(Clone, Default, Deserialize)]
pub struct PushQuery {
    /// `sha1(sorted(token, timestamp, nonce))`.
    pub signature: Option<String>,
    /// Unix seconds, as a decimal string.
    pub timestamp: Option<String>,
    /// A random string.
    pub nonce: Option<String>,
    /// GET handshake only: the string to echo.
    pub echostr: Option<String>,
    /// `aes` in safe and compatible mode; absent or `raw` in plain mode.
    pub encrypt_type: Option<String>,
    /// `sha1(sorted(token, timestamp, nonce, Encrypt))`.
    pub msg_signature: Option<String>,
}

impl std::fmt::Debug for PushQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Signatures are not secrets, but they are replayable for 5 minutes.
        f.debug_struct("PushQuery")
            .field("timestamp", &self.timestamp)
            .field("encrypt_type", &self.encrypt_type)
            .finish_non_exhaustive()
    }
}

/// One app's push configuration. `Debug` shows no secret.
#[derive(Clone)]
pub struct PushKeys {
    /// The app's appid: every decrypted message must be addressed to it.
    pub appid: String,
    /// The push Token of the console.
    pub token: SecretString,
    /// The current EncodingAESKey, if encryption is configured.
    pub current: Option<AesKey>,
    /// The previous EncodingAESKey, tried when the current one fails.
    pub previous: Option<AesKey>,
    /// Whether a push without an encrypted part is accepted. Say `false`
    /// once the console is in safe mode: a plain body is covered by no
    /// signature.
    pub plain_allowed: bool,
}

impl std::fmt::Debug for PushKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushKeys")
            .field("appid", &self.appid)
            .field("has_key", &self.current.is_some())
            .field("has_previous_key", &self.previous.is_some())
            .field("plain_allowed", &self.plain_allowed)
            .finish_non_exhaustive()
    }
}

/// Bounds of a push.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body, in bytes.
    pub max_body_bytes: usize,
    /// Largest distance between `timestamp` and now, in seconds.
    pub max_skew_secs: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_skew_secs: DEFAULT_MAX_SKEW_SECS,
        }
    }
}

/// The console's encryption mode, as seen in one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No encrypted part.
    Plain,
    /// Plaintext fields and `Encrypt` side by side.
    Compatible,
    /// Only `Encrypt` (and `ToUserName`).
    Safe,
}

impl Mode {
    /// `"plain"`, `"compatible"` or `"safe"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Compatible => "compatible",
            Mode::Safe => "safe",
        }
    }
}

/// Why a push was refused. Every one is the sender's fault (a 4xx) and
/// nothing of the push may be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The body exceeds [`Limits::max_body_bytes`].
    #[error("the body has {size} bytes, more than the {limit} accepted")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A query parameter the mode needs is absent.
    #[error("query parameter {0} is missing")]
    MissingParam(&'static str),
    /// `timestamp` is not an integer.
    #[error("timestamp is not an integer")]
    BadTimestamp,
    /// `timestamp` is outside the replay window.
    #[error("timestamp is {skew_secs} s away from now")]
    Stale {
        /// `timestamp - now`.
        skew_secs: i64,
    },
    /// `encrypt_type` is neither absent, `raw` nor `aes`.
    #[error("unsupported encrypt_type")]
    EncryptType,
    /// `signature` or `msg_signature` does not match.
    #[error("{0} does not match")]
    Signature(&'static str),
    /// Safe mode without `Encrypt` in the body.
    #[error("encrypt_type=aes but the body has no Encrypt")]
    MissingEncrypt,
    /// An encrypted push for an app without an EncodingAESKey.
    #[error("the push is encrypted but no EncodingAESKey is configured")]
    NoKey,
    /// A plain push for an app that accepts only encrypted ones.
    #[error("plain pushes are refused for this app")]
    PlainRefused,
    /// The body (or the decrypted document) is not a readable document.
    #[error("document: {0}")]
    Document(#[from] DocError),
    /// `Encrypt` could not be opened with any configured key.
    #[error("decrypt: {0}")]
    Decrypt(#[from] DecryptError),
    /// The document is not a valid event.
    #[error("event: {0}")]
    Event(#[from] EventError),
}

impl PushError {
    /// A short machine-readable code for the 4xx answer and the logs.
    pub fn code(&self) -> &'static str {
        match self {
            PushError::TooLarge { .. } => "body_too_large",
            PushError::MissingParam(_) | PushError::BadTimestamp | PushError::EncryptType => {
                "bad_query"
            }
            PushError::Stale { .. } => "stale_timestamp",
            PushError::Signature(_) => "bad_signature",
            PushError::MissingEncrypt | PushError::PlainRefused => "bad_mode",
            PushError::NoKey => "no_encoding_aes_key",
            PushError::Document(_) => "bad_document",
            PushError::Decrypt(_) => "bad_ciphertext",
            PushError::Event(_) => "bad_event",
        }
    }

    /// The HTTP status to answer: 413 for size, 401 for a signature or a
    /// stale timestamp (not WeChat, or a replay), 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            PushError::TooLarge { .. } => 413,
            PushError::Signature(_) | PushError::Stale { .. } => 401,
            _ => 400,
        }
    }
}

/// A verified, decrypted, parsed push.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The mode the push came in.
    pub mode: Mode,
    /// The format of the document read (the decrypted one when encrypted).
    pub format: Format,
    /// Which key decrypted it; `None` for a plain push.
    pub key_used: Option<KeyUsed>,
    /// `timestamp` of the query.
    pub timestamp: i64,
    /// SHA-256 (lowercase hex) of the document read: a second dedupe
    /// identity, equal on every retry of the same push.
    pub body_sha256: String,
    /// The fields of the document read.
    pub fields: Fields,
    /// The event.
    pub event: PushEvent,
}

impl Opened {
    /// The event's per-item identities (see [`PushEvent::dedupe_keys`]).
    pub fn dedupe_keys(&self) -> Vec<String> {
        self.event.dedupe_keys()
    }
}

/// The GET handshake (docs/wechat/message-push.md, "The handshake"): the
/// `echostr` to answer verbatim as
/// `text/plain` if `signature == sha1(sorted(token, timestamp, nonce))`.
///
/// No replay window here: the handshake reveals nothing but the echostr the
/// caller sent, and the console's own example timestamp is old.
pub fn handshake<'q>(token: &SecretString, query: &'q PushQuery) -> Result<&'q str, PushError> {
    let signature = param(&query.signature, "signature")?;
    let timestamp = param(&query.timestamp, "timestamp")?;
    let nonce = param(&query.nonce, "nonce")?;
    let echostr = param(&query.echostr, "echostr")?;
    if !signature::verify_handshake(token.expose_secret(), timestamp, nonce, signature) {
        return Err(PushError::Signature("signature"));
    }
    Ok(echostr)
}

/// Opens a POSTed push: see the module doc for what each mode must carry.
/// `now` is Unix seconds. Pure: no I/O, no clock.
pub fn open(
    keys: &PushKeys,
    query: &PushQuery,
    body: &[u8],
    now: i64,
    limits: &Limits,
) -> Result<Opened, PushError> {
    check_size(body, limits)?;
    let stamp = fresh_stamp(query, now, limits)?;
    let encrypted = aes_requested(query)?;
    let (outer_format, outer) = parse(body)?;
    let token = keys.token.expose_secret();
    let encrypt = outer.text("Encrypt")?.filter(|e| !e.trim().is_empty());

    // `aes` mode is authenticated by `msg_signature` alone; every other mode
    // must carry a good `signature` even when it goes on to the encrypted part.
    if !encrypted {
        verify_plain_signature(token, query, &stamp)?;
    }
    if encrypted || (encrypt.is_some() && query.msg_signature.is_some()) {
        open_encrypted(keys, query, &stamp, &outer, encrypt)
    } else {
        open_plain(keys, &stamp, body, outer_format, outer)
    }
}

/// The `timestamp` and `nonce` of a push's query, which every signature
/// covers: `text` is the timestamp as signed, `secs` as read.
struct Stamp<'q> {
    text: &'q str,
    nonce: &'q str,
    secs: i64,
}

fn check_size(body: &[u8], limits: &Limits) -> Result<(), PushError> {
    if body.len() > limits.max_body_bytes {
        return Err(PushError::TooLarge {
            size: body.len(),
            limit: limits.max_body_bytes,
        });
    }
    Ok(())
}

/// Reads `timestamp` and `nonce` and refuses a timestamp outside the replay
/// window.
fn fresh_stamp<'q>(
    query: &'q PushQuery,
    now: i64,
    limits: &Limits,
) -> Result<Stamp<'q>, PushError> {
    let text = param(&query.timestamp, "timestamp")?;
    let nonce = param(&query.nonce, "nonce")?;
    let secs: i64 = text.trim().parse().map_err(|_| PushError::BadTimestamp)?;
    let skew_secs = secs.saturating_sub(now);
    if skew_secs.saturating_abs() > limits.max_skew_secs {
        return Err(PushError::Stale { skew_secs });
    }
    Ok(Stamp { text, nonce, secs })
}

/// Whether `encrypt_type` asks for safe or compatible mode (`aes`) rather
/// than plain mode (absent or `raw`); any other value is refused.
fn aes_requested(query: &PushQuery) -> Result<bool, PushError> {
    match query.encrypt_type.as_deref().map(str::trim) {
        None | Some("") | Some("raw") => Ok(false),
        Some("aes") => Ok(true),
        Some(_) => Err(PushError::EncryptType),
    }
}

fn verify_plain_signature(token: &str, query: &PushQuery, stamp: &Stamp) -> Result<(), PushError> {
    let signature = param(&query.signature, "signature")?;
    if !signature::verify_handshake(token, stamp.text, stamp.nonce, signature) {
        return Err(PushError::Signature("signature"));
    }
    Ok(())
}

/// Reads the body itself as the push, if this app accepts plain pushes.
fn open_plain(
    keys: &PushKeys,
    stamp: &Stamp,
    body: &[u8],
    format: Format,
    fields: Fields,
) -> Result<Opened, PushError> {
    if !keys.plain_allowed {
        return Err(PushError::PlainRefused);
    }
    let event = PushEvent::from_fields(&fields)?;
    Ok(Opened {
        mode: Mode::Plain,
        format,
        key_used: None,
        timestamp: stamp.secs,
        body_sha256: sha256_hex(body),
        fields,
        event,
    })
}

/// Verifies `msg_signature` over `Encrypt`, then decrypts it and reads the
/// decrypted document as the push; `outer` only tells safe from compatible
/// mode.
fn open_encrypted(
    keys: &PushKeys,
    query: &PushQuery,
    stamp: &Stamp,
    outer: &Fields,
    encrypt: Option<&str>,
) -> Result<Opened, PushError> {
    let encrypt = encrypt.ok_or(PushError::MissingEncrypt)?;
    let msg_signature = param(&query.msg_signature, "msg_signature")?;
    let token = keys.token.expose_secret();
    if !signature::verify(&[token, stamp.text, stamp.nonce, encrypt], msg_signature) {
        return Err(PushError::Signature("msg_signature"));
    }
    let current = keys.current.as_ref().ok_or(PushError::NoKey)?;
    let (decrypted, key_used) = try_keys(current, keys.previous.as_ref(), encrypt, &keys.appid)?;
    let (format, fields) = parse(&decrypted.message)?;
    let event = PushEvent::from_fields(&fields)?;
    Ok(Opened {
        mode: encrypted_mode(outer),
        format,
        key_used: Some(key_used),
        timestamp: stamp.secs,
        body_sha256: sha256_hex(&decrypted.message),
        fields,
        event,
    })
}

/// Compatible mode sends plaintext fields beside `Encrypt`; safe mode sends
/// only `Encrypt` and `ToUserName`.
fn encrypted_mode(outer: &Fields) -> Mode {
    let plaintext_beside = outer
        .keys()
        .iter()
        .any(|k| !matches!(*k, "Encrypt" | "ToUserName"));
    if plaintext_beside {
        Mode::Compatible
    } else {
        Mode::Safe
    }
}

fn param<'q>(value: &'q Option<String>, name: &'static str) -> Result<&'q str, PushError> {
    value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or(PushError::MissingParam(name))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
