//! The simulation's ledger model against the real SQL, operation by
//! operation: the same seeded schedule of storage calls runs on the model
//! (`LedgerModel`) and on real SQLite (`SqliteStorage`), and after every
//! call both answer alike and hold the same rows. A change to a statement
//! without its twin in the model (or the reverse) fails here, with the
//! schedule that shows it.

use std::fmt::Debug;
use std::sync::Arc;

use formid_gateway::ledger::kinds::CredentialKind;
use formid_gateway::ledger::states::{AttemptOutcome, Channel, Delivery, MessageStatus};
use formid_gateway::storage::{
    ClaimRequest, EndSend, Lease, MessageOutcome, NewAttempt, NewCredential, NewMessage,
    Settlement, StartSend, Storage,
};
use formid_sim::ledger_model::LedgerModel;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const APPID: &str = "wxdifferential01";
const USERS: [&str; 3] = ["o-ann", "o-bob", "o-cat"];
const DAY_MS: i64 = 86_400_000;
const LEASE_MS: i64 = 30_000;
const EPOCH_MS: i64 = 1_800_000_000_000;
/// Schedules, and calls in each.
const SCHEDULES: u64 = 24;
const CALLS: usize = 120;

/// A row of either ledger, as the comparison reads it.
type CredentialRow = (
    i64,
    String,
    String,
    String,
    i64,
    i64,
    String,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);
type MessageRow = (
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);
type AttemptRow = (String, Option<i64>, Option<i64>, String);

#[derive(Debug, PartialEq)]
struct Rows {
    credentials: Vec<CredentialRow>,
    messages: Vec<MessageRow>,
    attempts: Vec<AttemptRow>,
}

async fn sql_rows(pool: &sqlx::SqlitePool) -> Rows {
    Rows {
        credentials: sqlx::query_as(
            "SELECT id, openid, kind, value, uses_left, unproven_uses, state, retired_errcode, \
             lease_message_id, lease_token, lease_expires_at FROM credentials ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        messages: sqlx::query_as(
            "SELECT id, touser, status, error_code, wechat_errcode, lease_until, lease_token, \
             next_attempt_at FROM messages ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        attempts: sqlx::query_as(
            "SELECT message_id, credential_id, errcode, outcome FROM attempts \
             ORDER BY message_id, id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
    }
}

fn model_rows(model: &LedgerModel) -> Rows {
    model.with_tables(|tables| {
        let credentials = tables
            .credentials
            .values()
            .map(|c| {
                (
                    c.id,
                    c.openid.clone(),
                    c.kind.clone(),
                    c.value.clone(),
                    c.uses_left,
                    c.unproven_uses,
                    c.state.as_str().to_owned(),
                    c.retired_errcode,
                    c.lease_message_id.clone(),
                    c.lease_token,
                    c.lease_expires_at,
                )
            })
            .collect();
        let messages = tables
            .messages
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    m.touser.clone(),
                    m.status.as_str().to_owned(),
                    m.error_code.clone(),
                    m.wechat_errcode,
                    m.lease_until,
                    m.lease_token,
                    m.next_attempt_at,
                )
            })
            .collect();
        // Each message's attempts in the order they were written.
        let attempts = tables
            .attempts
            .iter()
            .flat_map(|(message_id, rows)| {
                rows.iter().map(move |a| {
                    (
                        message_id.clone(),
                        a.credential_id,
                        a.errcode,
                        a.outcome.as_str().to_owned(),
                    )
                })
            })
            .collect();
        Rows {
            credentials,
            messages,
            attempts,
        }
    })
}

/// A message this schedule started, and the run that holds it.
#[derive(Debug, Clone)]
struct Started {
    lease: Lease,
    /// The credential last leased to it, if any.
    credential: Option<i64>,
    touser: String,
}

/// One schedule: the calls, and what both ledgers answered to each.
struct Schedule {
    rng: StdRng,
    now: i64,
    started: Vec<Started>,
    next_message: u32,
    log: Vec<String>,
}

