//! Events out: what the ledger tells an app's webhook endpoints, and the
//! rules of their delivery.
//!
//! An event is one committed state change of the ledger, reported once under
//! one id (the Standard Webhooks `webhook-id`). Which change reports which
//! [`EventType`] is decided here ([`EventType::for_finish`],
//! [`EventType::for_push`], [`EventType::for_prompt`]); storage writes the
//! event in the transaction of the change. The delivery rules — the retry
//! schedule ([`after_failure`]), what an answer means ([`verdict`]), when an
//! endpoint is switched off ([`endpoint_after`]), what is signed
//! ([`signature_input`]) and which addresses are never called
//! ([`refused_address`]) — are pure functions of what is handed in.

use std::fmt;
// `core::net`: address values only; nothing here opens a socket.
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::states::{stored_state, MessageStatus, PushEffect, UnknownState};
use crate::subscriptions::{PromptEffect, PushAction};

stored_state! {
    /// What an event reports (`webhook_outbox.event_type`). An endpoint
    /// subscribes by type; its choice is stored as a bit mask
    /// ([`EventType::bit`]: a variant's position here), so a new type is added
    /// at the end of this list and never moved.
    EventType {
        /// WeChat accepted a send (errcode 0).
        MessageSent = "message.sent",
        /// WeChat pushed a subscribe send's final delivery: delivered.
        MessageDelivered = "message.delivered",
        /// WeChat pushed a subscribe send's final delivery: not delivered
        /// (the user blocked it, or another `ErrorStatus`).
        MessageDeliveryFailed = "message.delivery_failed",
        /// A send ended without delivery.
        MessageFailed = "message.failed",
        /// A send ended `unknown`: WeChat may or may not have delivered it.
        MessageUnknown = "message.unknown",
        /// A message answered as pending (its run died or lost its lease) was
        /// resolved by recovery, as sent or failed.
        MessageSettled = "message.settled",
        /// A user accepted a subscribe prompt: a grant to send with (or a
        /// long-term subscription on).
        GrantAccepted = "grant.accepted",
        /// A user's grants of a template are gone: a change event, or 43101.
        SubscriptionRevoked = "subscription.revoked",
        /// WeChat answered 45009: the app's daily quota is spent.
        AppQuotaExhausted = "app.quota_exhausted",
        /// An endpoint of the app was switched off (410, or days of failures).
        EndpointDisabled = "webhook.endpoint_disabled",
        /// Sent by `POST …/webhooks/{id}/test`.
        WebhookTest = "webhook.test",
        /// A broadcast ended (`status`: finished, or cancelled) with every
        /// recipient's result recorded; `detail` is the broadcast's id, and
        /// its counts are at `GET …/broadcasts/{id}`. Last in the list: a
        /// type's bit is its position, and stored masks keep their meaning.
        BroadcastFinished = "broadcast.finished",
    }
}

impl EventType {
    /// The type's bit in an endpoint's subscription mask.
    pub fn bit(self) -> i64 {
        let position = EventType::ALL
            .iter()
            .position(|each| *each == self)
            .expect("every type is in ALL");
        1 << position
    }

    /// The mask of a list of types.
    pub fn mask(types: &[EventType]) -> i64 {
        types.iter().fold(0, |mask, each| mask | each.bit())
    }

    /// The types a mask names, in declaration order.
    pub fn of_mask(mask: i64) -> Vec<EventType> {
        EventType::ALL
            .iter()
            .copied()
            .filter(|each| mask & each.bit() != 0)
            .collect()
    }

    /// What a message's final state reports: `unknown` always as
    /// [`MessageUnknown`](EventType::MessageUnknown); otherwise `settled` when
    /// recovery finished it, `sent` or `failed` when its own run did.
    pub fn for_finish(status: MessageStatus, recovered: bool) -> Option<EventType> {
        match status {
            MessageStatus::Unknown => Some(EventType::MessageUnknown),
            MessageStatus::Sent | MessageStatus::Failed if recovered => {
                Some(EventType::MessageSettled)
            }
            MessageStatus::Sent => Some(EventType::MessageSent),
            MessageStatus::Failed => Some(EventType::MessageFailed),
            MessageStatus::Pending | MessageStatus::Waiting | MessageStatus::Scheduled => None,
        }
    }

