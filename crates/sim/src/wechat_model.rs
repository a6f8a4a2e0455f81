//! WeChat as the simulation sees it: the truth about every credential and
//! token, every delivery, and the faults of the wire between the gateway and
//! WeChat, all drawn from one seeded generator.
//!
//! The semantics follow `/work/shared/reference/wechat-api.md` and the fake
//! in `crates/fake-wechat` (`state.rs`): a form_id allows 1 send and a
//! prepay_id 3, both for 7 days from their TRUE issue (WeChat's own clock,
//! whatever the ledger was told); a used-up credential answers 41029, an
//! expired, unknown, foreign or not yet synced one 41028; a token past its
//! lifetime answers 42001, a retired one 40001, an unknown one 40014.
//!
//! Tokens follow §1 and §2 of the reference, each endpoint with tokens of its
//! own (neither retires the other's):
//! - `cgi-bin/token`: every fetch issues a new token; the previous one keeps
//!   working for 5 more minutes (or until its own expiry), anything older
//!   dies at once.
//! - `stable_token`, normal mode: the current token again, with its
//!   remaining lifetime, while it has more than 5 minutes left; then a new
//!   one, the old one working until its own expiry. `force_refresh=true`
//!   retires every stable token of the app at once and issues a new one; at
//!   most 20 forced calls a day (then 45009), and a forced call within 30 s
//!   of the previous one answers the current token unchanged.
//!
//! Another server of the app may retire the gateway's token at any moment
//! ([`WeChatModel::invalidate`], or armed to strike around the gateway's
//! next fetch with [`WeChatModel::arm`]): a forced stable refresh, two
//! `cgi-bin/token` fetches in a row, or a reset of the AppSecret.
//!
//! Subscribe messages follow §5 of the reference and §2.3 and §3 of
//! `subscribe-and-push.md`: WeChat counts one-time grants per (app, user,
//! template) — each accepted prompt adds one, each delivered send takes one,
//! a revocation zeroes them — and keeps a long-term subscription as a flag
//! that sends do not consume; a send with neither answers 43101, a
//! delivered one 0 with a `msgid`.
//!
//! A call that WeChat processes is processed by a task of its own ("WeChat's
//! side"), not by the caller's future: when an instance crashes with a call
//! on the wire, WeChat still handles it, as the real one does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use formid_gateway::config::TokenMode;
use formid_gateway::ledger::kinds::CredentialKind;
use formid_gateway::wechat::{CallError, IssuedToken, Reply, TokenReply, WeChatApi};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use serde_json::Value;

use crate::{Counts, TimeBase, Trace};

/// One day in ms.
pub const DAY_MS: i64 = 86_400_000;
/// Both kinds live 7 days from their true issue (reference §7).
pub const CREDENTIAL_LIFETIME_MS: i64 = 7 * DAY_MS;
/// The previous `cgi-bin/token` token works this long after a new fetch (reference §1);
/// a stable token is rotated this long before its expiry (reference §2).
pub const TOKEN_OVERLAP_MS: i64 = 5 * 60_000;
/// Forced stable_token refreshes WeChat allows per app and China day.
pub const FORCE_REFRESHES_PER_DAY: u32 = 20;
/// A forced stable_token refresh within this long of the previous one
/// answers the current token unchanged.
pub const FORCE_REFRESH_SPACING_MS: i64 = 30_000;

/// A fault of the wire, injected at a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// The request never left (connect refused): `NotSent`.
    LostBeforeNotSent,
    /// A 5xx, a garbage body or a reset that never reached WeChat's
    /// processing: `Ambiguous`, nothing delivered.
    LostBeforeAmbiguous,
    /// WeChat processed the call, then the answer was lost: `Ambiguous`.
    LostAfter,
    /// errcode -1: busy, nothing processed.
    Busy,
    /// No answer within the client's timeout, WeChat never processed it.
    HangUnprocessed,
    /// No answer within the client's timeout, WeChat processed it.
    HangProcessed,
    /// errcode 45009: the app's daily quota is spent; nothing processed.
    DailyQuota,
}

impl Fault {
    /// Every fault, in a stable order.
    pub const ALL: [Fault; 6] = [
        Fault::LostBeforeNotSent,
        Fault::LostBeforeAmbiguous,
        Fault::LostAfter,
        Fault::Busy,
        Fault::HangUnprocessed,
        Fault::HangProcessed,
    ];

    /// The counter's name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::LostBeforeNotSent => "send: lost before processing (not sent)",
            Fault::LostBeforeAmbiguous => "send: lost before processing (5xx/garbage/reset)",
            Fault::LostAfter => "send: lost after processing (delivered, answer dropped)",
            Fault::Busy => "send: errcode -1 busy",
            Fault::HangUnprocessed => "send: hang past the timeout, not processed",
            Fault::HangProcessed => "send: hang past the timeout, processed",
            Fault::DailyQuota => "send: errcode 45009 daily quota",
        }
    }
}

/// How often each fault strikes, in per-mille of calls.
#[derive(Debug, Clone, Default)]
pub struct FaultRates {
    pub send: BTreeMap<Fault, u32>,
    /// Token fetches: lost before (not sent), issued then answer lost, -1.
    pub token_lost_before: u32,
    pub token_lost_after: u32,
    pub token_busy: u32,
}

