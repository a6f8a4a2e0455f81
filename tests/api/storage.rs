//! The storage contract, straight on the trait: the same checks on both ledgers.

use std::collections::HashSet;

use formid_gateway::ledger::collect::insert_outcome;
use formid_gateway::ledger::kinds::CredentialKind;
use formid_gateway::ledger::states::{AttemptOutcome, Delivery, MessageStatus};
use formid_gateway::ledger::subscriptions::prompt_plan;
use formid_gateway::storage::{
    Claim, ClaimRequest, EndSend, InsertOutcome, Lease, MessageOutcome, NewAttempt, NewCredential,
    NewMessage, Settlement, StartSend, StoredCredential,
};

use rstest::rstest;

use crate::helpers::*;

fn credential(openid: &str, value: &str, collected_at: i64) -> NewCredential {
    NewCredential {
        openid: openid.into(),
        kind: CredentialKind::FormId,
        value: value.into(),
        uses: 1,
        collected_at,
        expires_at: CredentialKind::FormId.expires_at_ms(collected_at),
    }
}

/// The fencing token of every message these tests create.
const TOKEN: i64 = 7;

fn message(id: &str, touser: &str, now: i64) -> NewMessage {
    NewMessage {
        id: id.into(),
        appid: APPID.into(),
        touser: touser.into(),
        template_id: TEMPLATE.into(),
        payload: "{}".into(),
        status: MessageStatus::Pending,
        delivery: Delivery::AtMostOnce,
        wait_until: None,
        lease_until: now + 60_000,
        lease_token: TOKEN,
        channel: formid_gateway::ledger::states::Channel::Template,
        reference: None,
        idempotency_key: None,
    }
}

/// The end of a send WeChat accepted, under [`TOKEN`].
fn sent(message_id: String, credential_id: i64, now: i64) -> EndSend {
    EndSend {
        message_id,
        lease_token: TOKEN,
        credential_id,
        attempt: NewAttempt {
            credential_id: Some(credential_id),
            credential_kind: Some(CredentialKind::FormId),
            errcode: Some(0),
            outcome: AttemptOutcome::Sent,
            detail: None,
            msgid: None,
        },
        outcome: MessageOutcome {
            status: MessageStatus::Sent,
            error_code: None,
            wechat_errcode: Some(0),
            recovered: false,
        },
        now,
    }
}

