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
pub mod openapi;
pub mod push;
pub mod request_id;
pub mod requests;
pub mod responses;
pub mod sessions;
mod subscriptions;
mod templates;
mod tokens;
mod webhook_responses;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::{Method, StatusCode};
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

/// Registers every route of the main listener: the [`endpoints`], and the
/// pages that are not part of the contract (HTML, CSS and scripts): the
/// operator console at `/admin` and the contract's viewer, Swagger UI at
/// `/docs/` (`/docs` leads there).
pub fn routes(config: &mut web::ServiceConfig) {
    let (app, top) = endpoints();
    config.service(web::scope(APP_SCOPE).configure(|scope| {
        for endpoint in app {
            endpoint.register(scope);
        }
    }));
    for endpoint in top {
        endpoint.register(config);
    }
    console::pages(config);
    config
        .service(openapi::swagger_ui())
        .service(web::resource("/docs").route(web::get().to(openapi::to_swagger_ui)))
        .default_service(web::to(not_found));
}

/// The scope of every route of one app.
pub const APP_SCOPE: &str = "/v1/apps/{appid}";

/// The routes the router serves, as `(method, full path)` pairs with paths
/// written as in the OpenAPI document (`/v1/apps/{appid}/messages`). Built
/// from the same [`endpoints`] the router registers, so that the contract
/// test compares the document with what is served, not with a list of its
/// own. Every GET answers HEAD too: HEAD is listed.
pub fn route_table() -> Vec<(Method, String)> {
    let (app, top) = endpoints();
    let app = app.into_iter().map(|endpoint| (APP_SCOPE, endpoint));
    let top = top.into_iter().map(|endpoint| ("", endpoint));
    app.chain(top)
        .flat_map(|(prefix, endpoint)| {
            let path = format!("{prefix}{}", endpoint.path);
            endpoint
                .methods
                .into_iter()
                .map(move |method| (method, path.clone()))
        })
        .collect()
}

/// Every endpoint: those inside [`APP_SCOPE`] (paths relative to it), and
/// the others.
fn endpoints() -> (Vec<Route>, Vec<Route>) {
    // Why this order: actix tries routes in order, and each path with a
    // `{segment}` is a regular expression run on the request's path (about
    // 10,000 instructions, a fiftieth of a send). The app's scope comes
    // first and, within it, the collect and send routes, the busiest; no two
    // routes match one path, so the order changes nothing else.
    let mut app = vec![
        Route::new("/messages").post(messages::send),
        Route::new("/credentials").post(credentials::collect),
        Route::new("/subscriptions").post(subscriptions::record),
        Route::new("/users/{openid}/quota").get(credentials::quota),
        Route::new("/messages/{id}")
            .get(messages::lookup)
            .delete(messages::cancel),
        Route::new("/access_token").get(tokens::current),
        Route::new("/access_token/refresh").post(tokens::refresh),
        Route::new("/templates")
            .get(templates::list)
            .post(templates::add),
        Route::new("/templates/{template_id}").delete(templates::delete),
        Route::new("/template-library").get(templates::library),
        Route::new("/template-library/categories").get(templates::categories),
        Route::new("/template-library/{id}").get(templates::library_entry),
    ];
    app.extend(broadcasts::endpoints());
    app.extend(webhooks::endpoints());
    app.extend(sessions::endpoints());
    let mut top = admin_keys::endpoints();
    top.extend(console::endpoints());
    top.extend([
        Route::new("/healthz").get(health::healthz),
        Route::new("/readyz").get(health::readyz),
        Route::new("/wechat/push/{appid}")
            .get(push::handshake)
            .post(push::receive),
        Route::new("/v1/template-lint").post(lint::lint),
        Route::new("/openapi.json").get(openapi::document),
    ]);
    (app, top)
}

/// One path and the handlers of its methods: one actix resource, so that a
/// method it does not serve answers 405 with `Allow` (shaped by
/// [`error::shape_errors`]). GET comes with HEAD (whose body actix drops).
pub struct Route {
    path: &'static str,
    methods: Vec<Method>,
    resource: actix_web::Resource,
    cors: bool,
}

impl Route {
    /// A path that serves nothing yet.
    pub fn new(path: &'static str) -> Self {
        Self {
            path,
            methods: Vec::new(),
            resource: web::resource(path),
            cors: false,
        }
    }

    /// Serves `handler` on GET and on HEAD.
    pub fn get<F, Args>(self, handler: F) -> Self
    where
        F: actix_web::Handler<Args> + Clone,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        self.on(Method::GET, handler.clone())
            .on(Method::HEAD, handler)
    }

    /// Serves `handler` on POST.
    pub fn post<F, Args>(self, handler: F) -> Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        self.on(Method::POST, handler)
    }

    /// Serves `handler` on DELETE.
    pub fn delete<F, Args>(self, handler: F) -> Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        self.on(Method::DELETE, handler)
    }

    /// Serves `handler` on `method`.
    pub fn on<F, Args>(mut self, method: Method, handler: F) -> Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        self.methods.push(method.clone());
        self.resource = self.resource.route(web::method(method).to(handler));
        self
    }

    /// The browser routes' CORS ([`sessions::cors`]) around every method.
    pub fn with_cors(mut self) -> Self {
        self.cors = true;
        self
    }

    /// Adds the resource to `config`.
    fn register(self, config: &mut web::ServiceConfig) {
        if self.cors {
            let cors = actix_web::middleware::from_fn(sessions::cors);
            config.service(self.resource.wrap(cors));
        } else {
            config.service(self.resource);
        }
    }
}

async fn not_found() -> HttpResponse {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint").error_response()
}