/// What the model is set up with.
#[derive(Debug, Clone)]
pub struct WeChatSetup {
    pub seed: u64,
    pub rates: FaultRates,
    /// The client's total timeout: a hang answers after this.
    pub request_timeout: Duration,
    /// One-way latency bounds of a call, ms.
    pub latency_ms: (u64, u64),
    /// `expires_in` of an issued token, seconds.
    pub token_expires_in: i64,
}

/// A credential as WeChat knows it.
#[derive(Debug, Clone)]
pub struct TrueCredential {
    pub appid: String,
    pub openid: String,
    pub kind: CredentialKind,
    /// When WeChat issued it (its clock).
    pub issued_at: i64,
    /// A payment's data reaches the template backend late: 41028 before this.
    pub usable_from: i64,
    pub uses_left: u32,
    pub max_uses: u32,
}

impl TrueCredential {
    /// When WeChat stops accepting it.
    pub fn expires_at(&self) -> i64 {
        self.issued_at + CREDENTIAL_LIFETIME_MS
    }

    /// Whether WeChat would deliver with it at `now`.
    pub fn accepts(&self, now: i64) -> bool {
        now < self.expires_at() && now >= self.usable_from && self.uses_left > 0
    }
}

/// What paid for a subscribe delivery: a one-time grant (`grant:`) or a
/// long-term subscription (`long_term:`), followed by `{openid}:{template}`.
pub fn subscribe_payer(long_term: bool, openid: &str, template_id: &str) -> String {
    let kind = if long_term { "long_term" } else { "grant" };
    format!("{kind}:{openid}:{template_id}")
}

/// One user's standing with one subscribe template, as WeChat keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrueSubscription {
    /// One-time grants left.
    pub grants: u32,
    /// Whether a long-term subscription is on.
    pub long_term: bool,
    /// Every accept of a prompt (one-time: +1 each), WeChat's clock.
    pub accepted: u32,
    /// Grants dropped by the user's revocations.
    pub zeroed: u32,
    /// WeChat's clock at each revocation.
    pub revoked_at: Vec<i64>,
    /// WeChat's clock at each accept.
    pub accepted_at: Vec<i64>,
}

/// One notification WeChat delivered.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message id the gateway put in the template data.
    pub message_id: String,
    /// The credential's value (template sends), or [`subscribe_payer`].
    pub credential: String,
    /// WeChat's clock.
    pub at: i64,
    /// The instance whose call it was.
    pub caller: String,
}

/// Which endpoint issued a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `cgi-bin/token`.
    Token,
    /// `cgi-bin/stable_token`.
    Stable,
}

#[derive(Debug)]
struct TrueToken {
    appid: String,
    endpoint: Endpoint,
    expires_at: i64,
    revoked_at: Option<i64>,
    /// Whether a fetch of the gateway's was answered with it.
    to_gateway: bool,
}

impl TrueToken {
    fn works(&self, now: i64) -> bool {
        now < self.expires_at && self.revoked_at.is_none_or(|at| now < at)
    }
}

/// An app's stable tokens, as WeChat keeps them.
#[derive(Debug, Default)]
struct StableTokens {
    /// What a normal-mode call answers while it has more than 5 minutes left.
    current: Option<String>,
    /// The China day of `forced` and the forced calls made on it.
    force_day: i64,
    forced: u32,
    /// WeChat's clock at the last forced call.
    last_forced_at: Option<i64>,
}

/// How another server of the app retires its current token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// stable_token with `force_refresh=true`: the previous stable tokens die
    /// at once; a normal-mode call then answers the other server's new one.
    ForceRefresh,
    /// Two `cgi-bin/token` fetches in a row: the first makes the gateway's
    /// token the previous one (and kills anything older), the second kills it.
    TwoFetches,
    /// The AppSecret is reset: every `cgi-bin/token` token of the app dies at
    /// once (the gateway's configuration holds the new secret).
    SecretReset,
}

impl Invalidation {
    /// The counter's name.
    pub fn name(self) -> &'static str {
        match self {
            Invalidation::ForceRefresh => "tokens: another server forced a stable_token refresh",
            Invalidation::TwoFetches => "tokens: another server fetched cgi-bin/token twice",
            Invalidation::SecretReset => "tokens: the AppSecret was reset",
        }
    }
}

/// When an armed invalidation strikes, relative to the gateway's next fetch
/// that WeChat answers with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Around {
    /// After WeChat processed the fetch, before its answer reaches the
    /// gateway: the gateway receives a token that is already dead.
    During,
    /// This long after WeChat processed it (0: right after).
    After { delay_ms: u64 },
    /// This long after a fetch that left an earlier token working (the
    /// 5-minute overlap of `cgi-bin/token`, or a stable rotation's): the
    /// token in its overlap dies with the new one.
    InOverlap { delay_ms: u64 },
}

impl Around {
    /// The counter's name.
    pub fn name(self) -> &'static str {
        match self {
            Around::During => "tokens: invalidated during a fetch of the gateway's",
            Around::After { .. } => "tokens: invalidated right after a fetch of the gateway's",
            Around::InOverlap { .. } => "tokens: invalidated during a 5-minute overlap",
        }
    }
}

