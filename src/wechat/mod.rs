//! The client for WeChat's server API: token issue, the template send, and
//! the template management of both template systems (the calls are
//! [`crate::wechat::template_calls`]).
//!
//! Every error WeChat reports comes back as HTTP 200 with
//! `{"errcode","errmsg"}` (docs/wechat/errcodes.md, "The shape of an
//! answer"); a missing errcode means 0, and the body is parsed as JSON
//! whatever its Content-Type says. URLs carry the access_token or the
//! AppSecret, so no URL ever reaches a log or an error message: reqwest
//! errors are stripped of theirs.

pub mod breaker;
pub mod template_calls;

use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::config::TokenMode;
use crate::monitoring::{CallResult, TokenResult};

/// What went wrong on the wire, sorted by what it tells about delivery.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request never left: nothing can have been delivered.
    #[error("WeChat could not be reached: {0}")]
    NotSent(String),
    /// The request may have been processed: a timeout after sending, a 5xx,
    /// a body that is not JSON.
    #[error("WeChat's answer is unknown: {0}")]
    Ambiguous(String),
}

/// WeChat's answer to a business call.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
    /// The id of a delivered subscribe message. Read as text whatever its
    /// JSON type: it exceeds 2^53, past which a double loses digits.
    #[serde(default, deserialize_with = "id_as_text")]
    pub msgid: Option<String>,
}

/// An id WeChat sends as a JSON number or a string, kept as its digits.
fn id_as_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Number(number) => Some(number.to_string()),
        Value::String(text) if !text.is_empty() => Some(text),
        _ => None,
    })
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in_secs: i64,
}

/// WeChat's answer to a token request.
#[derive(Debug, Clone)]
pub enum TokenReply {
    Issued(IssuedToken),
    Refused(Reply),
}

/// Who a login code belongs to, as `jscode2session` answered
/// (docs/wechat/login.md, "The exchange"). The `session_key` WeChat also
/// sends is never read into it: the gateway has no use for it, so it is
/// nowhere to leak from.
#[derive(Debug, Clone)]
pub struct LoginIdentity {
    pub openid: String,
    /// Only for an app bound to an Open Platform account.
    pub unionid: Option<String>,
}

/// WeChat's answer to a login code.
#[derive(Debug, Clone)]
pub enum LoginReply {
    /// The code was good: whose it is.
    Identity(LoginIdentity),
    /// An errcode other than 0.
    Refused(Reply),
}

/// The two calls the gateway makes to WeChat. [`WeChatClient`] makes them
/// over HTTP; the deterministic simulation answers them from a model of
/// WeChat, so that the send path and the token keeper run unchanged there.
#[async_trait::async_trait]
pub trait WeChatApi: Send + Sync + std::fmt::Debug {
    /// Asks WeChat for a token for the app. `force_refresh` applies to
    /// stable_token mode only; the caller keeps it inside WeChat's budget.
    async fn fetch_token(
        &self,
        appid: &str,
        secret: &SecretString,
        mode: TokenMode,
        force_refresh: bool,
    ) -> Result<TokenReply, CallError>;

    /// `POST /cgi-bin/message/wxopen/template/send` with the given body.
    async fn send_template(&self, access_token: &str, body: &Value) -> Result<Reply, CallError>;

    /// `GET /cgi-bin/get_api_domain_ip`: the cheapest call that needs a valid
    /// token (docs/wechat/tokens.md). Errcode 0 proves the token works; a
    /// token errcode (40001, 40014, 42001) proves it does not.
    async fn check_token(&self, access_token: &str) -> Result<Reply, CallError>;

    /// `POST /cgi-bin/message/subscribe/send` with the given body.
    async fn send_subscribe(&self, access_token: &str, body: &Value) -> Result<Reply, CallError>;

    /// `GET /sns/jscode2session`: exchanges a `wx.login` code for the
    /// user's openid (docs/wechat/login.md).
    async fn code_to_session(
        &self,
        appid: &str,
        secret: &SecretString,
        code: &str,
    ) -> Result<LoginReply, CallError>;

    /// One template-management call of either template system
    /// ([`template_calls::TemplateCall`]); answers WeChat's JSON as it came, its
    /// `errcode` included (read it with [`template_calls::errcode_of`]).
    async fn manage_templates(
        &self,
        access_token: &str,
        call: &template_calls::TemplateCall,
    ) -> Result<Value, CallError>;
}

/// A shareable handle on WeChat.
pub type SharedWeChat = std::sync::Arc<dyn WeChatApi>;

/// A thin, cloneable client; one per process.
#[derive(Debug, Clone)]
pub struct WeChatClient {
    http: reqwest::Client,
    base_url: String,
}

