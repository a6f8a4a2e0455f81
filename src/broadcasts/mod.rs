//! Broadcasts: one template message sent to many users of an app — every
//! holder of what pays for the template, or a list — now or at `send_at`.
//!
//! Each recipient is sent through the ordinary send path ([`Sender::check`],
//! [`Sender::send`]), so every rule of a single send holds for it (one
//! credential claimed at a time, the breaker, the quota block, the per-app
//! call bound). What is added here:
//! - the job and its recipients, recorded in one transaction when the job
//!   is created (the holders are read by one statement, never loaded);
//! - [`BroadcastWorker`]: any instance leases a batch of a job's recipients
//!   under a fencing token, paced by the job's row, sends each, and records
//!   the batch's results in one transaction;
//! - each recipient's send creates the message
//!   `formid_core::broadcast::message_id(job, seq, tries)`, the same on every
//!   instance: an instance that takes a recipient over looks that message up
//!   (and leaves an unfinished one to the ledger's recovery) instead of
//!   sending again, and the ledger keeps one message per id.
//!
//! The rules (states, commands, pacing, what an answer means for the
//! recipient and the job) are `formid_core::broadcast`.

mod request;
mod worker;

use std::sync::Arc;

pub use request::{
    parse_broadcast_request, parse_broadcast_upload, AudienceRequest, BroadcastRequest,
    RecipientRequest,
};
pub use worker::BroadcastWorker;

use crate::clock::SharedClock;
use crate::config::BroadcastSettings;
use crate::ledger::broadcast::{
    apply_command, progress, BroadcastSpec, Command, CommandRefused, Progress,
};
use crate::ledger::states::{BroadcastState, Channel, RecipientState};
use crate::sending::{SendRefusal, Sender};
use crate::storage::broadcasts::{
    Audience, Broadcast, NewBroadcast, NewRecipient, RecipientCount, StandingChange,
};
use crate::storage::Storage;

/// The user a broadcast's shared data is checked for (the checks do not
/// depend on the user).
const CHECKED_AS: &str = "broadcast";

/// Broadcasts of every app; cheap to clone.
#[derive(Debug, Clone)]
pub struct Broadcasts {
    storage: Arc<dyn Storage>,
    sender: Sender,
    clock: SharedClock,
    settings: BroadcastSettings,
    /// A credential this close to its expiry does not make its user a holder.
    safety_margin_ms: i64,
}

/// Why a broadcast was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateRefusal {
    /// The template, data or page do not fit (checked as a single send).
    #[error(transparent)]
    Send(#[from] SendRefusal),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] anyhow::Error),
}

/// Why a command was not applied.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No such broadcast of the app.
    #[error("no such broadcast")]
    NotFound,
    /// The job's state takes no such command.
    #[error(transparent)]
    Refused(#[from] CommandRefused),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] anyhow::Error),
}

/// A job with its recipients counted.
#[derive(Debug, Clone)]
pub struct Report {
    pub job: Broadcast,
    pub counts: Vec<RecipientCount>,
    /// Recipients with a final result.
    pub done: i64,
    /// Recipients queued or leased.
    pub remaining: i64,
    pub progress: Progress,
}

/// What the pieces of a [`Broadcasts`] are.
#[derive(Debug, Clone)]
pub struct BroadcastParts {
    pub storage: Arc<dyn Storage>,
    pub sender: Sender,
    pub clock: SharedClock,
    pub settings: BroadcastSettings,
    pub safety_margin_ms: i64,
}

impl Broadcasts {
    pub fn new(parts: BroadcastParts) -> Self {
        Self {
            storage: parts.storage,
            sender: parts.sender,
            clock: parts.clock,
            settings: parts.settings,
            safety_margin_ms: parts.safety_margin_ms,
        }
    }

    /// The worker that sends the jobs' recipients.
    pub fn worker(&self) -> BroadcastWorker {
        BroadcastWorker::new(
            self.storage.clone(),
            self.sender.clone(),
            self.clock.clone(),
            self.settings.clone(),
        )
    }