/// What WeChat knows of the gateway's token fetches, for the invariants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenTruth {
    /// Fetches of the gateway's whose answer, carrying a token, reached it.
    pub received: u64,
    /// Fetches of the gateway's that WeChat answered with a token which
    /// never reached it (the answer lost on the wire, or its caller dead).
    pub lost: u64,
    /// Invalidations by another server that retired a token a fetch of the
    /// gateway's had been answered with, while it still worked.
    pub invalidations: u64,
    /// The most calls one instance started with one token after WeChat had
    /// answered it a rejection of that token.
    pub calls_after_rejection: u64,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    faults_on: bool,
    credentials: BTreeMap<String, TrueCredential>,
    tokens: BTreeMap<String, TrueToken>,
    /// Per app, the `cgi-bin/token` tokens that may still work, oldest first.
    live_tokens: BTreeMap<String, Vec<String>>,
    /// Per app, its stable tokens.
    stable: BTreeMap<String, StableTokens>,
    /// Invalidations waiting for the gateway's next fetch, in arming order.
    armed: Vec<(String, Invalidation, Around)>,
    /// Per (instance, token) that WeChat answered a rejection to, the calls
    /// the instance started with the token afterwards.
    rejected_to: BTreeMap<(String, String), u64>,
    token_truth: TokenTruth,
    token_seq: u64,
    deliveries: Vec<Delivery>,
    /// Every errcode WeChat answered (processed calls only), per credential.
    answers: BTreeMap<String, BTreeSet<i64>>,
    /// Subscribe grants and subscriptions by (appid, openid, template).
    subscriptions: BTreeMap<(String, String, String), TrueSubscription>,
    msgid_seq: u64,
    counts: Counts,
}

/// The WeChat of one run, shared by every instance.
#[derive(Debug)]
pub struct WeChatModel {
    base: TimeBase,
    setup: WeChatSetup,
    trace: Arc<Trace>,
    state: Mutex<State>,
}

/// What a call will meet, drawn when it starts.
#[derive(Debug, Clone, Copy)]
struct Plan {
    fault: Option<Fault>,
    there_ms: u64,
    back_ms: u64,
}

impl WeChatModel {
    pub fn new(base: TimeBase, setup: WeChatSetup, trace: Arc<Trace>) -> Self {
        let rng = StdRng::seed_from_u64(setup.seed ^ 0x5745_4348_4154);
        Self {
            base,
            setup,
            trace,
            state: Mutex::new(State {
                rng,
                faults_on: true,
                credentials: BTreeMap::new(),
                tokens: BTreeMap::new(),
                live_tokens: BTreeMap::new(),
                stable: BTreeMap::new(),
                armed: Vec::new(),
                rejected_to: BTreeMap::new(),
                token_truth: TokenTruth::default(),
                token_seq: 0,
                deliveries: Vec::new(),
                answers: BTreeMap::new(),
                subscriptions: BTreeMap::new(),
                msgid_seq: 0,
                counts: Counts::new(),
            }),
        }
    }

    /// WeChat's clock.
    pub fn now_ms(&self) -> i64 {
        self.base.now_ms()
    }

    /// Stops (or resumes) injecting faults: quiescence.
    pub fn set_faults(&self, on: bool) {
        self.lock().faults_on = on;
    }

    /// WeChat issues a credential (a form submit or a payment) at `issued_at`.
    pub fn issue(&self, value: &str, credential: TrueCredential) {
        self.lock().credentials.insert(value.to_owned(), credential);
    }

    /// The user accepts a prompt for `template_id`: one more one-time grant,
    /// or (`long_term`) the subscription switched on.
    pub fn accept(&self, appid: &str, openid: &str, template_id: &str, long_term: bool) {
        let now = self.now_ms();
        let mut state = self.lock();
        let entry = state
            .subscriptions
            .entry((appid.to_owned(), openid.to_owned(), template_id.to_owned()))
            .or_default();
        entry.accepted_at.push(now);
        entry.accepted += 1;
        if long_term {
            entry.long_term = true;
        } else {
            entry.grants += 1;
        }
    }

    /// The user turns the template off (a change event's reject): one-time
    /// grants zeroed, the long-term subscription off.
    pub fn revoke(&self, appid: &str, openid: &str, template_id: &str) {
        let now = self.now_ms();
        let mut state = self.lock();
        let entry = state
            .subscriptions
            .entry((appid.to_owned(), openid.to_owned(), template_id.to_owned()))
            .or_default();
        entry.zeroed += entry.grants;
        entry.grants = 0;
        entry.long_term = false;
        entry.revoked_at.push(now);
    }

    /// Every user's standing per subscribe template, by (appid, openid, template).
    pub fn subscriptions(&self) -> BTreeMap<(String, String, String), TrueSubscription> {
        self.lock().subscriptions.clone()
    }

    /// Every credential WeChat issued, by value.
    pub fn credentials(&self) -> BTreeMap<String, TrueCredential> {
        self.lock().credentials.clone()
    }

