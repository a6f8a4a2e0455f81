//! WeChat's message push to the developer's server
//! (docs/wechat/message-push.md): per app a push target (URL, Token,
//! EncodingAESKey, mode, data format), and the subscribe events WeChat sends
//! there, signed, encrypted in safe and compatible mode, and retried when no
//! answer comes in time (3 tries in total, 5 s each on the real WeChat:
//! "Retries and duplicates" there).

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::push_crypto as crypto;

/// The console's encryption mode (docs/wechat/message-push.md,
/// "Configuration").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushMode {
    /// Plaintext body, `signature` only.
    Plain,
    /// Plaintext fields and `Encrypt` side by side, `encrypt_type=aes`.
    Compatible,
    /// Only `ToUserName` and `Encrypt`, `encrypt_type=aes`.
    Safe,
}

/// The console's data format (docs/wechat/message-push.md, "Configuration").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushFormat {
    /// `<xml>…</xml>` (WeChat's default).
    Xml,
    /// A JSON object.
    Json,
}

/// Where and how WeChat pushes an app's events. `Debug` hides the token and
/// the key.
#[derive(Clone, Deserialize)]
pub struct PushTarget {
    /// The developer's URL (query parameters are appended).
    pub url: String,
    /// The console's Token.
    pub token: String,
    /// The console's 43-char EncodingAESKey (used in compatible and safe mode).
    pub encoding_aes_key: String,
    /// Encryption mode.
    pub mode: PushMode,
    /// Data format.
    pub format: PushFormat,
    /// `ToUserName`: the app's original id. Default `gh_` + 12 hex digits.
    #[serde(default = "default_gh_id")]
    pub gh_id: String,
    /// How long one try waits for an answer (WeChat: 5 s).
    #[serde(default = "default_timeout", with = "millis", rename = "timeout_ms")]
    pub timeout: Duration,
    /// Tries in total when no answer comes (WeChat: 3).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// How long after a delivered subscribe send its sent event is pushed
    /// (the real one comes after the send's answer).
    #[serde(
        default = "default_sent_delay",
        with = "millis",
        rename = "sent_event_delay_ms"
    )]
    pub sent_event_delay: Duration,
}

fn default_gh_id() -> String {
    "gh_0123456789ab".to_owned()
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_attempts() -> u32 {
    3
}
fn default_sent_delay() -> Duration {
    Duration::from_millis(100)
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl PushTarget {
    /// A target with WeChat's defaults: 5 s per try, 3 tries, the default
    /// `gh_` id.
    pub fn new(
        url: impl Into<String>,
        token: impl Into<String>,
        encoding_aes_key: impl Into<String>,
        mode: PushMode,
        format: PushFormat,
    ) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            encoding_aes_key: encoding_aes_key.into(),
            mode,
            format,
            gh_id: default_gh_id(),
            timeout: default_timeout(),
            attempts: default_attempts(),
            sent_event_delay: default_sent_delay(),
        }
    }
}

impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTarget")
            .field("url", &self.url)
            .field("mode", &self.mode)
            .field("format", &self.format)
            .field("gh_id", &self.gh_id)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// One template of a popup answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopupChoice {
    /// The template.
    pub template_id: String,
    /// `accept`, `acceptWithAudio`, `acceptWithAlert` or `reject`.
    pub status: String,
}

/// The final result of one subscribe send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentResult {
    /// The template.
    pub template_id: String,
    /// The `msgid` the send answered.
    pub msgid: u64,
    /// 0 when delivered.
    pub error_code: i64,
    /// `success`, or the failure.
    pub error_status: String,
}

/// A subscribe event to push (docs/wechat/message-push.md, "The events").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PushEvent {
    /// `subscribe_msg_popup_event`: the user answered a popup.
    Popup {
        /// The user.
        openid: String,
        /// One per template of the popup.
        items: Vec<PopupChoice>,
    },
    /// `subscribe_msg_change_event`: the user turned templates off.
    Change {
        /// The user.
        openid: String,
        /// The templates, each pushed as `reject`.
        template_ids: Vec<String>,
    },
    /// `subscribe_msg_sent_event`: how sends finally ended.
    Sent {
        /// The user.
        openid: String,
        /// One per message.
        items: Vec<SentResult>,
    },
}

