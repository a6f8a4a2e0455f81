//! `POST /v1/apps/{appid}/credentials` and `GET /v1/apps/{appid}/users/{openid}/quota`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use super::authorized::{Authorized, CollectScope, QuotaScope};
use super::error::ApiError;
use super::responses::{Collected, ItemRejection, Quota};
use super::ApiContext;
use crate::clock::ms;
use crate::ledger::collect::{
    insert_outcome, is_plain_identifier, parse_item, CollectContext, Rejection, MAX_OPENID_LEN,
};
use crate::storage::{InsertOutcome, NewCredential};

/// 400: neither one credential nor `{"credentials": [...]}`.
fn invalid_shape() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_body",
        "the body must be one credential object or {\"credentials\": [...]}",
    )
}

/// The items of a body, and whether it was a single credential.
fn items_of(body: Value) -> Result<(Vec<Value>, bool), ApiError> {
    match body {
        Value::Object(mut object) if object.contains_key("credentials") => {
            match object.remove("credentials") {
                Some(Value::Array(items)) => Ok((items, false)),
                _ => Err(invalid_shape()),
            }
        }
        Value::Object(object) => Ok((vec![Value::Object(object)], true)),
        _ => Err(invalid_shape()),
    }
}

/// Stores one credential or a batch. A single item that cannot be stored is
/// a 422; a batch answers 200 with each rejected item and its reason.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/credentials", tag = "credentials", operation_id = "collect_credentials",
    params(("appid" = String, Path, description = "The app's AppID")),
    request_body = crate::api::requests::Collect,
    responses((status = 200, description = "What became of each credential", body = Collected)),
    security(("api_key" = [])),
)]
pub async fn collect(
    auth: Authorized<CollectScope>,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let body = context.read_json(&request, payload).await?.value;
    collect_body(&context, auth.appid(), body).await
}

/// Stores the credentials of a read body for `appid`: the one path of the
/// collect route and of `POST …/me/credentials`.
pub(super) async fn collect_body(
    context: &ApiContext,
    appid: &str,
    body: Value,
) -> Result<HttpResponse, ApiError> {
    let (items, single) = items_of(body)?;
    if items.len() > context.ledger.max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_items",
            format!(
                "a batch may carry at most {} credentials",
                context.ledger.max_batch
            ),
        ));
    }
    let now_ms = context.clock.now_ms();
    let judged = CollectContext {
        now_ms,
        skew_ms: ms(context.ledger.collected_at_skew),
    };
    let mut valid = Vec::with_capacity(items.len());
    let mut valid_indexes = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match parse_item(item, judged) {
            Ok(credential) => {
                valid.push(credential);
                valid_indexes.push(index);
            }
            Err(rejection) if single => return Err(rejection.into()),
            Err(rejection) => rejected.push(ItemRejection {
                index,
                code: rejection.code,
                message: rejection.message,
            }),
        }
    }
    let mut answer = Collected {
        accepted: 0,
        duplicates: 0,
        rejected,
    };
    store(context, appid, &valid, &valid_indexes, now_ms, &mut answer).await?;
    answer.rejected.sort_by_key(|rejection| rejection.index);
    if single {
        if let Some(rejection) = answer.rejected.pop() {
            return Err(Rejection {
                code: rejection.code,
                message: rejection.message,
            }
            .into());
        }
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// Stores the valid items (`indexes` are their places in the batch) and
/// counts in `answer` what became of them.
async fn store(
    context: &ApiContext,
    appid: &str,
    valid: &[NewCredential],
    indexes: &[usize],
    now_ms: i64,
    answer: &mut Collected,
) -> Result<(), ApiError> {
    if valid.is_empty() {
        return Ok(());
    }
    let stored = context
        .storage
        .insert_credentials(appid, valid, now_ms)
        .await?;
    for ((&index, stored), item) in indexes.iter().zip(&stored).zip(valid) {
        match insert_outcome(stored, item) {
            InsertOutcome::Inserted => answer.accepted += 1,
            InsertOutcome::Duplicate => answer.duplicates += 1,
            InsertOutcome::KindConflict => answer.rejected.push(ItemRejection {
                index,
                code: "kind_conflict",
                message:
                    "this value is already stored as another kind; one value is one credential"
                        .into(),
            }),
            InsertOutcome::OwnedByAnotherUser => answer.rejected.push(ItemRejection {
                index,
                code: "owned_by_another_user",
                message: "this value is already stored for another openid".into(),
            }),
        }
    }
    Ok(())
}

/// The `{openid}` of a user's route.
#[derive(Deserialize)]
pub struct UserPath {
    openid: String,
}

/// Sends a user's credentials allow now, by kind, and the next expiry; and
/// per subscribe template, the one-time grants left, whether a long-term
/// subscription is on, and the user's latest decision.
/// Counts what a send could claim: credentials inside the safety margin of
/// their expiry are already left out.
#[utoipa::path(
    get, path = "/v1/apps/{appid}/users/{openid}/quota", tag = "credentials", operation_id = "user_quota",
    params(("appid" = String, Path, description = "The app's AppID"), ("openid" = String, Path, description = "The openid of the user")),
    responses((status = 200, description = "The sends the user's credentials and grants allow now", body = Quota)),
    security(("api_key" = [])),
)]
pub async fn quota(
    auth: Authorized<QuotaScope>,
    path: web::Path<UserPath>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    quota_of(&context, auth.appid(), path.into_inner().openid).await
}

/// A user's quota: the one path of the quota route and of `GET …/me/quota`.
pub(super) async fn quota_of(
    context: &ApiContext,
    appid: &str,
    openid: String,
) -> Result<HttpResponse, ApiError> {
    if !is_plain_identifier(&openid, MAX_OPENID_LEN) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_openid",
            format!("openid must be 1 to {MAX_OPENID_LEN} printable characters"),
        ));
    }
    let valid_after = context.clock.now_ms() + ms(context.ledger.safety_margin);
    let rows = context.storage.quota(appid, &openid, valid_after).await?;
    let subscriptions = context.storage.subscription_quota(appid, &openid).await?;
    Ok(HttpResponse::Ok().json(Quota::new(openid, &rows, &subscriptions)))
}
