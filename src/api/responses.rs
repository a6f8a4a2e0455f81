//! The bodies of the API's answers, one type each (error answers are
//! [`ErrorBody`]).
//!
//! Every type declares its fields in the order of their names: the bodies
//! are written in that order, as they always were.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::error::{ErrorBody, ErrorObject};
use crate::clock::from_ms;
use crate::config::GrantsFrom;
use crate::ledger::kinds::CredentialKind;
use crate::ledger::states::{AttemptOutcome, Channel, Decision, MessageStatus, SubscriptionType};
use crate::ledger::template_lint::{AuditRule, Finding, Severity};
use crate::ledger::templates::Placeholder;
use crate::sending::AttemptSummary;
use crate::storage::{
    AttemptRow, KindQuota, MessageRow, PromptEffect, TemplateQuota, TemplateRecord,
};
use crate::tokens::CurrentToken;

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (the process) or `ready` (the ledger too).
    pub status: &'static str,
}

/// `POST …/credentials`: what became of a batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Collected {
    /// Credentials stored.
    pub accepted: usize,
    /// Credentials the ledger held already.
    pub duplicates: usize,
    /// The items refused, by index.
    pub rejected: Vec<ItemRejection>,
}

/// An item of a batch that was not stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ItemRejection {
    /// Machine-readable reason.
    pub code: &'static str,
    /// The item's index in the batch.
    pub index: usize,
    /// For people.
    pub message: String,
}

/// `GET …/users/{openid}/quota`: what a user's credentials and grants allow.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Quota {
    /// Template-channel credentials by kind.
    pub by_kind: BTreeMap<&'static str, KindCount>,
    /// The soonest expiry of a usable credential.
    pub next_expiry: Option<DateTime<Utc>>,
    /// The user.
    pub openid: String,
    /// Sends the credentials allow now.
    pub sends_available: i64,
    /// The user's standing per subscribe template.
    pub subscriptions: Vec<Subscription>,
}

/// The usable credentials of one kind.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KindCount {
    /// Credentials.
    pub credentials: i64,
    /// Sends they allow.
    pub sends: i64,
}

/// A user's standing with one subscribe template.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Subscription {
    /// When the user last decided.
    pub decided_at: DateTime<Utc>,
    /// The user's latest decision.
    #[schema(value_type = String)]
    pub decision: Decision,
    /// Whether a long-term subscription is on.
    pub long_term: bool,
    /// One-time grants left.
    pub one_time_grants: i64,
    /// The template.
    pub template_id: String,
}

impl Quota {
    /// The quota of `openid` from the ledger's rows.
    pub fn new(openid: String, rows: &[KindQuota], subscriptions: &[TemplateQuota]) -> Self {
        let by_kind = CredentialKind::ALL
            .into_iter()
            .filter(|kind| kind.rules().channel == Channel::Template)
            .map(|kind| {
                let row = rows.iter().find(|row| row.kind == kind.as_str());
                let count = KindCount {
                    credentials: row.map_or(0, |row| row.credentials),
                    sends: row.map_or(0, |row| row.sends),
                };
                (kind.as_str(), count)
            })
            .collect();
        Self {
            by_kind,
            next_expiry: rows
                .iter()
                .filter_map(|row| row.next_expiry)
                .min()
                .map(from_ms),
            openid,
            sends_available: rows.iter().map(|row| row.sends).sum(),
            subscriptions: subscriptions.iter().map(Subscription::from).collect(),
        }
    }
}

impl From<&TemplateQuota> for Subscription {
    fn from(row: &TemplateQuota) -> Self {
        Self {
            decided_at: from_ms(row.decided_at),
            decision: row.decision,
            long_term: row.long_term,
            one_time_grants: row.grants,
            template_id: row.template_id.clone(),
        }
    }
}