impl Schedule {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            now: EPOCH_MS,
            started: Vec::new(),
            next_message: 0,
            log: Vec::new(),
        }
    }

    fn user(&mut self) -> &'static str {
        USERS[self.rng.gen_range(0..USERS.len())]
    }

    fn credentials(&mut self) -> Vec<NewCredential> {
        (0..self.rng.gen_range(1..=3))
            .map(|_| {
                let prepay = self.rng.gen_bool(0.3);
                let kind = if prepay {
                    CredentialKind::PrepayId
                } else {
                    CredentialKind::FormId
                };
                // Few values, so that repeats, owners and kinds collide.
                let value = format!("value-{:02}", self.rng.gen_range(0..24));
                let collected_at = self.now - self.rng.gen_range(0..3 * DAY_MS);
                NewCredential {
                    openid: self.user().to_owned(),
                    kind,
                    value,
                    uses: i64::from(kind.rules().sends),
                    collected_at,
                    expires_at: collected_at + 7 * DAY_MS,
                }
            })
            .collect()
    }

    fn new_message(&mut self) -> (NewMessage, Lease) {
        self.next_message += 1;
        let id = format!("m-{:03}", self.next_message);
        let lease = Lease::new(id.clone(), self.rng.gen_range(1..i64::MAX));
        let message = NewMessage {
            id,
            appid: APPID.to_owned(),
            touser: self.user().to_owned(),
            template_id: "tpl".to_owned(),
            payload: "{}".to_owned(),
            status: MessageStatus::Pending,
            delivery: Delivery::AtMostOnce,
            wait_until: self.rng.gen_bool(0.3).then_some(self.now + 60_000),
            lease_until: self.now + LEASE_MS,
            lease_token: lease.token,
            channel: Channel::Template,
            reference: None,
            idempotency_key: None,
        };
        (message, lease)
    }

    fn settlement(&mut self) -> Settlement {
        match self.rng.gen_range(0..6) {
            0 => Settlement::Spent,
            1 => Settlement::SpentUnproven,
            2 => Settlement::Retired { errcode: 41028 },
            3 => Settlement::Released,
            4 => Settlement::Kept,
            _ => Settlement::Parked {
                until: self.now + LEASE_MS,
            },
        }
    }

    fn outcome(&mut self) -> Option<MessageOutcome> {
        match self.rng.gen_range(0..3) {
            0 => None,
            1 => Some(MessageOutcome {
                status: MessageStatus::Sent,
                error_code: None,
                wechat_errcode: None,
                recovered: false,
            }),
            _ => Some(MessageOutcome {
                status: MessageStatus::Failed,
                error_code: Some("no_credential"),
                wechat_errcode: None,
                recovered: false,
            }),
        }
    }

    fn attempt(&mut self, credential: Option<i64>) -> NewAttempt {
        NewAttempt {
            credential_id: credential,
            credential_kind: credential.map(|_| CredentialKind::FormId),
            errcode: Some(0),
            outcome: AttemptOutcome::Sent,
            detail: None,
            msgid: None,
        }
    }

    /// A message started earlier, sometimes under a token that no longer
    /// holds it (a stalled run's writes must match no row on both).
    fn pick_started(&mut self) -> Option<Started> {
        if self.started.is_empty() {
            return None;
        }
        let index = self.rng.gen_range(0..self.started.len());
        let mut started = self.started[index].clone();
        if self.rng.gen_bool(0.1) {
            started.lease.token ^= 1;
        }
        Some(started)
    }
}

