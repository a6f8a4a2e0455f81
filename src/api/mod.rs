//! The HTTP API: routes, the shared context, and one file per endpoint group.

mod admin_keys;
pub mod auth;
pub mod authorized;
pub mod broadcasts;
pub mod console;
mod credentials;
pub mod error;
mod health;
pub mod json;
pub mod limits;
mod lint;
mod messages;
pub mod push;
pub mod request_id;
pub mod responses;
pub mod sessions;
mod subscriptions;
mod templates;
mod tokens;
mod webhook_responses;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse, ResponseError};

use crate::clock::SharedClock;
use crate::config::{AppSettings, HttpSettings, LedgerSettings};
use crate::sending::Sender;
use crate::storage::Storage;
use crate::templates::Catalogue;
use crate::tokens::TokenKeeper;
use auth::ApiKeys;
use error::ApiError;
use json::{BodyLimits, JsonBody};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ApiContext {
    pub storage: Arc<dyn Storage>,
    pub sender: Sender,
    pub tokens: TokenKeeper,
    pub catalogue: Catalogue,
    pub keys: ApiKeys,
    pub apps: Arc<BTreeMap<String, AppSettings>>,
    /// The push configuration of the apps that have a push token.
    pub push: Arc<BTreeMap<String, crate::push::PushKeys>>,
    pub clock: SharedClock,
    pub ledger: LedgerSettings,
    pub http: HttpSettings,
    /// Mini-program login sessions.
    pub sessions: crate::sessions::Sessions,
    /// API keys kept as data.
    pub stored_keys: crate::keys::StoredKeys,
    /// The request rate limits of this instance.
    pub limits: Arc<limits::Limits>,
    /// Broadcasts: created, read and commanded here, sent by their worker.
    pub broadcasts: crate::broadcasts::Broadcasts,
    /// The largest NDJSON upload of a broadcast's recipients, in bytes.
    pub broadcast_upload_bytes: usize,
    /// The apps' webhook endpoints.
    pub webhooks: crate::webhooks::Webhooks,
    /// The operators' figures of each app, kept fresh by their worker.
    pub stats: crate::stats::Stats,
}

impl ApiContext {
    /// Reads a JSON route's body: the one strict path every JSON route takes
    /// (`Content-Type`, size, time, duplicate keys), after authorization
    /// (an extractor of [`authorized`]).
    pub async fn read_json(
        &self,
        request: &HttpRequest,
        payload: web::Payload,
    ) -> Result<JsonBody, ApiError> {
        json::read_json(request, payload, self.body_limits()).await
    }

    /// [`ApiContext::read_json`] for a route that parses the text into its
    /// own types: the same checks, no value built.
    pub async fn read_json_text(
        &self,
        request: &HttpRequest,
        payload: web::Payload,
    ) -> Result<web::Bytes, ApiError> {
        json::read_json_text(request, payload, self.body_limits()).await
    }

    /// The size and time limits of a JSON route's body.
    fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            max_bytes: self.ledger.max_body_bytes,
            timeout: self.http.body_timeout,
        }
    }
}

/// Registers every route. Each path is one resource, so that a method it
/// does not serve answers 405 with `Allow` (shaped by [`error::shape_errors`]),
/// and every GET route answers HEAD too.
pub fn routes(config: &mut web::ServiceConfig) {
    // Why this order: actix tries routes in order, and each path with a
    // `{segment}` is a regular expression run on the request's path (about
    // 10,000 instructions, a fiftieth of a send). The app's scope comes
    // first and, within it, the collect and send routes, the busiest; no two
    // routes match one path, so the order changes nothing else.
    config
        .service(
            web::scope("/v1/apps/{appid}")
                .service(web::resource("/messages").route(web::post().to(messages::send)))
                .service(web::resource("/credentials").route(web::post().to(credentials::collect)))
                .service(
                    web::resource("/subscriptions").route(web::post().to(subscriptions::record)),
                )
                .service(get_and_head("/users/{openid}/quota", credentials::quota))
                .service(
                    get_and_head("/messages/{id}", messages::lookup)
                        .route(web::delete().to(messages::cancel)),
                )
                .service(get_and_head("/access_token", tokens::current))
                .service(
                    web::resource("/access_token/refresh").route(web::post().to(tokens::refresh)),
                )
                .service(
                    web::resource("/templates")
                        .route(web::get().to(templates::list))
                        .route(web::head().to(templates::list))
                        .route(web::post().to(templates::add)),
                )
                .service(
                    web::resource("/templates/{template_id}")
                        .route(web::delete().to(templates::delete)),
                )
                .service(get_and_head("/template-library", templates::library))
                .service(get_and_head(
                    "/template-library/categories",
                    templates::categories,
                ))
                .service(get_and_head(
                    "/template-library/{id}",
                    templates::library_entry,
                ))
                .configure(broadcasts::routes)
                .configure(webhooks::routes)
                .configure(sessions::routes),
        )
        .configure(admin_keys::routes)
        .configure(console::routes)
        .service(get_and_head("/healthz", health::healthz))
        .service(get_and_head("/readyz", health::readyz))
        .service(
            web::resource("/wechat/push/{appid}")
                .route(web::get().to(push::handshake))
                .route(web::post().to(push::receive)),
        )
        .service(web::resource("/v1/template-lint").route(web::post().to(lint::lint)))
        .default_service(web::to(not_found));
}

/// A resource that serves `handler` on GET and on HEAD (whose body actix drops).
fn get_and_head<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
}

async fn not_found() -> HttpResponse {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint").error_response()
}
