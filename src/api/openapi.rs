//! The API's contract: the OpenAPI 3.1 document served at `/openapi.json`,
//! and Swagger UI at `/docs` showing it (its assets are inside the binary).
//!
//! The document is assembled here, in one place: the operations come from
//! the handlers' `#[utoipa::path]` attributes listed in [`ApiDoc`], their
//! bodies from the request and response types; the error answers of each
//! operation come from [`ERRORS`], codes of the catalogue
//! ([`codes::CODES`]), added to the document by [`document`]. A route added
//! to the router ([`super::endpoints`]) is added here too, to `paths(…)`
//! and to [`ERRORS`]: the contract test (`tests/api/contract.rs`) fails
//! until it is.
//!
//! Only the main listener's API is described: the WeChat-compatible proxy
//! listener speaks WeChat's own contract.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use actix_web::HttpResponse;
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

use super::error::codes::{self, CODES};
use super::{
    admin_keys, broadcasts, credentials, health, lint, messages, push, requests, responses,
    sessions, subscriptions, templates, tokens, webhook_responses, webhooks,
};

/// What the document says before its operations.
const DESCRIPTION: &str = include_str!("openapi.md");

/// The operations and the types of their bodies.
#[derive(OpenApi)]
#[openapi(
    paths(
        messages::send,
        messages::lookup,
        messages::cancel,
        credentials::collect,
        credentials::quota,
        subscriptions::record,
        tokens::current,
        tokens::refresh,
        templates::list,
        templates::add,
        templates::delete,
        templates::library,
        templates::categories,
        templates::library_entry,
        broadcasts::create,
        broadcasts::list,
        broadcasts::lookup,
        broadcasts::results,
        broadcasts::pause,
        broadcasts::resume,
        broadcasts::cancel,
        webhooks::list,
        webhooks::create,
        webhooks::get,
        webhooks::attempts,
        webhooks::disable,
        webhooks::rotate,
        webhooks::test,
        webhooks::replay,
        sessions::login,
        sessions::logout,
        sessions::me_credentials,
        sessions::me_subscriptions,
        sessions::me_quota,
        admin_keys::create,
        admin_keys::list,
        admin_keys::revoke,
        health::healthz,
        health::readyz,
        push::handshake,
        push::receive,
        lint::lint,
        document,
    ),
    components(schemas(
        requests::SendMessage,
        responses::Sent,
        webhook_responses::Endpoint,
    )),
    tags(
        (name = "messages", description = "Sending template and subscribe messages, and their fate"),
        (name = "credentials", description = "formIds and prepay_ids collected by frontends"),
        (name = "subscriptions", description = "Subscribe prompt results (grants)"),
        (name = "tokens", description = "The app's access_token, for callers that call WeChat themselves"),
        (name = "templates", description = "The app's templates and WeChat's template libraries"),
        (name = "broadcasts", description = "One message to many users"),
        (name = "webhooks", description = "Event delivery to the app's endpoints"),
        (name = "sessions", description = "Mini-program users' sessions and their /me routes"),
        (name = "admin", description = "API keys kept as data"),
        (name = "health", description = "Liveness and readiness"),
        (name = "push", description = "WeChat's message push (called by WeChat)"),
        (name = "lint", description = "Template drafts checked against WeChat's rules"),
        (name = "contract", description = "This document"),
    )
)]
pub struct ApiDoc;

/// An operation's error codes: the groups of [`ERRORS`]. A code may name
/// its status (`invalid_body@400`) where the catalogue gives it several and
/// the route answers one.
type Codes = &'static [&'static str];