// Starts and ends of sends are batched (group commit): under concurrency
// each caller must still get its own claim, and a write that fails must
// fail alone.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_starts_and_ends_keep_each_callers_result(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let now = app.now_ms();
    let users: Vec<String> = (0..30).map(|i| format!("o-batch-{i}")).collect();
    let items: Vec<_> = users
        .iter()
        .flat_map(|user| {
            [
                credential(user, &format!("{user}-a"), now - 2),
                credential(user, &format!("{user}-b"), now - 1),
            ]
        })
        .collect();
    app.storage
        .insert_credentials(APPID, &items, now)
        .await
        .unwrap();
    app.storage
        .create_message(&message("m-taken", "o-nobody", now), now)
        .await
        .unwrap();
    // Three starts per user (two can claim), five for a user with nothing,
    // and one whose message id is taken, all at once.
    let mut starts: Vec<(String, String)> = users
        .iter()
        .flat_map(|user| (0..3).map(move |n| (format!("m-{user}-{n}"), user.clone())))
        .collect();
    starts.extend((0..5).map(|n| (format!("m-nobody-{n}"), "o-nobody".to_owned())));
    starts.push(("m-taken".to_owned(), users[0].clone()));
    let tasks = starts.iter().cloned().map(|(id, user)| {
        let storage = app.storage.clone();
        tokio::spawn(async move {
            storage
                .start_send(&StartSend {
                    message: message(&id, &user, now),
                    valid_after: now,
                    now,
                })
                .await
        })
    });
    let results = futures::future::join_all(tasks).await;
    let mut claimed = Vec::new();
    let mut failed = 0;
    for ((id, user), result) in starts.iter().zip(results) {
        match result.unwrap() {
            Ok(Some(credential)) => {
                assert_eq!(credential.lease_message_id.as_deref(), Some(id.as_str()));
                assert!(
                    credential.value.starts_with(&format!("{user}-")),
                    "{user} got {}",
                    credential.value
                );
                claimed.push((id.clone(), credential));
            }
            Ok(None) => {}
            Err(_) => {
                assert_eq!(id, "m-taken", "only the write that broke a rule fails");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 1, "a message id used twice is refused");
    for user in &users {
        let theirs = claimed
            .iter()
            .filter(|(_, credential)| credential.value.starts_with(&format!("{user}-")))
            .count();
        assert_eq!(theirs, 2, "{user}: two of three starts claim");
    }
    assert_eq!(claimed.len(), 60, "every credential claimed, none twice");
    let values: HashSet<&str> = claimed
        .iter()
        .map(|(_, credential)| credential.value.as_str())
        .collect();
    assert_eq!(values.len(), 60);

    let ends = claimed.iter().cloned().map(|(id, credential)| {
        let storage = app.storage.clone();
        tokio::spawn(async move { storage.end_send(&sent(id, credential.id, now)).await })
    });
    for result in futures::future::join_all(ends).await {
        assert!(result.unwrap().unwrap(), "every end holds its lease");
    }
    for (id, _) in &claimed {
        let (row, attempts) = app.storage.message(APPID, id).await.unwrap().unwrap();
        assert_eq!(row.status, MessageStatus::Sent);
        assert_eq!(attempts.len(), 1);
    }
    for user in &users {
        assert!(
            app.storage
                .quota(APPID, user, now)
                .await
                .unwrap()
                .is_empty(),
            "{user} spent both"
        );
    }
}

// A batch of ends answers each caller by its own message's lease: the
// ends of messages another run took over change nothing and say so, beside
// ends that hold, in the same batch.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_ends_answers_each_by_its_own_lease(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let now = app.now_ms();
    let users: Vec<String> = (0..20).map(|i| format!("o-fenced-{i}")).collect();
    let items: Vec<_> = users
        .iter()
        .map(|user| credential(user, &format!("{user}-f"), now))
        .collect();
    app.storage
        .insert_credentials(APPID, &items, now)
        .await
        .unwrap();
    let mut started = Vec::new();
    for (n, user) in users.iter().enumerate() {
        let id = uuid::Uuid::new_v4().to_string();
        let mut new = message(&id, user, now);
        // Every other message's lease has run out: recovery takes it over.
        let taken_over = n % 2 == 1;
        if taken_over {
            new.lease_until = now - 1;
        }
        let claimed = app
            .storage
            .start_send(&StartSend {
                message: new,
                valid_after: now,
                now,
            })
            .await
            .unwrap()
            .expect("a credential");
        started.push((id, claimed.id, taken_over));
    }
    let recovered = app
        .storage
        .claim_expired_leases(now, now + 60_000, 99, 100)
        .await
        .unwrap();
    assert_eq!(recovered.len(), 10);

    let ends = started.iter().cloned().map(|(id, credential_id, _)| {
        let storage = app.storage.clone();
        tokio::spawn(async move { storage.end_send(&sent(id, credential_id, now)).await })
    });
    let held: Vec<bool> = futures::future::join_all(ends)
        .await
        .into_iter()
        .map(|result| result.unwrap().unwrap())
        .collect();
    for ((id, _, taken_over), held) in started.iter().zip(held) {
        assert_eq!(held, !taken_over, "{id}: the end holds only its own lease");
        let (row, _) = app.storage.message(APPID, id).await.unwrap().unwrap();
        let expected = if *taken_over {
            MessageStatus::Pending
        } else {
            MessageStatus::Sent
        };
        assert_eq!(row.status, expected, "{id}");
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_lease_one_credential_twice(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let now = app.now_ms();
    let items: Vec<_> = (0..5)
        .map(|i| credential("o-race", &format!("v{i}"), now - i))
        .collect();
    let outcomes = app
        .storage
        .insert_credentials(APPID, &items, now)
        .await
        .unwrap();
    assert!(outcomes
        .iter()
        .all(|outcome| *outcome == StoredCredential::Inserted));
    app.storage
        .create_message(&message("m-race", "o-race", now), now)
        .await
        .unwrap();
    let claims = (0..20).map(|_| {
        let storage = app.storage.clone();
        tokio::spawn(async move {
            let lease = Lease {
                message_id: "m-race".into(),
                token: TOKEN,
            };
            storage
                .claim_credential(&ClaimRequest {
                    appid: APPID,
                    openid: "o-race",
                    grant_of: None,
                    lease: &lease,
                    valid_after: now,
                    lease_until: now + 60_000,
                    now,
                })
                .await
                .unwrap()
        })
    });
    let claimed: Vec<_> = futures::future::join_all(claims)
        .await
        .into_iter()
        .filter_map(|claim| match claim.unwrap() {
            Claim::Claimed(credential) => Some(credential),
            Claim::NoneLeft => None,
            Claim::LeaseLost => panic!("the message's own token holds its lease"),
        })
        .collect();
    assert_eq!(claimed.len(), 5);
    let ids: HashSet<i64> = claimed.iter().map(|credential| credential.id).collect();
    assert_eq!(ids.len(), 5, "each credential leased once");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_follow_expiry_and_settlements_only_touch_leased_rows(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let now = app.now_ms();
    let items = vec![
        credential("o-order", "late", now),
        credential("o-order", "early", now - 1000),
    ];
    app.storage
        .insert_credentials(APPID, &items, now)
        .await
        .unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    app.storage
        .create_message(&message(&id, "o-order", now), now)
        .await
        .unwrap();
    let lease = Lease {
        message_id: id.clone(),
        token: TOKEN,
    };
    let claim = |lease: Lease| {
        let storage = app.storage.clone();
        async move {
            storage
                .claim_credential(&ClaimRequest {
                    appid: APPID,
                    openid: "o-order",
                    grant_of: None,
                    lease: &lease,
                    valid_after: now,
                    lease_until: now + 1,
                    now,
                })
                .await
                .unwrap()
        }
    };
    let Claim::Claimed(first) = claim(lease.clone()).await else {
        panic!("the soonest-expiring credential is claimed")
    };
    assert_eq!(first.value, "early");
    assert_eq!(first.lease_message_id.as_deref(), Some(id.as_str()));
    let attempt = NewAttempt {
        credential_id: Some(first.id),
        credential_kind: Some(CredentialKind::FormId),
        errcode: Some(0),
        outcome: AttemptOutcome::Sent,
        detail: None,
        msgid: None,
    };
    let settle = |settlement| {
        let storage = app.storage.clone();
        let (lease, attempt) = (lease.clone(), attempt.clone());
        async move {
            storage
                .record_attempt(&lease, &attempt, Some((first.id, settlement)), None, now)
                .await
                .unwrap()
        }
    };
    assert!(settle(Settlement::Spent).await);
    // A second settlement of a row no longer leased changes nothing.
    assert!(settle(Settlement::Released).await);
    let Claim::Claimed(second) = claim(lease.clone()).await else {
        panic!("the next credential is claimed")
    };
    assert_eq!(second.value, "late");
    assert!(matches!(claim(lease.clone()).await, Claim::NoneLeft));
    let (_, attempts) = app.storage.message(APPID, &id).await.unwrap().unwrap();
    assert_eq!(attempts.len(), 2);
}

/// Once another run took a message over (recovery writes a
/// new token), every write of the run that lost it does nothing but record
/// its attempt: it cannot settle, finish, wait, renew or claim.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_was_taken_over_can_no_longer_write(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let now = app.now_ms();
    let items = vec![
        credential("o-fence", "first", now - 1000),
        credential("o-fence", "second", now),
    ];
    app.storage
        .insert_credentials(APPID, &items, now)
        .await
        .unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let claimed = app
        .storage
        .start_send(&StartSend {
            message: message(&id, "o-fence", now),
            valid_after: now,
            now,
        })
        .await
        .unwrap()
        .expect("a credential");
    let old = Lease {
        message_id: id.clone(),
        token: TOKEN,
    };
    // The old run stalls past its lease; recovery takes the credential and,
    // in the same transaction, its message under its own token.
    let later = now + 61_000;
    let recovered = app
        .storage
        .claim_expired_leases(later, later + 60_000, 99, 10)
        .await
        .unwrap();
    assert_eq!(recovered.len(), 1);
    let new = Lease {
        message_id: id.clone(),
        token: 99,
    };
    // A recovery that lost the credential and the message to this one can
    // no longer renew (so never calls).
    let stranger = Lease {
        message_id: id.clone(),
        token: 123,
    };
    assert!(!app
        .storage
        .renew_lease(&stranger, later + 60_000)
        .await
        .unwrap());

    let attempt = NewAttempt {
        credential_id: Some(claimed.id),
        credential_kind: Some(CredentialKind::FormId),
        errcode: Some(41029),
        outcome: AttemptOutcome::Retired,
        detail: None,
        msgid: None,
    };
    let retired = Settlement::Retired { errcode: 41029 };
    assert!(!app
        .storage
        .record_attempt(&old, &attempt, Some((claimed.id, retired)), None, later)
        .await
        .unwrap());
    assert!(matches!(
        app.storage
            .claim_credential(&ClaimRequest {
                appid: APPID,
                openid: "o-fence",
                grant_of: None,
                lease: &old,
                valid_after: later,
                lease_until: later + 60_000,
                now: later
            })
            .await
            .unwrap(),
        Claim::LeaseLost
    ));
    let sent = MessageOutcome {
        status: MessageStatus::Sent,
        error_code: None,
        wechat_errcode: None,
        recovered: false,
    };
    assert!(!app
        .storage
        .finish_message(&old, &sent, later)
        .await
        .unwrap());
    assert!(!app.storage.renew_lease(&old, later + 60_000).await.unwrap());
    assert!(!app
        .storage
        .wait_message(&old, later + 60_000, later, later)
        .await
        .unwrap());
    let end = EndSend {
        message_id: id.clone(),
        lease_token: TOKEN,
        credential_id: claimed.id,
        attempt: attempt.clone(),
        outcome: sent.clone(),
        now: later,
    };
    assert!(!app.storage.end_send(&end).await.unwrap());
    // Nothing changed but the attempts: the credential is still leased to
    // the new run, the other one untouched, the message pending.
    let quota = app.storage.quota(APPID, "o-fence", later).await.unwrap();
    assert_eq!(quota.iter().map(|kind| kind.credentials).sum::<i64>(), 1);
    let (row, attempts) = app.storage.message(APPID, &id).await.unwrap().unwrap();
    assert_eq!(row.status, MessageStatus::Pending);
    assert_eq!(
        attempts.len(),
        2,
        "the calls themselves are facts, recorded"
    );
    // The new run's writes go through.
    assert!(app
        .storage
        .record_attempt(
            &new,
            &attempt,
            Some((claimed.id, Settlement::Spent)),
            Some(&sent),
            later
        )
        .await
        .unwrap());
    let (row, _) = app.storage.message(APPID, &id).await.unwrap().unwrap();
    assert_eq!(row.status, MessageStatus::Sent);
}

/// Found by the simulation (crates/sim, seeds 525 and 2563): recovery that
/// re-leases a credential whose lease ran out takes its pending message in
/// the same transaction, under the same token. If only the credential
/// changed hands, the run that had stalled past its lease (waiting for a
/// token) would still pass its message's fence, renew, call WeChat and
/// finish the message while its settlement was fenced off, and the
/// credential would go back to the pool with a use WeChat had spent.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_takes_the_message_with_its_credential(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let now = app.now_ms();
    app.storage
        .insert_credentials(APPID, &[credential("o-stall", "stalled", now)], now)
        .await
        .unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let claimed = app
        .storage
        .start_send(&StartSend {
            message: message(&id, "o-stall", now),
            valid_after: now,
            now,
        })
        .await
        .unwrap()
        .expect("a credential");
    let stalled = Lease {
        message_id: id.clone(),
        token: TOKEN,
    };
    let later = now + 61_000;
    let recovered = app
        .storage
        .claim_expired_leases(later, later + 60_000, 99, 10)
        .await
        .unwrap();
    assert_eq!(recovered.len(), 1);
    // The stalled run can neither renew (and so never calls) nor finish.
    assert!(!app
        .storage
        .renew_lease(&stalled, later + 60_000)
        .await
        .unwrap());
    let attempt = NewAttempt {
        credential_id: Some(claimed.id),
        credential_kind: Some(CredentialKind::FormId),
        errcode: Some(0),
        outcome: AttemptOutcome::Sent,
        detail: None,
        msgid: None,
    };
    let sent = MessageOutcome {
        status: MessageStatus::Sent,
        error_code: None,
        wechat_errcode: None,
        recovered: false,
    };
    assert!(!app
        .storage
        .end_send(&EndSend {
            message_id: id.clone(),
            lease_token: TOKEN,
            credential_id: claimed.id,
            attempt,
            outcome: sent,
            now: later,
        })
        .await
        .unwrap());
    let (row, _) = app.storage.message(APPID, &id).await.unwrap().unwrap();
    assert_eq!(row.status, MessageStatus::Pending);
    // The recovering run holds both.
    let recovering = Lease {
        message_id: id.clone(),
        token: 99,
    };
    assert!(app
        .storage
        .renew_lease(&recovering, later + 60_000)
        .await
        .unwrap());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_token_never_overwrites_a_newer_one(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    assert!(app
        .storage
        .store_token(APPID, "newer", 2_000_000, 200)
        .await
        .unwrap());
    assert!(!app
        .storage
        .store_token(APPID, "older", 3_000_000, 100)
        .await
        .unwrap());
    let state = app.storage.app_state(APPID).await.unwrap();
    assert_eq!(state.access_token.as_deref(), Some("newer"));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_lease_has_one_holder_until_it_expires(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let storage = &app.storage;
    assert!(storage
        .try_lease_token_refresh(APPID, "a", 1_000, 31_000)
        .await
        .unwrap());
    assert!(!storage
        .try_lease_token_refresh(APPID, "b", 2_000, 32_000)
        .await
        .unwrap());
    // Its holder died: the lease can be taken over once it has run out.
    assert!(storage
        .try_lease_token_refresh(APPID, "b", 31_000, 61_000)
        .await
        .unwrap());
    storage.release_token_refresh(APPID, "a").await.unwrap();
    assert!(
        !storage
            .try_lease_token_refresh(APPID, "c", 32_000, 62_000)
            .await
            .unwrap(),
        "a stale holder cannot release"
    );
    storage.release_token_refresh(APPID, "b").await.unwrap();
    assert!(storage
        .try_lease_token_refresh(APPID, "c", 32_000, 62_000)
        .await
        .unwrap());
}

/// Runs `statements` on a fresh database of `backend` migrated only up to
/// 0002, then opens it as the gateway does (which applies the rest).
async fn ledger_from_before_0003(
    backend: Backend,
    statements: &[&str],
) -> (
    std::sync::Arc<dyn formid_gateway::storage::Storage>,
    String,
    Option<std::path::PathBuf>,
) {
    let (url, dir) = fresh_database(backend).await;
    let folder = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let old = std::env::temp_dir().join(format!("formid-migrations-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&old).unwrap();
    for name in ["0001_ledger.sql", "0002_reliability.sql"] {
        let from = std::path::Path::new("migrations").join(folder).join(name);
        std::fs::copy(from, old.join(name)).unwrap();
    }
    let migrator = sqlx::migrate::Migrator::new(old.as_path()).await.unwrap();
    match backend {
        Backend::Sqlite => {
            use std::str::FromStr;
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                .unwrap()
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            migrator.run(&pool).await.unwrap();
            for statement in statements {
                sqlx::query(statement).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            migrator.run(&pool).await.unwrap();
            for statement in statements {
                sqlx::query(statement).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
    }
    std::fs::remove_dir_all(old).unwrap();
    let storage = formid_gateway::storage::connect(&url, 2).await.unwrap();
    (storage, url, dir)
}

// Migration 0003 makes a value one credential per app whatever its kind.
// Rows that already broke that rule are kept: one row of each group keeps
// the value (a leased one first, else the oldest); the others are renamed
// out of the way and, when available, retired, so the one WeChat
// credential is counted once.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0003_keeps_every_row_and_counts_a_value_once(#[case] backend: Backend) {
    let far = 4_000_000_000_000_i64;
    // Rows get ids 1, 2, … in this order on a fresh database.
    let row = |_id: i64, openid: &str, kind: &str, value: &str, state: &str| {
        format!(
            "INSERT INTO credentials (appid, openid, kind, value, uses_left, state, \
             collected_at, expires_at, created_at, updated_at) VALUES \
             ('{APPID}', '{openid}', '{kind}', '{value}', 1, '{state}', 1, {far}, 1, 1)"
        )
    };
    let statements = [
        format!("INSERT INTO apps (appid) VALUES ('{APPID}')"),
        row(1, "o-a", "form_id", "v-shared", "available"),
        row(2, "o-b", "prepay_id", "v-shared", "available"),
        row(3, "o-a", "form_id", "v-spent", "exhausted"),
        row(4, "o-a", "prepay_id", "v-spent", "available"),
        row(5, "o-c", "form_id", "v-leased", "available"),
        row(6, "o-c", "prepay_id", "v-leased", "leased"),
        row(7, "o-d", "form_id", "v-alone", "available"),
    ];
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    let (storage, url, dir) = ledger_from_before_0003(backend, &statements).await;

    let rows: Vec<(i64, String, String)> = match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query_as("SELECT id, value, state FROM credentials ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let rows = sqlx::query_as("SELECT id, value, state FROM credentials ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
            pool.close().await;
            rows
        }
    };
    let expected = [
        (1, "v-shared", "available"),
        (2, "v-shared duplicate 2", "retired"),
        (3, "v-spent", "exhausted"),
        (4, "v-spent duplicate 4", "retired"),
        (5, "v-leased duplicate 5", "retired"),
        (6, "v-leased", "leased"),
        (7, "v-alone", "available"),
    ];
    let expected: Vec<(i64, String, String)> = expected
        .iter()
        .map(|(id, value, state)| (*id, value.to_string(), state.to_string()))
        .collect();
    assert_eq!(rows, expected);

    // And from now on a value is one credential, whatever kind it is posted as.
    let now = 1_000;
    let post = |openid: &str, kind: CredentialKind, value: &str| NewCredential {
        openid: openid.into(),
        kind,
        value: value.into(),
        uses: 1,
        collected_at: now,
        expires_at: far,
    };
    let items = [
        post("o-a", CredentialKind::FormId, "v-shared"),
        post("o-a", CredentialKind::PrepayId, "v-shared"),
        post("o-b", CredentialKind::PrepayId, "v-shared"),
        post("o-e", CredentialKind::FormId, "v-new"),
        post("o-e", CredentialKind::PrepayId, "v-new"),
    ];
    let stored = storage
        .insert_credentials(APPID, &items, now)
        .await
        .unwrap();
    let outcomes: Vec<_> = stored
        .iter()
        .zip(&items)
        .map(|(stored, item)| insert_outcome(stored, item))
        .collect();
    assert_eq!(
        outcomes,
        [
            InsertOutcome::Duplicate,
            InsertOutcome::KindConflict,
            InsertOutcome::OwnedByAnotherUser,
            InsertOutcome::Inserted,
            InsertOutcome::KindConflict,
        ]
    );
    drop(storage);
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    if backend == Backend::Postgres {
        drop_postgres_database(&url);
    }
}

/// The templates users decided on are listed once each, per app, whatever
/// the decision and however many users made one; the catalogue's entries
/// come with them.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_templates_list_each_decided_template_once(#[case] backend: Backend) {
    use formid_gateway::ledger::states::{Channel, Decision};
    use formid_gateway::storage::{NewPrompt, PromptDecision};

    let app = spawn_app(backend).await;
    let now = app.now_ms();
    let empty = app.storage.send_templates(APPID).await.unwrap();
    assert_eq!(empty.for_send("T-a").channel, None);
    for (openid, templates) in [
        (
            "o-1",
            vec![("T-a", Decision::Accept), ("T-b", Decision::Reject)],
        ),
        ("o-2", vec![("T-a", Decision::Accept)]),
        ("o-3", vec![("T-c", Decision::Ban)]),
    ] {
        let prompt = NewPrompt {
            appid: APPID.into(),
            openid: openid.into(),
            request_id: format!("r-{openid}"),
            request_hash: "h".into(),
            plans: templates
                .iter()
                .map(|(_, decision)| prompt_plan(true, *decision))
                .collect(),
            decisions: templates
                .into_iter()
                .map(|(template_id, decision)| PromptDecision {
                    template_id: template_id.into(),
                    decision,
                })
                .collect(),
        };
        app.storage.record_prompt(&prompt, now).await.unwrap();
    }
    let templates = app.storage.send_templates(APPID).await.unwrap();
    for template_id in ["T-a", "T-b", "T-c"] {
        let known = templates.for_send(template_id);
        assert_eq!(known.channel, Some(Channel::Subscribe), "{template_id}");
        assert!(known.template.is_none());
    }
    assert_eq!(templates.for_send("T-d").channel, None);
    assert_eq!(templates.for_send(TEMPLATE).channel, None);
    // Another app's users decided on nothing.
    let other = app.storage.send_templates("wx-other-app").await.unwrap();
    assert_eq!(other.for_send("T-a").channel, None);
}

/// The generic plan of `statement` on `connection`, line by line: the plan
/// made once whatever is bound, so the arguments are NULLs. `types` names
/// the parameters' types where PostgreSQL cannot infer them (`""` where it
/// can; the gateway binds typed values).
async fn generic_plan(connection: &mut sqlx::PgConnection, statement: &str, types: &str) -> String {
    use sqlx::{Executor, Row};
    let params = (1..=2000)
        .filter(|k| statement.contains(&format!("${k}")))
        .max()
        .unwrap_or(0);
    connection
        .execute(format!("PREPARE planned{types} AS {statement}").as_str())
        .await
        .unwrap();
    let nulls = vec!["NULL"; params].join(", ");
    let rows = connection
        .fetch_all(format!("EXPLAIN EXECUTE planned({nulls})").as_str())
        .await
        .unwrap();
    connection.execute("DEALLOCATE planned").await.unwrap();
    rows.iter()
        .map(|row| row.get::<String, _>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every index scan of `plan` looks rows up by a key (an `Index Cond`): no
/// index is read whole.
fn assert_no_index_read_whole(name: &str, plan: &str) {
    let lines: Vec<&str> = plan.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        if line.contains("Index Scan using") || line.contains("Index Only Scan using") {
            assert!(
                lines
                    .get(n + 1)
                    .is_some_and(|next| next.contains("Index Cond")),
                "{name}: an index read whole in:\n{plan}"
            );
        }
    }
}

/// A plan kept for good: lookups by key in nested loops, whatever the
/// tables hold; nothing read whole, no sequential scan, no hash or merge.
fn assert_lookups_by_key(name: &str, plan: &str) {
    for unwanted in ["Seq Scan", "Hash Join", "Merge Join"] {
        assert!(!plan.contains(unwanted), "{name}: {unwanted} in:\n{plan}");
    }
    assert_no_index_read_whole(name, plan);
}

/// Fills a migrated ledger with rows in every state but the ones the
/// partial indexes hold (no credential leased, no message pending) and
/// analyzes it: what a busy ledger's statistics say after a quiet moment.
async fn make_ledger_look_idle(url: &str) {
    use sqlx::{Connection, Executor};
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    connection
        .execute(
            "INSERT INTO credentials (appid, openid, kind, value, uses_left, state, \
                 collected_at, expires_at, created_at, updated_at) \
             SELECT 'wxidle', 'user' || (g % 500), 'prepay_id', 'v' || g, 3, \
                 CASE WHEN g % 2 = 0 THEN 'available' ELSE 'exhausted' END, 1, 9e12, 1, 1 \
             FROM generate_series(1, 5000) g; \
             INSERT INTO messages (id, appid, touser, template_id, payload, status, \
                 created_at, updated_at) \
             SELECT 'm' || g, 'wxidle', 'user' || (g % 500), 't', '{}', 'sent', g, g \
             FROM generate_series(1, 5000) g; \
             INSERT INTO broadcasts (id, appid, template_id, channel, spec, state, send_at, \
                 rate, next_lease_at, recipients, created_at, updated_at) \
             SELECT 'b' || g, 'wxidle', 't', 'subscribe', '{}', 'finished', 1, 100, 1, 10, 1, 1 \
             FROM generate_series(1, 500) g; \
             INSERT INTO broadcast_recipients (broadcast_id, seq, openid, state, updated_at) \
             SELECT 'b' || (g / 10 + 1), g % 10 + 1, 'user' || g, 'sent', 1 \
             FROM generate_series(0, 4999) g; \
             ANALYZE",
        )
        .await
        .unwrap();
    connection.close().await.unwrap();
}

/// Statements that find their rows by key must be planned as lookups by key
/// on any statistics. Two ways this failed, both found with
/// `pg_stat_statements` under `formid-bench` on PostgreSQL:
///
/// - `= 'leased'` / `= 'pending'` next to `id = $1` let the planner use a
///   partial index of rows in that state; when the last ANALYZE saw none, a
///   scan of the whole index cost as little as the lookup, so every
///   settlement, fence and end batch read every leased credential or pending
///   message (541 blocks per end batch at 256 sends in flight);
/// - group commit keeps its statements' plans (see `group_commit_pool`), and
///   PostgreSQL's own plan on a fresh ledger hashes a sequential scan of
///   `messages` (2.3 ms per end batch once the table had grown); its
///   connections allow lookups in nested loops only.
///
/// - a broadcast's lease marked its recipients by `seq IN ($5, …)`: with
///   statistics of many small jobs, the generic plan found the job's rows by
///   `broadcast_id` alone and filtered them, 7 s per lease at a million
///   recipients (found with `auto_explain` under `formid-bench
///   --broadcast 1000000`).
///
/// This holds every such statement's plan, each on the connections that run
/// it, on a ledger that looks idle and on one that is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_by_key_are_planned_as_lookups_on_any_statistics() {
    use formid_gateway::storage::testing::{
        group_commit_pool, sql, END_BATCH, KEYED_PLANNING, START_BATCH,
    };
    use sqlx::{Connection, Executor};
    use std::str::FromStr;
    let keyed = [
        ("FENCE_MESSAGE", sql::FENCE_MESSAGE, ""),
        ("FENCE_MESSAGE_KEEPING", sql::FENCE_MESSAGE_KEEPING, ""),
        (
            "WAIT_MESSAGE",
            sql::WAIT_MESSAGE,
            "(text, int8, int8, int8, int8)",
        ),
        ("SETTLE_SPENT", sql::SETTLE_SPENT, ""),
        ("SETTLE_RETIRED", sql::SETTLE_RETIRED, ""),
        ("SETTLE_RELEASED", sql::SETTLE_RELEASED, ""),
        ("SETTLE_PARKED", sql::SETTLE_PARKED, ""),
        ("FINISH_MESSAGE", sql::FINISH_MESSAGE, ""),
        ("RENEW_CREDENTIAL_LEASES", sql::RENEW_CREDENTIAL_LEASES, ""),
        ("TAKE_RECIPIENTS", sql::TAKE_RECIPIENTS, ""),
        ("RECORD_RECIPIENT", sql::RECORD_RECIPIENT, ""),
        ("REQUEUE_RECIPIENT", sql::REQUEUE_RECIPIENT, ""),
        ("RECHECK_RECIPIENT", sql::RECHECK_RECIPIENT, ""),
    ];
    for idle in [true, false] {
        let (url, _) = fresh_database(Backend::Postgres).await;
        // Migrated; when not made to look idle, nothing else: no row, no
        // statistics.
        drop(
            formid_gateway::storage::PostgresStorage::connect(&url, 2)
                .await
                .unwrap(),
        );
        if idle {
            make_ledger_look_idle(&url).await;
        }

        // The pool's statements, planned as PostgreSQL plans a statement
        // bound with values it has not seen (the generic plan).
        let mut plain = sqlx::PgConnection::connect(&url).await.unwrap();
        plain
            .execute("SET plan_cache_mode = force_generic_plan")
            .await
            .unwrap();
        for (name, statement, types) in keyed {
            // The lease's transaction plans its join as `KEYED_PLANNING` says.
            let keyed_planning = name == "TAKE_RECIPIENTS";
            if keyed_planning {
                plain.execute("BEGIN").await.unwrap();
                plain.execute(KEYED_PLANNING).await.unwrap();
            }
            let plan = generic_plan(&mut plain, statement, types).await;
            if keyed_planning {
                plain.execute("ROLLBACK").await.unwrap();
            }
            assert_no_index_read_whole(name, &plan);
            let table = if name.contains("RECIPIENT") {
                "broadcast_recipients"
            } else if name.contains("MESSAGE") {
                "messages"
            } else {
                "credentials"
            };
            // The lease marks the rows it locked by their address.
            let by_key = if keyed_planning {
                plan.contains("TID Cond: (ctid = free.place)")
            } else {
                plan.contains(&format!("Index Scan using {table}_pkey"))
            };
            assert!(
                by_key || name.starts_with("RENEW"),
                "{name}: its row is not found by key in:\n{plan}"
            );
        }
        if idle {
            // What `sql::TAKE_RECIPIENTS` holds off: a second statement
            // marking the keys taken, planned as the job's rows filtered.
            let keys: Vec<String> = (2..=1001).map(|k| format!("${k}")).collect();
            let listed = format!(
                "UPDATE broadcast_recipients SET state = 'leased' \
                 WHERE broadcast_id = $1 AND seq IN ({})",
                keys.join(", ")
            );
            let plan = generic_plan(&mut plain, &listed, "").await;
            assert!(
                !plan.contains("AND (seq = ANY"),
                "the hazard held off by TAKE_RECIPIENTS is no longer reproduced; read the plan:\n{plan}"
            );
        } else {
            // What group commit's connections hold off: PostgreSQL's own
            // plan of the end batch on an empty ledger.
            let plan = generic_plan(&mut plain, END_BATCH, "").await;
            assert!(
                plan.contains("Seq Scan on messages"),
                "the hazard held off below is no longer reproduced; read the plan:\n{plan}"
            );
        }
        plain.close().await.unwrap();

        let ledger = sqlx::postgres::PgConnectOptions::from_str(&url).unwrap();
        let batches = group_commit_pool(ledger).await.unwrap();
        let mut connection = batches.acquire().await.unwrap();
        for (name, statement, index) in [
            ("START_BATCH", START_BATCH, "credentials_claimable"),
            ("END_BATCH", END_BATCH, "messages_pkey"),
        ] {
            let plan = generic_plan(&mut connection, statement, "").await;
            assert_lookups_by_key(name, &plan);
            assert!(
                plan.contains(&format!("Index Scan using {index}")),
                "{plan}"
            );
        }
        drop(connection);
        batches.close().await;
        drop_postgres_database(&url);
    }
}
