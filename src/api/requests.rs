//! The request bodies of the JSON routes, as the OpenAPI document shows them.
//!
//! Most routes read their body with the strict reader and rules of their
//! own (the send request's in the core, a batch's items one by one); these
//! types describe those rules for the document and are not parsed into.
//! Every optional field may be sent as `null`, which means the same as
//! leaving it out.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

/// The channel a send goes through.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelName {
    /// Template messages (formId, prepay_id).
    Template,
    /// Subscribe messages (grants).
    Subscribe,
}

/// What an unknown outcome may do.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryName {
    /// Never retried with another credential (the default).
    AtMostOnce,
    /// Retried with another credential, at the risk of a duplicate.
    AtLeastOnce,
}

/// Which version of the mini-program a subscribe card opens.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MiniprogramStateName {
    /// The developer version.
    Developer,
    /// The trial version.
    Trial,
    /// The released version.
    Formal,
}

/// The language of a subscribe card.
#[derive(Deserialize, ToSchema)]
pub enum LangName {
    #[serde(rename = "zh_CN")]
    ZhCn,
    #[serde(rename = "en_US")]
    EnUs,
    #[serde(rename = "zh_HK")]
    ZhHk,
    #[serde(rename = "zh_TW")]
    ZhTw,
}

/// One field of a message's `data`: `{"value": text or number}`.
#[derive(Deserialize, ToSchema)]
pub struct DataField {
    /// At most 1024 characters.
    pub value: DataValue,
}

/// The value of a data field.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DataValue {
    /// Text of at most 1024 characters.
    Text(String),
    /// A number.
    Number(f64),
}

/// `POST /v1/apps/{appid}/messages`: a message to one user. Unknown fields
/// are refused (`form_id` too: the gateway picks the credential).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The user's openid.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub touser: String,
    /// The template's id.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub template_id: String,
    /// The mini-program page the card opens.
    #[schema(max_length = 1024)]
    pub page: Option<String>,
    /// The template's fields (at most 64).
    pub data: Option<BTreeMap<String, DataField>>,
    /// Template messages: the keyword shown large (at most 64 characters).
    #[schema(max_length = 64)]
    pub emphasis_keyword: Option<String>,
    /// Template messages: the colour (at most 64 characters).
    #[schema(max_length = 64)]
    pub color: Option<String>,
    /// Without a credential, keep the message this long and send it when
    /// one arrives (202); at most 7 days.
    #[schema(minimum = 0, maximum = 604800)]
    pub wait_seconds: Option<u64>,
    /// `at_most_once` when unset.
    pub delivery: Option<DeliveryName>,
    /// The channel; by default the template decides.
    pub channel: Option<ChannelName>,
    /// Subscribe messages: the app's default when unset.
    pub miniprogram_state: Option<MiniprogramStateName>,
    /// Subscribe messages: the app's default when unset.
    pub lang: Option<LangName>,
    /// Send inside quiet hours (needs the `urgent` scope); `false` when unset.
    pub urgent: Option<bool>,
    /// Send at this time (RFC 3339, at most 30 days ahead); a past time sends at once.
    pub send_at: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// The caller's own reference (1 to 256 characters, no control
    /// characters): kept on the message, returned with it and carried by
    /// every webhook event about it.
    #[schema(min_length = 1, max_length = 256)]
    pub reference: Option<String>,
}

/// One credential posted by a frontend.
#[derive(Deserialize, ToSchema)]
pub struct CredentialItem {
    /// The user's openid (left out on `/me/credentials`).
    #[schema(min_length = 1, max_length = 128)]
    pub openid: String,
    /// `form_id` or `prepay_id`.
    pub kind: String,
    /// The formId or prepay_id (with or without `prepay_id=`).
    #[schema(min_length = 1, max_length = 64)]
    pub value: String,
    /// When it was collected: RFC 3339 or Unix milliseconds; now when unset.
    pub collected_at: Option<CollectedAt>,
}

/// A time as RFC 3339 text or Unix milliseconds.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CollectedAt {
    /// RFC 3339.
    Text(String),
    /// Unix milliseconds.
    Millis(i64),
}

/// A batch of credentials.
#[derive(Deserialize, ToSchema)]
pub struct CredentialBatch {
    /// At most `ledger.max_batch` items; each is judged on its own.
    pub credentials: Vec<Value>,
}

/// `POST …/credentials`: one credential (422 when refused) or a batch (200
/// with each refused item).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Collect {
    /// One credential.
    One(CredentialItem),
    /// A batch.
    Batch(CredentialBatch),
}

