//! Webhook endpoints (scope admin): `GET|POST /v1/apps/{appid}/webhooks`,
//! `GET …/webhooks/{id}`, `POST …/webhooks/{id}/disable`,
//! `…/rotate-secret`, `…/test`, `…/replay`, `GET …/webhooks/{id}/attempts`.
//!
//! Bad input is a 4xx with a machine-readable code and stores nothing; a
//! secret is in the answer that creates or rotates it and nowhere else.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::authorized::{AdminScope, Authorized};
use super::error::ApiError;
use super::webhook_responses::{
    Attempt, AttemptList, CreatedEndpoint, Endpoint, EndpointList, Replayed, RotatedEndpoint,
    TestQueued,
};
use super::{ApiContext, Route};
use crate::ledger::webhooks::rfc3339_ms;
use crate::webhooks::{WebhookError, Webhooks};

/// Most attempts one listing returns.
const MAX_ATTEMPTS: i64 = 200;

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match error {
            WebhookError::Url(error) => {
                ApiError::new(unprocessable, "invalid_webhook_url", error.to_string())
            }
            WebhookError::UnknownEventType(..) => {
                ApiError::new(unprocessable, "unknown_event_type", error.to_string())
            }
            WebhookError::TooMany(_) => {
                ApiError::new(StatusCode::CONFLICT, "too_many_webhooks", error.to_string())
            }
            WebhookError::NotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                "webhook_not_found",
                error.to_string(),
            ),
            WebhookError::Disabled => {
                ApiError::new(StatusCode::CONFLICT, "webhook_disabled", error.to_string())
            }
            WebhookError::Storage(error) => ApiError::internal(error),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    url: String,
    #[serde(default)]
    event_types: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// RFC 3339: failed events that occurred at or after this.
    since: String,
}

/// The `{id}` of an endpoint's routes.
#[derive(Deserialize)]
pub struct EndpointPath {
    id: String,
}

/// A body read strictly into `T`; a wrong field is a 422 `invalid_field`.
async fn body<T: serde::de::DeserializeOwned>(
    context: &ApiContext,
    request: &HttpRequest,
    payload: web::Payload,
) -> Result<T, ApiError> {
    let value = context.read_json(request, payload).await?.value;
    serde_json::from_value(value).map_err(|error| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            error.to_string(),
        )
    })
}

