//! The console's JSON endpoints (scope `admin`), each described for the
//! OpenAPI document by its `#[utoipa::path]`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::bodies::{AppList, AppListed, Failures, MessagePage, Overview, TokenStatus};
use crate::api::authorized::{AdminScope, Authorized, AuthorizedAnyApp};
use crate::api::error::ApiError;
use crate::api::responses::Message;
use crate::api::ApiContext;
use crate::ledger::broadcast::is_message_id;
use crate::ledger::collect::is_plain_identifier;
use crate::storage::stats::RecentQuery;

/// The window of the failures chart, in hours.
const FAILURE_HOURS: i64 = 24;
/// Messages on a page unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;
/// The longest openid searched for.
const MAX_OPENID_LEN: usize = 128;

/// `GET /v1/admin/apps`: the apps of the gateway the key may look at.
#[utoipa::path(
    get,
    path = "/v1/admin/apps",
    tag = "console",
    operation_id = "console_apps",
    responses(
        (status = 200, description = "The apps the key is allowed", body = AppList),
    ),
    security(("api_key" = []))
)]
pub async fn apps(
    auth: AuthorizedAnyApp<AdminScope>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let apps = context
        .apps
        .keys()
        .filter(|appid| auth.for_app(&context, appid).is_ok())
        .map(|appid| AppListed {
            appid: appid.clone(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(AppList { apps }))
}

/// `GET /v1/admin/apps/{appid}/overview`: the app's figures as the stats
/// worker last read them (read now if it has not yet).
#[utoipa::path(
    get,
    path = "/v1/admin/apps/{appid}/overview",
    tag = "console",
    operation_id = "console_overview",
    params(("appid" = String, Path, description = "The AppID")),
    responses(
        (status = 200, description = "Users reachable, credentials and grants", body = Overview),
    ),
    security(("api_key" = []))
)]
pub async fn overview(
    auth: Authorized<AdminScope>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let stats = context.stats.snapshot_or_refresh(auth.appid()).await?;
    Ok(HttpResponse::Ok().json(Overview::new(auth.appid(), &stats)))
}

/// The query of `GET …/messages`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// Only this user's messages.
    openid: Option<String>,
    /// Only the message with this id.
    message_id: Option<String>,
    /// Only messages older than this one (the `next_before` of the previous page).
    before: Option<String>,
    /// Messages on the page, 1 to 100 (20 by default).
    limit: Option<i64>,
}

/// `GET /v1/admin/apps/{appid}/messages`: the app's messages with their
/// attempts, errcodes and final delivery, newest first.
#[utoipa::path(
    get,
    path = "/v1/admin/apps/{appid}/messages",
    tag = "console",
    operation_id = "console_messages",
    params(("appid" = String, Path, description = "The AppID"), MessagesQuery),
    responses(
        (status = 200, description = "A page of messages, newest first", body = MessagePage),
    ),
    security(("api_key" = []))
)]
pub async fn messages(
    auth: Authorized<AdminScope>,
    request: HttpRequest,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<MessagesQuery>::from_query(request.query_string())
        .map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("the query takes openid, message_id, before and limit: {error}"),
            )
        })?
        .into_inner();
    let invalid = |code, message: &str| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message.to_owned())
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid(
            "invalid_paging",
            "limit must be a whole number from 1 to 100",
        ));
    }
    if let Some(openid) = &query.openid {
        if !is_plain_identifier(openid, MAX_OPENID_LEN) {
            return Err(invalid(
                "invalid_openid",
                "openid must be 1 to 128 characters without spaces",
            ));
        }
    }
    if let Some(id) = &query.message_id {
        return one_message(&auth, &context, id, query.openid.as_deref()).await;
    }
    let before = match &query.before {
        None => None,
        Some(id) => {
            let found = match is_message_id(id) {
                true => context.storage.message(auth.appid(), id).await?,
                false => None,
            };
            let (message, _) = found.ok_or_else(|| {
                invalid(
                    "invalid_cursor",
                    "before must be the id of a message of the app",
                )
            })?;
            Some((message.created_at, message.id))
        }
    };
    let rows = context
        .storage
        .recent_messages(&RecentQuery {
            appid: auth.appid(),
            openid: query.openid.as_deref(),
            before: before.as_ref().map(|(at, id)| (*at, id.as_str())),
            limit,
        })
        .await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|(message, _)| message.id.clone()))
        .flatten();
    let messages = rows
        .into_iter()
        .map(|(message, attempts)| Message::new(message, attempts))
        .collect();
    Ok(HttpResponse::Ok().json(MessagePage {
        messages,
        next_before,
    }))
}

/// The page of the message `id` alone (empty when the app has no such
/// message, or it is not `openid`'s).
async fn one_message(
    auth: &Authorized<AdminScope>,
    context: &ApiContext,
    id: &str,
    openid: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let found = match is_message_id(id) {
        true => context.storage.message(auth.appid(), id).await?,
        false => None,
    };
    let messages = found
        .filter(|(message, _)| openid.is_none_or(|openid| message.touser == openid))
        .map(|(message, attempts)| Message::new(message, attempts))
        .into_iter()
        .collect();
    Ok(HttpResponse::Ok().json(MessagePage {
        messages,
        next_before: None,
    }))
}

/// `GET /v1/admin/apps/{appid}/failures`: failed messages of the last 24
/// hours by hour and by errcode.
#[utoipa::path(
    get,
    path = "/v1/admin/apps/{appid}/failures",
    tag = "console",
    operation_id = "console_failures",
    params(("appid" = String, Path, description = "The AppID")),
    responses(
        (status = 200, description = "Failures of the last 24 hours", body = Failures),
    ),
    security(("api_key" = []))
)]
pub async fn failures(
    auth: Authorized<AdminScope>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let since = context.clock.now_ms() - FAILURE_HOURS * 3_600_000;
    let rows = context.storage.failures_since(auth.appid(), since).await?;
    Ok(HttpResponse::Ok().json(Failures::new(&rows, since, FAILURE_HOURS)))
}

/// `GET /v1/admin/apps/{appid}/token`: the token's expiry, last refresh and
/// refresh lease; never the token.
#[utoipa::path(
    get,
    path = "/v1/admin/apps/{appid}/token",
    tag = "console",
    operation_id = "console_token",
    params(("appid" = String, Path, description = "The AppID")),
    responses(
        (status = 200, description = "The token's standing", body = TokenStatus),
    ),
    security(("api_key" = []))
)]
pub async fn token(
    auth: Authorized<AdminScope>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let standing = context.storage.token_standing(auth.appid()).await?;
    Ok(HttpResponse::Ok().json(TokenStatus::new(standing, context.clock.now_ms())))
}