impl PushEvent {
    /// The `Event` field.
    pub fn name(&self) -> &'static str {
        match self {
            PushEvent::Popup { .. } => "subscribe_msg_popup_event",
            PushEvent::Change { .. } => "subscribe_msg_change_event",
            PushEvent::Sent { .. } => "subscribe_msg_sent_event",
        }
    }

    fn openid(&self) -> &str {
        match self {
            PushEvent::Popup { openid, .. }
            | PushEvent::Change { openid, .. }
            | PushEvent::Sent { openid, .. } => openid,
        }
    }

    /// The items as (field, value) lists; `numeric` values are written bare
    /// in XML. JSON carries them as strings, as the doc shows
    /// (docs/wechat/message-push.md, "Parsing quirks").
    fn items(&self) -> Vec<Vec<(&'static str, String)>> {
        match self {
            PushEvent::Popup { items, .. } => items
                .iter()
                .map(|i| {
                    vec![
                        ("TemplateId", i.template_id.clone()),
                        ("SubscribeStatusString", i.status.clone()),
                        ("PopupScene", "0".to_owned()),
                    ]
                })
                .collect(),
            PushEvent::Change { template_ids, .. } => template_ids
                .iter()
                .map(|t| {
                    vec![
                        ("TemplateId", t.clone()),
                        ("SubscribeStatusString", "reject".to_owned()),
                    ]
                })
                .collect(),
            PushEvent::Sent { items, .. } => items
                .iter()
                .map(|i| {
                    vec![
                        ("TemplateId", i.template_id.clone()),
                        ("MsgID", i.msgid.to_string()),
                        ("ErrorCode", i.error_code.to_string()),
                        ("ErrorStatus", i.error_status.clone()),
                    ]
                })
                .collect(),
        }
    }

    fn wrapper(&self) -> &'static str {
        match self {
            PushEvent::Popup { .. } => "SubscribeMsgPopupEvent",
            PushEvent::Change { .. } => "SubscribeMsgChangeEvent",
            PushEvent::Sent { .. } => "SubscribeMsgSentEvent",
        }
    }
}

/// One push as the fake made it, and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct PushRecord {
    /// When it was built, Unix milliseconds (per the fake's clock).
    pub at_ms: i64,
    /// The app.
    pub appid: String,
    /// The event pushed.
    pub event: PushEvent,
    /// The mode and format used.
    pub mode: PushMode,
    /// The data format.
    pub format: PushFormat,
    /// The query string sent (signatures, timestamp, nonce, …).
    pub query: String,
    /// The body sent, identical on every try.
    pub body: String,
    /// Tries made.
    pub attempts: u32,
    /// The HTTP status of the answer, if one came.
    pub status: Option<u16>,
    /// The answer's body, if one came.
    pub answer: Option<String>,
    /// Why the last try failed, if none was answered.
    pub error: Option<String>,
}

impl PushRecord {
    /// Whether the developer's server answered `success` or an empty body
    /// with a 2xx (docs/wechat/message-push.md, "The reply").
    pub fn acknowledged(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
            && self
                .answer
                .as_deref()
                .is_some_and(|a| a.trim().is_empty() || a.trim() == "success")
    }
}

/// Push targets and what was pushed.
#[derive(Default)]
pub(crate) struct PushState {
    pub(crate) targets: HashMap<String, PushTarget>,
    pub(crate) records: Vec<PushRecord>,
    /// (errcode, status) reported by the next sent events, in order; then
    /// `(0, "success")`.
    pub(crate) sent_outcomes: std::collections::VecDeque<(i64, String)>,
    /// Pushes started and not yet recorded.
    pub(crate) in_flight: usize,
}

/// A push built and ready to POST.
pub(crate) struct Built {
    pub(crate) query: String,
    pub(crate) body: String,
    pub(crate) content_type: &'static str,
}

/// Builds the signed (and in compatible and safe mode encrypted) request of
/// `event` for `appid` at `now_secs`.
pub(crate) fn build(
    target: &PushTarget,
    appid: &str,
    event: &PushEvent,
    now_secs: i64,
) -> Result<Built, String> {
    let mut rng = rand::thread_rng();
    let timestamp = now_secs.to_string();
    let nonce = rng.gen_range(100_000_000u32..2_000_000_000).to_string();
    let inner = match target.format {
        PushFormat::Xml => inner_xml(target, event, now_secs),
        PushFormat::Json => Value::Object(inner_json(target, event, now_secs)).to_string(),
    };
    let signature = crypto::sign(&[&target.token, &timestamp, &nonce]);
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("signature", &signature)
        .append_pair("timestamp", &timestamp)
        .append_pair("nonce", &nonce)
        .append_pair("openid", event.openid());
    let body = if target.mode == PushMode::Plain {
        inner
    } else {
        let key = crypto::aes_key(&target.encoding_aes_key)
            .ok_or("the EncodingAESKey is not 43 chars of [A-Za-z0-9]")?;
        let random: [u8; 16] = rng.gen();
        let encrypt = crypto::encrypt(&key, &random, inner.as_bytes(), appid);
        let msg_signature = crypto::sign(&[&target.token, &timestamp, &nonce, &encrypt]);
        query
            .append_pair("encrypt_type", "aes")
            .append_pair("msg_signature", &msg_signature);
        match (target.mode, target.format) {
            (PushMode::Safe, PushFormat::Xml) => format!(
                "<xml><ToUserName>{}</ToUserName><Encrypt>{}</Encrypt></xml>",
                cdata(&target.gh_id),
                cdata(&encrypt)
            ),
            (PushMode::Safe, PushFormat::Json) => {
                json!({"ToUserName": target.gh_id, "Encrypt": encrypt}).to_string()
            }
            (_, PushFormat::Xml) => inner.replace(
                "</xml>",
                &format!("<Encrypt>{}</Encrypt></xml>", cdata(&encrypt)),
            ),
            (_, PushFormat::Json) => {
                let mut doc = inner_json(target, event, now_secs);
                doc.insert("Encrypt".to_owned(), Value::String(encrypt));
                Value::Object(doc).to_string()
            }
        }
    };
    Ok(Built {
        query: query.finish(),
        body,
        content_type: match target.format {
            PushFormat::Xml => "text/xml",
            PushFormat::Json => "application/json",
        },
    })
}