/// Any route: a request the framework refused before its handler.
const FRAMEWORK: Codes = &["bad_request", "internal"];
/// A route keyed by an API key, in an app's scope.
const KEY: Codes = &[
    "missing_api_key",
    "invalid_api_key",
    "invalid_session",
    "forbidden",
    "api_key_required",
    "unknown_app",
    "rate_limited",
];
/// A route keyed by an admin API key, outside any app's scope.
const ADMIN: Codes = &[
    "missing_api_key",
    "invalid_api_key",
    "invalid_session",
    "forbidden",
    "api_key_required",
    "rate_limited",
];
/// A browser route of a user's session.
const SESSION: Codes = &[
    "missing_api_key",
    "invalid_api_key",
    "invalid_session",
    "session_required",
    "forbidden",
    "unknown_app",
    "origin_not_allowed",
    "rate_limited",
];
/// A route that reads a JSON body.
const JSON: Codes = &[
    "unsupported_media_type",
    "body_too_large",
    "body_timeout",
    "invalid_json",
    "unreadable_body",
];
/// A failed send.
const SEND_FAILURES: Codes = &[
    "no_credential",
    "credential_not_ready",
    "daily_quota_exhausted",
    "rate_limited",
    "user_send_limit",
    "quiet_hours",
    "cancelled",
    "invalid_template_id",
    "invalid_page",
    "invalid_data",
    "invalid_openid@422",
    "content_blacklisted",
    "request_rejected",
    "api_retired",
    "token_unavailable@503",
    "token_rejected",
    "upstream_busy",
    "upstream_unreachable",
    "upstream_circuit_open",
    "attempt_limit_reached",
    "outcome_unknown",
    "outcome_pending",
    "upstream_error",
];
/// One credential refused.
const COLLECT_ITEM: Codes = &[
    "invalid_body@400",
    "too_many_items",
    "invalid_item",
    "missing_field",
    "invalid_type",
    "invalid_openid@422",
    "unknown_kind",
    "mock_form_id",
    "client_failure",
    "kind_mismatch",
    "invalid_characters",
    "empty_value",
    "value_too_long",
    "invalid_collected_at",
    "collected_in_future",
    "already_expired",
    "kind_conflict",
    "owned_by_another_user",
];
/// A prompt result refused.
const PROMPT: Codes = &[
    "invalid_body@422",
    "unknown_field",
    "missing_field",
    "invalid_openid@422",
    "invalid_request_id",
    "invalid_result",
    "invalid_status",
    "prompt_failed",
    "too_many_templates",
    "invalid_template_id",
    "request_id_reused",
];
/// A call of WeChat's template APIs.
const CATALOGUE: Codes = &[
    "unknown_template",
    "invalid_tid",
    "invalid_keyword_ids",
    "invalid_scene_desc",
    "invalid_paging",
    "invalid_category_ids",
    "template_limit_reached",
    "template_not_listed",
    "wechat_refused",
    "wechat_rate_limited",
    "api_retired",
    "wechat_busy",
    "token_rejected",
    "wechat_error",
    "wechat_unreachable",
    "wechat_answer_lost",
    "wechat_unexpected_answer",
    "token_refused",
    "token_unavailable",
];
/// The token routes' failures.
const TOKEN: Codes = &["token_refused", "token_unavailable"];
/// A broadcast's commands.
const BROADCAST: Codes = &["not_found", "broadcast_state"];
/// A webhook endpoint's routes.
const WEBHOOK: Codes = &["webhook_not_found"];
/// A login.
const LOGIN: Codes = &[
    "unknown_app",
    "origin_not_allowed",
    "rate_limited",
    "invalid_body@422",
    "invalid_code",
    "login_rate_limited",
    "user_blocked",
    "app_configuration",
    "wechat_unavailable",
];
/// A push from WeChat.
const PUSH: Codes = &[
    "not_found",
    "bad_query",
    "body_too_large",
    "stale_timestamp",
    "bad_signature",
    "bad_mode",
    "no_encoding_aes_key",
    "bad_document",
    "bad_ciphertext",
    "bad_event",
];

