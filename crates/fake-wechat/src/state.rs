//! The fake's state and the synchronous core of every API. The HTTP layer
//! (`server.rs`) only sleeps, locks, calls into here and renders the [`Reply`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate};
use rand::Rng;
use serde_json::{json, Map, Value};

use super::codes::{self, error_body, error_body_msg};
use super::{Fault, SendRecord, SubscribeGrants, SubscribeSendRecord};
use crate::subscribe::FIRST_MSGID;
use crate::templates::{ClassicTemplate, SubscribeTemplate};

const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// Old and new cgi-bin/token tokens both work for up to 5 minutes;
/// stable_token rotates 5 minutes before expiry in normal mode
/// (docs/wechat/tokens.md, "Two ways to get a token").
const TOKEN_OVERLAP_MS: i64 = 5 * MINUTE_MS;
/// stable_token force_refresh: at least 30 s apart, 20 per day
/// (docs/wechat/tokens.md, "Two ways to get a token").
const FORCE_REFRESH_SPACING_MS: i64 = 30 * SECOND_MS;
const FORCE_REFRESH_PER_DAY: u32 = 20;
/// Both kinds of credential are usable within 7 days
/// (docs/wechat/template-messages.md, "formId and prepay_id").
const CREDENTIAL_LIFETIME_MS: i64 = 7 * DAY_MS;
/// 1 send per form submission, 3 per payment (WeChat's page wins over the
/// community reply that says 1: docs/wechat/template-messages.md, "formId
/// and prepay_id").
const FORM_ID_USES: u32 = 1;
const PREPAY_ID_USES: u32 = 3;
/// Default daily template-send quota: 1,000,000 per account, then 45009
/// (docs/wechat/template-messages.md, "The send").
const DEFAULT_SEND_QUOTA: u64 = 1_000_000;
/// Default daily subscribe-send quota: 10,000,000 for a mini program without
/// payment capability (docs/wechat/subscribe-messages.md, "The send").
const DEFAULT_SUBSCRIBE_QUOTA: u64 = 10_000_000;
const PREPAY_PREFIX: &str = "prepay_id=";

/// Which kind of push credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CredentialKind {
    FormId,
    PrepayId,
}

#[derive(Debug)]
pub(crate) struct Credential {
    appid: String,
    openid: String,
    kind: CredentialKind,
    expires_ms: i64,
    /// Payment data reaches the template backend late
    /// (docs/wechat/template-messages.md, "formId and prepay_id"): before
    /// this instant the prepay_id answers 41028.
    usable_from_ms: i64,
    pub(crate) uses_left: u32,
    pub(crate) blocked: Option<i64>,
}

#[derive(Debug)]
struct Token {
    appid: String,
    expires_ms: i64,
    /// From this instant on the token answers 40001 (superseded / invalidated).
    revoked_at_ms: Option<i64>,
}

impl Token {
    fn usable(&self, now: i64) -> bool {
        self.revoked_at_ms.is_none_or(|r| now < r) && now < self.expires_ms
    }

    fn revoke_by(&mut self, at: i64) {
        self.revoked_at_ms = Some(self.revoked_at_ms.map_or(at, |r| r.min(at)));
    }
}

#[derive(Debug)]
pub(crate) struct App {
    /// `None` for an app only known through templates/users/credentials: it
    /// cannot fetch tokens (40013).
    pub(crate) secret: Option<String>,
    pub(crate) templates: HashSet<String>,
    pub(crate) pages: HashSet<String>,
    pub(crate) users: HashSet<String>,
    pub(crate) send_quota: DailyQuota,
    pub(crate) subscribe_quota: DailyQuota,
    /// Subscribe templates of the account, in the order they were added
    /// (`wxaapi/newtmpl/addtemplate`).
    pub(crate) subscribe_templates: Vec<SubscribeTemplate>,
    /// Templates of the classic personal library, in the order they were
    /// added (`cgi-bin/wxopen/template/add`).
    pub(crate) classic_templates: Vec<ClassicTemplate>,
    pub(crate) token_fetches: usize,
    /// Calls of `cgi-bin/get_api_domain_ip` made with one of the app's tokens.
    pub(crate) token_checks: usize,
    /// cgi-bin/token tokens that may still be usable, oldest first; the last
    /// is the current one.
    plain_tokens: Vec<String>,
    /// stable_token tokens that may still be usable, oldest first.
    stable_tokens: Vec<String>,
    latest_token: Option<String>,
    force_day: Option<NaiveDate>,
    force_count: u32,
    last_force_ms: Option<i64>,
}

