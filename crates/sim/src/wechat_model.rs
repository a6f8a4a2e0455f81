//! WeChat as the simulation sees it: the truth about every credential and
//! token, every delivery, and the faults of the wire between the gateway and
//! WeChat, all drawn from one seeded generator.
//!
//! The semantics follow `/work/shared/reference/wechat-api.md` and the fake
//! in `crates/fake-wechat` (`state.rs`): a form_id allows 1 send and a
//! prepay_id 3, both for 7 days from their TRUE issue (WeChat's own clock,
//! whatever the ledger was told); a used-up credential answers 41029, an
//! expired, unknown, foreign or not yet synced one 41028; a `cgi-bin/token`
//! fetch keeps the previous token working for 5 more minutes and kills any
//! older one at once (40001), and a token past its lifetime answers 42001.
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
/// The previous `cgi-bin/token` token works this long after a new fetch (reference §1).
pub const TOKEN_OVERLAP_MS: i64 = 5 * 60_000;

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

#[derive(Debug)]
struct TrueToken {
    appid: String,
    expires_at: i64,
    revoked_at: Option<i64>,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    faults_on: bool,
    credentials: BTreeMap<String, TrueCredential>,
    tokens: BTreeMap<String, TrueToken>,
    /// Per app, the `cgi-bin/token` tokens that may still work, oldest first.
    live_tokens: BTreeMap<String, Vec<String>>,
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
        let errcode = match state.tokens.get(token) {
            None => 40014,
            Some(t) if t.revoked_at.is_some_and(|at| now >= at) => 40001,
            Some(t) if now >= t.expires_at => 42001,
            Some(t) => {
                let appid = t.appid.clone();
                match state.credentials.get_mut(&form_id) {
                    None => 41028,
                    Some(c) if c.appid != appid || c.openid != touser => 41028,
                    Some(c) if now >= c.expires_at() || now < c.usable_from => 41028,
                    Some(c) if c.uses_left == 0 => 41029,
                    Some(c) => {
                        c.uses_left -= 1;
                        0
                    }
                }
            }
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

    /// `cgi-bin/token`: a new token; the previous one keeps working for 5
    /// minutes (or until its own expiry), anything older stops at once.
    fn issue_token(&self, appid: &str) -> IssuedToken {
        let now = self.now_ms();
        let mut state = self.lock();
        state.token_seq += 1;
        let token = format!("tok-{appid}-{}", state.token_seq);
        let previous = state.live_tokens.remove(appid).unwrap_or_default();
        let mut keep = Vec::new();
        if let Some((last, older)) = previous.split_last() {
            for old in older {
                if let Some(t) = state.tokens.get_mut(old) {
                    t.revoked_at = Some(t.revoked_at.map_or(now, |at| at.min(now)));
                }
            }
            if let Some(t) = state.tokens.get_mut(last) {
                let until = t.expires_at.min(now + TOKEN_OVERLAP_MS);
                t.revoked_at = Some(t.revoked_at.map_or(until, |at| at.min(until)));
                if until > now {
                    keep.push(last.clone());
                }
            }
        }
        let expires_in = self.setup.token_expires_in;
        state.tokens.insert(
            token.clone(),
            TrueToken {
                appid: appid.to_owned(),
                expires_at: now + expires_in * 1000,
                revoked_at: None,
            },
        );
        keep.push(token.clone());
        state.live_tokens.insert(appid.to_owned(), keep);
        *state.counts.entry("token: issued").or_default() += 1;
        IssuedToken {
            token,
            expires_in_secs: expires_in,
        }
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
        _mode: TokenMode,
        _force_refresh: bool,
    ) -> Result<TokenReply, CallError> {
        let model = &self.model;
        let (roll, there, back) = {
            let mut state = model.lock();
            let (low, high) = model.setup.latency_ms;
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
        };
        let rates = &model.setup.rates;
        let lost_before = rates.token_lost_before;
        let lost_after = lost_before + rates.token_lost_after;
        let busy = lost_after + rates.token_busy;
        tokio::time::sleep(Duration::from_millis(there)).await;
        let (answer, note) = if roll < lost_before {
            model.count("token: lost before processing");
            (
                Err(CallError::NotSent("connect refused".into())),
                "lost before".to_owned(),
            )
        } else if roll < lost_after {
            model.count("token: issued, answer lost");
            let issued = model.issue_token(appid);
            (
                Err(CallError::Ambiguous("HTTP 502".into())),
                format!("issued {} but the answer was lost", issued.token),
            )
        } else if roll < busy {
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
            let issued = model.issue_token(appid);
            let note = format!("issued {}", issued.token);
            (Ok(TokenReply::Issued(issued)), note)
        };
        tokio::time::sleep(Duration::from_millis(back)).await;
        model
            .trace
            .record(&self.instance, format!("token fetch: {note}"));
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
        tokio::time::sleep(Duration::from_millis(plan.there_ms + plan.back_ms)).await;
        let errcode = {
            let state = model.lock();
            match WeChatModel::token_app(&state, access_token, model.base.now_ms()) {
                Ok(_) => 0,
                Err(errcode) => errcode,
            }
        };
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

    /// The simulation exercises the send path and the token keeper; the
    /// template catalogue is not modelled, so its calls never leave.
    async fn manage_templates(
        &self,
        _access_token: &str,
        call: &formid_gateway::wechat::templates::TemplateCall,
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
                "call {message_id} with {form_id} ({})",
                plan.fault.map_or("no fault", Fault::name)
            ),
        );
        let there = Duration::from_millis(plan.there_ms);
        let round_trip = Duration::from_millis(plan.there_ms + plan.back_ms);
        let processed = matches!(
            plan.fault,
            None | Some(Fault::LostAfter) | Some(Fault::HangProcessed)
        );
        // WeChat's side runs on its own: a caller that dies meanwhile does
        // not stop it.
        let answer = processed.then(|| {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let model = model.clone();
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
        });
        let result = match plan.fault {
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
                tokio::time::sleep(model.setup.request_timeout).await;
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
        };
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
}