/// The two ledgers under one schedule.
struct Pair {
    model: Arc<LedgerModel>,
    sql: Arc<dyn Storage>,
    pool: sqlx::SqlitePool,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Pair {
    async fn new(seed: u64) -> Self {
        let dir =
            std::env::temp_dir().join(format!("formid-differential-{}-{seed}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("ledger.db").display());
        let sql: Arc<dyn Storage> = Arc::new(
            formid_gateway::storage::SqliteStorage::connect(&url, 2)
                .await
                .unwrap(),
        );
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let model = Arc::new(LedgerModel::new(seed, 0));
        let pair = Self {
            model,
            sql,
            pool,
            _dir: tempdir::Dir(dir),
        };
        for storage in pair.both() {
            storage.ensure_app(APPID).await.unwrap();
        }
        pair
    }

    fn both(&self) -> [Arc<dyn Storage>; 2] {
        [self.model.clone(), self.sql.clone()]
    }

    /// Runs one call on both ledgers; panics with the schedule so far when
    /// they answer differently or hold different rows after it.
    async fn call<T, F, Fut>(&self, schedule: &mut Schedule, name: String, call: F) -> T
    where
        T: Debug,
        F: Fn(Arc<dyn Storage>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let from_model = call(self.model.clone()).await.expect("the model answers");
        let from_sql = call(self.sql.clone()).await.expect("SQLite answers");
        schedule.log.push(format!("{name} -> {from_sql:?}"));
        let history = || schedule.log.join("\n");
        assert_eq!(
            format!("{from_model:?}"),
            format!("{from_sql:?}"),
            "{name}: the model and SQLite answer differently; the schedule:\n{}",
            history()
        );
        let (model_rows, sql_rows) = (model_rows(&self.model), sql_rows(&self.pool).await);
        assert_eq!(
            model_rows,
            sql_rows,
            "{name}: the model and SQLite hold different rows; the schedule:\n{}",
            history()
        );
        from_sql
    }
}

/// One call of the schedule, drawn and run on both ledgers.
async fn step(pair: &Pair, schedule: &mut Schedule) {
    let now = schedule.now;
    match schedule.rng.gen_range(0..12) {
        0 | 1 => {
            let items = schedule.credentials();
            let name = format!("insert_credentials {items:?}");
            pair.call(schedule, name, |s| {
                let items = items.clone();
                async move { s.insert_credentials(APPID, &items, now).await }
            })
            .await;
        }
        2 | 3 => {
            let (message, lease) = schedule.new_message();
            let start = StartSend {
                message,
                valid_after: now + 60_000,
                now,
            };
            let name = format!("start_send {}", start.message.id);
            let claimed = pair
                .call(schedule, name, |s| {
                    let start = start.clone();
                    async move { s.start_send(&start).await }
                })
                .await;
            schedule.started.push(Started {
                lease,
                credential: claimed.map(|credential| credential.id),
                touser: start.message.touser.clone(),
            });
        }
        4 => {
            let Some(started) = schedule.pick_started() else {
                return;
            };
            let name = format!("claim_credential {:?}", started.lease);
            let claim = pair
                .call(schedule, name, |s| {
                    let (lease, touser) = (started.lease.clone(), started.touser.clone());
                    async move {
                        s.claim_credential(&ClaimRequest {
                            appid: APPID,
                            openid: &touser,
                            grant_of: None,
                            lease: &lease,
                            valid_after: now + 60_000,
                            lease_until: now + LEASE_MS,
                            now,
                        })
                        .await
                    }
                })
                .await;
            if let formid_gateway::storage::Claim::Claimed(credential) = claim {
                schedule.set_credential(&started.lease, Some(credential.id));
            }
        }
        5 => {
            let Some(started) = schedule.pick_started() else {
                return;
            };
            let attempt = schedule.attempt(started.credential);
            let settlement = started.credential.map(|id| (id, schedule.settlement()));
            let outcome = schedule.outcome();
            let name = format!(
                "record_attempt {:?} {settlement:?} {outcome:?}",
                started.lease
            );
            pair.call(schedule, name, |s| {
                let (lease, attempt, outcome) =
                    (started.lease.clone(), attempt.clone(), outcome.clone());
                async move {
                    s.record_attempt(&lease, &attempt, settlement, outcome.as_ref(), now)
                        .await
                }
            })
            .await;
        }
        6 => {
            let Some(started) = schedule.pick_started() else {
                return;
            };
            let Some(credential_id) = started.credential else {
                return;
            };
            let end = EndSend {
                message_id: started.lease.message_id.clone(),
                lease_token: started.lease.token,
                credential_id,
                attempt: schedule.attempt(Some(credential_id)),
                outcome: MessageOutcome {
                    status: MessageStatus::Sent,
                    error_code: None,
                    wechat_errcode: None,
                    recovered: false,
                },
                now,
            };
            let name = format!("end_send {:?} {credential_id}", started.lease);
            pair.call(schedule, name, |s| {
                let end = end.clone();
                async move { s.end_send(&end).await }
            })
            .await;
        }
        7 => {
            let Some(started) = schedule.pick_started() else {
                return;
            };
            let next = now + schedule.rng.gen_range(0..60_000);
            let for_token = schedule.rng.gen_bool(0.5);
            let name = format!(
                "wait (for a token: {for_token}) {:?} until {next}",
                started.lease
            );
            pair.call(schedule, name, |s| {
                let lease = started.lease.clone();
                async move {
                    if for_token {
                        s.wait_for_token(&lease, next, now).await
                    } else {
                        s.wait_message(&lease, next, now + 60_000, now).await
                    }
                }
            })
            .await;
        }
        8 => {
            let Some(started) = schedule.pick_started() else {
                return;
            };
            let name = format!("renew_lease {:?}", started.lease);
            pair.call(schedule, name, |s| {
                let lease = started.lease.clone();
                async move { s.renew_lease(&lease, now + LEASE_MS).await }
            })
            .await;
        }
        9 => {
            // Time passes; recovery and the waiting worker take what is due.
            schedule.now += schedule.rng.gen_range(1_000..40_000);
            let now = schedule.now;
            let token = schedule.rng.gen_range(1..i64::MAX);
            let name = format!("claim_expired_leases at {now}");
            let credentials = pair
                .call(schedule, name, |s| async move {
                    // Rows that tie on the order key come back in any order.
                    let mut rows = s
                        .claim_expired_leases(now, now + LEASE_MS, token, 8)
                        .await?;
                    rows.sort_by_key(|row| row.id);
                    Ok(rows)
                })
                .await;
            for credential in credentials {
                if let Some(message_id) = &credential.lease_message_id {
                    schedule.retake(message_id, token, Some(credential.id));
                }
            }
            let token = schedule.rng.gen_range(1..i64::MAX);
            let name = format!("claim_due_waiting at {now}");
            let due = pair
                .call(schedule, name, |s| async move {
                    // Rows that tie on the order key come back in any order.
                    let mut rows = s.claim_due_waiting(now, now + LEASE_MS, token, 8).await?;
                    rows.sort_by_key(|row| row.id.clone());
                    Ok(rows)
                })
                .await;
            for message in due {
                schedule.retake(&message.id, token, None);
            }
            let token = schedule.rng.gen_range(1..i64::MAX);
            let name = format!("claim_stale_messages at {now}");
            let stale = pair
                .call(schedule, name, |s| async move {
                    // Rows that tie on the order key come back in any order.
                    let mut rows = s
                        .claim_stale_messages(now, now + LEASE_MS, token, 8)
                        .await?;
                    rows.sort_by_key(|row| row.id.clone());
                    Ok(rows)
                })
                .await;
            for message in stale {
                schedule.retake(&message.id, token, None);
            }
        }
        10 => {
            let user = schedule.user();
            let name = format!("quota {user}");
            pair.call(schedule, name, |s| async move {
                s.quota(APPID, user, now + 60_000).await
            })
            .await;
            let name = "message_backlog".to_owned();
            pair.call(schedule, name, |s| async move {
                // One app: the rows come in the statement's status order.
                s.message_backlog().await
            })
            .await;
        }
        _ => {
            let Some(started) = schedule.pick_started() else {
                return;
            };
            let Some(credential_id) = started.credential else {
                return;
            };
            let name = format!("release_credentials [{credential_id}] {:?}", started.lease);
            pair.call(schedule, name, |s| {
                let token = started.lease.token;
                async move { s.release_credentials(&[credential_id], token, now).await }
            })
            .await;
        }
    }
}

impl Schedule {
    /// Another run took the message under `token`.
    fn retake(&mut self, message_id: &str, token: i64, credential: Option<i64>) {
        if let Some(started) = self
            .started
            .iter_mut()
            .find(|started| started.lease.message_id == message_id)
        {
            started.lease.token = token;
            if credential.is_some() {
                started.credential = credential;
            }
        }
    }

    fn set_credential(&mut self, lease: &Lease, credential: Option<i64>) {
        if let Some(started) = self
            .started
            .iter_mut()
            .find(|started| started.lease == *lease)
        {
            started.credential = credential;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_and_sqlite_answer_and_hold_alike_call_by_call() {
    for seed in 0..SCHEDULES {
        let pair = Pair::new(seed).await;
        let mut schedule = Schedule::new(seed);
        for _ in 0..CALLS {
            step(&pair, &mut schedule).await;
        }
    }
}
