//! The rules of the WeChat-compatible endpoint's wire, pure: which paths may
//! be forwarded, how a caller's query string is read and rewritten, what of
//! it may be logged, and which of WeChat's answers end a forward.
//!
//! The endpoint forwards to one configured base URL only. A path is
//! forwarded only when it is plain segments of letters, digits, `_`, `-` and
//! `.` (no `.` or `..` segment, no empty segment, no percent-escape, no
//! backslash): WeChat's API paths are all of that form, and anything else
//! could name another resource once decoded or normalised by someone else.

/// The longest path forwarded: WeChat's longest API path is far shorter.
pub const MAX_PATH_LEN: usize = 256;

/// The longest query string forwarded (WeChat's queries carry a token, an
/// id or two and a type).
pub const MAX_QUERY_LEN: usize = 4_096;

/// Query parameters whose values are never logged.
const SECRET_PARAMETERS: [&str; 4] = ["access_token", "secret", "js_code", "appsecret"];

/// Why a path is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// Not a plain absolute path of allowed segments.
    Malformed,
    /// Longer than [`MAX_PATH_LEN`].
    TooLong,
}

/// Checks a request's raw (undecoded) path for forwarding; `Ok` is the path
/// to append to the base URL, exactly as given.
pub fn forwardable_path(raw: &str) -> Result<&str, PathRefusal> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathRefusal::TooLong);
    }
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathRefusal::Malformed);
    };
    let plain_segment = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'))
    };
    if rest.split('/').all(plain_segment) {
        Ok(raw)
    } else {
        Err(PathRefusal::Malformed)
    }
}

/// Whether a path names a token endpoint in any letter case: answered by
/// the endpoint itself, never forwarded (a fetch at WeChat would invalidate
/// the central token).
pub fn is_token_path(path: &str) -> bool {
    path.eq_ignore_ascii_case("/cgi-bin/token")
        || path.eq_ignore_ascii_case("/cgi-bin/stable_token")
}

/// A caller's query string, its pairs kept as they came (undecoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerQuery<'a> {
    raw: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

/// Why a query string is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryRefusal {
    /// Longer than [`MAX_QUERY_LEN`].
    TooLong,
    /// `access_token` given more than once: which one speaks for the call is
    /// ambiguous, so none does.
    TokenTwice,
}

impl<'a> CallerQuery<'a> {
    /// Splits a raw query string into its `name=value` pairs.
    pub fn parse(raw: &'a str) -> Result<Self, QueryRefusal> {
        if raw.len() > MAX_QUERY_LEN {
            return Err(QueryRefusal::TooLong);
        }
        let pairs: Vec<(&str, &str)> = raw
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .collect();
        let tokens = pairs
            .iter()
            .filter(|(name, _)| *name == "access_token")
            .count();
        if tokens > 1 {
            return Err(QueryRefusal::TokenTwice);
        }
        Ok(Self { raw, pairs })
    }

    /// The query exactly as it came.
    pub fn as_given(&self) -> &'a str {
        self.raw
    }

    /// The raw (still percent-encoded) value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
    }

    /// The query with `access_token` set to `token` (already safe for a
    /// query: WeChat's tokens are letters, digits, `_` and `-`) and every
    /// other pair as it came.
    pub fn with_token(&self, token: &str) -> String {
        let mut out = String::with_capacity(self.pairs.len() * 16 + token.len());
        let mut replaced = false;
        for (name, value) in &self.pairs {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(name);
            out.push('=');
            if *name == "access_token" {
                replaced = true;
                out.push_str(token);
            } else {
                out.push_str(value);
            }
        }
        if !replaced {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str("access_token=");
            out.push_str(token);
        }
        out
    }

    /// The query as it came, but with `access_token`, `secret`, `js_code`
    /// and `appsecret` values replaced by `***`: what a log line may show.
    pub fn redacted(&self) -> String {
        redact_pairs(&self.pairs)
    }
}

/// A raw query string with secret values replaced by `***`, for a log line;
/// works on any query, including one [`CallerQuery::parse`] refuses.
pub fn redact_query(raw: &str) -> String {
    let pairs: Vec<(&str, &str)> = raw
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    redact_pairs(&pairs)
}

