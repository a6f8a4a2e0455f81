//! Why a message was not sent, and how each reason reads on the wire.

use super::settle::request_error_code;

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// The user holds no valid credential.
    NoCredential,
    /// A subscribe send answered 43101: WeChat holds no grant of the
    /// template for the user (used up, or turned off), so the ledger's were
    /// retired and none is left.
    GrantsRevoked { errcode: i64 },
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
    /// A per-user send cap is full: one more send fits at `retry_at_ms`.
    UserSendLimit { retry_at_ms: i64 },
    /// Inside the app's quiet hours, which refuse sends: they open at
    /// `opens_at_ms`.
    QuietHours { opens_at_ms: i64 },
    /// A scheduled message cancelled before its time.
    Cancelled,
}

impl SendFailure {
    /// The machine-readable code of the failure.
    pub fn code(&self) -> &'static str {
        match self {
            SendFailure::NoCredential | SendFailure::GrantsRevoked { .. } => "no_credential",
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
            SendFailure::UserSendLimit { .. } => "user_send_limit",
            SendFailure::QuietHours { .. } => "quiet_hours",
            SendFailure::Cancelled => "cancelled",
        }
    }

    /// The failure a stored message names (its `error_code` and
    /// `wechat_errcode`), for answering from the ledger after the process
    /// that sent it died. Details the row does not keep are taken from
    /// `updated_at` (the quota's reset) or set to the shortest sensible wait.
    pub fn from_stored(code: &str, wechat_errcode: Option<i64>, updated_at: i64) -> Option<Self> {
        let errcode = wechat_errcode.unwrap_or_default();
        Some(match code {
            "no_credential" => match wechat_errcode {
                Some(errcode) => SendFailure::GrantsRevoked { errcode },
                None => SendFailure::NoCredential,
            },
            "credential_not_ready" => SendFailure::CredentialNotReady,
            "daily_quota_exhausted" => SendFailure::QuotaExhausted {
                until_ms: super::settle::next_china_midnight_ms(updated_at),
            },
            "rate_limited" => SendFailure::RateLimited,
            "invalid_template_id"
            | "invalid_page"
            | "invalid_data"
            | "invalid_openid"
            | "content_blacklisted"
            | "request_rejected" => SendFailure::RequestInvalid { errcode },
            "api_retired" => SendFailure::ApiRetired { errcode },
            "token_unavailable" => SendFailure::TokenUnavailable {
                errcode: wechat_errcode,
            },
            "token_rejected" => SendFailure::TokenRejected { errcode },
            "upstream_busy" => SendFailure::UpstreamBusy,
            "upstream_unreachable" => SendFailure::UpstreamUnreachable,
            "outcome_unknown" => SendFailure::OutcomeUnknown,
            "upstream_error" => SendFailure::Unexpected { errcode },
            "attempt_limit_reached" => SendFailure::AttemptLimit,
            "upstream_circuit_open" => SendFailure::CircuitOpen {
                retry_after_ms: 1_000,
            },
            "outcome_pending" => SendFailure::OutcomePending,
            "user_send_limit" => SendFailure::UserSendLimit {
                retry_at_ms: updated_at,
            },
            "quiet_hours" => SendFailure::QuietHours {
                opens_at_ms: updated_at,
            },
            "cancelled" => SendFailure::Cancelled,
            _ => return None,
        })
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
            | SendFailure::GrantsRevoked { errcode }
            | SendFailure::Unexpected { errcode } => Some(*errcode),
            SendFailure::TokenUnavailable { errcode } => *errcode,
            _ => None,
        }
    }

    /// For people.
    pub fn message(&self) -> String {
        match self {
            SendFailure::NoCredential => "the user holds no valid credential; nothing was sent".into(),
            SendFailure::GrantsRevoked { errcode } => format!(
                "WeChat holds no grant of this template for the user (errcode {errcode}): \
                 they were used up or the user turned the template off; the ledger's were retired, \
                 nothing was sent"
            ),
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
            SendFailure::UserSendLimit { .. } => {
                "the user's send cap is full; nothing was claimed or sent".into()
            }
            SendFailure::QuietHours { .. } => {
                "the app's quiet hours hold sends; nothing was claimed or sent".into()
            }
            SendFailure::Cancelled => "the scheduled message was cancelled; nothing was sent".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every failure survives the trip through a message row, so that an
    /// answer rebuilt from the ledger is the answer the caller would have had.
    #[test]
    fn every_failure_is_read_back_from_its_stored_code() {
        let updated_at = 1_800_000_000_000;
        let failures = [
            SendFailure::NoCredential,
            SendFailure::GrantsRevoked { errcode: 43101 },
            SendFailure::CredentialNotReady,
            SendFailure::QuotaExhausted {
                until_ms: super::super::settle::next_china_midnight_ms(updated_at),
            },
            SendFailure::RateLimited,
            SendFailure::RequestInvalid { errcode: 40037 },
            SendFailure::RequestInvalid { errcode: 41030 },
            SendFailure::RequestInvalid { errcode: 47003 },
            SendFailure::RequestInvalid { errcode: 40003 },
            SendFailure::RequestInvalid { errcode: 45168 },
            SendFailure::RequestInvalid { errcode: 44444 },
            SendFailure::ApiRetired { errcode: 45103 },
            SendFailure::TokenUnavailable { errcode: None },
            SendFailure::TokenUnavailable {
                errcode: Some(40013),
            },
            SendFailure::TokenRejected { errcode: 40001 },
            SendFailure::UpstreamBusy,
            SendFailure::UpstreamUnreachable,
            SendFailure::OutcomeUnknown,
            SendFailure::Unexpected { errcode: 12345 },
            SendFailure::AttemptLimit,
            SendFailure::CircuitOpen {
                retry_after_ms: 1_000,
            },
            SendFailure::OutcomePending,
            SendFailure::UserSendLimit {
                retry_at_ms: updated_at,
            },
            SendFailure::QuietHours {
                opens_at_ms: updated_at,
            },
            SendFailure::Cancelled,
        ];
        for failure in failures {
            let read =
                SendFailure::from_stored(failure.code(), failure.wechat_errcode(), updated_at);
            assert_eq!(read.as_ref(), Some(&failure), "{}", failure.code());
        }
        assert_eq!(SendFailure::from_stored("nonsense", None, updated_at), None);
    }
}