/// `<![CDATA[…]]>`, splitting any `]]>` inside.
fn cdata(text: &str) -> String {
    format!("<![CDATA[{}]]>", text.replace("]]>", "]]]]><![CDATA[>"))
}

/// `<xml>` with the wrapper around one `<List>` per item
/// (docs/wechat/message-push.md, "The events").
fn inner_xml(target: &PushTarget, event: &PushEvent, now_secs: i64) -> String {
    let mut xml = format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{now_secs}</CreateTime><MsgType>{}</MsgType><Event>{}</Event><{}>",
        cdata(&target.gh_id),
        cdata(event.openid()),
        cdata("event"),
        cdata(event.name()),
        event.wrapper()
    );
    for item in event.items() {
        xml.push_str("<List>");
        for (field, value) in item {
            if value.bytes().all(|b| b.is_ascii_digit() || b == b'-') && !value.is_empty() {
                xml.push_str(&format!("<{field}>{value}</{field}>"));
            } else {
                xml.push_str(&format!("<{field}>{}</{field}>", cdata(&value)));
            }
        }
        xml.push_str("</List>");
    }
    xml.push_str(&format!("</{}></xml>", event.wrapper()));
    xml
}

/// The current doc's JSON: `List` at the top level, an object for one item
/// and an array for several; `CreateTime` a number, item numbers strings.
fn inner_json(target: &PushTarget, event: &PushEvent, now_secs: i64) -> Map<String, Value> {
    let items: Vec<Value> = event
        .items()
        .into_iter()
        .map(|item| {
            Value::Object(
                item.into_iter()
                    .map(|(k, v)| (k.to_owned(), Value::String(v)))
                    .collect(),
            )
        })
        .collect();
    let list = match <[Value; 1]>::try_from(items) {
        Ok([one]) => one,
        Err(many) => Value::Array(many),
    };
    let mut doc = Map::new();
    doc.insert("ToUserName".into(), json!(target.gh_id));
    doc.insert("FromUserName".into(), json!(event.openid()));
    doc.insert("CreateTime".into(), json!(now_secs));
    doc.insert("MsgType".into(), json!("event"));
    doc.insert("Event".into(), json!(event.name()));
    doc.insert("List".into(), list);
    doc
}

/// POSTs `built`, trying again when no answer comes within the timeout (or
/// the connection fails), `attempts` times in total; the same request each
/// time. Returns (tries, status, answer, last error).
pub(crate) async fn deliver(
    http: &reqwest::Client,
    target: &PushTarget,
    built: &Built,
) -> (u32, Option<u16>, Option<String>, Option<String>) {
    let url = if target.url.contains('?') {
        format!("{}&{}", target.url, built.query)
    } else {
        format!("{}?{}", target.url, built.query)
    };
    let mut last_error = None;
    for attempt in 1..=target.attempts.max(1) {
        let sent = http
            .post(&url)
            .header("content-type", built.content_type)
            .body(built.body.clone())
            .timeout(target.timeout)
            .send()
            .await;
        let answered = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                response.text().await.map(|text| (status, text))
            }
            Err(e) => Err(e),
        };
        match answered {
            Ok((status, text)) => return (attempt, Some(status), Some(text), None),
            Err(e) => {
                let e = e.without_url().to_string();
                tracing::debug!(attempt, error = %e, "fake wechat push: no answer");
                last_error = Some(e);
            }
        }
    }
    (target.attempts.max(1), None, None, last_error)
}