/// One credential of the session's user (`POST …/me/credentials`): no openid.
#[derive(Deserialize, ToSchema)]
pub struct MyCredentialItem {
    /// `form_id` or `prepay_id`.
    pub kind: String,
    /// The formId or prepay_id (with or without `prepay_id=`).
    #[schema(min_length = 1, max_length = 64)]
    pub value: String,
    /// When it was collected: RFC 3339 or Unix milliseconds; now when unset.
    pub collected_at: Option<CollectedAt>,
}

/// `POST …/me/credentials`: one credential of the session's user, or a batch.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MyCollect {
    /// One credential.
    One(MyCredentialItem),
    /// A batch.
    Batch(CredentialBatch),
}

/// `POST …/me/subscriptions`: a prompt's result for the session's user.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MyPromptResult {
    /// The caller's id of this prompt.
    #[schema(min_length = 1, max_length = 128)]
    pub request_id: String,
    /// The object the prompt resolved with.
    pub result: BTreeMap<String, String>,
}

/// `POST …/subscriptions`: the result of `wx.requestSubscribeMessage`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptResult {
    /// The user's openid (left out on `/me/subscriptions`).
    #[schema(min_length = 1, max_length = 128)]
    pub openid: String,
    /// The caller's id of this prompt: posting it again replays the answer.
    #[schema(min_length = 1, max_length = 128)]
    pub request_id: String,
    /// The object the prompt resolved with: `errMsg` and a decision
    /// (`accept`, `reject`, `ban`, `filter`) per template id.
    pub result: BTreeMap<String, String>,
}

/// `POST …/access_token/refresh`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    /// The token WeChat rejected.
    #[schema(min_length = 1)]
    pub stale_token: String,
}

/// `POST …/templates` with `"channel": "template"`: a classic library
/// title and its keywords.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddClassic {
    /// `template`.
    #[schema(pattern = "^template$")]
    pub channel: String,
    /// The library title's id.
    pub library_id: String,
    /// The keywords, in order.
    pub keyword_ids: Vec<u32>,
}

/// `POST …/templates` with `"channel": "subscribe"`: a public subscribe
/// title and its keywords.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSubscribe {
    /// `subscribe`.
    #[schema(pattern = "^subscribe$")]
    pub channel: String,
    /// The public title's id.
    pub tid: u32,
    /// The keywords, in order.
    pub keyword_ids: Vec<u32>,
    /// What the template is for (at most 15 characters); none when unset.
    pub scene_desc: Option<String>,
}

/// `POST …/templates`: the body of its `channel`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum AddTemplate {
    /// A classic template.
    Classic(AddClassic),
    /// A subscribe template.
    Subscribe(AddSubscribe),
}

/// A keyword of a template draft.
#[derive(Deserialize, ToSchema)]
pub struct KeywordDraft {
    /// The keyword.
    pub name: String,
    /// Its example value.
    pub example: String,
}

/// `POST /v1/template-lint`: a draft to check against WeChat's rules.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LintDraft {
    /// 1 to 64 characters.
    pub title: String,
    /// At most 30 keywords; none when unset.
    pub keywords: Option<Vec<KeywordDraft>>,
    /// Compare with this app's templates too.
    pub appid: Option<String>,
}

/// Who a broadcast goes to.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Every user holding a credential or grant for the template.
    Holders,
    /// These users.
    Openids(Vec<String>),
    /// These users, each with its own data.
    Recipients(Vec<Value>),
    /// The recipients follow, one a line (NDJSON upload only).
    Upload,
}

/// `POST …/broadcasts`: a send request's fields (without `touser` and
/// `wait_seconds`), the audience and the time. As
/// `application/x-ndjson`, line 1 is this object with `"audience":
/// "upload"` and each further line a recipient.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBroadcast {
    pub template_id: String,
    pub page: Option<String>,
    pub data: Option<BTreeMap<String, DataField>>,
    pub emphasis_keyword: Option<String>,
    pub color: Option<String>,
    pub delivery: Option<DeliveryName>,
    pub channel: Option<ChannelName>,
    pub miniprogram_state: Option<MiniprogramStateName>,
    pub lang: Option<LangName>,
    pub audience: Audience,
    /// RFC 3339.
    pub send_at: Option<String>,
}

/// `POST …/webhooks`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// An https address.
    pub url: String,
    /// The events to send; every event when unset.
    pub event_types: Option<Vec<String>>,
}

/// `POST …/webhooks/{id}/replay`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayWebhook {
    /// RFC 3339: failed events that occurred at or after this.
    pub since: String,
}

/// `POST /v1/admin/keys`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    /// AppIDs, or `["*"]`.
    pub apps: Vec<String>,
    /// `send`, `collect`, `quota`, `token`, `templates`, `urgent`, `admin`.
    pub scopes: Vec<String>,
}

/// `POST …/sessions`: the code of `wx.login`, and nothing else.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[schema(min_length = 1, max_length = 128)]
    pub code: String,
}
