//! CORS for web frontends (an H5 page, a console) on the login and `/me`
//! routes only: each app allows the origins of its `cors_origins`, none by
//! default. A request whose `Origin` the app does not allow is refused 403
//! `origin_not_allowed` before its handler runs (preflight included), so
//! nothing is read or stored for it; an allowed preflight is answered 204.
//! A request without `Origin` (a mini-program's `wx.request`, a server)
//! passes untouched.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ORIGIN,
    VARY,
};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};

use crate::api::error::ApiError;
use crate::api::ApiContext;

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE_SECS: &str = "600";

/// 403: the app allows no browser calls from this origin.
fn origin_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        "this origin is not among the app's cors_origins",
    )
}

/// The middleware of the session routes (`middleware::from_fn`).
pub async fn cors(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(origin) = request
        .headers()
        .get(ORIGIN)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
    else {
        return Ok(next.call(request).await?.map_into_left_body());
    };
    let allowed = request
        .app_data::<web::Data<ApiContext>>()
        .zip(request.match_info().get("appid"))
        .and_then(|(context, appid)| context.apps.get(appid))
        .is_some_and(|app| app.cors_origins.contains(&origin));
    let Ok(origin) = HeaderValue::from_str(&origin) else {
        return Ok(request
            .into_response(origin_not_allowed().error_response())
            .map_into_right_body());
    };
    if !allowed {
        tracing::info!("a browser call from an origin the app does not allow");
        return Ok(request
            .into_response(origin_not_allowed().error_response())
            .map_into_right_body());
    }
    if request.method() == Method::OPTIONS {
        let preflight = HttpResponse::NoContent()
            .insert_header((ACCESS_CONTROL_ALLOW_ORIGIN, origin))
            .insert_header((VARY, "Origin"))
            .insert_header((ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, DELETE"))
            .insert_header((
                ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type, idempotency-key",
            ))
            .insert_header((ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE_SECS))
            .finish();
        return Ok(request.into_response(preflight).map_into_right_body());
    }
    let mut response = next.call(request).await?;
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after, x-request-id"),
    );
    Ok(response.map_into_left_body())
}
