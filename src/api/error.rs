//! The one error shape of the API:
//! `{"error":{"code":"snake_case","message":"…","wechat_errcode":N}}`.
//!
//! Each endpoint has its own `thiserror` enum whose `ResponseError` picks the
//! status; this module renders them all the same way.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

/// What every endpoint error tells besides its status.
pub trait ApiErrorCode: ResponseError {
    /// Machine-readable code.
    fn code(&self) -> &'static str;
    /// WeChat's errcode, when WeChat gave one.
    fn wechat_errcode(&self) -> Option<i64> {
        None
    }
    /// For people; never carries secrets.
    fn public_message(&self) -> String {
        self.to_string()
    }
    /// Further machine-readable fields of the error object (the field and
    /// rule a request broke, say).
    fn details(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        None
    }
    /// Seconds to wait before trying again, where waiting helps (sent as
    /// `Retry-After`).
    fn retry_after_secs(&self) -> Option<i64> {
        None
    }
}

/// Renders an endpoint error in the API's shape.
pub fn render<E: ApiErrorCode>(error: &E) -> HttpResponse {
    let status = error.status_code();
    let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
        // The Debug form carries the anyhow context chain for operators; the
        // caller learns only that it was ours.
        tracing::error!(error = ?error, "request failed");
        "internal error".to_owned()
    } else {
        error.public_message()
    };
    let mut response = HttpResponse::build(status);
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"));
    }
    if let Some(seconds) = error.retry_after_secs() {
        response.insert_header((
            actix_web::http::header::RETRY_AFTER,
            seconds.max(1).to_string(),
        ));
    }
    let mut body = body(error.code(), &message, error.wechat_errcode());
    if status != StatusCode::INTERNAL_SERVER_ERROR {
        for (name, value) in error.details().into_iter().flatten() {
            body["error"][name] = value;
        }
    }
    response.json(body)
}

/// The JSON body of an error.
pub fn body(code: &str, message: &str, wechat_errcode: Option<i64>) -> serde_json::Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(errcode) = wechat_errcode {
        error["wechat_errcode"] = errcode.into();
    }
    json!({ "error": error })
}

/// A plain error response for the few places outside an endpoint enum.
pub fn plain(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(body(code, message, None))
}

/// Errors every app-scoped endpoint can give before its own work starts.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("missing API key: send Authorization: Bearer <key>")]
    MissingKey,
    #[error("invalid API key")]
    InvalidKey,
    /// Only for a key allowed every app: a key limited to some apps gets
    /// [`AccessError::Forbidden`] for any other, configured or not.
    #[error("unknown app")]
    UnknownApp,
    #[error("this API key is not allowed to do that for this app")]
    Forbidden,
}

impl ResponseError for AccessError {
    fn status_code(&self) -> StatusCode {
        match self {
            AccessError::MissingKey | AccessError::InvalidKey => StatusCode::UNAUTHORIZED,
            AccessError::UnknownApp => StatusCode::NOT_FOUND,
            AccessError::Forbidden => StatusCode::FORBIDDEN,
        }
    }

    fn error_response(&self) -> HttpResponse {
        render(self)
    }
}

impl ApiErrorCode for AccessError {
    fn code(&self) -> &'static str {
        match self {
            AccessError::MissingKey => "missing_api_key",
            AccessError::InvalidKey => "invalid_api_key",
            AccessError::UnknownApp => "unknown_app",
            AccessError::Forbidden => "forbidden",
        }
    }
}

/// Errors of reading a request body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the body could not be read")]
    Unreadable,
    #[error("the body must be sent as Content-Type: application/json (charset utf-8, if any)")]
    UnsupportedMediaType,
    #[error("the body did not arrive within {} ms", .0.as_millis())]
    Timeout(std::time::Duration),
}

impl ResponseError for BodyError {
    fn status_code(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::InvalidJson(_) | BodyError::Unreadable => StatusCode::BAD_REQUEST,
            BodyError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        render(self)
    }
}

impl ApiErrorCode for BodyError {
    fn code(&self) -> &'static str {
        match self {
            BodyError::TooLarge(_) => "body_too_large",
            BodyError::InvalidJson(_) => "invalid_json",
            BodyError::Unreadable => "unreadable_body",
            BodyError::UnsupportedMediaType => "unsupported_media_type",
            BodyError::Timeout(_) => "body_timeout",
        }
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
pub async fn shape_errors(
    request: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    use actix_web::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
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
    let new = new.json(body(code_for_status(status), &message, None));
    Ok(actix_web::dev::ServiceResponse::new(request, new))
}
