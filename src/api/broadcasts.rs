//! `POST /v1/apps/{appid}/broadcasts` (JSON, or an NDJSON upload),
//! `GET …/broadcasts`, `GET …/broadcasts/{id}`, `POST …/broadcasts/{id}/{pause,resume,cancel}`
//! and `GET …/broadcasts/{id}/results` (NDJSON, streamed a page at a time).

use std::collections::BTreeMap;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::authorized::{Authorized, SendScope};
use super::error::ApiError;
use super::json::{read_body, BodyLimits};
use super::{ApiContext, Route};
use crate::broadcasts::{
    parse_broadcast_request, parse_broadcast_upload, CommandError, CreateRefusal, Report,
};
use crate::ledger::broadcast::Command;
use crate::ledger::collect::Rejection;
use crate::ledger::states::{BroadcastState, Channel, PauseReason, RecipientState};
use crate::storage::broadcasts::{Broadcast, RecipientRow};

/// Results read per page of the download.
const RESULTS_PAGE: i64 = 1_000;

/// A job as listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BroadcastSummary {
    pub id: String,
    pub template_id: String,
    #[schema(value_type = String)]
    pub channel: Channel,
    #[schema(value_type = String)]
    pub state: BroadcastState,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub pause_reason: Option<PauseReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
    pub send_at: String,
    pub recipients: i64,
    /// Sends per second the job is paced at now.
    pub rate_limit: i64,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_send_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// A job with its progress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BroadcastProgress {
    #[serde(flatten)]
    pub job: BroadcastSummary,
    pub sent: i64,
    pub no_credential: i64,
    pub capped: i64,
    pub unknown: i64,
    pub cancelled: i64,
    /// Failed recipients by WeChat errcode (`none`: no errcode, see `failed_by_code`).
    pub failed: BTreeMap<String, i64>,
    /// Failed recipients by the send path's code.
    pub failed_by_code: BTreeMap<String, i64>,
    pub remaining: i64,
    /// Recipients done per second since the job started.
    pub rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_end: Option<String>,
}

/// The answer to a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BroadcastList {
    pub broadcasts: Vec<BroadcastSummary>,
}

/// One line of the results download.
#[derive(Debug, Serialize)]
pub struct RecipientResultLine<'a> {
    pub seq: i64,
    pub openid: &'a str,
    pub state: RecipientState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wechat_errcode: Option<i64>,
    pub updated_at: String,
}

fn time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl From<&Broadcast> for BroadcastSummary {
    fn from(job: &Broadcast) -> Self {
        Self {
            id: job.id.clone(),
            template_id: job.template_id.clone(),
            channel: job.channel,
            state: job.standing.state,
            pause_reason: job.standing.pause_reason,
            paused_until: job.paused_until.map(time),
            send_at: time(job.send_at),
            recipients: job.recipients,
            rate_limit: job.rate,
            created_at: time(job.created_at),
            started_at: job.started_at.map(time),
            first_send_at: job.first_send_at.map(time),
            finished_at: job.finished_at.map(time),
        }
    }
}

impl From<&Report> for BroadcastProgress {
    fn from(report: &Report) -> Self {
        let mut progress = Self {
            job: BroadcastSummary::from(&report.job),
            sent: 0,
            no_credential: 0,
            capped: 0,
            unknown: 0,
            cancelled: 0,
            failed: BTreeMap::new(),
            failed_by_code: BTreeMap::new(),
            remaining: report.remaining,
            rate: report.progress.rate,
            estimated_end: report.progress.estimated_end.map(time),
        };
        for count in &report.counts {
            match count.state {
                RecipientState::Sent => progress.sent += count.count,
                RecipientState::NoCredential => progress.no_credential += count.count,
                RecipientState::Capped => progress.capped += count.count,
                RecipientState::Unknown => progress.unknown += count.count,
                RecipientState::Cancelled => progress.cancelled += count.count,
                RecipientState::Failed => {
                    let errcode = count
                        .wechat_errcode
                        .map_or_else(|| "none".to_owned(), |errcode| errcode.to_string());
                    *progress.failed.entry(errcode).or_default() += count.count;
                    let code = count.error_code.clone().unwrap_or_else(|| "failed".into());
                    *progress.failed_by_code.entry(code).or_default() += count.count;
                }
                RecipientState::Queued | RecipientState::Leased => {}
            }
        }
        progress
    }
}

