//! The promise, checked from WeChat's side once a run has quiesced.
//!
//! The ledger is read as a [`Snapshot`] (from the in-memory model, or by SQL
//! from a real database); WeChat's side is the model's record of every
//! delivery and every answer. Each check names the messages and credentials
//! it is about, so that a failing run can print their story.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use formid_gateway::config::TokenMode;
use formid_gateway::ledger::states::{AttemptOutcome, CredentialState, Delivery, MessageStatus};

use crate::ledger_model::LedgerModel;
use crate::wechat_model::{
    subscribe_payer, Delivery as WeChatDelivery, TokenTruth, TrueCredential, TrueSubscription,
    TOKEN_OVERLAP_MS,
};
use formid_gateway::ledger::webhooks::finish_event_id;

/// A credential as the ledger holds it.
#[derive(Debug, Clone)]
pub struct CredentialSnap {
    pub id: i64,
    pub openid: String,
    pub kind: String,
    pub value: String,
    pub uses_left: i64,
    pub unproven_uses: i64,
    pub state: CredentialState,
    pub retired_errcode: Option<i64>,
    /// The template of a subscribe grant or long-term ticket.
    pub template_id: Option<String>,
}

impl CredentialSnap {
    /// Whether the row is a one-time subscribe grant.
    pub fn is_grant(&self) -> bool {
        self.kind == "subscribe"
    }

    /// Whether the row is a ticket of a long-term subscription.
    pub fn is_ticket(&self) -> bool {
        self.kind == "long_term"
    }
}

/// A row of `subscriptions` as the ledger holds it.
#[derive(Debug, Clone)]
pub struct SubscriptionSnap {
    pub openid: String,
    pub template_id: String,
    pub long_term: bool,
}

/// One attempt as the ledger holds it.
#[derive(Debug, Clone)]
pub struct AttemptSnap {
    pub credential_id: Option<i64>,
    pub errcode: Option<i64>,
    pub outcome: AttemptOutcome,
}

/// A message as the ledger holds it.
#[derive(Debug, Clone)]
pub struct MessageSnap {
    pub id: String,
    pub touser: String,
    pub status: MessageStatus,
    pub delivery: Delivery,
    pub error_code: Option<String>,
    pub attempts: Vec<AttemptSnap>,
}

/// The ledger's rows that the invariants read.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub credentials: Vec<CredentialSnap>,
    pub messages: Vec<MessageSnap>,
    /// The users' subscriptions (subscribe workload).
    pub subscriptions: Vec<SubscriptionSnap>,
    /// The prompt results recorded, as (openid, request_id).
    pub prompts: BTreeSet<(String, String)>,
    /// The broadcast of the run, if it has one (the in-memory ledger's).
    pub broadcast: Option<crate::broadcast::JobSnap>,
}

impl Snapshot {
    /// Whether anything is still in flight or due: a pending, waiting or
    /// scheduled message, a leased credential.
    pub fn busy(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| {
                matches!(
                    m.status,
                    MessageStatus::Pending | MessageStatus::Waiting | MessageStatus::Scheduled
                )
            })
            .count()
            + self
                .credentials
                .iter()
                .filter(|c| c.state == CredentialState::Leased)
                .count()
            + self.broadcast.as_ref().map_or(0, |job| {
                job.recipients
                    .iter()
                    .filter(|r| {
                        matches!(
                            r.state,
                            formid_gateway::ledger::states::RecipientState::Queued
                                | formid_gateway::ledger::states::RecipientState::Leased
                        )
                    })
                    .count()
                    + usize::from(!job.finished)
            })
    }
}

/// Reads a ledger's rows.
#[async_trait]
pub trait LedgerView: Send + Sync {
    async fn snapshot(&self) -> anyhow::Result<Snapshot>;
}

