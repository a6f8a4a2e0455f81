//! The bodies of the session routes' answers.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// `POST /v1/apps/{appid}/sessions`: the session handed out. The token is in
/// this answer only.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionIssued {
    /// When the token stops working: log in again before, or on a 401.
    pub expires_at: DateTime<Utc>,
    /// The user, as WeChat named them to the gateway.
    pub openid: String,
    /// `fgs_…`: send it as `Authorization: Bearer <token>`.
    pub session_token: String,
}

impl std::fmt::Debug for SessionIssued {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SessionIssued")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}
