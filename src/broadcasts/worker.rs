//! The broadcast worker: any instance runs it. Each step takes the open
//! jobs, starts those whose time came, and for each app's first running job
//! leases batches of recipients (paced by the job's row) for up to a
//! second: each recipient is sent through the send path in a task of its
//! own, within the app's call bound; the next batch is leased as soon as the
//! last one's sends have all started, and each batch is recorded when its
//! sends are over, beside the sends that follow.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::clock::SharedClock;
use crate::config::BroadcastSettings;
use crate::ledger::broadcast::{
    due, job_effect, message_id, recipient_step, BroadcastSpec, Due, Hold, JobStanding,
    RecipientResult, RecipientStep,
};
use crate::ledger::failure::SendFailure;
use crate::ledger::states::{BroadcastState, MessageStatus, RecipientState};
use crate::sending::{SendRefusal, Sender};
use crate::storage::broadcasts::{
    BatchRecord, Broadcast, LeaseOutcome, LeasedRecipient, RecipientLease, RecipientWrite,
    StandingChange,
};
use crate::storage::{new_lease_token, Storage};

/// Open jobs read per step.
const JOBS_PER_STEP: i64 = 64;

/// How long one step leases batches of one job before it lets them finish
/// and goes on to the other jobs.
const STEP_MS: i64 = 1_000;

/// Batches of one job leased and not yet recorded: the one whose sends run
/// and the next, leased while the last of those run.
const MAX_OPEN_BATCHES: usize = 2;

/// Sends the recipients of broadcasts; cheap to clone.
#[derive(Debug, Clone)]
pub struct BroadcastWorker {
    storage: Arc<dyn Storage>,
    sender: Sender,
    clock: SharedClock,
    settings: BroadcastSettings,
}

/// What one recipient's send came to.
struct Sent {
    seq: i64,
    write: RecipientWrite,
    hold: Option<Hold>,
    delivered: bool,
}

impl BroadcastWorker {
    pub fn new(
        storage: Arc<dyn Storage>,
        sender: Sender,
        clock: SharedClock,
        settings: BroadcastSettings,
    ) -> Self {
        Self {
            storage,
            sender,
            clock,
            settings,
        }
    }

    /// How long the worker rests after a step that found nothing to do.
    pub fn poll(&self) -> std::time::Duration {
        self.settings.poll
    }

