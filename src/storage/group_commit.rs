//! Group commit: the two writes of every successful send, shared between
//! concurrent sends.
//!
//! Why: a send writes twice (its start: the message and the claim of its
//! first credential; its end: the credential spent, the attempt, the message
//! finished). On SQLite each write cost three handoffs to the single writer's
//! thread (`BEGIN`, the script, `COMMIT`), and those handoffs, not SQLite's
//! work, were the ceiling; on PostgreSQL each write was a statement and a
//! commit. Under load the writes queue anyway, so the ones waiting when a
//! batch begins run together, in one transaction and a few calls.
//!
//! There is no timer: a lone send does not wait for company, so latency at
//! low load stays what it was, and batches grow only when writes queue. A
//! batch that fails is rolled back whole and its writes are run again one by
//! one, so that each caller gets its own error and no other write is lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{ClaimedCredential, ClaimedRow, MessageOutcome, NewAttempt, NewMessage};

/// The most writes one batch takes.
const MAX_BATCH: usize = 64;

/// Writes queued beyond this wait for room: back-pressure on the senders.
const QUEUE: usize = 1024;

/// A new message and the claim of its first credential, leased until the
/// message's own lease under the message's token.
#[derive(Debug, Clone)]
pub struct StartSend {
    pub message: NewMessage,
    /// Only credentials expiring after this are claimed.
    pub valid_after: i64,
    pub now: i64,
}

/// The end of a message whose credential WeChat accepted: the credential
/// spent, the attempt recorded, the message finished.
#[derive(Debug, Clone)]
pub struct EndSend {
    pub message_id: String,
    /// The token of the run that made the call: the credential and the
    /// message change only while they still carry it.
    pub lease_token: i64,
    pub credential_id: i64,
    pub attempt: NewAttempt,
    pub outcome: MessageOutcome,
    pub now: i64,
}

/// What one batch did.
#[derive(Debug, Default)]
pub(crate) struct BatchDone {
    /// The credentials the starts claimed (each names its message in
    /// `lease_message_id`; a start that found none has no row).
    pub claimed: Vec<ClaimedRow>,
    /// The messages the ends finished: an end whose message is missing here
    /// had lost its lease.
    pub ended: Vec<String>,
}

/// How a backend runs one batch.
#[async_trait]
pub(crate) trait BatchWriter: Send + Sync + 'static {
    /// Runs every end, then every start, atomically. The starts of one batch
    /// never name the same user twice.
    async fn write_batch(
        &self,
        ends: &[EndSend],
        starts: &[StartSend],
    ) -> anyhow::Result<BatchDone>;
}

type StartReply = oneshot::Sender<anyhow::Result<Option<ClaimedCredential>>>;
type EndReply = oneshot::Sender<anyhow::Result<bool>>;

enum Job {
    Start(StartSend, StartReply),
    End(EndSend, EndReply),
}

/// The handle senders queue their writes on; `workers` tasks run the batches.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts `workers` batch runners on the current Tokio runtime. They stop
    /// once every handle is dropped and the queue is drained.
    pub(crate) fn spawn(writer: impl BatchWriter, workers: usize) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let writer: Arc<dyn BatchWriter> = Arc::new(writer);
        for _ in 0..workers.max(1) {
            tokio::spawn(run_batches(writer.clone(), queue.clone()));
        }
        Self { jobs }
    }

    /// Queues a start and waits for its batch.
    pub(crate) async fn start(
        &self,
        write: StartSend,
    ) -> anyhow::Result<Option<ClaimedCredential>> {
        let (reply, answer) = oneshot::channel();
        self.queue(Job::Start(write, reply)).await?;
        answer.await.context(STOPPED)?
    }

    /// Queues an end and waits for its batch; `false` when its lease was lost.
    pub(crate) async fn end(&self, write: EndSend) -> anyhow::Result<bool> {
        let (reply, answer) = oneshot::channel();
        self.queue(Job::End(write, reply)).await?;
        answer.await.context(STOPPED)?
    }

    async fn queue(&self, job: Job) -> anyhow::Result<()> {
        self.jobs.send(job).await.map_err(|_| anyhow!(STOPPED))
    }
}

