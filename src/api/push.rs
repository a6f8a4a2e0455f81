//! `GET` and `POST /wechat/push/{appid}`: WeChat's message push
//! (docs/wechat/message-push.md). Public: WeChat sends no API key, so the
//! only authentication is its signature, checked by [`crate::push`].
//!
//! - GET is the console's handshake: the `echostr` verbatim as `text/plain`,
//!   or 401.
//! - POST is a push: opened by [`push::open`] (signature, replay window,
//!   decryption, appid, event); a refusal is a 4xx and stores nothing. A
//!   subscribe event is applied by [`SubscriptionStore::record_push`] in the
//!   transaction that records it, and `success` is answered only after that
//!   commit: an event is never half-applied, and never lost once `success`
//!   went out. A retry of the same push (WeChat tries 3 times) answers
//!   `success` and changes nothing.
//!
//! An app without a push token answers 404, like an unknown app.
//!
//! [`SubscriptionStore::record_push`]: crate::storage::SubscriptionStore::record_push

use std::collections::HashSet;
use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use anyhow::Context as _;

use super::error::ApiError;
use super::json::{read_body, BodyLimits};
use super::ApiContext;
use crate::config::GrantsFrom;
use crate::ledger::states::{Decision, PushEventKind};
use crate::ledger::subscriptions::push_plan;
use crate::monitoring::{self, PushItemEffect};
use crate::push::{self, Limits, PushEvent, PushKeys, PushQuery, SubscribeStatus};
use crate::storage::{NewPushEvent, PushAction, PushItem};

/// The longest `ErrorStatus` kept on a message (WeChat's are short words).
const MAX_ERROR_STATUS_CHARS: usize = 256;

/// The push keys of the app, or 404: an unknown app and one without a push
/// token answer the same, so the path tells nobody which appids are served.
fn keys_of<'a>(context: &'a ApiContext, appid: &str) -> Result<&'a PushKeys, ApiError> {
    context.push.get(appid).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no message push is configured here for this app",
        )
    })
}

/// The query string, or 400 when it is not `application/x-www-form-urlencoded`.
fn query_of(request: &HttpRequest) -> Result<PushQuery, ApiError> {
    web::Query::<PushQuery>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "the query string cannot be read",
            )
        })
}

fn text(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body(body)
}

/// The console's handshake: `signature == sha1(sorted(token, timestamp,
/// nonce))` → the `echostr` verbatim; otherwise 401 and nothing of it.
#[utoipa::path(
    get, path = "/wechat/push/{appid}", tag = "push", operation_id = "push_handshake",
    params(("appid" = String, Path), ("signature" = String, Query), ("timestamp" = String, Query), ("nonce" = String, Query), ("echostr" = String, Query)),
    responses((status = 200, description = "echostr, verbatim", content_type = "text/plain", body = String)),
)]
#[tracing::instrument(name = "push_handshake", skip_all, fields(appid = %path.as_str()))]
pub async fn handshake(
    request: HttpRequest,
    path: web::Path<String>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let keys = keys_of(&context, path.as_str())?;
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
#[utoipa::path(
    post, path = "/wechat/push/{appid}", tag = "push", operation_id = "push_receive",
    params(("appid" = String, Path), ("signature" = String, Query), ("timestamp" = String, Query), ("nonce" = String, Query),
        ("encrypt_type" = Option<String>, Query), ("msg_signature" = Option<String>, Query)),
    request_body(content = String, description = "WeChat's push: XML or JSON, plain or encrypted", content_type = "text/xml"),
    responses((status = 200, description = "`success`", content_type = "text/plain", body = String)),
)]
#[tracing::instrument(name = "push", skip_all, fields(appid = %path.as_str()))]
pub async fn receive(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let appid = path.into_inner();
    let keys = keys_of(&context, &appid)?;
    let query = query_of(&request).inspect_err(|_| {
        monitoring::push_refused(&appid, "bad_query");
    })?;
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
        monitoring::push_refused(&appid, error.code());
        ApiError::from(error)
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
        monitoring::push_event(&appid, "other", PushItemEffect::Ignored);
        return Ok(text("success".to_owned()));
    };
    await_reported_sends(&context, &new).await?;
    let outcomes = context
        .storage
        .record_push(&new, context.clock.now_ms())
        .await
        .context("push not recorded; WeChat will try again")?;
    context.catalogue.decided_on(
        &appid,
        new.items.iter().map(|item| item.template_id.as_str()),
    );
    for outcome in &outcomes {
        let effect = if outcome.replayed {
            PushItemEffect::Replayed
        } else {
            PushItemEffect::Applied(outcome.effect)
        };
        monitoring::push_event(&appid, new.kind.as_str(), effect);
    }
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

/// How long a sent event waits for the send it reports to be recorded.
/// WeChat may push the event before the gateway has written the msgid its
/// own call got back (the write commits after WeChat answers); without the
/// wait, that delivery would be filed under no message. Inside WeChat's
/// 5-second reply window (docs/wechat/message-push.md, "The reply").
const SENT_EVENT_WAIT: Duration = Duration::from_secs(3);

/// Waits, up to [`SENT_EVENT_WAIT`], until every delivery the push reports
/// names a message the ledger has recorded. A msgid still unknown then is
/// not one of this gateway's sends (or its send's write was lost with its
/// process): the push records it as such.
async fn await_reported_sends(context: &ApiContext, push: &NewPushEvent) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SENT_EVENT_WAIT;
    for item in &push.items {
        let PushAction::Delivery { msgid, .. } = &item.action else {
            continue;
        };
        loop {
            let found = context
                .storage
                .message_of_msgid(&push.appid, &push.openid, msgid)
                .await?;
            if found.is_some() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
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
            plan: push_plan(&action),
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
