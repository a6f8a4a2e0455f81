//! A fake WeChat server, faithful to the wire behaviour summarised, with
//! sources, in the repository's `docs/wechat/` (cited below by file and
//! section).
//!
//! It serves the APIs the gateway talks to:
//!
//! * `GET  /cgi-bin/token` and `POST /cgi-bin/stable_token`
//!   (docs/wechat/tokens.md, "Two ways to get a token"),
//! * `POST /cgi-bin/message/wxopen/template/send`
//!   (docs/wechat/template-messages.md, "The send", with the credential
//!   rules of "formId and prepay_id" there),
//! * `GET /sns/jscode2session`, the mini-program login (docs/wechat/login.md),
//! * `POST /cgi-bin/message/subscribe/send` (docs/wechat/subscribe-messages.md:
//!   one-time grants, long-term subscriptions, the value rules of each
//!   placeholder type),
//! * the subscribe templates, `wxaapi/newtmpl/getcategory`,
//!   `getpubtemplatetitles`, `getpubtemplatekeywords`, `addtemplate`,
//!   `gettemplate`, `deltemplate` (docs/wechat/subscribe-messages.md,
//!   "Template management"),
//! * temporary media, `cgi-bin/media/upload` and `cgi-bin/media/get`
//!   (docs/wechat/media.md),
//! * the classic template library, `cgi-bin/wxopen/template/library/list`,
//!   `library/get`, `add`, `list`, `del` (docs/wechat/template-messages.md,
//!   "The classic template library"),
//!
//! plus a few unauthenticated helpers under `/fake/` that tests and the demo
//! use to mint credentials and read what was sent.
//!
//! It also plays WeChat's message push (docs/wechat/message-push.md): with a
//! [`PushTarget`] set for an app, a user's accept, reject or revoke and every
//! delivered subscribe send are pushed to that URL as the subscribe events
//! WeChat sends, signed, encrypted in compatible and safe mode, retried when
//! unanswered (see [`push`]).
//!
//! Every error is answered the WeChat way: HTTP 200 with
//! `{"errcode":N,"errmsg":"<doc stem> rid: <hex>"}` (docs/wechat/errcodes.md,
//! "The shape of an answer"). Every notion of
//! time (token expiry and overlap, credential expiry, payment sync lag, daily
//! quotas) comes from the injected [`Clock`], so a test holding a manual
//! clock (shared with the gateway as a closure) can jump seven days ahead
//! without sleeping. Only injected latency and [`Fault::Hang`] use real
//! (tokio) sleeps.
//!
//! The whole state sits behind one `std::sync::Mutex` that is never held
//! across an `.await`.

mod cli;
pub mod clock;
mod codes;
mod library;
mod login;
mod media;
pub mod push;
pub mod push_crypto;
mod rules;
mod server;
mod state;
mod subscribe;
mod templates;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

pub use cli::{run_cli, FakeWeChatArgs};
pub use clock::{Clock, SystemClock};
pub use login::LoginFault;
pub use media::MediaFile;
pub use push::{PopupChoice, PushEvent, PushFormat, PushMode, PushRecord, PushTarget, SentResult};
pub use server::FakeWeChatServer;

use state::{CredentialKind, State};

/// The fake's state and configuration. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct FakeWeChat {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
    /// Message sends (template and subscribe) being handled right now, and
    /// the most ever at once: how tests see the gateway's bound on concurrent
    /// calls.
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    /// Push targets and pushes, apart from the API state: a push is built
    /// under this lock and sent without it.
    push: Arc<Mutex<push::PushState>>,
    /// Login codes and their faults (`jscode2session`).
    login: Arc<Mutex<login::LoginState>>,
    /// Temporary media files (`cgi-bin/media/upload`), apart from the API
    /// state: a file's bytes are copied under this lock only.
    media: Arc<media::MediaState>,
    http: reqwest::Client,
}

impl std::fmt::Debug for FakeWeChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The state holds secrets and tokens: never print it.
        f.debug_struct("FakeWeChat").finish_non_exhaustive()
    }
}

