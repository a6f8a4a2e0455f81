//! The subscribe flow, run by the demo itself against the fake WeChat and
//! printed step by step: each step as the curl line that does the same, then
//! what the gateway (or the fake) answered.
//!
//! It is the flow that works against real WeChat today: a subscribe template
//! is added through the gateway, the user accepts it in
//! `wx.requestSubscribeMessage`, the frontend posts the prompt's result with
//! a `request_id` (twice, to show that a retry grants nothing more), the
//! quota shows the grant, and two sends spend it: the first is sent, the
//! second is refused with 409 `no_credential`. Then three more users accept,
//! and one broadcast notifies every holder of the template.

use std::fmt::Write as _;

use anyhow::Context;
use serde_json::Value;

/// The public title the demo's template is made from (the fake's seeded
/// library: 订单发货提醒, keywords 1 `thing1` and 2 `character_string2`).
const TID: u32 = 401;
const KEYWORD_IDS: [u32; 2] = [1, 2];
const SCENE_DESC: &str = "订单发货后";

/// Where the flow runs and who it runs for.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The gateway, `http://host:port`.
    pub gateway: String,
    /// The fake WeChat, `http://host:port`.
    pub fake: String,
    /// The demo's API key (admin scope: collect, send and admin).
    pub key: String,
    /// The app.
    pub appid: String,
    /// The user who accepts the template.
    pub openid: String,
    /// The request_id the frontend made for the prompt.
    pub request_id: String,
}

/// One HTTP answer: status and JSON body (`null` when not JSON).
struct Answer {
    status: u16,
    body: Value,
}