impl App {
    /// Whether a send's `page` is acceptable: absent, empty, or an in-app path
    /// without a leading '/' (`pages/x/x`, not `/pages/x/x`:
    /// docs/wechat/template-messages.md, "The send"), among the registered
    /// pages if any; a `?query` is ignored.
    pub(crate) fn page_ok(&self, page: Option<&Value>) -> bool {
        match page {
            None | Some(Value::Null) => true,
            Some(Value::String(p)) if p.is_empty() => true,
            Some(Value::String(p)) => {
                let path = p.split('?').next().unwrap_or("");
                !p.starts_with('/') && (self.pages.is_empty() || self.pages.contains(path))
            }
            Some(_) => false,
        }
    }
}

impl Default for App {
    fn default() -> Self {
        Self {
            secret: None,
            templates: HashSet::new(),
            pages: HashSet::new(),
            users: HashSet::new(),
            send_quota: DailyQuota::new(DEFAULT_SEND_QUOTA),
            subscribe_quota: DailyQuota::new(DEFAULT_SUBSCRIBE_QUOTA),
            subscribe_templates: Vec::new(),
            classic_templates: Vec::new(),
            token_fetches: 0,
            token_checks: 0,
            plain_tokens: Vec::new(),
            stable_tokens: Vec::new(),
            latest_token: None,
            force_day: None,
            force_count: 0,
            last_force_ms: None,
        }
    }
}

/// A daily call quota that resets at midnight China time.
#[derive(Debug)]
pub(crate) struct DailyQuota {
    pub(crate) limit: u64,
    day: Option<NaiveDate>,
    used: u64,
}

impl DailyQuota {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            day: None,
            used: 0,
        }
    }

    /// Counts one call; `false` when today's quota is already spent.
    pub(crate) fn take(&mut self, now: i64) -> bool {
        let today = china_day(now);
        if self.day != Some(today) {
            self.day = Some(today);
            self.used = 0;
        }
        if self.used >= self.limit {
            return false;
        }
        self.used += 1;
        true
    }
}

/// Everything the fake knows.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) apps: HashMap<String, App>,
    tokens: HashMap<String, Token>,
    credentials: HashMap<String, Credential>,
    pub(crate) sends: Vec<SendRecord>,
    pub(crate) send_faults: VecDeque<Fault>,
    /// One-time grants and long-term subscriptions per (appid, openid, template_id).
    pub(crate) grants: HashMap<(String, String, String), SubscribeGrants>,
    pub(crate) subscribe_sends: Vec<SubscribeSendRecord>,
    pub(crate) subscribe_faults: VecDeque<Fault>,
    /// The next subscribe-send `msgid`.
    pub(crate) next_msgid: u64,
    pub(crate) token_faults: VecDeque<Fault>,
    pub(crate) retired: bool,
    pub(crate) latency: Duration,
    pub(crate) token_expires_in: i64,
    pub(crate) token_len: usize,
    pub(crate) prepay_sync_lag_ms: i64,
    /// Template-management calls received (`wxaapi/newtmpl/*`,
    /// `cgi-bin/wxopen/template/*`), by path, in order.
    pub(crate) manage_calls: Vec<&'static str>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            apps: HashMap::new(),
            tokens: HashMap::new(),
            credentials: HashMap::new(),
            sends: Vec::new(),
            send_faults: VecDeque::new(),
            grants: HashMap::new(),
            subscribe_sends: Vec::new(),
            subscribe_faults: VecDeque::new(),
            next_msgid: FIRST_MSGID,
            token_faults: VecDeque::new(),
            retired: false,
            latency: Duration::ZERO,
            token_expires_in: 7200,
            token_len: 600,
            prepay_sync_lag_ms: 0,
            manage_calls: Vec::new(),
        }
    }
}

