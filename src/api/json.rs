//! The one JSON reader of every JSON route: `Content-Type` checked, the body
//! read within its size and time limits, and parsed strictly.
//!
//! Strictly means a key appears once per object, at any depth. serde_json's
//! own `Value` keeps the last of two equal keys, a proxy or a WAF in front of
//! us may keep the first: a parser that disagrees with them about which
//! `openid` counts is a hole, so duplicate keys are refused here, once, for
//! every route, before any endpoint looks at the body.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::web::{self, Bytes};
use actix_web::HttpRequest;
use futures_util::StreamExt;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::error::ApiError;

/// A JSON body as read: its bytes (hashed for idempotency) and its value.
#[derive(Debug)]
pub struct JsonBody {
    /// The bytes as they came.
    pub bytes: Bytes,
    /// The parsed value; no object in it has a key twice.
    pub value: Value,
}

/// The limits a body is read within.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body, in bytes (413 past it).
    pub max_bytes: usize,
    /// Time to receive the whole body (408 past it).
    pub timeout: std::time::Duration,
}

/// Checks `Content-Type`, reads the body and parses it strictly. Called
/// after authorization, so a caller without a key learns nothing about the
/// body's rules.
pub async fn read_json(
    request: &HttpRequest,
    payload: web::Payload,
    limits: BodyLimits,
) -> Result<JsonBody, ApiError> {
    require_json_content_type(request)?;
    let bytes = read_body(payload, limits).await?;
    let value = parse_strict(&bytes).map_err(ApiError::invalid_json)?;
    Ok(JsonBody { bytes, value })
}

/// [`read_json`] for a route that parses the text into its own types: the
/// same checks and the same answers, without building the value (for the
/// send route, that tree was most of the reader's allocations).
pub async fn read_json_text(
    request: &HttpRequest,
    payload: web::Payload,
    limits: BodyLimits,
) -> Result<Bytes, ApiError> {
    require_json_content_type(request)?;
    let bytes = read_body(payload, limits).await?;
    check_strict(&bytes).map_err(ApiError::invalid_json)?;
    Ok(bytes)
}

/// `application/json`, with or without `charset=utf-8`; anything else is 415.
fn require_json_content_type(request: &HttpRequest) -> Result<(), ApiError> {
    let Some(header) = request.headers().get(CONTENT_TYPE) else {
        return Err(ApiError::unsupported_media_type());
    };
    let text = header
        .to_str()
        .map_err(|_| ApiError::unsupported_media_type())?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::unsupported_media_type());
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim().trim_matches('"');
        let utf8 = value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8");
        if name.trim().eq_ignore_ascii_case("charset") && !utf8 {
            return Err(ApiError::unsupported_media_type());
        }
    }
    Ok(())
}

/// Reads a body up to `limits.max_bytes` within `limits.timeout`.
pub(crate) async fn read_body(
    mut payload: web::Payload,
    limits: BodyLimits,
) -> Result<Bytes, ApiError> {
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk: Bytes = chunk.map_err(|_| ApiError::unreadable_body())?;
            if body.len() + chunk.len() > limits.max_bytes {
                return Err(ApiError::body_too_large(limits.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(limits.timeout, read)
        .await
        .map_err(|_| ApiError::body_timeout(limits.timeout))?
}

/// Parses JSON text, refusing an object that has a key twice, at any depth.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(bytes).map(|strict| strict.0)
}

/// Accepts exactly the JSON text [`parse_strict`] accepts, with the same
/// errors, without building it.
pub fn check_strict(bytes: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<Checked>(bytes).map(|_| ())
}

/// JSON text checked for duplicate keys, and dropped as it was read.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckVisitor)
    }
}

struct CheckVisitor;