/// `POST …/subscriptions`: what a prompt result did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PromptRecorded {
    /// One-time grants this post added (0 when replayed).
    pub granted: usize,
    /// Which source grants for this app.
    #[schema(value_type = String)]
    pub grants_from: GrantsFrom,
    /// Why nothing was granted, when the app's grants come from WeChat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
    /// The user.
    pub openid: String,
    /// Whether the result was only recorded as the user's decisions.
    pub recorded_only: bool,
    /// Whether this request_id was posted before.
    pub replayed: bool,
    /// The frontend's id of the prompt.
    pub request_id: String,
    /// The user's standing per subscribe template, after the post.
    pub subscriptions: Vec<Subscription>,
    /// Each template of the prompt and what its answer did.
    pub templates: Vec<PromptTemplate>,
}

/// One template of a prompt result.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PromptTemplate {
    /// The user's answer.
    #[schema(value_type = String)]
    pub decision: Decision,
    /// What it did in the ledger.
    #[schema(value_type = String)]
    pub effect: PromptEffect,
    /// The template.
    pub template_id: String,
}

/// `GET …/access_token` and `POST …/access_token/refresh`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccessToken {
    /// The token.
    pub access_token: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// Seconds until then.
    pub expires_in: i64,
}

impl AccessToken {
    /// The answer for `token` at `now_ms`.
    pub fn new(token: CurrentToken, now_ms: i64) -> Self {
        Self {
            access_token: token.token,
            expires_at: from_ms(token.expires_at_ms),
            expires_in: (token.expires_at_ms - now_ms) / 1000,
        }
    }
}

/// `POST /v1/template-lint`: a draft's findings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Linted {
    /// How many stored titles the draft was compared with.
    pub compared_with: usize,
    /// Findings of severity `error`.
    pub errors: usize,
    /// Every finding.
    pub findings: Vec<LintFinding>,
    /// Findings of severity `warning`.
    pub warnings: usize,
}

/// One rule a draft breaks.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LintFinding {
    /// The keyword's index in the draft; `null` for the title.
    pub keyword: Option<usize>,
    /// For people.
    pub message: String,
    /// The rule's number (`1.3`).
    #[schema(value_type = String)]
    pub rule: AuditRule,
    /// `error` or `warning`.
    #[schema(value_type = String)]
    pub severity: Severity,
}

impl From<Finding> for LintFinding {
    fn from(finding: Finding) -> Self {
        Self {
            keyword: finding.keyword,
            message: finding.message,
            rule: finding.rule,
            severity: finding.severity,
        }
    }
}

/// `GET …/templates`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TemplateList {
    /// The app's templates.
    pub templates: Vec<Template>,
}

/// A template of the app, its placeholders parsed from its content.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Template {
    /// `template` (classic) or `subscribe`.
    #[schema(value_type = String)]
    pub channel: Channel,
    /// The content, with its `{{name.DATA}}` placeholders.
    pub content: String,
    /// Enum placeholders' allowed values, by placeholder name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub enum_values: BTreeMap<String, Vec<String>>,
    /// WeChat's example.
    pub example: String,
    /// `template_id` (classic) or `priTmplId` (subscribe).
    pub id: String,
    /// The placeholders of the content.
    #[schema(value_type = Vec<Object>)]
    pub placeholders: Vec<Placeholder>,
    /// When it was read from WeChat.
    pub refreshed_at: DateTime<Utc>,
    /// The title.
    pub title: String,
    /// One-time or long-term.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub subscription: SubscriptionType,
}

impl From<&TemplateRecord> for Template {
    fn from(record: &TemplateRecord) -> Self {
        let template = record.to_catalogue();
        Self {
            channel: template.channel,
            content: template.content,
            enum_values: template.enum_values,
            example: template.example,
            id: template.template_id,
            placeholders: template.placeholders,
            refreshed_at: from_ms(record.refreshed_at),
            title: template.title,
            subscription: template.subscription,
        }
    }
}

/// `DELETE …/templates/{template_id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TemplateDeleted {
    /// Always true.
    pub deleted: bool,
    /// The template deleted.
    pub id: String,
}