    /// What a first-applied push item reports, if anything.
    pub fn for_push(action: &PushAction, effect: PushEffect) -> Option<EventType> {
        match (action, effect) {
            (_, PushEffect::Granted | PushEffect::LongTermOn) => Some(EventType::GrantAccepted),
            (_, PushEffect::Revoked) => Some(EventType::SubscriptionRevoked),
            (PushAction::Delivery { error_code, .. }, PushEffect::DeliveryRecorded) => {
                Some(if *error_code == 0 {
                    EventType::MessageDelivered
                } else {
                    EventType::MessageDeliveryFailed
                })
            }
            _ => None,
        }
    }

    /// What a recorded prompt decision reports, if anything.
    pub fn for_prompt(effect: PromptEffect) -> Option<EventType> {
        match effect {
            PromptEffect::Granted | PromptEffect::LongTermOn => Some(EventType::GrantAccepted),
            PromptEffect::Recorded => None,
        }
    }
}

stored_state! {
    /// Where one event stands with one endpoint (`webhook_outbox.state`).
    OutboxState {
        /// To be sent at `next_attempt_at` (leased while a worker sends it).
        Pending = "pending",
        /// The endpoint answered 2xx.
        Delivered = "delivered",
        /// Given up: the schedule ran out, or the endpoint was switched off.
        Failed = "failed",
    }
}

stored_state! {
    /// Whether an endpoint is sent to (`webhook_endpoints.state`).
    EndpointState {
        /// Receives the events it subscribed to.
        Enabled = "enabled",
        /// Receives nothing; its pending events failed when it was switched off.
        Disabled = "disabled",
    }
}

stored_state! {
    /// What one delivery attempt came to (`webhook_attempts.outcome`).
    DeliveryOutcome {
        /// A 2xx answer: delivered.
        Delivered = "delivered",
        /// Any other status (a redirect included: none is followed).
        Rejected = "rejected",
        /// No answer: refused connection, timeout, reset, bad TLS.
        Unreachable = "unreachable",
        /// 410 Gone: the endpoint is switched off.
        Gone = "gone",
        /// The URL resolved to an address the gateway never calls.
        Refused = "refused",
    }
}

/// The delays after each failed attempt: the first attempt goes at once,
/// the next 5 s after it failed, then 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
/// Eight attempts in all over about 28 hours.
pub const RETRY_SCHEDULE_MS: [i64; 7] = [
    5_000,
    5 * 60_000,
    30 * 60_000,
    2 * 3_600_000,
    5 * 3_600_000,
    10 * 3_600_000,
    10 * 3_600_000,
];

/// The share of a delay jitter may add (0.2: up to a fifth more), so that
/// the events of an endpoint that was down do not all come back at once.
pub const JITTER_SHARE: f64 = 0.2;

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again at this time.
    At(i64),
    /// The schedule ran out: the event failed for this endpoint.
    GiveUp,
}

/// When to try again after the `attempts`-th attempt failed at `now`;
/// `jitter` in `[0, 1]` (any other value is clamped) adds up to
/// [`JITTER_SHARE`] of the delay.
pub fn after_failure(attempts: u32, now: i64, jitter: f64) -> Retry {
    let Some(delay) = (attempts as usize)
        .checked_sub(1)
        .and_then(|index| RETRY_SCHEDULE_MS.get(index))
    else {
        return Retry::GiveUp;
    };
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    Retry::At(now + delay + (*delay as f64 * JITTER_SHARE * jitter) as i64)
}

/// What an endpoint's answer means: `None` when there was none.
pub fn verdict(status: Option<u16>) -> DeliveryOutcome {
    match status {
        None => DeliveryOutcome::Unreachable,
        Some(200..=299) => DeliveryOutcome::Delivered,
        Some(410) => DeliveryOutcome::Gone,
        Some(_) => DeliveryOutcome::Rejected,
    }
}

/// What an attempt's outcome does to its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointChange {
    /// Stays enabled; failing since this time (`None`: it works).
    Failing(Option<i64>),
    /// Switched off, for this reason.
    Disable(DisableReason),
}

