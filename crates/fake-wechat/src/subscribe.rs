//! `POST /cgi-bin/message/subscribe/send` (docs/wechat/subscribe-messages.md,
//! "The send") and the grants behind it ("One-time grants" and "Long-term
//! subscriptions" there; docs/wechat/message-push.md, "What an event means
//! for the grants").
//!
//! A user's grants are kept per (appid, openid, template_id):
//!
//! * one-time grants: each accept of `wx.requestSubscribeMessage` adds one,
//!   they accumulate, never expire, and a delivered send spends one;
//! * a long-term subscription (type 3 templates): a flag a send does not
//!   consume.
//!
//! A user who turns the template off in the service-notification settings
//! loses both; a send without either is answered 43101.

use serde_json::{json, Map, Value};

use crate::codes::{self, error_body_msg};
use crate::library::TemplateType;
use crate::state::{err, str_field, Answer, FaultPlan, Reply, State};
use crate::{GrantUse, SubscribeGrants, SubscribeSendRecord};

/// The first `msgid` handed out: the doc's own `MsgID` example
/// (`1700827132819554304`, docs/wechat/message-push.md, "The events") plus
/// one. Ids go up by two, so every one is odd and above 2^53, where a double
/// cannot hold an odd integer: a client that parses `msgid` as a JavaScript
/// number or an `f64` gets it wrong, as it would against WeChat
/// (docs/wechat/subscribe-messages.md, "The send").
pub(crate) const FIRST_MSGID: u64 = 1_700_827_132_819_554_305;

/// `miniprogram_state` values (docs/wechat/subscribe-messages.md, "The send").
const STATES: [&str; 3] = ["developer", "trial", "formal"];
/// `lang` values (docs/wechat/subscribe-messages.md, "The send").
const LANGS: [&str; 4] = ["zh_CN", "en_US", "zh_HK", "zh_TW"];

type GrantKey = (String, String, String);

fn key(appid: &str, openid: &str, template_id: &str) -> GrantKey {
    (appid.to_owned(), openid.to_owned(), template_id.to_owned())
}

/// An error answer with an optional specific errmsg stem.
type Refusal = (i64, Option<String>);

impl State {
    /// The user accepted `template_id` once in `wx.requestSubscribeMessage`:
    /// a long-term template (type 3) is switched on; any other template id
    /// gains one one-time grant. The user becomes known to the app.
    pub(crate) fn grant(&mut self, appid: &str, openid: &str, template_id: &str) {
        let long_term = self.apps.get(appid).is_some_and(|app| {
            app.subscribe_templates
                .iter()
                .any(|t| t.id == template_id && t.kind == TemplateType::LongTerm)
        });
        if long_term {
            self.grant_long_term(appid, openid, template_id);
            return;
        }
        self.app_mut(appid).users.insert(openid.to_owned());
        self.grants
            .entry(key(appid, openid, template_id))
            .or_default()
            .one_time += 1;
    }

    /// The user switched a long-term subscription on.
    pub(crate) fn grant_long_term(&mut self, appid: &str, openid: &str, template_id: &str) {
        self.app_mut(appid).users.insert(openid.to_owned());
        self.grants
            .entry(key(appid, openid, template_id))
            .or_default()
            .long_term = true;
    }

    /// The user turned the template off ("拒收" in the service-notification
    /// settings, a `subscribe_msg_change_event`: docs/wechat/message-push.md,
    /// "The events"):
    /// the remaining one-time grants and the long-term subscription are gone,
    /// and sends answer 43101 until the user accepts again.
    pub(crate) fn revoke(&mut self, appid: &str, openid: &str, template_id: &str) {
        self.grants.remove(&key(appid, openid, template_id));
    }

    /// What the user holds for the template.
    pub(crate) fn grants_of(
        &self,
        appid: &str,
        openid: &str,
        template_id: &str,
    ) -> SubscribeGrants {
        self.grants
            .get(&key(appid, openid, template_id))
            .copied()
            .unwrap_or_default()
    }

