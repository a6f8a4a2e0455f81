//! Every path but the token endpoints and the subscribe send: forwarded to
//! the configured WeChat base URL (never a host the caller names: the `Host`
//! header, an absolute URI or a path that decodes to another resource are
//! never followed), with the gateway's current token in place of the
//! caller's. Method, path, query (every other pair as it came), body and
//! `Content-Type` go as they came; WeChat's status, `Content-Type`,
//! `Content-Disposition` and body come back byte for byte.
//!
//! A WeChat answer of 40001/40014/42001 means the call was not processed
//! (docs/wechat/tokens.md, "A token that stops working"): the token is
//! replaced by compare-and-refresh (only while it is still the current one)
//! and the call is made once more; no other errcode is retried.

use actix_web::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use formid_core::proxy::{
    forwardable_path, is_token_path, redact_query, retry_with_new_token, CallerQuery, CallerToken,
    QueryRefusal,
};

use super::{wechat_error, ProxyContext};
use crate::api::json::{read_body, BodyLimits};
use crate::tokens::CurrentToken;

/// The one path forwarded without a token: it carries the app's id and
/// secret, and the endpoint only checks that the app is one of its own.
const JSCODE2SESSION: &str = "/sns/jscode2session";

/// A call to make at WeChat for an app.
pub(super) struct Outgoing<'a> {
    pub method: reqwest::Method,
    pub path: &'a str,
    pub query: CallerQuery<'a>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Any other path.
#[tracing::instrument(
    name = "proxy_forward",
    skip_all,
    fields(method = %request.method(), path = %request.uri().path(), query = %redact_query(request.query_string()), appid)
)]
pub async fn forward(
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ProxyContext>,
) -> HttpResponse {
    let Ok(path) = forwardable_path(request.uri().path())
        .map_err(drop)
        .and_then(|path| {
            // The token endpoints in another letter case: never fetched at WeChat.
            if is_token_path(path) {
                Err(())
            } else {
                Ok(path)
            }
        })
    else {
        tracing::warn!("refused a path that is not plain segments");
        return HttpResponse::NotFound()
            .content_type("text/html")
            .body("<html><body>not found</body></html>");
    };
    let query = match CallerQuery::parse(request.query_string()) {
        Ok(query) => query,
        Err(QueryRefusal::TokenTwice) => return wechat_error(40001),
        Err(QueryRefusal::TooLong) => return wechat_error(45002),
    };
    let appid = if path == JSCODE2SESSION {
        match query
            .get("appid")
            .filter(|appid| context.apps.contains_key(*appid))
        {
            Some(appid) => appid.to_owned(),
            None => return wechat_error(40013),
        }
    } else {
        match caller_app(&context, &query).await {
            Ok(appid) => appid,
            Err(answer) => return answer,
        }
    };
    tracing::Span::current().record("appid", appid.as_str());
    let body = match read_bounded(&context, payload).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let outgoing = Outgoing {
        // actix and reqwest speak two versions of `http`: by name.
        method: reqwest::Method::from_bytes(request.method().as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET),
        path,
        query,
        content_type: request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        body,
    };
    if path == JSCODE2SESSION {
        return call_as_is(&context, &appid, &outgoing).await;
    }
    call_with_token(&context, &appid, &outgoing).await
}

/// The app the caller's token speaks for, or WeChat's answer to it: 41001
/// without a token, 42001 for one the gateway handed out that has run out,
/// 40001 for any other.
pub(super) async fn caller_app(
    context: &ProxyContext,
    query: &CallerQuery<'_>,
) -> Result<String, HttpResponse> {
    let caller = query
        .get("access_token")
        .filter(|token| !token.is_empty())
        .ok_or_else(|| wechat_error(41001))?;
    let now = context.clock.now_ms();
    let (verdict, appid) = context
        .book
        .identify(&context.tokens, context.apps.keys(), caller, now)
        .await;
    match (verdict, appid) {
        (CallerToken::Admitted, Some(appid)) => Ok(appid),
        (CallerToken::Expired, _) => {
            tracing::info!("a caller's token has run out: 42001");
            Err(wechat_error(42001))
        }
        _ => {
            tracing::warn!("a caller's token speaks for no app: 40001");
            Err(wechat_error(40001))
        }
    }
}

