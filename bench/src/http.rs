//! HTTP work: minting credentials on the fake, posting them to the gateway,
//! and the request bodies of each measured operation.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::load::Outcome;

/// The bench's API key (collect and send on every app).
pub const API_KEY: &str = "bench-key-0123456789abcdef";
pub const SECRET: &str = "benchsecret";
pub const TEMPLATE: &str = "BENCH_TEMPLATE";

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("building the HTTP client")
}

/// Mints `per_user` prepay_ids for each user on the fake, concurrently.
/// Returns (openid, prepay_id) pairs, user-major.
pub async fn mint_prepay_ids(
    http: &reqwest::Client,
    fake: &str,
    appid: &str,
    users: &[String],
    per_user: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let slots = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(users.len());
    for user in users {
        let (http, slots) = (http.clone(), slots.clone());
        let url = format!("{fake}/fake/apps/{appid}/users/{user}/prepay_id");
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = slots.acquire_owned().await?;
            let mut minted = Vec::with_capacity(per_user);
            for _ in 0..per_user {
                let reply: Value = http.post(&url).send().await?.json().await?;
                let value = reply["prepay_id"]
                    .as_str()
                    .context("the fake did not mint a prepay_id")?;
                minted.push((user.clone(), value.to_owned()));
            }
            anyhow::Ok(minted)
        }));
    }
    let mut all = Vec::with_capacity(users.len() * per_user);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// Posts credentials to the gateway in batches of 500, a few batches at once.