    /// `POST /cgi-bin/message/subscribe/send` (docs/wechat/subscribe-messages.md,
    /// "The send"). Every call is recorded.
    pub(crate) fn subscribe_send(
        &mut self,
        access_token: Option<&str>,
        is_post: bool,
        body: &[u8],
        now: i64,
    ) -> Reply {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let obj = parsed.as_ref().and_then(Value::as_object);
        let appid = access_token.and_then(|t| self.token_appid(t));
        let mut record = SubscribeSendRecord {
            at_ms: now,
            appid,
            touser: str_field(obj, "touser").to_owned(),
            template_id: str_field(obj, "template_id").to_owned(),
            page: str_field(obj, "page").to_owned(),
            miniprogram_state: str_field(obj, "miniprogram_state").to_owned(),
            lang: str_field(obj, "lang").to_owned(),
            data: obj
                .and_then(|o| o.get("data"))
                .cloned()
                .unwrap_or(Value::Null),
            errcode: 0,
            errmsg: String::new(),
            msgid: None,
            grant_used: None,
        };
        let reply = self.subscribe_send_inner(access_token, is_post, body, obj, now, &mut record);
        tracing::debug!(
            appid = record.appid.as_deref().unwrap_or("?"),
            errcode = record.errcode,
            "fake wechat subscribe send"
        );
        self.subscribe_sends.push(record);
        reply
    }

    fn subscribe_send_inner(
        &mut self,
        access_token: Option<&str>,
        is_post: bool,
        body: &[u8],
        obj: Option<&Map<String, Value>>,
        now: i64,
        record: &mut SubscribeSendRecord,
    ) -> Reply {
        let appid = match self.check_token(access_token, now) {
            Ok(appid) => appid,
            Err(code) => {
                record.errcode = code;
                return err(code);
            }
        };
        // Same fault semantics as the template send: consumed only by calls
        // that got past the token check.
        let (hang, fail_status) = match FaultPlan::of(self.subscribe_faults.pop_front()) {
            FaultPlan::Answer(reply, code) => {
                record.errcode = code;
                return reply;
            }
            FaultPlan::Process { hang, fail_status } => (hang, fail_status),
        };
        let answer = match self.subscribe_checks(&appid, is_post, body, obj, now) {
            Ok((msgid, used)) => {
                record.msgid = Some(msgid);
                record.grant_used = Some(used);
                Answer::Json(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
            }
            Err((code, msg)) => {
                record.errcode = code;
                let body = error_body_msg(code, msg.as_deref().unwrap_or(codes::stem(code)));
                record.errmsg = body["errmsg"].as_str().unwrap_or_default().to_owned();
                Answer::Json(body)
            }
        };
        let answer = match fail_status {
            Some(status) => Answer::Status(status),
            None => answer,
        };
        Reply { answer, hang }
    }

    /// Everything after the token check, in a fixed order, the first failure
    /// winning. On success the grant is used and a fresh `msgid` returned.
    ///
    /// The order past the template check is not documented. Two reports saw
    /// a `data` sent as a string answered 43101 for one user and 47003 for
    /// another (docs/wechat/subscribe-messages.md, "The send's errcodes"),
    /// which is what checking the grant before
    /// the data gives; the fake does so.
    fn subscribe_checks(
        &mut self,
        appid: &str,
        is_post: bool,
        body: &[u8],
        obj: Option<&Map<String, Value>>,
        now: i64,
    ) -> Result<(u64, GrantUse), Refusal> {
        let code = |c: i64| (c, None);
        if !is_post {
            return Err(code(codes::REQUIRE_POST));
        }
        if body.is_empty() {
            return Err(code(codes::EMPTY_POST_DATA));
        }
        let Some(obj) = obj else {
            return Err(code(codes::DATA_FORMAT_ERROR));
        };
        // Borrow the apps alone: the grants are read beside the app below.
        let app = self.apps.entry(appid.to_owned()).or_default();
        if !app.subscribe_quota.take(now) {
            return Err(code(codes::DAILY_QUOTA));
        }
        // An openid belongs to one app: a foreign one is 40003
        // (docs/wechat/subscribe-messages.md, "The send's errcodes").
        let touser = obj.get("touser").and_then(Value::as_str).unwrap_or("");
        if touser.is_empty() || !app.users.contains(touser) {
            return Err(code(codes::INVALID_OPENID));
        }
        let template_id = obj.get("template_id").and_then(Value::as_str).unwrap_or("");
        let Some(template) = app.subscribe_templates.iter().find(|t| t.id == template_id) else {
            return Err(code(codes::INVALID_TEMPLATE_ID));
        };
        let grant_key = key(appid, touser, template_id);
        let held = self.grants.get(&grant_key).copied().unwrap_or_default();
        if !held.long_term && held.one_time == 0 {
            return Err(code(codes::USER_REFUSED));
        }
        if !app.page_ok(obj.get("page")) {
            return Err(code(codes::INVALID_PAGE));
        }
        enum_field(obj, "miniprogram_state", &STATES)?;
        enum_field(obj, "lang", &LANGS)?;
        data_error(obj.get("data"), template)
            .map_or(Ok(()), |msg| Err((codes::ARGUMENT_INVALID, Some(msg))))?;

        let used = if held.long_term {
            GrantUse::LongTerm
        } else {
            if let Some(g) = self.grants.get_mut(&grant_key) {
                g.one_time -= 1;
            }
            GrantUse::OneTime
        };
        let msgid = self.next_msgid;
        self.next_msgid += 2;
        Ok((msgid, used))
    }
}

/// An optional string field limited to `allowed`
/// (docs/wechat/subscribe-messages.md, "The send", lists the values and the
/// defaults `formal` / `zh_CN`). WeChat's answer to another value is not
/// documented; the fake answers 47003 naming the field, the code WeChat gives
/// for "parameter breaks a rule".
fn enum_field(obj: &Map<String, Value>, field: &str, allowed: &[&str]) -> Result<(), Refusal> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(v)) if allowed.contains(&v.as_str()) => Ok(()),
        Some(_) => Err((
            codes::ARGUMENT_INVALID,
            Some(format!("argument invalid! {field} invalid")),
        )),
    }
}

