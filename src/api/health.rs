//! `GET /healthz` (the process answers) and `GET /readyz` (the ledger answers).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};

use super::error::ApiError;
use super::responses::Health;
use super::ApiContext;

/// The process is up.
#[utoipa::path(
    get, path = "/healthz", tag = "health", operation_id = "healthz",
    responses((status = 200, description = "The process serves", body = Health)),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The database is reachable.
#[utoipa::path(
    get, path = "/readyz", tag = "health", operation_id = "readyz",
    responses((status = 200, description = "The ledger answers", body = Health)),
)]
pub async fn readyz(context: web::Data<ApiContext>) -> HttpResponse {
    match context.storage.ping().await {
        Ok(()) => HttpResponse::Ok().json(Health { status: "ready" }),
        Err(error) => {
            tracing::warn!(error = ?error, "readiness check failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the ledger database does not answer",
            )
            .error_response()
        }
    }
}