    /// Every delivery, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.clone()
    }

    /// The errcodes WeChat answered for each credential.
    pub fn answers(&self) -> BTreeMap<String, BTreeSet<i64>> {
        self.lock().answers.clone()
    }

    /// Faults injected and answers given, by kind.
    pub fn counts(&self) -> Counts {
        self.lock().counts.clone()
    }

    /// A handle for one instance: its calls are traced under its name.
    pub fn handle(self: &Arc<Self>, instance: &str) -> Arc<WeChatHandle> {
        Arc::new(WeChatHandle {
            model: self.clone(),
            instance: instance.to_owned(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("wechat model lock")
    }

    /// What a token call will meet: its fault roll (past every fault while
    /// faults are off), and its latency there and back.
    fn roll_token_call(&self) -> (u32, u64, u64) {
        let mut state = self.lock();
        let (low, high) = self.setup.latency_ms;
        let roll = if state.faults_on {
            state.rng.gen_range(0..1000u32)
        } else {
            u32::MAX
        };
        (
            roll,
            state.rng.gen_range(low..=high),
            state.rng.gen_range(low..=high),
        )
    }

    fn count(&self, name: &'static str) {
        *self.lock().counts.entry(name).or_default() += 1;
    }

    /// Draws what a send will meet.
    fn plan(&self) -> Plan {
        let mut state = self.lock();
        let (low, high) = self.setup.latency_ms;
        let there_ms = state.rng.gen_range(low..=high);
        let back_ms = state.rng.gen_range(low..=high);
        let mut fault = None;
        if state.faults_on {
            let roll = state.rng.gen_range(0..1000u32);
            let mut edge = 0;
            for (candidate, rate) in &self.setup.rates.send {
                edge += rate;
                if roll < edge {
                    fault = Some(*candidate);
                    break;
                }
            }
        }
        if let Some(fault) = fault {
            *state.counts.entry(fault.name()).or_default() += 1;
        }
        Plan {
            fault,
            there_ms,
            back_ms,
        }
    }

    /// The app a token belongs to, or the errcode WeChat refuses it with.
    fn token_app(state: &State, token: &str, now: i64) -> Result<String, i64> {
        match state.tokens.get(token) {
            None => Err(40014),
            Some(t) if t.revoked_at.is_some_and(|at| now >= at) => Err(40001),
            Some(t) if now >= t.expires_at => Err(42001),
            Some(t) => Ok(t.appid.clone()),
        }
    }

    /// WeChat's side of a subscribe send: checks the token, then the user's
    /// long-term subscription or one-time grants of the template, and
    /// delivers. Returns the errcode and the msgid of a delivery.
    fn process_subscribe(&self, token: &str, body: &Value, caller: &str) -> (i64, Option<String>) {
        let now = self.now_ms();
        let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("");
        let touser = field("touser").to_owned();
        let template_id = field("template_id").to_owned();
        let message_id = body
            .pointer("/data/message/value")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let well_formed = body.get("form_id").is_none()
            && body.get("miniprogram_state").is_some()
            && body.get("lang").is_some();
        let mut state = self.lock();
        let mut payer = None;
        let errcode = match Self::token_app(&state, token, now) {
            Err(errcode) => errcode,
            // The gateway must not send what the subscribe API refuses.
            Ok(_) if !well_formed => 47003,
            Ok(appid) => {
                match state
                    .subscriptions
                    .get_mut(&(appid, touser.clone(), template_id.clone()))
                {
                    Some(s) if s.long_term => {
                        payer = Some(subscribe_payer(true, &touser, &template_id));
                        0
                    }
                    Some(s) if s.grants > 0 => {
                        s.grants -= 1;
                        payer = Some(subscribe_payer(false, &touser, &template_id));
                        0
                    }
                    _ => 43101,
                }
            }
        };
        let msgid = payer.as_ref().map(|_| {
            state.msgid_seq += 1;
            (1_700_000_000_000_000_000u64 + state.msgid_seq).to_string()
        });
        if let Some(payer) = &payer {
            state.deliveries.push(Delivery {
                message_id: message_id.clone(),
                credential: payer.clone(),
                at: now,
                caller: caller.to_owned(),
            });
        }
        let name = match errcode {
            0 => "answer: 0 delivered (subscribe)",
            43101 => "answer: 43101 no grant (subscribe)",
            47003 => "answer: 47003 malformed subscribe body",
            _ => "answer: token rejected",
        };
        *state.counts.entry(name).or_default() += 1;
        drop(state);
        self.trace.record(
            "wechat",
            format!(
                "processed subscribe {message_id} ({touser}, {template_id}) from {caller}: errcode {errcode}{}",
                payer.map_or(String::new(), |p| format!(" paid by {p}"))
            ),
        );
        (errcode, msgid)
    }

    /// WeChat's side of a send: checks the token and the credential, and
    /// delivers. Returns the errcode.
    fn process(&self, token: &str, body: &Value, caller: &str) -> i64 {
        let now = self.now_ms();
        let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("");
        let form_id = field("form_id").to_owned();
        let touser = field("touser").to_owned();
        let message_id = body
            .pointer("/data/message/value")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mut state = self.lock();
        let errcode = match Self::token_app(&state, token, now) {
            Err(errcode) => errcode,
            Ok(appid) => match state.credentials.get_mut(&form_id) {
                None => 41028,
                Some(c) if c.appid != appid || c.openid != touser => 41028,
                Some(c) if now >= c.expires_at() || now < c.usable_from => 41028,
                Some(c) if c.uses_left == 0 => 41029,
                Some(c) => {
                    c.uses_left -= 1;
                    0
                }
            },
        };
        if errcode == 0 {
            state.deliveries.push(Delivery {
                message_id: message_id.clone(),
                credential: form_id.clone(),
                at: now,
                caller: caller.to_owned(),
            });
        }
        let name = match errcode {
            0 => "answer: 0 delivered",
            41028 => "answer: 41028 invalid or expired",
            41029 => "answer: 41029 used up",
            _ => "answer: token rejected",
        };
        *state.counts.entry(name).or_default() += 1;
        if !form_id.is_empty() {
            state
                .answers
                .entry(form_id.clone())
                .or_default()
                .insert(errcode);
        }
        drop(state);
        self.trace.record(
            "wechat",
            format!("processed {message_id} with {form_id} from {caller}: errcode {errcode}"),
        );
        errcode
    }

    /// A new token of `endpoint`, living `token_expires_in` from `now`.
    fn new_token(&self, state: &mut State, appid: &str, endpoint: Endpoint, now: i64) -> String {
        state.token_seq += 1;
        let prefix = match endpoint {
            Endpoint::Token => "tok",
            Endpoint::Stable => "stb",
        };
        let token = format!("{prefix}-{appid}-{}", state.token_seq);
        state.tokens.insert(
            token.clone(),
            TrueToken {
                appid: appid.to_owned(),
                endpoint,
                expires_at: now + self.setup.token_expires_in * 1000,
                revoked_at: None,
                to_gateway: false,
            },
        );
        token
    }

    /// Makes `token` stop working at `at`, or earlier if it already does.
    fn revoke_token(state: &mut State, token: &str, at: i64) {
        if let Some(t) = state.tokens.get_mut(token) {
            t.revoked_at = Some(t.revoked_at.map_or(at, |earlier| earlier.min(at)));
        }
    }

    /// `cgi-bin/token`: a new token; the previous one keeps working for 5
    /// minutes (or until its own expiry), anything older stops at once.
    /// Also says whether an earlier token is left working (in its overlap).
    fn cgi_token(&self, state: &mut State, appid: &str, now: i64) -> (String, bool) {
        let previous = state.live_tokens.remove(appid).unwrap_or_default();
        let mut keep = Vec::new();
        if let Some((last, older)) = previous.split_last() {
            for old in older {
                Self::revoke_token(state, old, now);
            }
            let until = state
                .tokens
                .get(last)
                .map_or(now, |t| t.expires_at.min(now + TOKEN_OVERLAP_MS));
            Self::revoke_token(state, last, until);
            if state.tokens.get(last).is_some_and(|t| t.works(now)) {
                keep.push(last.clone());
            }
        }
        let overlap = !keep.is_empty();
        let token = self.new_token(state, appid, Endpoint::Token, now);
        keep.push(token.clone());
        state.live_tokens.insert(appid.to_owned(), keep);
        (token, overlap)
    }

    /// `stable_token`: the current stable token while it has more than 5
    /// minutes left, else a new one (the old one working until its own
    /// expiry); forced, a new one that retires every earlier one at once —
    /// unless the last forced refresh was under 30 s ago (the current token
    /// unchanged) or the day's 20 forced calls are spent (45009). Answers
    /// the token, its remaining lifetime in seconds and whether an earlier
    /// token is left working.
    fn stable_token(
        &self,
        state: &mut State,
        appid: &str,
        now: i64,
        force: bool,
    ) -> Result<(String, i64, bool), i64> {
        let current = state
            .stable
            .get(appid)
            .and_then(|s| s.current.clone())
            .filter(|t| state.tokens.get(t).is_some_and(|t| t.works(now)));
        let left = |state: &State, token: &str| {
            state
                .tokens
                .get(token)
                .map_or(0, |t| (t.expires_at - now) / 1000)
        };
        if force {
            let day = (now + 8 * 3_600_000).div_euclid(DAY_MS);
            let entry = state.stable.entry(appid.to_owned()).or_default();
            if entry.force_day != day {
                entry.force_day = day;
                entry.forced = 0;
            }
            if entry.forced >= FORCE_REFRESHES_PER_DAY {
                return Err(45009);
            }
            entry.forced += 1;
            let spaced = entry
                .last_forced_at
                .is_none_or(|at| now - at >= FORCE_REFRESH_SPACING_MS);
            match current {
                Some(token) if !spaced => {
                    let secs = left(state, &token);
                    return Ok((token, secs, false));
                }
                _ => {
                    entry.last_forced_at = Some(now);
                    let earlier: Vec<String> = state
                        .tokens
                        .iter()
                        .filter(|(_, t)| t.appid == appid && t.endpoint == Endpoint::Stable)
                        .map(|(token, _)| token.clone())
                        .collect();
                    for token in earlier {
                        Self::revoke_token(state, &token, now);
                    }
                    let token = self.new_token(state, appid, Endpoint::Stable, now);
                    state.stable.entry(appid.to_owned()).or_default().current = Some(token.clone());
                    return Ok((token, self.setup.token_expires_in, false));
                }
            }
        }
        match current {
            Some(token)
                if state
                    .tokens
                    .get(&token)
                    .is_some_and(|t| t.expires_at - now > TOKEN_OVERLAP_MS) =>
            {
                let secs = left(state, &token);
                Ok((token, secs, false))
            }
            rotated => {
                let token = self.new_token(state, appid, Endpoint::Stable, now);
                state.stable.entry(appid.to_owned()).or_default().current = Some(token.clone());
                Ok((token, self.setup.token_expires_in, rotated.is_some()))
            }
        }
    }

    /// WeChat's side of a fetch of the gateway's: the endpoint of `mode`
    /// answers. The reply, and whether an earlier token is left working in
    /// its overlap.
    fn serve_token(&self, appid: &str, mode: TokenMode, force_refresh: bool) -> (TokenReply, bool) {
        let now = self.now_ms();
        let mut state = self.lock();
        let answer = match mode {
            TokenMode::Token => {
                let (token, overlap) = self.cgi_token(&mut state, appid, now);
                Ok((token, self.setup.token_expires_in, overlap))
            }
            TokenMode::StableToken => self.stable_token(&mut state, appid, now, force_refresh),
        };
        match answer {
            Ok((token, expires_in_secs, overlap)) => {
                if let Some(t) = state.tokens.get_mut(&token) {
                    t.to_gateway = true;
                }
                *state.counts.entry("token: issued").or_default() += 1;
                (
                    TokenReply::Issued(IssuedToken {
                        token,
                        expires_in_secs,
                    }),
                    overlap,
                )
            }
            Err(errcode) => {
                *state
                    .counts
                    .entry("token: 45009 forced refreshes spent")
                    .or_default() += 1;
                (
                    TokenReply::Refused(Reply {
                        errcode,
                        errmsg: "reach max api daily quota limit".into(),
                        msgid: None,
                    }),
                    false,
                )
            }
        }
    }

    /// Another server of the app retires its current token now, as `how`
    /// says. Returns whether a token that a fetch of the gateway's was
    /// answered with stopped working (only those count as invalidations).
    pub fn invalidate(&self, appid: &str, how: Invalidation) -> bool {
        let now = self.now_ms();
        let mut state = self.lock();
        let working: Vec<String> = state
            .tokens
            .iter()
            .filter(|(_, t)| t.appid == appid && t.to_gateway && t.works(now))
            .map(|(token, _)| token.clone())
            .collect();
        match how {
            Invalidation::ForceRefresh => {
                let _ = self.stable_token(&mut state, appid, now, true);
            }
            Invalidation::TwoFetches => {
                self.cgi_token(&mut state, appid, now);
                self.cgi_token(&mut state, appid, now);
            }
            Invalidation::SecretReset => {
                for token in state.live_tokens.remove(appid).unwrap_or_default() {
                    Self::revoke_token(&mut state, &token, now);
                }
            }
        }
        let killed: Vec<String> = working
            .into_iter()
            .filter(|token| state.tokens.get(token).is_some_and(|t| !t.works(now)))
            .collect();
        let effective = !killed.is_empty();
        if effective {
            state.token_truth.invalidations += 1;
            *state.counts.entry(how.name()).or_default() += 1;
        } else {
            *state
                .counts
                .entry("tokens: another server's call retired none of the gateway's")
                .or_default() += 1;
        }
        drop(state);
        self.trace.record(
            "other",
            format!(
                "{how:?}: {}",
                if effective {
                    format!("retired {}", killed.join(", "))
                } else {
                    "no token of the gateway's retired".to_owned()
                }
            ),
        );
        effective
    }

    /// Arms an invalidation to strike around the gateway's next fetch of a
    /// token for `appid` (the next one that leaves an earlier token working,
    /// for [`Around::InOverlap`]).
    pub fn arm(&self, appid: &str, how: Invalidation, around: Around) {
        self.lock().armed.push((appid.to_owned(), how, around));
        self.trace
            .record("other", format!("armed {how:?} {around:?}"));
    }

    /// The armed invalidations a fetch of the gateway's answered with a
    /// token sets off, in arming order.
    fn triggered(&self, appid: &str, overlap: bool) -> Vec<(Invalidation, Around)> {
        let mut state = self.lock();
        let mut fired = Vec::new();
        state.armed.retain(|(armed_for, how, around)| {
            let fires =
                armed_for == appid && (overlap || !matches!(around, Around::InOverlap { .. }));
            if fires {
                fired.push((*how, *around));
            }
            !fires
        });
        for (_, around) in &fired {
            *state.counts.entry(around.name()).or_default() += 1;
        }
        fired
    }

    /// What WeChat knows of the gateway's token fetches.
    pub fn token_truth(&self) -> TokenTruth {
        self.lock().token_truth
    }

    /// A call of `caller`'s with `token` starts: counted when WeChat had
    /// already answered `caller` a rejection of `token`.
    fn call_starts(&self, caller: &str, token: &str) {
        let mut state = self.lock();
        if let Some(calls) = state
            .rejected_to
            .get_mut(&(caller.to_owned(), token.to_owned()))
        {
            *calls += 1;
            let calls = *calls;
            let truth = &mut state.token_truth;
            truth.calls_after_rejection = truth.calls_after_rejection.max(calls);
            *state
                .counts
                .entry("answer: a call with a token already rejected to its caller")
                .or_default() += 1;
        }
    }

    /// An answer reaches `caller`: a token errcode tells it `token` is dead.
    fn answer_arrives(&self, caller: &str, token: &str, errcode: i64) {
        if matches!(errcode, 40001 | 40014 | 42001) {
            self.lock()
                .rejected_to
                .entry((caller.to_owned(), token.to_owned()))
                .or_default();
        }
    }
}

/// A token answer on its way back to the gateway: counted as received when
/// it arrives, as lost when the call is dropped first (its caller crashed).
struct InFlightToken<'a> {
    model: &'a WeChatModel,
    arrived: bool,
}

impl Drop for InFlightToken<'_> {
    fn drop(&mut self) {
        let mut state = self.model.lock();
        if self.arrived {
            state.token_truth.received += 1;
        } else {
            state.token_truth.lost += 1;
        }
    }
}

