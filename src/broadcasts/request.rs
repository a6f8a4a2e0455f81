//! What a business service asks to broadcast: the body of
//! `POST /v1/apps/{appid}/broadcasts`, or of its NDJSON upload (the job on
//! the first line, one recipient a line after it).

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::ledger::broadcast::BroadcastSpec;
use crate::ledger::collect::{is_plain_identifier, Rejection};
use crate::ledger::states::{Channel, Delivery};
use crate::sending::request::{Lang, MiniprogramState};

/// The longest openid taken (WeChat's are 28 characters).
const MAX_OPENID: usize = 128;

/// A broadcast as asked for.
#[derive(Debug, Clone)]
pub struct BroadcastRequest {
    /// What every recipient is sent.
    pub spec: BroadcastSpec,
    /// Who.
    pub audience: AudienceRequest,
    /// When to start (Unix ms); now when absent or past.
    pub send_at: Option<i64>,
}

/// Who a broadcast goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum AudienceRequest {
    /// Every user holding, when the job is created, a grant or a long-term
    /// subscription of the template (a form_id or prepay_id for a template
    /// message).
    Holders,
    /// These users, each once, with the broadcast's data.
    Openids(Vec<String>),
    /// These users, each once, each with its own data (or the broadcast's).
    Recipients(Vec<RecipientRequest>),
}

/// A listed user and the data they get.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientRequest {
    pub openid: String,
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum AudienceBody {
    Holders,
    Openids(Vec<String>),
    Recipients(Vec<RecipientRequest>),
    /// The recipients follow, one a line (NDJSON upload only).
    Upload,
}

/// The body as sent: a send request's fields (but `touser` and
/// `wait_seconds`), the audience and the time.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    template_id: String,
    #[serde(default)]
    page: Option<String>,
    #[serde(default)]
    data: Option<Map<String, Value>>,
    #[serde(default)]
    emphasis_keyword: Option<String>,
    #[serde(default)]
    color: Option<String>,
    #[serde(default, deserialize_with = "formid_core::nulls::null_as_default")]
    delivery: Delivery,
    #[serde(default)]
    channel: Option<Channel>,
    #[serde(default)]
    miniprogram_state: Option<MiniprogramState>,
    #[serde(default)]
    lang: Option<Lang>,
    audience: AudienceBody,
    #[serde(default)]
    send_at: Option<String>,
}

impl Body {
    fn spec(&self) -> BroadcastSpec {
        BroadcastSpec {
            template_id: self.template_id.clone(),
            page: self.page.clone(),
            data: self.data.clone(),
            emphasis_keyword: self.emphasis_keyword.clone(),
            color: self.color.clone(),
            delivery: self.delivery,
            channel: self.channel,
            miniprogram_state: self.miniprogram_state,
            lang: self.lang,
        }
    }
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection {
        code: "invalid_field",
        message: message.into(),
    }
}

/// Parses a JSON body of `POST …/broadcasts`.
pub fn parse_broadcast_request(body: &[u8]) -> Result<BroadcastRequest, Rejection> {
    let body: Body = serde_json::from_slice(body).map_err(|error| Rejection {
        code: "invalid_json",
        message: format!("the body is not a valid broadcast request: {error}"),
    })?;
    let spec = body.spec();
    let audience =
        match body.audience {
            AudienceBody::Holders => AudienceRequest::Holders,
            AudienceBody::Openids(list) => AudienceRequest::Openids(unique_openids(list)?),
            AudienceBody::Recipients(list) => AudienceRequest::Recipients(unique_recipients(list)?),
            AudienceBody::Upload => return Err(invalid(
                "audience \"upload\" is for an NDJSON body (Content-Type: application/x-ndjson)",
            )),
        };
    finish(spec, audience, body.send_at)
}