impl WeChatClient {
    /// A client for `base_url` with separate connect and total timeouts,
    /// keeping up to `max_idle_connections` connections open between calls.
    pub fn new(
        base_url: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
        max_idle_connections: usize,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .pool_max_idle_per_host(max_idle_connections)
            .build()
            .context("building the WeChat HTTP client")?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }
}

#[async_trait::async_trait]
impl WeChatApi for WeChatClient {
    async fn fetch_token(
        &self,
        appid: &str,
        secret: &SecretString,
        mode: TokenMode,
        force_refresh: bool,
    ) -> Result<TokenReply, CallError> {
        let reply = self.token_call(appid, secret, mode, force_refresh).await;
        let result = match &reply {
            Ok(TokenReply::Issued(_)) => TokenResult::Issued,
            Ok(TokenReply::Refused(_)) => TokenResult::Refused,
            Err(_) => TokenResult::Failed,
        };
        crate::monitoring::token_refresh(appid, result);
        reply
    }

    async fn send_template(&self, access_token: &str, body: &Value) -> Result<Reply, CallError> {
        self.business_call("cgi-bin/message/wxopen/template/send", access_token, body)
            .await
    }

    async fn check_token(&self, access_token: &str) -> Result<Reply, CallError> {
        let request = self
            .http
            .get(format!("{}/cgi-bin/get_api_domain_ip", self.base_url))
            .query(&[("access_token", access_token)]);
        let body = send("cgi-bin/get_api_domain_ip", request).await?;
        serde_json::from_value(body)
            .map_err(|_| CallError::Ambiguous("answer of an unexpected shape".into()))
    }

    async fn send_subscribe(&self, access_token: &str, body: &Value) -> Result<Reply, CallError> {
        self.business_call("cgi-bin/message/subscribe/send", access_token, body)
            .await
    }

    async fn code_to_session(
        &self,
        appid: &str,
        secret: &SecretString,
        code: &str,
    ) -> Result<LoginReply, CallError> {
        // The URL carries the secret and the code: `send` strips URLs from
        // every error it reports.
        let request = self
            .http
            .get(format!("{}/sns/jscode2session", self.base_url))
            .query(&[
                ("appid", appid),
                ("secret", secret.expose_secret()),
                ("js_code", code),
                ("grant_type", "authorization_code"),
            ]);
        Self::login_reply(send("sns/jscode2session", request).await?)
    }

    async fn manage_templates(
        &self,
        access_token: &str,
        call: &template_calls::TemplateCall,
    ) -> Result<Value, CallError> {
        let url = format!("{}{}", self.base_url, call.path());
        let token = [("access_token", access_token)];
        let request = match call.wire() {
            template_calls::Wire::Get(query) => self.http.get(url).query(&token).query(&query),
            template_calls::Wire::Json(body) => self.http.post(url).query(&token).json(&body),
            template_calls::Wire::Form(form) => self.http.post(url).query(&token).form(&form),
        };
        let answer = send(call.path().trim_start_matches('/'), request).await?;
        if answer.is_object() {
            Ok(answer)
        } else {
            Err(CallError::Ambiguous(format!(
                "{} answered JSON that is not an object",
                call.name()
            )))
        }
    }
}

