//! What the errors of the features answer over HTTP: each becomes an
//! [`ApiError`] here, with its status, code, message and WeChat errcode.

use actix_web::http::StatusCode;

use super::ApiError;
use crate::ledger::collect::Rejection;
use crate::ledger::failure::SendFailure;
use crate::ledger::settle::{classify, Verdict};
use crate::ledger::templates::InvalidTemplateData;
use crate::push::PushError;
use crate::sending::SendRefusal;
use crate::templates::CatalogueError;
use crate::tokens::TokenError;
use crate::wechat::CallError;

/// The ledger or another part of ours failed: 500.
impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::internal(error)
    }
}

/// An item the ledger refuses to store: 422 with the rejection's code.
impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            rejection.code,
            rejection.message,
        )
    }
}

/// A send that does not fit its channel or template: 422
/// `invalid_template_data`, with the field and the rule.
impl From<InvalidTemplateData> for ApiError {
    fn from(invalid: InvalidTemplateData) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_template_data",
            invalid.message,
        )
        .with_detail("field", invalid.field)
        .with_detail("rule", invalid.rule)
    }
}

/// A send refused before anything was claimed: 422 for a request that does
/// not fit, 500 when the ledger failed.
impl From<SendRefusal> for ApiError {
    fn from(refusal: SendRefusal) -> Self {
        match refusal {
            SendRefusal::Invalid(invalid) => invalid.into(),
            SendRefusal::Ledger(error) => error.into(),
        }
    }
}

/// A push refused (signature, time, mode, ciphertext, document): its own
/// status and code. No `WWW-Authenticate`: an API key would not help.
impl From<PushError> for ApiError {
    fn from(error: PushError) -> Self {
        let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
        ApiError::new(status, error.code(), format!("push refused: {error}"))
    }
}

impl ApiError {
    /// The token endpoints' answer when no token could be had; `now_ms`
    /// turns a spent budget's retry time into `Retry-After`.
    pub fn from_token(error: TokenError, now_ms: i64) -> Self {
        match error {
            TokenError::Refused { errcode, .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "token_refused",
                "WeChat refused to issue a token",
            )
            .with_wechat_errcode(Some(errcode)),
            TokenError::BudgetExhausted { retry_at_ms } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "token_unavailable",
                "WeChat rejected the app's token and its budget of fetches is spent for now",
            )
            .with_retry_after(Some((retry_at_ms - now_ms + 999) / 1000)),
            other => {
                // A ledger failure is the gateway's own (500, no Retry-After),
                // though a send waits it out like any transient token error.
                let ours = matches!(other, TokenError::Storage(_));
                let status = if ours {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                ApiError::new(
                    status,
                    "token_unavailable",
                    "no token could be obtained from WeChat",
                )
                .with_retry_after((other.is_transient() && !ours).then_some(1))
                .caused_by(other)
            }
        }
    }

    /// The error part of a send's answer: the status the unsent message
    /// answers with, its code, message and errcode, and a `Retry-After`
    /// where waiting helps.
    pub fn from_send_failure(failure: &SendFailure, now_ms: i64) -> Self {
        ApiError::new(send_status(failure), failure.code(), failure.message())
            .with_wechat_errcode(failure.wechat_errcode())
            .with_retry_after(send_retry_after(failure, now_ms))
    }
}

/// The status an unsent message answers with.
fn send_status(failure: &SendFailure) -> StatusCode {
    match failure {
        SendFailure::NoCredential
        | SendFailure::GrantsRevoked { .. }
        | SendFailure::CredentialNotReady => StatusCode::CONFLICT,
        SendFailure::QuotaExhausted { .. }
        | SendFailure::RateLimited
        | SendFailure::UserSendLimit { .. }
        | SendFailure::QuietHours { .. } => StatusCode::TOO_MANY_REQUESTS,
        SendFailure::Cancelled => StatusCode::CONFLICT,
        SendFailure::RequestInvalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        SendFailure::UpstreamBusy
        | SendFailure::UpstreamUnreachable
        | SendFailure::TokenUnavailable { .. }
        | SendFailure::CircuitOpen { .. }
        | SendFailure::AttemptLimit => StatusCode::SERVICE_UNAVAILABLE,
        SendFailure::ApiRetired { .. }
        | SendFailure::TokenRejected { .. }
        | SendFailure::OutcomeUnknown
        | SendFailure::Unexpected { .. } => StatusCode::BAD_GATEWAY,
        SendFailure::OutcomePending => StatusCode::ACCEPTED,
    }
}

