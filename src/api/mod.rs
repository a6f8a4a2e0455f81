//! The HTTP API: routes, the shared context, and one file per endpoint group.

pub mod auth;
mod credentials;
pub mod error;
mod health;
mod messages;
pub mod request_id;
mod tokens;

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::HttpRequest;
use futures_util::StreamExt;

use crate::clock::SharedClock;
use crate::config::{AppSettings, LedgerSettings, Scope};
use crate::ledger::send::Sender;
use crate::storage::Storage;
use crate::tokens::TokenKeeper;
use auth::ApiKeys;
use error::{AccessError, BodyError};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ApiContext {
    pub storage: Arc<dyn Storage>,
    pub sender: Sender,
    pub tokens: TokenKeeper,
    pub keys: ApiKeys,
    pub apps: Arc<BTreeMap<String, AppSettings>>,
    pub clock: SharedClock,
    pub ledger: LedgerSettings,
}

impl ApiContext {
    /// Checks the request's API key for `appid` and one of `scopes`.
    pub fn authorize(
        &self,
        request: &HttpRequest,
        appid: &str,
        scopes: &[Scope],
    ) -> Result<(), AccessError> {
        self.keys
            .authorize(request, appid, self.apps.contains_key(appid), scopes)
    }
}

/// Registers every route.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .service(
            web::scope("/v1/apps/{appid}")
                .route("/credentials", web::post().to(credentials::collect))
                .route("/users/{openid}/quota", web::get().to(credentials::quota))
                .route("/messages", web::post().to(messages::send))
                .route("/messages/{id}", web::get().to(messages::lookup))
                .route("/access_token", web::get().to(tokens::current))
                .route("/access_token/refresh", web::post().to(tokens::refresh)),
        )
        .default_service(web::to(not_found));
}

async fn not_found() -> actix_web::HttpResponse {
    error::plain(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// Reads a JSON object body after authorization, so that a caller without a key
/// learns nothing about the body's shape, and with our own size limit and
/// error shape.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    payload: web::Payload,
    limit: usize,
) -> Result<T, BodyError> {
    let body = read_body(payload, limit).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|error| BodyError::InvalidJson(error.to_string()))?;
    // serde reads a struct from a JSON array of its fields too: refuse that.
    if !value.is_object() {
        return Err(BodyError::InvalidJson(
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_value(value).map_err(|error| BodyError::InvalidJson(error.to_string()))
}

/// Reads a body up to `limit` bytes, answering 413 past it.
pub(crate) async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Bytes, BodyError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk: Bytes = chunk.map_err(|_| BodyError::Unreadable)?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
