//! The mini-program flow with no API key on the client, run by the demo
//! against the fake WeChat and printed step by step: `wx.login` → a session
//! (`POST /v1/apps/{appid}/sessions`) → a form_id and a prompt result posted
//! through `/me` with the session token → the quota through `/me` → a
//! business service's sends (with its API key) spend them.

use std::fmt::Write as _;

use anyhow::Context;
use serde_json::{json, Value};

/// A one-time subscribe template of the fake's seeded library (title 1209:
/// `thing1`, `time2`).
const TID: u32 = 1209;

/// Where the flow runs and who it runs for.
#[derive(Debug, Clone)]
pub struct SessionFlow {
    /// The gateway, `http://host:port`.
    pub gateway: String,
    /// The fake WeChat, `http://host:port`.
    pub fake: String,
    /// The business service's API key (the mini-program has none).
    pub key: String,
    /// The app.
    pub appid: String,
    /// The user who logs in.
    pub openid: String,
    /// The legacy template the form_id pays for.
    pub legacy_template: String,
}

impl SessionFlow {
    /// Runs the flow and returns what to print.
    pub async fn run(&self) -> anyhow::Result<String> {
        let http = reqwest::Client::new();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n== The mini-program with no API key: wx.login → session → /me → a send spends it =="
        );
        let app = format!("{}/v1/apps/{}", self.gateway, self.appid);
        let user = format!(
            "{}/fake/apps/{}/users/{}",
            self.fake, self.appid, self.openid
        );
        let (template, token) = self.log_in(&http, &mut out, &app, &user).await?;
        let form_id = call(&http, "POST", &format!("{user}/form_id"), None, None).await?;
        let form_id = form_id["form_id"]
            .as_str()
            .or_else(|| form_id["value"].as_str())
            .or_else(|| form_id.as_str())
            .context("minting a form_id")?
            .to_owned();
        let posted = call(
            &http,
            "POST",
            &format!("{app}/me/credentials"),
            Some(&token),
            Some(json!({"kind": "form_id", "value": form_id})),
        )
        .await?;
        step(&mut out, 13, "A form is submitted; the mini-program posts its formId for itself (no openid in the body):", &format!("curl -s -X POST {app}/me/credentials -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{{\"kind\":\"form_id\",\"value\":\"{form_id}\"}}'"), &posted.to_string());
        call(
            &http,
            "POST",
            &format!("{user}/grants/{template}/accept"),
            None,
            None,
        )
        .await?;
        let prompt = json!({"request_id": "demo-me-1", "result": {"errMsg": "requestSubscribeMessage:ok", template.as_str(): "accept"}});
        let recorded = call(
            &http,
            "POST",
            &format!("{app}/me/subscriptions"),
            Some(&token),
            Some(prompt.clone()),
        )
        .await?;
        step(&mut out, 14, "The user accepts the template in wx.requestSubscribeMessage; the mini-program posts the result:", &format!("curl -s -X POST {app}/me/subscriptions -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{prompt}'"), &format!("granted {}, openid {}", recorded["granted"], recorded["openid"]));
        let quota = call(&http, "GET", &format!("{app}/me/quota"), Some(&token), None).await?;
        step(
            &mut out,
            15,
            "The mini-program reads its own quota:",
            &format!("curl -s {app}/me/quota -H 'Authorization: Bearer {token}'"),
            &quota.to_string(),
        );
        let legacy = json!({"touser": self.openid, "template_id": self.legacy_template, "data": {"keyword1": {"value": "Order 1"}}});
        let sent_legacy = call(
            &http,
            "POST",
            &format!("{app}/messages"),
            Some(&self.key),
            Some(legacy),
        )
        .await?;
        let subscribe = json!({"touser": self.openid, "template_id": template, "data": {"thing1": {"value": "Car wash"}, "time2": {"value": "2024年5月1日 10:00"}}});
        let sent = call(
            &http,
            "POST",
            &format!("{app}/messages"),
            Some(&self.key),
            Some(subscribe),
        )
        .await?;
        step(&mut out, 16, "The business service (its own API key) sends twice: the form_id and the grant are spent:", &format!("curl -s -X POST {app}/messages -H 'Authorization: Bearer <the service key>' ..."), &format!("{} and {}", sent_legacy["status"], sent["status"]));
        Ok(out)
    }

    /// Steps 11 and 12: the template the user will accept, and a login with
    /// a code the fake mints; the template's id and the session token.
    async fn log_in(
        &self,
        http: &reqwest::Client,
        out: &mut String,
        app: &str,
        user: &str,
    ) -> anyhow::Result<(String, String)> {
        let added = call(http, "POST", &format!("{app}/templates"), Some(&self.key), Some(json!({"channel": "subscribe", "tid": TID, "keyword_ids": [1, 2], "scene_desc": "洗车预约"}))).await?;
        let template = added["id"]
            .as_str()
            .context("adding the template")?
            .to_owned();
        let code = call(http, "POST", &format!("{user}/login_code"), None, None).await?;
        let code = code["code"]
            .as_str()
            .context("minting a login code")?
            .to_owned();
        step(
            out,
            11,
            "wx.login() resolves with a code (the fake mints one):",
            &format!("curl -s -X POST {user}/login_code"),
            &format!("{{\"code\":\"{code}\"}}"),
        );
        let session = call(
            http,
            "POST",
            &format!("{app}/sessions"),
            None,
            Some(json!({"code": code})),
        )
        .await?;
        let token = session["session_token"]
            .as_str()
            .context("logging in")?
            .to_owned();
        step(out, 12, "The mini-program posts it, with no API key; the gateway asks jscode2session:", &format!("curl -s -X POST {app}/sessions -H 'Content-Type: application/json' -d '{{\"code\":\"{code}\"}}'"), &session.to_string());
        Ok((template, token))
    }
}

/// One call; the JSON answer, whatever its status.
async fn call(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).context("a method")?;
    let mut request = http.request(method, url);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.context("calling the demo's servers")?;
    let bytes = response.bytes().await.context("reading an answer")?;
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn step(out: &mut String, number: u32, title: &str, curl: &str, answer: &str) {
    let _ = writeln!(out, "\n# {number}. {title}\n{curl}; echo\n  → {answer}");
}
