//! The bodies of the console's JSON endpoints, one type each. Fields are
//! declared in the order of their names, as in every body of the API.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::api::responses::Message;
use crate::clock::from_ms;
use crate::ledger::kinds::CredentialKind;
use crate::stats::{AppStats, KindStats, TemplateStats};
use crate::storage::stats::{FailureCount, TokenStanding};

/// `GET /v1/admin/apps`: the apps the key may look at.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AppList {
    pub apps: Vec<AppListed>,
}

/// An app the gateway serves.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AppListed {
    /// The AppID.
    pub appid: String,
}

/// `GET /v1/admin/apps/{appid}/overview`: who the app can reach, as its
/// stats worker last read it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    pub appid: String,
    /// `form_id` and `prepay_id`: available, unexpired credentials.
    pub credentials: Vec<KindFigures>,
    /// What expires within 24 hours.
    pub expiring_24h: Expiring,
    /// When the figures were read.
    pub refreshed_at: DateTime<Utc>,
    /// Subscribe templates some user can be reached by.
    pub templates: Vec<TemplateFigures>,
    /// Distinct users any credential, grant or long-term subscription reaches now.
    pub users_reachable: i64,
}

/// The live credentials of one kind.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KindFigures {
    /// Available, unexpired credentials.
    pub credentials: i64,
    /// Of them, those expiring within 24 hours.
    pub expiring_24h: i64,
    /// `form_id` or `prepay_id`.
    pub kind: String,
    /// Sends they allow together.
    pub sends: i64,
    /// Distinct users holding one.
    pub users: i64,
}

/// One subscribe template's standing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TemplateFigures {
    /// Of the grants, those expiring within 24 hours.
    pub expiring_24h: i64,
    /// One-time grants left.
    pub grants: i64,
    /// Users with a long-term subscription.
    pub long_term_subscribers: i64,
    pub template_id: String,
    /// Distinct users with a grant or a long-term subscription.
    pub users_reachable: i64,
}

/// What expires within 24 hours.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Expiring {
    /// `form_id` and `prepay_id` credentials.
    pub credentials: i64,
    /// One-time grants.
    pub grants: i64,
}

impl Overview {
    /// The answer for the app's figures.
    pub fn new(appid: &str, stats: &AppStats) -> Self {
        let figures = |kind: &KindStats| KindFigures {
            credentials: kind.credentials,
            expiring_24h: kind.expiring_24h,
            kind: kind
                .kind
                .map_or("unknown", CredentialKind::as_str)
                .to_owned(),
            sends: kind.sends,
            users: kind.users,
        };
        let template = |template: &TemplateStats| TemplateFigures {
            expiring_24h: template.expiring_24h,
            grants: template.grants,
            long_term_subscribers: template.long_term_subscribers,
            template_id: template.template_id.clone(),
            users_reachable: template.users_reachable,
        };
        Self {
            appid: appid.to_owned(),
            credentials: stats.credentials.iter().map(figures).collect(),
            expiring_24h: Expiring {
                credentials: stats.credentials.iter().map(|kind| kind.expiring_24h).sum(),
                grants: stats.templates.iter().map(|t| t.expiring_24h).sum(),
            },
            refreshed_at: from_ms(stats.refreshed_at),
            templates: stats.templates.iter().map(template).collect(),
            users_reachable: stats.users_reachable,
        }
    }
}

/// `GET /v1/admin/apps/{appid}/messages`: a page of the app's messages,
/// newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// The `before` of the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
}

/// `GET /v1/admin/apps/{appid}/failures`: failed messages of the last 24
/// hours, by hour and by failure.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Failures {
    /// Every failure of the window, most frequent first.
    pub by_code: Vec<FailureFigure>,
    /// 24 hours, oldest first; the last one ends now.
    pub hours: Vec<FailureHour>,
    /// Where the window starts.
    pub since: DateTime<Utc>,
    /// Failed messages in the window.
    pub total: i64,
}