/// What to answer.
#[derive(Debug)]
pub(crate) enum Answer {
    /// HTTP 200 with this JSON.
    Json(Value),
    /// This HTTP status with an HTML body.
    Status(u16),
    /// HTTP 200 with a non-JSON body.
    Garbage,
}

/// An answer, possibly delayed by [`Fault::Hang`].
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) answer: Answer,
    pub(crate) hang: Option<Duration>,
}

impl From<Answer> for Reply {
    fn from(answer: Answer) -> Self {
        Self { answer, hang: None }
    }
}

pub(crate) fn err(code: i64) -> Reply {
    Answer::Json(error_body(code)).into()
}

/// The calendar day in China (UTC+8), which is when WeChat's daily quotas
/// are taken to reset (docs/wechat/errcodes.md, "When daily limits reset").
pub(crate) fn china_day(now_ms: i64) -> NaiveDate {
    china_time(now_ms).date_naive()
}

fn china_time(now_ms: i64) -> DateTime<FixedOffset> {
    let offset = FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
    DateTime::from_timestamp_millis(now_ms)
        .unwrap_or_default()
        .with_timezone(&offset)
}

fn random_hex(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect()
}

/// A token of URL-safe characters (letters, digits, '_' and '-').
pub(crate) fn random_token(len: usize) -> String {
    const CHARSET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(CHARSET[rng.gen_range(0..CHARSET.len())]))
        .collect()
}

pub(crate) fn non_empty(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.is_empty())
}

/// A string field of a JSON object; empty when absent or not a string.
pub(crate) fn str_field<'a>(body: Option<&'a Map<String, Value>>, key: &str) -> &'a str {
    body.and_then(|b| b.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The fields both token endpoints take.
struct TokenParams<'a> {
    grant_type: Option<&'a str>,
    appid: Option<&'a str>,
    secret: Option<&'a str>,
}

enum TokenMode {
    Plain,
    Stable { force_refresh: bool },
}

impl State {
    pub(crate) fn app_mut(&mut self, appid: &str) -> &mut App {
        self.apps.entry(appid.to_owned()).or_default()
    }

    pub(crate) fn credential_mut(&mut self, value: &str) -> Option<&mut Credential> {
        let key = value.strip_prefix(PREPAY_PREFIX).unwrap_or(value);
        self.credentials.get_mut(key)
    }

    pub(crate) fn mint_credential(
        &mut self,
        appid: &str,
        openid: &str,
        kind: CredentialKind,
        now: i64,
    ) -> String {
        let value = loop {
            let candidate = match kind {
                CredentialKind::FormId => random_hex(32),
                CredentialKind::PrepayId => format!(
                    "wx{}{}",
                    china_time(now).format("%Y%m%d%H%M%S"),
                    random_hex(20)
                ),
            };
            if !self.credentials.contains_key(&candidate) {
                break candidate;
            }
        };
        let (uses_left, usable_from_ms) = match kind {
            CredentialKind::FormId => (FORM_ID_USES, now),
            CredentialKind::PrepayId => {
                (PREPAY_ID_USES, now.saturating_add(self.prepay_sync_lag_ms))
            }
        };
        self.app_mut(appid).users.insert(openid.to_owned());
        self.credentials.insert(
            value.clone(),
            Credential {
                appid: appid.to_owned(),
                openid: openid.to_owned(),
                kind,
                expires_ms: now + CREDENTIAL_LIFETIME_MS,
                usable_from_ms,
                uses_left,
                blocked: None,
            },
        );
        value
    }

    pub(crate) fn invalidate_tokens(&mut self, appid: &str, now: i64) {
        let Some(app) = self.apps.get_mut(appid) else {
            return;
        };
        for t in app
            .plain_tokens
            .drain(..)
            .chain(app.stable_tokens.drain(..))
        {
            if let Some(token) = self.tokens.get_mut(&t) {
                token.revoke_by(now);
            }
        }
        app.latest_token = None;
    }

    pub(crate) fn current_token(&self, appid: &str, now: i64) -> Option<String> {
        let latest = self.apps.get(appid)?.latest_token.as_ref()?;
        self.tokens
            .get(latest)
            .filter(|t| t.usable(now))
            .map(|_| latest.clone())
    }

    // ---------------------------------------------------------------- tokens

