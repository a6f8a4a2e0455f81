//! The schema holds the domain's states: every CHECK constraint lists
//! exactly the names of its enum.

use formid_core::states::*;

/// The schema's CHECK constraints list exactly these names: as
/// `col IN (…)`, or, on SQLite's tables that every send writes (rebuilt
/// by 0008, see there why), as `col = … OR col = …`.
#[test]
fn the_check_constraints_allow_exactly_the_enum_names() {
    // Whitespace runs as one space: a long list may span lines.
    let read = |path: String| {
        let text = std::fs::read_to_string(&path).expect(&path);
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<&'static str> {
        all.iter().map(|value| name(*value)).collect()
    }
    // Each column, its enum's names, and whether SQLite's 0008 rebuilt it.
    let columns = [
        (
            "status",
            names(MessageStatus::ALL, MessageStatus::as_str),
            true,
        ),
        (
            "outcome",
            names(AttemptOutcome::ALL, AttemptOutcome::as_str),
            true,
        ),
        ("delivery", names(Delivery::ALL, Delivery::as_str), true),
        (
            "state",
            names(CredentialState::ALL, CredentialState::as_str),
            true,
        ),
        (
            "state",
            names(IdempotencyState::ALL, IdempotencyState::as_str),
            true,
        ),
        ("channel", names(Channel::ALL, Channel::as_str), true),
        ("decision", names(Decision::ALL, Decision::as_str), false),
        (
            "subscription",
            names(SubscriptionType::ALL, SubscriptionType::as_str),
            false,
        ),
        (
            "event",
            names(PushEventKind::ALL, PushEventKind::as_str),
            false,
        ),
        ("effect", names(PushEffect::ALL, PushEffect::as_str), false),
    ];
    // 0011 rebuilt SQLite's messages again, for the scheduled state.
    let sqlite_0008 = read("migrations/sqlite/0008_check_constraints_without_in_lists.sql".into())
        + &read("migrations/sqlite/0011_send_rules.sql".into());
    assert!(
        !sqlite_0008.contains(" IN ("),
        "0008 or 0011 keeps an IN list"
    );
    for backend in ["sqlite", "postgres"] {
        let schema: String = [
            "0004_typed_states_and_fencing.sql",
            "0005_subscribe_messages.sql",
            "0006_message_push.sql",
            "0011_send_rules.sql",
        ]
        .iter()
        .map(|file| read(format!("migrations/{backend}/{file}")))
        .collect();
        for (column, all, rebuilt) in &columns {
            let quoted: Vec<String> = all.iter().map(|name| format!("'{name}'")).collect();
            let check = format!("CHECK ({column} IN ({}))", quoted.join(", "));
            // SQLite's rebuilt tables hold their current list in the OR
            // spelling only (checked below); a later list has no IN form.
            let superseded = backend == "sqlite" && *rebuilt && *column == "status";
            assert!(
                superseded || schema.contains(&check),
                "migrations/{backend} lacks {check}"
            );
        }
    }
    for (column, all, _) in columns.iter().filter(|(_, _, rebuilt)| *rebuilt) {
        let each: Vec<String> = all
            .iter()
            .map(|name| format!("{column} = '{name}'"))
            .collect();
        let check = format!("CHECK ({})", each.join(" OR "));
        assert!(sqlite_0008.contains(&check), "sqlite 0008 lacks {check}");
    }
}

/// The broadcasts' tables (0013): `col IN (…)` on PostgreSQL, `col = … OR
/// col = …` on SQLite (its recipients are written by every send of a job).
#[test]
fn the_broadcast_checks_allow_exactly_the_enum_names() {
    let read = |path: &str| {
        let text = std::fs::read_to_string(path).expect(path);
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<&'static str> {
        all.iter().map(|value| name(*value)).collect()
    }
    let columns = [
        ("channel", names(Channel::ALL, Channel::as_str)),
        ("state", names(BroadcastState::ALL, BroadcastState::as_str)),
        ("pause_reason", names(PauseReason::ALL, PauseReason::as_str)),
        ("state", names(RecipientState::ALL, RecipientState::as_str)),
    ];
    let postgres = read("migrations/postgres/0013_broadcasts.sql");
    let sqlite = read("migrations/sqlite/0013_broadcasts.sql");
    assert!(!sqlite.contains(" IN ("), "sqlite 0013 keeps an IN list");
    for (column, all) in &columns {
        let quoted: Vec<String> = all.iter().map(|name| format!("'{name}'")).collect();
        let check = format!("CHECK ({column} IN ({}))", quoted.join(", "));
        assert!(postgres.contains(&check), "postgres 0013 lacks {check}");
        let each: Vec<String> = all
            .iter()
            .map(|name| format!("{column} = '{name}'"))
            .collect();
        let check = format!("CHECK ({})", each.join(" OR "));
        assert!(sqlite.contains(&check), "sqlite 0013 lacks {check}");
    }
}

/// The webhook tables (migration 0012, the same text on both databases)
/// allow exactly the names of their enums.
#[test]
fn the_webhook_checks_allow_exactly_the_enum_names() {
    use formid_core::webhooks::{DeliveryOutcome, EndpointState, OutboxState};
    fn check(all: Vec<&'static str>, column: &str, schema: &str) {
        let quoted: Vec<String> = all.iter().map(|name| format!("'{name}'")).collect();
        let check = format!("CHECK ({column} IN ({}))", quoted.join(", "));
        assert!(schema.contains(&check), "0012 lacks {check}");
    }
    for backend in ["sqlite", "postgres"] {
        let path = format!("migrations/{backend}/0012_webhooks.sql");
        let schema = std::fs::read_to_string(&path).expect(&path);
        check(
            EndpointState::ALL.iter().map(|s| s.as_str()).collect(),
            "state",
            &schema,
        );
        check(
            OutboxState::ALL.iter().map(|s| s.as_str()).collect(),
            "state",
            &schema,
        );
        check(
            DeliveryOutcome::ALL.iter().map(|s| s.as_str()).collect(),
            "outcome",
            &schema,
        );
    }
}

/// Migration 0015 only adds nullable columns, on both databases: no table
/// is rebuilt (on SQLite a rebuild of `messages` would copy every message
/// and drop its indexes), and no row needs a value it cannot have.
#[test]
fn migration_0015_adds_nullable_columns_and_rebuilds_nothing() {
    for backend in ["sqlite", "postgres"] {
        let path = format!("migrations/{backend}/0015_message_reference.sql");
        let text = std::fs::read_to_string(&path).expect(&path);
        let statements: Vec<String> = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join(" ")
            .split(';')
            .map(|statement| statement.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|statement| !statement.is_empty())
            .collect();
        let mut expected = Vec::new();
        for table in ["messages", "webhook_outbox"] {
            for column in ["reference", "idempotency_key"] {
                expected.push(format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"));
            }
        }
        assert_eq!(statements, expected, "{path}");
    }
}