/// `GET …/template-library?channel=template`: a page of classic titles.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClassicLibraryPage {
    /// `template`.
    #[schema(value_type = String)]
    pub channel: Channel,
    /// The titles of the page.
    pub titles: Vec<ClassicTitle>,
    /// Titles in the library, when WeChat says.
    pub total_count: Option<u64>,
}

/// A classic library title.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClassicTitle {
    /// Its id (`AT0002`).
    pub id: String,
    /// Its title.
    pub title: String,
}

/// `GET …/template-library?channel=subscribe`: a page of public titles.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscribeLibraryPage {
    /// `subscribe`.
    #[schema(value_type = String)]
    pub channel: Channel,
    /// The titles of the page.
    pub titles: Vec<SubscribeTitle>,
    /// Titles of the categories asked.
    pub total_count: u64,
}

/// A public subscribe title.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscribeTitle {
    /// Its category, as WeChat gives it (a string, a number in some copies).
    pub category_id: Option<Value>,
    /// Its `tid`.
    pub id: u32,
    /// Its title.
    pub title: String,
    /// One-time or long-term.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub subscription: SubscriptionType,
}

/// `GET …/template-library/categories`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CategoryList {
    /// The account's categories.
    pub categories: Vec<Category>,
}

/// A category of the account.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Category {
    /// Its id, for `category_ids`.
    pub id: u32,
    /// Its name.
    pub name: String,
}

/// `GET …/template-library/{id}?channel=template`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClassicLibraryEntry {
    /// `template`.
    #[schema(value_type = String)]
    pub channel: Channel,
    /// The title's id.
    pub id: String,
    /// Its keywords.
    pub keywords: Vec<ClassicKeyword>,
    /// Its title.
    pub title: String,
}

/// A keyword of a classic library title.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClassicKeyword {
    /// An example value.
    pub example: String,
    /// Its id, for `keyword_ids`.
    pub id: u32,
    /// Its name.
    pub name: String,
}

/// `GET …/template-library/{tid}?channel=subscribe`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscribeLibraryEntry {
    /// `subscribe`.
    #[schema(value_type = String)]
    pub channel: Channel,
    /// The title's `tid`.
    pub id: u32,
    /// Its keywords.
    pub keywords: Vec<SubscribeKeyword>,
}

/// A keyword of a public subscribe title.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscribeKeyword {
    /// An example value.
    pub example: String,
    /// Its `kid`, for `keyword_ids`.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Its placeholder type (`thing`, `time`, …).
    #[serde(rename = "type")]
    pub rule: String,
}

/// The body of an answer to `POST …/messages`, as sent and as stored for an
/// idempotency key.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum SendBody {
    /// The send ran: where it ended.
    Answer(Sent),
    /// The gateway failed before it could tell.
    Error(ErrorBody),
}

/// Where a send ended (for now).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Sent {
    /// Each attempt, in order.
    pub attempts: Vec<Attempt>,
    /// The channel it went by (absent when answered again from the ledger).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub channel: Option<Channel>,
    /// Whether the data was checked against a known template (absent when
    /// answered again from the ledger).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked: Option<bool>,
    /// Why it was not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<ErrorObject>,
    /// The message.
    pub id: String,
    /// The caller's `reference` from the send request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The message's status.
    #[schema(value_type = String)]
    pub status: MessageStatus,
}

/// One attempt of a send.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    /// The kind of credential spent, if any.
    pub credential_kind: Option<&'static str>,
    /// WeChat's errcode, if it answered.
    pub errcode: Option<i64>,
    /// WeChat's errmsg of a refused call (a 47003's names the field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errmsg: Option<String>,
    /// WeChat's id of a delivered subscribe message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgid: Option<String>,
    /// How it ended.
    #[schema(value_type = String)]
    pub outcome: AttemptOutcome,
}

impl From<AttemptSummary> for Attempt {
    fn from(attempt: AttemptSummary) -> Self {
        Self {
            credential_kind: attempt.credential_kind,
            errcode: attempt.errcode,
            errmsg: attempt.errmsg,
            msgid: attempt.msgid,
            outcome: attempt.outcome,
        }
    }
}

