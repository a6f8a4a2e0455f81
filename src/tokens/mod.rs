//! The access_token keeper: the one central server WeChat's docs ask for.
//!
//! The token lives in the `apps` row, so every instance on one ledger serves
//! the same token, and a fetch happens under a lease in that row: exactly one
//! instance asks WeChat at a time (each fetch from `/cgi-bin/token` invalidates
//! the previous token five minutes later, so concurrent fetches would make
//! instances invalidate each other's tokens).
//!
//! When a token is replaced (docs/wechat/tokens.md):
//! - **WeChat's word is evidence.** A call of the gateway's own answered
//!   40001/40014/42001 with the stored token replaces it at once.
//! - **A caller's word is checked.** A compare-and-refresh naming the stored
//!   token first asks WeChat whether it works (`get_api_domain_ip`, one check
//!   per token shared by concurrent callers and reused for
//!   `tokens.check_reuse_secs`); only a rejection costs a fetch.
//! - **Every fetch takes from the app's budget** ([`budget`]), shared through
//!   the database: `tokens.fetch_burst` at once, one more per
//!   `tokens.fetch_refill_secs`. It bounds a runaway, never the first
//!   recovery after a rejection.

pub mod budget;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use budget::{FetchBudget, Take};

use crate::cache::{SingleFlight, TtlCache};
use crate::clock::{ms, SharedClock};
use crate::config::{AppSettings, TokenMode, TokenSettings};
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
    #[error("the app's budget of token fetches is spent for now")]
    BudgetExhausted { retry_at_ms: i64 },
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

impl TokenError {
    /// Whether waiting can cure it: WeChat unreachable, busy or over a rate
    /// limit, another instance slow to fetch, the budget spent, the ledger
    /// failing a read or a write. A refusal for the app's configuration (an
    /// unknown appid, a wrong secret, an address off the IP whitelist) needs
    /// an operator instead.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Refused { errcode, .. } => matches!(errcode, -1 | 45009 | 45011),
            TokenError::Unreachable(_)
            | TokenError::LeaseTimeout
            | TokenError::BudgetExhausted { .. }
            | TokenError::Storage(_) => true,
            TokenError::UnknownApp => false,
        }
    }

    /// When a retry may succeed, if the error says.
    pub fn retry_at_ms(&self) -> Option<i64> {
        match self {
            TokenError::BudgetExhausted { retry_at_ms } => Some(*retry_at_ms),
            _ => None,
        }
    }
}

/// What a check of a token at WeChat proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// WeChat accepted it.
    Live,
    /// WeChat rejected it with a token errcode.
    Rejected,
    /// Nothing: the check was lost or answered another errcode.
    Unproven,
}

/// Counts of this process's token decisions since start.
#[derive(Debug, Default)]
struct Counters {
    /// Compare-and-refresh calls answered with the same token: WeChat
    /// accepted it.
    refused_refreshes: AtomicU64,
    /// Checks of a token made at WeChat.
    checks: AtomicU64,
    /// Fetches refused because the app's budget was spent.
    budget_dry: AtomicU64,
}

/// A snapshot of [`TokenKeeper`]'s counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenStats {
    /// Compare-and-refresh calls answered with the same, working token.
    pub refused_refreshes: u64,
    /// Checks of a reported-stale token made at WeChat.
    pub checks: u64,
    /// Fetches the app's budget refused.
    pub budget_dry: u64,
}

