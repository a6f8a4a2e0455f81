//! Every state the ledger stores, as enums: the names on the wire and in the
//! database come from `as_str`, and the schema's `CHECK` constraints allow
//! exactly these names (migrations 0004 to 0006 on both databases).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares a stored state: its variants with their stored names, `as_str`,
/// `FromStr`, `Display`, `Serialize`, and conversion from a stored `String`
/// (for `#[sqlx(try_from = "String")]`).
macro_rules! stored_state {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stored and wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState {
                        of: stringify!($name),
                        text: text.to_owned(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownState;

            fn try_from(text: String) -> Result<Self, Self::Error> {
                text.parse()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        /// Reads the stored name; anything else is an error whose text
        /// starts with [`UnknownState::PREFIX`].
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use stored_state;

/// A name no variant has: in the database, something the schema's `CHECK`
/// constraint should have refused; in a request, a value the caller got wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a known {of}: {text:?} (expected one of {expected})")]
pub struct UnknownState {
    pub(crate) of: &'static str,
    pub(crate) text: String,
    pub(crate) expected: String,
}

impl UnknownState {
    /// How the text of every such error starts.
    pub const PREFIX: &'static str = "not a known ";
}

stored_state! {
    /// Where a message is (`messages.status`).
    MessageStatus {
        /// Something may be in flight: a process holds its lease.
        Pending = "pending",
        /// No credential yet: kept until one arrives or the wait ends.
        Waiting = "waiting",
        /// WeChat delivered it.
        Sent = "sent",
        /// It was not sent.
        Failed = "failed",
        /// WeChat may or may not have delivered it; it is never sent again.
        Unknown = "unknown",
        /// Kept until its time (`send_at`, or the end of quiet hours); no
        /// credential is held meanwhile.
        Scheduled = "scheduled",
    }
}

stored_state! {
    /// What one call to WeChat (or the decision not to make one) came to
    /// (`attempts.outcome`).
    AttemptOutcome {
        /// Delivered (errcode 0).
        Sent = "sent",
        /// A probe of an unknown outcome delivered (errcode 0).
        SentOnProbe = "sent_on_probe",
        /// A probe answered 41029: the earlier call had delivered.
        ConfirmedSent = "confirmed_sent",
        /// A fresh prepay_id answered 41028: parked until its payment data syncs.
        NotReady = "not_ready",
        /// The credential is dead; retired with the errcode.
        Retired = "retired",
        /// The access_token was refused; it is refreshed and the call made again.
        TokenRejected = "token_rejected",
        /// errcode -1; retried after a backoff.
        Busy = "busy",
        /// WeChat refused the request; the credential went back untouched.
        Kept = "kept",
        /// The request never left: nothing was delivered.
        NotSent = "not_sent",
        /// The answer was lost: delivery unknown.
        Ambiguous = "ambiguous",
        /// Found leased after its holder died, and it could not be probed.
        Recovered = "recovered",
        /// A probe's answer proved nothing about the earlier call.
        ProbeInconclusive = "probe_inconclusive",
        /// No token could be had to probe with.
        TokenUnavailable = "token_unavailable",
    }
}

stored_state! {
    /// Whether an unknown outcome may be retried with another credential
    /// (`messages.delivery`; `delivery` of a send request).
    Delivery {
        /// Never risk a second notification (the default).
        AtMostOnce = "at_most_once",
        /// Retry an unknown outcome with the next credential, at the risk of a duplicate.
        AtLeastOnce = "at_least_once",
    }
}

stored_state! {
    /// Where a credential is (`credentials.state`).
    CredentialState {
        /// In the pool.
        Available = "available",
        /// Leased to a send (or parked).
        Leased = "leased",
        /// Every send used.
        Exhausted = "exhausted",
        /// WeChat said it is dead.
        Retired = "retired",
        /// Past its expiry.
        Expired = "expired",
    }
}

stored_state! {
    /// Where an idempotency key is (`idempotency_keys.state`).
    IdempotencyState {
        /// The first request with the key is still being answered.
        InFlight = "in_flight",
        /// Its answer is stored.
        Done = "done",
    }
}

stored_state! {
    /// Which WeChat API carries a message (`messages.channel`, `templates.channel`).
    Channel {
        /// The legacy template message (`wxopen/template/send`), paid with a form_id or prepay_id.
        Template = "template",
        /// The subscribe message (`message/subscribe/send`), paid with a grant of its template.
        Subscribe = "subscribe",
    }
}

stored_state! {
    /// A user's latest decision on a subscribe template (`subscriptions.decision`):
    /// the answers of `wx.requestSubscribeMessage`, and a revocation WeChat told.
    Decision {
        /// `accept`: one send (or a long-term subscription switched on).
        Accept = "accept",
        /// `acceptWithAudio`: accepted, with a voice reminder.
        AcceptWithAudio = "accept_with_audio",
        /// `acceptWithAlert`: accepted, with an alert.
        AcceptWithAlert = "accept_with_alert",
        /// `reject`: the user said no this time.
        Reject = "reject",
        /// `ban`: the template was banned by WeChat.
        Ban = "ban",
        /// `filter`: filtered out (a duplicate title in one prompt).
        Filter = "filter",
        /// WeChat said the user has no grant left or turned the template off
        /// (errcode 43101, or a change event).
        Revoked = "revoked",
    }
}

impl Decision {
    /// Whether the decision grants a send.
    pub fn grants(self) -> bool {
        matches!(
            self,
            Decision::Accept | Decision::AcceptWithAudio | Decision::AcceptWithAlert
        )
    }

    /// The decision a `wx.requestSubscribeMessage` result names, by WeChat's spelling.
    pub fn from_wechat(status: &str) -> Option<Self> {
        Some(match status {
            "accept" => Decision::Accept,
            "acceptWithAudio" => Decision::AcceptWithAudio,
            "acceptWithAlert" => Decision::AcceptWithAlert,
            "reject" => Decision::Reject,
            "ban" => Decision::Ban,
            "filter" => Decision::Filter,
            _ => return None,
        })
    }
}

stored_state! {
    /// What a subscribe template allows (`templates.subscription`): WeChat's
    /// `type` 2 and 3. Legacy templates are stored as one-time.
    SubscriptionType {
        /// Type 2: each accept grants one send.
        OneTime = "one_time",
        /// Type 3: one accept allows sends until the user turns it off.
        LongTerm = "long_term",
    }
}

stored_state! {
    /// Which subscribe event of WeChat's message push a row records
    /// (`push_events.event`, migration 0006).
    PushEventKind {
        /// `subscribe_msg_popup_event`: the user answered a prompt.
        Popup = "popup",
        /// `subscribe_msg_change_event`: the user turned a template off.
        Change = "change",
        /// `subscribe_msg_sent_event`: how a subscribe send finally ended.
        Sent = "sent",
    }
}

stored_state! {
    /// What one item of a push did to the ledger (`push_events.effect`).
    PushEffect {
        /// A popup accept granted one send of a one-time template.
        Granted = "granted",
        /// A popup accept switched a long-term subscription on.
        LongTermOn = "long_term_on",
        /// The decision was recorded; nothing was granted (a reject, or the
        /// app's grants come from its frontend).
        Recorded = "recorded",
        /// A change event: the user's grants of the template retired, the
        /// long-term subscription off.
        Revoked = "revoked",
        /// A sent event: the final delivery recorded on its message.
        DeliveryRecorded = "delivery_recorded",
        /// A sent event whose msgid no message of the app carries (sent by
        /// another system, or already swept).
        NoMessage = "no_message",
        /// A status the gateway does not act on; kept so a retry is known.
        Ignored = "ignored",
    }
}

impl PushEffect {
    /// Whether the effect gave the user something to send with.
    pub fn grants(self) -> bool {
        matches!(self, PushEffect::Granted | PushEffect::LongTermOn)
    }
}

// Why by hand: the enum is declared by `stored_state!`, which derives no
// `Default` (most states have none).
#[allow(clippy::derivable_impls)]
impl Default for Delivery {
    fn default() -> Self {
        Delivery::AtMostOnce
    }
}

stored_state! {
    /// Where a broadcast is (`broadcasts.state`).
    BroadcastState {
        /// Waiting for its `send_at`.
        Scheduled = "scheduled",
        /// Its recipients are being sent to.
        Running = "running",
        /// Held: by the caller, or until WeChat's quota day or the breaker allows.
        Paused = "paused",
        /// Every recipient has its result.
        Finished = "finished",
        /// Stopped by the caller: the recipients not yet sent to are `cancelled`.
        Cancelled = "cancelled",
    }
}

stored_state! {
    /// Why a broadcast is paused (`broadcasts.pause_reason`).
    PauseReason {
        /// The caller paused it; only the caller resumes it.
        Caller = "caller",
        /// WeChat's daily quota (45009): it resumes when the quota day resets.
        Quota = "quota",
        /// The app's circuit breaker is open: it resumes after the cooldown.
        Breaker = "breaker",
        /// The app's quiet hours refuse sends: it resumes when they open.
        QuietHours = "quiet_hours",
    }
}

stored_state! {
    /// Where one recipient of a broadcast is (`broadcast_recipients.state`).
    RecipientState {
        /// Not sent to yet.
        Queued = "queued",
        /// An instance holds it under its lease token (its send may be in flight).
        Leased = "leased",
        /// WeChat delivered the message.
        Sent = "sent",
        /// The user held no credential of the template.
        NoCredential = "no_credential",
        /// The user's per-user cap or quiet hours held the message back; the
        /// credential was kept.
        Capped = "capped",
        /// The message was not sent (its `error_code`, and WeChat's errcode).
        Failed = "failed",
        /// WeChat may or may not have delivered it; it is never sent again.
        Unknown = "unknown",
        /// The broadcast was cancelled before this recipient was sent to.
        Cancelled = "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_name() {
        fn check<T: FromStr + Copy + PartialEq + fmt::Debug + fmt::Display>(all: &[T]) {
            for state in all {
                assert_eq!(state.to_string().parse::<T>().ok(), Some(*state));
            }
        }
        check(MessageStatus::ALL);
        check(AttemptOutcome::ALL);
        check(Delivery::ALL);
        check(CredentialState::ALL);
        check(IdempotencyState::ALL);
        check(Channel::ALL);
        check(Decision::ALL);
        check(SubscriptionType::ALL);
        check(PushEventKind::ALL);
        check(PushEffect::ALL);
        check(BroadcastState::ALL);
        check(PauseReason::ALL);
        check(RecipientState::ALL);
        assert!("Pending".parse::<MessageStatus>().is_err());
    }
}