impl WeChatClient {
    /// One token call: the answer, or why there is none.
    async fn token_call(
        &self,
        appid: &str,
        secret: &SecretString,
        mode: TokenMode,
        force_refresh: bool,
    ) -> Result<TokenReply, CallError> {
        let request = match mode {
            TokenMode::Token => self
                .http
                .get(format!("{}/cgi-bin/token", self.base_url))
                .query(&[
                    ("grant_type", "client_credential"),
                    ("appid", appid),
                    ("secret", secret.expose_secret()),
                ]),
            // force_refresh is limited to 20 a day, 30 s apart
            // (docs/wechat/tokens.md, "Two ways to get a token"):
            // only the token keeper's budgeted escalation sets it.
            TokenMode::StableToken => self
                .http
                .post(format!("{}/cgi-bin/stable_token", self.base_url))
                .json(&serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": appid,
                    "secret": secret.expose_secret(),
                    "force_refresh": force_refresh,
                })),
        };
        let api = match mode {
            TokenMode::Token => "cgi-bin/token",
            TokenMode::StableToken => "cgi-bin/stable_token",
        };
        let body = send(api, request).await?;
        #[derive(Deserialize)]
        struct Answer {
            access_token: Option<String>,
            expires_in: Option<i64>,
            #[serde(default)]
            errcode: i64,
            #[serde(default)]
            errmsg: String,
        }
        let answer: Answer = serde_json::from_value(body)
            .map_err(|_| CallError::Ambiguous("token answer of an unexpected shape".into()))?;
        match (answer.errcode, answer.access_token, answer.expires_in) {
            (0, Some(token), Some(expires_in)) if !token.is_empty() && expires_in > 0 => {
                Ok(TokenReply::Issued(IssuedToken {
                    token,
                    expires_in_secs: expires_in,
                }))
            }
            (0, _, _) => Err(CallError::Ambiguous("token answer without a token".into())),
            (errcode, _, _) => Ok(TokenReply::Refused(Reply {
                errcode,
                errmsg: answer.errmsg,
                msgid: None,
            })),
        }
    }

    /// The login exchange's answer: JSON served as `text/plain`, a success
    /// that may carry no `errcode` (docs/wechat/login.md, "The exchange").
    fn login_reply(body: Value) -> Result<LoginReply, CallError> {
        #[derive(Deserialize)]
        struct Answer {
            openid: Option<String>,
            unionid: Option<String>,
            #[serde(default)]
            errcode: i64,
            #[serde(default)]
            errmsg: String,
        }
        let answer: Answer = serde_json::from_value(body)
            .map_err(|_| CallError::Ambiguous("login answer of an unexpected shape".into()))?;
        match (answer.errcode, answer.openid) {
            (0, Some(openid)) if !openid.is_empty() => Ok(LoginReply::Identity(LoginIdentity {
                openid,
                unionid: answer.unionid.filter(|unionid| !unionid.is_empty()),
            })),
            (0, _) => Err(CallError::Ambiguous(
                "login answer without an openid".into(),
            )),
            (errcode, _) => Ok(LoginReply::Refused(Reply {
                errcode,
                errmsg: answer.errmsg,
                msgid: None,
            })),
        }
    }

    /// A POST of a JSON body to a business API under the token.
    async fn business_call(
        &self,
        path: &'static str,
        access_token: &str,
        body: &Value,
    ) -> Result<Reply, CallError> {
        let request = self
            .http
            .post(format!("{}/{path}", self.base_url))
            .query(&[("access_token", access_token)])
            .json(body);
        let body = send(path, request).await?;
        serde_json::from_value(body)
            .map_err(|_| CallError::Ambiguous("answer of an unexpected shape".into()))
    }
}

/// Sends a call to `api` (its path, the metrics' label) and reads a JSON
/// answer, sorting failures by what they say about delivery; the call is
/// timed by its result.
async fn send(api: &'static str, request: reqwest::RequestBuilder) -> Result<Value, CallError> {
    let started = std::time::Instant::now();
    let answer = call(request).await;
    let result = match &answer {
        Ok(_) => CallResult::Answered,
        Err(CallError::NotSent(_)) => CallResult::NotSent,
        Err(CallError::Ambiguous(_)) => CallResult::Ambiguous,
    };
    crate::monitoring::wechat_call(api, result, started.elapsed());
    answer
}

/// [`send`] untimed.
async fn call(request: reqwest::RequestBuilder) -> Result<Value, CallError> {
    let response = request.send().await.map_err(|error| {
        let error = error.without_url();
        if error.is_connect() || error.is_builder() {
            CallError::NotSent(error.to_string())
        } else {
            CallError::Ambiguous(error.to_string())
        }
    })?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|error| CallError::Ambiguous(error.without_url().to_string()))?;
    // A 4xx means the request was refused before it was handled; a 5xx may
    // come after WeChat acted on it.
    if status.is_client_error() {
        return Err(CallError::NotSent(format!("HTTP {status}")));
    }
    if !status.is_success() {
        return Err(CallError::Ambiguous(format!("HTTP {status}")));
    }
    serde_json::from_slice(&bytes)
        .map_err(|_| CallError::Ambiguous(format!("HTTP {status} with a body that is not JSON")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_msgid_past_two_to_the_53_keeps_every_digit() {
        let reply: Reply =
            serde_json::from_str(r#"{"errcode":0,"errmsg":"ok","msgid":1988810812324364291}"#)
                .unwrap();
        assert_eq!(reply.msgid.as_deref(), Some("1988810812324364291"));
        let reply: Reply =
            serde_json::from_str(r#"{"errcode":0,"msgid":"1700827132819554304"}"#).unwrap();
        assert_eq!(reply.msgid.as_deref(), Some("1700827132819554304"));
        let reply: Reply =
            serde_json::from_str(r#"{"errcode":43101,"errmsg":"user refuse"}"#).unwrap();
        assert_eq!(reply.msgid, None);
    }
}