/// The request body, bounded in size (`proxy.max_body_bytes`) and time
/// (`http.body_timeout_ms`).
pub(super) async fn read_bounded(
    context: &ProxyContext,
    payload: web::Payload,
) -> Result<Bytes, HttpResponse> {
    let limits = BodyLimits {
        max_bytes: context.settings.max_body_bytes,
        timeout: context.body_timeout,
    };
    read_body(payload, limits).await.map_err(|error| {
        tracing::warn!(status = %error.status(), "refused a request body");
        let mut answer = wechat_error(45002);
        *answer.status_mut() = error.status();
        answer
    })
}

/// Forwards with the gateway's current token, once more after a token
/// errcode while that token was current.
pub(super) async fn call_with_token(
    context: &ProxyContext,
    appid: &str,
    outgoing: &Outgoing<'_>,
) -> HttpResponse {
    let guard = context.sender.call_guard();
    let _slot = guard.slot(appid).await;
    let mut token = match current_token(context, appid).await {
        Ok(token) => token,
        Err(answer) => return answer,
    };
    for attempt in 0..2 {
        if guard.admit(appid).is_err() {
            tracing::warn!(appid, "the app's circuit is open: answering system error");
            return wechat_error(-1);
        }
        let query = outgoing.query.with_token(&token.token);
        let answer = call(context, outgoing, &query).await;
        guard.record(appid, answer.wechat_failed());
        let Relayed::Buffered(buffered) = &answer else {
            return answer.respond(context);
        };
        if attempt == 1 || !retry_with_new_token(buffered.errcode) {
            return answer.respond(context);
        }
        tracing::warn!(
            appid,
            errcode = ?buffered.errcode,
            "WeChat rejected the gateway's token: refreshing it and calling once more"
        );
        token = match context.tokens.refresh(appid, &token.token).await {
            Ok(token) => token,
            Err(error) => {
                tracing::warn!(appid, %error, "no new token: answering WeChat's rejection");
                return answer.respond(context);
            }
        };
        context.book.observe(appid, &token, context.clock.now_ms());
    }
    wechat_error(-1)
}

/// Forwards as it came (jscode2session), inside the app's call bound and
/// breaker.
async fn call_as_is(context: &ProxyContext, appid: &str, outgoing: &Outgoing<'_>) -> HttpResponse {
    let guard = context.sender.call_guard();
    let _slot = guard.slot(appid).await;
    if guard.admit(appid).is_err() {
        return wechat_error(-1);
    }
    let query = outgoing.query.as_given();
    let answer = call(context, outgoing, query).await;
    guard.record(appid, answer.wechat_failed());
    answer.respond(context)
}

async fn current_token(context: &ProxyContext, appid: &str) -> Result<CurrentToken, HttpResponse> {
    match context.tokens.current(appid).await {
        Ok(token) => {
            context.book.observe(appid, &token, context.clock.now_ms());
            Ok(token)
        }
        Err(error) => {
            tracing::warn!(appid, %error, "no token to forward with");
            Err(wechat_error(-1))
        }
    }
}

/// WeChat's answer to one forwarded call.
pub(super) enum Relayed {
    /// A JSON or text answer, read whole (bounded) to see its errcode.
    Buffered(Buffered),
    /// Anything else (a media download), relayed as it streams.
    Streamed(reqwest::Response),
    /// WeChat could not be reached, or its answer was too large or broken.
    Failed,
}

/// A JSON or text answer read whole.
pub(super) struct Buffered {
    status: StatusCode,
    content_type: Option<String>,
    body: Bytes,
    pub errcode: Option<i64>,
}

impl Relayed {
    /// Whether the breaker counts this call as WeChat failing.
    fn wechat_failed(&self) -> bool {
        match self {
            Relayed::Buffered(buffered) => {
                buffered.status.is_server_error() || buffered.errcode == Some(-1)
            }
            Relayed::Streamed(response) => response.status().is_server_error(),
            Relayed::Failed => true,
        }
    }