    /// `GET /cgi-bin/token` (docs/wechat/tokens.md, "Two ways to get a token").
    /// `query` is the parsed query string.
    pub(crate) fn plain_token(&mut self, query: &HashMap<String, String>, now: i64) -> Reply {
        let params = TokenParams {
            grant_type: query.get("grant_type").map(String::as_str),
            appid: query.get("appid").map(String::as_str),
            secret: query.get("secret").map(String::as_str),
        };
        self.with_token_fault(|s| s.token_common(&params, TokenMode::Plain, now))
    }

    /// `POST /cgi-bin/stable_token`, POST JSON only (docs/wechat/tokens.md,
    /// "Two ways to get a token").
    pub(crate) fn stable_token(&mut self, is_post: bool, body: &[u8], now: i64) -> Reply {
        self.with_token_fault(|s| {
            if !is_post {
                return err(codes::REQUIRE_POST);
            }
            if body.iter().all(u8::is_ascii_whitespace) {
                return err(codes::EMPTY_POST_DATA);
            }
            let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
                return err(codes::DATA_FORMAT_ERROR);
            };
            let force_refresh = match obj.get("force_refresh") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return err(codes::DATA_FORMAT_ERROR),
            };
            let params = TokenParams {
                grant_type: obj.get("grant_type").and_then(Value::as_str),
                appid: obj.get("appid").and_then(Value::as_str),
                secret: obj.get("secret").and_then(Value::as_str),
            };
            s.token_common(&params, TokenMode::Stable { force_refresh }, now)
        })
    }

    /// Applies the next token fault around a token call.
    fn with_token_fault(&mut self, call: impl FnOnce(&mut Self) -> Reply) -> Reply {
        match self.token_faults.pop_front() {
            None => call(self),
            Some(Fault::Errcode(code)) => err(code),
            Some(Fault::HttpStatus(status)) => Answer::Status(status).into(),
            Some(Fault::Garbage) => Answer::Garbage.into(),
            Some(Fault::Hang(d)) => Reply {
                hang: Some(d),
                ..call(self)
            },
            Some(Fault::DeliverThenFail(status)) => {
                call(self);
                Answer::Status(status).into()
            }
        }
    }

    fn token_common(&mut self, p: &TokenParams<'_>, mode: TokenMode, now: i64) -> Reply {
        if p.grant_type != Some("client_credential") {
            return err(codes::INVALID_GRANT_TYPE);
        }
        let Some(appid) = non_empty(p.appid) else {
            return err(codes::APPID_MISSING);
        };
        let Some(secret) = non_empty(p.secret) else {
            return err(codes::APPSECRET_MISSING);
        };
        let Some(expected) = self.apps.get(appid).and_then(|a| a.secret.as_deref()) else {
            return err(codes::INVALID_APPID);
        };
        if expected != secret {
            return err(codes::INVALID_APPSECRET);
        }
        let issued = match mode {
            TokenMode::Plain => Ok(self.issue_plain(appid, now)),
            TokenMode::Stable { force_refresh } => self.issue_stable(appid, force_refresh, now),
        };
        match issued {
            Ok((token, expires_in)) => {
                let app = self.app_mut(appid);
                app.token_fetches += 1;
                app.latest_token = Some(token.clone());
                tracing::debug!(appid, expires_in, "fake wechat issued a token");
                // Success carries no errcode field (docs/wechat/errcodes.md,
                // "The shape of an answer").
                Answer::Json(json!({"access_token": token, "expires_in": expires_in})).into()
            }
            Err(code) => err(code),
        }
    }

    fn mint_token(&mut self, appid: &str, now: i64) -> (String, i64) {
        let token = loop {
            let candidate = random_token(self.token_len);
            if !self.tokens.contains_key(&candidate) {
                break candidate;
            }
        };
        let expires_in = self.token_expires_in;
        self.tokens.insert(
            token.clone(),
            Token {
                appid: appid.to_owned(),
                expires_ms: now.saturating_add(expires_in.saturating_mul(SECOND_MS)),
                revoked_at_ms: None,
            },
        );
        (token, expires_in)
    }

    /// cgi-bin/token: every issue invalidates the previous token, but the
    /// previous one keeps working for up to 5 minutes; anything older was
    /// already superseded and stops at once (docs/wechat/tokens.md, "Two ways
    /// to get a token").
    fn issue_plain(&mut self, appid: &str, now: i64) -> (String, i64) {
        let previous = std::mem::take(&mut self.app_mut(appid).plain_tokens);
        let mut keep = Vec::new();
        if let Some((last, older)) = previous.split_last() {
            for t in older {
                if let Some(token) = self.tokens.get_mut(t) {
                    token.revoke_by(now);
                }
            }
            if let Some(token) = self.tokens.get_mut(last) {
                let until = token.expires_ms.min(now + TOKEN_OVERLAP_MS);
                token.revoke_by(until);
                if token.usable(now) {
                    keep.push(last.clone());
                }
            }
        }
        let (token, expires_in) = self.mint_token(appid, now);
        keep.push(token.clone());
        self.app_mut(appid).plain_tokens = keep;
        (token, expires_in)
    }

    /// stable_token, isolated from cgi-bin/token tokens
    /// (docs/wechat/tokens.md, "Two ways to get a token").
    fn issue_stable(
        &mut self,
        appid: &str,
        force_refresh: bool,
        now: i64,
    ) -> Result<(String, i64), i64> {
        // The current stable token, if it still works, with its remaining ms.
        let current = self.apps.get(appid).and_then(|app| {
            let t = app.stable_tokens.last()?;
            let token = self.tokens.get(t).filter(|tok| tok.usable(now))?;
            Some((t.clone(), token.expires_ms - now))
        });
        let remaining = |ms: i64| ms / SECOND_MS;

        if force_refresh {
            let today = china_day(now);
            let app = self.app_mut(appid);
            if app.force_day != Some(today) {
                app.force_day = Some(today);
                app.force_count = 0;
            }
            // Within 30 s of the last forced refresh "否则不会刷新" (it does
            // not refresh): hand back the current token unchanged.
            let recent = app
                .last_force_ms
                .is_some_and(|last| now - last < FORCE_REFRESH_SPACING_MS);
            if let (true, Some((token, left))) = (recent, &current) {
                return Ok((token.clone(), remaining(*left)));
            }
            if app.force_count >= FORCE_REFRESH_PER_DAY {
                // More than 20 forced refreshes a day answer 45009, as reported
                // (docs/wechat/tokens.md, "Two ways to get a token").
                return Err(codes::DAILY_QUOTA);
            }
            app.force_count += 1;
            app.last_force_ms = Some(now);
            // A forced refresh invalidates the previous token with no grace
            // period (docs/wechat/tokens.md, "Two ways to get a token").
            let previous = std::mem::take(&mut app.stable_tokens);
            for t in previous {
                if let Some(token) = self.tokens.get_mut(&t) {
                    token.revoke_by(now);
                }
            }
        } else if let Some((token, left)) = &current {
            // Normal mode returns the same token while it has more than 5 min
            // left, with its remaining lifetime, so `expires_in` >= 300
            // (docs/wechat/tokens.md, "Two ways to get a token").
            if *left > TOKEN_OVERLAP_MS {
                return Ok((token.clone(), remaining(*left)));
            }
            // Otherwise rotate early; the old token keeps working until its own
            // expiry, which is at most 5 minutes away.
        }

        let (token, expires_in) = self.mint_token(appid, now);
        let tokens = &self.tokens;
        let app = self.apps.entry(appid.to_owned()).or_default();
        app.stable_tokens
            .retain(|t| tokens.get(t).is_some_and(|tok| tok.usable(now)));
        app.stable_tokens.push(token.clone());
        Ok((token, expires_in))
    }

    // ------------------------------------------------------------ template send

    /// `POST /cgi-bin/message/wxopen/template/send`
    /// (docs/wechat/template-messages.md, "The send" and "formId and
    /// prepay_id"). Checks run in a fixed order and the first failure wins;
    /// every call is recorded.
    pub(crate) fn template_send(
        &mut self,
        access_token: Option<&str>,
        is_post: bool,
        body: &[u8],
        now: i64,
    ) -> Reply {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let obj = parsed.as_ref().and_then(Value::as_object);
        let mut record = SendRecord {
            at_ms: now,
            appid: access_token.and_then(|t| self.token_appid(t)),
            touser: str_field(obj, "touser").to_owned(),
            template_id: str_field(obj, "template_id").to_owned(),
            form_id: str_field(obj, "form_id").to_owned(),
            errcode: 0,
            delivered: false,
        };

        let (reply, errcode, delivered) =
            self.template_send_inner(access_token, is_post, body, obj, now);
        record.errcode = errcode;
        record.delivered = delivered;
        tracing::debug!(
            appid = record.appid.as_deref().unwrap_or("?"),
            errcode,
            "fake wechat template send"
        );
        self.sends.push(record);
        reply
    }

    /// Returns the reply, the errcode to record (`NO_JSON` when a fault
    /// answered without processing) and whether the message was delivered.
    fn template_send_inner(
        &mut self,
        access_token: Option<&str>,
        is_post: bool,
        body: &[u8],
        obj: Option<&Map<String, Value>>,
        now: i64,
    ) -> (Reply, i64, bool) {
        let fail = |code: i64| (err(code), code, false);

        // The API is retired: every call answers 45103
        // (docs/wechat/template-messages.md, "Retired").
        if self.retired {
            return fail(codes::API_RETIRED);
        }
        let appid = match self.check_token(access_token, now) {
            Ok(appid) => appid,
            Err(code) => return fail(code),
        };

        // Faults are consumed only by calls that got past the token check.
        let (hang, fail_status) = match FaultPlan::of(self.send_faults.pop_front()) {
            FaultPlan::Answer(reply, code) => return (reply, code, false),
            FaultPlan::Process { hang, fail_status } => (hang, fail_status),
        };

        let outcome = self.send_checks(&appid, is_post, body, obj, now);
        let errcode = outcome.as_ref().map_or_else(|(c, _)| *c, |()| codes::OK);
        let delivered = outcome.is_ok();
        let answer = match (fail_status, outcome) {
            (Some(status), _) => Answer::Status(status),
            (None, Ok(())) => Answer::Json(error_body(codes::OK)),
            (None, Err((code, Some(msg)))) => Answer::Json(error_body_msg(code, &msg)),
            (None, Err((code, None))) => Answer::Json(error_body(code)),
        };
        (Reply { answer, hang }, errcode, delivered)
    }
}

