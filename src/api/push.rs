//! `GET` and `POST /wechat/push/{appid}`: WeChat's message push
//! (docs/wechat/message-push.md). Public: WeChat sends no API key, so the
//! only authentication is its signature, checked by [`crate::push`].
//!
//! - GET is the console's handshake: the `echostr` verbatim as `text/plain`,
//!   or 401.
//! - POST is a push: opened by [`push::open`] (signature, replay window,
//!   decryption, appid, event); a refusal is a 4xx and stores nothing. A
//!   subscribe event is applied by [`Storage::record_push`] in the
//!   transaction that records it, and `success` is answered only after that
//!   commit: an event is never half-applied, and never lost once `success`
//!   went out. A retry of the same push (WeChat tries 3 times) answers
//!   `success` and changes nothing.
//!
//! An app without a push token answers 404, like an unknown app.
//!
//! [`Storage::record_push`]: crate::storage::Storage::record_push

use std::collections::HashSet;

use actix_web::http::header::ContentType;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use super::error::{body, ApiErrorCode, BodyError};
use super::json::{read_body, BodyLimits};
use super::ApiContext;
use crate::config::GrantsFrom;
use crate::ledger::states::{Decision, PushEventKind};
use crate::push::{self, Limits, PushError, PushEvent, PushQuery, SubscribeStatus};
use crate::storage::{NewPushEvent, PushAction, PushItem};

/// The longest `ErrorStatus` kept on a message (WeChat's are short words).
const MAX_ERROR_STATUS_CHARS: usize = 256;

