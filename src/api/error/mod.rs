//! The one error of the HTTP layer, [`ApiError`], and the one shape every
//! error answer has:
//! `{"error":{"code":"snake_case","message":"…","wechat_errcode":N,…}}`.
//!
//! Handlers and extractors return an [`ApiError`]; the errors of the
//! features they call become one in `convert.rs`, which holds every status
//! and code those errors answer with.

pub mod codes;
mod convert;

use std::collections::BTreeMap;
use std::fmt;

use actix_web::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

/// Further machine-readable fields of an error object (the field and rule a
/// request broke, say), by name.
pub type Details = BTreeMap<&'static str, Value>;

/// An error answer: its status, its [`ErrorObject`], and the headers it may
/// carry. A 500 logs its cause and tells the caller only "internal error".
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    object: ErrorObject,
    retry_after_secs: Option<i64>,
    bearer_challenge: bool,
    cause: Option<Box<dyn fmt::Debug + Send + Sync>>,
}

/// The `error` object of an answer. Its fields, details included, are
/// written in the order of their names, as in every body of the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorObject {
    /// Machine-readable code.
    pub code: &'static str,
    /// For people; never carries secrets.
    pub message: String,
    /// WeChat's errcode, when WeChat gave one.
    pub wechat_errcode: Option<i64>,
    /// Further fields; none of them is named `code`, `message` or
    /// `wechat_errcode`.
    pub details: Details,
}

/// The body of every error answer: `{"error": {…}}`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorObject,
}

impl ApiError {
    /// An error with `status`, `code` and a sentence for people. The code
    /// and status are among [`codes::CODES`] (asserted in debug builds: the
    /// document lists no others).
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            codes::find(code).is_some_and(|entry| entry.statuses.contains(&status.as_u16())),
            "error code {code:?} with status {status} is not in the catalogue (src/api/error/codes.rs)"
        );
        Self {
            status,
            object: ErrorObject::new(code, message),
            retry_after_secs: None,
            bearer_challenge: false,
            cause: None,
        }
    }

    /// A failure of ours: 500 `internal`, `cause` logged and not told.
    pub fn internal(cause: impl fmt::Debug + Send + Sync + 'static) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
        .caused_by(cause)
    }

    /// The error with WeChat's errcode.
    pub fn with_wechat_errcode(mut self, errcode: Option<i64>) -> Self {
        self.object.wechat_errcode = errcode;
        self
    }

    /// The error with one more field in its object.
    pub fn with_detail(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.object.details.insert(name, value.into());
        self
    }

    /// The error with a `Retry-After` of `seconds` (at least 1).
    pub fn with_retry_after(mut self, seconds: Option<i64>) -> Self {
        self.retry_after_secs = seconds;
        self
    }

    /// The error with what caused it, logged when it is a 500.
    pub fn caused_by(mut self, cause: impl fmt::Debug + Send + Sync + 'static) -> Self {
        self.cause = Some(Box::new(cause));
        self
    }

    /// The error with `WWW-Authenticate: Bearer`: an API key would help.
    fn with_bearer_challenge(mut self) -> Self {
        self.bearer_challenge = true;
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.object.code
    }

    /// Seconds to wait before trying again, where waiting helps.
    pub fn retry_after_secs(&self) -> Option<i64> {
        self.retry_after_secs.map(|seconds| seconds.max(1))
    }

    /// The error object as the caller sees it: a 500 says only "internal
    /// error" and carries no details.
    pub fn public_object(&self) -> ErrorObject {
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            ErrorObject {
                message: "internal error".to_owned(),
                details: Details::new(),
                ..self.object.clone()
            }
        } else {
            self.object.clone()
        }
    }
}

/// Errors every route keyed by an API key can give before its own work.
impl ApiError {
    /// 401: no `Authorization` header.
    pub fn missing_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "missing API key: send Authorization: Bearer <key>",
        )
        .with_bearer_challenge()
    }

    /// 401: not `Bearer <key>`, or not a configured key.
    pub fn invalid_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "invalid API key",
        )
        .with_bearer_challenge()
    }

    /// 404: the app is not configured. Only for a key allowed every app: a
    /// key limited to some apps gets [`ApiError::forbidden`] for any other,
    /// configured or not.
    pub fn unknown_app() -> Self {
        Self::new(StatusCode::NOT_FOUND, "unknown_app", "unknown app")
    }

    /// 403: the key is not allowed this app, or none of the route's scopes.
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this API key is not allowed to do that for this app",
        )
    }
}

/// Errors of the login sessions and their routes.
impl ApiError {
    /// 401: a session token that is forged, expired or revoked: the
    /// mini-program logs in again (`wx.login`).
    pub fn invalid_session() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_session",
            "the session is unknown, expired or ended: log in again",
        )
        .with_bearer_challenge()
    }

    /// 403: an API key on a route only a session may call.
    pub fn session_required() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "session_required",
            "this route takes a user's session token, not an API key",
        )
    }

    /// 403: a session on a route only an API key may call.
    pub fn api_key_required() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "api_key_required",
            "a session token works only on its app's session and /me routes",
        )
    }

    /// 403: a session of another app.
    pub fn other_app_session() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this session belongs to another app",
        )
    }
}

/// Errors of reading a request body.
impl ApiError {
    /// 413: the body is larger than `limit` bytes.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    }