/// What a send fault does to one send call.
pub(crate) enum FaultPlan {
    /// Answer this without processing the call; record this errcode.
    Answer(Reply, i64),
    /// Process the call, then answer late and/or with a bare HTTP status.
    Process {
        hang: Option<Duration>,
        fail_status: Option<u16>,
    },
}

impl FaultPlan {
    pub(crate) fn of(fault: Option<Fault>) -> Self {
        let process = |hang, fail_status| Self::Process { hang, fail_status };
        match fault {
            None => process(None, None),
            Some(Fault::Errcode(code)) => Self::Answer(err(code), code),
            Some(Fault::HttpStatus(status)) => {
                Self::Answer(Answer::Status(status).into(), codes::NO_JSON)
            }
            Some(Fault::Garbage) => Self::Answer(Answer::Garbage.into(), codes::NO_JSON),
            Some(Fault::Hang(d)) => process(Some(d), None),
            Some(Fault::DeliverThenFail(status)) => process(None, Some(status)),
        }
    }
}

impl State {
    /// 41001 / 40014 / 40001 / 42001 (docs/wechat/tokens.md, "A token that
    /// stops working"); the token determines the app.
    /// The app a token was issued to, whether or not it still works.
    pub(crate) fn token_appid(&self, token: &str) -> Option<String> {
        self.tokens.get(token).map(|t| t.appid.clone())
    }

