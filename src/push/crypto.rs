//! The `Encrypt` field of a push (docs/wechat/message-push.md,
//! "Decrypting"): AES-256-CBC,
//! key = `base64(EncodingAESKey + "=")`, IV = the key's first 16 bytes,
//! PKCS#7 padding to **32** bytes, plaintext laid out as
//! `16 random bytes | u32 BE length | message | appid`.
//!
//! The cipher is RustCrypto's (`aes` + `cbc`, no padding); only the 32-byte
//! unpad and the layout are written here. There is no MAC: callers verify the
//! `msg_signature` over the ciphertext before decrypting (so nobody without
//! the token can probe the padding check).

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::Engine;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// WeChat pads to the key size, not to the AES block
/// (docs/wechat/message-push.md, "Decrypting", step 3).
pub const PAD_BLOCK: usize = 32;
/// Length of an EncodingAESKey.
pub const ENCODING_AES_KEY_LEN: usize = 43;
const RANDOM_LEN: usize = 16;
const HEADER_LEN: usize = RANDOM_LEN + 4;
const AES_BLOCK: usize = 16;
/// Longest appid echoed in an error (it comes from a decrypted buffer).
const SHOWN_APPID_MAX: usize = 64;

/// 43 chars + "=" leave 2 unused bits, which real keys set
/// (docs/wechat/message-push.md, "Decrypting"): the decoder must ignore them.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Why an EncodingAESKey was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 43 characters.
    #[error("an EncodingAESKey has 43 characters, this one has {0}")]
    Length(usize),
    /// A character outside `[A-Za-z0-9]`.
    #[error("an EncodingAESKey uses only A-Z, a-z and 0-9")]
    Alphabet,
}

/// Why an `Encrypt` value could not be opened. None of them says anything
/// about the key or the plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Not standard, padded base64.
    #[error("Encrypt is not valid base64")]
    Base64,
    /// The ciphertext is empty, too short, or not whole AES blocks.
    #[error("ciphertext of {0} bytes is not a positive multiple of 16 of at least 32")]
    CiphertextLength(usize),
    /// The last byte is not a pad in 1..=32, or the pad bytes differ: the
    /// key is wrong or the ciphertext was altered.
    #[error("bad PKCS#7 padding (block 32)")]
    Padding,
    /// The 4-byte length claims more than the plaintext holds.
    #[error("length prefix {declared} exceeds the {available} bytes available")]
    LengthPrefix {
        /// What the prefix says.
        declared: u64,
        /// What follows the prefix.
        available: usize,
    },
    /// The appid after the message is not the expected one.
    #[error("the message is for appid {found:?}, not {expected:?}")]
    AppidMismatch {
        /// The appid configured for the endpoint.
        expected: String,
        /// What the plaintext carries (lossy UTF-8, cut at 64 chars).
        found: String,
    },
}

/// A 32-byte AES key decoded from an EncodingAESKey. Its `Debug` prints
/// nothing of the key.
#[derive(Clone, PartialEq, Eq)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

/// Which of the configured keys opened a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsed {
    /// The current EncodingAESKey.
    Current,
    /// The previous one (the key was rotated and WeChat still uses the old).
    Previous,
}

impl KeyUsed {
    /// `"current"` or `"previous"`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUsed::Current => "current",
            KeyUsed::Previous => "previous",
        }
    }
}

/// An opened `Encrypt` value.
#[derive(Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The 16 random bytes that lead the plaintext.
    pub random: [u8; 16],
    /// The message: the inner XML or JSON document.
    pub message: Vec<u8>,
    /// The appid that trails the message (checked by [`AesKey::decrypt_for`]).
    pub appid: String,
}

impl std::fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The message carries openids: print only its size.
        f.debug_struct("Decrypted")
            .field("message_len", &self.message.len())
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

