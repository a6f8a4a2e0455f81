//! Broadcasts in the simulation: one job over the plan's users (and users
//! who hold nothing), created mid-run through an instance's send path and
//! storage as `Broadcasts::create` does, worked by every instance's
//! [`BroadcastWorker`] through crashes, lost answers, 45009 and clock skew;
//! and its invariants, checked from WeChat's side after quiescence:
//! - no recipient notified twice (its messages' deliveries, at most one);
//! - every recipient accounted for exactly once: the job finished, each
//!   recipient in one final state, `sent` exactly when WeChat delivered,
//!   `no_credential`/`failed`/`cancelled` only when it never did;
//! - at most one of a recipient's messages reached WeChat's hands (sent or
//!   unknown): a retry only ever follows a send that was never made;
//! - no grant spent without a call: the ledger-wide credential invariants
//!   cover its messages, which are ordinary messages of the ledger.
//!
//! Each recipient carries its own data, `{"message": {"value": "bc1-<seq>"}}`,
//! which is how WeChat's model names a delivery: by recipient, whichever
//! of its messages (`bc1-<seq>-<tries>`) made it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use formid_gateway::broadcasts::BroadcastWorker;
use formid_gateway::config::BroadcastSettings;
use formid_gateway::ledger::broadcast::BroadcastSpec;
use formid_gateway::ledger::states::{BroadcastState, Delivery, MessageStatus, RecipientState};
use formid_gateway::sending::Sender;
use formid_gateway::storage::broadcasts::{Audience, NewBroadcast, NewRecipient};
use formid_gateway::storage::Storage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::invariants::{MessageSnap, Snapshot, Violation};
use crate::{SimClock, Trace};

/// The job's id: fixed, so that its messages are recognisable.
pub const JOB: &str = "bc1";

/// A broadcast of the plan.
#[derive(Debug, Clone)]
pub struct BroadcastPlan {
    pub at_ms: i64,
    pub instance: usize,
    pub template_id: String,
    /// In order (seq 1, 2, …).
    pub recipients: Vec<String>,
    /// Sends per second.
    pub rate: i64,
    pub batch: i64,
}

/// A broadcast over `users` and `extra` users who hold nothing, drawn from
/// a stream of its own.
pub fn draw(
    seed: u64,
    users: &[String],
    extra: usize,
    window_ms: i64,
    instances: usize,
    template_id: &str,
) -> BroadcastPlan {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4252_4f41_4443_4153);
    let mut recipients: Vec<String> = users.to_vec();
    recipients.extend((0..extra).map(|n| format!("nobody{n}")));
    // A shuffled order, so holders and non-holders interleave in batches.
    for i in (1..recipients.len()).rev() {
        recipients.swap(i, rng.gen_range(0..=i));
    }
    BroadcastPlan {
        at_ms: rng.gen_range(0..=window_ms.max(1) / 2),
        instance: rng.gen_range(0..instances),
        template_id: template_id.to_owned(),
        recipients,
        rate: [5, 20, 100][rng.gen_range(0..3)],
        batch: [1, 3, 8][rng.gen_range(0..3)],
    }
}

/// The broadcast settings every instance runs with.
pub fn settings(plan: &BroadcastPlan, lease_ms: i64) -> BroadcastSettings {
    BroadcastSettings {
        rate_per_sec: plan.rate,
        batch: plan.batch,
        lease: Duration::from_millis(lease_ms as u64),
        recheck: Duration::from_millis(2_000),
        max_tries: 5,
        max_upload_bytes: 1 << 20,
        poll: Duration::from_millis(500),
    }
}

/// Creates the job as `Broadcasts::create` does: the send checked once by
/// the instance's send path, then the job and its recipients recorded.
pub async fn create(
    plan: &BroadcastPlan,
    sender: &Sender,
    storage: &Arc<dyn Storage>,
    clock: SimClock,
    appid: &str,
) -> anyhow::Result<()> {
    use formid_gateway::clock::Clock;
    let spec = BroadcastSpec {
        template_id: plan.template_id.clone(),
        page: None,
        data: None,
        emphasis_keyword: None,
        color: None,
        delivery: Delivery::AtMostOnce,
        channel: None,
        miniprogram_state: None,
        lang: None,
    };
    let recipients: Vec<NewRecipient> = plan
        .recipients
        .iter()
        .enumerate()
        .map(|(n, openid)| NewRecipient {
            openid: openid.clone(),
            data: Some(json!({"message": {"value": format!("{JOB}-{}", n + 1)}}).to_string()),
        })
        .collect();
    let first = plan.recipients.first().cloned().unwrap_or_default();
    let data = json!({"message": {"value": format!("{JOB}-1")}})
        .as_object()
        .cloned();
    let checked = sender.check(appid, spec.request_for(&first, data)).await?;
    let now = clock.now_ms();
    let job = NewBroadcast {
        id: JOB.to_owned(),
        appid: appid.to_owned(),
        template_id: plan.template_id.clone(),
        channel: checked.channel(),
        spec: serde_json::to_string(&spec)?,
        state: BroadcastState::Running,
        send_at: now,
        rate: plan.rate,
        now,
    };
    storage
        .create_broadcast(&job, Audience::List(&recipients))
        .await?;
    Ok(())
}