impl Flow {
    /// Runs the flow and returns what to print, one block per step. Fails
    /// only when a call cannot be made or answers what the flow cannot go
    /// on from (no template id, a send that was not sent).
    pub async fn run(&self) -> anyhow::Result<String> {
        let http = reqwest::Client::new();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n== The subscribe flow (the one that works on WeChat today), run now against the fake ==",
        );
        let template = self.add_template(&http, &mut out).await?;
        self.accept_in_prompt(&http, &template, &mut out).await?;
        self.post_prompt_result(&http, &template, &mut out).await?;
        self.show_quota(&http, &template, &mut out).await?;
        self.send_twice(&http, &template, &mut out).await?;
        self.broadcast(&http, &template, &mut out).await?;
        Ok(out)
    }

    /// The app's base URL on the gateway.
    fn app_url(&self) -> String {
        format!("{}/v1/apps/{}", self.gateway, self.appid)
    }

    /// The curl option that sends the demo's API key.
    fn auth(&self) -> String {
        format!("-H 'Authorization: Bearer {}'", self.key)
    }

    /// The curl line that POSTs `body` as JSON to `url` with the API key.
    fn curl_post(&self, url: &str, body: &str) -> String {
        format!(
            "curl -s -X POST {url} {} -H 'Content-Type: application/json' \\\n  -d '{body}'",
            self.auth()
        )
    }

    /// Step 1: the template, added through the gateway's admin endpoint.
    /// Returns its id.
    async fn add_template(
        &self,
        http: &reqwest::Client,
        out: &mut String,
    ) -> anyhow::Result<String> {
        let body = format!(
            r#"{{"channel":"subscribe","tid":{TID},"keyword_ids":[{},{}],"scene_desc":"{SCENE_DESC}"}}"#,
            KEYWORD_IDS[0], KEYWORD_IDS[1]
        );
        let url = format!("{}/templates", self.app_url());
        let added = self.post(http, &url, &body).await?;
        let template = added.body["id"]
            .as_str()
            .with_context(|| {
                format!(
                    "adding the template answered {} {}",
                    added.status, added.body
                )
            })?
            .to_owned();
        let placeholders: Vec<String> = added.body["placeholders"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|p| format!("{} ({})", text(&p["name"]), text(&p["type"])))
                    .collect()
            })
            .unwrap_or_default();
        step(
            out,
            1,
            "Add a subscribe template through the gateway (scope admin; it calls wxaapi/newtmpl/addtemplate):",
            &self.curl_post(&url, &body),
            &format!(
                "{} template {template}, \"{}\", {}, placeholders {}",
                added.status,
                text(&added.body["title"]),
                text(&added.body["type"]),
                placeholders.join(", ")
            ),
        );
        Ok(template)
    }

    /// Step 2: the user accepts it in the prompt: WeChat (the fake) counts a
    /// grant.
    async fn accept_in_prompt(
        &self,
        http: &reqwest::Client,
        template: &str,
        out: &mut String,
    ) -> anyhow::Result<()> {
        let accept = format!(
            "{}/fake/apps/{}/users/{}/grants/{template}/accept",
            self.fake, self.appid, self.openid
        );
        let accepted = self.post_empty(http, &accept).await?;
        step(
            out,
            2,
            "The user taps 允许 in wx.requestSubscribeMessage({tmplIds:[TEMPLATE]}); WeChat (the fake) counts one grant:",
            &format!("curl -s -X POST {accept}"),
            &format!("{} {}", accepted.status, accepted.body),
        );
        Ok(())
    }

    /// Steps 3 and 4: the frontend posts the result, then posts it again.
    async fn post_prompt_result(
        &self,
        http: &reqwest::Client,
        template: &str,
        out: &mut String,
    ) -> anyhow::Result<()> {
        let prompt = format!(
            r#"{{"openid":"{}","request_id":"{}","result":{{"errMsg":"requestSubscribeMessage:ok","{template}":"accept"}}}}"#,
            self.openid, self.request_id
        );
        let url = format!("{}/subscriptions", self.app_url());
        let curl = self.curl_post(&url, &prompt);
        let first = self.post(http, &url, &prompt).await?;
        step(
            out,
            3,
            "The frontend posts the result, untouched, with the request_id it made for this prompt (scope collect):",
            &curl,
            &prompt_summary(&first, template),
        );
        let again = self.post(http, &url, &prompt).await?;
        step(
            out,
            4,
            "The same post again, as a frontend retrying after a network failure: nothing more is granted:",
            &curl,
            &prompt_summary(&again, template),
        );
        Ok(())
    }

    /// Step 5: the quota.
    async fn show_quota(
        &self,
        http: &reqwest::Client,
        template: &str,
        out: &mut String,
    ) -> anyhow::Result<()> {
        let quota_url = format!("{}/users/{}/quota", self.app_url(), self.openid);
        let quota = self.get(http, &quota_url).await?;
        step(
            out,
            5,
            "What the user can receive now (one-time grants per template under \"subscriptions\"):",
            &format!("curl -s {quota_url} {}", self.auth()),
            &quota_summary(&quota, template),
        );
        Ok(())
    }

    /// Steps 6 and 7: two sends; the grant pays for the first only.
    async fn send_twice(
        &self,
        http: &reqwest::Client,
        template: &str,
        out: &mut String,
    ) -> anyhow::Result<()> {
        let message = format!(
            r#"{{"touser":"{}","template_id":"{template}","page":"pages/order/detail?id=1024","data":{{"thing1":{{"value":"蓝色马克杯"}},"character_string2":{{"value":"SN20240501001"}}}}}}"#,
            self.openid
        );
        let url = format!("{}/messages", self.app_url());
        let curl = self.curl_post(&url, &message);
        let sent = self.post(http, &url, &message).await?;
        let attempt = &sent.body["attempts"][0];
        if sent.status != 200 {
            anyhow::bail!("the first send answered {} {}", sent.status, sent.body);
        }
        step(
            out,
            6,
            "A business service notifies the user; the gateway sees a subscribe template and spends the grant:",
            &curl,
            &format!(
                "{} {}, channel {}, credential {}, msgid {} (a string: it exceeds 2^53), checked against the template: {}",
                sent.status,
                text(&sent.body["status"]),
                text(&sent.body["channel"]),
                text(&attempt["credential_kind"]),
                text(&attempt["msgid"]),
                sent.body["checked"]
            ),
        );
        let refused = self.post(http, &url, &message).await?;
        step(
            out,
            7,
            "Again: the grant is spent, so the gateway answers 409 no_credential and calls nothing:",
            &curl,
            &format!(
                "{} {}: {}",
                refused.status,
                text(&refused.body["error"]["code"]),
                text(&refused.body["error"]["message"])
            ),
        );
        Ok(())
    }

    /// Steps 8 and 9: three more users accept the template; a broadcast to
    /// every holder of it notifies each of them once.
    async fn broadcast(
        &self,
        http: &reqwest::Client,
        template: &str,
        out: &mut String,
    ) -> anyhow::Result<()> {
        for n in 1..=3 {
            let user = format!("{}-{n}", self.openid);
            let accept = format!(
                "{}/fake/apps/{}/users/{user}/grants/{template}/accept",
                self.fake, self.appid
            );
            self.post_empty(http, &accept).await?;
            let prompt = format!(
                r#"{{"openid":"{user}","request_id":"{}-{n}","result":{{"errMsg":"requestSubscribeMessage:ok","{template}":"accept"}}}}"#,
                self.request_id
            );
            self.post(http, &format!("{}/subscriptions", self.app_url()), &prompt)
                .await?;
        }
        let body = format!(
            r#"{{"template_id":"{template}","page":"pages/item?id=7","data":{{"thing1":{{"value":"蓝色马克杯 到货了"}},"character_string2":{{"value":"SN20240501001"}}}},"audience":"holders"}}"#
        );
        let url = format!("{}/broadcasts", self.app_url());
        let created = self.post(http, &url, &body).await?;
        let id = created.body["id"]
            .as_str()
            .with_context(|| format!("the broadcast answered {} {}", created.status, created.body))?
            .to_owned();
        step(
            out,
            8,
            "Three more users accept the template; a broadcast to every holder of it (the first user's grant is spent):",
            &self.curl_post(&url, &body),
            &format!(
                "{} {}, {} recipient(s)",
                created.status,
                text(&created.body["state"]),
                created.body["recipients"]
            ),
        );
        let progress_url = format!("{url}/{id}");
        let mut progress = self.get(http, &progress_url).await?;
        for _ in 0..100 {
            if progress.body["finished_at"].is_string() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            progress = self.get(http, &progress_url).await?;
        }
        step(
            out,
            9,
            "Its progress (the worker of any instance sends it, each recipient once):",
            &format!("curl -s {progress_url} {}", self.auth()),
            &format!(
                "{} {}, sent {}, no_credential {}, remaining {}",
                progress.status,
                text(&progress.body["state"]),
                progress.body["sent"],
                progress.body["no_credential"],
                progress.body["remaining"]
            ),
        );
        Ok(())
    }

    /// Posts `body` as the curl line shows it, byte for byte.
    async fn post(&self, http: &reqwest::Client, url: &str, body: &str) -> anyhow::Result<Answer> {
        let request = http
            .post(url)
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body.to_owned());
        answer(request).await
    }

    async fn post_empty(&self, http: &reqwest::Client, url: &str) -> anyhow::Result<Answer> {
        answer(http.post(url)).await
    }

    async fn get(&self, http: &reqwest::Client, url: &str) -> anyhow::Result<Answer> {
        answer(http.get(url).bearer_auth(&self.key)).await
    }
}