/// The error codes of each operation, by method and path, as groups.
#[rustfmt::skip]
pub const ERRORS: &[(&str, &str, &[Codes])] = &[
    ("post", "/v1/apps/{appid}/messages", &[KEY, JSON, SEND_FAILURES, &[
        "invalid_idempotency_key", "invalid_field", "urgent_not_allowed", "invalid_template_data",
        "idempotency_key_reused", "idempotency_key_in_flight"]]),
    ("get", "/v1/apps/{appid}/messages/{id}", &[KEY, &["message_not_found"]]),
    ("delete", "/v1/apps/{appid}/messages/{id}", &[KEY, &["message_not_found", "not_scheduled"]]),
    ("post", "/v1/apps/{appid}/credentials", &[KEY, JSON, COLLECT_ITEM]),
    ("get", "/v1/apps/{appid}/users/{openid}/quota", &[KEY, &["invalid_openid@400"]]),
    ("post", "/v1/apps/{appid}/subscriptions", &[KEY, JSON, PROMPT]),
    ("get", "/v1/apps/{appid}/access_token", &[KEY, TOKEN]),
    ("post", "/v1/apps/{appid}/access_token/refresh", &[KEY, JSON, TOKEN, &["invalid_stale_token"]]),
    ("get", "/v1/apps/{appid}/templates", &[KEY, CATALOGUE, &["invalid_query", "invalid_channel"]]),
    ("post", "/v1/apps/{appid}/templates", &[KEY, JSON, CATALOGUE, &[
        "invalid_channel", "invalid_field", "invalid_library_id"]]),
    ("delete", "/v1/apps/{appid}/templates/{template_id}", &[KEY, CATALOGUE, &["invalid_template_id"]]),
    ("get", "/v1/apps/{appid}/template-library", &[KEY, CATALOGUE, &["invalid_query", "invalid_channel"]]),
    ("get", "/v1/apps/{appid}/template-library/categories", &[KEY, CATALOGUE, &["invalid_query", "invalid_channel"]]),
    ("get", "/v1/apps/{appid}/template-library/{id}", &[KEY, CATALOGUE, &[
        "invalid_query", "invalid_channel", "invalid_library_id"]]),
    ("post", "/v1/apps/{appid}/broadcasts", &[KEY, JSON, &["invalid_field", "invalid_template_data"]]),
    ("get", "/v1/apps/{appid}/broadcasts", &[KEY]),
    ("get", "/v1/apps/{appid}/broadcasts/{id}", &[KEY, &["not_found"]]),
    ("get", "/v1/apps/{appid}/broadcasts/{id}/results", &[KEY, &["not_found"]]),
    ("post", "/v1/apps/{appid}/broadcasts/{id}/pause", &[KEY, BROADCAST]),
    ("post", "/v1/apps/{appid}/broadcasts/{id}/resume", &[KEY, BROADCAST]),
    ("post", "/v1/apps/{appid}/broadcasts/{id}/cancel", &[KEY, BROADCAST]),
    ("get", "/v1/apps/{appid}/webhooks", &[KEY]),
    ("post", "/v1/apps/{appid}/webhooks", &[KEY, JSON, &[
        "invalid_field", "invalid_webhook_url", "unknown_event_type", "too_many_webhooks"]]),
    ("get", "/v1/apps/{appid}/webhooks/{id}", &[KEY, WEBHOOK]),
    ("get", "/v1/apps/{appid}/webhooks/{id}/attempts", &[KEY, WEBHOOK, &["invalid_query"]]),
    ("post", "/v1/apps/{appid}/webhooks/{id}/disable", &[KEY, WEBHOOK]),
    ("post", "/v1/apps/{appid}/webhooks/{id}/rotate-secret", &[KEY, WEBHOOK, &["webhook_disabled"]]),
    ("post", "/v1/apps/{appid}/webhooks/{id}/test", &[KEY, WEBHOOK, &["webhook_disabled"]]),
    ("post", "/v1/apps/{appid}/webhooks/{id}/replay", &[KEY, JSON, WEBHOOK, &["invalid_field", "invalid_since"]]),
    ("post", "/v1/apps/{appid}/sessions", &[LOGIN, JSON]),
    ("delete", "/v1/apps/{appid}/sessions/current", &[SESSION]),
    ("post", "/v1/apps/{appid}/me/credentials", &[SESSION, JSON, COLLECT_ITEM, &["openid_not_allowed"]]),
    ("post", "/v1/apps/{appid}/me/subscriptions", &[SESSION, JSON, PROMPT, &["openid_not_allowed"]]),
    ("get", "/v1/apps/{appid}/me/quota", &[SESSION]),
    ("options", "/v1/apps/{appid}/sessions", &[&["origin_not_allowed"]]),
    ("options", "/v1/apps/{appid}/sessions/current", &[&["origin_not_allowed"]]),
    ("options", "/v1/apps/{appid}/me/credentials", &[&["origin_not_allowed"]]),
    ("options", "/v1/apps/{appid}/me/subscriptions", &[&["origin_not_allowed"]]),
    ("options", "/v1/apps/{appid}/me/quota", &[&["origin_not_allowed"]]),
    ("post", "/v1/admin/keys", &[ADMIN, JSON, &["invalid_key_request", "key_name_taken"]]),
    ("get", "/v1/admin/keys", &[ADMIN]),
    ("delete", "/v1/admin/keys/{name}", &[ADMIN, &["unknown_key"]]),
    ("get", "/healthz", &[]),
    ("get", "/readyz", &[&["database_unavailable"]]),
    ("get", "/wechat/push/{appid}", &[PUSH]),
    ("post", "/wechat/push/{appid}", &[PUSH]),
    ("post", "/v1/template-lint", &[KEY, JSON, &["invalid_draft"]]),
    ("get", "/openapi.json", &[]),
    ("get", "/v1/admin/apps", &[ADMIN]),
    ("get", "/v1/admin/apps/{appid}/overview", &[KEY]),
    ("get", "/v1/admin/apps/{appid}/messages", &[KEY, &[
        "invalid_query", "invalid_paging", "invalid_openid@422", "invalid_cursor"]]),
    ("get", "/v1/admin/apps/{appid}/failures", &[KEY]),
    ("get", "/v1/admin/apps/{appid}/token", &[KEY]),
];