fn rejected(rejection: Rejection) -> ApiError {
    match rejection.code {
        "invalid_json" => ApiError::invalid_json(rejection.message),
        code => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, rejection.message),
    }
}

fn is_ndjson(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/x-ndjson"))
}

/// Creates a broadcast: 202 with the job. The template and data are checked
/// as a single send's before anything is recorded (422 when they do not fit).
#[utoipa::path(
    post, path = "/v1/apps/{appid}/broadcasts", tag = "broadcasts", operation_id = "create_broadcast",
    params(("appid" = String, Path, description = "The app's AppID")),
    request_body(content(
        (crate::api::requests::CreateBroadcast = "application/json"),
        (String = "application/x-ndjson"),
    )),
    responses((status = 202, description = "The broadcast, queued", body = BroadcastSummary)),
    security(("api_key" = [])),
)]
pub async fn create(
    auth: Authorized<SendScope>,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let appid = auth.appid();
    let parsed = if is_ndjson(&request) {
        let limits = BodyLimits {
            max_bytes: context.broadcast_upload_bytes,
            timeout: context.http.body_timeout,
        };
        let body = read_body(payload, limits).await?;
        parse_broadcast_upload(&body).map_err(rejected)?
    } else {
        let body = context.read_json_text(&request, payload).await?;
        parse_broadcast_request(&body).map_err(rejected)?
    };
    let job = context
        .broadcasts
        .create(appid, parsed)
        .await
        .map_err(|refusal| match refusal {
            CreateRefusal::Send(refusal) => ApiError::from(refusal),
            CreateRefusal::Ledger(error) => ApiError::from(error),
        })?;
    Ok(HttpResponse::Accepted().json(BroadcastSummary::from(&job)))
}

/// The app's newest broadcasts (100).
#[utoipa::path(
    get, path = "/v1/apps/{appid}/broadcasts", tag = "broadcasts", operation_id = "list_broadcasts",
    params(("appid" = String, Path, description = "The app's AppID")),
    responses((status = 200, description = "The app's newest broadcasts", body = BroadcastList)),
    security(("api_key" = [])),
)]
pub async fn list(
    auth: Authorized<SendScope>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let jobs = context.broadcasts.list(auth.appid(), 100).await?;
    Ok(HttpResponse::Ok().json(BroadcastList {
        broadcasts: jobs.iter().map(BroadcastSummary::from).collect(),
    }))
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such broadcast")
}

/// One broadcast and its progress.
#[utoipa::path(
    get, path = "/v1/apps/{appid}/broadcasts/{id}", tag = "broadcasts", operation_id = "get_broadcast",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path)),
    responses((status = 200, description = "The broadcast and its progress", body = BroadcastProgress)),
    security(("api_key" = [])),
)]
pub async fn lookup(
    auth: Authorized<SendScope>,
    path: web::Path<(String, String)>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let (_, id) = path.into_inner();
    let report = context
        .broadcasts
        .report(auth.appid(), &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(BroadcastProgress::from(&report)))
}

async fn command(
    auth: Authorized<SendScope>,
    id: &str,
    command: Command,
    context: &ApiContext,
) -> Result<HttpResponse, ApiError> {
    let job = context
        .broadcasts
        .command(auth.appid(), id, command)
        .await
        .map_err(|error| match error {
            CommandError::NotFound => not_found(),
            CommandError::Refused(refused) => {
                ApiError::new(StatusCode::CONFLICT, "broadcast_state", refused.to_string())
                    .with_detail("state", refused.state.as_str())
            }
            CommandError::Ledger(error) => error.into(),
        })?;
    Ok(HttpResponse::Ok().json(BroadcastSummary::from(&job)))
}