/// The 47003 errmsg for `data`, if it breaks the template (the errmsg names
/// the field: docs/wechat/subscribe-messages.md, "Value rules per
/// placeholder type"). Each placeholder of the template, in order:
///
/// * missing, null or empty → `argument invalid! data.thing3.value is emtpy`
///   (sic: WeChat's own spelling, as observed);
/// * not a string or number, or breaking its type's rule →
///   `argument invalid! data.name1.value invalid`.
///
/// A key such as `thing1.DATA` is not the placeholder `thing1`, which is
/// then missing: 47003, as observed (docs/wechat/subscribe-messages.md, "The
/// send"). Keys the template does not have
/// are ignored (no document says otherwise).
fn data_error(
    data: Option<&Value>,
    template: &crate::templates::SubscribeTemplate,
) -> Option<String> {
    let fields = match data {
        None | Some(Value::Null) => None,
        Some(Value::Object(fields)) => Some(fields),
        Some(_) => return Some("argument invalid! data invalid".to_owned()),
    };
    template.keywords.iter().find_map(|k| {
        let code = k.code();
        let value = fields
            .and_then(|f| f.get(&code))
            .and_then(|f| f.get("value"));
        let text = match value {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Some(format!("argument invalid! data.{code}.value invalid")),
        };
        if text.is_empty() {
            Some(format!("argument invalid! data.{code}.value is emtpy"))
        } else if !k.rule.accepts(&text) {
            Some(format!("argument invalid! data.{code}.value invalid"))
        } else {
            None
        }
    })
}