/// A fault injected into the next call of an API.
///
/// Send faults are consumed one per template-send call, *after* the retired
/// switch and the access_token check: a call rejected for its token never
/// reached the message backend, so it does not eat a fault (and tests can
/// queue a fault for "the send after the token refresh"). Token faults are
/// consumed one per call to either token endpoint, first thing after the
/// injected latency.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer `{"errcode":N,"errmsg":"<doc stem> rid: …"}` with HTTP 200;
    /// nothing else happens (credential untouched, no token issued).
    /// `Errcode(-1)` gives `system error`; `Errcode(0)` is a lying
    /// `{"errcode":0,"errmsg":"ok"}` for a message that was not delivered.
    Errcode(i64),
    /// Answer this HTTP status with an HTML body; nothing else happens.
    HttpStatus(u16),
    /// HTTP 200 with a body that is not JSON; nothing else happens.
    Garbage,
    /// Process the call normally, then sleep this long before answering (for
    /// client timeouts). The outcome is fixed when the request arrives, so a
    /// client that gives up faces a genuinely ambiguous result, and the fake's
    /// state does not depend on whether the server noticed the hang-up.
    Hang(Duration),
    /// Process the call normally (a send consumes its credential and is
    /// recorded as delivered; a token fetch issues a token) but answer this
    /// HTTP status with a non-JSON body: an ambiguous outcome.
    DeliverThenFail(u16),
}

/// One template-send call as the fake received it.
#[derive(Debug, Clone, Serialize)]
pub struct SendRecord {
    /// When the call was processed, in Unix milliseconds (per the clock).
    pub at_ms: i64,
    /// The app owning the access_token, if the token was one of ours.
    pub appid: Option<String>,
    /// `touser` from the body, empty when absent or unreadable.
    pub touser: String,
    /// `template_id` from the body, empty when absent or unreadable.
    pub template_id: String,
    /// `form_id` exactly as sent (a `prepay_id=` prefix is kept), empty when absent.
    pub form_id: String,
    /// The errcode answered; `-2` when an injected fault answered a non-JSON
    /// body without processing the call.
    pub errcode: i64,
    /// Whether the message reached the user (credential consumed).
    pub delivered: bool,
}

/// Which permission a delivered subscribe send used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantUse {
    /// One one-time grant, now spent.
    OneTime,
    /// A long-term subscription, not consumed.
    LongTerm,
}

/// What a user holds for one subscribe template of one app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SubscribeGrants {
    /// One-time grants left (each accept adds one, each delivered send spends one).
    pub one_time: u32,
    /// Whether a long-term subscription is on.
    pub long_term: bool,
}

/// One subscribe-send call as the fake received it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscribeSendRecord {
    /// When the call was processed, in Unix milliseconds (per the clock).
    pub at_ms: i64,
    /// The app owning the access_token, if the token was one of ours.
    pub appid: Option<String>,
    /// `touser`, empty when absent or not a string.
    pub touser: String,
    /// `template_id`, empty when absent or not a string.
    pub template_id: String,
    /// `page`, empty when absent or not a string.
    pub page: String,
    /// `miniprogram_state`, empty when absent (WeChat then uses `formal`).
    pub miniprogram_state: String,
    /// `lang`, empty when absent (WeChat then uses `zh_CN`).
    pub lang: String,
    /// `data` exactly as sent (`null` when absent).
    pub data: serde_json::Value,
    /// The errcode answered; `-2` when an injected fault answered a non-JSON
    /// body without processing the call.
    pub errcode: i64,
    /// The errmsg of an error answer (with its rid), empty otherwise.
    pub errmsg: String,
    /// The `msgid` of a delivered message. Above 2^53: keep it as an integer
    /// or a string, never a float.
    pub msgid: Option<u64>,
    /// The permission a delivered message used; `None` when not delivered.
    pub grant_used: Option<GrantUse>,
}

impl SubscribeSendRecord {
    /// Whether the message reached the user.
    pub fn delivered(&self) -> bool {
        self.grant_used.is_some()
    }
}

