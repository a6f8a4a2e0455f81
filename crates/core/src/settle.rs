//! What WeChat's errcode on a template send means for the credential, the
//! message and the app (docs/wechat/tokens.md, "A token that stops working";
//! docs/wechat/template-messages.md, "The send"; docs/wechat/errcodes.md).

/// The consequence of one errcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 0: delivered; the credential loses one send.
    Sent,
    /// The credential is dead: retire it and try the next one.
    CredentialDead,
    /// The request itself is wrong: the credential goes back untouched.
    RequestInvalid,
    /// The access_token was refused: refresh it (if still current) and retry once.
    TokenRejected,
    /// 45009: the app's daily quota is spent until midnight China time.
    DailyQuotaExhausted,
    /// 45011: the per-minute limit; retry next minute.
    RateLimited,
    /// 45103 / 45109: WeChat has retired the API.
    ApiRetired,
    /// -1: system busy, nothing was sent; retry with backoff.
    SystemBusy,
    /// 43101 on a subscribe send: WeChat holds no grant of the template for
    /// the user (used up, or turned off).
    GrantRevoked,
    /// A code this gateway has no rule for: the credential goes back.
    Unexpected,
}

/// Whether WeChat rejected the call's access_token: 40001 (not the latest),
/// 40014 (not a token) or 42001 (expired), on any API (docs/wechat/tokens.md).
pub fn is_token_errcode(errcode: i64) -> bool {
    matches!(errcode, 40001 | 40014 | 42001)
}

/// Classifies a template-send errcode.
pub fn classify(errcode: i64) -> Verdict {
    match errcode {
        0 => Verdict::Sent,
        // 41028 wrong/expired, 41029 used up, 41031/41032/41034/41035 blocked or punished.
        41028 | 41029 | 41031 | 41032 | 41034 | 41035 => Verdict::CredentialDead,
        // Wrong template, page, JSON, template data or openid.
        40037 | 41030 | 47001 | 47003 | 40003 => Verdict::RequestInvalid,
        code if is_token_errcode(code) => Verdict::TokenRejected,
        45009 => Verdict::DailyQuotaExhausted,
        45011 => Verdict::RateLimited,
        45103 | 45109 => Verdict::ApiRetired,
        -1 => Verdict::SystemBusy,
        _ => Verdict::Unexpected,
    }
}

/// Classifies a subscribe-send errcode (docs/wechat/subscribe-messages.md,
/// "The send's errcodes"): the token, quota, busy and retirement codes mean
/// what they mean for a template send; 43101 speaks of the user's grants;
/// 45168 (a keyword on WeChat's blacklist) is the content's fault, not the
/// grant's.
pub fn classify_subscribe(errcode: i64) -> Verdict {
    match errcode {
        43101 => Verdict::GrantRevoked,
        40037 | 41030 | 47001 | 47003 | 40003 | 45168 => Verdict::RequestInvalid,
        // Form_id codes have no meaning here.
        41028 | 41029 | 41031 | 41032 | 41034 | 41035 => Verdict::Unexpected,
        errcode => classify(errcode),
    }
}

/// The API error code for a request WeChat refused as wrong.
pub fn request_error_code(errcode: i64) -> &'static str {
    match errcode {
        40037 => "invalid_template_id",
        41030 => "invalid_page",
        47001 | 47003 => "invalid_data",
        40003 => "invalid_openid",
        45168 => "content_blacklisted",
        _ => "request_rejected",
    }
}

/// The first instant of the next day in China (UTC+8), when WeChat resets
/// daily quotas, as Unix milliseconds.
pub fn next_china_midnight_ms(now_ms: i64) -> i64 {
    const DAY_MS: i64 = 86_400_000;
    const CHINA_OFFSET_MS: i64 = 8 * 3_600_000;
    let local = now_ms + CHINA_OFFSET_MS;
    (local.div_euclid(DAY_MS) + 1) * DAY_MS - CHINA_OFFSET_MS
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    #[test]
    fn every_documented_code_has_its_rule() {
        assert_eq!(classify(0), Verdict::Sent);
        for code in [41028, 41029, 41031, 41032, 41034, 41035] {
            assert_eq!(classify(code), Verdict::CredentialDead, "{code}");
        }
        for code in [40037, 41030, 47001, 47003, 40003] {
            assert_eq!(classify(code), Verdict::RequestInvalid, "{code}");
        }
        for code in [40001, 40014, 42001] {
            assert_eq!(classify(code), Verdict::TokenRejected, "{code}");
        }
        assert_eq!(classify(45009), Verdict::DailyQuotaExhausted);
        assert_eq!(classify(45103), Verdict::ApiRetired);
        assert_eq!(classify(45109), Verdict::ApiRetired);
        assert_eq!(classify(-1), Verdict::SystemBusy);
        assert_eq!(classify(12345), Verdict::Unexpected);
    }

    #[test]
    fn quota_resets_at_midnight_in_china() {
        // 2026-11-23 15:59 UTC is 23:59 in Beijing: the reset is one minute away.
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 15, 59, 0).unwrap();
        let reset = Utc.with_ymd_and_hms(2026, 11, 23, 16, 0, 0).unwrap();
        assert_eq!(
            next_china_midnight_ms(now.timestamp_millis()),
            reset.timestamp_millis()
        );
        // 16:00 UTC exactly is already the new day: the next reset is a day later.
        assert_eq!(
            next_china_midnight_ms(reset.timestamp_millis()),
            reset.timestamp_millis() + 86_400_000
        );
    }
}