/// Pauses a broadcast (its batches in flight finish).
#[utoipa::path(
    post, path = "/v1/apps/{appid}/broadcasts/{id}/pause", tag = "broadcasts", operation_id = "pause_broadcast",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path)),
    responses((status = 200, description = "The broadcast", body = BroadcastSummary)),
    security(("api_key" = [])),
)]
pub async fn pause(
    auth: Authorized<SendScope>,
    path: web::Path<(String, String)>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    command(auth, &path.1, Command::Pause, &context).await
}

/// Resumes a paused broadcast.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/broadcasts/{id}/resume", tag = "broadcasts", operation_id = "resume_broadcast",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path)),
    responses((status = 200, description = "The broadcast", body = BroadcastSummary)),
    security(("api_key" = [])),
)]
pub async fn resume(
    auth: Authorized<SendScope>,
    path: web::Path<(String, String)>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    command(auth, &path.1, Command::Resume, &context).await
}

/// Cancels a broadcast: its recipients not yet taken are `cancelled`.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/broadcasts/{id}/cancel", tag = "broadcasts", operation_id = "cancel_broadcast",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path)),
    responses((status = 200, description = "The broadcast", body = BroadcastSummary)),
    security(("api_key" = [])),
)]
pub async fn cancel(
    auth: Authorized<SendScope>,
    path: web::Path<(String, String)>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    command(auth, &path.1, Command::Cancel, &context).await
}

/// The per-recipient results as NDJSON, one recipient a line in order,
/// streamed a page at a time (never built in memory).
#[utoipa::path(
    get, path = "/v1/apps/{appid}/broadcasts/{id}/results", tag = "broadcasts", operation_id = "broadcast_results",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path)),
    responses((status = 200, description = "One JSON object a line per recipient", content_type = "application/x-ndjson", body = String)),
    security(("api_key" = [])),
)]
pub async fn results(
    auth: Authorized<SendScope>,
    path: web::Path<(String, String)>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let (_, id) = path.into_inner();
    let appid = auth.appid().to_owned();
    context
        .storage
        .broadcast(&appid, &id)
        .await?
        .ok_or_else(not_found)?;
    let broadcasts = context.broadcasts.clone();
    let pages = futures_util::stream::unfold(Some(0i64), move |after| {
        let broadcasts = broadcasts.clone();
        let id = id.clone();
        async move {
            let after = after?;
            match broadcasts.results_page(&id, after, RESULTS_PAGE).await {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => {
                    let next = rows.last().map(|row| row.seq);
                    let more = rows.len() as i64 == RESULTS_PAGE;
                    Some((Ok(render(&rows)), next.filter(|_| more)))
                }
                Err(error) => {
                    tracing::error!(error = ?error, "reading a broadcast's results failed");
                    Some((
                        Err(actix_web::error::ErrorInternalServerError("results")),
                        None,
                    ))
                }
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(pages))
}

fn render(rows: &[RecipientRow]) -> web::Bytes {
    let mut text = Vec::with_capacity(rows.len() * 128);
    for row in rows {
        let line = RecipientResultLine {
            seq: row.seq,
            openid: &row.openid,
            state: row.state,
            message_id: row.message_id.as_deref(),
            error: row.error_code.as_deref(),
            wechat_errcode: row.wechat_errcode,
            updated_at: time(row.updated_at),
        };
        // A struct of strings and numbers always serializes.
        if serde_json::to_writer(&mut text, &line).is_ok() {
            text.push(b'\n');
        }
    }
    web::Bytes::from(text)
}

/// The broadcasts' routes, inside the app's scope (`/v1/apps/{appid}`).
pub fn endpoints() -> Vec<Route> {
    vec![
        Route::new("/broadcasts").post(create).get(list),
        Route::new("/broadcasts/{id}").get(lookup),
        Route::new("/broadcasts/{id}/results").get(results),
        Route::new("/broadcasts/{id}/pause").post(pause),
        Route::new("/broadcasts/{id}/resume").post(resume),
        Route::new("/broadcasts/{id}/cancel").post(cancel),
    ]
}