/// In stable_token mode WeChat keeps answering the same token until five
/// minutes before its expiry (docs/wechat/tokens.md, "Two ways to get a
/// token"); asking earlier changes nothing.
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
    fetching: Arc<SingleFlight>,
    /// The apps rows as last read. Every send reads its app's token; for
    /// `tokens.cache_ms` this process answers from memory. Safe because a
    /// replaced token keeps working for five minutes, and a rejected one is
    /// refreshed from the database.
    rows: Arc<TtlCache<AppState>>,
    /// One check of a reported-stale token at a time per app in this
    /// process; the stored check time shares its answer across instances.
    checking: Arc<SingleFlight>,
    /// Per app, the last token WeChat rejected in a call of this process's
    /// own. It is never handed out again: while no new token can be had
    /// (the budget spent, WeChat unreachable), a send asks for one instead
    /// of calling WeChat with a token known dead.
    rejected: Arc<std::sync::Mutex<HashMap<String, String>>>,
    counters: Arc<Counters>,
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
        let rows = Arc::new(TtlCache::new(ms(settings.cache), clock.clone()));
        Self {
            storage,
            wechat,
            apps,
            clock,
            holder,
            settings,
            fetching: Arc::default(),
            rows,
            checking: Arc::default(),
            rejected: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// The app's row, from memory when read less than `tokens.cache_ms` ago.
    async fn app_state(&self, appid: &str) -> anyhow::Result<AppState> {
        self.rows
            .get_or_read(appid, || self.storage.app_state(appid))
            .await
    }

    /// The app's row from the database, remembered.
    async fn read_state(&self, appid: &str) -> anyhow::Result<AppState> {
        let state = self.storage.app_state(appid).await?;
        self.rows.put(appid, state.clone(), self.clock.now_ms());
        self.gauge_expiry(appid, &state);
        Ok(state)
    }

    /// The seconds-to-expiry gauge of the app's stored token.
    fn gauge_expiry(&self, appid: &str, state: &AppState) {
        if let Some(expires_at) = state.token_expires_at {
            crate::monitoring::token_expires_in(appid, expires_at - self.clock.now_ms());
        }
    }

    /// The app's current token, fetching one when there is none usable. A
    /// token WeChat rejected in a call of this process's own is not usable:
    /// it is replaced as [`TokenKeeper::refresh`] would, or the error says
    /// why it cannot be yet.
    pub async fn current(&self, appid: &str) -> Result<CurrentToken, TokenError> {
        let current = self.obtain(appid, None).await?;
        if self.was_rejected(appid, &current.token) {
            return self.obtain(appid, Some(&current.token)).await;
        }
        Ok(current)
    }

    /// The app's stored token while it is usable, without ever fetching one
    /// (from memory when read less than `tokens.cache_ms` ago): how the
    /// WeChat-compatible endpoint tells whose token a caller holds.
    pub async fn stored(&self, appid: &str) -> Result<Option<CurrentToken>, TokenError> {
        if !self.apps.contains_key(appid) {
            return Err(TokenError::UnknownApp);
        }
        let state = self.app_state(appid).await?;
        Ok(self.settled(&state, None))
    }

    /// Compare-and-refresh after WeChat rejected `stale` in a call of the
    /// gateway's own: fetches a new token at once while `stale` is still the
    /// stored one (budget permitting); otherwise answers the stored token.
    /// Many calls failing with the same token cause one fetch, not many.
    pub async fn refresh(&self, appid: &str, stale: &str) -> Result<CurrentToken, TokenError> {
        self.note_rejected(appid, stale);
        self.obtain(appid, Some(stale)).await
    }

    /// Records that WeChat rejected `token` in a call of this process's own:
    /// [`TokenKeeper::current`] hands it out no more.
    pub fn note_rejected(&self, appid: &str, token: &str) {
        self.rejected
            .lock()
            .expect("rejected tokens")
            .insert(appid.to_owned(), token.to_owned());
    }

    /// Whether WeChat rejected `token` in a call of this process's own.
    fn was_rejected(&self, appid: &str, token: &str) -> bool {
        self.rejected
            .lock()
            .expect("rejected tokens")
            .get(appid)
            .is_some_and(|rejected| rejected == token)
    }

    /// Compare-and-refresh on an outside caller's word (the token endpoint).
    /// A caller who names the stored token is not believed on its say-so:
    /// the gateway asks WeChat first, and replaces the token only when WeChat
    /// rejects it. So a caller that loops costs WeChat checks (one per token
    /// per `tokens.check_reuse_secs`), never fetches, and never retires the
    /// token the app's other servers hold.
    pub async fn refresh_on_request(
        &self,
        appid: &str,
        stale: &str,
    ) -> Result<CurrentToken, TokenError> {
        if !self.apps.contains_key(appid) {
            return Err(TokenError::UnknownApp);
        }
        let state = self.read_state(appid).await?;
        match self.settled(&state, None) {
            Some(current) if current.token == stale => {}
            // Another token is current, or none is usable: no claim to check.
            _ => return self.obtain(appid, Some(stale)).await,
        }
        // One check per token: concurrent callers wait for the first one's
        // answer, which the stored check time (or a new token) then gives.
        let _checking = self.checking.turn(appid).await;
        let state = self.read_state(appid).await?;
        if let Some(replaced) = self.settled(&state, Some(stale)) {
            // Replaced while this caller waited for another caller's check.
            return Ok(replaced);
        }
        let Some(current) = self.settled(&state, None) else {
            // Expired meanwhile: there is no claim left to check.
            return self.obtain(appid, Some(stale)).await;
        };
        if self.checked_recently(&state) {
            return Ok(self.refused(appid, current));
        }
        match self.check(appid, stale).await? {
            Checked::Live => Ok(self.refused(appid, current)),
            // WeChat's word now: replaced as after a rejected call.
            Checked::Rejected => self.refresh(appid, stale).await,
            Checked::Unproven => Ok(current),
        }
    }

    /// Whether WeChat accepted the stored token within `tokens.check_reuse_secs`.
    fn checked_recently(&self, state: &AppState) -> bool {
        state.token_checked_at.is_some_and(|checked_at| {
            (0..ms(self.settings.check_reuse)).contains(&(self.clock.now_ms() - checked_at))
        })
    }

    /// Asks WeChat whether `token` works, and stores a yes for other callers.
    #[tracing::instrument(skip_all, fields(appid = %appid))]
    async fn check(&self, appid: &str, token: &str) -> Result<Checked, TokenError> {
        self.counters.checks.fetch_add(1, Ordering::Relaxed);
        let checked = match self.wechat.check_token(token).await {
            Ok(reply) if reply.errcode == 0 => Checked::Live,
            Ok(reply) if crate::ledger::settle::is_token_errcode(reply.errcode) => {
                tracing::warn!(
                    appid,
                    errcode = reply.errcode,
                    "WeChat rejected the stored token in a check: replacing it"
                );
                Checked::Rejected
            }
            Ok(reply) => {
                tracing::warn!(
                    appid,
                    errcode = reply.errcode,
                    "a token check proved nothing"
                );
                Checked::Unproven
            }
            Err(error) => {
                tracing::warn!(appid, %error, "a token check proved nothing");
                Checked::Unproven
            }
        };
        if checked == Checked::Live {
            self.storage
                .record_token_check(appid, token, self.clock.now_ms())
                .await?;
        }
        Ok(checked)
    }

    /// Answers a caller's claim that WeChat disproved: the same token.
    fn refused(&self, appid: &str, current: CurrentToken) -> CurrentToken {
        let refused = self
            .counters
            .refused_refreshes
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        tracing::warn!(
            appid,
            refused_total = refused,
            "compare-and-refresh refused: WeChat accepts the token the caller reported stale"
        );
        current
    }

    /// This process's token counters since start.
    pub fn stats(&self) -> TokenStats {
        TokenStats {
            refused_refreshes: self.counters.refused_refreshes.load(Ordering::Relaxed),
            checks: self.counters.checks.load(Ordering::Relaxed),
            budget_dry: self.counters.budget_dry.load(Ordering::Relaxed),
        }
    }

    /// One pass of the background task: refreshes every app whose token is
    /// missing or within the refresh-ahead window. Returns how many it refreshed.
    #[tracing::instrument(skip_all, fields(apps = self.apps.len()))]
    pub async fn refresh_due(&self) -> anyhow::Result<usize> {
        let mut refreshed = 0;
        for (appid, app) in self.apps.iter() {
            let state = self.storage.app_state(appid).await?;
            self.gauge_expiry(appid, &state);
            let mut ahead_ms = match app.token_mode {
                TokenMode::Token => ms(self.settings.refresh_ahead),
                TokenMode::StableToken => STABLE_ROTATION_MS.min(ms(self.settings.refresh_ahead)),
            };
            // A token that lives no longer than the lead is refreshed half-way
            // through its life: with the whole lead, it would be due the moment
            // it was fetched, and every pass of every instance would fetch.
            if let (Some(expires_at), Some(fetched_at)) =
                (state.token_expires_at, state.token_fetched_at)
            {
                ahead_ms = ahead_ms.min((expires_at - fetched_at) / 2);
            }
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
        let _flight = self
            .fetching
            .turn_within(appid, wait)
            .await
            .ok_or(TokenError::LeaseTimeout)?;
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
    /// expiry: a send that meets an expired token gets 42001 and refreshes;
    /// treating the last minute as unusable would make every send fetch once
    /// WeChat's lifetime is a minute or less.
    fn settled(&self, state: &AppState, stale: Option<&str>) -> Option<CurrentToken> {
        let token = state.access_token.as_ref()?;
        let expires_at_ms = state.token_expires_at?;
        let usable = expires_at_ms > self.clock.now_ms();
        (usable && stale != Some(token.as_str())).then(|| CurrentToken {
            token: token.clone(),
            expires_at_ms,
        })
    }

    /// Takes one fetch from the app's budget, shared through its row; under
    /// the refresh lease, so the compare-and-set meets another writer only
    /// when a lease ran out mid-fetch.
    async fn take_from_budget(&self, appid: &str, state: &AppState) -> Result<(), TokenError> {
        let budget = FetchBudget {
            burst: self.settings.fetch_burst,
            refill_ms: ms(self.settings.fetch_refill),
        };
        let mut seen = state.token_fetch_tat;
        for _ in 0..3 {
            match budget.take(seen, self.clock.now_ms()) {
                Take::Granted { next_tat } => {
                    if self.storage.take_token_fetch(appid, seen, next_tat).await? {
                        return Ok(());
                    }
                    seen = self.storage.app_state(appid).await?.token_fetch_tat;
                }
                Take::Dry { retry_at } => {
                    let dry = self.counters.budget_dry.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(
                        appid,
                        retry_in_ms = retry_at - self.clock.now_ms(),
                        budget_dry_total = dry,
                        burst = budget.burst,
                        refill_secs = self.settings.fetch_refill.as_secs(),
                        "token fetch refused: the app's fetch budget is spent"
                    );
                    return Err(TokenError::BudgetExhausted {
                        retry_at_ms: retry_at,
                    });
                }
            }
        }
        Err(TokenError::LeaseTimeout)
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
        self.take_from_budget(appid, &state).await?;
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
                // The lease orders this fetch after the stored token's, so it
                // is stored as no older than that one: the instance that
                // fetched it may have a clock ahead of ours, and its
                // `fetched_at` must not make every fetch of ours look older
                // (each rejected send would fetch again and be handed the
                // dead token back until our clock caught up).
                let ordered_at = state
                    .token_fetched_at
                    .map_or(fetched_at, |stored| stored.max(fetched_at));
                let stored = self
                    .storage
                    .store_token(appid, &issued.token, expires_at_ms, ordered_at)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A send waits for a token whenever waiting can cure its lack: only the
    /// app's configuration fails it.
    #[test]
    fn only_a_refusal_of_the_configuration_is_not_transient() {
        let refused = |errcode| TokenError::Refused {
            errcode,
            errmsg: String::new(),
        };
        for transient in [
            refused(-1),
            refused(45009),
            refused(45011),
            TokenError::Unreachable(CallError::NotSent("connect refused".into())),
            TokenError::LeaseTimeout,
            TokenError::BudgetExhausted { retry_at_ms: 0 },
            // A ledger write that failed under a fetch (its connection
            // dropped): the token is fetched again, or read, on the next try.
            TokenError::Storage(anyhow::anyhow!("connection reset")),
        ] {
            assert!(transient.is_transient(), "{transient:?}");
        }
        for configuration in [refused(40013), refused(40125), refused(40164)] {
            assert!(!configuration.is_transient(), "{configuration:?}");
        }
        assert!(!TokenError::UnknownApp.is_transient());
    }
}