    /// 400: the body is not the JSON the route takes.
    pub fn invalid_json(reason: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {reason}"),
        )
    }

    /// 400: the body broke off.
    pub fn unreadable_body() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unreadable_body",
            "the body could not be read",
        )
    }

    /// 415: not `application/json` in UTF-8.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be sent as Content-Type: application/json (charset utf-8, if any)",
        )
    }

    /// 408: the body did not arrive within `timeout`.
    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {} ms", timeout.as_millis()),
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.object.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            // The cause's Debug form carries the anyhow context chain for
            // operators; the caller learns only that it was ours.
            match &self.cause {
                Some(cause) => {
                    tracing::error!(code = self.code(), error = ?cause, "request failed")
                }
                None => tracing::error!(code = self.code(), error = %self, "request failed"),
            }
        }
        let mut response = HttpResponse::build(self.status);
        if self.bearer_challenge {
            response.insert_header((WWW_AUTHENTICATE, "Bearer"));
        }
        if let Some(seconds) = self.retry_after_secs() {
            response.insert_header((RETRY_AFTER, seconds.to_string()));
        }
        response.json(ErrorBody {
            error: self.public_object(),
        })
    }
}

impl ErrorObject {
    /// An object of `code` and `message` alone. The code is one of
    /// [`codes::CODES`] (asserted in debug builds).
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            codes::find(code).is_some(),
            "error code {code:?} is not in the catalogue (src/api/error/codes.rs)"
        );
        Self {
            code,
            message: message.into(),
            wechat_errcode: None,
            details: Details::new(),
        }
    }
}

impl ErrorBody {
    /// The body of an error of `code` and `message` alone.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorObject::new(code, message),
        }
    }
}

/// One field of an [`ErrorObject`] as written.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Field<'a> {
    Text(&'a str),
    Number(i64),
    Value(&'a Value),
}

impl Serialize for ErrorObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut fields = Vec::with_capacity(3 + self.details.len());
        fields.push(("code", Field::Text(self.code)));
        fields.push(("message", Field::Text(&self.message)));
        if let Some(errcode) = self.wechat_errcode {
            fields.push(("wechat_errcode", Field::Number(errcode)));
        }
        fields.extend(
            self.details
                .iter()
                .map(|(name, value)| (*name, Field::Value(value))),
        );
        fields.sort_by_key(|(name, _)| *name);
        let mut map = serializer.serialize_map(Some(fields.len()))?;
        for (name, value) in &fields {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// The code of a response that left its handler without one of ours
/// (actix's own 404, 405 and payload errors), by status.
fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "body_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        status if status.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// The one place where an error response that is not yet in the API's shape
/// gets it: actix answers a known route's unsupported method with a bare 405
/// (and its `Allow` header), an unknown route or a failed extractor with
/// plain text. Headers such as `Allow` and `WWW-Authenticate` are kept.
/// Answers the HTTP server makes before any of this runs (a head it cannot
/// parse, one that never finishes, headers too large) stay empty: the
/// OpenAPI document lists them.
pub async fn shape_errors(
    request: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    use actix_web::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
    // The middlewares inside (CORS) answer a refusal with a response, which
    // is shaped here; an `Err` would pass through (the request is gone).
    let response = next.call(request).await?.map_into_boxed_body();
    let status = response.status();
    let shaped = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || shaped {
        return Ok(response);
    }
    let (request, old) = response.into_parts();
    let message = match old
        .headers()
        .get(ALLOW)
        .and_then(|allow| allow.to_str().ok())
    {
        Some(allowed) => format!("this endpoint allows {allowed}"),
        None => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut new = HttpResponse::build(status);
    for (name, value) in old.headers() {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            new.append_header((name.clone(), value.clone()));
        }
    }
    let new = new.json(ErrorBody::new(code_for_status(status), message));
    Ok(actix_web::dev::ServiceResponse::new(request, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_object_writes_its_fields_in_the_order_of_their_names() {
        let error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_data", "bad")
            .with_wechat_errcode(Some(47003))
            .with_detail("rule", "page")
            .with_detail("field", "data.thing1.value")
            .with_detail("wechat_errmsg", "argument invalid!");
        let text = serde_json::to_string(&ErrorBody {
            error: error.public_object(),
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"error":{"code":"invalid_data","field":"data.thing1.value","message":"bad","rule":"page","wechat_errcode":47003,"wechat_errmsg":"argument invalid!"}}"#
        );
    }

    #[test]
    fn only_a_missing_or_wrong_api_key_asks_for_one() {
        for error in [ApiError::missing_api_key(), ApiError::invalid_api_key()] {
            let response = error.error_response();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(response.headers().get(WWW_AUTHENTICATE).unwrap(), "Bearer");
        }
        let refused = ApiError::from(crate::push::PushError::Signature("signature"));
        let response = refused.error_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn retry_after_is_at_least_a_second() {
        let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "upstream_busy", "busy")
            .with_retry_after(Some(0));
        assert_eq!(
            error.error_response().headers().get(RETRY_AFTER).unwrap(),
            "1"
        );
    }

    #[test]
    fn a_500_tells_nothing_but_keeps_its_code_and_errcode() {
        let error = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "token_unavailable", "db")
            .with_wechat_errcode(Some(-1))
            .with_detail("field", "x");
        assert_eq!(
            serde_json::to_string(&error.public_object()).unwrap(),
            r#"{"code":"token_unavailable","message":"internal error","wechat_errcode":-1}"#
        );
    }
}