#[async_trait]
impl LedgerView for LedgerModel {
    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(self.with_tables(|t| Snapshot {
            credentials: t
                .credentials
                .values()
                .map(|c| CredentialSnap {
                    id: c.id,
                    openid: c.openid.clone(),
                    kind: c.kind.clone(),
                    value: c.value.clone(),
                    uses_left: c.uses_left,
                    unproven_uses: c.unproven_uses,
                    state: c.state,
                    retired_errcode: c.retired_errcode,
                    template_id: c.template_id.clone(),
                })
                .collect(),
            subscriptions: t
                .subscriptions
                .iter()
                .map(|((_, openid, template_id), row)| SubscriptionSnap {
                    openid: openid.clone(),
                    template_id: template_id.clone(),
                    long_term: row.long_term,
                })
                .collect(),
            prompts: t
                .prompts
                .keys()
                .map(|(_, openid, request_id)| (openid.clone(), request_id.clone()))
                .collect(),
            messages: t.messages.values().map(|m| message_snap(t, m)).collect(),
            broadcast: t.broadcasts.get(crate::broadcast::JOB).map(|job| {
                crate::broadcast::JobSnap {
                    state: job.job.standing.state,
                    finished: job.job.finished_at.is_some(),
                    paused_until: job.job.paused_until,
                    recipients: t
                        .recipients
                        .range((crate::broadcast::JOB.to_owned(), i64::MIN)..)
                        .take_while(|((id, _), _)| id == crate::broadcast::JOB)
                        .map(|((_, seq), r)| crate::broadcast::RecipientSnap {
                            seq: *seq,
                            openid: r.openid.clone(),
                            state: r.state,
                            message_id: r.message_id.clone(),
                        })
                        .collect(),
                }
            }),
        }))
    }
}