/// Why an endpoint was switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisableReason {
    /// It answered 410 Gone.
    Gone,
    /// It failed every attempt for longer than the setting allows.
    Failing,
    /// An administrator switched it off.
    Admin,
}

impl DisableReason {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DisableReason::Gone => "gone",
            DisableReason::Failing => "failing",
            DisableReason::Admin => "admin",
        }
    }
}

/// The endpoint rule: a success clears its failure streak; 410 switches it
/// off; any other failure starts a streak (or keeps the one running), and a
/// streak older than `disable_after_ms` switches it off.
pub fn endpoint_after(
    outcome: DeliveryOutcome,
    failing_since: Option<i64>,
    now: i64,
    disable_after_ms: i64,
) -> EndpointChange {
    match outcome {
        DeliveryOutcome::Delivered => EndpointChange::Failing(None),
        DeliveryOutcome::Gone => EndpointChange::Disable(DisableReason::Gone),
        DeliveryOutcome::Rejected | DeliveryOutcome::Unreachable | DeliveryOutcome::Refused => {
            let since = failing_since.unwrap_or(now);
            if now - since >= disable_after_ms {
                EndpointChange::Disable(DisableReason::Failing)
            } else {
                EndpointChange::Failing(Some(since))
            }
        }
    }
}

/// What Standard Webhooks signs: `{webhook-id}.{webhook-timestamp}.{body}`,
/// the timestamp in whole seconds.
pub fn signature_input(id: &str, timestamp_secs: i64, body: &str) -> String {
    format!("{id}.{timestamp_secs}.{body}")
}

/// Why an address is never called (`None`: it may be). Loopback,
/// unspecified, private (RFC 1918, unique-local), link-local (the cloud
/// metadata services live there: 169.254.169.254, fd00:ec2::254 is
/// unique-local), shared (100.64/10), multicast and broadcast addresses are
/// refused unless `allow_private` (tests' loopback receivers); IPv4 mapped
/// into IPv6 is judged as IPv4.
pub fn refused_address(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    let reason = match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_reason(v4),
            None => v6_reason(v6),
        },
    }?;
    // Multicast and broadcast are never a receiver, whatever the setting.
    if allow_private && reason != "multicast or broadcast" {
        return None;
    }
    Some(reason)
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some("private")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or broadcast")
    } else {
        None
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local (cloud metadata)")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private")
    } else if ip.is_multicast() {
        Some("multicast or broadcast")
    } else {
        None
    }
}

/// One event to write to the outbox, in the transaction of the change it
/// reports: one row for each enabled endpoint of the app that wants its type.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    /// The Standard Webhooks `webhook-id`: the same for every endpoint and
    /// every retry.
    pub event_id: String,
    pub appid: String,
    pub event_type: Option<EventType>,
    pub openid: Option<String>,
    pub message_id: Option<String>,
    pub template_id: Option<String>,
    pub status: Option<String>,
    pub wechat_errcode: Option<i64>,
    pub error_code: Option<String>,
    pub detail: Option<String>,
    /// When the change commits (clock ms).
    pub at: i64,
}

impl NewEvent {
    /// An event of `event_type` for `appid` at `at`, under `event_id`; the
    /// other fields are set by the writer.
    pub fn new(event_id: String, appid: &str, event_type: EventType, at: i64) -> Self {
        NewEvent {
            event_id,
            appid: appid.to_owned(),
            event_type: Some(event_type),
            at,
            ..NewEvent::default()
        }
    }

    /// The bit endpoints must have set to receive it (0: none does).
    pub fn bit(&self) -> i64 {
        self.event_type.map_or(0, EventType::bit)
    }
}

impl crate::ledger::MessageOutcome {
    /// The event that reports this end of `message_id` (its user, template
    /// and app are the message's, read where it is written).
    pub fn event(&self, message_id: &str, at: i64) -> NewEvent {
        NewEvent {
            event_id: finish_event_id(message_id),
            event_type: EventType::for_finish(self.status, self.recovered),
            status: Some(self.status.as_str().to_owned()),
            wechat_errcode: self.wechat_errcode,
            error_code: self.error_code.map(str::to_owned),
            at,
            ..NewEvent::default()
        }
    }
}