/// Parses an NDJSON upload: the job (with `"audience": "upload"`) on the
/// first line, then one recipient a line: `{"openid": …, "data": …}`, or a
/// bare openid string. Blank lines are skipped.
pub fn parse_broadcast_upload(body: &[u8]) -> Result<BroadcastRequest, Rejection> {
    let text = std::str::from_utf8(body).map_err(|_| invalid("the upload is not UTF-8"))?;
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    let head = lines
        .next()
        .ok_or_else(|| invalid("the upload is empty: its first line is the broadcast"))?;
    let job: Body = serde_json::from_str(head).map_err(|error| Rejection {
        code: "invalid_json",
        message: format!("line 1 is not a valid broadcast: {error}"),
    })?;
    if !matches!(job.audience, AudienceBody::Upload) {
        return Err(invalid(
            "an upload's first line says \"audience\": \"upload\"",
        ));
    }
    let mut recipients = Vec::new();
    for (index, line) in lines.enumerate() {
        let recipient = match serde_json::from_str::<Value>(line) {
            Ok(Value::String(openid)) => RecipientRequest { openid, data: None },
            Ok(value) => serde_json::from_value(value).map_err(|error| {
                invalid(format!(
                    "recipient {} is not a recipient: {error}",
                    index + 1
                ))
            })?,
            Err(error) => {
                return Err(Rejection {
                    code: "invalid_json",
                    message: format!("recipient {} is not JSON: {error}", index + 1),
                })
            }
        };
        recipients.push(recipient);
    }
    let audience = AudienceRequest::Recipients(unique_recipients(recipients)?);
    finish(job.spec(), audience, job.send_at)
}

fn finish(
    spec: BroadcastSpec,
    audience: AudienceRequest,
    send_at: Option<String>,
) -> Result<BroadcastRequest, Rejection> {
    if !is_plain_identifier(&spec.template_id, 128) {
        return Err(invalid(
            "template_id: 1 to 128 printable characters without spaces",
        ));
    }
    let send_at = send_at
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(&text)
                .map(|at| at.timestamp_millis())
                .map_err(|_| invalid("send_at: an RFC 3339 time, like 2027-01-02T09:00:00+08:00"))
        })
        .transpose()?;
    Ok(BroadcastRequest {
        spec,
        audience,
        send_at,
    })
}

fn check_openid(openid: &str) -> Result<(), Rejection> {
    if is_plain_identifier(openid, MAX_OPENID) {
        Ok(())
    } else {
        Err(invalid(format!(
            "openid {openid:?}: 1 to {MAX_OPENID} printable characters without spaces"
        )))
    }
}

/// The list without repeats (the first of each openid kept), never empty.
fn unique_openids(list: Vec<String>) -> Result<Vec<String>, Rejection> {
    let mut seen = HashSet::new();
    let mut unique = Vec::with_capacity(list.len());
    for openid in list {
        check_openid(&openid)?;
        if seen.insert(openid.clone()) {
            unique.push(openid);
        }
    }
    if unique.is_empty() {
        return Err(invalid("audience: the list names nobody"));
    }
    Ok(unique)
}

/// The recipients without repeats: the same user twice is refused when the
/// two rows differ (which data would they get?), kept once when they agree.
fn unique_recipients(list: Vec<RecipientRequest>) -> Result<Vec<RecipientRequest>, Rejection> {
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let mut unique: Vec<RecipientRequest> = Vec::with_capacity(list.len());
    for recipient in list {
        check_openid(&recipient.openid)?;
        match seen.get(&recipient.openid) {
            Some(&at) if unique[at] == recipient => {}
            Some(_) => {
                return Err(invalid(format!(
                    "openid {:?} is listed twice with different data",
                    recipient.openid
                )))
            }
            None => {
                seen.insert(recipient.openid.clone(), unique.len());
                unique.push(recipient);
            }
        }
    }
    if unique.is_empty() {
        return Err(invalid("audience: the list names nobody"));
    }
    Ok(unique)
}