/// A message send being handled; see [`FakeWeChat::max_concurrent_sends`].
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeWeChat {
    /// An empty fake (no apps) on `clock`: [`SystemClock`], or any
    /// `Fn() -> i64` giving Unix milliseconds (see [`clock`]).
    pub fn new(clock: impl Clock + 'static) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            clock: Arc::new(clock),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            push: Arc::default(),
            login: Arc::default(),
            media: Arc::default(),
            http: reqwest::Client::new(),
        }
    }

    /// The most message sends (template and subscribe together) that were
    /// ever being handled at once.
    pub fn max_concurrent_sends(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Counts a message send as in flight until the guard drops.
    pub(crate) fn enter_send(&self) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(self.in_flight.clone())
    }

    /// Locks the state. A panic while holding the lock (only possible in a
    /// test assertion) must not wedge the server, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The login side's state.
    pub(crate) fn login_state(&self) -> &Mutex<login::LoginState> {
        &self.login
    }

    /// The app's secret, if it is registered.
    pub(crate) fn lock_apps_secret(&self, appid: &str) -> Option<String> {
        self.lock()
            .apps
            .get(appid)
            .and_then(|app| app.secret.clone())
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Registers an app (or changes its secret). Only registered apps can
    /// fetch tokens.
    pub fn register_app(&self, appid: &str, secret: &str) {
        self.lock().app_mut(appid).secret = Some(secret.to_owned());
    }

    /// Registers a template id for the app.
    pub fn register_template(&self, appid: &str, template_id: &str) {
        self.lock()
            .app_mut(appid)
            .templates
            .insert(template_id.to_owned());
    }

    /// Restricts valid pages for the app (default: any page not starting with
    /// '/'). Pages are compared without their `?query`.
    pub fn register_page(&self, appid: &str, page: &str) {
        self.lock().app_mut(appid).pages.insert(page.to_owned());
    }

    /// Makes the openid known to the app (minting a credential does this too).
    pub fn register_user(&self, appid: &str, openid: &str) {
        self.lock().app_mut(appid).users.insert(openid.to_owned());
    }

    /// A user submitted a `<form report-submit>`: returns 32 lowercase hex
    /// chars, good for 1 send within 7 days from now
    /// (docs/wechat/template-messages.md, "formId and prepay_id").
    pub fn mint_form_id(&self, appid: &str, openid: &str) -> String {
        let now = self.now_ms();
        self.lock()
            .mint_credential(appid, openid, CredentialKind::FormId, now)
    }

    /// A user paid: returns `"wx"` + 14-digit `yyyymmddHHMMSS` (China time) +
    /// 20 hex chars (36 chars), good for 3 sends within 7 days. Sends are
    /// answered 41028 until the prepay sync lag (as set when minting) has
    /// passed, because payment data syncs late
    /// (docs/wechat/template-messages.md, "formId and prepay_id").
    pub fn mint_prepay_id(&self, appid: &str, openid: &str) -> String {
        let now = self.now_ms();
        self.lock()
            .mint_credential(appid, openid, CredentialKind::PrepayId, now)
    }

    /// How long a new prepay_id answers 41028 after minting. Default 0.
    pub fn set_prepay_sync_lag(&self, lag: Duration) {
        self.lock().prepay_sync_lag_ms = duration_ms(lag);
    }

    /// `expires_in` of tokens issued from now on. Default 7200.
    pub fn set_token_expires_in(&self, secs: i64) {
        self.lock().token_expires_in = secs;
    }

    /// Length of tokens issued from now on. Default 600: real tokens may
    /// exceed 512 chars (docs/wechat/tokens.md, "Two ways to get a token").
    pub fn set_token_len(&self, len: usize) {
        self.lock().token_len = len.max(1);
    }

    /// Real delay before every answer of the `/cgi-bin/` APIs (the `/fake/`
    /// helpers answer at once). Default 0.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    pub(crate) fn latency(&self) -> Duration {
        self.lock().latency
    }

    /// Daily template-send quota of the app. Default 1,000,000
    /// (docs/wechat/template-messages.md, "The send"); beyond it sends answer
    /// 45009 until midnight China time.
    pub fn set_daily_send_quota(&self, appid: &str, quota: u64) {
        self.lock().app_mut(appid).send_quota.limit = quota;
    }

    /// When on, every template send answers 45103 `This API has been
    /// unsupported`, as the real, retired API does, and the classic
    /// `library/list` answers -1, as reported of it since the retirement
    /// (docs/wechat/template-messages.md, "Retired" and "The classic template
    /// library"). Subscribe messages are not affected.
    pub fn set_retired(&self, retired: bool) {
        self.lock().retired = retired;
    }

    /// Faults applied to the next template-send calls, one per call, in order.
    /// See [`Fault`] for where in the call they are consumed.
    pub fn push_send_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().send_faults.extend(faults);
    }

    /// Drops the template- and subscribe-send faults not yet met: WeChat
    /// works again.
    pub fn clear_send_faults(&self) {
        let mut state = self.lock();
        state.send_faults.clear();
        state.subscribe_faults.clear();
    }

    /// Faults for the next token fetches (both `/cgi-bin/token` and
    /// `/cgi-bin/stable_token`), one per call, in order.
    pub fn push_token_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().token_faults.extend(faults);
    }

    /// That form_id/prepay_id (with or without `prepay_id=`) now answers
    /// `errcode` (41031/41032/41034/41035). Unknown values are ignored.
    pub fn block_credential(&self, value: &str, errcode: i64) {
        if let Some(c) = self.lock().credential_mut(value) {
            c.blocked = Some(errcode);
        }
    }

    /// Invalidates every token of the app (both endpoints) at once, as if
    /// another server had fetched tokens long ago, so the next send with any
    /// of them answers 40001 (docs/wechat/tokens.md, "A token that stops
    /// working").
    pub fn invalidate_tokens(&self, appid: &str) {
        let now = self.now_ms();
        self.lock().invalidate_tokens(appid, now);
    }

    /// Every template-send call received, in order.
    pub fn sends(&self) -> Vec<SendRecord> {
        self.lock().sends.clone()
    }

    /// Successful answers carrying a token for the app, from either endpoint
    /// (a stable_token answer that repeats the current token counts too, as
    /// does a [`Fault::DeliverThenFail`] issue).
    pub fn token_fetches(&self, appid: &str) -> usize {
        self.lock().apps.get(appid).map_or(0, |a| a.token_fetches)
    }

    /// Calls of `cgi-bin/get_api_domain_ip` made with one of the app's
    /// tokens, valid or not: the gateway's checks of a token before it
    /// replaces it on a caller's word.
    pub fn token_checks(&self, appid: &str) -> usize {
        self.lock().apps.get(appid).map_or(0, |a| a.token_checks)
    }

    /// The token most recently handed out for the app (either endpoint), if it
    /// is still accepted by the send API.
    pub fn current_token(&self, appid: &str) -> Option<String> {
        let now = self.now_ms();
        self.lock().current_token(appid, now)
    }

    // ------------------------------------------------------------ subscribe

    /// The user accepted `template_id` once in `wx.requestSubscribeMessage`
    /// (each accept grants one send, grants accumulate and never expire:
    /// docs/wechat/subscribe-messages.md, "One-time grants"). For a long-term
    /// template of the app (type 3) the accept
    /// switches the subscription on instead. The user becomes known to the app.
    ///
    /// With a push target set for the app, a popup event (`accept`) is pushed
    /// in the background.
    pub fn grant(&self, appid: &str, openid: &str, template_id: &str) {
        self.lock().grant(appid, openid, template_id);
        self.spawn_push(appid, popup(openid, template_id, "accept"), Duration::ZERO);
    }

    /// The user answered `reject` in a subscribe popup: nothing changes but,
    /// with a push target set, a popup event (`reject`) is pushed.
    pub fn reject(&self, appid: &str, openid: &str, template_id: &str) {
        self.lock().app_mut(appid).users.insert(openid.to_owned());
        self.spawn_push(appid, popup(openid, template_id, "reject"), Duration::ZERO);
    }

    /// The user switched on a long-term subscription to `template_id`
    /// (docs/wechat/subscribe-messages.md, "Long-term subscriptions"): sends
    /// are not counted against it.
    /// With a push target set, a popup event (`accept`) is pushed.
    pub fn grant_long_term(&self, appid: &str, openid: &str, template_id: &str) {
        self.lock().grant_long_term(appid, openid, template_id);
        self.spawn_push(appid, popup(openid, template_id, "accept"), Duration::ZERO);
    }

    /// The user turned `template_id` off in the service-notification settings
    /// (docs/wechat/message-push.md, "The events" and "What an event means
    /// for the grants"): remaining one-time grants and the
    /// long-term subscription are gone; sends answer 43101 until a new accept.
    /// With a push target set, a change event (`reject`) is pushed.
    pub fn revoke(&self, appid: &str, openid: &str, template_id: &str) {
        self.lock().revoke(appid, openid, template_id);
        let event = PushEvent::Change {
            openid: openid.to_owned(),
            template_ids: vec![template_id.to_owned()],
        };
        self.spawn_push(appid, event, Duration::ZERO);
    }

    /// What the user holds for the template.
    pub fn subscribe_grants(
        &self,
        appid: &str,
        openid: &str,
        template_id: &str,
    ) -> SubscribeGrants {
        self.lock().grants_of(appid, openid, template_id)
    }

    /// Every subscribe-send call received, in order.
    pub fn subscribe_sends(&self) -> Vec<SubscribeSendRecord> {
        self.lock().subscribe_sends.clone()
    }

    /// Faults applied to the next subscribe-send calls, one per call, in
    /// order, with the same semantics as [`FakeWeChat::push_send_faults`]
    /// (a separate queue: template-send faults are not spent by subscribe
    /// sends, nor the reverse).
    pub fn push_subscribe_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().subscribe_faults.extend(faults);
    }

    /// Daily subscribe-send quota of the app. Default 10,000,000, WeChat's
    /// figure without payment capability (docs/wechat/subscribe-messages.md,
    /// "The send"); beyond it sends answer 45009 until midnight China time.
    pub fn set_daily_subscribe_quota(&self, appid: &str, quota: u64) {
        self.lock().app_mut(appid).subscribe_quota.limit = quota;
    }

    /// Adds a subscribe template to the app from the public library, as the
    /// console or `wxaapi/newtmpl/addtemplate` does (same rules), and returns
    /// its `priTmplId` (also on 200022, the latest identical one). `Err`
    /// carries the errcode. The seeded library: `getpubtemplatetitles` with
    /// ids `2,8,616`; title 401 has one keyword of every value type.
    pub fn add_subscribe_template(
        &self,
        appid: &str,
        tid: u32,
        kids: &[u32],
    ) -> Result<String, i64> {
        match self
            .lock()
            .add_subscribe_template(appid, Some(tid), Some(kids.to_vec()), "")
        {
            Ok(id) | Err(templates::AddRefusal::AddedAlready(id)) => Ok(id),
            Err(templates::AddRefusal::Code(code)) => Err(code),
        }
    }

    /// The template-management calls received (both systems), by path
    /// (`/wxaapi/newtmpl/gettemplate`, `/cgi-bin/wxopen/template/list`…), in
    /// order, whatever they were answered.
    pub fn manage_calls(&self) -> Vec<&'static str> {
        self.lock().manage_calls.clone()
    }

    /// Sends left on a form_id/prepay_id (with or without `prepay_id=`),
    /// `None` if unknown. Expiry is not considered.
    pub fn uses_left(&self, value: &str) -> Option<u32> {
        self.lock().credential_mut(value).map(|c| c.uses_left)
    }
}

