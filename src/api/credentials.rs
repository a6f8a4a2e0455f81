//! `POST /v1/apps/{appid}/credentials` and `GET /v1/apps/{appid}/users/{openid}/quota`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{json, Value};

use super::error::{render, AccessError, ApiErrorCode, BodyError};
use super::ApiContext;
use crate::clock::{from_ms, ms};
use crate::config::Scope;
use crate::ledger::collect::{
    is_plain_identifier, parse_item, CollectContext, Rejection, MAX_OPENID_LEN,
};
use crate::storage::InsertOutcome;

/// Errors of the collection endpoint.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("the body must be one credential object or {{\"credentials\": [...]}}")]
    InvalidShape,
    #[error("a batch may carry at most {0} credentials")]
    TooManyItems(usize),
    #[error("{}", .0.message)]
    Rejected(Rejection),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ResponseError for CollectError {
    fn status_code(&self) -> StatusCode {
        match self {
            CollectError::Access(error) => error.status_code(),
            CollectError::Body(error) => error.status_code(),
            CollectError::InvalidShape => StatusCode::BAD_REQUEST,
            CollectError::TooManyItems(_) => StatusCode::PAYLOAD_TOO_LARGE,
            CollectError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            CollectError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        render(self)
    }
}

impl ApiErrorCode for CollectError {
    fn code(&self) -> &'static str {
        match self {
            CollectError::Access(error) => error.code(),
            CollectError::Body(error) => error.code(),
            CollectError::InvalidShape => "invalid_body",
            CollectError::TooManyItems(_) => "too_many_items",
            CollectError::Rejected(rejection) => rejection.code,
            CollectError::Unexpected(_) => "internal",
        }
    }
}

#[derive(Debug, Serialize)]
struct ItemRejection {
    index: usize,
    code: &'static str,
    message: String,
}

/// Stores one credential or a batch. A single item that cannot be stored is
/// a 422; a batch answers 200 with each rejected item and its reason.
pub async fn collect(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, CollectError> {
    let appid = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Collect])?;
    let body = context.read_json(&request, payload).await?.value;
    let (items, single) = match body {
        Value::Object(mut object) if object.contains_key("credentials") => {
            match object.remove("credentials") {
                Some(Value::Array(items)) => (items, false),
                _ => return Err(CollectError::InvalidShape),
            }
        }
        Value::Object(object) => (vec![Value::Object(object)], true),
        _ => return Err(CollectError::InvalidShape),
    };
    if items.len() > context.ledger.max_batch {
        return Err(CollectError::TooManyItems(context.ledger.max_batch));
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
            Err(rejection) if single => return Err(CollectError::Rejected(rejection)),
            Err(rejection) => rejected.push(ItemRejection {
                index,
                code: rejection.code,
                message: rejection.message,
            }),
        }
    }
    let outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        context
            .storage
            .insert_credentials(&appid, &valid, now_ms)
            .await?
    };
    let mut accepted = 0;
    let mut duplicates = 0;
    for (index, outcome) in valid_indexes.into_iter().zip(outcomes) {
        match outcome {
            InsertOutcome::Inserted => accepted += 1,
            InsertOutcome::Duplicate => duplicates += 1,
            InsertOutcome::OwnedByAnotherUser | InsertOutcome::KindConflict => {
                let rejection = match outcome {
                    InsertOutcome::KindConflict => ItemRejection {
                        index,
                        code: "kind_conflict",
                        message: "this value is already stored as another kind; one value is one credential".into(),
                    },
                    _ => ItemRejection {
                        index,
                        code: "owned_by_another_user",
                        message: "this value is already stored for another openid".into(),
                    },
                };
                if single {
                    return Err(CollectError::Rejected(Rejection {
                        code: rejection.code,
                        message: rejection.message,
                    }));
                }
                rejected.push(rejection);
            }
        }
    }
    rejected.sort_by_key(|rejection| rejection.index);
    Ok(HttpResponse::Ok().json(json!({
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected,
    })))
}

/// Errors of the quota endpoint.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("openid must be 1 to {MAX_OPENID_LEN} printable characters")]
    InvalidOpenid,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ResponseError for QuotaError {
    fn status_code(&self) -> StatusCode {
        match self {
            QuotaError::Access(error) => error.status_code(),
            QuotaError::InvalidOpenid => StatusCode::BAD_REQUEST,
            QuotaError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        render(self)
    }
}

impl ApiErrorCode for QuotaError {
    fn code(&self) -> &'static str {
        match self {
            QuotaError::Access(error) => error.code(),
            QuotaError::InvalidOpenid => "invalid_openid",
            QuotaError::Unexpected(_) => "internal",
        }
    }
}

/// Sends a user's credentials allow now, by kind, and the next expiry; and
/// per subscribe template, the one-time grants left, whether a long-term
/// subscription is on, and the user's latest decision.
/// Counts what a send could claim: credentials inside the safety margin of
/// their expiry are already left out.
pub async fn quota(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, QuotaError> {
    let (appid, openid) = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Send, Scope::Collect])?;
    if !is_plain_identifier(&openid, MAX_OPENID_LEN) {
        return Err(QuotaError::InvalidOpenid);
    }
    let valid_after = context.clock.now_ms() + ms(context.ledger.safety_margin);
    let rows = context.storage.quota(&appid, &openid, valid_after).await?;
    let mut by_kind = serde_json::Map::new();
    for kind in crate::ledger::kinds::CredentialKind::ALL
        .into_iter()
        .filter(|kind| kind.rules().channel == crate::ledger::states::Channel::Template)
    {
        let row = rows.iter().find(|row| row.kind == kind.as_str());
        by_kind.insert(
            kind.as_str().into(),
            json!({
                "credentials": row.map_or(0, |row| row.credentials),
                "sends": row.map_or(0, |row| row.sends),
            }),
        );
    }
    let next_expiry = rows.iter().filter_map(|row| row.next_expiry).min();
    let subscriptions = context.storage.subscription_quota(&appid, &openid).await?;
    Ok(HttpResponse::Ok().json(json!({
        "openid": openid,
        "sends_available": rows.iter().map(|row| row.sends).sum::<i64>(),
        "by_kind": by_kind,
        "next_expiry": next_expiry.map(from_ms),
        "subscriptions": super::subscriptions::subscriptions_json(&subscriptions),
    })))
}
