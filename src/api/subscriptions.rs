//! `POST /v1/apps/{appid}/subscriptions`: a frontend posts what
//! `wx.requestSubscribeMessage` resolved with; accepted templates become grants
//! when the app's grants come from its frontend (`subscribe_grants_from =
//! "frontend"`, the default), and are the user's recorded decision only when
//! they come from WeChat's push (`"wechat"`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use super::authorized::{Authorized, CollectScope};
use super::error::ApiError;
use super::responses::{PromptRecorded, PromptTemplate, Subscription};
use super::ApiContext;
use crate::config::GrantsFrom;
use crate::ledger::subscriptions::{parse_prompt, prompt_plan, Prompt};
use crate::storage::{NewPrompt, PromptEffect, PromptRecord};

/// What an app whose grants come from WeChat is told of a posted result.
const RECORDED_ONLY: &str = "recorded only: this app's grants come from WeChat's \
     subscribe_msg_popup_event (subscribe_grants_from = wechat), not from posted results";

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
#[utoipa::path(
    post, path = "/v1/apps/{appid}/subscriptions", tag = "subscriptions", operation_id = "record_prompt",
    params(("appid" = String, Path, description = "The app's AppID")),
    request_body = crate::api::requests::PromptResult,
    responses((status = 200, description = "The prompt's effect on each template, and the user's grants", body = PromptRecorded)),
    security(("api_key" = [])),
)]
#[tracing::instrument(name = "subscriptions", skip_all, fields(appid = %auth.appid()))]
pub async fn record(
    auth: Authorized<CollectScope>,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let body = context.read_json(&request, payload).await?.value;
    record_body(&context, auth.appid(), &body).await
}

/// Records the prompt result of a read body for `appid`: the one path of
/// the subscriptions route and of `POST …/me/subscriptions`.
pub(super) async fn record_body(
    context: &ApiContext,
    appid: &str,
    body: &serde_json::Value,
) -> Result<HttpResponse, ApiError> {
    let prompt = parse_prompt(body)?;
    // Exactly one source grants: with `wechat`, the popup events of the
    // push do, and this result is the user's decision only.
    let grants_from = context
        .apps
        .get(appid)
        .map_or(GrantsFrom::default(), |app| app.subscribe_grants_from);
    let grants = grants_from == GrantsFrom::Frontend;
    let (effects, replayed) = record_once(context, appid, &prompt, grants).await?;
    context.catalogue.decided_on(
        appid,
        prompt
            .decisions
            .iter()
            .map(|decision| decision.template_id.as_str()),
    );
    let standing = context
        .storage
        .subscription_quota(appid, &prompt.openid)
        .await?;
    let granted = effects
        .iter()
        .filter(|effect| **effect == PromptEffect::Granted)
        .count();
    let templates = prompt
        .decisions
        .into_iter()
        .zip(effects)
        .map(|(decision, effect)| PromptTemplate {
            decision: decision.decision,
            effect,
            template_id: decision.template_id,
        })
        .collect();
    Ok(HttpResponse::Ok().json(PromptRecorded {
        granted: if replayed { 0 } else { granted },
        grants_from,
        note: (!grants).then_some(RECORDED_ONLY),
        openid: prompt.openid,
        recorded_only: !grants,
        replayed,
        request_id: prompt.request_id,
        subscriptions: standing.iter().map(Subscription::from).collect(),
        templates,
    }))
}

/// Records the prompt once per request_id: its effects, and whether they
/// are those of an earlier post of the same result. The same request_id
/// with another result is a 409 that grants nothing.
async fn record_once(
    context: &ApiContext,
    appid: &str,
    prompt: &Prompt,
    grants: bool,
) -> Result<(Vec<PromptEffect>, bool), ApiError> {
    let request_hash = prompt_hash(prompt);
    let new = NewPrompt {
        appid: appid.to_owned(),
        openid: prompt.openid.clone(),
        request_id: prompt.request_id.clone(),
        request_hash: request_hash.clone(),
        decisions: prompt.decisions.clone(),
        plans: prompt
            .decisions
            .iter()
            .map(|decision| prompt_plan(grants, decision.decision))
            .collect(),
    };
    let now = context.clock.now_ms();
    match context.storage.record_prompt(&new, now).await? {
        PromptRecord::Recorded(effects) => Ok((effects, false)),
        PromptRecord::Repeated {
            request_hash: earlier,
            effects,
        } if earlier == request_hash => Ok((effects, true)),
        PromptRecord::Repeated { .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "request_id_reused",
            "this request_id was posted before with another result; nothing was granted",
        )),
    }
}
