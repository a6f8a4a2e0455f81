//! `POST /v1/apps/{appid}/subscriptions`: a frontend posts what
//! `wx.requestSubscribeMessage` resolved with; accepted templates become grants
//! when the app's grants come from its frontend (`subscribe_grants_from =
//! "frontend"`, the default), and are the user's recorded decision only when
//! they come from WeChat's push (`"wechat"`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::{render, AccessError, ApiErrorCode, BodyError};
use super::ApiContext;
use crate::clock::from_ms;
use crate::config::{GrantsFrom, Scope};
use crate::ledger::collect::Rejection;
use crate::ledger::subscriptions::{parse_prompt, Prompt};
use crate::storage::{NewPrompt, PromptEffect, PromptRecord, TemplateQuota};

/// Errors of the subscription endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("{}", .0.message)]
    Rejected(Rejection),
    #[error("this request_id was posted before with another result; nothing was granted")]
    RequestIdReused,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ResponseError for SubscriptionError {
    fn status_code(&self) -> StatusCode {
        match self {
            SubscriptionError::Access(error) => error.status_code(),
            SubscriptionError::Body(error) => error.status_code(),
            SubscriptionError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            SubscriptionError::RequestIdReused => StatusCode::CONFLICT,
            SubscriptionError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        render(self)
    }
}

impl ApiErrorCode for SubscriptionError {
    fn code(&self) -> &'static str {
        match self {
            SubscriptionError::Access(error) => error.code(),
            SubscriptionError::Body(error) => error.code(),
            SubscriptionError::Rejected(rejection) => rejection.code,
            SubscriptionError::RequestIdReused => "request_id_reused",
            SubscriptionError::Unexpected(_) => "internal",
        }
    }
}

/// The same prompt, whatever its whitespace or key order.
fn prompt_hash(prompt: &Prompt) -> String {
    let mut hasher = Sha256::new();
    for decision in &prompt.decisions {
        hasher.update(decision.template_id.as_bytes());
        hasher.update([0]);
        hasher.update(decision.decision.as_str().as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// Records a prompt result: each accepted one-time template grants one
/// send, an accepted long-term template switches its subscription on, and
/// every answer is kept as the user's latest decision. The same request_id
/// posted again (a frontend retrying) grants nothing more and answers what
/// the first post did.
#[tracing::instrument(name = "subscriptions", skip_all, fields(appid = %path.as_str()))]
pub async fn record(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, SubscriptionError> {
    let appid = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Collect])?;
    let body = context.read_json(&request, payload).await?.value;
    let prompt = parse_prompt(&body).map_err(SubscriptionError::Rejected)?;
    let request_hash = prompt_hash(&prompt);
    // Exactly one source grants: with `wechat`, the popup events of the
    // push do, and this result is the user's decision only.
    let grants_from = context
        .apps
        .get(&appid)
        .map_or(GrantsFrom::default(), |app| app.subscribe_grants_from);
    let grants = grants_from == GrantsFrom::Frontend;
    let new = NewPrompt {
        appid: appid.clone(),
        openid: prompt.openid.clone(),
        request_id: prompt.request_id.clone(),
        request_hash: request_hash.clone(),
        decisions: prompt.decisions.clone(),
        grants,
    };
    let now = context.clock.now_ms();
    let (effects, replayed) = match context.storage.record_prompt(&new, now).await? {
        PromptRecord::Recorded(effects) => (effects, false),
        PromptRecord::Repeated {
            request_hash: earlier,
            effects,
        } if earlier == request_hash => (effects, true),
        PromptRecord::Repeated { .. } => return Err(SubscriptionError::RequestIdReused),
    };
    context.catalogue.decided_on(
        &appid,
        prompt
            .decisions
            .iter()
            .map(|decision| decision.template_id.as_str()),
    );
    let templates: Vec<Value> = prompt
        .decisions
        .iter()
        .zip(&effects)
        .map(|(decision, effect)| {
            json!({
                "template_id": decision.template_id,
                "decision": decision.decision,
                "effect": effect,
            })
        })
        .collect();
    let standing = context
        .storage
        .subscription_quota(&appid, &prompt.openid)
        .await?;
    let granted = effects
        .iter()
        .filter(|effect| **effect == PromptEffect::Granted)
        .count();
    let mut answer = json!({
        "openid": prompt.openid,
        "request_id": prompt.request_id,
        "replayed": replayed,
        "granted": if replayed { 0 } else { granted },
        "grants_from": grants_from,
        "recorded_only": !grants,
        "templates": templates,
        "subscriptions": subscriptions_json(&standing),
    });
    if !grants {
        answer["note"] = json!(
            "recorded only: this app's grants come from WeChat's subscribe_msg_popup_event \
             (subscribe_grants_from = wechat), not from posted results"
        );
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// A user's standing per subscribe template, as the API shows it.
pub fn subscriptions_json(rows: &[TemplateQuota]) -> Vec<Value> {
    rows.iter()
        .map(|row| {
            json!({
                "template_id": row.template_id,
                "one_time_grants": row.grants,
                "long_term": row.long_term,
                "decision": row.decision,
                "decided_at": from_ms(row.decided_at),
            })
        })
        .collect()
}
