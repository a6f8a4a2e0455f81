//! Golden vectors (docs/wechat/message-push.md, "Test vectors", byte for
//! byte), hostile input, and the shapes of "Parsing quirks" there, through
//! the public API of the module.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use proptest::prelude::*;
use secrecy::SecretString;

use super::crypto::{pkcs7_unpad, try_keys, PAD_BLOCK};
use super::signature::{msg_signature, sign};
use super::*;

// ---------------------------------------------------------------- vectors

const A_TOKEN: &str = "AAAAA";
const A_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const A_APPID: &str = "wxba5fad812f8e6fb9";
const A_TS: &str = "1714112445";
const A_NONCE: &str = "415670741";
const A_SIGNATURE: &str = "6c5c811b55cc85e0e1b54100749188c20beb3f5d";
const A_MSG_SIGNATURE: &str = "046e02f8204d34f8ba5fa3b1db94908f3df2e9b3";
const A_ENCRYPT: &str = "+qdx1OKCy+5JPCBFWw70tm0fJGb2Jmeia4FCB7kao+/Q5c/ohsOzQHi8khUOb05JCpj0JB4RvQMkUyus8TPxLKJGQqcvZqzDpVzazhZv6JsXUnnR8XGT740XgXZUXQ7vJVnAG+tE8NUd4yFyjPy7GgiaviNrlCTj+l5kdfMuFUPpRSrfMZuMcp3Fn2Pede2IuQrKEYwKSqFIZoNqJ4M8EajAsjLY2km32IIjdf8YL/P50F7mStwntrA2cPDrM1kb6mOcfBgRtWygb3VIYnSeOBrebufAlr7F9mFUPAJGj04=";
const A_MESSAGE: &str = r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"event","Event":"debug_demo","debug_str":"hello world"}"#;

const B_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const B_APPID: &str = "wxb11529c136998cb6";
const B_ENCRYPT: &str =
    "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==";

const C_TOKEN: &str = "QDG6eK";
const C_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const C_APPID: &str = "wx5823bf96d3bd56c7";
const C_TS: &str = "1409659813";
const C_NONCE: &str = "1372623149";
const C_MSG_SIGNATURE: &str = "477715d11cdb4164915debcba66cb864d751f3e6";
const C_ENCRYPT: &str = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";

fn key(k: &str) -> AesKey {
    AesKey::from_encoding_aes_key(k).unwrap()
}

fn raw_key(k: &str) -> [u8; 32] {
    base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::general_purpose::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true),
    )
    .decode(format!("{k}="))
    .unwrap()
    .try_into()
    .unwrap()
}

/// Decrypts without any unpadding, to look at the pad bytes themselves.
fn raw_decrypt(k: &str, encrypt: &str) -> Vec<u8> {
    let key = raw_key(k);
    let mut buf = STANDARD.decode(encrypt).unwrap();
    let iv: [u8; 16] = key[..16].try_into().unwrap();
    cbc::Decryptor::<aes::Aes256>::new(&key.into(), &iv.into())
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .unwrap()
        .to_vec()
}

/// Encrypts a plaintext that is already whole blocks, pad included.
fn raw_encrypt(k: &str, mut plain: Vec<u8>) -> String {
    let key = raw_key(k);
    let iv: [u8; 16] = key[..16].try_into().unwrap();
    let n = plain.len();
    let ct = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into())
        .encrypt_padded_mut::<NoPadding>(&mut plain, n)
        .unwrap()
        .to_vec();
    STANDARD.encode(ct)
}

fn keys(token: &str, k: &str, appid: &str) -> PushKeys {
    PushKeys {
        appid: appid.to_owned(),
        token: SecretString::from(token.to_owned()),
        current: Some(key(k)),
        previous: None,
        plain_allowed: true,
    }
}

fn query(pairs: &[(&str, &str)]) -> PushQuery {
    let mut q = PushQuery::default();
    for (k, v) in pairs {
        let v = Some((*v).to_owned());
        match *k {
            "signature" => q.signature = v,
            "timestamp" => q.timestamp = v,
            "nonce" => q.nonce = v,
            "echostr" => q.echostr = v,
            "encrypt_type" => q.encrypt_type = v,
            "msg_signature" => q.msg_signature = v,
            _ => {}
        }
    }
    q
}

fn a_query() -> PushQuery {
    query(&[
        ("signature", A_SIGNATURE),
        ("timestamp", A_TS),
        ("nonce", A_NONCE),
        ("encrypt_type", "aes"),
        ("msg_signature", A_MSG_SIGNATURE),
    ])
}