async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
    let response = request.send().await.context("calling the demo's servers")?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.context("reading an answer")?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer { status, body })
}

/// A string field as text, or the JSON of anything else.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What a prompt post granted, and what the user holds of `template` after it.
fn prompt_summary(answer: &Answer, template: &str) -> String {
    let body = &answer.body;
    if answer.status != 200 {
        return format!("{} {body}", answer.status);
    }
    let held = body["subscriptions"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["template_id"] == template))
        .map_or_else(|| "?".to_owned(), |row| row["one_time_grants"].to_string());
    format!(
        "{} granted {}, replayed {}; the user now holds {held} grant(s) of the template",
        answer.status, body["granted"], body["replayed"]
    )
}

/// The quota in a line (the template's grants, the legacy sends), then the
/// answer as it came.
fn quota_summary(answer: &Answer, template: &str) -> String {
    let body = &answer.body;
    let row = body["subscriptions"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["template_id"] == template));
    match row {
        Some(row) if answer.status == 200 => format!(
            "{} one-time grants of the template: {}, long-term: {}, decision: {}; form_id/prepay_id sends: {}\n    {body}",
            answer.status,
            row["one_time_grants"],
            row["long_term"],
            text(&row["decision"]),
            body["sends_available"],
        ),
        _ => format!("{} {body}", answer.status),
    }
}

fn step(out: &mut String, number: u32, title: &str, curl: &str, answer: &str) {
    let _ = writeln!(out, "\n# {number}. {title}\n{curl}; echo\n  → {answer}");
}
