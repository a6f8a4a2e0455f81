//! The operator console: the page at `/admin` (HTML, CSS and a small
//! script, inside the binary) and the JSON endpoints it reads, under
//! `/v1/admin/apps` (scope `admin`).
//!
//! The page holds no data of its own: the operator types an admin key, the
//! tab keeps it in `sessionStorage` and sends it as `Authorization: Bearer`
//! on every call. No cookie is ever set, so there is no cross-site request
//! to forge. The page is served under a Content-Security-Policy that allows
//! only its own script and style (no inline script, no other origin), and
//! the script writes every value with `textContent`, never as markup.
//!
//! The API keys' list is `/v1/admin/keys` and the templates' is
//! `GET /v1/apps/{appid}/templates`: the page reads those routes as they are.

mod bodies;
mod endpoints;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpResponse};

use super::Route;

pub use bodies::{
    AppList, AppListed, Expiring, FailureFigure, FailureHour, Failures, KindFigures, MessagePage,
    Overview, RefreshLease, TemplateFigures, TokenStatus,
};
pub use endpoints::MessagesQuery;

/// The console's JSON endpoints and their bodies, for the OpenAPI document
/// (`ConsoleApi::openapi()`, merged into the whole API's).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        endpoints::apps,
        endpoints::overview,
        endpoints::messages,
        endpoints::failures,
        endpoints::token
    ),
    components(schemas(
        AppList,
        AppListed,
        Overview,
        KindFigures,
        TemplateFigures,
        Expiring,
        MessagePage,
        Failures,
        FailureHour,
        FailureFigure,
        TokenStatus,
        RefreshLease,
        crate::api::responses::Message,
        crate::api::responses::StoredAttempt,
        crate::api::responses::Delivery,
        crate::api::responses::MessageError
    )),
    tags((name = "console", description = "The operator console's reads (scope admin)"))
)]
pub struct ConsoleApi;

/// The page's routes, which are not part of the JSON API: the page, its
/// style and its script.
pub const PAGE_PATHS: [&str; 3] = ["/admin", "/admin/console.css", "/admin/console.js"];

const PAGE: &str = include_str!("assets/console.html");
const STYLE: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

/// Only the page's own script and style, data only from its own origin, no
/// framing, no form posting anywhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Registers the page, its style and its script (outside the contract:
/// they are not JSON).
pub fn pages(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource(PAGE_PATHS[0])
                .route(web::get().to(page))
                .route(web::head().to(page)),
        )
        .service(
            web::resource(PAGE_PATHS[1])
                .route(web::get().to(style))
                .route(web::head().to(style)),
        )
        .service(
            web::resource(PAGE_PATHS[2])
                .route(web::get().to(script))
                .route(web::head().to(script)),
        );
}

/// The JSON endpoints the page reads, for the route table.
pub fn endpoints() -> Vec<Route> {
    vec![
        Route::new("/v1/admin/apps").get(endpoints::apps),
        Route::new("/v1/admin/apps/{appid}/overview").get(endpoints::overview),
        Route::new("/v1/admin/apps/{appid}/messages").get(endpoints::messages),
        Route::new("/v1/admin/apps/{appid}/failures").get(endpoints::failures),
        Route::new("/v1/admin/apps/{appid}/token").get(endpoints::token),
    ]
}

/// An asset with the page's security headers.
fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", PAGE)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}