/// `GET …/messages/{id}`: a message and its attempts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Message {
    /// Each attempt, in order.
    pub attempts: Vec<StoredAttempt>,
    /// `template` or `subscribe`.
    #[schema(value_type = String)]
    pub channel: Channel,
    /// When the send was asked for.
    pub created_at: DateTime<Utc>,
    /// How a subscribe send finally ended, as WeChat pushed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Why it was not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<MessageError>,
    /// The message.
    pub id: String,
    /// The caller's `reference` from the send request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Its status.
    #[schema(value_type = String)]
    pub status: MessageStatus,
    /// The template.
    pub template_id: String,
    /// The user.
    pub touser: String,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// An attempt as the ledger keeps it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StoredAttempt {
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The kind of credential spent, if any.
    pub credential_kind: Option<String>,
    /// WeChat's errcode, if it answered.
    pub errcode: Option<i64>,
    /// WeChat's id of a delivered subscribe message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgid: Option<String>,
    /// How it ended.
    #[schema(value_type = String)]
    pub outcome: AttemptOutcome,
}

/// WeChat's `subscribe_msg_sent_event` for a message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// When the push arrived.
    pub at: DateTime<Utc>,
    /// WeChat's `ErrorCode` (0: delivered).
    pub error_code: i64,
    /// WeChat's `ErrorStatus`.
    pub error_status: Option<String>,
}

/// The failure a message ended with.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageError {
    /// The failure's code.
    pub code: String,
    /// WeChat's errcode behind it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wechat_errcode: Option<i64>,
}

impl Message {
    /// The answer for a stored message and its attempts.
    pub fn new(message: MessageRow, attempts: Vec<AttemptRow>) -> Self {
        let delivery = message
            .delivery_error_code
            .zip(message.delivery_reported_at)
            .map(|(error_code, at)| Delivery {
                at: from_ms(at),
                error_code,
                error_status: message.delivery_error_status,
            });
        let error = message.error_code.map(|code| MessageError {
            code,
            wechat_errcode: message.wechat_errcode,
        });
        Self {
            attempts: attempts.into_iter().map(StoredAttempt::from).collect(),
            channel: message.channel,
            created_at: from_ms(message.created_at),
            delivery,
            error,
            id: message.id,
            reference: message.reference,
            status: message.status,
            template_id: message.template_id,
            touser: message.touser,
            updated_at: from_ms(message.updated_at),
        }
    }
}

