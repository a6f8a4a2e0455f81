//! WeChat's push signatures (docs/wechat/message-push.md, "The handshake",
//! "The three modes of a push", "The reply"):
//! `sha1(sorted(parts).join(""))` as lowercase hex, compared in constant time.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// `sha1` of the parts sorted lexicographically (by bytes) and joined without
/// a separator, as 40 lowercase hex chars.
///
/// Plain `signature` = `sign(&[token, timestamp, nonce])`; `msg_signature` =
/// `sign(&[token, timestamp, nonce, encrypt])` (see [`msg_signature`]).
pub fn sign(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for part in sorted {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The `msg_signature` of an encrypted push or reply:
/// `sha1(sorted(token, timestamp, nonce, encrypt))`.
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    sign(&[token, timestamp, nonce, encrypt])
}

/// Whether `given` is the signature of `parts`, compared in constant time.
///
/// Hex case is ignored (WeChat sends lowercase); anything that is not 40
/// chars fails.
pub fn verify(parts: &[&str], given: &str) -> bool {
    let expected = sign(parts);
    if given.len() != expected.len() {
        return false;
    }
    let given = given.to_ascii_lowercase();
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// The GET handshake and the plain-mode `signature`:
/// `signature == sha1(sorted(token, timestamp, nonce))`.
pub fn verify_handshake(token: &str, timestamp: &str, nonce: &str, signature: &str) -> bool {
    verify(&[token, timestamp, nonce], signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/wechat/message-push.md, "The handshake" (and "Test vectors").
    #[test]
    fn the_documented_handshake() {
        assert_eq!(
            sign(&["AAAAA", "1714036504", "1514711492"]),
            "f464b24fc39322e44b38aa78f5edd27bd1441696"
        );
        assert!(verify_handshake(
            "AAAAA",
            "1714036504",
            "1514711492",
            "f464b24fc39322e44b38aa78f5edd27bd1441696"
        ));
        assert!(verify_handshake(
            "AAAAA",
            "1714036504",
            "1514711492",
            "F464B24FC39322E44B38AA78F5EDD27BD1441696"
        ));
    }

    /// The documentation's plain-mode example (docs/wechat/message-push.md,
    /// "The three modes of a push").
    #[test]
    fn the_documented_plain_post_signature() {
        assert!(verify_handshake(
            "AAAAA",
            "1714037059",
            "486452656",
            "899cf89e464efb63f54ddac96b0a0a235f53aa78"
        ));
    }

    #[test]
    fn a_wrong_or_malformed_signature_fails() {
        let good = "f464b24fc39322e44b38aa78f5edd27bd1441696";
        for bad in [
            "f464b24fc39322e44b38aa78f5edd27bd1441697",
            "f464b24fc39322e44b38aa78f5edd27bd144169",
            "f464b24fc39322e44b38aa78f5edd27bd14416960",
            "",
            "é464b24fc39322e44b38aa78f5edd27bd144169",
        ] {
            assert!(
                !verify_handshake("AAAAA", "1714036504", "1514711492", bad),
                "{bad}"
            );
        }
        // Another token, timestamp or nonce.
        assert!(!verify_handshake("AAAAB", "1714036504", "1514711492", good));
        assert!(!verify_handshake("AAAAA", "1714036505", "1514711492", good));
        assert!(!verify_handshake("AAAAA", "1714036504", "1514711493", good));
    }
}
