//! `GET /healthz` (the process answers) and `GET /readyz` (the ledger answers).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};

use super::error::ApiError;
use super::responses::Health;
use super::ApiContext;

/// The process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The database is reachable.
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