fn popup(openid: &str, template_id: &str, status: &str) -> PushEvent {
    PushEvent::Popup {
        openid: openid.to_owned(),
        items: vec![PopupChoice {
            template_id: template_id.to_owned(),
            status: status.to_owned(),
        }],
    }
}

impl FakeWeChat {
    // ----------------------------------------------------------------- push

    fn push_state(&self) -> MutexGuard<'_, push::PushState> {
        self.push.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes WeChat push the app's events to `target` from now on (the
    /// console's "消息推送配置"). Refused when compatible or safe mode has no
    /// valid 43-char EncodingAESKey.
    pub fn set_push_target(&self, appid: &str, target: PushTarget) -> Result<(), String> {
        if target.mode != PushMode::Plain
            && push_crypto::aes_key(&target.encoding_aes_key).is_none()
        {
            return Err("the EncodingAESKey is not 43 chars of [A-Za-z0-9]".to_owned());
        }
        self.push_state().targets.insert(appid.to_owned(), target);
        Ok(())
    }

    /// Stops pushing the app's events.
    pub fn clear_push_target(&self, appid: &str) {
        self.push_state().targets.remove(appid);
    }

    /// The app's push target, if any.
    pub fn push_target(&self, appid: &str) -> Option<PushTarget> {
        self.push_state().targets.get(appid).cloned()
    }