    /// Checks a broadcast's template and data once (every recipient's own
    /// data too) as a single send, before anything is recorded, then records
    /// the job and its audience; returns the job.
    #[tracing::instrument(name = "create_broadcast", skip_all, fields(appid = %appid))]
    pub async fn create(
        &self,
        appid: &str,
        request: BroadcastRequest,
    ) -> Result<Broadcast, CreateRefusal> {
        let spec = request.spec;
        let (channel, recipients) = self.check_audience(appid, &spec, &request.audience).await?;
        let now = self.clock.now_ms();
        let send_at = request.send_at.unwrap_or(now).max(now);
        let job = NewBroadcast {
            id: uuid::Uuid::now_v7().to_string(),
            appid: appid.to_owned(),
            template_id: spec.template_id.clone(),
            channel,
            spec: serde_json::to_string(&spec).map_err(anyhow::Error::from)?,
            state: if send_at > now {
                BroadcastState::Scheduled
            } else {
                BroadcastState::Running
            },
            send_at,
            rate: self.settings.rate_per_sec,
            now,
        };
        let audience = match request.audience {
            AudienceRequest::Holders => Audience::Holders {
                grant_of: crate::ledger::values::grant_of(channel, &spec.template_id),
                valid_after: now + self.safety_margin_ms,
            },
            _ => Audience::List(&recipients),
        };
        self.storage.create_broadcast(&job, audience).await?;
        let created = self.storage.broadcast(appid, &job.id).await?;
        created.ok_or_else(|| anyhow::anyhow!("broadcast {} vanished", job.id).into())
    }

    /// Checks the sends a broadcast will make, as single sends: the shared
    /// data once, or every recipient's own. Returns the channel and the
    /// listed recipients (none for the holders, read by the database).
    async fn check_audience(
        &self,
        appid: &str,
        spec: &BroadcastSpec,
        audience: &AudienceRequest,
    ) -> Result<(Channel, Vec<NewRecipient>), SendRefusal> {
        let list = match audience {
            AudienceRequest::Holders | AudienceRequest::Openids(_) => {
                let checked = self
                    .sender
                    .check(appid, spec.request_for(CHECKED_AS, None))
                    .await?;
                let recipients = match audience {
                    AudienceRequest::Openids(list) => list
                        .iter()
                        .map(|openid| NewRecipient {
                            openid: openid.clone(),
                            data: None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                return Ok((checked.channel(), recipients));
            }
            AudienceRequest::Recipients(list) => list,
        };
        let mut channel = spec.channel.unwrap_or(Channel::Template);
        let mut recipients = Vec::with_capacity(list.len());
        for recipient in list {
            let request = spec.request_for(&recipient.openid, recipient.data.clone());
            channel = self.sender.check(appid, request).await?.channel();
            recipients.push(NewRecipient {
                openid: recipient.openid.clone(),
                data: recipient
                    .data
                    .as_ref()
                    .map(|data| serde_json::Value::Object(data.clone()).to_string()),
            });
        }
        Ok((channel, recipients))
    }

    /// A job of the app with its recipients counted.
    pub async fn report(&self, appid: &str, id: &str) -> anyhow::Result<Option<Report>> {
        let Some(job) = self.storage.broadcast(appid, id).await? else {
            return Ok(None);
        };
        let counts = self.storage.recipient_counts(id).await?;
        let remaining: i64 = counts
            .iter()
            .filter(|count| matches!(count.state, RecipientState::Queued | RecipientState::Leased))
            .map(|count| count.count)
            .sum();
        let done = job.recipients - remaining;
        let now = self.clock.now_ms();
        let progress = progress(
            done,
            remaining,
            job.started_at,
            job.finished_at.unwrap_or(now),
        );
        Ok(Some(Report {
            job,
            counts,
            done,
            remaining,
            progress,
        }))
    }

    /// The app's newest jobs.
    pub async fn list(&self, appid: &str, limit: i64) -> anyhow::Result<Vec<Broadcast>> {
        self.storage.broadcasts(appid, limit).await
    }

    /// Pauses, resumes or cancels a job by the rules of its state; returns
    /// the job as it is then.
    #[tracing::instrument(name = "broadcast_command", skip_all, fields(appid = %appid, id = %id))]
    pub async fn command(
        &self,
        appid: &str,
        id: &str,
        command: Command,
    ) -> Result<Broadcast, CommandError> {
        // A worker may change the standing meanwhile (a start, a pause of
        // the quota): read again and apply to what is there.
        for _ in 0..8 {
            let job = self
                .storage
                .broadcast(appid, id)
                .await?
                .ok_or(CommandError::NotFound)?;
            let to = apply_command(job.standing, command)?;
            if to == job.standing {
                return Ok(job);
            }
            let changed = self
                .storage
                .change_standing(&StandingChange {
                    id,
                    from: job.standing,
                    to,
                    paused_until: None,
                    now: self.clock.now_ms(),
                })
                .await?;
            if changed {
                let job = self.storage.broadcast(appid, id).await?;
                return job.ok_or(CommandError::NotFound);
            }
        }
        Err(anyhow::anyhow!("broadcast {id} kept changing under a command").into())
    }

    /// The job's results after `after_seq`, a page at a time.
    pub async fn results_page(
        &self,
        id: &str,
        after_seq: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<crate::storage::broadcasts::RecipientRow>> {
        self.storage.recipient_page(id, after_seq, limit).await
    }
}