    /// One step: every open job that is due gets one batch (an app's jobs
    /// one at a time, oldest first). Returns how many recipients it handled.
    #[tracing::instrument(name = "broadcasts", skip_all, fields(handled = tracing::field::Empty))]
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let jobs = self.storage.open_broadcasts(JOBS_PER_STEP).await?;
        let mut busy_apps = HashSet::new();
        let mut handled = 0;
        for job in jobs {
            let now = self.clock.now_ms();
            if job.standing.state == BroadcastState::Cancelled {
                handled += self.run_job(&job).await?;
                continue;
            }
            if due(job.standing, job.send_at, job.paused_until, now) == Due::No {
                continue;
            }
            if !busy_apps.insert(job.appid.clone()) {
                continue;
            }
            let job = match self.start(job, now).await? {
                Some(job) => job,
                None => continue,
            };
            let span = tracing::info_span!("broadcast", appid = %job.appid, id = %job.id);
            handled += self.run_job(&job).instrument(span).await?;
        }
        tracing::Span::current().record("handled", handled);
        Ok(handled)
    }

    /// A due job that is not running yet starts (its time came, or its
    /// pause ran out); `None` when another writer changed it first.
    async fn start(&self, mut job: Broadcast, now: i64) -> anyhow::Result<Option<Broadcast>> {
        if job.standing.state == BroadcastState::Running {
            return Ok(Some(job));
        }
        let running = JobStanding {
            state: BroadcastState::Running,
            pause_reason: None,
        };
        let changed = self
            .storage
            .change_standing(&StandingChange {
                id: &job.id,
                from: job.standing,
                to: running,
                paused_until: None,
                now,
            })
            .await?;
        job.standing = running;
        Ok(changed.then_some(job))
    }

    /// Leases batches of the job's recipients, sends each recipient, and
    /// records each batch when its sends are over. The next batch is leased
    /// as soon as the last one's sends have all started, so the calls never
    /// wait for a lease or a record; a step leases for [`STEP_MS`] at most,
    /// then lets its sends finish. Returns how many recipients it handled.
    async fn run_job(&self, job: &Broadcast) -> anyhow::Result<usize> {
        let mut flight = Flight::default();
        let handled = self.pump(job, &mut flight).await;
        if handled.is_err() {
            // The sends and records already running end on their own; the
            // recipients of a batch not recorded stay leased, and whoever
            // takes them next finds their messages.
            flight.sends.detach_all();
            flight.records.detach_all();
        }
        handled
    }

    /// [`BroadcastWorker::run_job`]'s loop: lease when nothing leased waits
    /// to start, start sends up to the bound, take the one that ends next.
    async fn pump(&self, job: &Broadcast, flight: &mut Flight) -> anyhow::Result<usize> {
        let spec: Arc<BroadcastSpec> = Arc::new(serde_json::from_str(&job.spec)?);
        let shared = Arc::new(job.clone());
        let bound = self.sender.max_concurrent_calls().max(1);
        let step_ends = self.clock.now_ms() + STEP_MS;
        let mut rate = job.rate;
        let mut leasing = true;
        let mut handled = 0;
        loop {
            if leasing && flight.waiting.is_empty() && flight.batches.len() < MAX_OPEN_BATCHES {
                // One record at most runs beside the next lease.
                flight.collect_records(1).await?;
                match self.lease(job).await? {
                    Some((token, batch)) => flight.open(token, batch),
                    None => leasing = false,
                }
                leasing &= self.clock.now_ms() < step_ends;
            }
            while flight.sends.len() < bound {
                let Some((batch, recipient)) = flight.waiting.pop_front() else {
                    break;
                };
                let (worker, job, spec) = (self.clone(), shared.clone(), spec.clone());
                let (seq, sends) = (recipient.seq, recipient.sends);
                let task = flight.sends.spawn(
                    async move { worker.send_one(&job, &spec, &recipient).await }
                        .instrument(tracing::Span::current()),
                );
                flight.tasks.insert(task.id(), (batch, seq, sends));
            }
            if flight.sends.is_empty() {
                // Nothing runs: every leased batch is being recorded.
                if leasing && flight.batches.is_empty() {
                    continue;
                }
                break;
            }
            if let Some(done) = self.join_one(&job.id, flight).await {
                handled += done.sent.len();
                rate = self.record(job, done, rate, flight);
            }
        }
        flight.collect_records(0).await?;
        Ok(handled)
    }

    /// Leases the job's next batch; `None` when there is none to take now
    /// (the pace waits, the job is not running, or none is free), and the
    /// job ends here when none is left open.
    async fn lease(&self, job: &Broadcast) -> anyhow::Result<Option<(i64, Vec<LeasedRecipient>)>> {
        let now = self.clock.now_ms();
        let token = new_lease_token();
        let lease = RecipientLease {
            broadcast_id: &job.id,
            token,
            now,
            lease_until: now + crate::clock::ms(self.settings.lease),
            max_batch: self.settings.batch,
        };
        match self.storage.lease_recipients(&lease).await? {
            LeaseOutcome::Batch(batch) if !batch.is_empty() => Ok(Some((token, batch))),
            LeaseOutcome::Batch(_) => Ok(None),
            LeaseOutcome::Wait { .. } => Ok(None),
            LeaseOutcome::NoneFree { open } => {
                if open == 0 {
                    self.finish(job, now).await?;
                }
                Ok(None)
            }
        }
    }

    /// Records a batch whose sends are over, with what they did to the
    /// job's pace, in a task of its own (the sends go on meanwhile); returns
    /// the job's rate after it.
    fn record(&self, job: &Broadcast, batch: OpenBatch, rate: i64, flight: &mut Flight) -> i64 {
        let holds: Vec<Hold> = batch.sent.iter().filter_map(|sent| sent.hold).collect();
        let effect = job_effect(&holds, rate, self.settings.rate_per_sec);
        let rate = effect.rate.unwrap_or(rate);
        let writes: Vec<(i64, RecipientWrite)> = batch
            .sent
            .iter()
            .map(|sent| (sent.seq, sent.write.clone()))
            .collect();
        let sent_any = batch.sent.iter().any(|sent| sent.delivered);
        let (storage, clock) = (self.storage.clone(), self.clock.clone());
        let (id, appid) = (job.id.clone(), job.appid.clone());
        let recording = async move {
            storage
                .record_batch(&BatchRecord {
                    broadcast_id: &id,
                    token: batch.token,
                    now: clock.now_ms(),
                    writes: &writes,
                    rate,
                    pause: effect.pause,
                    sent_any,
                })
                .await?;
            for (_, write) in &writes {
                let outcome = match write {
                    RecipientWrite::Final { state, .. } => state.as_str(),
                    RecipientWrite::Requeue { .. } => "requeued",
                    RecipientWrite::Recheck { .. } => "recheck",
                };
                crate::monitoring::broadcast_recipient(&appid, outcome);
            }
            Ok(())
        };
        flight
            .records
            .spawn(recording.instrument(tracing::Span::current()));
        rate
    }

    /// Waits for one send of job `job_id` to end and keeps what it came to;
    /// returns its batch when that was the batch's last send.
    async fn join_one(&self, job_id: &str, flight: &mut Flight) -> Option<OpenBatch> {
        let joined = flight.sends.join_next_with_id().await?;
        let (task, sent) = match joined {
            Ok((task, sent)) => (task, sent),
            Err(error) => {
                // A send that panicked may have called WeChat: its message
                // is looked at again, never sent blind.
                tracing::error!(error = %error, "a broadcast recipient's send panicked");
                let task = error.id();
                let (_, seq, sends) = flight.tasks.get(&task)?;
                (task, self.recheck(*seq, &message_id(job_id, *seq, *sends)))
            }
        };
        let (batch, _, _) = flight.tasks.remove(&task)?;
        let open = flight.batches.get_mut(&batch)?;
        open.sent.push(sent);
        open.left -= 1;
        if open.left > 0 {
            return None;
        }
        flight.batches.remove(&batch)
    }

    /// Every recipient has its result: the job ends.
    async fn finish(&self, job: &Broadcast, now: i64) -> anyhow::Result<()> {
        let state = match job.standing.state {
            BroadcastState::Cancelled => BroadcastState::Cancelled,
            _ => BroadcastState::Finished,
        };
        self.storage
            .finish_broadcast(&job.id, job.standing.state, state, now)
            .await?;
        Ok(())
    }

    /// One recipient: its message looked up first when another instance
    /// held it, else sent through the send path under its message id.
    async fn send_one(
        &self,
        job: &Broadcast,
        spec: &BroadcastSpec,
        recipient: &LeasedRecipient,
    ) -> Sent {
        let id = message_id(&job.id, recipient.seq, recipient.sends);
        let span = tracing::info_span!("recipient", seq = recipient.seq, message_id = %id);
        async {
            match self.attempt(job, spec, recipient, &id).await {
                Ok(sent) => sent,
                Err(error) => {
                    // The message may exist: look again later, never resend blind.
                    tracing::warn!(error = ?error, "a broadcast recipient's send failed");
                    self.recheck(recipient.seq, &id)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn attempt(
        &self,
        job: &Broadcast,
        spec: &BroadcastSpec,
        recipient: &LeasedRecipient,
        id: &str,
    ) -> anyhow::Result<Sent> {
        // Taken over from an instance whose lease ran out: its send may have
        // started. The message tells; an unfinished one is the ledger's.
        if recipient.state == RecipientState::Leased {
            if let Some((row, _)) = self.storage.message(&job.appid, id).await? {
                let failure = row.error_code.as_deref().and_then(|code| {
                    SendFailure::from_stored(code, row.wechat_errcode, row.updated_at)
                });
                return Ok(self.step(recipient, id, row.status, failure.as_ref()));
            }
        }
        if job.standing.state == BroadcastState::Cancelled {
            return Ok(self.final_write(recipient.seq, None, &Step::Cancelled));
        }
        let data = recipient
            .data
            .as_deref()
            .map(serde_json::from_str::<Map<String, Value>>)
            .transpose()?;
        let checked = match self
            .sender
            .check(&job.appid, spec.request_for(&recipient.openid, data))
            .await
        {
            Ok(checked) => checked,
            Err(SendRefusal::Invalid(invalid)) => {
                let result = RecipientResult::Failed {
                    code: "invalid_template_data",
                    errcode: None,
                };
                tracing::info!(
                    rule = invalid.rule,
                    "a recipient's send no longer fits its template"
                );
                return Ok(self.final_write(recipient.seq, None, &Step::Record(result)));
            }
            Err(SendRefusal::Ledger(error)) => return Err(error),
        };
        match self.sender.send(&job.appid, checked, id).await {
            Ok(outcome) => {
                let result = outcome.result;
                Ok(self.step(recipient, id, result.status, result.failure.as_ref()))
            }
            Err(error) => {
                // Nothing was called unless the message exists (a start that
                // failed, or another instance's message of this id).
                if self.storage.stored_message(id).await?.is_some() {
                    return Ok(self.recheck(recipient.seq, id));
                }
                tracing::warn!(error = ?error, "a broadcast recipient's send did not start");
                Ok(Sent {
                    seq: recipient.seq,
                    write: RecipientWrite::Requeue {
                        counts: true,
                        error_code: Some("internal".into()),
                    },
                    hold: None,
                    delivered: false,
                })
            }
        }
    }

    /// What a recipient's message means, as the write of its batch.
    fn step(
        &self,
        recipient: &LeasedRecipient,
        id: &str,
        status: MessageStatus,
        failure: Option<&SendFailure>,
    ) -> Sent {
        let now = self.clock.now_ms();
        let step = recipient_step(
            status,
            failure,
            recipient.tries,
            self.settings.max_tries,
            now,
        );
        match step {
            RecipientStep::Record(result) => {
                self.final_write(recipient.seq, Some(id), &Step::Record(result))
            }
            RecipientStep::Retry { hold, counts } => Sent {
                seq: recipient.seq,
                write: RecipientWrite::Requeue {
                    counts,
                    error_code: failure.map(|failure| failure.code().to_owned()),
                },
                hold,
                delivered: false,
            },
            RecipientStep::Recheck => self.recheck(recipient.seq, id),
        }
    }

    fn recheck(&self, seq: i64, id: &str) -> Sent {
        Sent {
            seq,
            write: RecipientWrite::Recheck {
                until: self.clock.now_ms() + crate::clock::ms(self.settings.recheck),
                message_id: id.to_owned(),
            },
            hold: None,
            delivered: false,
        }
    }

    fn final_write(&self, seq: i64, id: Option<&str>, step: &Step) -> Sent {
        let (state, error_code, wechat_errcode) = match step {
            Step::Cancelled => (RecipientState::Cancelled, None, None),
            Step::Record(RecipientResult::Sent) => (RecipientState::Sent, None, None),
            Step::Record(RecipientResult::Unknown) => (
                RecipientState::Unknown,
                Some("outcome_unknown".to_owned()),
                None,
            ),
            Step::Record(RecipientResult::Capped) => (RecipientState::Capped, None, None),
            Step::Record(RecipientResult::NoCredential { errcode }) => (
                RecipientState::NoCredential,
                Some("no_credential".to_owned()),
                *errcode,
            ),
            Step::Record(RecipientResult::Failed { code, errcode }) => {
                (RecipientState::Failed, Some((*code).to_owned()), *errcode)
            }
        };
        Sent {
            seq,
            write: RecipientWrite::Final {
                state,
                message_id: id.map(str::to_owned),
                error_code,
                wechat_errcode,
            },
            hold: None,
            delivered: state == RecipientState::Sent,
        }
    }
}

/// A job's sends in flight within one step.
#[derive(Default)]
struct Flight {
    /// Leased recipients whose send has not started, with their batch.
    waiting: VecDeque<(u64, LeasedRecipient)>,
    /// The running sends: each a task, so that they run on every core as
    /// single sends do. No more run than calls may be in flight, so memory
    /// follows that bound, not the batch; they are aborted with the step (a
    /// crash drops them at an await, as it drops the sends of a request).
    sends: JoinSet<Sent>,
    /// Each running send's batch, recipient and its sends so far (what
    /// its message id is made of).
    tasks: HashMap<tokio::task::Id, (u64, i64, i64)>,
    /// The open batches by number.
    batches: HashMap<u64, OpenBatch>,
    next_batch: u64,
    /// The records of batches whose sends are over.
    records: JoinSet<anyhow::Result<()>>,
}

impl Flight {
    /// Takes the records that are over, and waits for more until no more
    /// than `running` run; the first that failed is the step's error.
    async fn collect_records(&mut self, running: usize) -> anyhow::Result<()> {
        while let Some(recorded) = self.records.try_join_next() {
            recorded??;
        }
        while self.records.len() > running {
            if let Some(recorded) = self.records.join_next().await {
                recorded??;
            }
        }
        Ok(())
    }

    fn open(&mut self, token: i64, recipients: Vec<LeasedRecipient>) {
        let batch = self.next_batch;
        self.next_batch += 1;
        self.batches.insert(
            batch,
            OpenBatch {
                token,
                left: recipients.len(),
                sent: Vec::with_capacity(recipients.len()),
            },
        );
        self.waiting
            .extend(recipients.into_iter().map(|recipient| (batch, recipient)));
    }
}

/// A leased batch: its lease token and its recipients' ends so far.
struct OpenBatch {
    token: i64,
    left: usize,
    sent: Vec<Sent>,
}

/// A recipient's end as written.
enum Step {
    Record(RecipientResult),
    /// The job was cancelled and nothing was sent.
    Cancelled,
}
