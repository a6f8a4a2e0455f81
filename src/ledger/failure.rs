//! Why a message was not sent, and how each reason reads on the wire.

use super::settle::request_error_code;

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// The user holds no valid credential.
    NoCredential,
    /// The only credentials left are prepay_ids whose payment data has not reached WeChat's template backend yet.
    CredentialNotReady,
    /// 45009, now or earlier today: sends resume at `until_ms`.
    QuotaExhausted { until_ms: i64 },
    /// 45011: the per-minute limit.
    RateLimited,
    /// WeChat refused the request itself.
    RequestInvalid { errcode: i64 },
    /// 45103 / 45109.
    ApiRetired { errcode: i64 },
    /// No token could be had.
    TokenUnavailable { errcode: Option<i64> },
    /// A fresh token was refused too.
    TokenRejected { errcode: i64 },
    /// errcode -1 after every retry.
    UpstreamBusy,
    /// WeChat could not be reached; nothing was sent.
    UpstreamUnreachable,
    /// The call may or may not have delivered: the credential counts as spent.
    OutcomeUnknown,
    /// An errcode without a rule.
    Unexpected { errcode: i64 },
    /// Too many dead credentials in a row.
    AttemptLimit,
    /// WeChat failed repeatedly: calls are held back for a while.
    CircuitOpen { retry_after_ms: i64 },
    /// WeChat was called but its outcome is not settled in the ledger yet
    /// (the database failed, or another process took the message over):
    /// poll the message.
    OutcomePending,
}

impl SendFailure {
    /// The machine-readable code of the failure.
    pub fn code(&self) -> &'static str {
        match self {
            SendFailure::NoCredential => "no_credential",
            SendFailure::CredentialNotReady => "credential_not_ready",
            SendFailure::QuotaExhausted { .. } => "daily_quota_exhausted",
            SendFailure::RateLimited => "rate_limited",
            SendFailure::RequestInvalid { errcode } => request_error_code(*errcode),
            SendFailure::ApiRetired { .. } => "api_retired",
            SendFailure::TokenUnavailable { .. } => "token_unavailable",
            SendFailure::TokenRejected { .. } => "token_rejected",
            SendFailure::UpstreamBusy => "upstream_busy",
            SendFailure::UpstreamUnreachable => "upstream_unreachable",
            SendFailure::OutcomeUnknown => "outcome_unknown",
            SendFailure::Unexpected { .. } => "upstream_error",
            SendFailure::AttemptLimit => "attempt_limit_reached",
            SendFailure::CircuitOpen { .. } => "upstream_circuit_open",
            SendFailure::OutcomePending => "outcome_pending",
        }
    }

    /// WeChat's errcode behind the failure, when there is one.
    pub fn wechat_errcode(&self) -> Option<i64> {
        match self {
            SendFailure::QuotaExhausted { .. } => Some(45009),
            SendFailure::RateLimited => Some(45011),
            SendFailure::UpstreamBusy => Some(-1),
            SendFailure::RequestInvalid { errcode }
            | SendFailure::ApiRetired { errcode }
            | SendFailure::TokenRejected { errcode }
            | SendFailure::Unexpected { errcode } => Some(*errcode),
            SendFailure::TokenUnavailable { errcode } => *errcode,
            _ => None,
        }
    }

    /// For people.
    pub fn message(&self) -> String {
        match self {
            SendFailure::NoCredential => "the user holds no valid credential; nothing was sent".into(),
            SendFailure::CredentialNotReady => {
                "the user's only credentials are prepay_ids WeChat has not synced yet; retry in a few seconds".into()
            }
            SendFailure::QuotaExhausted { .. } => {
                "the app's daily template-message quota is spent until midnight China time".into()
            }
            SendFailure::RateLimited => "WeChat's per-minute limit was reached; retry next minute".into(),
            SendFailure::RequestInvalid { errcode } => {
                format!("WeChat rejected the request (errcode {errcode}); the credential was kept")
            }
            SendFailure::ApiRetired { .. } => {
                "WeChat has retired the template-message API (shut down 2020-01-10; use subscribe messages)".into()
            }
            SendFailure::TokenUnavailable { .. } => "no access_token could be obtained from WeChat".into(),
            SendFailure::TokenRejected { .. } => "WeChat rejected a freshly refreshed access_token".into(),
            SendFailure::UpstreamBusy => "WeChat stayed busy (errcode -1); nothing was sent".into(),
            SendFailure::UpstreamUnreachable => "WeChat could not be reached; nothing was sent".into(),
            SendFailure::OutcomeUnknown => {
                "WeChat's answer was lost; the message may have been delivered and the credential counts as spent".into()
            }
            SendFailure::Unexpected { errcode } => format!("WeChat answered errcode {errcode}"),
            SendFailure::AttemptLimit => {
                "too many of the user's credentials were dead; the rest are kept for a later send".into()
            }
            SendFailure::CircuitOpen { .. } => {
                "WeChat failed repeatedly; calls are paused for a moment, nothing was sent".into()
            }
            SendFailure::OutcomePending => {
                "WeChat was called but the outcome is not settled yet; poll the message, never resend it without its Idempotency-Key".into()
            }
        }
    }
}
