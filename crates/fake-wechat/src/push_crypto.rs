//! WeChat's side of the push crypto (docs/wechat/message-push.md, "The three
//! modes of a push" and "Decrypting"),
//! written again here on purpose: the fake is the other party and must not
//! share the gateway's code (the gateway's golden vectors prove the two
//! agree with WeChat).

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::{alphabet, Engine};
use sha1::{Digest, Sha1};

const BLOCK: usize = 32;
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// `sha1(sorted(parts).join(""))`, lowercase hex: `signature` over
/// (token, timestamp, nonce), `msg_signature` with `Encrypt` added.
pub fn sign(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    hex::encode(Sha1::digest(sorted.concat().as_bytes()))
}

/// The 32-byte AES key of a 43-char EncodingAESKey (`base64(key + "=")`,
/// trailing bits ignored), or `None` if it is not one.
pub fn aes_key(encoding_aes_key: &str) -> Option<[u8; 32]> {
    if encoding_aes_key.len() != 43 || !encoding_aes_key.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return None;
    }
    LENIENT
        .decode(format!("{encoding_aes_key}="))
        .ok()?
        .try_into()
        .ok()
}

/// `base64(AES-256-CBC(random16 | u32 BE len | message | appid | pad to 32))`
/// with IV = the key's first 16 bytes.
pub fn encrypt(key: &[u8; 32], random: &[u8; 16], message: &[u8], appid: &str) -> String {
    let mut buf = random.to_vec();
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(message);
    buf.extend_from_slice(appid.as_bytes());
    let pad = BLOCK - buf.len() % BLOCK;
    buf.resize(buf.len() + pad, pad as u8);
    let n = buf.len();
    let iv: [u8; 16] = key[..16].try_into().expect("16 bytes");
    let cipher = cbc::Encryptor::<aes::Aes256>::new(key.into(), &iv.into())
        .encrypt_padded_mut::<NoPadding>(&mut buf, n)
        .expect("whole blocks");
    STANDARD.encode(cipher)
}

/// The inverse of [`encrypt`]: `(message, appid)`, or why not.
pub fn decrypt(key: &[u8; 32], encrypt: &str) -> Result<(Vec<u8>, String), &'static str> {
    let mut buf = STANDARD.decode(encrypt).map_err(|_| "base64")?;
    if buf.is_empty() || buf.len() % 16 != 0 {
        return Err("length");
    }
    let iv: [u8; 16] = key[..16].try_into().expect("16 bytes");
    let plain = cbc::Decryptor::<aes::Aes256>::new(key.into(), &iv.into())
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .map_err(|_| "length")?;
    let pad = usize::from(*plain.last().ok_or("empty")?);
    if pad == 0
        || pad > BLOCK
        || pad > plain.len()
        || plain[plain.len() - pad..]
            .iter()
            .any(|&b| usize::from(b) != pad)
    {
        return Err("padding");
    }
    let full = &plain[..plain.len() - pad];
    if full.len() < 20 {
        return Err("short");
    }
    let len = u32::from_be_bytes(full[16..20].try_into().expect("4 bytes")) as usize;
    let rest = &full[20..];
    if len > rest.len() {
        return Err("length prefix");
    }
    let appid = String::from_utf8(rest[len..].to_vec()).map_err(|_| "appid")?;
    Ok((rest[..len].to_vec(), appid))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vector B and the handshake (docs/wechat/message-push.md, "Test
    /// vectors"): the fake's own copy agrees with WeChat too.
    #[test]
    fn the_reference_vectors() {
        let key = aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        let encrypt = encrypt(
            &key,
            b"aaaabbbbccccdddd",
            "我是中文abcd123".as_bytes(),
            "wxb11529c136998cb6",
        );
        assert_eq!(encrypt, "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==");
        let (message, appid) = decrypt(&key, &encrypt).unwrap();
        assert_eq!(message, "我是中文abcd123".as_bytes());
        assert_eq!(appid, "wxb11529c136998cb6");
        assert_eq!(
            sign(&["AAAAA", "1714036504", "1514711492"]),
            "f464b24fc39322e44b38aa78f5edd27bd1441696"
        );
        assert!(aes_key("short").is_none());
    }
}