/// The id of the event that reports a message's end: a message ends once,
/// so its id is derived from the message's.
pub fn finish_event_id(message_id: &str) -> String {
    format!("evt_{message_id}")
}

/// The id of the event that reports a broadcast's end: it ends once.
pub fn broadcast_event_id(broadcast_id: &str) -> String {
    format!("evt_broadcast_{broadcast_id}")
}

/// One event as its endpoint receives it: the body Standard Webhooks
/// signs. Built from the stored row, so every retry sends the same bytes.
#[derive(Debug, Clone, Serialize)]
pub struct EventBody<'a> {
    /// The event's type, e.g. `message.sent`.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the change committed, RFC 3339 in UTC.
    pub timestamp: String,
    pub data: EventData<'a>,
}

/// What an event says. Fields that do not apply to its type are left out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventData<'a> {
    pub appid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_id: Option<&'a str>,
    /// The message's status, a decision's effect, an endpoint's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'a str>,
    /// WeChat's errcode (or the pushed `ErrorCode` of a delivery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wechat_errcode: Option<i64>,
    /// The gateway's error code of a failed or unknown message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'a str>,
    /// More, by type: the quota block's end, the disabled endpoint's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
    /// The `Idempotency-Key` the message's send came with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<&'a str>,
    /// The caller's `reference` from the message's send request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a str>,
}

impl EventBody<'_> {
    /// The body as sent: compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event body serializes")
    }
}