/// `POST /v1/apps/{appid}/webhooks`: `{"url", "event_types"?}` → 201 with
/// the secret, shown this once.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/webhooks", tag = "webhooks", operation_id = "create_webhook",
    params(("appid" = String, Path, description = "The app's AppID")),
    request_body = crate::api::requests::CreateWebhook,
    responses((status = 201, description = "The endpoint and its signing secret (shown once)", body = CreatedEndpoint)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn create(
    auth: Authorized<AdminScope>,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let create: CreateRequest = body(&context, &request, payload).await?;
    let types = Webhooks::event_types(create.event_types.as_deref())?;
    let created = context
        .webhooks
        .create(auth.appid(), &create.url, &types)
        .await?;
    let now = context.clock.now_ms();
    Ok(HttpResponse::Created().json(CreatedEndpoint {
        endpoint: Endpoint::of(&created.endpoint, now),
        secret: created.endpoint.secret,
    }))
}

/// `GET /v1/apps/{appid}/webhooks`.
#[utoipa::path(
    get, path = "/v1/apps/{appid}/webhooks", tag = "webhooks", operation_id = "list_webhooks",
    params(("appid" = String, Path, description = "The app's AppID")),
    responses((status = 200, description = "The app's endpoints", body = EndpointList)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn list(
    auth: Authorized<AdminScope>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let now = context.clock.now_ms();
    let endpoints = context.webhooks.list(auth.appid()).await?;
    Ok(HttpResponse::Ok().json(EndpointList {
        endpoints: endpoints.iter().map(|e| Endpoint::of(e, now)).collect(),
    }))
}

/// `GET /v1/apps/{appid}/webhooks/{id}`.
#[utoipa::path(
    get, path = "/v1/apps/{appid}/webhooks/{id}", tag = "webhooks", operation_id = "get_webhook",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path)),
    responses((status = 200, description = "The endpoint", body = Endpoint)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn get(
    auth: Authorized<AdminScope>,
    path: web::Path<EndpointPath>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let endpoint = context.webhooks.get(auth.appid(), &path.id).await?;
    Ok(HttpResponse::Ok().json(Endpoint::of(&endpoint, context.clock.now_ms())))
}

/// `POST /v1/apps/{appid}/webhooks/{id}/disable`.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/webhooks/{id}/disable", tag = "webhooks", operation_id = "disable_webhook",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path)),
    responses((status = 200, description = "The endpoint, disabled", body = Endpoint)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn disable(
    auth: Authorized<AdminScope>,
    path: web::Path<EndpointPath>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let endpoint = context.webhooks.disable(auth.appid(), &path.id).await?;
    Ok(HttpResponse::Ok().json(Endpoint::of(&endpoint, context.clock.now_ms())))
}

/// `POST /v1/apps/{appid}/webhooks/{id}/rotate-secret`: the new secret,
/// shown this once.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/webhooks/{id}/rotate-secret", tag = "webhooks", operation_id = "rotate_webhook_secret",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path)),
    responses((status = 200, description = "The endpoint and its new secret (shown once)", body = RotatedEndpoint)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn rotate(
    auth: Authorized<AdminScope>,
    path: web::Path<EndpointPath>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let endpoint = context.webhooks.rotate(auth.appid(), &path.id).await?;
    let now = context.clock.now_ms();
    Ok(HttpResponse::Ok().json(RotatedEndpoint {
        endpoint: Endpoint::of(&endpoint, now),
        previous_secret_expires_at: rfc3339_ms(endpoint.previous_secret_until.unwrap_or(now)),
        secret: endpoint.secret,
    }))
}

/// `POST /v1/apps/{appid}/webhooks/{id}/test`: 202 with the event's id.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/webhooks/{id}/test", tag = "webhooks", operation_id = "test_webhook",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path)),
    responses((status = 202, description = "A test event, queued", body = TestQueued)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn test(
    auth: Authorized<AdminScope>,
    path: web::Path<EndpointPath>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let event_id = context.webhooks.test(auth.appid(), &path.id).await?;
    Ok(HttpResponse::Accepted().json(TestQueued { event_id }))
}

/// `POST /v1/apps/{appid}/webhooks/{id}/replay`: `{"since": RFC 3339}`.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/webhooks/{id}/replay", tag = "webhooks", operation_id = "replay_webhook",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path)),
    request_body = crate::api::requests::ReplayWebhook,
    responses((status = 200, description = "How many failed events were queued again", body = Replayed)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn replay(
    auth: Authorized<AdminScope>,
    path: web::Path<EndpointPath>,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let replay: ReplayRequest = body(&context, &request, payload).await?;
    let since = chrono::DateTime::parse_from_rfc3339(&replay.since)
        .map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_since",
                "since must be an RFC 3339 time such as 2026-01-31T08:00:00Z",
            )
        })?
        .timestamp_millis();
    let replayed = context
        .webhooks
        .replay(auth.appid(), &path.id, since)
        .await?;
    Ok(HttpResponse::Ok().json(Replayed { replayed }))
}

/// `GET /v1/apps/{appid}/webhooks/{id}/attempts[?limit=N]`, newest first.
#[utoipa::path(
    get, path = "/v1/apps/{appid}/webhooks/{id}/attempts", tag = "webhooks", operation_id = "webhook_attempts",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path), ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "50 when unset")),
    responses((status = 200, description = "The endpoint's attempts, newest first", body = AttemptList)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn attempts(
    auth: Authorized<AdminScope>,
    path: web::Path<EndpointPath>,
    request: HttpRequest,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let limit = match request.query_string() {
        "" => 50,
        query => query
            .strip_prefix("limit=")
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| (1..=MAX_ATTEMPTS).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("the only query parameter is limit, 1 to {MAX_ATTEMPTS}"),
                )
            })?,
    };
    let attempts = context
        .webhooks
        .attempts(auth.appid(), &path.id, limit)
        .await?;
    Ok(HttpResponse::Ok().json(AttemptList {
        attempts: attempts.into_iter().map(Attempt::from).collect(),
    }))
}

/// The webhook endpoints' routes, inside the app's scope (`/v1/apps/{appid}`).
pub fn endpoints() -> Vec<Route> {
    vec![
        Route::new("/webhooks").get(list).post(create),
        Route::new("/webhooks/{id}").get(get),
        Route::new("/webhooks/{id}/attempts").get(attempts),
        Route::new("/webhooks/{id}/disable").post(disable),
        Route::new("/webhooks/{id}/rotate-secret").post(rotate),
        Route::new("/webhooks/{id}/test").post(test),
        Route::new("/webhooks/{id}/replay").post(replay),
    ]
}