/// Seconds a caller should wait before sending again, where waiting helps.
fn send_retry_after(failure: &SendFailure, now_ms: i64) -> Option<i64> {
    match failure {
        SendFailure::QuotaExhausted { until_ms }
        | SendFailure::UserSendLimit {
            retry_at_ms: until_ms,
        }
        | SendFailure::QuietHours {
            opens_at_ms: until_ms,
        } => Some(((until_ms - now_ms + 999) / 1000).max(1)),
        SendFailure::RateLimited => Some(60),
        SendFailure::CredentialNotReady => Some(10),
        SendFailure::CircuitOpen { retry_after_ms } => Some((retry_after_ms / 1000).max(1)),
        SendFailure::UpstreamBusy
        | SendFailure::UpstreamUnreachable
        | SendFailure::AttemptLimit => Some(1),
        _ => None,
    }
}

/// A catalogue operation that failed: WeChat's refusals with their errcode
/// and a sentence, WeChat out of reach, no token, or the ledger.
impl From<CatalogueError> for ApiError {
    fn from(error: CatalogueError) -> Self {
        use StatusCode as S;
        let (status, code) = match &error {
            CatalogueError::WeChat {
                api,
                errcode,
                errmsg,
            } => {
                let (status, code, sentence) = wechat_failure(*errcode);
                let message = format!("{sentence} (WeChat answered {errcode} to {api}: {errmsg})");
                return ApiError::new(status, code, message).with_wechat_errcode(Some(*errcode));
            }
            CatalogueError::Call {
                error: CallError::NotSent(_),
                ..
            } => (S::SERVICE_UNAVAILABLE, "wechat_unreachable"),
            CatalogueError::Call { .. } => (S::BAD_GATEWAY, "wechat_answer_lost"),
            CatalogueError::Shape { .. } => (S::BAD_GATEWAY, "wechat_unexpected_answer"),
            CatalogueError::NotListed { .. } => (S::BAD_GATEWAY, "template_not_listed"),
            CatalogueError::UnknownTemplate { .. } => (S::NOT_FOUND, "unknown_template"),
            CatalogueError::Token(TokenError::Refused { errcode, .. }) => {
                return ApiError::new(S::BAD_GATEWAY, "token_refused", error.to_string())
                    .with_wechat_errcode(Some(*errcode));
            }
            CatalogueError::Token(TokenError::Storage(_)) => {
                (S::INTERNAL_SERVER_ERROR, "token_unavailable")
            }
            CatalogueError::Token(_) => (S::SERVICE_UNAVAILABLE, "token_unavailable"),
            CatalogueError::Storage(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, error.to_string()).caused_by(error)
    }
}

/// What a WeChat errcode of the template APIs means for the caller: the
/// status, the code, and a sentence.
#[rustfmt::skip]
const WECHAT_FAILURES: &[(i64, StatusCode, &str, &str)] = {
    use StatusCode as S;
    &[
        (40037, S::NOT_FOUND, "unknown_template", "WeChat knows no template or library title with this id"),
        (200014, S::UNPROCESSABLE_ENTITY, "invalid_tid", "WeChat's public subscribe library has no title with this tid"),
        (200020, S::UNPROCESSABLE_ENTITY, "invalid_keyword_ids", "keyword_ids must be 2 to 5 different keywords of this title"),
        (200021, S::UNPROCESSABLE_ENTITY, "invalid_scene_desc", "scene_desc must be at most 15 characters"),
        (45075, S::UNPROCESSABLE_ENTITY, "invalid_keyword_ids", "a keyword id is not one of this library title's, or is repeated"),
        (45100, S::UNPROCESSABLE_ENTITY, "invalid_keyword_ids", "keyword_ids must hold 1 to 10 keyword ids"),
        (45076, S::UNPROCESSABLE_ENTITY, "invalid_paging", "count must be 1 to 20"),
        (200016, S::UNPROCESSABLE_ENTITY, "invalid_paging", "start must be 0 or more and limit 1 to 30"),
        (200017, S::UNPROCESSABLE_ENTITY, "invalid_paging", "start must be 0 or more and limit 1 to 30"),
        (200018, S::UNPROCESSABLE_ENTITY, "invalid_category_ids", "category_ids must list the account's category ids"),
        (200019, S::UNPROCESSABLE_ENTITY, "invalid_category_ids", "category_ids must list the account's category ids"),
        (200012, S::CONFLICT, "template_limit_reached", "the app already holds 25 subscribe templates, WeChat's limit: delete one first"),
        (45026, S::CONFLICT, "template_limit_reached", "the app already holds as many classic templates as WeChat allows: delete one first"),
        (200011, S::BAD_GATEWAY, "wechat_refused", "WeChat has banned this account from adding templates"),
        (200013, S::BAD_GATEWAY, "wechat_refused", "WeChat has banned this template"),
        (43106, S::BAD_GATEWAY, "wechat_refused", "WeChat refuses this account the template APIs, as a punishment"),
        (48004, S::BAD_GATEWAY, "wechat_refused", "WeChat refuses this account the template APIs, as a punishment"),
        (48001, S::BAD_GATEWAY, "wechat_refused", "this app is not authorised for this WeChat API"),
        (45009, S::TOO_MANY_REQUESTS, "wechat_rate_limited", "the app has spent its daily quota of this WeChat API"),
        (45011, S::TOO_MANY_REQUESTS, "wechat_rate_limited", "WeChat's per-minute limit of this API was reached: try again in a minute"),
        (45103, S::BAD_GATEWAY, "api_retired", "WeChat retired this API"),
        (45109, S::BAD_GATEWAY, "api_retired", "WeChat retired this API"),
        (-1, S::SERVICE_UNAVAILABLE, "wechat_busy", "WeChat is busy: try again later"),
    ]
};

/// The status, code and sentence of a WeChat errcode of the template APIs.
fn wechat_failure(errcode: i64) -> (StatusCode, &'static str, &'static str) {
    if let Some((_, status, code, sentence)) = WECHAT_FAILURES
        .iter()
        .find(|(listed, ..)| *listed == errcode)
    {
        return (*status, code, sentence);
    }
    if classify(errcode) == Verdict::TokenRejected {
        return (
            StatusCode::BAD_GATEWAY,
            "token_rejected",
            "WeChat rejected a freshly refreshed access_token",
        );
    }
    (
        StatusCode::BAD_GATEWAY,
        "wechat_error",
        "WeChat refused the call",
    )
}

impl From<crate::sessions::LoginError> for ApiError {
    fn from(error: crate::sessions::LoginError) -> Self {
        use crate::sessions::LoginError;
        match error {
            LoginError::InvalidCode { errcode } => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_code",
                "the login code is invalid, expired or used: call wx.login again",
            )
            .with_wechat_errcode(errcode),
            // WeChat's limit is per user and minute (docs/wechat/login.md).
            LoginError::RateLimited { errcode } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "login_rate_limited",
                "WeChat's per-minute login limit for this user was reached",
            )
            .with_wechat_errcode(Some(errcode))
            .with_retry_after(Some(60)),
            LoginError::UserBlocked { errcode } => ApiError::new(
                StatusCode::FORBIDDEN,
                "user_blocked",
                "WeChat blocks this user's login (a high-risk account)",
            )
            .with_wechat_errcode(Some(errcode)),
            LoginError::AppConfiguration { errcode } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "app_configuration",
                "WeChat refused the app's configuration (appid, secret or IP whitelist)",
            )
            .with_wechat_errcode(Some(errcode)),
            LoginError::Unavailable { errcode } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "wechat_unavailable",
                "WeChat could not answer the login; the same code may be posted again",
            )
            .with_wechat_errcode(errcode)
            .with_retry_after(Some(1)),
            LoginError::Storage(error) => ApiError::internal(error),
        }
    }
}

impl From<crate::sessions::SessionError> for ApiError {
    fn from(error: crate::sessions::SessionError) -> Self {
        match error {
            crate::sessions::SessionError::Storage(error) => ApiError::internal(error),
            _ => ApiError::invalid_session(),
        }
    }
}
