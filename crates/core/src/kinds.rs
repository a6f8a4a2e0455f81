//! The kinds of push credential WeChat hands out, and their rules as data.

use chrono::Duration;
use serde::{Deserialize, Serialize};

use super::states::Channel;

/// A kind of per-user push credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// From a `<form report-submit="true">` submit.
    FormId,
    /// From a completed WeChat Pay payment.
    PrepayId,
    /// One accept of a one-time subscribe template (type 2) in
    /// `wx.requestSubscribeMessage`: one send of exactly that template.
    Subscribe,
    /// One send under a long-term subscription (type 3). The subscription is
    /// a standing flag, not a counter; each send takes a ticket of this kind,
    /// made for it and leased to it like any credential, so that a crash or
    /// a lost answer is resolved by the same machinery, and concurrent sends
    /// never queue behind one row.
    LongTerm,
}

/// What WeChat allows for one credential of a kind.
#[derive(Debug, Clone, Copy)]
pub struct KindRules {
    /// Sends one credential allows.
    pub sends: u32,
    /// How long after collection it stays valid; `None` never expires
    /// (subscribe grants).
    pub lifetime: Option<Duration>,
    /// The API it pays for: the legacy template send, or the subscribe send
    /// (whose credentials pay for one template only).
    pub channel: Channel,
    /// Whether it lies in a pool that claims take from. A long-term ticket
    /// is made for one send and never returns to a pool.
    pub pooled: bool,
    /// Whether WeChat may still answer 41028 for a freshly collected credential
    /// because its data syncs late (payments do:
    /// docs/wechat/template-messages.md, "formId and prepay_id").
    pub syncs_late: bool,
}

/// Kept as a table rather than `if` chains so that a new kind is one more row.
const RULES: [(CredentialKind, KindRules); 4] = [
    (
        CredentialKind::FormId,
        KindRules {
            sends: 1,
            lifetime: Some(Duration::days(7)),
            channel: Channel::Template,
            pooled: true,
            syncs_late: false,
        },
    ),
    (
        CredentialKind::PrepayId,
        KindRules {
            sends: 3,
            lifetime: Some(Duration::days(7)),
            channel: Channel::Template,
            pooled: true,
            syncs_late: true,
        },
    ),
    (
        CredentialKind::Subscribe,
        KindRules {
            sends: 1,
            lifetime: None,
            channel: Channel::Subscribe,
            pooled: true,
            syncs_late: false,
        },
    ),
    (
        CredentialKind::LongTerm,
        KindRules {
            sends: 1,
            lifetime: None,
            channel: Channel::Subscribe,
            pooled: false,
            syncs_late: false,
        },
    ),
];

/// Far-future expiry stored for kinds without a lifetime, so the claim can
/// still order by one indexed integer column.
pub const NEVER_EXPIRES_MS: i64 = i64::MAX;

impl CredentialKind {
    /// Every kind, in a stable order.
    pub const ALL: [CredentialKind; 4] = [
        CredentialKind::FormId,
        CredentialKind::PrepayId,
        CredentialKind::Subscribe,
        CredentialKind::LongTerm,
    ];

    /// The rules of this kind.
    pub fn rules(self) -> &'static KindRules {
        &RULES
            .iter()
            .find(|(kind, _)| *kind == self)
            .expect("every kind has a row in RULES")
            .1
    }

    /// The name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::FormId => "form_id",
            CredentialKind::PrepayId => "prepay_id",
            CredentialKind::Subscribe => "subscribe",
            CredentialKind::LongTerm => "long_term",
        }
    }

    /// Parses the wire/database name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// When a credential of this kind collected at `collected_at_ms` expires.
    pub fn expires_at_ms(self, collected_at_ms: i64) -> i64 {
        match self.rules().lifetime {
            Some(lifetime) => collected_at_ms.saturating_add(lifetime.num_milliseconds()),
            None => NEVER_EXPIRES_MS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_has_rules() {
        for kind in CredentialKind::ALL {
            assert_eq!(CredentialKind::parse(kind.as_str()), Some(kind));
            assert!(kind.rules().sends >= 1);
        }
        assert_eq!(CredentialKind::FormId.rules().sends, 1);
        assert_eq!(CredentialKind::PrepayId.rules().sends, 3);
        assert_eq!(
            CredentialKind::parse("subscribe"),
            Some(CredentialKind::Subscribe)
        );
        assert_eq!(CredentialKind::Subscribe.expires_at_ms(1), NEVER_EXPIRES_MS);
        assert!(!CredentialKind::LongTerm.rules().pooled);
    }

    #[test]
    fn expiry_is_seven_days_after_collection() {
        let collected = 1_700_000_000_000;
        assert_eq!(
            CredentialKind::FormId.expires_at_ms(collected) - collected,
            7 * 24 * 3600 * 1000
        );
    }
}