/// Another server's retirements armed by the token the gateway was just
/// issued: one strikes now, while the answer is on its way back; the others
/// after the answer arrives or inside the overlap the fetch left, each on
/// its own task, whatever becomes of the gateway's call.
fn arm_invalidations(model: &Arc<WeChatModel>, appid: &str, overlap: bool, back: u64) {
    for (how, around) in model.triggered(appid, overlap) {
        // "After" counts from the answer's arrival at the gateway.
        let delay_ms = match around {
            Around::During => {
                model.invalidate(appid, how);
                continue;
            }
            Around::After { delay_ms } => back + delay_ms,
            Around::InOverlap { delay_ms } => delay_ms,
        };
        let model = model.clone();
        let appid = appid.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            model.invalidate(&appid, how);
        });
    }
}

/// One instance's view of WeChat: the model, with its calls traced under
/// the instance's name.
#[derive(Debug)]
pub struct WeChatHandle {
    model: Arc<WeChatModel>,
    instance: String,
}

#[async_trait::async_trait]
impl WeChatApi for WeChatHandle {
    async fn fetch_token(
        &self,
        appid: &str,
        _secret: &SecretString,
        mode: TokenMode,
        force_refresh: bool,
    ) -> Result<TokenReply, CallError> {
        let model = &self.model;
        let (roll, there, back) = model.roll_token_call();
        let rates = &model.setup.rates;
        let lost_before = rates.token_lost_before;
        let lost_after = lost_before + rates.token_lost_after;
        let busy = lost_after + rates.token_busy;
        let endpoint = match (mode, force_refresh) {
            (TokenMode::Token, _) => "cgi-bin/token",
            (TokenMode::StableToken, false) => "stable_token",
            (TokenMode::StableToken, true) => "stable_token (force_refresh)",
        };
        tokio::time::sleep(Duration::from_millis(there)).await;
        let mut in_flight = None;
        let (answer, note) = if roll < lost_before {
            model.count("token: lost before processing");
            (
                Err(CallError::NotSent("connect refused".into())),
                "lost before".to_owned(),
            )
        } else if (lost_after..busy).contains(&roll) {
            model.count("token: -1 busy");
            (
                Ok(TokenReply::Refused(Reply {
                    errcode: -1,
                    errmsg: "system error".into(),
                    msgid: None,
                })),
                "-1".to_owned(),
            )
        } else {
            let (reply, overlap) = model.serve_token(appid, mode, force_refresh);
            let note = match &reply {
                TokenReply::Issued(issued) => {
                    in_flight = Some(InFlightToken {
                        model: model.as_ref(),
                        arrived: false,
                    });
                    format!("issued {} ({} s)", issued.token, issued.expires_in_secs)
                }
                TokenReply::Refused(refused) => format!("errcode {}", refused.errcode),
            };
            if matches!(reply, TokenReply::Issued(_)) {
                arm_invalidations(model, appid, overlap, back);
            }
            if roll < lost_after {
                model.count("token: issued, answer lost");
                (
                    Err(CallError::Ambiguous("HTTP 502".into())),
                    format!("{note} but the answer was lost"),
                )
            } else {
                (Ok(reply), note)
            }
        };
        tokio::time::sleep(Duration::from_millis(back)).await;
        if let Some(in_flight) = &mut in_flight {
            in_flight.arrived = answer.is_ok();
        }
        drop(in_flight);
        model
            .trace
            .record(&self.instance, format!("token fetch ({endpoint}): {note}"));
        answer
    }