/// The codes of requests that match no operation: an unknown path, or a
/// known path with a method it does not serve. The document's description
/// names them; they are in no operation.
pub const UNROUTED: Codes = &["not_found", "method_not_allowed"];

/// The document, as served.
pub fn document_value() -> &'static Value {
    static DOCUMENT: LazyLock<Value> = LazyLock::new(build);
    &DOCUMENT
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "contract",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)),
)]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(document_value())
}

/// Swagger UI at `/docs/`, reading `/openapi.json`; `/docs` leads there.
pub fn swagger_ui() -> utoipa_swagger_ui::SwaggerUi {
    utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}")
        .config(utoipa_swagger_ui::Config::new(["/openapi.json"]))
}

/// `GET /docs`: to Swagger UI, at `/docs/`.
pub async fn to_swagger_ui() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((actix_web::http::header::LOCATION, "/docs/"))
        .finish()
}

/// The derived document with the security schemes, the error answers of
/// every operation and the catalogue of codes.
fn build() -> Value {
    let mut api = ApiDoc::openapi();
    api.merge(super::console::ConsoleApi::openapi());
    let mut document = serde_json::to_value(api).expect("the document serializes");
    document["info"] = json!({
        "title": "formid-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "description": DESCRIPTION,
    });
    let schemes = json!({
        "api_key": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: a configured key (`api_keys.<name>.key`) or a stored one (`fgk_…`, from POST /v1/admin/keys)",
        },
        "session": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "fgs_…",
            "description": "A mini-program user's session token (`fgs_…`, from POST /v1/apps/{appid}/sessions)",
        },
    });
    document["components"]["securitySchemes"] = schemes;
    document["components"]["schemas"]["ErrorBody"] = error_schema(None);
    document["x-error-codes"] = CODES
        .iter()
        .map(|code| {
            (
                code.code.to_owned(),
                json!({"statuses": code.statuses, "meaning": code.meaning}),
            )
        })
        .collect::<Map<_, _>>()
        .into();
    add_preflights(&mut document);
    if let Some(paths) = document["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                add_errors(method, path, operation);
            }
        }
    }
    document
}