    /// The (errcode, status) the next sent events report, one per delivered
    /// subscribe send, in order; after them `(0, "success")`. For a delivery
    /// that fails after the send was accepted (only asynchronous delivery
    /// failures appear there: docs/wechat/message-push.md, "The events").
    pub fn push_sent_outcomes(&self, outcomes: impl IntoIterator<Item = (i64, String)>) {
        self.push_state().sent_outcomes.extend(outcomes);
    }

    /// Pushes `event` to the app's target now, as WeChat does (retries
    /// included), and returns how it went; `None` without a target.
    pub async fn push_event(&self, appid: &str, event: PushEvent) -> Option<PushRecord> {
        let target = self.push_target(appid)?;
        let now_ms = self.now_ms();
        self.push_state().in_flight += 1;
        let record = self.push_to(&target, appid, event, now_ms).await;
        let mut state = self.push_state();
        state.in_flight -= 1;
        state.records.push(record.clone());
        Some(record)
    }

    async fn push_to(
        &self,
        target: &PushTarget,
        appid: &str,
        event: PushEvent,
        now_ms: i64,
    ) -> PushRecord {
        let mut record = PushRecord {
            at_ms: now_ms,
            appid: appid.to_owned(),
            event: event.clone(),
            mode: target.mode,
            format: target.format,
            query: String::new(),
            body: String::new(),
            attempts: 0,
            status: None,
            answer: None,
            error: None,
        };
        match push::build(target, appid, &event, now_ms.div_euclid(1000)) {
            Ok(built) => {
                let (attempts, status, answer, error) =
                    push::deliver(&self.http, target, &built).await;
                record.query = built.query;
                record.body = built.body;
                record.attempts = attempts;
                record.status = status;
                record.answer = answer;
                record.error = error;
            }
            Err(e) => record.error = Some(e),
        }
        tracing::debug!(
            appid,
            event = event.name(),
            attempts = record.attempts,
            status = record.status,
            "fake wechat push"
        );
        record
    }