/// Errors of the push endpoint.
#[derive(Debug, thiserror::Error)]
pub enum PushEndpointError {
    /// Unknown app, or no push token configured for it (the same answer,
    /// so the path tells nobody which appids are served).
    #[error("no message push is configured here for this app")]
    NotConfigured,
    /// The query string is not `application/x-www-form-urlencoded`.
    #[error("the query string cannot be read")]
    BadQuery,
    /// The body could not be read within its limits.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The push was refused: its signature, time, mode, ciphertext or
    /// document.
    #[error("push refused: {0}")]
    Refused(#[from] PushError),
    /// The ledger failed: not `success`, so WeChat tries again.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ResponseError for PushEndpointError {
    fn status_code(&self) -> StatusCode {
        match self {
            PushEndpointError::NotConfigured => StatusCode::NOT_FOUND,
            PushEndpointError::BadQuery => StatusCode::BAD_REQUEST,
            PushEndpointError::Body(error) => error.status_code(),
            PushEndpointError::Refused(error) => {
                StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            PushEndpointError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The API's error shape, without the `WWW-Authenticate: Bearer` of the
    /// keyed routes: an API key would not help here.
    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = ?self, "push not recorded; WeChat will try again");
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        HttpResponse::build(status).json(body(self.code(), &message, None))
    }
}

impl ApiErrorCode for PushEndpointError {
    fn code(&self) -> &'static str {
        match self {
            PushEndpointError::NotConfigured => "not_found",
            PushEndpointError::BadQuery => "bad_query",
            PushEndpointError::Body(error) => error.code(),
            PushEndpointError::Refused(error) => error.code(),
            PushEndpointError::Unexpected(_) => "internal",
        }
    }
}

fn query_of(request: &HttpRequest) -> Result<PushQuery, PushEndpointError> {
    web::Query::<PushQuery>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .map_err(|_| PushEndpointError::BadQuery)
}

fn text(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body(body)
}

/// The console's handshake: `signature == sha1(sorted(token, timestamp,
/// nonce))` → the `echostr` verbatim; otherwise 401 and nothing of it.
#[tracing::instrument(name = "push_handshake", skip_all, fields(appid = %path.as_str()))]
pub async fn handshake(
    request: HttpRequest,
    path: web::Path<String>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, PushEndpointError> {
    let keys = context
        .push
        .get(path.as_str())
        .ok_or(PushEndpointError::NotConfigured)?;
    let query = query_of(&request)?;
    match push::handshake(&keys.token, &query) {
        Ok(echostr) => {
            tracing::info!("push handshake answered");
            Ok(text(echostr.to_owned()))
        }
        Err(error) => {
            tracing::warn!(code = error.code(), %error, "push handshake refused");
            Err(error.into())
        }
    }
}

/// A push: verified and opened, its subscribe event applied once, `success`.
#[tracing::instrument(name = "push", skip_all, fields(appid = %path.as_str()))]
pub async fn receive(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, PushEndpointError> {
    let appid = path.into_inner();
    let keys = context
        .push
        .get(&appid)
        .ok_or(PushEndpointError::NotConfigured)?;
    let query = query_of(&request)?;
    let limits = Limits::default();
    let bytes = read_body(
        payload,
        BodyLimits {
            max_bytes: limits.max_body_bytes,
            timeout: context.http.body_timeout,
        },
    )
    .await?;
    let now_secs = context.clock.now_ms().div_euclid(1_000);
    let opened = push::open(keys, &query, &bytes, now_secs, &limits).map_err(|error| {
        tracing::warn!(code = error.code(), %error, "push refused");
        PushEndpointError::Refused(error)
    })?;
    let key = opened.key_used.map_or("none", |key| key.as_str());
    let event = opened.event.name().to_owned();
    let grants_from = context
        .apps
        .get(&appid)
        .map_or(GrantsFrom::default(), |app| app.subscribe_grants_from);
    let Some(new) = ledger_push(&appid, &opened.event, grants_from) else {
        tracing::debug!(
            mode = opened.mode.as_str(),
            format = opened.format.as_str(),
            key,
            event,
            "push received; not a subscribe event, nothing stored"
        );
        return Ok(text("success".to_owned()));
    };
    let outcomes = context
        .storage
        .record_push(&new, context.clock.now_ms())
        .await?;
    context.catalogue.decided_on(
        &appid,
        new.items.iter().map(|item| item.template_id.as_str()),
    );
    let replayed = outcomes.iter().filter(|outcome| outcome.replayed).count();
    let effects: Vec<&str> = outcomes
        .iter()
        .map(|outcome| outcome.effect.as_str())
        .collect();
    tracing::info!(
        mode = opened.mode.as_str(),
        format = opened.format.as_str(),
        key,
        event,
        items = outcomes.len(),
        replayed,
        effects = ?effects,
        grants_from = grants_from.as_str(),
        "push applied"
    );
    Ok(text("success".to_owned()))
}

/// What a subscribe event asks of the ledger, item by item; `None` for
/// any other push. Items repeated in one push (same identity) count once.
pub fn ledger_push(
    appid: &str,
    event: &PushEvent,
    grants_from: GrantsFrom,
) -> Option<NewPushEvent> {
    let header = event.header()?;
    let actions: Vec<(String, PushAction)> = match event {
        PushEvent::Popup(popup) => popup
            .items
            .iter()
            .map(|item| {
                let action = match Decision::from_wechat(item.status.as_str()) {
                    Some(decision) => PushAction::Decide {
                        decision,
                        grants: grants_from == GrantsFrom::Wechat,
                    },
                    None => PushAction::Ignore,
                };
                (item.template_id.clone(), action)
            })
            .collect(),
        PushEvent::Change(change) => change
            .items
            .iter()
            .map(|item| {
                // Revocations apply whatever source grants.
                let action = if item.status == SubscribeStatus::Reject {
                    PushAction::Revoke
                } else {
                    PushAction::Ignore
                };
                (item.template_id.clone(), action)
            })
            .collect(),
        PushEvent::Sent(sent) => sent
            .items
            .iter()
            .map(|item| {
                let action = PushAction::Delivery {
                    msgid: item.msgid.clone(),
                    error_code: item.error_code,
                    error_status: item
                        .error_status
                        .chars()
                        .take(MAX_ERROR_STATUS_CHARS)
                        .collect(),
                };
                (item.template_id.clone(), action)
            })
            .collect(),
        PushEvent::Other(_) => return None,
    };
    let kind = match event {
        PushEvent::Popup(_) => PushEventKind::Popup,
        PushEvent::Change(_) => PushEventKind::Change,
        _ => PushEventKind::Sent,
    };
    let mut seen = HashSet::new();
    let items = event
        .item_keys()
        .into_iter()
        .zip(actions)
        .filter(|(key, _)| seen.insert(key.clone()))
        .map(|(dedupe_key, (template_id, action))| PushItem {
            dedupe_key,
            template_id,
            action,
        })
        .collect();
    Some(NewPushEvent {
        appid: appid.to_owned(),
        openid: header.user.clone(),
        kind,
        items,
    })
}