/// The CORS preflights of the browser routes, from the router: `OPTIONS`
/// answers 204 (or 403 `origin_not_allowed`) and reads nothing.
fn add_preflights(document: &mut Value) {
    for (method, path) in super::route_table() {
        if method != actix_web::http::Method::OPTIONS {
            continue;
        }
        let id = format!("preflight{}", path.replace(['/', '{', '}', '-'], "_"));
        document["paths"][&path]["options"] = json!({
            "tags": ["sessions"],
            "summary": "CORS preflight of a browser route",
            "operationId": id,
            "parameters": [{"name": "appid", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"204": {"description": "Allowed (or no Origin): the CORS headers of the app's cors_origins"}},
        });
    }
}

/// The codes [`ERRORS`] lists for an operation, by status.
pub fn errors_of(method: &str, path: &str) -> Option<BTreeMap<u16, Vec<&'static str>>> {
    let (_, _, groups) = ERRORS
        .iter()
        .find(|(listed_method, listed_path, _)| *listed_method == method && *listed_path == path)?;
    let mut by_status: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    for code in groups
        .iter()
        .chain([&FRAMEWORK])
        .flat_map(|group| group.iter())
    {
        let (name, only) = match code.split_once('@') {
            Some((name, status)) => (name, status.parse::<u16>().ok()),
            None => (*code, None),
        };
        let entry = codes::find(name).unwrap_or_else(|| panic!("{name} is not in the catalogue"));
        for status in entry
            .statuses
            .iter()
            .filter(|status| only.is_none_or(|only| only == **status))
        {
            let codes = by_status.entry(*status).or_default();
            if !codes.contains(&entry.code) {
                codes.push(entry.code);
            }
        }
    }
    Some(by_status)
}

/// Adds the error answers of `method path` to its operation. The send
/// route's failures after a message was made carry the message ([`responses::Sent`]).
fn add_errors(method: &str, path: &str, operation: &mut Value) {
    let Some(by_status) = errors_of(method, path) else {
        return;
    };
    let carries_message = method == "post" && path == "/v1/apps/{appid}/messages";
    for (status, codes) in by_status {
        let key = status.to_string();
        let schema = error_schema(Some(&codes));
        let schema = if carries_message {
            json!({"anyOf": [{"$ref": "#/components/schemas/Sent"}, schema]})
        } else {
            schema
        };
        if let Some(existing) = operation["responses"].get_mut(&key) {
            // A status that also answers success (the send's 202): the
            // error's codes join it, in the body's `error`.
            if carries_message {
                existing["content"]["application/json"]["schema"] = schema;
            }
            continue;
        }
        let description = codes
            .iter()
            .filter_map(|code| codes::find(code))
            .map(|code| format!("`{}`: {}", code.code, code.meaning))
            .collect::<Vec<_>>()
            .join("; ");
        operation["responses"][key] = json!({
            "description": description,
            "content": {"application/json": {"schema": schema}},
        });
    }
}

/// The error body's schema, with its codes when given.
fn error_schema(codes: Option<&[&str]>) -> Value {
    let code = match codes {
        Some(codes) => json!({"type": "string", "enum": codes}),
        None => json!({"type": "string"}),
    };
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "description": "Further fields (`field`, `rule`, `state`, `retry_at`, …) depend on the code",
            "properties": {
                "code": code,
                "message": {"type": "string"},
                "wechat_errcode": {"type": "integer"},
            },
        }},
    })
}