    pub(crate) fn check_token(&self, access_token: Option<&str>, now: i64) -> Result<String, i64> {
        let Some(t) = non_empty(access_token) else {
            return Err(codes::ACCESS_TOKEN_MISSING);
        };
        let Some(token) = self.tokens.get(t) else {
            return Err(codes::INVALID_ACCESS_TOKEN);
        };
        if token.revoked_at_ms.is_some_and(|r| now >= r) {
            return Err(codes::INVALID_CREDENTIAL);
        }
        if now >= token.expires_ms {
            return Err(codes::ACCESS_TOKEN_EXPIRED);
        }
        Ok(token.appid.clone())
    }

    /// `GET /cgi-bin/get_api_domain_ip` (docs/wechat/tokens.md, "checking a
    /// token"): the cheapest call that needs a valid token. It answers the
    /// server addresses, or the token errcodes of every business API.
    pub(crate) fn api_domain_ip(&mut self, access_token: Option<&str>, now: i64) -> Reply {
        if let Some(appid) = access_token.and_then(|t| self.token_appid(t)) {
            self.app_mut(&appid).token_checks += 1;
        }
        match self.check_token(access_token, now) {
            Ok(_) => Answer::Json(json!({"ip_list": ["101.89.47.18", "101.91.34.103"]})).into(),
            Err(code) => err(code),
        }
    }