const STOPPED: &str = "the ledger's batch writer has stopped";

/// One runner: takes whatever is queued (waiting only when nothing is),
/// runs it as one batch, and again.
async fn run_batches(writer: Arc<dyn BatchWriter>, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    // Starts for a user already in the batch wait for the next one.
    let mut deferred = Vec::new();
    loop {
        let mut batch = Batch::default();
        for job in std::mem::take(&mut deferred) {
            batch.add(job, &mut deferred);
        }
        // Why one receiver behind a lock: the runner holding it takes every
        // queued write, then lets the next runner collect the writes that
        // arrive while this batch runs. A runner with deferred starts must
        // not wait for the lock: its holder may be waiting for writes that
        // only come once those starts are answered.
        let locked = if batch.is_empty() {
            Some(queue.lock().await)
        } else {
            queue.try_lock().ok()
        };
        if let Some(mut queue) = locked {
            if batch.is_empty() {
                match queue.recv().await {
                    Some(job) => batch.add(job, &mut deferred),
                    None => return,
                }
            }
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.add(job, &mut deferred),
                    Err(_) => break,
                }
            }
        }
        batch.run(&*writer).await;
    }
}

#[derive(Default)]
struct Batch {
    ends: Vec<EndSend>,
    end_replies: Vec<EndReply>,
    starts: Vec<StartSend>,
    start_replies: Vec<StartReply>,
    users: HashSet<(String, String)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.ends.len() + self.starts.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add(&mut self, job: Job, deferred: &mut Vec<Job>) {
        match job {
            Job::End(write, reply) => {
                self.ends.push(write);
                self.end_replies.push(reply);
            }
            Job::Start(write, reply) => {
                // Why: PostgreSQL runs a batch's claims as one statement, in
                // one snapshot, where two claims for one user would pick the
                // same row.
                let user = (write.message.appid.clone(), write.message.touser.clone());
                if self.users.insert(user) {
                    self.starts.push(write);
                    self.start_replies.push(reply);
                } else {
                    deferred.push(Job::Start(write, reply));
                }
            }
        }
    }

    async fn run(self, writer: &dyn BatchWriter) {
        crate::monitoring::group_commit_batch(self.len());
        let single = self.len() == 1;
        match writer.write_batch(&self.ends, &self.starts).await {
            Ok(done) => self.answer(done),
            Err(error) if single => {
                if let Some(reply) = self.end_replies.into_iter().next() {
                    let _ = reply.send(Err(error));
                } else if let Some(reply) = self.start_replies.into_iter().next() {
                    let _ = reply.send(Err(error));
                }
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), writes = self.len(), "a batch of ledger writes failed; running them one by one");
                self.run_one_by_one(writer).await;
            }
        }
    }

    fn answer(self, done: BatchDone) {
        let ended: HashSet<String> = done.ended.into_iter().collect();
        for (write, reply) in self.ends.iter().zip(self.end_replies) {
            // A caller that went away has nothing to hear: its write stands,
            // and lease recovery finishes its message.
            let _ = reply.send(Ok(ended.contains(&write.message_id)));
        }
        let mut by_message: HashMap<String, ClaimedRow> = done
            .claimed
            .into_iter()
            .filter_map(|row| Some((row.lease_message_id.clone()?, row)))
            .collect();
        for (write, reply) in self.starts.iter().zip(self.start_replies) {
            let claimed = by_message.remove(&write.message.id);
            let _ = reply.send(claimed.map(ClaimedCredential::try_from).transpose());
        }
    }

    async fn run_one_by_one(self, writer: &dyn BatchWriter) {
        for (write, reply) in self.ends.iter().zip(self.end_replies) {
            let result = writer.write_batch(std::slice::from_ref(write), &[]).await;
            let _ = reply.send(result.map(|done| !done.ended.is_empty()));
        }
        for (write, reply) in self.starts.iter().zip(self.start_replies) {
            let result = writer.write_batch(&[], std::slice::from_ref(write)).await;
            let claimed = result.and_then(|done| {
                done.claimed
                    .into_iter()
                    .next()
                    .map(ClaimedCredential::try_from)
                    .transpose()
            });
            let _ = reply.send(claimed);
        }
    }
}
