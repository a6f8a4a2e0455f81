//! Which app a caller's access_token speaks for.
//!
//! A caller of the endpoint holds a token the endpoint handed out (or the
//! app's current one, read from the ledger). That token is how the endpoint
//! knows the app, and that the caller may speak for it: the call itself
//! always goes out with the gateway's current token. A token the gateway
//! handed out keeps speaking for its app until the lifetime it was handed
//! out with runs out, even after the gateway replaced it, so that a caller
//! is never answered 40001 for a token the gateway gave it; past that
//! lifetime it is answered 42001, and a token never handed out 40001, as
//! WeChat would (docs/wechat/tokens.md, "A token that stops working").
//!
//! The book is per process: a token handed out by another instance and
//! replaced before this one ever saw it answers 40001 here, and the caller's
//! SDK takes the current one through `/cgi-bin/token`.

use std::collections::HashMap;
use std::sync::Mutex;

use subtle::ConstantTimeEq;

use formid_core::proxy::CallerToken;

use crate::tokens::{CurrentToken, TokenKeeper};

/// Tokens remembered per app: the newest ones seen, current or replaced.
const TOKENS_PER_APP: usize = 16;

/// How long a token past its lifetime is remembered (to answer 42001 rather
/// than 40001).
const REMEMBER_EXPIRED_MS: i64 = 3_600_000;

/// The tokens this process handed out or saw current, per app.
#[derive(Debug, Default)]
pub struct TokenBook {
    tokens: Mutex<HashMap<String, Vec<CurrentToken>>>,
}

/// Equal in time that depends on the length only: a token's bytes are
/// never learnt from how fast a wrong one is refused.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl TokenBook {
    /// Remembers `token` as one the app's callers may hold.
    pub fn observe(&self, appid: &str, token: &CurrentToken, now_ms: i64) {
        let mut tokens = self.tokens.lock().expect("token book");
        let known = tokens.entry(appid.to_owned()).or_default();
        known.retain(|seen| seen.expires_at_ms + REMEMBER_EXPIRED_MS > now_ms);
        if let Some(seen) = known.iter_mut().find(|seen| seen.token == token.token) {
            seen.expires_at_ms = seen.expires_at_ms.max(token.expires_at_ms);
            return;
        }
        known.push(token.clone());
        if known.len() > TOKENS_PER_APP {
            known.remove(0);
        }
    }

    /// What the book knows of `caller`: admitted for an app, expired, or
    /// unknown.
    fn lookup(&self, caller: &str, now_ms: i64) -> (CallerToken, Option<String>) {
        let tokens = self.tokens.lock().expect("token book");
        for (appid, known) in tokens.iter() {
            for seen in known {
                if same_secret(&seen.token, caller) {
                    return if seen.expires_at_ms > now_ms {
                        (CallerToken::Admitted, Some(appid.clone()))
                    } else {
                        (CallerToken::Expired, Some(appid.clone()))
                    };
                }
            }
        }
        (CallerToken::Unknown, None)
    }

    /// Which app `caller` speaks for: the book first, then each app's
    /// stored token (another instance may have fetched it). Never fetches a
    /// token.
    pub async fn identify<'a>(
        &self,
        tokens: &TokenKeeper,
        appids: impl Iterator<Item = &'a String>,
        caller: &str,
        now_ms: i64,
    ) -> (CallerToken, Option<String>) {
        let found = self.lookup(caller, now_ms);
        if found.0 != CallerToken::Unknown {
            return found;
        }
        for appid in appids {
            match tokens.stored(appid).await {
                Ok(Some(current)) if same_secret(&current.token, caller) => {
                    self.observe(appid, &current, now_ms);
                    return (CallerToken::Admitted, Some(appid.clone()));
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(appid = %appid, %error, "reading the stored token failed")
                }
            }
        }
        (CallerToken::Unknown, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(value: &str, expires_at_ms: i64) -> CurrentToken {
        CurrentToken {
            token: value.into(),
            expires_at_ms,
        }
    }

    #[test]
    fn a_handed_out_token_speaks_for_its_app_until_its_lifetime_ends() {
        let book = TokenBook::default();
        book.observe("wxa", &token("T1", 10_000), 0);
        book.observe("wxa", &token("T2", 20_000), 5_000);
        book.observe("wxb", &token("B1", 20_000), 5_000);
        assert_eq!(
            book.lookup("T1", 9_999),
            (CallerToken::Admitted, Some("wxa".into()))
        );
        assert_eq!(
            book.lookup("T1", 10_000),
            (CallerToken::Expired, Some("wxa".into()))
        );
        assert_eq!(
            book.lookup("B1", 9_000),
            (CallerToken::Admitted, Some("wxb".into()))
        );
        assert_eq!(book.lookup("T3", 9_000), (CallerToken::Unknown, None));
        assert_eq!(book.lookup("", 9_000), (CallerToken::Unknown, None));
    }

    #[test]
    fn the_book_stays_bounded() {
        let book = TokenBook::default();
        for n in 0..100 {
            book.observe("wxa", &token(&format!("T{n}"), 1_000_000), n);
        }
        assert_eq!(book.tokens.lock().unwrap()["wxa"].len(), TOKENS_PER_APP);
        assert_eq!(book.lookup("T0", 0).0, CallerToken::Unknown);
        assert_eq!(book.lookup("T99", 0).0, CallerToken::Admitted);
        // Long expired tokens are forgotten.
        book.observe(
            "wxa",
            &token("new", 10_000_000),
            1_000_000 + REMEMBER_EXPIRED_MS,
        );
        assert_eq!(book.tokens.lock().unwrap()["wxa"].len(), 1);
    }
}