    /// Pushes in the background after `delay`, if the app has a target and
    /// a tokio runtime is running.
    pub(crate) fn spawn_push(&self, appid: &str, event: PushEvent, delay: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.push_target(appid).is_none() {
            return;
        }
        let fake = self.clone();
        let appid = appid.to_owned();
        // Counted at once, so that `wait_for_pushes` sees it coming.
        fake.push_state().in_flight += 1;
        runtime.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let target = fake.push_target(&appid);
            let now_ms = fake.now_ms();
            let record = match target {
                Some(target) => Some(fake.push_to(&target, &appid, event, now_ms).await),
                None => None,
            };
            let mut state = fake.push_state();
            state.in_flight -= 1;
            state.records.extend(record);
        });
    }

    /// A delivered subscribe send: its sent event, after the target's delay.
    pub(crate) fn push_sent_event(&self, record: &SubscribeSendRecord) {
        let (Some(appid), Some(msgid)) = (record.appid.as_deref(), record.msgid) else {
            return;
        };
        let Some(target) = self.push_target(appid) else {
            return;
        };
        let (error_code, error_status) = self
            .push_state()
            .sent_outcomes
            .pop_front()
            .unwrap_or((0, "success".to_owned()));
        let event = PushEvent::Sent {
            openid: record.touser.clone(),
            items: vec![SentResult {
                template_id: record.template_id.clone(),
                msgid,
                error_code,
                error_status,
            }],
        };
        self.spawn_push(appid, event, target.sent_event_delay);
    }

    /// Every push made (background ones once finished), in order.
    pub fn pushes(&self) -> Vec<PushRecord> {
        self.push_state().records.clone()
    }

    /// Waits until no push is under way and at least `count` were made, or
    /// `timeout` passed; returns the pushes made.
    pub async fn wait_for_pushes(&self, count: usize, timeout: Duration) -> Vec<PushRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let state = self.push_state();
                if state.in_flight == 0 && state.records.len() >= count {
                    return state.records.clone();
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return self.pushes();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