    async fn send_template(&self, access_token: &str, body: &Value) -> Result<Reply, CallError> {
        self.call(false, access_token, body).await
    }

    /// `get_api_domain_ip`: answers whether the token works, after a round
    /// trip; it changes nothing at WeChat.
    async fn check_token(&self, access_token: &str) -> Result<Reply, CallError> {
        let model = &self.model;
        let plan = model.plan();
        model.call_starts(&self.instance, access_token);
        tokio::time::sleep(Duration::from_millis(plan.there_ms + plan.back_ms)).await;
        let errcode = {
            let state = model.lock();
            match WeChatModel::token_app(&state, access_token, model.base.now_ms()) {
                Ok(_) => 0,
                Err(errcode) => errcode,
            }
        };
        model.answer_arrives(&self.instance, access_token, errcode);
        model.count("token: checked");
        model
            .trace
            .record(&self.instance, format!("token check: errcode {errcode}"));
        Ok(Reply {
            errcode,
            errmsg: String::new(),
            msgid: None,
        })
    }

    async fn send_subscribe(&self, access_token: &str, body: &Value) -> Result<Reply, CallError> {
        self.call(true, access_token, body).await
    }

    /// Login is not modelled: sessions join the simulation through the
    /// storage (their posts credit their own openid), not through WeChat.
    async fn code_to_session(
        &self,
        _appid: &str,
        _secret: &SecretString,
        _code: &str,
    ) -> Result<formid_gateway::wechat::LoginReply, CallError> {
        Err(CallError::NotSent(
            "the simulation does not model jscode2session".into(),
        ))
    }