/// The instance's broadcast worker, looping as `startup::run_broadcasts` does.
pub fn spawn_worker(worker: BroadcastWorker, trace: Arc<Trace>, name: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let rest = match worker.run_once().await {
                Ok(0) => worker.poll(),
                Ok(handled) => {
                    trace.record(&name, format!("broadcast: {handled} recipient(s) handled"));
                    Duration::ZERO
                }
                Err(error) => {
                    trace.record(&name, format!("broadcast step failed: {error:#}"));
                    worker.poll()
                }
            };
            // Never a busy loop under paused time: a step always yields.
            tokio::time::sleep(rest.max(Duration::from_millis(1))).await;
        }
    })
}

/// One recipient as the ledger holds it after the run.
#[derive(Debug, Clone)]
pub struct RecipientSnap {
    pub seq: i64,
    pub openid: String,
    pub state: RecipientState,
    pub message_id: Option<String>,
}

/// The job as the ledger holds it after the run.
#[derive(Debug, Clone)]
pub struct JobSnap {
    pub state: BroadcastState,
    pub finished: bool,
    pub paused_until: Option<i64>,
    pub recipients: Vec<RecipientSnap>,
}

/// The recipient key of a broadcast message id (`bc1-<seq>-<tries>` →
/// `bc1-<seq>`), or `None` for another message.
pub fn recipient_key(message_id: &str) -> Option<&str> {
    let rest = message_id.strip_prefix(JOB)?.strip_prefix('-')?;
    let (seq, tries) = rest.split_once('-')?;
    (seq.parse::<i64>().is_ok() && tries.parse::<i64>().is_ok())
        .then(|| &message_id[..JOB.len() + 1 + seq.len()])
}

/// The broadcast's invariants (see the module's doc); `deliveries` counts
/// WeChat's deliveries by the name its model read (`bc1-<seq>` here).
pub fn check(
    job: &JobSnap,
    snapshot: &Snapshot,
    deliveries: &BTreeMap<String, usize>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut push = |text: String, messages: Vec<String>| {
        violations.push(Violation {
            text,
            messages,
            credentials: Vec::new(),
        })
    };
    if !job.finished {
        push(
            format!("the broadcast is still {} after quiescence", job.state),
            Vec::new(),
        );
    }
    let mut messages: BTreeMap<&str, Vec<&MessageSnap>> = BTreeMap::new();
    for message in &snapshot.messages {
        if let Some(key) = recipient_key(&message.id) {
            messages.entry(key).or_default().push(message);
        }
    }
    for recipient in &job.recipients {
        let key = format!("{JOB}-{}", recipient.seq);
        let delivered = deliveries.get(&key).copied().unwrap_or(0);
        let mine: Vec<&MessageSnap> = messages.get(key.as_str()).cloned().unwrap_or_default();
        for text in check_recipient(recipient, delivered, &mine) {
            push(text, mine.iter().map(|m| m.id.clone()).collect());
        }
    }
    let listed: std::collections::BTreeSet<String> = job
        .recipients
        .iter()
        .map(|r| format!("{JOB}-{}", r.seq))
        .collect();
    for key in deliveries
        .keys()
        .filter(|key| key.starts_with(&format!("{JOB}-")))
    {
        if !listed.contains(key) {
            push(
                format!("{key} was delivered but is no recipient"),
                Vec::new(),
            );
        }
    }
    violations
}

/// One recipient's result against its messages and WeChat's deliveries.
fn check_recipient(
    recipient: &RecipientSnap,
    delivered: usize,
    mine: &[&MessageSnap],
) -> Vec<String> {
    let mut wrong = Vec::new();
    let in_hands = mine
        .iter()
        .filter(|m| matches!(m.status, MessageStatus::Sent | MessageStatus::Unknown))
        .count();
    let who = format!("recipient {} ({})", recipient.seq, recipient.openid);
    if delivered > 1 {
        wrong.push(format!("{who} was notified {delivered} times"));
    }
    if in_hands > 1 {
        wrong.push(format!("{who} has {in_hands} messages that reached WeChat"));
    }
    if mine.iter().any(|m| m.touser != recipient.openid) {
        wrong.push(format!("{who} has a message to another user"));
    }
    let state = match recipient.state {
        RecipientState::Queued | RecipientState::Leased => Some(format!(
            "{who} is still {} after quiescence",
            recipient.state
        )),
        RecipientState::Sent if delivered != 1 => Some(format!(
            "{who} is sent but WeChat delivered {delivered} time(s)"
        )),
        RecipientState::NoCredential
        | RecipientState::Failed
        | RecipientState::Cancelled
        | RecipientState::Capped
            if delivered > 0 =>
        {
            Some(format!(
                "{who} is {} but WeChat delivered it",
                recipient.state
            ))
        }
        RecipientState::Sent | RecipientState::Unknown => {
            let named = recipient.message_id.as_deref();
            let ok = mine.iter().any(|m| {
                Some(m.id.as_str()) == named && m.status.as_str() == recipient.state.as_str()
            });
            (!ok).then(|| {
                format!(
                    "{who} is {} but its message {named:?} is not",
                    recipient.state
                )
            })
        }
        _ => None,
    };
    wrong.extend(state);
    wrong
}