/// One message of the model with its attempts, as the invariants see it.
fn message_snap(
    t: &crate::ledger_model::Tables,
    m: &crate::ledger_model::MessageRowModel,
) -> MessageSnap {
    MessageSnap {
        id: m.id.clone(),
        touser: m.touser.clone(),
        status: m.status,
        delivery: m.delivery,
        error_code: m.error_code.clone(),
        attempts: t
            .attempts
            .get(&m.id)
            .map(|attempts| {
                attempts
                    .iter()
                    .map(|a| AttemptSnap {
                        credential_id: a.credential_id,
                        errcode: a.errcode,
                        outcome: a.outcome,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// One broken promise, with what it is about.
#[derive(Debug, Clone)]
pub struct Violation {
    pub text: String,
    pub messages: Vec<String>,
    pub credentials: Vec<String>,
}

/// One accept of a prompt, as WeChat counted it.
#[derive(Debug, Clone)]
pub struct AcceptTruth {
    pub openid: String,
    pub template_id: String,
    pub request_id: String,
    /// WeChat's clock.
    pub at_ms: i64,
}

/// Fetches of the gateway's a run may answer with a token beyond the
/// natural ones, the invalidations and the lost answers: the first fetch of
/// a lease whose holder crashed between WeChat's answer and the store, a
/// ledger write that failed under a fetch, and the refresh-ahead pass that
/// clock skew (up to 15 s per instance) moves to the edge of a rotation. One
/// fetch per rejected send breaks it at the first invalidation that meets
/// a few sends in flight.
pub const SPARE_TOKEN_FETCHES: u64 = 2;

/// The app's tokens over a run, for the token invariants.
#[derive(Debug, Clone, Copy)]
pub struct TokenFacts {
    pub mode: TokenMode,
    /// How long the run lasted (true time), ms.
    pub run_ms: i64,
    /// The lifetime WeChat gives a new token, seconds.
    pub expires_in_secs: i64,
    /// `tokens.refresh_ahead` of the instances, ms.
    pub refresh_ahead_ms: i64,
    /// How many calls one instance may start with a token after WeChat
    /// rejected it to that instance: those of the runs that already held
    /// the token (one per call slot), each with its retries of a busy answer
    /// and its probes after a lost one.
    pub calls_after_rejection_bound: u64,
    /// What WeChat counted.
    pub truth: TokenTruth,
}

impl Default for TokenFacts {
    fn default() -> Self {
        Self {
            mode: TokenMode::Token,
            run_ms: 0,
            expires_in_secs: 7_200,
            refresh_ahead_ms: 900_000,
            calls_after_rejection_bound: 0,
            truth: TokenTruth::default(),
        }
    }
}

impl TokenFacts {
    /// The fetches a run needs with nobody else retiring the app's token:
    /// the first, then one per rotation. A token is replaced a lead before
    /// its expiry: `refresh_ahead` in cgi-bin/token mode, the 5 minutes
    /// before which stable_token answers no new one in stable_token mode,
    /// and never more than half its life (a lead as long as the life would
    /// replace a token the moment it came: a storm, not a lead).
    pub fn natural_fetches(&self) -> u64 {
        let lifetime = self.expires_in_secs * 1000;
        let lead = match self.mode {
            TokenMode::Token => self.refresh_ahead_ms.min(lifetime / 2),
            TokenMode::StableToken => TOKEN_OVERLAP_MS.min(lifetime / 2),
        };
        let period = (lifetime - lead).max(1);
        1 + (self.run_ms.max(0) / period) as u64
    }

    /// The most fetches answered with a token that the run may receive.
    pub fn fetch_bound(&self) -> u64 {
        self.natural_fetches() + self.truth.invalidations + self.truth.lost + SPARE_TOKEN_FETCHES
    }
}

/// What WeChat saw (and what the callers of sends were answered).
#[derive(Debug, Clone, Default)]
pub struct WeChatSide {
    pub credentials: BTreeMap<String, TrueCredential>,
    pub deliveries: Vec<WeChatDelivery>,
    pub answers: BTreeMap<String, BTreeSet<i64>>,
    /// Subscribe grants and subscriptions, by (appid, openid, template).
    pub subscriptions: BTreeMap<(String, String, String), TrueSubscription>,
    /// The subscribe templates, and whether each is long-term.
    pub long_term_templates: BTreeMap<String, bool>,
    /// Every accept WeChat counted.
    pub accepts: Vec<AcceptTruth>,
    /// The status each send's caller was answered, by message id (sends
    /// whose caller got no answer, because its instance crashed, are absent).
    pub told: BTreeMap<String, MessageStatus>,
    /// The app's tokens over the run.
    pub tokens: TokenFacts,
    /// The app's per-user send cap, if it has one.
    pub send_cap: Option<CapFacts>,
}

/// A per-user send cap, and how far the instances' clocks lie apart.
#[derive(Debug, Clone, Copy)]
pub struct CapFacts {
    pub limit: u32,
    pub window_ms: i64,
    /// The largest difference between two instances' clocks: the window
    /// is measured by the clocks of the instances that finish and admit
    /// sends, so it holds as `window_ms - skew_spread_ms` in true time.
    pub skew_spread_ms: i64,
}

/// Every invariant of the promise; an empty list when it held.
///
/// - no message delivered twice, unless it was `at_least_once`;
/// - every `sent` message delivered (exactly once when `at_most_once`),
///   every `failed` one never (when `at_most_once`), every `unknown` one at
///   most once; no delivery of a message the ledger does not know;
/// - no message left `pending` or `waiting`, no credential left `leased`;
/// - no credential used at WeChat more than its kind allows;
/// - for each credential, the uses the ledger counts as proven were
///   delivered, and every delivery is counted: `sends − uses_left −
///   unproven_uses ≤ deliveries ≤ sends − uses_left` (the upper bound is
///   waived for a retired credential: an inconclusive probe retires it
///   without counting the use its first call may have made, and a retired
///   credential is never spent again);
/// - no credential retired for an errcode WeChat never gave it (a
///   credential retired while WeChat would still accept it is lost);
/// - the token promise ([`check_tokens`]).
pub fn check(snapshot: &Snapshot, wechat: &WeChatSide) -> Vec<Violation> {
    let mut violations = Vec::new();
    let deliveries = Deliveries::of(wechat);
    check_messages(snapshot, wechat, &deliveries, &mut violations);
    for credential in &snapshot.credentials {
        check_credential(credential, wechat, &deliveries, &mut violations);
    }
    check_grants(snapshot, wechat, &mut violations);
    check_tokens(snapshot, wechat, &mut violations);
    check_send_cap(snapshot, wechat, &deliveries, &mut violations);
    if let Some(job) = &snapshot.broadcast {
        let by_recipient: BTreeMap<String, usize> = deliveries
            .by_message
            .iter()
            .map(|(id, delivered)| ((*id).to_owned(), delivered.len()))
            .collect();
        violations.extend(crate::broadcast::check(job, snapshot, &by_recipient));
    }
    violations
}

/// No user received more than the cap's `limit` messages in any window,
/// by WeChat's clock (less the instances' clock spread): a message counts
/// once, at its first delivery (an `at_least_once` repeat is the same
/// message).
fn check_send_cap(
    snapshot: &Snapshot,
    wechat: &WeChatSide,
    deliveries: &Deliveries<'_>,
    violations: &mut Vec<Violation>,
) {
    let Some(cap) = wechat.send_cap else {
        return;
    };
    let mut by_user: BTreeMap<&str, Vec<(i64, &str)>> = BTreeMap::new();
    for message in &snapshot.messages {
        let first = deliveries
            .of_message(&message.id)
            .iter()
            .map(|d| d.at)
            .min();
        if let Some(at) = first {
            by_user
                .entry(message.touser.as_str())
                .or_default()
                .push((at, message.id.as_str()));
        }
    }
    let window = cap.window_ms - cap.skew_spread_ms;
    let limit = cap.limit as usize;
    for (user, mut times) in by_user {
        times.sort_unstable();
        for pair in times.windows(limit + 1) {
            let (first, last) = (pair[0], pair[limit]);
            if last.0 - first.0 < window {
                let ids: Vec<&str> = pair.iter().map(|(_, id)| *id).collect();
                let text = format!(
                    "{user} received {} messages within {} ms, over a cap of {} per {} ms",
                    limit + 1,
                    last.0 - first.0,
                    cap.limit,
                    cap.window_ms
                );
                violation(violations, text, &ids, &[]);
            }
        }
    }
}

/// Records one violation naming its messages and credentials.
fn violation(
    violations: &mut Vec<Violation>,
    text: String,
    messages: &[&str],
    credentials: &[&str],
) {
    violations.push(Violation {
        text,
        messages: messages.iter().map(|m| (*m).to_owned()).collect(),
        credentials: credentials.iter().map(|c| (*c).to_owned()).collect(),
    });
}

/// WeChat's deliveries by message and by credential.
struct Deliveries<'a> {
    by_message: BTreeMap<&'a str, Vec<&'a WeChatDelivery>>,
    by_credential: BTreeMap<&'a str, usize>,
}

impl<'a> Deliveries<'a> {
    fn of(wechat: &'a WeChatSide) -> Self {
        let mut by_message: BTreeMap<&str, Vec<&WeChatDelivery>> = BTreeMap::new();
        let mut by_credential: BTreeMap<&str, usize> = BTreeMap::new();
        for delivery in &wechat.deliveries {
            by_message
                .entry(delivery.message_id.as_str())
                .or_default()
                .push(delivery);
            *by_credential
                .entry(delivery.credential.as_str())
                .or_default() += 1;
        }
        Self {
            by_message,
            by_credential,
        }
    }

    fn of_message(&self, id: &str) -> &[&'a WeChatDelivery] {
        self.by_message.get(id).map_or(&[][..], Vec::as_slice)
    }
}

/// Every delivery has its message; each message's end agrees with what
/// WeChat delivered; what callers were told agrees too.
fn check_messages(
    snapshot: &Snapshot,
    wechat: &WeChatSide,
    deliveries: &Deliveries<'_>,
    violations: &mut Vec<Violation>,
) {
    let messages: BTreeMap<&str, &MessageSnap> = snapshot
        .messages
        .iter()
        .map(|m| (m.id.as_str(), m))
        .collect();
    // A broadcast's deliveries are named by recipient and its messages
    // checked per recipient (`broadcast::check`).
    let of_broadcast = |id: &str| snapshot.broadcast.is_some() && id.starts_with("bc1-");
    for (id, delivered) in &deliveries.by_message {
        if !messages.contains_key(id) && !of_broadcast(id) {
            let credentials: Vec<&str> = delivered.iter().map(|d| d.credential.as_str()).collect();
            let text = format!("{id} was delivered but the ledger has no such message");
            violation(violations, text, &[id], &credentials);
        }
    }
    for message in &snapshot.messages {
        if crate::broadcast::recipient_key(&message.id).is_some() && snapshot.broadcast.is_some() {
            continue;
        }
        check_message(message, deliveries.of_message(&message.id), violations);
    }
    for (id, status) in &wechat.told {
        let count = deliveries.of_message(id).len();
        let at_most_once = messages
            .get(id.as_str())
            .is_none_or(|m| m.delivery == Delivery::AtMostOnce);
        let text = match status {
            MessageStatus::Sent if count == 0 => {
                format!("{id}: its caller was answered sent, but WeChat never delivered it")
            }
            MessageStatus::Failed if at_most_once && count > 0 => format!(
                "{id}: its caller was answered failed, but WeChat delivered it {count} time(s)"
            ),
            _ => continue,
        };
        violation(violations, text, &[id], &[]);
    }
}

/// One message's end against its deliveries.
fn check_message(
    message: &MessageSnap,
    delivered: &[&WeChatDelivery],
    violations: &mut Vec<Violation>,
) {
    let id = message.id.as_str();
    let credentials: Vec<&str> = delivered.iter().map(|d| d.credential.as_str()).collect();
    let count = delivered.len();
    let at_most_once = message.delivery == Delivery::AtMostOnce;
    if at_most_once && count > 1 {
        let text = format!(
            "{id} (at_most_once, {}) was delivered {count} times",
            message.status
        );
        violation(violations, text, &[id], &credentials);
    }
    let text = match message.status {
        MessageStatus::Pending | MessageStatus::Waiting => {
            format!("{id} is still {} after quiescence", message.status)
        }
        MessageStatus::Sent if count == 0 => format!("{id} is sent but WeChat never delivered it"),
        MessageStatus::Failed if at_most_once && count > 0 => format!(
            "{id} is failed ({}) but WeChat delivered it {count} time(s)",
            message.error_code.as_deref().unwrap_or("?")
        ),
        _ => return,
    };
    violation(violations, text, &[id], &credentials);
}

/// One form_id or prepay_id against WeChat's truth; grants and tickets are
/// checked per (user, template) in [`check_grants`].
fn check_credential(
    credential: &CredentialSnap,
    wechat: &WeChatSide,
    deliveries: &Deliveries<'_>,
    violations: &mut Vec<Violation>,
) {
    let value = credential.value.as_str();
    if credential.state == CredentialState::Leased {
        let text = format!("{value} is still leased after quiescence");
        violation(violations, text, &[], &[value]);
    }
    if credential.is_grant() || credential.is_ticket() {
        return;
    }
    let delivered = deliveries.by_credential.get(value).copied().unwrap_or(0) as i64;
    let Some(truth) = wechat.credentials.get(value) else {
        let text = format!("{value} is in the ledger but WeChat never issued it");
        violation(violations, text, &[], &[value]);
        return;
    };
    if truth.openid != credential.openid {
        let text = format!(
            "{value} is credited to {} in the ledger; WeChat issued it to {}",
            credential.openid, truth.openid
        );
        violation(violations, text, &[], &[value]);
    }
    let sends = i64::from(truth.max_uses);
    let counted = sends - credential.uses_left;
    let proven = counted - credential.unproven_uses;
    let mut texts = Vec::new();
    if delivered > sends {
        texts.push(format!(
            "{value} was used {delivered} times at WeChat; its kind allows {sends}"
        ));
    }
    if proven > delivered {
        texts.push(format!(
            "{value}: the ledger counts {proven} proven use(s) (sends {sends}, uses_left {}, unproven {}), WeChat delivered {delivered}",
            credential.uses_left, credential.unproven_uses
        ));
    }
    if credential.state != CredentialState::Retired && delivered > counted {
        texts.push(format!(
            "{value}: WeChat delivered {delivered} time(s), the ledger counts {counted} use(s) (uses_left {}, state {})",
            credential.uses_left, credential.state
        ));
    }
    if credential.state == CredentialState::Retired {
        let errcode = credential.retired_errcode.unwrap_or_default();
        let answered = wechat
            .answers
            .get(value)
            .is_some_and(|answers| answers.contains(&errcode));
        if !answered {
            texts.push(format!(
                "{value} was retired for errcode {errcode}, which WeChat never answered for it"
            ));
        }
    }
    for text in texts {
        violation(violations, text, &[], &[value]);
    }
}

/// The token promise. WeChat would always issue a token in the simulation
/// (every fault of a fetch is transient), so
///
/// - no message ends `failed` for a token (`token_rejected`,
///   `token_unavailable`), nor `unknown` for one (a `token_unavailable`
///   attempt, the one outcome that ends a probe for want of a token): a
///   message without a working token waits for one;
/// - the fetches answered with a token that reached the gateway are at most
///   [`TokenFacts::fetch_bound`]: the natural ones, one per invalidation by
///   another server, one per answer lost on the wire, and
///   [`SPARE_TOKEN_FETCHES`]. A rejection replaces a token once for every
///   send that meets it, and the refresher does not fetch again a token it
///   just fetched.
pub fn check_tokens(snapshot: &Snapshot, wechat: &WeChatSide, violations: &mut Vec<Violation>) {
    for message in &snapshot.messages {
        let code = message.error_code.as_deref().unwrap_or("");
        let token_code = matches!(code, "token_rejected" | "token_unavailable");
        // The one attempt that ends a message `unknown` for its token. A
        // `token_rejected` attempt never ends one: it may follow the end,
        // recorded by a run whose lease recovery took over (a call is a fact).
        let ended_by_token = message
            .attempts
            .iter()
            .any(|a| a.outcome == AttemptOutcome::TokenUnavailable);
        let why = match message.status {
            MessageStatus::Failed if token_code => format!("failed ({code})"),
            MessageStatus::Unknown if token_code || ended_by_token => {
                format!("unknown ({code}, a token_unavailable attempt)")
            }
            _ => continue,
        };
        violations.push(Violation {
            text: format!(
                "{} is {why} for its token, though WeChat would issue one",
                message.id
            ),
            messages: vec![message.id.clone()],
            credentials: Vec::new(),
        });
    }
    let tokens = &wechat.tokens;
    if tokens.truth.calls_after_rejection > tokens.calls_after_rejection_bound {
        violations.push(Violation {
            text: format!(
                "an instance called WeChat {} time(s) with a token WeChat had rejected to it (at most {} may have held it already): sends are fed a token known dead",
                tokens.truth.calls_after_rejection, tokens.calls_after_rejection_bound
            ),
            messages: Vec::new(),
            credentials: Vec::new(),
        });
    }
    let received = tokens.truth.received;
    if received > tokens.fetch_bound() {
        violations.push(Violation {
            text: format!(
                "the gateway received {received} token(s) from WeChat in {:.1} s ({:?}, tokens live {} s, refresh {} s ahead): more than {} natural + {} invalidated + {} lost + {SPARE_TOKEN_FETCHES} (a fetch storm)",
                tokens.run_ms as f64 / 1000.0,
                tokens.mode,
                tokens.expires_in_secs,
                tokens.refresh_ahead_ms / 1000,
                tokens.natural_fetches(),
                tokens.truth.invalidations,
                tokens.truth.lost,
            ),
            messages: Vec::new(),
            credentials: Vec::new(),
        });
    }
}

/// The subscribe invariants per (user, one-time template). With
///
/// - `A`: accepts WeChat counted; `Z`: grants WeChat dropped when the user
///   revoked; `D`: deliveries WeChat paid with a grant; `W = A − D − Z`:
///   the grants WeChat holds at the end;
/// - `P`: grants the ledger recorded; `Sp`, `Su`: grants it spent as proven
///   and as unproven uses; `X`: grants it retired for 43101; `L = P − Sp −
///   Su − X`: the grants it holds available at the end;
///
/// the checks are:
///
/// 1. `Sp ≤ D` — every proven use was a delivery — and `D ≤ Sp + Su` —
///    every delivery is counted (the legacy bounds, per template since
///    WeChat counts per template, not per grant);
/// 2. `P ≤ A`, and each recorded grant comes from an accept whose
///    request_id the ledger recorded once: a retried post never grants
///    twice;
/// 3. no phantom grants: `L ≤ W + (Z − X)` — the ledger may hold more than
///    WeChat only by grants the user revoked that no 43101 has retired yet
///    (unproven uses only ever make `L` smaller). With 1 and 2 this is
///    `W − L = (A − P) + (Su − (D − Sp)) + (X − Z) ≥ X − Z`;
/// 4. no grant silently dropped: `X ≤ Z` — a 43101 retires only grants
///    WeChat no longer holds, so that what the ledger lacks (`W − L`) is
///    only accepts never posted (`A − P`) and unproven uses WeChat did not
///    make (`Su − (D − Sp)`);
///
/// and per (user, long-term template): when WeChat's subscription is on and
/// an accept since the user's last revocation was recorded, the ledger's is
/// on too (a subscription is never dropped).
fn check_grants(snapshot: &Snapshot, wechat: &WeChatSide, violations: &mut Vec<Violation>) {
    let mut keys: BTreeSet<(String, String)> = BTreeSet::new();
    for (_, openid, template_id) in wechat.subscriptions.keys() {
        keys.insert((openid.clone(), template_id.clone()));
    }
    for c in snapshot.credentials.iter().filter(|c| c.is_grant()) {
        if let Some(template_id) = &c.template_id {
            keys.insert((c.openid.clone(), template_id.clone()));
        }
    }
    let empty = TrueSubscription::default();
    for (openid, template_id) in keys {
        let truth = wechat
            .subscriptions
            .iter()
            .find(|((_, o, t), _)| *o == openid && *t == template_id)
            .map_or(&empty, |(_, s)| s);
        let long_term = wechat
            .long_term_templates
            .get(&template_id)
            .copied()
            .unwrap_or(false);
        let about = format!("{openid}/{template_id}");
        let texts = if long_term {
            long_term_texts(snapshot, wechat, truth, &openid, &template_id)
        } else {
            one_time_texts(snapshot, wechat, truth, &openid, &template_id)
        };
        for text in texts {
            let text = format!("{about}: {text}");
            violation(violations, text, &[], &[&about]);
        }
    }
}

/// A long-term subscription WeChat holds on, whose accept the ledger
/// recorded, is on in the ledger too.
fn long_term_texts(
    snapshot: &Snapshot,
    wechat: &WeChatSide,
    truth: &TrueSubscription,
    openid: &str,
    template_id: &str,
) -> Vec<String> {
    let ledger_on = snapshot
        .subscriptions
        .iter()
        .any(|s| s.openid == openid && s.template_id == template_id && s.long_term);
    let since = truth.revoked_at.last().copied().unwrap_or(i64::MIN);
    let recorded_since = wechat.accepts.iter().any(|a| {
        a.openid == openid
            && a.template_id == template_id
            && a.at_ms > since
            && snapshot
                .prompts
                .contains(&(openid.to_owned(), a.request_id.clone()))
    });
    if truth.long_term && recorded_since && !ledger_on {
        vec!["WeChat's long-term subscription is on and its accept was recorded, but the ledger's is off (subscription dropped)".to_owned()]
    } else {
        Vec::new()
    }
}

/// A user's one-time grants of a template: the ledger's counts against
/// WeChat's accepts, deliveries and revocations.
fn one_time_texts(
    snapshot: &Snapshot,
    wechat: &WeChatSide,
    truth: &TrueSubscription,
    openid: &str,
    template_id: &str,
) -> Vec<String> {
    let payer = subscribe_payer(false, openid, template_id);
    let d = wechat
        .deliveries
        .iter()
        .filter(|d| d.credential == payer)
        .count() as i64;
    let a = i64::from(truth.accepted);
    let z = i64::from(truth.zeroed);
    let w = i64::from(truth.grants);
    let grants: Vec<&CredentialSnap> = snapshot
        .credentials
        .iter()
        .filter(|c| {
            c.is_grant() && c.openid == openid && c.template_id.as_deref() == Some(template_id)
        })
        .collect();
    let p = grants.len() as i64;
    let su: i64 = grants.iter().map(|c| c.unproven_uses).sum();
    let counted: i64 = grants.iter().map(|c| 1 - c.uses_left).sum();
    let sp = counted - su;
    let in_state = |state| grants.iter().filter(|c| c.state == state).count() as i64;
    let (x, l) = (
        in_state(CredentialState::Retired),
        in_state(CredentialState::Available),
    );
    let figures = format!("A {a}, D {d}, Z {z}, W {w}; P {p}, Sp {sp}, Su {su}, X {x}, L {l}");
    let mut texts = Vec::new();
    if sp > d {
        texts.push(format!(
            "the ledger counts {sp} proven use(s) of grants, WeChat delivered {d} ({figures})"
        ));
    }
    if d > sp + su {
        texts.push(format!(
            "WeChat delivered {d} time(s) with grants, the ledger counts {} use(s) ({figures})",
            sp + su
        ));
    }
    if p > a {
        texts.push(format!(
            "the ledger recorded {p} grant(s) for {a} accept(s) ({figures})"
        ));
    }
    for c in &grants {
        let from_accept = wechat.accepts.iter().any(|accept| {
            accept.openid == openid
                && accept.template_id == template_id
                && c.value == format!("grant:{openid}:{}:{template_id}", accept.request_id)
        });
        if !from_accept {
            texts.push(format!("grant {} matches no accept", c.value));
        }
    }
    if l > w + (z - x) {
        texts.push(format!("the ledger holds {l} grant(s), WeChat {w}, and only {} revoked grant(s) are unseen (phantom grants; {figures})", z - x));
    }
    if x > z {
        texts.push(format!("43101 retired {x} grant(s) in the ledger, but the user revoked only {z} at WeChat (grants dropped; {figures})"));
    }
    texts
}

/// One event of a message that ended: its id is the one the end derives,
/// and it names the key and reference the send passed through.
fn check_message_event(
    id: &str,
    event: &crate::ledger_model::OutboxRowModel,
    passed: Option<&(Option<String>, Option<String>)>,
    violations: &mut Vec<Violation>,
) {
    let named = (event.idempotency_key.clone(), event.reference.clone());
    if passed != Some(&named) {
        let text =
            format!("the event of message {id} names key and reference {named:?}, not the send's");
        violation(violations, text, &[id], &[]);
    }
    if event.event_id != finish_event_id(id) {
        let text = format!("message {id} has the event id {}", event.event_id);
        violation(violations, text, &[id], &[]);
    }
}

/// The outbox's promise, on the model (the real tables are checked by
/// tests/api/webhooks.rs): every message that ended has exactly one event
/// id, the one its end derives (`evt_<message id>`), of the type its end
/// reports; no event names a message that did not end (nothing for a change
/// that never committed); and, once the receiver is up, every event was
/// delivered at least once.
pub fn check_outbox(model: &LedgerModel, snapshot: &Snapshot) -> Vec<Violation> {
    let mut violations = Vec::new();
    let outbox = model.with_tables(|t| t.outbox.clone());
    // What each message's send passed through: its events must name the same.
    let passed: BTreeMap<String, (Option<String>, Option<String>)> = model.with_tables(|t| {
        t.messages
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    (m.idempotency_key.clone(), m.reference.clone()),
                )
            })
            .collect()
    });
    let mut by_message: BTreeMap<&str, Vec<&crate::ledger_model::OutboxRowModel>> = BTreeMap::new();
    for event in &outbox {
        by_message
            .entry(event.message_id.as_str())
            .or_default()
            .push(event);
        if !event.delivered {
            violation(
                &mut violations,
                format!("event {} was never delivered", event.event_id),
                &[&event.message_id],
                &[],
            );
        }
    }
    for message in &snapshot.messages {
        let ended = matches!(
            message.status,
            MessageStatus::Sent | MessageStatus::Failed | MessageStatus::Unknown
        );
        let events = by_message.remove(message.id.as_str()).unwrap_or_default();
        let expected = usize::from(ended);
        if events.len() != expected {
            violation(
                &mut violations,
                format!(
                    "message {} ({}) has {} events, not {expected}",
                    message.id,
                    message.status,
                    events.len()
                ),
                &[&message.id],
                &[],
            );
        }
        for event in events {
            check_message_event(&message.id, event, passed.get(&message.id), &mut violations);
        }
    }
    for (message, _) in by_message {
        violation(
            &mut violations,
            format!("an event names {message}, which the ledger does not hold"),
            &[message],
            &[],
        );
    }
    violations
}