    /// The simulation exercises the send path and the token keeper; the
    /// template catalogue is not modelled, so its calls never leave.
    async fn manage_templates(
        &self,
        _access_token: &str,
        call: &formid_gateway::wechat::template_calls::TemplateCall,
    ) -> Result<Value, CallError> {
        Err(CallError::NotSent(format!(
            "the simulation does not model {}",
            call.name()
        )))
    }
}

impl WeChatHandle {
    /// A business call (`subscribe`: `message/subscribe/send`, else the
    /// template API) through the wire's faults.
    async fn call(
        &self,
        subscribe: bool,
        access_token: &str,
        body: &Value,
    ) -> Result<Reply, CallError> {
        let model = &self.model;
        let plan = model.plan();
        let message_id = body
            .pointer("/data/message/value")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let form_id = if subscribe {
            body.get("template_id")
                .and_then(Value::as_str)
                .unwrap_or("?")
        } else {
            body.get("form_id").and_then(Value::as_str).unwrap_or("?")
        };
        model.trace.record(
            &self.instance,
            format!(
                "call {message_id} with {form_id} and {access_token} ({})",
                plan.fault.map_or("no fault", Fault::name)
            ),
        );
        model.call_starts(&self.instance, access_token);
        let there = Duration::from_millis(plan.there_ms);
        let processed = matches!(
            plan.fault,
            None | Some(Fault::LostAfter) | Some(Fault::HangProcessed)
        );
        let answer =
            processed.then(|| self.process_on_its_own(subscribe, access_token, body, there));
        let result = self.answer_of(plan, answer).await;
        if let Ok(reply) = &result {
            model.answer_arrives(&self.instance, access_token, reply.errcode);
        }
        model.trace.record(
            &self.instance,
            format!(
                "answer for {message_id} with {form_id}: {}",
                match &result {
                    Ok(reply) => format!("errcode {}", reply.errcode),
                    Err(CallError::NotSent(_)) => "not sent".into(),
                    Err(CallError::Ambiguous(detail)) => format!("ambiguous ({detail})"),
                }
            ),
        );
        result
    }

