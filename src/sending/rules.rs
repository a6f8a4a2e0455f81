//! The send rules on the send path: scheduled sends, quiet hours and the
//! per-user send caps, applied by [`Sender`] before anything is claimed.
//! The rules are the core's (`formid_core::user_limits`); this applies
//! them with the service's clock and records what they decide.

use std::collections::BTreeMap;

use super::{PreparedSend, SendResult, Sender};
use crate::config::{AppSettings, QuietMode, UserLimits};
use crate::ledger::failure::SendFailure;
use crate::ledger::states::MessageStatus;
use crate::ledger::user_limits::{CapDecision, SendCap};
use crate::storage::send_rules::{CappedStart, Scheduled};
use crate::storage::{Lease, NewMessage, StoredMessage};

/// Each app's send rules, from its settings (validated at startup: a rule
/// that does not read is none).
pub(super) fn limits_of(apps: &BTreeMap<String, AppSettings>) -> BTreeMap<String, UserLimits> {
    apps.iter()
        .map(|(appid, app)| {
            let limits =
                crate::config::user_limits::user_limits(&app.send_caps, app.quiet_hours.as_ref())
                    .unwrap_or_default();
            (appid.clone(), limits)
        })
        .collect()
}

/// What the rules say of a new send before it runs.
pub(super) enum Admission {
    /// Run it now (the caps, if any, are counted as it starts).
    Now,
    /// Kept as scheduled, or refused: `refused` when nothing was stored.
    Decided { result: SendResult, refused: bool },
}

impl Sender {
    /// The caps of `appid` that count a send of `template_id`.
    pub(super) fn caps_for(&self, appid: &str, template_id: &str) -> &[SendCap] {
        match self.limits.get(appid) {
            Some(limits) if limits.caps.iter().any(|cap| cap.applies_to(template_id)) => {
                &limits.caps
            }
            _ => &[],
        }
    }

    /// When quiet hours hold a send of `appid` started now: the window's
    /// opening, and what the app does with a send inside it. A run may
    /// call for up to its lease, so a send that would run into the window
    /// is held too.
    fn quiet_hold(&self, appid: &str, at: i64) -> Option<(i64, QuietMode)> {
        let (quiet, mode) = self.limits.get(appid)?.quiet?;
        quiet
            .hold_until(at, self.settings.lease_ms)
            .map(|opens| (opens, mode))
    }

    /// Scheduled sends and quiet hours: a send with a future `send_at`, or
    /// one inside quiet hours of an app that waits, is kept as scheduled
    /// (holding no credential) and answered 202; inside quiet hours of an
    /// app that refuses, it is refused and nothing is stored. An urgent send
    /// ignores quiet hours.
    pub(super) async fn admit(
        &self,
        appid: &str,
        request: &PreparedSend,
        message_id: &str,
    ) -> anyhow::Result<Admission> {
        let now = self.clock.now_ms();
        let asked = request.send_at_ms.filter(|at| *at > now);
        let at = asked.unwrap_or(now);
        let hold = (!request.urgent)
            .then(|| self.quiet_hold(appid, at))
            .flatten();
        let due_at = match (asked, hold) {
            (None, None) => return Ok(Admission::Now),
            (None, Some((opens_at_ms, QuietMode::Refuse))) => {
                return Ok(Admission::Decided {
                    result: SendResult::without_attempts(
                        message_id,
                        MessageStatus::Failed,
                        Some(SendFailure::QuietHours { opens_at_ms }),
                    ),
                    refused: true,
                })
            }
            // A scheduled send is moved out of the window, whatever the mode.
            (_, Some((opens, _))) => opens,
            (Some(at), None) => at,
        };
        let message = NewMessage {
            id: message_id.to_owned(),
            appid: appid.to_owned(),
            touser: request.touser.clone(),
            template_id: request.template_id.clone(),
            payload: serde_json::to_string(&request.payload)?,
            status: MessageStatus::Scheduled,
            delivery: request.delivery,
            // The wait for a credential starts when the message is due
            // (and moves with it).
            wait_until: request
                .wait_seconds
                .map(|seconds| due_at + (seconds as i64) * 1000),
            lease_until: now,
            lease_token: 0,
            channel: request.channel,
            reference: request.reference.clone(),
            idempotency_key: request.idempotency_key.clone(),
        };
        self.storage
            .schedule_message(&Scheduled {
                message: &message,
                due_at,
                send_at: asked,
                now,
            })
            .await?;
        Ok(Admission::Decided {
            result: SendResult::without_attempts(message_id, MessageStatus::Scheduled, None),
            refused: false,
        })
    }

    /// Records a pending message under the app's caps; a refusal (nothing
    /// recorded) when one is full.
    pub(super) async fn create_capped(
        &self,
        message: &NewMessage,
        caps: &[SendCap],
        now: i64,
    ) -> anyhow::Result<Option<SendResult>> {
        let decision = self
            .storage
            .create_capped_message(&CappedStart { message, caps, now })
            .await?;
        Ok(match decision {
            CapDecision::Allow => None,
            CapDecision::Capped { retry_at_ms, .. } => Some(SendResult::without_attempts(
                &message.id,
                MessageStatus::Failed,
                Some(SendFailure::UserSendLimit { retry_at_ms }),
            )),
        })
    }

    /// A message taken up again (waiting, scheduled, or recovered without
    /// a credential) inside quiet hours is scheduled for their end instead
    /// of sent; its answer then, or `None` to carry on.
    pub(super) async fn hold_in_quiet_hours(
        &self,
        message: &StoredMessage,
        lease: &Lease,
    ) -> anyhow::Result<Option<SendResult>> {
        let now = self.clock.now_ms();
        let Some((opens, _)) = self.quiet_hold(&message.appid, now) else {
            return Ok(None);
        };
        // Lost lease: another run has it; nothing of this one happened.
        self.storage.hold_message(lease, opens, now).await?;
        Ok(Some(SendResult::without_attempts(
            &message.id,
            MessageStatus::Scheduled,
            None,
        )))
    }

    /// The quiet-hours hold of a message of `appid` due now, if any.
    pub fn quiet_until(&self, appid: &str) -> Option<i64> {
        self.quiet_hold(appid, self.clock.now_ms())
            .map(|(opens, _)| opens)
    }

    /// The caps of `appid` (all of them: the count filters by template).
    pub fn caps_of(&self, appid: &str) -> &[SendCap] {
        self.limits
            .get(appid)
            .map(|limits| limits.caps.as_slice())
            .unwrap_or(&[])
    }
}
