//! The access_token keeper: the one central server WeChat's docs ask for.
//!
//! The token lives in the `apps` row, so every instance on one ledger serves
//! the same token, and a fetch happens under a lease in that row: exactly one
//! instance asks WeChat at a time (each fetch from `/cgi-bin/token` invalidates
//! the previous token five minutes later, so concurrent fetches would make
//! instances invalidate each other's tokens).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::clock::{ms, SharedClock};
use crate::config::{AppSettings, TokenMode, TokenSettings};
use crate::read_gate::ReadGate;
use crate::storage::{AppState, Storage};
use crate::wechat::{CallError, SharedWeChat, TokenReply};

/// A token with its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentToken {
    pub token: String,
    pub expires_at_ms: i64,
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown app")]
    UnknownApp,
    #[error("WeChat refused to issue a token (errcode {errcode})")]
    Refused { errcode: i64, errmsg: String },
    #[error(transparent)]
    Unreachable(#[from] CallError),
    #[error("another instance is refreshing the token and did not finish in time")]
    LeaseTimeout,
    #[error("the app's token expired and the last fetch was too recent to fetch again")]
    FetchTooSoon,
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

/// In stable_token mode WeChat keeps answering the same token until five
/// minutes before its expiry (reference §2); asking earlier changes nothing.
const STABLE_ROTATION_MS: i64 = 240_000;

/// Keeps each app's token fresh; cheap to clone.
#[derive(Debug, Clone)]
pub struct TokenKeeper {
    storage: Arc<dyn Storage>,
    wechat: SharedWeChat,
    apps: Arc<BTreeMap<String, AppSettings>>,
    clock: SharedClock,
    holder: String,
    settings: TokenSettings,
    /// One fetch at a time per app inside this process; the database lease
    /// does the same across processes. Without it, every request of this
    /// instance would hold "its" lease at once.
    single_flight: Arc<BTreeMap<String, tokio::sync::Mutex<()>>>,
    /// The apps rows as last read, and when (clock ms). Every send reads its
    /// app's token and quota block; for `tokens.cache_ms` this process
    /// answers from memory. Safe because a replaced token keeps working for
    /// five minutes, a rejected one is refreshed from the database, and a
    /// 45009 seen here is written to the cache at once.
    cache: Arc<std::sync::Mutex<HashMap<String, (i64, AppState)>>>,
    /// One read of an app's row at a time when its cached copy runs out.
    reading: Arc<ReadGate>,
    /// Compare-and-refresh calls answered without a fetch (too soon).
    refused_refreshes: Arc<AtomicU64>,
}

/// The China day (UTC+8) of a Unix-ms instant, as days since the epoch:
/// WeChat's daily limits reset at midnight China time.
fn china_day(now_ms: i64) -> i64 {
    (now_ms + 8 * 3_600_000).div_euclid(86_400_000)
}

impl TokenKeeper {
    /// A keeper that names itself `holder` in leases.
    pub fn new(
        storage: Arc<dyn Storage>,
        wechat: SharedWeChat,
        apps: Arc<BTreeMap<String, AppSettings>>,
        clock: SharedClock,
        holder: String,
        settings: TokenSettings,
    ) -> Self {
        let single_flight = Arc::new(
            apps.keys()
                .map(|appid| (appid.clone(), tokio::sync::Mutex::new(())))
                .collect(),
        );
        Self {
            storage,
            wechat,
            apps,
            clock,
            holder,
            settings,
            single_flight,
            reading: Arc::default(),
            cache: Arc::default(),
            refused_refreshes: Arc::default(),
        }
    }

    /// The app's row, from memory when read less than `tokens.cache_ms` ago.
    pub async fn app_state(&self, appid: &str) -> anyhow::Result<AppState> {
        let cached = || self.cached_state(appid).ok_or(());
        self.reading
            .read(appid, cached, |()| self.read_state(appid))
            .await
    }

    /// The app's row from the cache, while it is fresh.
    fn cached_state(&self, appid: &str) -> Option<AppState> {
        let now = self.clock.now_ms();
        let cache = self.cache.lock().expect("app cache");
        let (read_at, state) = cache.get(appid)?;
        (now - read_at < ms(self.settings.cache) && now >= *read_at).then(|| state.clone())
    }

    /// The app's row from the database, remembered.
    async fn read_state(&self, appid: &str) -> anyhow::Result<AppState> {
        let state = self.storage.app_state(appid).await?;
        self.cache
            .lock()
            .expect("app cache")
            .insert(appid.to_owned(), (self.clock.now_ms(), state.clone()));
        Ok(state)
    }

    /// Records a 45009 block (already stored) in this process's cache.
    pub fn note_blocked(&self, appid: &str, until_ms: i64) {
        if let Some((_, state)) = self.cache.lock().expect("app cache").get_mut(appid) {
            state.send_blocked_until = Some(until_ms);
        }
    }

    /// The app's current token, fetching one when there is none usable.
    pub async fn current(&self, appid: &str) -> Result<CurrentToken, TokenError> {
        self.obtain(appid, None).await
    }

    /// Compare-and-refresh: fetches a new token only while `stale` is still
    /// the current one; otherwise answers the current token. Many callers
    /// failing with the same token cause one fetch, not many.
    pub async fn refresh(&self, appid: &str, stale: &str) -> Result<CurrentToken, TokenError> {
        self.obtain(appid, Some(stale)).await
    }

    /// Compare-and-refresh on behalf of an outside caller (the token
    /// endpoint). Like [`TokenKeeper::refresh`], and like every fetch held to
    /// `tokens.min_fetch_interval_secs` after the current token's fetch —
    /// reading the token and posting it back as stale must not make a fetch
    /// per call, since each fetch starts retiring the token the app's other
    /// servers hold — but a refusal here is also logged and counted.
    pub async fn refresh_on_request(
        &self,
        appid: &str,
        stale: &str,
    ) -> Result<CurrentToken, TokenError> {
        if !self.apps.contains_key(appid) {
            return Err(TokenError::UnknownApp);
        }
        let state = self.read_state(appid).await?;
        if let (Some(token), Some(fetched_at)) = (&state.access_token, state.token_fetched_at) {
            let since = self.clock.now_ms() - fetched_at;
            if token == stale && since < ms(self.settings.min_fetch_interval) {
                if let Some(current) = self.settled(&state, None) {
                    let refused = self.refused_refreshes.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(
                        appid,
                        since_fetch_ms = since,
                        refused_total = refused,
                        "compare-and-refresh refused: the token was fetched too recently"
                    );
                    return Ok(current);
                }
            }
        }
        self.obtain(appid, Some(stale)).await
    }

    /// Compare-and-refresh calls [`TokenKeeper::refresh_on_request`] refused
    /// since start, in this process.
    pub fn refused_refreshes(&self) -> u64 {
        self.refused_refreshes.load(Ordering::Relaxed)
    }

    /// One pass of the background task: refreshes every app whose token is
    /// missing or within the refresh-ahead window. Returns how many it refreshed.
    #[tracing::instrument(skip_all, fields(apps = self.apps.len()))]
    pub async fn refresh_due(&self) -> anyhow::Result<usize> {
        let mut refreshed = 0;
        for (appid, app) in self.apps.iter() {
            let state = self.storage.app_state(appid).await?;
            let ahead_ms = match app.token_mode {
                TokenMode::Token => ms(self.settings.refresh_ahead),
                TokenMode::StableToken => STABLE_ROTATION_MS.min(ms(self.settings.refresh_ahead)),
            };
            let due = match (&state.access_token, state.token_expires_at) {
                (Some(_), Some(expires_at)) => expires_at - self.clock.now_ms() <= ahead_ms,
                _ => true,
            };
            if !due {
                continue;
            }
            let stale = state.access_token.as_deref().unwrap_or("");
            match self.obtain(appid, Some(stale)).await {
                Ok(_) => refreshed += 1,
                Err(error) => {
                    tracing::warn!(appid, %error, "refreshing the access token ahead of expiry failed")
                }
            }
        }
        Ok(refreshed)
    }

    // Debug level: every send passes here, and a span per send would cost the
    // hot path at the default `info` filter. Never the stale token as a field.
    #[tracing::instrument(level = "debug", skip_all, fields(appid = %appid, refresh = stale.is_some()))]
    async fn obtain(&self, appid: &str, stale: Option<&str>) -> Result<CurrentToken, TokenError> {
        let app = self.apps.get(appid).ok_or(TokenError::UnknownApp)?;
        // The common case needs no lock: a usable token. A refresh compares
        // against the database, never against what this process remembers.
        let state = match stale {
            None => self.app_state(appid).await?,
            Some(_) => self.read_state(appid).await?,
        };
        if let Some(token) = self.settled(&state, stale) {
            return Ok(token);
        }
        let wait = self.settings.wait;
        let deadline = tokio::time::Instant::now() + wait;
        let _flight = tokio::time::timeout(wait, self.single_flight[appid].lock())
            .await
            .map_err(|_| TokenError::LeaseTimeout)?;
        loop {
            let state = self.read_state(appid).await?;
            if let Some(token) = self.settled(&state, stale) {
                return Ok(token);
            }
            let now = self.clock.now_ms();
            let lease_until = now + ms(self.settings.lease);
            if self
                .storage
                .try_lease_token_refresh(appid, &self.holder, now, lease_until)
                .await?
            {
                let fetched = self.fetch_under_lease(appid, app, stale).await;
                self.storage
                    .release_token_refresh(appid, &self.holder)
                    .await
                    .context("releasing the token-refresh lease")?;
                return fetched;
            }
            // Another instance is fetching: wait for its token instead of
            // fetching one that would invalidate it.
            if tokio::time::Instant::now() >= deadline {
                return Err(TokenError::LeaseTimeout);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The stored token when it answers the request: usable, and not the
    /// stale one the caller wants replaced. Usable means until its real
    /// expiry: a send that meets an expired token gets 42001 and refreshes,
    /// whereas treating the last minute as unusable made every send fetch
    /// once WeChat's lifetime was a minute or less (issue 10, #4).
    fn settled(&self, state: &AppState, stale: Option<&str>) -> Option<CurrentToken> {
        let token = state.access_token.as_ref()?;
        let expires_at_ms = state.token_expires_at?;
        let usable = expires_at_ms > self.clock.now_ms();
        (usable && stale != Some(token.as_str())).then(|| CurrentToken {
            token: token.clone(),
            expires_at_ms,
        })
    }

    /// Takes one forced refresh from the app's shared budget
    /// (`tokens.force_refreshes_per_day`, 30 s apart); false when none is left.
    async fn take_force_refresh(&self, appid: &str) -> Result<bool, TokenError> {
        let per_day = self.settings.force_refreshes_per_day;
        if per_day == 0 {
            return Ok(false);
        }
        let now = self.clock.now_ms();
        let taken = self
            .storage
            .take_force_refresh(appid, china_day(now), now, per_day)
            .await?;
        if taken {
            tracing::warn!(appid, "forcing a stable_token refresh");
        } else {
            tracing::warn!(
                appid,
                per_day,
                "no forced stable_token refresh left (WeChat allows 20 a day, 30 s apart)"
            );
        }
        Ok(taken)
    }

    #[tracing::instrument(skip_all, fields(appid = %appid, mode = ?app.token_mode))]
    async fn fetch_under_lease(
        &self,
        appid: &str,
        app: &AppSettings,
        stale: Option<&str>,
    ) -> Result<CurrentToken, TokenError> {
        // Someone may have stored a token between our read and our lease.
        let state = self.read_state(appid).await?;
        if let Some(token) = self.settled(&state, stale) {
            return Ok(token);
        }
        // The floor between fetches, shared by every instance through the
        // stored fetch time: within it the current token is the answer
        // (even to a caller that reports it stale), or none if it expired.
        if let Some(fetched_at) = state.token_fetched_at {
            if self.clock.now_ms() - fetched_at < ms(self.settings.min_fetch_interval) {
                tracing::warn!(appid, "token fetch refused: the last one is too recent");
                return self.settled(&state, None).ok_or(TokenError::FetchTooSoon);
            }
        }
        let mut fetched_at = self.clock.now_ms();
        let mut reply = self
            .wechat
            .fetch_token(appid, &app.secret, app.token_mode, false)
            .await?;
        // stable_token in normal mode answers the token it considers
        // current; when that is the very token a caller reports stale, only
        // a forced refresh replaces it, inside WeChat's budget.
        if let TokenReply::Issued(issued) = &reply {
            if app.token_mode == TokenMode::StableToken
                && stale == Some(issued.token.as_str())
                && self.take_force_refresh(appid).await?
            {
                fetched_at = self.clock.now_ms();
                reply = self
                    .wechat
                    .fetch_token(appid, &app.secret, app.token_mode, true)
                    .await?;
            }
        }
        match reply {
            TokenReply::Issued(issued) => {
                let expires_at_ms = fetched_at + issued.expires_in_secs * 1000;
                let stored = self
                    .storage
                    .store_token(appid, &issued.token, expires_at_ms, fetched_at)
                    .await?;
                tracing::info!(
                    appid,
                    stored,
                    expires_in = issued.expires_in_secs,
                    "fetched an access token"
                );
                // What is in the database now, stored by us or by a later fetch.
                let state = self.read_state(appid).await?;
                if stored {
                    Ok(CurrentToken {
                        token: issued.token,
                        expires_at_ms,
                    })
                } else {
                    // A fetch that started later won (possible only after a
                    // lease expired mid-fetch): its token is the current one.
                    self.settled(&state, None).ok_or(TokenError::LeaseTimeout)
                }
            }
            TokenReply::Refused(reply) => {
                tracing::error!(
                    appid,
                    errcode = reply.errcode,
                    "WeChat refused to issue an access token"
                );
                Err(TokenError::Refused {
                    errcode: reply.errcode,
                    errmsg: reply.errmsg,
                })
            }
        }
    }
}