fn a_body() -> Vec<u8> {
    format!(r#"{{"ToUserName":"gh_97417a04a28d","Encrypt":"{A_ENCRYPT}"}}"#).into_bytes()
}

const A_NOW: i64 = 1_714_112_445;

#[test]
fn vector_a_signatures_decryption_and_pad_19() {
    assert_eq!(sign(&[A_TOKEN, A_TS, A_NONCE]), A_SIGNATURE);
    assert_eq!(
        msg_signature(A_TOKEN, A_TS, A_NONCE, A_ENCRYPT),
        A_MSG_SIGNATURE
    );
    let opened = key(A_KEY).decrypt_for(A_ENCRYPT, A_APPID).unwrap();
    assert_eq!(&opened.random, b"a8eedb185eb2fecf");
    assert_eq!(opened.message.len(), 167);
    assert_eq!(opened.message, A_MESSAGE.as_bytes());
    assert_eq!(opened.appid, A_APPID);
    let raw = raw_decrypt(A_KEY, A_ENCRYPT);
    assert_eq!(raw.len(), 224);
    assert!(raw[raw.len() - 19..].iter().all(|&b| b == 19));
    assert_ne!(raw[raw.len() - 20], 19);
    // A 16-byte unpadder would fail here: 19 > 16.
}

#[test]
fn vector_a_through_open() {
    let opened = open(
        &keys(A_TOKEN, A_KEY, A_APPID),
        &a_query(),
        &a_body(),
        A_NOW,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(opened.mode, Mode::Safe);
    assert_eq!(opened.format, Format::Json);
    assert_eq!(opened.key_used, Some(KeyUsed::Current));
    assert_eq!(opened.timestamp, A_NOW);
    assert_eq!(
        opened.event,
        PushEvent::Other(OtherEvent {
            msg_type: "event".into(),
            event: Some("debug_demo".into()),
            user: "o9AgO5Kd5ggOC-bXrbNODIiE3bGY".into(),
            create_time: Some(A_NOW),
        })
    );
    assert_eq!(
        opened.fields.text("debug_str").unwrap(),
        Some("hello world")
    );
    use sha2::Digest;
    assert_eq!(
        opened.body_sha256,
        hex::encode(sha2::Sha256::digest(A_MESSAGE.as_bytes()))
    );
}

#[test]
fn vector_a_prime_the_encrypted_reply() {
    let encrypt = key(A_KEY).encrypt(
        b"707722b803182950",
        br#"{"demo_resp":"good luck"}"#,
        A_APPID,
    );
    assert_eq!(
        encrypt,
        "ELGduP2YcVatjqIS+eZbp80MNLoAUWvzzyJxgGzxZO/5sAvd070Bs6qrLARC9nVHm48Y4hyRbtzve1L32tmxSQ=="
    );
    assert_eq!(
        msg_signature(A_TOKEN, "1713424427", A_NONCE, &encrypt),
        "1b9339964ed2e271e7c7b6ff2b0ef902fc94dea1"
    );
}

#[test]
fn vector_b_multibyte_utf8_and_pad_7() {
    let message = "我是中文abcd123";
    let encrypt = key(B_KEY).encrypt(b"aaaabbbbccccdddd", message.as_bytes(), B_APPID);
    assert_eq!(encrypt, B_ENCRYPT);
    let opened = key(B_KEY).decrypt_for(B_ENCRYPT, B_APPID).unwrap();
    assert_eq!(opened.message, message.as_bytes());
    assert_eq!(&opened.random, b"aaaabbbbccccdddd");
    // The length prefix counts UTF-8 bytes (19), not chars (11).
    let raw = raw_decrypt(B_KEY, B_ENCRYPT);
    assert_eq!(&raw[16..20], &19u32.to_be_bytes());
    assert!(raw[raw.len() - 7..].iter().all(|&b| b == 7));
}

fn c_body() -> Vec<u8> {
    format!(
        "<xml><ToUserName><![CDATA[toUser]]></ToUserName><Encrypt><![CDATA[{C_ENCRYPT}]]></Encrypt></xml>"
    )
    .into_bytes()
}

fn c_query() -> PushQuery {
    query(&[
        ("timestamp", C_TS),
        ("nonce", C_NONCE),
        ("encrypt_type", "aes"),
        ("msg_signature", C_MSG_SIGNATURE),
    ])
}

#[test]
fn vector_c_xml_key_with_trailing_bits_and_pad_30() {
    assert_eq!(
        msg_signature(C_TOKEN, C_TS, C_NONCE, C_ENCRYPT),
        C_MSG_SIGNATURE
    );
    // A strict decoder refuses this key: its 2 unused bits are not zero.
    assert!(STANDARD.decode(format!("{C_KEY}=")).is_err());
    let opened = key(C_KEY).decrypt_for(C_ENCRYPT, C_APPID).unwrap();
    assert_eq!(&opened.random, b"0960688932c47ef1");
    assert_eq!(opened.message.len(), 284);
    let text = String::from_utf8(opened.message).unwrap();
    assert!(
        text.contains("<Content><![CDATA[hello]]></Content>"),
        "{text}"
    );
    assert!(
        text.contains("<MsgId>4561255354251345929</MsgId>"),
        "{text}"
    );
    let raw = raw_decrypt(C_KEY, C_ENCRYPT);
    assert!(raw[raw.len() - 30..].iter().all(|&b| b == 30));

    let opened = open(
        &keys(C_TOKEN, C_KEY, C_APPID),
        &c_query(),
        &c_body(),
        1_409_659_813,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(opened.mode, Mode::Safe);
    assert_eq!(opened.format, Format::Xml);
    assert_eq!(opened.fields.text("Content").unwrap(), Some("hello"));
    assert_eq!(
        opened.fields.text("MsgId").unwrap(),
        Some("4561255354251345929")
    );
    assert!(
        matches!(&opened.event, PushEvent::Other(o) if o.msg_type == "text" && o.event.is_none())
    );
}

#[test]
fn the_handshake_example() {
    let token = SecretString::from("AAAAA".to_owned());
    let q = query(&[
        ("signature", "f464b24fc39322e44b38aa78f5edd27bd1441696"),
        ("echostr", "4375120948345356249"),
        ("timestamp", "1714036504"),
        ("nonce", "1514711492"),
    ]);
    assert_eq!(handshake(&token, &q).unwrap(), "4375120948345356249");
    let mut bad = q.clone();
    bad.nonce = Some("1514711493".into());
    assert_eq!(
        handshake(&token, &bad).unwrap_err(),
        PushError::Signature("signature")
    );
    let mut missing = q;
    missing.echostr = None;
    assert_eq!(
        handshake(&token, &missing).unwrap_err(),
        PushError::MissingParam("echostr")
    );
}

// ---------------------------------------------------------------- keys

#[test]
fn encoding_aes_keys_are_validated() {
    assert_eq!(
        AesKey::from_encoding_aes_key("abc").unwrap_err(),
        KeyError::Length(3)
    );
    assert_eq!(
        AesKey::from_encoding_aes_key(&format!("{}=", &A_KEY[..42])).unwrap_err(),
        KeyError::Alphabet
    );
    assert_eq!(
        AesKey::from_encoding_aes_key(&format!("{}+", &A_KEY[..42])).unwrap_err(),
        KeyError::Alphabet
    );
    assert_eq!(
        AesKey::from_encoding_aes_key(&format!("{}é", &A_KEY[..42])).unwrap_err(),
        KeyError::Alphabet
    );
    assert_eq!(
        AesKey::from_encoding_aes_key(A_KEY).unwrap(),
        AesKey::from_bytes([0; 32])
    );
}

#[test]
fn no_secret_reaches_debug() {
    let k = keys(A_TOKEN, C_KEY, A_APPID);
    let shown = format!("{k:?} {:?} {:?}", key(C_KEY), a_query());
    assert!(!shown.contains(A_TOKEN), "{shown}");
    assert!(!shown.contains(A_MSG_SIGNATURE), "{shown}");
    for byte in raw_key(C_KEY) {
        assert!(!shown.contains(&format!("{byte}, ")), "{shown}");
    }
    let opened = key(A_KEY).decrypt(A_ENCRYPT).unwrap();
    assert!(!format!("{opened:?}").contains("o9AgO5Kd"));
}

#[test]
fn a_rotated_key_is_tried_and_named() {
    let old = key(A_KEY);
    let new = key(B_KEY);
    let (opened, used) = try_keys(&new, Some(&old), A_ENCRYPT, A_APPID).unwrap();
    assert_eq!(used, KeyUsed::Previous);
    assert_eq!(opened.message, A_MESSAGE.as_bytes());
    let (_, used) = try_keys(&old, Some(&new), A_ENCRYPT, A_APPID).unwrap();
    assert_eq!(used, KeyUsed::Current);
    // Neither key: the current key's error.
    let other = key(C_KEY);
    assert!(try_keys(&new, Some(&other), A_ENCRYPT, A_APPID).is_err());
    assert!(try_keys(&new, None, A_ENCRYPT, A_APPID).is_err());

    let mut k = keys(A_TOKEN, B_KEY, A_APPID);
    k.previous = Some(old);
    let opened = open(&k, &a_query(), &a_body(), A_NOW, &Limits::default()).unwrap();
    assert_eq!(opened.key_used, Some(KeyUsed::Previous));
}

// ---------------------------------------------------------------- padding

fn with_pad(message: &[u8], appid: &str, pad_len: usize, pad_byte: u8) -> Vec<u8> {
    let mut plain = b"0123456789abcdef".to_vec();
    plain.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    plain.extend_from_slice(message);
    plain.extend_from_slice(appid.as_bytes());
    plain.resize(plain.len() + pad_len, pad_byte);
    plain
}

#[test]
fn bad_padding_is_refused() {
    let k = key(A_KEY);
    // 16 + 4 + 8 + 18 = 46: 18 more bytes make 64.
    let msg = b"12345678";
    let good = raw_encrypt(A_KEY, with_pad(msg, A_APPID, 18, 18));
    assert_eq!(k.decrypt_for(&good, A_APPID).unwrap().message, msg);
    // Pad byte 0.
    let zero = raw_encrypt(A_KEY, with_pad(msg, A_APPID, 18, 0));
    assert_eq!(k.decrypt(&zero).unwrap_err(), DecryptError::Padding);
    // Pad byte 33 (a 32-byte pad cannot say 33).
    let msg2 = b"123456789012345678901234567890123456789012"; // 16+4+42+18 = 80 → 16
    let big = raw_encrypt(A_KEY, with_pad(msg2, A_APPID, 16, 33));
    assert_eq!(k.decrypt(&big).unwrap_err(), DecryptError::Padding);
    // 18 bytes of pad, but one of them differs.
    let mut plain = with_pad(msg, A_APPID, 18, 18);
    let n = plain.len();
    plain[n - 10] = 17;
    let mixed = raw_encrypt(A_KEY, plain);
    assert_eq!(k.decrypt(&mixed).unwrap_err(), DecryptError::Padding);
    // A pad of 32 on a block-aligned plaintext is fine, 64 bytes of pad are not.
    let msg3 = b"1234567890"; // 16 + 4 + 10 + 18 = 48 → 16
    let ok = raw_encrypt(A_KEY, with_pad(msg3, A_APPID, 16, 16));
    assert!(k.decrypt(&ok).is_ok());

    assert_eq!(pkcs7_unpad(&[]).unwrap_err(), DecryptError::Padding);
    assert_eq!(pkcs7_unpad(&[3, 3]).unwrap_err(), DecryptError::Padding);
    assert_eq!(pkcs7_unpad(&[9, 2, 2]).unwrap(), &[9]);
    assert_eq!(pkcs7_unpad(&[32; 32]).unwrap(), &[] as &[u8]);
}

#[test]
fn a_length_prefix_beyond_the_plaintext_is_refused() {
    let mut plain = with_pad(b"12345678", A_APPID, 18, 18);
    plain[16..20].copy_from_slice(&1000u32.to_be_bytes());
    let bad = raw_encrypt(A_KEY, plain);
    assert_eq!(
        key(A_KEY).decrypt(&bad).unwrap_err(),
        DecryptError::LengthPrefix {
            declared: 1000,
            available: 26
        }
    );
    let mut plain = with_pad(b"12345678", A_APPID, 18, 18);
    plain[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        key(A_KEY).decrypt(&raw_encrypt(A_KEY, plain)).unwrap_err(),
        DecryptError::LengthPrefix { .. }
    ));
}

#[test]
fn truncated_or_odd_ciphertexts_are_errors() {
    let k = key(A_KEY);
    assert_eq!(
        k.decrypt(&A_ENCRYPT[..A_ENCRYPT.len() - 1]).unwrap_err(),
        DecryptError::Base64
    );
    assert_eq!(k.decrypt("not base64!").unwrap_err(), DecryptError::Base64);
    assert_eq!(
        k.decrypt("").unwrap_err(),
        DecryptError::CiphertextLength(0)
    );
    // Cut at a 4-char boundary: valid base64, but not whole blocks.
    let cut = &A_ENCRYPT[..100];
    assert_eq!(
        k.decrypt(cut).unwrap_err(),
        DecryptError::CiphertextLength(75)
    );
    // Whole blocks, but the last one removed: the pad is wrong (or the layout).
    let bytes = STANDARD.decode(A_ENCRYPT).unwrap();
    let shorter = STANDARD.encode(&bytes[..bytes.len() - 16]);
    assert!(k.decrypt_for(&shorter, A_APPID).is_err());
    assert_eq!(
        k.decrypt(&STANDARD.encode([0u8; 16])).unwrap_err(),
        DecryptError::CiphertextLength(16)
    );
}

#[test]
fn every_bit_flip_is_an_error_or_an_altered_message_never_a_panic() {
    let k = key(A_KEY);
    let bytes = STANDARD.decode(A_ENCRYPT).unwrap();
    let mut errors = 0;
    for i in 0..bytes.len() {
        for bit in [0, 3, 7] {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1 << bit;
            let encrypt = STANDARD.encode(&flipped);
            match k.decrypt_for(&encrypt, A_APPID) {
                Err(_) => errors += 1,
                // CBC is malleable: a flip in block n only garbles block n and
                // flips one bit of block n+1. That is why the msg_signature
                // is checked first (next assertion).
                Ok(opened) => assert_ne!(opened.message, A_MESSAGE.as_bytes()),
            }
            let body = format!(r#"{{"Encrypt":"{encrypt}"}}"#);
            assert_eq!(
                open(
                    &keys(A_TOKEN, A_KEY, A_APPID),
                    &a_query(),
                    body.as_bytes(),
                    A_NOW,
                    &Limits::default()
                )
                .unwrap_err(),
                PushError::Signature("msg_signature")
            );
        }
    }
    assert!(errors > 0);
}

#[test]
fn another_apps_message_is_refused() {
    let err = key(A_KEY)
        .decrypt_for(A_ENCRYPT, "wx0000000000000000")
        .unwrap_err();
    assert_eq!(
        err,
        DecryptError::AppidMismatch {
            expected: "wx0000000000000000".into(),
            found: A_APPID.into()
        }
    );
    // Correctly signed with this app's token, encrypted for another app.
    let err = open(
        &keys(A_TOKEN, A_KEY, "wx0000000000000000"),
        &a_query(),
        &a_body(),
        A_NOW,
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        PushError::Decrypt(DecryptError::AppidMismatch { .. })
    ));
    assert_eq!(err.status(), 400);
}

// ---------------------------------------------------------------- round trip

fn expected_pad(message_len: usize, appid_len: usize) -> usize {
    PAD_BLOCK - (20 + message_len + appid_len) % PAD_BLOCK
}

#[test]
fn every_pad_from_1_to_32_round_trips() {
    let k = key(C_KEY);
    let mut seen = [false; 33];
    for len in 0..64 {
        let message = vec![b'x'; len];
        let encrypt = k.encrypt(&[7; 16], &message, A_APPID);
        let pad = expected_pad(len, A_APPID.len());
        seen[pad] = true;
        let raw = raw_decrypt(C_KEY, &encrypt);
        assert_eq!(usize::from(*raw.last().unwrap()), pad);
        assert_eq!(k.decrypt_for(&encrypt, A_APPID).unwrap().message, message);
    }
    assert!(seen[1..].iter().all(|&s| s), "pads seen: {seen:?}");
}

proptest! {
    #[test]
    fn encrypt_then_decrypt_is_the_identity(
        key_bytes in proptest::array::uniform32(any::<u8>()),
        random in proptest::array::uniform16(any::<u8>()),
        message in proptest::collection::vec(any::<u8>(), 0..300),
        appid in "[a-z0-9]{0,40}",
    ) {
        let k = AesKey::from_bytes(key_bytes);
        let encrypt = k.encrypt(&random, &message, &appid);
        let opened = k.decrypt_for(&encrypt, &appid).unwrap();
        prop_assert_eq!(opened.message, message);
        prop_assert_eq!(opened.random, random);
        prop_assert_eq!(opened.appid, appid);
    }
}

// ---------------------------------------------------------------- envelopes

const TOKEN: &str = "tok3n";
const APPID: &str = "wxapp000000000001";
const NOW: i64 = 1_714_528_800;

/// Builds a push as WeChat would, returning (query, body).
fn push(mode: Mode, format: Format, inner: &str) -> (PushQuery, Vec<u8>) {
    let ts = NOW.to_string();
    let nonce = "123456";
    let signature = sign(&[TOKEN, &ts, nonce]);
    let encrypt = key(C_KEY).encrypt(b"0123456789abcdef", inner.as_bytes(), APPID);
    let msg_sig = msg_signature(TOKEN, &ts, nonce, &encrypt);
    let mut q = query(&[
        ("signature", &signature),
        ("timestamp", &ts),
        ("nonce", nonce),
    ]);
    let body = match (mode, format) {
        (Mode::Plain, _) => inner.to_owned(),
        (Mode::Safe, Format::Json) => {
            format!(r#"{{"ToUserName":"gh_1","Encrypt":"{encrypt}"}}"#)
        }
        (Mode::Safe, Format::Xml) => format!(
            "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        ),
        (Mode::Compatible, Format::Json) => {
            format!(r#"{}, "Encrypt":"{encrypt}"}}"#, inner.trim_end().trim_end_matches('}'))
        }
        (Mode::Compatible, Format::Xml) => inner.replace(
            "</xml>",
            &format!("<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"),
        ),
    };
    if mode != Mode::Plain {
        q.encrypt_type = Some("aes".into());
        q.msg_signature = Some(msg_sig);
    }
    (q, body.into_bytes())
}

fn open_now(q: &PushQuery, body: &[u8]) -> Result<Opened, PushError> {
    open(&keys(TOKEN, C_KEY, APPID), q, body, NOW, &Limits::default())
}

const POPUP_XML: &str = "<xml><ToUserName><![CDATA[gh_123456789abc]]></ToUserName>\
<FromUserName><![CDATA[o-user-1]]></FromUserName><CreateTime>1714528800</CreateTime>\
<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_popup_event]]></Event>\
<SubscribeMsgPopupEvent><List><TemplateId><![CDATA[T1]]></TemplateId>\
<SubscribeStatusString><![CDATA[accept]]></SubscribeStatusString><PopupScene>0</PopupScene></List>\
<List><TemplateId><![CDATA[T2]]></TemplateId>\
<SubscribeStatusString><![CDATA[reject]]></SubscribeStatusString><PopupScene>0</PopupScene></List>\
</SubscribeMsgPopupEvent></xml>";

const POPUP_JSON: &str = r#"{"ToUserName":"gh_123456789abc","FromUserName":"o-user-1","CreateTime":"1714528800","MsgType":"event","Event":"subscribe_msg_popup_event","List":[{"TemplateId":"T1","SubscribeStatusString":"accept","PopupScene":"0"},{"TemplateId":"T2","SubscribeStatusString":"reject","PopupScene":0}]}"#;

fn expected_popup() -> PushEvent {
    PushEvent::Popup(PopupEvent {
        header: EventHeader {
            user: "o-user-1".into(),
            app_gh: "gh_123456789abc".into(),
            create_time: NOW,
        },
        items: vec![
            PopupItem {
                template_id: "T1".into(),
                status: SubscribeStatus::Accept,
                popup_scene: Some("0".into()),
            },
            PopupItem {
                template_id: "T2".into(),
                status: SubscribeStatus::Reject,
                popup_scene: Some("0".into()),
            },
        ],
    })
}

#[test]
fn every_mode_and_format_reads_the_same_event() {
    for (format, inner) in [(Format::Xml, POPUP_XML), (Format::Json, POPUP_JSON)] {
        for mode in [Mode::Plain, Mode::Compatible, Mode::Safe] {
            let (q, body) = push(mode, format, inner);
            let opened = open_now(&q, &body).unwrap_or_else(|e| panic!("{mode:?} {format:?}: {e}"));
            assert_eq!(opened.mode, mode);
            assert_eq!(opened.format, format);
            assert_eq!(opened.key_used.is_some(), mode != Mode::Plain);
            assert_eq!(opened.event, expected_popup(), "{mode:?} {format:?}");
            assert_eq!(
                opened.dedupe_keys(),
                vec![
                    "o-user-1\n1714528800\nsubscribe_msg_popup_event\nT1",
                    "o-user-1\n1714528800\nsubscribe_msg_popup_event\nT2"
                ]
            );
        }
    }
}

#[test]
fn the_content_type_is_never_needed_and_whitespace_leads_are_fine() {
    let (q, body) = push(Mode::Plain, Format::Json, &format!("\n  {POPUP_JSON}"));
    assert_eq!(open_now(&q, &body).unwrap().event, expected_popup());
}

#[test]
fn a_wrong_signature_is_refused() {
    for mode in [Mode::Plain, Mode::Safe, Mode::Compatible] {
        let (mut q, body) = push(mode, Format::Json, POPUP_JSON);
        let which = if mode == Mode::Plain {
            q.signature = Some(sign(&["other", "x"]));
            "signature"
        } else {
            q.msg_signature = Some(sign(&["other", "x"]));
            "msg_signature"
        };
        let err = open_now(&q, &body).unwrap_err();
        assert_eq!(err, PushError::Signature(which));
        assert_eq!(err.status(), 401);
        // Another token.
        let (q, body) = push(mode, Format::Json, POPUP_JSON);
        assert!(matches!(
            open(
                &keys("other", C_KEY, APPID),
                &q,
                &body,
                NOW,
                &Limits::default()
            ),
            Err(PushError::Signature(_))
        ));
    }
}

#[test]
fn safe_mode_never_takes_signature_alone() {
    let (mut q, body) = push(Mode::Safe, Format::Xml, POPUP_XML);
    // `signature` is valid, msg_signature gone.
    q.msg_signature = None;
    assert_eq!(
        open_now(&q, &body).unwrap_err(),
        PushError::MissingParam("msg_signature")
    );
    // msg_signature replaced by the (valid) plain signature.
    let (mut q, body) = push(Mode::Safe, Format::Xml, POPUP_XML);
    q.msg_signature = q.signature.clone();
    assert_eq!(
        open_now(&q, &body).unwrap_err(),
        PushError::Signature("msg_signature")
    );
    // encrypt_type=aes without an Encrypt in the body: a plain body is not
    // taken under a signature that covers nothing of it.
    let (mut q, _) = push(Mode::Safe, Format::Xml, POPUP_XML);
    q.msg_signature = None;
    assert_eq!(
        open_now(&q, POPUP_XML.as_bytes()).unwrap_err(),
        PushError::MissingEncrypt
    );
}

#[test]
fn encrypt_without_encrypt_type_uses_the_cipher_only_when_signed() {
    // Compatible body, no encrypt_type, msg_signature given: both checked, the
    // decrypted document read.
    let (mut q, body) = push(Mode::Compatible, Format::Json, POPUP_JSON);
    q.encrypt_type = None;
    let opened = open_now(&q, &body).unwrap();
    assert_eq!(opened.mode, Mode::Compatible);
    assert!(opened.key_used.is_some());
    // ... and a bad msg_signature is not skipped.
    q.msg_signature = Some(sign(&["x"]));
    assert_eq!(
        open_now(&q, &body).unwrap_err(),
        PushError::Signature("msg_signature")
    );
    // No msg_signature: plain mode, Encrypt ignored.
    q.msg_signature = None;
    let opened = open_now(&q, &body).unwrap();
    assert_eq!(opened.mode, Mode::Plain);
    assert_eq!(opened.key_used, None);
    // `raw` is plain too; anything else is refused.
    q.encrypt_type = Some("raw".into());
    assert_eq!(open_now(&q, &body).unwrap().mode, Mode::Plain);
    q.encrypt_type = Some("des".into());
    assert_eq!(open_now(&q, &body).unwrap_err(), PushError::EncryptType);
}

#[test]
fn plain_pushes_can_be_refused_and_need_a_key_when_encrypted() {
    let mut k = keys(TOKEN, C_KEY, APPID);
    k.plain_allowed = false;
    let (q, body) = push(Mode::Plain, Format::Xml, POPUP_XML);
    assert_eq!(
        open(&k, &q, &body, NOW, &Limits::default()).unwrap_err(),
        PushError::PlainRefused
    );
    let (q, body) = push(Mode::Safe, Format::Xml, POPUP_XML);
    assert!(open(&k, &q, &body, NOW, &Limits::default()).is_ok());
    k.current = None;
    assert_eq!(
        open(&k, &q, &body, NOW, &Limits::default()).unwrap_err(),
        PushError::NoKey
    );
}

#[test]
fn a_stale_or_future_timestamp_is_refused() {
    let (q, body) = push(Mode::Safe, Format::Json, POPUP_JSON);
    let k = keys(TOKEN, C_KEY, APPID);
    let l = Limits::default();
    assert!(open(&k, &q, &body, NOW + 300, &l).is_ok());
    assert!(open(&k, &q, &body, NOW - 300, &l).is_ok());
    assert_eq!(
        open(&k, &q, &body, NOW + 301, &l).unwrap_err(),
        PushError::Stale { skew_secs: -301 }
    );
    let err = open(&k, &q, &body, NOW - 301, &l).unwrap_err();
    assert_eq!(err, PushError::Stale { skew_secs: 301 });
    assert_eq!(err.status(), 401);
    // The doc's own vector, a day later.
    assert!(matches!(
        open(
            &keys(A_TOKEN, A_KEY, A_APPID),
            &a_query(),
            &a_body(),
            A_NOW + 86_400,
            &l
        ),
        Err(PushError::Stale { .. })
    ));
    let mut bad = q.clone();
    bad.timestamp = Some("17145288OO".into());
    assert_eq!(
        open(&k, &bad, &body, NOW, &l).unwrap_err(),
        PushError::BadTimestamp
    );
    bad.timestamp = Some(i64::MIN.to_string());
    assert!(matches!(
        open(&k, &bad, &body, NOW, &l),
        Err(PushError::Stale { .. })
    ));
    bad.timestamp = None;
    assert_eq!(
        open(&k, &bad, &body, NOW, &l).unwrap_err(),
        PushError::MissingParam("timestamp")
    );
}

#[test]
fn an_oversize_body_is_refused_before_anything_else() {
    let (q, _) = push(Mode::Plain, Format::Json, POPUP_JSON);
    let huge = vec![b' '; 2 * 1024 * 1024];
    let err = open_now(&q, &huge).unwrap_err();
    assert_eq!(
        err,
        PushError::TooLarge {
            size: 2 * 1024 * 1024,
            limit: DEFAULT_MAX_BODY
        }
    );
    assert_eq!(err.status(), 413);
    let small = Limits {
        max_body_bytes: 100,
        ..Limits::default()
    };
    let (q, body) = push(Mode::Safe, Format::Json, POPUP_JSON);
    assert!(matches!(
        open(&keys(TOKEN, C_KEY, APPID), &q, &body, NOW, &small),
        Err(PushError::TooLarge { .. })
    ));
}

const DEFAULT_MAX_BODY: usize = envelope::DEFAULT_MAX_BODY_BYTES;

#[test]
fn an_entity_expansion_body_is_refused_in_every_mode() {
    let laughs = r#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]><xml><ToUserName>&d;</ToUserName><FromUserName>&d;</FromUserName><CreateTime>1714528800</CreateTime><MsgType>event</MsgType><Event>subscribe_msg_popup_event</Event></xml>"#;
    for mode in [Mode::Plain, Mode::Safe, Mode::Compatible] {
        let (q, body) = push(mode, Format::Xml, laughs);
        let err = open_now(&q, &body).unwrap_err();
        assert_eq!(err, PushError::Document(DocError::DocType), "{mode:?}");
        assert_eq!(err.status(), 400);
    }
}

#[test]
fn garbage_bodies_are_refused() {
    for body in [&b""[..], b"success", b"[]", b"{", b"<xml>", b"\xff\xfe<"] {
        let (q, _) = push(Mode::Plain, Format::Json, POPUP_JSON);
        let err = open_now(&q, body).unwrap_err();
        assert!(matches!(err, PushError::Document(_)), "{err:?}");
    }
}

// ---------------------------------------------------------------- events

fn event(doc: &str) -> Result<PushEvent, EventError> {
    let (_, fields) = document::parse(doc.as_bytes()).unwrap();
    PushEvent::from_fields(&fields)
}

const HEAD_JSON: &str =
    r#""ToUserName":"gh_1","FromUserName":"o-user-1","CreateTime":1714528800,"MsgType":"event""#;

#[test]
fn list_object_array_and_every_wrapper_read_alike() {
    let item = r#"{"TemplateId":"T1","SubscribeStatusString":"acceptWithAudio","PopupScene":"0"}"#;
    let shapes = [
        format!(r#""List":{item}"#),
        format!(r#""List":[{item}]"#),
        format!(r#""SubscribeMsgPopupEvent":{{"List":{item}}}"#),
        format!(r#""SubscribeMsgPopupEvent":{{"List":[{item}]}}"#),
        format!(r#""SubscribeMsgPopupEvent":[{item}]"#),
        format!(r#""SubscribeMsgPopupEvent":{item}"#),
        // The wrong wrapper name: routing is by Event.
        format!(r#""SubscribeMsgChangeEvent":{{"List":{item}}}"#),
    ];
    for shape in shapes {
        let doc = format!(r#"{{{HEAD_JSON},"Event":"subscribe_msg_popup_event",{shape}}}"#);
        let PushEvent::Popup(popup) = event(&doc).unwrap_or_else(|e| panic!("{shape}: {e}")) else {
            panic!("{shape}: not a popup");
        };
        assert_eq!(popup.items.len(), 1, "{shape}");
        assert_eq!(popup.items[0].template_id, "T1");
        assert_eq!(popup.items[0].status, SubscribeStatus::AcceptWithAudio);
        assert!(popup.items[0].status.is_accept());
        assert_eq!(popup.header.user, "o-user-1");
        assert_eq!(popup.header.app_gh, "gh_1");
    }
}

#[test]
fn a_change_event_in_a_popup_wrapper_is_a_change_event() {
    let doc = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o-user-1]]></FromUserName>\
<CreateTime>1714528800</CreateTime><MsgType><![CDATA[event]]></MsgType>\
<Event><![CDATA[subscribe_msg_change_event]]></Event><SubscribeMsgPopupEvent><List>\
<TemplateId><![CDATA[T1]]></TemplateId><SubscribeStatusString><![CDATA[reject]]></SubscribeStatusString>\
</List></SubscribeMsgPopupEvent></xml>";
    assert_eq!(
        event(doc).unwrap(),
        PushEvent::Change(ChangeEvent {
            header: EventHeader {
                user: "o-user-1".into(),
                app_gh: "gh_1".into(),
                create_time: NOW
            },
            items: vec![ChangeItem {
                template_id: "T1".into(),
                status: SubscribeStatus::Reject
            }]
        })
    );
}

#[test]
fn sent_events_keep_the_msgid_exact_whether_number_or_string() {
    for (msgid, code) in [
        ("1700827132819554305", r#""0""#),
        (r#""1700827132819554305""#, "0"),
    ] {
        let doc = format!(
            r#"{{{HEAD_JSON},"Event":"subscribe_msg_sent_event","SubscribeMsgSentEvent":{{"List":{{"TemplateId":"T1","MsgID":{msgid},"ErrorCode":{code},"ErrorStatus":"success"}}}}}}"#
        );
        let PushEvent::Sent(sent) = event(&doc).unwrap() else {
            panic!("not a sent event");
        };
        assert_eq!(
            sent.items,
            vec![SentItem {
                template_id: "T1".into(),
                msgid: "1700827132819554305".into(),
                error_code: 0,
                error_status: "success".into()
            }]
        );
        assert_eq!(
            PushEvent::Sent(sent).dedupe_keys(),
            vec!["o-user-1\n1714528800\nsubscribe_msg_sent_event\nT1\n1700827132819554305"]
        );
    }
    // A float (what a double would have made of it) is refused, not rounded.
    let doc = format!(
        r#"{{{HEAD_JSON},"Event":"subscribe_msg_sent_event","List":{{"TemplateId":"T1","MsgID":1.7008271328195543e18,"ErrorCode":0,"ErrorStatus":"success"}}}}"#
    );
    assert!(matches!(
        event(&doc),
        Err(EventError::NotInteger { field: "MsgID", .. })
    ));
    // XML, with a failure.
    let doc = "<xml><ToUserName>gh_1</ToUserName><FromUserName>o-user-1</FromUserName><CreateTime>1714528800</CreateTime>\
<MsgType>event</MsgType><Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent><List><TemplateId>T1</TemplateId>\
<MsgID>1700827132819554307</MsgID><ErrorCode>10001</ErrorCode><ErrorStatus>system failed</ErrorStatus></List></SubscribeMsgSentEvent></xml>";
    let PushEvent::Sent(sent) = event(doc).unwrap() else {
        panic!("not a sent event");
    };
    assert_eq!(sent.items[0].error_code, 10001);
    assert_eq!(sent.items[0].msgid, "1700827132819554307");
}

#[test]
fn odd_or_duplicate_shapes_are_refused() {
    let item = r#"{"TemplateId":"T1","SubscribeStatusString":"accept"}"#;
    let cases = [
        // Items in two places would be counted twice.
        format!(r#""Event":"subscribe_msg_popup_event","List":{item},"SubscribeMsgPopupEvent":{{"List":{item}}}"#),
        format!(r#""Event":"subscribe_msg_popup_event","SubscribeMsgChangeEvent":{item},"SubscribeMsgPopupEvent":{item}"#),
        // No item.
        r#""Event":"subscribe_msg_popup_event""#.to_owned(),
        r#""Event":"subscribe_msg_popup_event","List":[]"#.to_owned(),
        // An item that is not an object.
        r#""Event":"subscribe_msg_popup_event","List":"T1""#.to_owned(),
        // Two Events.
        format!(r#""Event":"subscribe_msg_popup_event","Event":"subscribe_msg_change_event","List":{item}"#),
        // A missing template id or status.
        r#""Event":"subscribe_msg_popup_event","List":{"SubscribeStatusString":"accept"}"#.to_owned(),
        r#""Event":"subscribe_msg_change_event","List":{"TemplateId":"T1"}"#.to_owned(),
        // A PopupScene that is not a number.
        r#""Event":"subscribe_msg_popup_event","List":{"TemplateId":"T1","SubscribeStatusString":"accept","PopupScene":"x"}"#.to_owned(),
    ];
    for case in cases {
        let doc = format!("{{{HEAD_JSON},{case}}}");
        assert!(event(&doc).is_err(), "{case}");
    }
    // A missing user, app or time.
    for drop in ["FromUserName", "ToUserName", "CreateTime"] {
        let head = HEAD_JSON.replace(&format!(r#""{drop}""#), r#""Other""#);
        let doc = format!(r#"{{{head},"Event":"subscribe_msg_popup_event","List":{item}}}"#);
        assert!(event(&doc).is_err(), "{drop}");
    }
    let doc = format!(
        r#"{{{},"Event":"subscribe_msg_popup_event","List":{item}}}"#,
        HEAD_JSON.replace("1714528800", r#""yesterday""#)
    );
    assert!(matches!(
        event(&doc),
        Err(EventError::NotInteger {
            field: "CreateTime",
            ..
        })
    ));
}

#[test]
fn other_events_and_messages_are_other() {
    let doc = format!(r#"{{{HEAD_JSON},"Event":"user_enter_tempsession"}}"#);
    let e = event(&doc).unwrap();
    assert_eq!(e.name(), "user_enter_tempsession");
    assert!(e.header().is_none());
    assert_eq!(
        e.dedupe_keys(),
        vec!["o-user-1\n1714528800\nuser_enter_tempsession"]
    );
    let e = event(r#"{"MsgType":"text","Content":"hi"}"#).unwrap();
    assert_eq!(e.name(), "text");
}

#[test]
fn dedupe_keys_are_stable_across_formats_and_collapse_repeats() {
    let xml = event(POPUP_XML).unwrap();
    let json = event(POPUP_JSON).unwrap();
    assert_eq!(xml.dedupe_keys(), json.dedupe_keys());
    let twice = r#"{"ToUserName":"gh_1","FromUserName":"u","CreateTime":1,"MsgType":"event","Event":"subscribe_msg_popup_event","List":[{"TemplateId":"T1","SubscribeStatusString":"accept"},{"TemplateId":"T1","SubscribeStatusString":"accept"}]}"#;
    assert_eq!(event(twice).unwrap().dedupe_keys().len(), 1);
}

// ---------------------------------------------------------------- interop

/// The fake WeChat pushes to a receiver that does what the endpoint will
/// do: `open` and answer `success`, or the refusal's status; every mode and
/// format.
#[tokio::test]
async fn pushes_from_the_fake_open_in_every_mode_and_format() {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use actix_web::{web, App, HttpResponse, HttpServer};
    use fake_wechat::{FakeWeChat, PushFormat, PushMode, PushTarget};

    const FAKE_NOW_MS: i64 = NOW * 1000;
    let fake = FakeWeChat::new(|| FAKE_NOW_MS);
    fake.register_app(APPID, "secret");
    let opened: Arc<Mutex<Vec<Result<Opened, PushError>>>> = Arc::default();
    let seen = opened.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/wechat/push/{APPID}",
        listener.local_addr().unwrap()
    );
    let server = HttpServer::new(move || {
        let seen = seen.clone();
        App::new().route(
            "/wechat/push/{appid}",
            web::post().to(move |q: web::Query<PushQuery>, body: web::Bytes| {
                let seen = seen.clone();
                async move {
                    let result = open(
                        &keys(TOKEN, C_KEY, APPID),
                        &q,
                        &body,
                        NOW,
                        &Limits::default(),
                    );
                    let answer = match &result {
                        Ok(_) => HttpResponse::Ok().body("success"),
                        Err(e) => HttpResponse::build(
                            actix_web::http::StatusCode::from_u16(e.status()).unwrap(),
                        )
                        .body(e.code()),
                    };
                    seen.lock().unwrap().push(result);
                    answer
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);

    for format in [PushFormat::Xml, PushFormat::Json] {
        for mode in [PushMode::Plain, PushMode::Compatible, PushMode::Safe] {
            fake.set_push_target(APPID, PushTarget::new(&url, TOKEN, C_KEY, mode, format))
                .unwrap();
            let record = fake
                .push_event(
                    APPID,
                    fake_wechat::PushEvent::Popup {
                        openid: "o-user-1".into(),
                        items: vec![
                            fake_wechat::PopupChoice {
                                template_id: "T1".into(),
                                status: "accept".into(),
                            },
                            fake_wechat::PopupChoice {
                                template_id: "T2".into(),
                                status: "reject".into(),
                            },
                        ],
                    },
                )
                .await
                .unwrap();
            assert!(record.acknowledged(), "{mode:?} {format:?}: {record:?}");
            let last = opened.lock().unwrap().pop().unwrap().unwrap();
            let expected_mode = match mode {
                PushMode::Plain => Mode::Plain,
                PushMode::Compatible => Mode::Compatible,
                PushMode::Safe => Mode::Safe,
            };
            assert_eq!(last.mode, expected_mode);
            let PushEvent::Popup(popup) = &last.event else {
                panic!("{mode:?} {format:?}: {:?}", last.event);
            };
            assert_eq!(popup.header.user, "o-user-1");
            assert_eq!(popup.header.app_gh, "gh_0123456789ab");
            assert_eq!(popup.header.create_time, NOW);
            let statuses: Vec<_> = popup.items.iter().map(|i| i.status.clone()).collect();
            assert_eq!(statuses, [SubscribeStatus::Accept, SubscribeStatus::Reject]);
        }
    }

    // A sent event with a msgid above 2^53, and a wrong token refused 401.
    fake.set_push_target(
        APPID,
        PushTarget::new(&url, TOKEN, C_KEY, PushMode::Safe, PushFormat::Json),
    )
    .unwrap();
    let sent = fake_wechat::PushEvent::Sent {
        openid: "o-user-1".into(),
        items: vec![fake_wechat::SentResult {
            template_id: "T1".into(),
            msgid: 1_700_827_132_819_554_305,
            error_code: 0,
            error_status: "success".into(),
        }],
    };
    assert!(fake
        .push_event(APPID, sent.clone())
        .await
        .unwrap()
        .acknowledged());
    let last = opened.lock().unwrap().pop().unwrap().unwrap();
    let PushEvent::Sent(s) = &last.event else {
        panic!("{:?}", last.event);
    };
    assert_eq!(s.items[0].msgid, "1700827132819554305");
    let mut wrong = PushTarget::new(
        &url,
        "not-the-token",
        C_KEY,
        PushMode::Safe,
        PushFormat::Xml,
    );
    wrong.timeout = Duration::from_secs(2);
    fake.set_push_target(APPID, wrong).unwrap();
    let record = fake.push_event(APPID, sent).await.unwrap();
    assert_eq!((record.attempts, record.status), (1, Some(401)));
    assert_eq!(
        opened.lock().unwrap().pop().unwrap().unwrap_err(),
        PushError::Signature("msg_signature")
    );
    handle.stop(true).await;
}