impl From<AttemptRow> for StoredAttempt {
    fn from(attempt: AttemptRow) -> Self {
        Self {
            at: from_ms(attempt.at),
            credential_kind: attempt.credential_kind,
            errcode: attempt.errcode,
            msgid: attempt.msgid,
            outcome: attempt.outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's maps are sorted, so a body that reads the same after a
    /// round trip through a `Value` wrote its keys in the order of their
    /// names, at every depth.
    fn assert_sorted(body: &impl Serialize) {
        let text = serde_json::to_string(body).unwrap();
        let sorted = serde_json::to_string(&serde_json::to_value(body).unwrap()).unwrap();
        assert_eq!(text, sorted);
    }

    fn at() -> DateTime<Utc> {
        from_ms(1_700_000_000_000)
    }

    #[test]
    fn every_body_writes_its_fields_in_the_order_of_their_names() {
        let subscription = || Subscription {
            decided_at: at(),
            decision: Decision::Accept,
            long_term: false,
            one_time_grants: 1,
            template_id: "t".into(),
        };
        assert_sorted(&Collected {
            accepted: 1,
            duplicates: 0,
            rejected: vec![ItemRejection {
                code: "c",
                index: 1,
                message: "m".into(),
            }],
        });
        let by_kind = [(
            "form_id",
            KindCount {
                credentials: 1,
                sends: 1,
            },
        )]
        .into();
        assert_sorted(&Quota {
            by_kind,
            next_expiry: Some(at()),
            openid: "o".into(),
            sends_available: 1,
            subscriptions: vec![subscription()],
        });
        assert_sorted(&PromptRecorded {
            granted: 1,
            grants_from: GrantsFrom::Wechat,
            note: Some("n"),
            openid: "o".into(),
            recorded_only: true,
            replayed: false,
            request_id: "r".into(),
            subscriptions: vec![subscription()],
            templates: vec![PromptTemplate {
                decision: Decision::Reject,
                effect: PromptEffect::Granted,
                template_id: "t".into(),
            }],
        });
        assert_sorted(&AccessToken::new(
            CurrentToken {
                token: "x".into(),
                expires_at_ms: 1_700_000_000_000,
            },
            1_699_999_000_000,
        ));
        assert_sorted(&Linted {
            compared_with: 1,
            errors: 1,
            findings: vec![LintFinding {
                keyword: Some(0),
                message: "m".into(),
                rule: AuditRule::TitleUnique,
                severity: Severity::Error,
            }],
            warnings: 0,
        });
    }

    #[test]
    fn template_bodies_write_their_fields_in_the_order_of_their_names() {
        assert_sorted(&TemplateList {
            templates: vec![Template {
                channel: Channel::Subscribe,
                content: "c".into(),
                enum_values: [("k".to_owned(), vec!["v".to_owned()])].into(),
                example: "e".into(),
                id: "i".into(),
                placeholders: Vec::new(),
                refreshed_at: at(),
                title: "t".into(),
                subscription: SubscriptionType::OneTime,
            }],
        });
        assert_sorted(&TemplateDeleted {
            deleted: true,
            id: "i".into(),
        });
        assert_sorted(&SubscribeLibraryPage {
            channel: Channel::Subscribe,
            titles: vec![SubscribeTitle {
                category_id: Some("616".into()),
                id: 1,
                title: "t".into(),
                subscription: SubscriptionType::LongTerm,
            }],
            total_count: 1,
        });
        assert_sorted(&ClassicLibraryEntry {
            channel: Channel::Template,
            id: "AT0002".into(),
            keywords: vec![ClassicKeyword {
                example: "e".into(),
                id: 1,
                name: "n".into(),
            }],
            title: "t".into(),
        });
        assert_sorted(&SubscribeLibraryEntry {
            channel: Channel::Subscribe,
            id: 1,
            keywords: vec![SubscribeKeyword {
                example: "e".into(),
                id: 1,
                name: "n".into(),
                rule: "thing".into(),
            }],
        });
    }

    #[test]
    fn message_bodies_write_their_fields_in_the_order_of_their_names() {
        let error = super::super::error::ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "no_credential",
            "m",
        )
        .with_wechat_errcode(Some(43101))
        .with_detail("wechat_errmsg", "e");
        assert_sorted(&SendBody::Answer(Sent {
            attempts: vec![Attempt {
                credential_kind: Some("form_id"),
                errcode: Some(0),
                errmsg: Some("e".into()),
                msgid: Some("1".into()),
                outcome: AttemptOutcome::Sent,
            }],
            channel: Some(Channel::Template),
            checked: Some(true),
            error: Some(error.public_object()),
            id: "i".into(),
            reference: Some("r".into()),
            status: MessageStatus::Failed,
        }));
        assert_sorted(&SendBody::Error(ErrorBody::new(
            "internal",
            "internal error",
        )));
        assert_sorted(&Message {
            attempts: vec![StoredAttempt {
                at: at(),
                credential_kind: Some("subscribe".into()),
                errcode: Some(0),
                msgid: Some("1".into()),
                outcome: AttemptOutcome::Sent,
            }],
            channel: Channel::Subscribe,
            created_at: at(),
            delivery: Some(Delivery {
                at: at(),
                error_code: 0,
                error_status: Some("success".into()),
            }),
            error: Some(MessageError {
                code: "c".into(),
                wechat_errcode: Some(1),
            }),
            id: "i".into(),
            reference: Some("r".into()),
            status: MessageStatus::Sent,
            template_id: "t".into(),
            touser: "o".into(),
            updated_at: at(),
        });
    }
}