    /// WeChat's side of a call that reaches it, `there` after it left. It
    /// runs on its own: a caller that dies meanwhile does not stop it.
    fn process_on_its_own(
        &self,
        subscribe: bool,
        access_token: &str,
        body: &Value,
        there: Duration,
    ) -> tokio::sync::oneshot::Receiver<(i64, Option<String>)> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let model = self.model.clone();
        let token = access_token.to_owned();
        let body = body.clone();
        let caller = self.instance.clone();
        tokio::spawn(async move {
            tokio::time::sleep(there).await;
            let answer = if subscribe {
                model.process_subscribe(&token, &body, &caller)
            } else {
                (model.process(&token, &body, &caller), None)
            };
            let _ = reply.send(answer);
        });
        answer
    }

    /// What the caller gets back under the call's planned fault.
    async fn answer_of(
        &self,
        plan: Plan,
        answer: Option<tokio::sync::oneshot::Receiver<(i64, Option<String>)>>,
    ) -> Result<Reply, CallError> {
        let there = Duration::from_millis(plan.there_ms);
        let round_trip = Duration::from_millis(plan.there_ms + plan.back_ms);
        match plan.fault {
            Some(Fault::LostBeforeNotSent) => {
                tokio::time::sleep(there).await;
                Err(CallError::NotSent("connect refused".into()))
            }
            Some(Fault::LostBeforeAmbiguous) => {
                tokio::time::sleep(round_trip).await;
                Err(CallError::Ambiguous("HTTP 502 from a proxy".into()))
            }
            Some(Fault::Busy) => {
                tokio::time::sleep(round_trip).await;
                Ok(Reply {
                    errcode: -1,
                    errmsg: "system error".into(),
                    msgid: None,
                })
            }
            Some(Fault::DailyQuota) => {
                tokio::time::sleep(round_trip).await;
                Ok(Reply {
                    errcode: 45009,
                    errmsg: "reach max api daily quota limit".into(),
                    msgid: None,
                })
            }
            Some(Fault::HangUnprocessed) | Some(Fault::HangProcessed) => {
                tokio::time::sleep(self.model.setup.request_timeout).await;
                Err(CallError::Ambiguous("timed out".into()))
            }
            Some(Fault::LostAfter) | None => {
                let (errcode, msgid) = match answer {
                    Some(answer) => answer.await.expect("WeChat's side always answers"),
                    None => unreachable!("a processed call has an answer"),
                };
                tokio::time::sleep(Duration::from_millis(plan.back_ms)).await;
                if plan.fault == Some(Fault::LostAfter) {
                    Err(CallError::Ambiguous("HTTP 502 after processing".into()))
                } else {
                    Ok(Reply {
                        errcode,
                        errmsg: String::new(),
                        msgid,
                    })
                }
            }
        }
    }
}