/// One hour of the window.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailureHour {
    /// Its failures, most frequent first.
    pub failures: Vec<FailureFigure>,
    /// Where it starts.
    pub start: DateTime<Utc>,
    /// Failed messages in it.
    pub total: i64,
}

/// How many messages failed one way.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FailureFigure {
    /// WeChat's errcode as text when WeChat gave one, else the gateway's
    /// failure code.
    pub code: String,
    /// The gateway's failure code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub messages: i64,
    /// WeChat's errcode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wechat_errcode: Option<i64>,
}

impl Failures {
    /// The answer for the window of `hours` hours starting at `since`.
    pub fn new(rows: &[FailureCount], since: i64, hours: i64) -> Self {
        let figure = |row: &FailureCount| FailureFigure {
            code: row.wechat_errcode.map_or_else(
                || row.error_code.clone().unwrap_or_else(|| "unknown".into()),
                |errcode| errcode.to_string(),
            ),
            error_code: row.error_code.clone(),
            messages: row.messages,
            wechat_errcode: row.wechat_errcode,
        };
        let hours: Vec<FailureHour> = (0..hours)
            .map(|hour| {
                let failures = by_count(
                    rows.iter()
                        // A message updated at the window's very end, or by an
                        // instance whose clock runs ahead, counts in the last hour.
                        .filter(|row| row.hour.clamp(0, hours - 1) == hour)
                        .map(figure),
                );
                FailureHour {
                    total: failures.iter().map(|figure| figure.messages).sum(),
                    failures,
                    start: from_ms(since + hour * 3_600_000),
                }
            })
            .collect();
        let mut by_code: Vec<FailureFigure> = Vec::new();
        for row in rows {
            let row = figure(row);
            match by_code
                .iter_mut()
                .find(|seen| seen.code == row.code && seen.error_code == row.error_code)
            {
                Some(seen) => seen.messages += row.messages,
                None => by_code.push(row),
            }
        }
        Self {
            by_code: by_count(by_code),
            total: hours.iter().map(|hour| hour.total).sum(),
            hours,
            since: from_ms(since),
        }
    }
}

/// The figures, most frequent first, then by code.
fn by_count(figures: impl IntoIterator<Item = FailureFigure>) -> Vec<FailureFigure> {
    let mut figures: Vec<FailureFigure> = figures.into_iter().collect();
    figures.sort_by(|a, b| b.messages.cmp(&a.messages).then(a.code.cmp(&b.code)));
    figures
}

/// `GET /v1/admin/apps/{appid}/token`: the token's standing, never the token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenStatus {
    /// When WeChat last accepted it in a check.
    pub checked_at: Option<DateTime<Utc>>,
    /// When it expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Seconds until then (negative once expired).
    pub expires_in: Option<i64>,
    /// Whether a token is stored.
    pub has_token: bool,
    /// When the fetch that produced it started: the last refresh.
    pub refreshed_at: Option<DateTime<Utc>>,
    /// The instance that holds the refresh lease, while one does.
    pub refresh_lease: Option<RefreshLease>,
}

/// The refresh lease of an app's token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RefreshLease {
    /// The instance (`instance_id`).
    pub holder: String,
    pub until: DateTime<Utc>,
}

impl TokenStatus {
    /// The answer for the app's standing at `now` (ms).
    pub fn new(standing: TokenStanding, now: i64) -> Self {
        let refresh_lease = standing
            .refresh_holder
            .zip(standing.refresh_lease_until)
            .filter(|(_, until)| *until > now)
            .map(|(holder, until)| RefreshLease {
                holder,
                until: from_ms(until),
            });
        Self {
            checked_at: standing.token_checked_at.map(from_ms),
            expires_at: standing.token_expires_at.map(from_ms),
            expires_in: standing
                .token_expires_at
                .map(|expires_at| (expires_at - now).div_euclid(1000)),
            has_token: standing.has_token,
            refreshed_at: standing.token_fetched_at.map(from_ms),
            refresh_lease,
        }
    }
}