impl<'de> Visitor<'de> for CheckVisitor {
    type Value = Checked;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        let mut keys = SeenKeys::default();
        while let Some(Key(key)) = map.next_key()? {
            if let Err(key) = keys.insert(key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

/// Up to this many keys, an object's keys are kept in a list.
const FEW_KEYS: usize = 16;

/// The keys of one object read so far. Most objects have a handful of keys,
/// and comparing a new key with those few costs less than hashing it (a send
/// body has seven objects); past [`FEW_KEYS`] keys they move to a set, so
/// that an object of many keys does not cost their square.
#[derive(Default)]
struct SeenKeys<'de> {
    few: Vec<Cow<'de, str>>,
    many: HashSet<Cow<'de, str>>,
}

impl<'de> SeenKeys<'de> {
    /// Records `key`, or gives it back when the object had it already.
    fn insert(&mut self, key: Cow<'de, str>) -> Result<(), Cow<'de, str>> {
        if self.many.is_empty() {
            if self.few.contains(&key) {
                return Err(key);
            }
            if self.few.len() < FEW_KEYS {
                self.few.push(key);
                return Ok(());
            }
            self.many.extend(self.few.drain(..));
        }
        if self.many.contains(&key) {
            return Err(key);
        }
        self.many.insert(key);
        Ok(())
    }
}

/// An object's key, borrowed from the text unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }

            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A `Value` whose objects were checked for duplicate keys while parsing.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(value.into())
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(value.into())
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for text in [
            r#"{"openid":"oA","openid":"oB"}"#,
            r#"{"credentials":[{"value":"a","value":"b"}]}"#,
            r#"{"credentials":[],"credentials":[]}"#,
            r#"{"data":{"keyword1":{"value":"a"},"keyword1":{"value":"b"}}}"#,
            r#"{"data":{"k":{"value":"a","value":"b"}}}"#,
            r#"[[{"a":1,"b":{"c":1,"c":2}}]]"#,
            // The same key spelled with an escape is the same key.
            r#"{"openid":"oA","open\u0069d":"oB"}"#,
        ] {
            let error = parse_strict(text.as_bytes()).unwrap_err();
            assert!(
                error.to_string().contains("duplicate key"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn parses_like_serde_json_otherwise() {
        for text in [
            r#"{"a":[1,-2,3.5,1e30,true,null,"x"],"b":{"c":{}}}"#,
            r#""text""#,
            "18446744073709551615",
            r#"{"a":{"k":1},"b":{"k":1}}"#,
        ] {
            let strict = parse_strict(text.as_bytes()).unwrap();
            let plain: Value = serde_json::from_str(text).unwrap();
            assert_eq!(strict, plain, "{text}");
        }
        assert!(parse_strict(b"{\"a\":1} x").is_err());
        assert!(parse_strict(b"").is_err());
    }

    /// The check without a tree accepts and refuses exactly what the strict
    /// parse does, with the same message.
    #[test]
    fn the_check_agrees_with_the_parse() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let many: String = (0..5_000).map(|i| format!("\"k{i}\":{i},")).collect();
        let many_then_twice = format!("{{{many}\"k17\":0}}");
        // Keys kept in the list before the object grew past it, met again.
        let early_key_twice = format!("{{{many}\"k3\":0}}");
        let at_the_list_s_end: String = (0..FEW_KEYS).map(|i| format!("\"k{i}\":{i},")).collect();
        let at_the_list_s_end = format!("{{{at_the_list_s_end}\"k0\":0}}");
        let texts = [
            r#"{"openid":"oA","openid":"oB"}"#,
            r#"{"openid":"oA","open\u0069d":"oB"}"#,
            r#"{"open\u0069d":"oA","openid":"oB"}"#,
            r#"{"data":{"k":{"value":"a","value":"b"}}}"#,
            r#"[[{"a":1,"b":{"c":1,"c":2}}]]"#,
            r#"{"a":[1,-2,3.5,1e30,true,null,"x"],"b":{"c":{}}}"#,
            r#"{"a":{"k":1},"b":{"k":1}}"#,
            "18446744073709551615",
            "1e400",
            r#"{"a":1} x"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":1,}"#,
            "",
            &deep,
            &many_then_twice,
            &early_key_twice,
            &at_the_list_s_end,
        ];
        for text in texts {
            let parsed = parse_strict(text.as_bytes())
                .map(|_| ())
                .map_err(|e| e.to_string());
            let checked = check_strict(text.as_bytes()).map_err(|e| e.to_string());
            assert_eq!(checked, parsed, "{}", &text[..text.len().min(60)]);
        }
    }
}