    /// Everything after the token check; on success the credential is spent.
    /// The error carries an optional specific errmsg stem.
    fn send_checks(
        &mut self,
        appid: &str,
        is_post: bool,
        body: &[u8],
        obj: Option<&Map<String, Value>>,
        now: i64,
    ) -> Result<(), (i64, Option<String>)> {
        let code = |c: i64| (c, None);
        if !is_post {
            return Err(code(codes::REQUIRE_POST));
        }
        if body.is_empty() {
            return Err(code(codes::EMPTY_POST_DATA));
        }
        let Some(obj) = obj else {
            return Err(code(codes::DATA_FORMAT_ERROR));
        };

        // Daily quota: only calls that got this far count; it resets at
        // midnight China time.
        let app = self.app_mut(appid);
        if !app.send_quota.take(now) {
            return Err(code(codes::DAILY_QUOTA));
        }

        // An openid belongs to one app: a foreign one is 40003
        // (docs/wechat/errcodes.md, "Codes and their errmsg stems").
        let touser = obj.get("touser").and_then(Value::as_str).unwrap_or("");
        if touser.is_empty() || !app.users.contains(touser) {
            return Err(code(codes::INVALID_OPENID));
        }
        let template_ok = obj
            .get("template_id")
            .and_then(Value::as_str)
            .is_some_and(|t| app.templates.contains(t));
        if !template_ok {
            return Err(code(codes::INVALID_TEMPLATE_ID));
        }
        if !app.page_ok(obj.get("page")) {
            return Err(code(codes::INVALID_PAGE));
        }
        if let Some(msg) = obj.get("data").and_then(data_error) {
            return Err((codes::ARGUMENT_INVALID, Some(msg)));
        }

        let form_id = obj.get("form_id").and_then(Value::as_str).unwrap_or("");
        // A payment's form_id may be sent as "prepay_id=wx…" (as the JSAPI
        // package carries it) or bare.
        let key = form_id.strip_prefix(PREPAY_PREFIX).unwrap_or(form_id);
        let Some(cred) = self.credentials.get_mut(key).filter(|_| !key.is_empty()) else {
            return Err(code(codes::INVALID_FORM_ID));
        };
        // Bound to the user who produced it and (inferred) to its app; expired
        // after 7 days; an unsynced payment is unknown yet
        // (docs/wechat/template-messages.md, "formId and prepay_id").
        if cred.appid != appid
            || cred.openid != touser
            || now >= cred.expires_ms
            || (cred.kind == CredentialKind::PrepayId && now < cred.usable_from_ms)
        {
            return Err(code(codes::INVALID_FORM_ID));
        }
        if let Some(blocked) = cred.blocked {
            return Err(code(blocked));
        }
        if cred.uses_left == 0 {
            return Err(code(codes::FORM_ID_USED_UP));
        }
        cred.uses_left -= 1;
        Ok(())
    }
}

/// `data` must map each keyword to `{"value": <string or number>}`; the errmsg
/// names the field (47003 `argument invalid! data.x.value invalid`, as on
/// subscribe sends: docs/wechat/subscribe-messages.md, "Value rules per
/// placeholder type").
fn data_error(data: &Value) -> Option<String> {
    match data {
        Value::Null => None,
        Value::Object(fields) => fields.iter().find_map(|(key, field)| {
            let ok = field
                .get("value")
                .is_some_and(|v| v.is_string() || v.is_number());
            (!ok).then(|| format!("argument invalid! data.{key}.value invalid"))
        }),
        _ => Some("argument invalid! data invalid".to_owned()),
    }
}