impl AesKey {
    /// Decodes a 43-char EncodingAESKey (`[A-Za-z0-9]{43}`), ignoring the
    /// 2 trailing bits the way WeChat's own decoders do.
    pub fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<Self, KeyError> {
        let chars = encoding_aes_key.chars().count();
        if chars != ENCODING_AES_KEY_LEN {
            return Err(KeyError::Length(chars));
        }
        if !encoding_aes_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(KeyError::Alphabet);
        }
        let bytes = LENIENT
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| KeyError::Alphabet)?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Length(ENCODING_AES_KEY_LEN))?;
        Ok(Self(key))
    }

    /// The raw 32-byte key.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }

    /// Opens a base64 `Encrypt` value, without checking the appid (see
    /// [`AesKey::decrypt_for`]).
    pub fn decrypt(&self, encrypt_b64: &str) -> Result<Decrypted, DecryptError> {
        let mut buf = STANDARD
            .decode(encrypt_b64.trim())
            .map_err(|_| DecryptError::Base64)?;
        if buf.len() < PAD_BLOCK || buf.len() % AES_BLOCK != 0 {
            return Err(DecryptError::CiphertextLength(buf.len()));
        }
        let len = buf.len();
        let plain = Aes256CbcDec::new(&self.0.into(), &self.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            // Unreachable: the length is whole blocks.
            .map_err(|_| DecryptError::CiphertextLength(len))?;
        let full = pkcs7_unpad(plain)?;
        parse_layout(full)
    }

    /// Opens `encrypt_b64` and checks that it is addressed to `appid`.
    pub fn decrypt_for(&self, encrypt_b64: &str, appid: &str) -> Result<Decrypted, DecryptError> {
        let opened = self.decrypt(encrypt_b64)?;
        if opened.appid != appid {
            return Err(DecryptError::AppidMismatch {
                expected: appid.to_owned(),
                found: opened.appid.chars().take(SHOWN_APPID_MAX).collect(),
            });
        }
        Ok(opened)
    }

    /// Encrypts `message` for `appid` with the given 16 random bytes (fixed
    /// in tests, random otherwise), as base64.
    pub fn encrypt(&self, random: &[u8; 16], message: &[u8], appid: &str) -> String {
        let len = u32::try_from(message.len()).expect("a push message is far below 4 GiB");
        let mut buf = Vec::with_capacity(HEADER_LEN + message.len() + appid.len() + PAD_BLOCK);
        buf.extend_from_slice(random);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(message);
        buf.extend_from_slice(appid.as_bytes());
        pkcs7_pad(&mut buf);
        let n = buf.len();
        let cipher = Aes256CbcEnc::new(&self.0.into(), &self.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut buf, n)
            .expect("the buffer is padded to whole blocks");
        STANDARD.encode(cipher)
    }
}

/// Opens `encrypt_b64` for `appid` with the current key, then with the
/// previous one if there is one, and says which key worked. When both fail,
/// the current key's error is returned.
pub fn try_keys(
    current: &AesKey,
    previous: Option<&AesKey>,
    encrypt_b64: &str,
    appid: &str,
) -> Result<(Decrypted, KeyUsed), DecryptError> {
    let first = match current.decrypt_for(encrypt_b64, appid) {
        Ok(opened) => return Ok((opened, KeyUsed::Current)),
        Err(e) => e,
    };
    // Base64 and length errors do not depend on the key.
    if matches!(
        first,
        DecryptError::Base64 | DecryptError::CiphertextLength(_)
    ) {
        return Err(first);
    }
    match previous.map(|key| key.decrypt_for(encrypt_b64, appid)) {
        Some(Ok(opened)) => Ok((opened, KeyUsed::Previous)),
        _ => Err(first),
    }
}

/// Appends `32 - len % 32` bytes of that value (1..=32).
pub fn pkcs7_pad(buf: &mut Vec<u8>) {
    let pad = PAD_BLOCK - buf.len() % PAD_BLOCK;
    let byte = u8::try_from(pad).expect("a pad is at most 32");
    buf.resize(buf.len() + pad, byte);
}

/// Strips a 32-byte PKCS#7 pad: the last byte `p` must be in 1..=32, no
/// longer than the buffer, and the last `p` bytes must all equal it.
pub fn pkcs7_unpad(buf: &[u8]) -> Result<&[u8], DecryptError> {
    let Some(&last) = buf.last() else {
        return Err(DecryptError::Padding);
    };
    let pad = usize::from(last);
    if pad == 0 || pad > PAD_BLOCK || pad > buf.len() {
        return Err(DecryptError::Padding);
    }
    let (body, tail) = buf.split_at(buf.len() - pad);
    if tail.iter().any(|&b| b != last) {
        return Err(DecryptError::Padding);
    }
    Ok(body)
}

/// `16 random | u32 BE length | message | appid`.
fn parse_layout(full: &[u8]) -> Result<Decrypted, DecryptError> {
    if full.len() < HEADER_LEN {
        return Err(DecryptError::LengthPrefix {
            declared: 0,
            available: 0,
        });
    }
    let (random, rest) = full.split_at(RANDOM_LEN);
    let (len, rest) = rest.split_at(4);
    let declared = u32::from_be_bytes(len.try_into().expect("4 bytes"));
    let msg_len = usize::try_from(declared).unwrap_or(usize::MAX);
    if msg_len > rest.len() {
        return Err(DecryptError::LengthPrefix {
            declared: u64::from(declared),
            available: rest.len(),
        });
    }
    let (message, appid) = rest.split_at(msg_len);
    Ok(Decrypted {
        random: random.try_into().expect("16 bytes"),
        message: message.to_vec(),
        appid: String::from_utf8_lossy(appid).into_owned(),
    })
}