fn redact_pairs(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| {
            let secret = SECRET_PARAMETERS
                .iter()
                .any(|secret| name.eq_ignore_ascii_case(secret));
            if secret {
                format!("{name}=***")
            } else {
                format!("{name}={value}")
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether a token a caller holds may speak for an app: the app's current
/// token, or one the gateway handed out that has not yet run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerToken {
    /// Current, or handed out and still inside its lifetime.
    Admitted,
    /// Handed out once, past its lifetime: WeChat answers 42001.
    Expired,
    /// Never handed out (another app's, made up, forgotten): WeChat answers
    /// 40001.
    Unknown,
}

/// How a forwarded call's answer ends it: WeChat's token errcodes (40001,
/// 40014, 42001) mean the call was not processed, so one retry with a new
/// token is safe; no other errcode is retried (docs/wechat/tokens.md, "A
/// token that stops working").
pub fn retry_with_new_token(errcode: Option<i64>) -> bool {
    matches!(errcode, Some(40001 | 40014 | 42001))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_are_forwarded() {
        for good in [
            "/cgi-bin/message/subscribe/send",
            "/wxaapi/newtmpl/gettemplate",
            "/sns/jscode2session",
            "/cgi-bin/media/upload",
            "/wxa/getwxacodeunlimit",
        ] {
            assert_eq!(forwardable_path(good), Ok(good), "{good}");
        }
        for bad in [
            "",
            "cgi-bin/token",
            "/",
            "/cgi-bin//token",
            "/cgi-bin/../admin",
            "/..",
            "/./cgi-bin",
            "/cgi-bin/%2e%2e/admin",
            "/cgi-bin%2Fmedia",
            "/cgi-bin/media\\upload",
            "/cgi-bin/media/",
            "/@evil.example.com/x",
            "/cgi-bin/a:b",
            "/cgi-bin/tab\t",
        ] {
            assert_eq!(
                forwardable_path(bad),
                Err(PathRefusal::Malformed),
                "{bad:?}"
            );
        }
        assert!(is_token_path("/CGI-BIN/Token") && is_token_path("/cgi-bin/stable_TOKEN"));
        assert!(!is_token_path("/cgi-bin/tokens"));
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(forwardable_path(&long), Err(PathRefusal::TooLong));
    }

    #[test]
    fn the_token_is_replaced_and_everything_else_kept() {
        let query = CallerQuery::parse("type=image&access_token=CALLER&x=%20y").unwrap();
        assert_eq!(query.get("access_token"), Some("CALLER"));
        assert_eq!(query.with_token("GW"), "type=image&access_token=GW&x=%20y");
        let none = CallerQuery::parse("").unwrap();
        assert_eq!(none.with_token("GW"), "access_token=GW");
        assert_eq!(
            CallerQuery::parse("access_token=a&access_token=b"),
            Err(QueryRefusal::TokenTwice)
        );
        let long = "a".repeat(MAX_QUERY_LEN + 1);
        assert_eq!(CallerQuery::parse(&long), Err(QueryRefusal::TooLong));
    }

    #[test]
    fn secrets_never_reach_a_log_line() {
        let raw = "appid=wx1&secret=S3CR3T&js_code=CODE&access_token=TOK&type=image&APPSECRET=x";
        let redacted = redact_query(raw);
        for secret in ["S3CR3T", "CODE", "TOK", "=x"] {
            assert!(!redacted.contains(secret), "{redacted}");
        }
        assert!(redacted.contains("appid=wx1") && redacted.contains("type=image"));
        assert_eq!(
            CallerQuery::parse(raw).unwrap().redacted(),
            redacted,
            "both ways redact alike"
        );
        // Even a query the endpoint refuses is redacted.
        assert_eq!(
            redact_query("access_token=a&access_token=b"),
            "access_token=***&access_token=***"
        );
    }

    #[test]
    fn only_token_errcodes_are_retried() {
        for retried in [40001, 40014, 42001] {
            assert!(retry_with_new_token(Some(retried)));
        }
        for kept in [0, -1, 43101, 45009, 45011, 47003, 40013, 40125] {
            assert!(!retry_with_new_token(Some(kept)), "{kept}");
        }
        assert!(!retry_with_new_token(None));
    }
}
