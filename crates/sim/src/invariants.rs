//! The promise, checked from WeChat's side once a run has quiesced.
//!
//! The ledger is read as a [`Snapshot`] (from the in-memory model, or by SQL
//! from a real database); WeChat's side is the model's record of every
//! delivery and every answer. Each check names the messages and credentials
//! it is about, so that a failing run can print their story.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use formid_gateway::ledger::states::{AttemptOutcome, CredentialState, Delivery, MessageStatus};

use crate::ledger_model::LedgerModel;
use crate::wechat_model::{Delivery as WeChatDelivery, TrueCredential};

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
}

impl Snapshot {
    /// Whether anything is still in flight or due: a pending or waiting
    /// message, a leased credential.
    pub fn busy(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| matches!(m.status, MessageStatus::Pending | MessageStatus::Waiting))
            .count()
            + self
                .credentials
                .iter()
                .filter(|c| c.state == CredentialState::Leased)
                .count()
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
                })
                .collect(),
            messages: t
                .messages
                .values()
                .map(|m| MessageSnap {
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
                })
                .collect(),
        }))
    }
}

/// One broken promise, with what it is about.
#[derive(Debug, Clone)]
pub struct Violation {
    pub text: String,
    pub messages: Vec<String>,
    pub credentials: Vec<String>,
}

/// What WeChat saw.
#[derive(Debug, Clone, Default)]
pub struct WeChatSide {
    pub credentials: BTreeMap<String, TrueCredential>,
    pub deliveries: Vec<WeChatDelivery>,
    pub answers: BTreeMap<String, BTreeSet<i64>>,
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
///   credential retired while WeChat would still accept it is lost).
pub fn check(snapshot: &Snapshot, wechat: &WeChatSide) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut violation = |text: String, messages: &[&str], credentials: &[&str]| {
        violations.push(Violation {
            text,
            messages: messages.iter().map(|m| (*m).to_owned()).collect(),
            credentials: credentials.iter().map(|c| (*c).to_owned()).collect(),
        });
    };
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
    let messages: BTreeMap<&str, &MessageSnap> = snapshot
        .messages
        .iter()
        .map(|m| (m.id.as_str(), m))
        .collect();
    for (id, deliveries) in &by_message {
        if !messages.contains_key(id) {
            let credentials: Vec<&str> = deliveries.iter().map(|d| d.credential.as_str()).collect();
            violation(
                format!("{id} was delivered but the ledger has no such message"),
                &[id],
                &credentials,
            );
        }
    }
    for message in &snapshot.messages {
        let id = message.id.as_str();
        let delivered = by_message.get(id).map_or(&[][..], Vec::as_slice);
        let credentials: Vec<&str> = delivered.iter().map(|d| d.credential.as_str()).collect();
        let count = delivered.len();
        let at_most_once = message.delivery == Delivery::AtMostOnce;
        if at_most_once && count > 1 {
            violation(
                format!(
                    "{id} (at_most_once, {}) was delivered {count} times",
                    message.status
                ),
                &[id],
                &credentials,
            );
        }
        match message.status {
            MessageStatus::Pending | MessageStatus::Waiting => violation(
                format!("{id} is still {} after quiescence", message.status),
                &[id],
                &credentials,
            ),
            MessageStatus::Sent if count == 0 => violation(
                format!("{id} is sent but WeChat never delivered it"),
                &[id],
                &credentials,
            ),
            MessageStatus::Failed if at_most_once && count > 0 => violation(
                format!(
                    "{id} is failed ({}) but WeChat delivered it {count} time(s)",
                    message.error_code.as_deref().unwrap_or("?")
                ),
                &[id],
                &credentials,
            ),
            _ => {}
        }
    }
    for credential in &snapshot.credentials {
        let value = credential.value.as_str();
        let delivered = by_credential.get(value).copied().unwrap_or(0) as i64;
        let Some(truth) = wechat.credentials.get(value) else {
            violation(
                format!("{value} is in the ledger but WeChat never issued it"),
                &[],
                &[value],
            );
            continue;
        };
        let sends = i64::from(truth.max_uses);
        let counted = sends - credential.uses_left;
        let proven = counted - credential.unproven_uses;
        if credential.state == CredentialState::Leased {
            violation(
                format!("{value} is still leased after quiescence"),
                &[],
                &[value],
            );
        }
        if delivered > sends {
            violation(
                format!("{value} was used {delivered} times at WeChat; its kind allows {sends}"),
                &[],
                &[value],
            );
        }
        if proven > delivered {
            violation(
                format!(
                    "{value}: the ledger counts {proven} proven use(s) (sends {sends}, uses_left {}, unproven {}), WeChat delivered {delivered}",
                    credential.uses_left, credential.unproven_uses
                ),
                &[],
                &[value],
            );
        }
        if credential.state != CredentialState::Retired && delivered > counted {
            violation(
                format!(
                    "{value}: WeChat delivered {delivered} time(s), the ledger counts {counted} use(s) (uses_left {}, state {})",
                    credential.uses_left, credential.state
                ),
                &[],
                &[value],
            );
        }
        if credential.state == CredentialState::Retired {
            let errcode = credential.retired_errcode.unwrap_or_default();
            let answered = wechat
                .answers
                .get(value)
                .is_some_and(|answers| answers.contains(&errcode));
            if !answered {
                violation(
                    format!("{value} was retired for errcode {errcode}, which WeChat never answered for it"),
                    &[],
                    &[value],
                );
            }
        }
    }
    violations
}