    fn respond(self, context: &ProxyContext) -> HttpResponse {
        match self {
            Relayed::Buffered(buffered) => {
                let mut answer = HttpResponse::build(buffered.status);
                if let Some(content_type) = buffered.content_type {
                    answer.insert_header((CONTENT_TYPE, content_type));
                }
                answer.body(buffered.body)
            }
            Relayed::Streamed(response) => stream(response, context.settings.max_response_bytes),
            Relayed::Failed => wechat_error(-1),
        }
    }
}

/// Makes the call at the configured base URL with `query`.
async fn call(context: &ProxyContext, outgoing: &Outgoing<'_>, query: &str) -> Relayed {
    let upstream = &context.upstream;
    let mut url = format!("{}{}", upstream.base_url, outgoing.path);
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    let mut call = upstream.http.request(outgoing.method.clone(), url);
    if let Some(content_type) = &outgoing.content_type {
        call = call.header(CONTENT_TYPE.as_str(), content_type);
    }
    if !outgoing.body.is_empty() {
        call = call.body(outgoing.body.clone());
    }
    let response = match call.send().await {
        Ok(response) => response,
        Err(error) => {
            // Without the URL: it carries the token.
            tracing::warn!(error = %error.without_url(), "WeChat could not be reached");
            return Relayed::Failed;
        }
    };
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE.as_str())
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let readable = content_type.as_deref().is_none_or(|value| {
        let value = value.to_ascii_lowercase();
        value.contains("json") || value.starts_with("text/")
    });
    if !readable
        || response
            .headers()
            .contains_key(CONTENT_DISPOSITION.as_str())
    {
        tracing::info!(
            status = status.as_u16(),
            "WeChat answered a file: streaming it"
        );
        return Relayed::Streamed(response);
    }
    let Some(body) = read_answer(response, context.settings.max_response_bytes).await else {
        return Relayed::Failed;
    };
    let errcode = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|value| value.get("errcode").and_then(serde_json::Value::as_i64));
    tracing::info!(status = status.as_u16(), errcode = ?errcode, "WeChat answered");
    Relayed::Buffered(Buffered {
        status: StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
        content_type,
        body,
        errcode,
    })
}

/// A JSON or text answer, whole, if it fits `max` bytes and arrives whole.
async fn read_answer(mut response: reqwest::Response, max: usize) -> Option<Bytes> {
    let mut body = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    tracing::warn!(max, "WeChat's answer is over the endpoint's bound");
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(body.freeze()),
            Err(error) => {
                tracing::warn!(error = %error.without_url(), "WeChat's answer broke off");
                return None;
            }
        }
    }
}

/// Relays a file answer chunk by chunk, byte for byte, cutting it off past
/// `max` bytes.
fn stream(response: reqwest::Response, max: usize) -> HttpResponse {
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut answer = HttpResponse::build(status);
    for name in [CONTENT_TYPE, CONTENT_DISPOSITION] {
        if let Some(value) = response.headers().get(name.as_str()) {
            if let Ok(value) = value.to_str() {
                answer.insert_header((name, value.to_owned()));
            }
        }
    }
    // The state is `None` once the stream failed: nothing follows an error.
    let chunks = futures_util::stream::unfold(Some((response, 0usize)), move |state| async move {
        let (mut response, sent) = state?;
        match response.chunk().await {
            Ok(Some(chunk)) if sent + chunk.len() <= max => {
                let sent = sent + chunk.len();
                Some((Ok::<Bytes, std::io::Error>(chunk), Some((response, sent))))
            }
            Ok(Some(_)) => {
                tracing::warn!(
                    max,
                    "a streamed answer went over the endpoint's bound: cut off"
                );
                Some((
                    Err(std::io::Error::other("over the endpoint's bound")),
                    None,
                ))
            }
            Ok(None) => None,
            Err(error) => Some((
                Err(std::io::Error::other(error.without_url().to_string())),
                None,
            )),
        }
    });
    answer.streaming(chunks)
}