/// RFC 3339 (UTC, milliseconds) of Unix milliseconds.
pub fn rfc3339_ms(at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_immediate_then_5s_5min_30min_2h_5h_10h_10h() {
        let now = 1_000_000;
        let delays: Vec<Retry> = (1..=8).map(|n| after_failure(n, now, 0.0)).collect();
        let expected: Vec<Retry> = RETRY_SCHEDULE_MS
            .iter()
            .map(|delay| Retry::At(now + delay))
            .chain([Retry::GiveUp])
            .collect();
        assert_eq!(delays, expected);
        assert_eq!(after_failure(0, now, 0.0), Retry::GiveUp);
        assert_eq!(after_failure(1, now, 1.0), Retry::At(now + 6_000));
        assert_eq!(after_failure(1, now, 7.0), Retry::At(now + 6_000));
        assert_eq!(after_failure(1, now, f64::NAN), Retry::At(now + 5_000));
        assert_eq!(after_failure(1, now, -1.0), Retry::At(now + 5_000));
    }

    #[test]
    fn only_2xx_delivers_and_410_is_gone() {
        let rows = [
            (Some(200), DeliveryOutcome::Delivered),
            (Some(204), DeliveryOutcome::Delivered),
            (Some(299), DeliveryOutcome::Delivered),
            (Some(301), DeliveryOutcome::Rejected),
            (Some(404), DeliveryOutcome::Rejected),
            (Some(410), DeliveryOutcome::Gone),
            (Some(500), DeliveryOutcome::Rejected),
            (None, DeliveryOutcome::Unreachable),
        ];
        for (status, outcome) in rows {
            assert_eq!(verdict(status), outcome, "{status:?}");
        }
    }

    #[test]
    fn an_endpoint_is_disabled_by_410_or_a_long_streak() {
        let day = 86_400_000;
        use DeliveryOutcome::*;
        let rows = [
            (Delivered, Some(0), 10 * day, EndpointChange::Failing(None)),
            (Gone, None, 0, EndpointChange::Disable(DisableReason::Gone)),
            (Rejected, None, 7, EndpointChange::Failing(Some(7))),
            (
                Unreachable,
                Some(3),
                5 * day,
                EndpointChange::Failing(Some(3)),
            ),
            (
                Rejected,
                Some(3),
                5 * day + 3,
                EndpointChange::Disable(DisableReason::Failing),
            ),
        ];
        for (outcome, since, now, change) in rows {
            assert_eq!(endpoint_after(outcome, since, now, 5 * day), change);
        }
    }

    #[test]
    fn the_signed_text_is_id_dot_timestamp_dot_body() {
        assert_eq!(
            signature_input("msg_1", 1_700_000_000, "{\"a\":1}"),
            "msg_1.1700000000.{\"a\":1}"
        );
    }

    #[test]
    fn masks_round_trip_and_bits_are_distinct() {
        let all = EventType::mask(EventType::ALL);
        assert_eq!(EventType::of_mask(all), EventType::ALL);
        assert_eq!(all.count_ones() as usize, EventType::ALL.len());
        let two = [EventType::MessageSent, EventType::SubscriptionRevoked];
        assert_eq!(EventType::of_mask(EventType::mask(&two)), two);
    }

    #[test]
    fn finishes_report_by_status_and_by_who_finished() {
        use EventType::*;
        use MessageStatus::*;
        let rows = [
            (Sent, false, Some(MessageSent)),
            (Failed, false, Some(MessageFailed)),
            (Unknown, false, Some(MessageUnknown)),
            (Sent, true, Some(MessageSettled)),
            (Failed, true, Some(MessageSettled)),
            (Unknown, true, Some(MessageUnknown)),
            (Pending, false, None),
            (Waiting, true, None),
        ];
        for (status, recovered, event) in rows {
            assert_eq!(EventType::for_finish(status, recovered), event);
        }
    }

    #[test]
    fn pushes_and_prompts_report_grants_revocations_and_deliveries() {
        let delivery = |error_code| PushAction::Delivery {
            msgid: "1".into(),
            error_code,
            error_status: "x".into(),
        };
        assert_eq!(
            EventType::for_push(&delivery(0), PushEffect::DeliveryRecorded),
            Some(EventType::MessageDelivered)
        );
        assert_eq!(
            EventType::for_push(&delivery(20001), PushEffect::DeliveryRecorded),
            Some(EventType::MessageDeliveryFailed)
        );
        assert_eq!(
            EventType::for_push(&delivery(0), PushEffect::NoMessage),
            None
        );
        assert_eq!(
            EventType::for_push(&PushAction::Revoke, PushEffect::Revoked),
            Some(EventType::SubscriptionRevoked)
        );
        assert_eq!(
            EventType::for_prompt(PromptEffect::LongTermOn),
            Some(EventType::GrantAccepted)
        );
        assert_eq!(EventType::for_prompt(PromptEffect::Recorded), None);
    }

    #[test]
    fn private_loopback_and_metadata_addresses_are_refused() {
        let refused = |text: &str, allow| refused_address(text.parse().unwrap(), allow);
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(refused(address, false).is_some(), "{address}");
        }
        for address in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert_eq!(refused(address, false), None, "{address}");
        }
        assert_eq!(refused("127.0.0.1", true), None);
        assert!(refused("224.0.0.1", true).is_some());
    }

    #[test]
    fn a_message_event_names_the_callers_key_and_reference() {
        let body = EventBody {
            event_type: EventType::MessageDelivered,
            timestamp: rfc3339_ms(1_700_000_000_123),
            data: EventData {
                appid: "wx1",
                message_id: Some("m1"),
                idempotency_key: Some("key-1"),
                reference: Some("order-42"),
                ..EventData::default()
            },
        };
        assert_eq!(
            body.to_json(),
            r#"{"type":"message.delivered","timestamp":"2023-11-14T22:13:20.123Z","data":{"appid":"wx1","message_id":"m1","idempotency_key":"key-1","reference":"order-42"}}"#
        );
    }

    #[test]
    fn a_body_is_type_timestamp_and_data_without_empty_fields() {
        let body = EventBody {
            event_type: EventType::MessageSent,
            timestamp: rfc3339_ms(1_700_000_000_123),
            data: EventData {
                appid: "wx1",
                openid: Some("o1"),
                message_id: Some("m1"),
                ..EventData::default()
            },
        };
        assert_eq!(
            body.to_json(),
            r#"{"type":"message.sent","timestamp":"2023-11-14T22:13:20.123Z","data":{"appid":"wx1","openid":"o1","message_id":"m1"}}"#
        );
    }
}