pub async fn post_credentials(
    http: &reqwest::Client,
    gateway: &str,
    appid: &str,
    kind: &str,
    items: &[(String, String)],
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(4));
    let mut tasks = Vec::new();
    for chunk in items.chunks(500) {
        let body = json!({
            "credentials": chunk
                .iter()
                .map(|(openid, value)| json!({"openid": openid, "kind": kind, "value": value}))
                .collect::<Vec<_>>()
        });
        let (http, slots) = (http.clone(), slots.clone());
        let url = format!("{gateway}/v1/apps/{appid}/credentials");
        let expected = chunk.len() as u64;
        tasks.push(tokio::spawn(async move {
            let _permit = slots.acquire_owned().await?;
            let reply = http
                .post(&url)
                .bearer_auth(API_KEY)
                .json(&body)
                .send()
                .await?;
            let status = reply.status();
            let reply: Value = reply.json().await?;
            if !status.is_success() || reply["accepted"].as_u64() != Some(expected) {
                bail!("collection answered {status}: {reply}");
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Mints and collects enough prepay_ids for `sends` sends spread over at most
/// `max_users` users named `{prefix}{n}`; returns the users.
pub async fn seed_users(
    http: &reqwest::Client,
    fake: &str,
    gateway: &str,
    appid: &str,
    prefix: &str,
    sends: u64,
    max_users: usize,
) -> anyhow::Result<Vec<String>> {
    let prepay_ids = sends.div_ceil(3) as usize;
    let users_n = max_users.min(prepay_ids).max(1);
    let per_user = prepay_ids.div_ceil(users_n);
    let users: Vec<String> = (0..users_n).map(|n| format!("{prefix}{n}")).collect();
    let minted = mint_prepay_ids(http, fake, appid, &users, per_user).await?;
    post_credentials(http, gateway, appid, "prepay_id", &minted).await?;
    Ok(users)
}

/// The two send channels the bench measures side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Channel {
    /// Legacy template messages (`wxopen/template/send`), paid by prepay_ids.
    Template,
    /// Subscribe messages (`subscribe/send`), paid by one-time grants.
    Subscribe,
}

impl Channel {
    /// The name in results files and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Template => "template",
            Channel::Subscribe => "subscribe",
        }
    }
}

/// The subscribe template of the bench: the fake's public title 401
/// (订单发货提醒) with keywords 1 and 2, i.e. placeholders `thing1` and
/// `character_string2`.
pub const SUBSCRIBE_TID: u32 = 401;
/// The keyword ids of [`SUBSCRIBE_TID`] the template is made of.
pub const SUBSCRIBE_KIDS: [u32; 2] = [1, 2];

/// What a send asks for: a template message, or a subscribe message of one
/// template (the app's template id, as WeChat gave it).
#[derive(Debug, Clone)]
pub enum SendBody {
    /// `TEMPLATE` with keyword1 and keyword2.
    Template,
    /// The subscribe template `template_id`, with data that fits it.
    Subscribe { template_id: String },
}

impl SendBody {
    /// The request body for a message to `touser`; `form_id` only for a
    /// template message sent straight to the fake.
    pub fn body(&self, touser: &str, form_id: Option<&str>) -> Value {
        match self {
            SendBody::Template => message(touser, form_id),
            SendBody::Subscribe { template_id } => json!({
                "touser": touser,
                "template_id": template_id,
                "page": "pages/order/detail?id=1",
                "data": {"thing1": {"value": "Order 1024"},
                         "character_string2": {"value": "SN20240501001"}},
            }),
        }
    }
}

/// A request body for a template message to `touser`.
pub fn message(touser: &str, form_id: Option<&str>) -> Value {
    let mut body = json!({
        "touser": touser,
        "template_id": TEMPLATE,
        "page": "pages/order/detail?id=1",
        "data": {"keyword1": {"value": "Order 1024"}, "keyword2": {"value": "shipped"}},
    });
    if let Some(form_id) = form_id {
        body["form_id"] = form_id.into();
    }
    body
}

/// One gateway send, round-robin over the users.
pub async fn gateway_send(
    http: reqwest::Client,
    url: Arc<String>,
    users: Arc<Vec<String>>,
    send: Arc<SendBody>,
    n: u64,
) -> Outcome {
    let user = &users[(n % users.len() as u64) as usize];
    let reply = match http
        .post(url.as_str())
        .bearer_auth(API_KEY)
        .json(&send.body(user, None))
        .send()
        .await
    {
        Ok(reply) => reply,
        Err(error) => return Outcome::Fail(format!("transport: {error}")),
    };
    let status = reply.status().as_u16();
    let body = reply.bytes().await.unwrap_or_default();
    match status {
        200 => Outcome::Ok(1),
        409 if String::from_utf8_lossy(&body).contains("no_credential") => Outcome::Exhausted,
        _ => Outcome::Fail(format!(
            "{status} {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(160)
                .collect::<String>()
        )),
    }
}

/// One template send straight to the fake, with the next credential of the pool.
pub async fn fake_send(
    http: reqwest::Client,
    url: Arc<String>,
    pool: Arc<Vec<(String, String)>>,
    n: u64,
) -> Outcome {
    // A prepay_id gives three sends.
    let Some((user, value)) = pool.get((n / 3) as usize) else {
        return Outcome::Exhausted;
    };
    let reply = match http
        .post(url.as_str())
        .json(&message(user, Some(value)))
        .send()
        .await
    {
        Ok(reply) => reply,
        Err(error) => return Outcome::Fail(format!("transport: {error}")),
    };
    match reply.json::<Value>().await {
        Ok(body) if body["errcode"].as_i64() == Some(0) => Outcome::Ok(1),
        Ok(body) => Outcome::Fail(format!("errcode {}", body["errcode"])),
        Err(error) => Outcome::Fail(format!("body: {error}")),
    }
}

/// One subscribe send straight to the fake, for the next user of the pool
/// (one entry per grant the fake holds).
pub async fn fake_subscribe_send(
    http: reqwest::Client,
    url: Arc<String>,
    pool: Arc<Vec<String>>,
    send: Arc<SendBody>,
    n: u64,
) -> Outcome {
    let Some(user) = pool.get(n as usize) else {
        return Outcome::Exhausted;
    };
    let reply = match http
        .post(url.as_str())
        .json(&send.body(user, None))
        .send()
        .await
    {
        Ok(reply) => reply,
        Err(error) => return Outcome::Fail(format!("transport: {error}")),
    };
    match reply.json::<Value>().await {
        Ok(body) if body["errcode"].as_i64() == Some(0) => Outcome::Ok(1),
        Ok(body) => Outcome::Fail(format!("errcode {}", body["errcode"])),
        Err(error) => Outcome::Fail(format!("body: {error}")),
    }
}

/// Adds the bench's subscribe template to an app through the gateway's
/// admin endpoint (the gateway calls the fake's `addtemplate` and stores it
/// in its catalogue, so sends of it go out as subscribe messages, checked
/// against it). Returns the template id.
pub async fn add_template_via_gateway(
    http: &reqwest::Client,
    gateway: &str,
    appid: &str,
) -> anyhow::Result<String> {
    let reply = http
        .post(format!("{gateway}/v1/apps/{appid}/templates"))
        .bearer_auth(API_KEY)
        .json(&json!({"channel": "subscribe", "tid": SUBSCRIBE_TID,
                      "keyword_ids": SUBSCRIBE_KIDS, "scene_desc": "bench"}))
        .send()
        .await?;
    let status = reply.status();
    let body: Value = reply.json().await?;
    body["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("adding the subscribe template answered {status}: {body}"))
}

/// Adds the bench's subscribe template to an app at the fake directly
/// (`wxaapi/newtmpl/addtemplate`; adding it again answers 200022 with the
/// same id). Returns the template id.
pub async fn add_template_at_fake(
    http: &reqwest::Client,
    fake: &str,
    token: &str,
) -> anyhow::Result<String> {
    let mut form: Vec<(&str, String)> = vec![("tid", SUBSCRIBE_TID.to_string())];
    form.extend(
        SUBSCRIBE_KIDS
            .iter()
            .map(|kid| ("kidList", kid.to_string())),
    );
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let reply: Value = http
        .post(format!(
            "{fake}/wxaapi/newtmpl/addtemplate?access_token={token}"
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?
        .json()
        .await?;
    reply["priTmplId"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the fake did not add the template: {reply}"))
}

/// Each user accepts `template_id` `per_user` times at the fake (its HTTP
/// control, as a user answering prompts), concurrently.
pub async fn grant_at_fake(
    http: &reqwest::Client,
    fake: &str,
    appid: &str,
    template_id: &str,
    users: &[String],
    per_user: usize,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(users.len());
    for user in users {
        let (http, slots) = (http.clone(), slots.clone());
        let url = format!("{fake}/fake/apps/{appid}/users/{user}/grants/{template_id}/accept");
        tasks.push(tokio::spawn(async move {
            let _permit = slots.acquire_owned().await?;
            for _ in 0..per_user {
                let reply = http.post(&url).send().await?;
                if !reply.status().is_success() {
                    bail!("the fake refused a grant: {}", reply.status());
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The fake's access token for an app.
pub async fn fake_token(http: &reqwest::Client, fake: &str, appid: &str) -> anyhow::Result<String> {
    let reply: Value = http
        .get(format!("{fake}/cgi-bin/token"))
        .query(&[
            ("grant_type", "client_credential"),
            ("appid", appid),
            ("secret", SECRET),
        ])
        .send()
        .await?
        .json()
        .await?;
    reply["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no token from the fake: {reply}"))
}

/// One collection request of `batch` fresh form_ids for users `{prefix}{n}`.
pub async fn collect(
    http: reqwest::Client,
    url: Arc<String>,
    prefix: Arc<String>,
    batch: usize,
    n: u64,
) -> Outcome {
    let item = |i: u64| {
        let value = crate::db::random_form_id();
        json!({"openid": format!("{prefix}{}", i % 5_000), "kind": "form_id", "value": value})
    };
    let body = if batch == 1 {
        item(n)
    } else {
        json!({"credentials": (0..batch as u64).map(|i| item(n * batch as u64 + i)).collect::<Vec<_>>()})
    };
    let reply = match http
        .post(url.as_str())
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
    {
        Ok(reply) => reply,
        Err(error) => return Outcome::Fail(format!("transport: {error}")),
    };
    let status = reply.status().as_u16();
    match reply.json::<Value>().await {
        Ok(body) if status == 200 || status == 201 => {
            Outcome::Ok(body["accepted"].as_u64().unwrap_or(0))
        }
        Ok(body) => Outcome::Fail(format!("{status} {body}")),
        Err(error) => Outcome::Fail(format!("{status} body: {error}")),
    }
}
