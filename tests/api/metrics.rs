//! `/metrics`: served on a listener of its own when `metrics.listen` is set,
//! never on the API's; the counters move with the work; the whole page reads
//! with Prometheus's own text parser (`prometheus_client`, from PyPI).
//!
//! The recorder is one per process and the suite's tests run side by side,
//! so each test here serves an app of its own (a fresh AppID) and reads the
//! series of that app, or compares a shared series before and after.

use reqwest::Method;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::{pypi_python, spawn_app_with, Backend, TestApp, ADMIN_KEY, TEMPLATE};

/// The pinned parser: `prometheus_client.parser.text_string_to_metric_families`.
const PARSER_REQUIREMENT: &str = "prometheus_client==0.26.0";

/// A gateway with `/metrics` on, serving an app no other test uses.
struct Metered {
    app: TestApp,
    appid: String,
    key: String,
}

async fn spawn_metered(backend: Backend) -> Metered {
    let appid = format!("wxm{}", &uuid::Uuid::new_v4().simple().to_string()[..13]);
    let key = format!("metered-key-{}", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with(backend, |settings| {
        settings["metrics"] = json!({"listen": "127.0.0.1:0"});
        settings["webhooks"] = json!({"allow_private_targets": true});
        settings["apps"][&appid] =
            json!({"secret": "secret-of-the-metered-app", "push_token": "meteredpush"});
        settings["api_keys"]["metered"] =
            json!({"key": key, "apps": [appid], "scopes": ["collect", "send", "token"]});
    })
    .await;
    app.fake.register_app(&appid, "secret-of-the-metered-app");
    app.fake.register_template(&appid, TEMPLATE);
    Metered { app, appid, key }
}

impl Metered {
    async fn scrape(&self) -> String {
        let address = self.app.metrics_address.as_ref().expect("metrics are on");
        let answer = self.app.client.get(address).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        let kind = answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        answer.text().await.unwrap()
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let path = format!("/v1/apps/{}{path}", self.appid);
        self.app
            .call(method, &path, Some(&self.key), body)
            .await
            .body
    }

    /// A form_id minted for `openid` and posted.
    async fn collect(&self, openid: &str) {
        let value = self.app.fake.mint_form_id(&self.appid, openid);
        let body = json!({"openid": openid, "kind": "form_id", "value": value});
        let posted = self.call(Method::POST, "/credentials", Some(body)).await;
        assert_eq!(posted["accepted"], 1, "{posted}");
    }

    async fn send(&self, openid: &str, extra: Value) -> Value {
        let mut body = json!({"touser": openid, "template_id": TEMPLATE,
                              "data": {"keyword1": {"value": "Order 1"}}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.call(Method::POST, "/messages", Some(body)).await
    }
}

/// The labels of a sample line (`name{a="x",b="y"} 1`), in order.
fn labels_of(section: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = section;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
                '"' => {
                    end = at + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((name.trim_start_matches(',').to_owned(), value));
        rest = &after[end..];
    }
    labels
}

/// The sum of the samples of `name` that carry every label of `wanted`.
fn sum(page: &str, name: &str, wanted: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels_of(labels);
            let matches = metric == name
                && wanted.iter().all(|(key, value)| {
                    labels
                        .iter()
                        .any(|(have, held)| have == key && held == value)
                });
            matches.then(|| value.parse::<f64>().expect("a sample's value"))
        })
        .sum()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_move_with_a_send(#[case] backend: Backend) {
    let metered = spawn_metered(backend).await;
    let appid = metered.appid.as_str();
    let route = [
        ("route", "/v1/apps/{appid}/messages"),
        ("method", "POST"),
        ("status", "200"),
    ];
    let wechat_send = [("api", "cgi-bin/message/wxopen/template/send")];
    let before = metered.scrape().await;

    let openid = format!("o-metrics-{}", uuid::Uuid::new_v4().simple());
    metered.collect(&openid).await;
    let sent = metered.send(&openid, json!({})).await;
    assert_eq!(sent["status"], "sent", "{sent}");
    // Nothing left: failed at once, or kept waiting.
    let failed = metered.send(&openid, json!({})).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let waiting = metered.send(&openid, json!({"wait_seconds": 600})).await;
    assert_eq!(waiting["status"], "waiting", "{waiting}");
    metered
        .app
        .backlog
        .as_ref()
        .unwrap()
        .run_once()
        .await
        .unwrap();
    let after = metered.scrape().await;

    let app = ("app", appid);
    let sends = |page: &str, outcome: &str, errcode: &str| {
        let labels = [
            app,
            ("channel", "template"),
            ("outcome", outcome),
            ("errcode", errcode),
        ];
        sum(page, "formid_sends_total", &labels)
    };
    assert_eq!(sends(&before, "sent", "0"), 0.0, "a fresh app");
    assert_eq!(sends(&after, "sent", "0"), 1.0, "{after}");
    assert_eq!(sends(&after, "failed", "none"), 1.0, "{after}");
    assert_eq!(sends(&after, "waiting", "none"), 1.0, "{after}");
    let attempts = [app, ("outcome", "sent"), ("errcode", "0")];
    assert_eq!(sum(&after, "formid_send_attempts_total", &attempts), 1.0);
    let claimed = [app, ("result", "claimed")];
    assert_eq!(sum(&after, "formid_claims_total", &claimed), 1.0);
    let none_left = [app, ("result", "none_left")];
    assert!(
        sum(&after, "formid_claims_total", &none_left) >= 2.0,
        "{after}"
    );
    let issued = [app, ("result", "issued")];
    assert_eq!(sum(&after, "formid_token_refreshes_total", &issued), 1.0);
    let expires_in = sum(&after, "formid_token_expires_in_seconds", &[app]);
    assert!(expires_in > 6_000.0 && expires_in <= 7_200.0, "{after}");
    let waiting = [app, ("status", "waiting")];
    assert_eq!(sum(&after, "formid_messages", &waiting), 1.0, "{after}");
    assert_eq!(
        sum(&after, "formid_messages", &[app, ("status", "pending")]),
        0.0
    );
    // Shared with the tests beside this one: at least this test's own.
    let requests = |page: &str| sum(page, "formid_http_requests_total", &route);
    assert!(requests(&after) - requests(&before) >= 1.0, "{after}");
    let timed = |page: &str| sum(page, "formid_http_request_duration_seconds_count", &route);
    assert!(timed(&after) - timed(&before) >= 1.0, "{after}");
    let calls = |page: &str| {
        sum(
            page,
            "formid_wechat_call_duration_seconds_count",
            &wechat_send,
        )
    };
    assert!(calls(&after) - calls(&before) >= 1.0, "{after}");
    let batches = |page: &str| sum(page, "formid_group_commit_batch_size_count", &[]);
    assert!(batches(&after) - batches(&before) >= 1.0, "{after}");
    // Route templates, never paths: no user and no app id outside `app`.
    assert!(!after.contains(&openid), "{after}");
    assert!(!after.contains(&format!("/v1/apps/{appid}")), "{after}");

    // The API's listener does not serve it.
    let public = metered.app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(public.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_and_refused_pushes_show() {
    let metered = spawn_metered(Backend::Sqlite).await;
    let app = ("app", metered.appid.as_str());
    let openid = "o-breaker";
    metered.collect(openid).await;
    metered.call(Method::GET, "/access_token", None).await;
    // Five busy answers in a row open the circuit (reliability.rs has the
    // breaker's own test).
    metered
        .app
        .fake
        .push_send_faults(vec![fake_wechat::Fault::Errcode(-1); 5]);
    metered.send(openid, json!({})).await;
    let refused = metered.send(openid, json!({})).await;
    assert_eq!(
        refused["error"]["code"], "upstream_circuit_open",
        "{refused}"
    );
    let open = metered.scrape().await;
    assert_eq!(sum(&open, "formid_breaker_open", &[app]), 1.0, "{open}");
    let busy = [app, ("outcome", "busy"), ("errcode", "-1")];
    assert!(
        sum(&open, "formid_send_attempts_total", &busy) >= 3.0,
        "{open}"
    );
    metered.app.advance(chrono::Duration::seconds(11));
    let sent = metered.send(openid, json!({})).await;
    assert_eq!(sent["status"], "sent", "{sent}");
    let closed = metered.scrape().await;
    assert_eq!(sum(&closed, "formid_breaker_open", &[app]), 0.0, "{closed}");

    // A push whose signature is wrong: refused, counted by its reason.
    let timestamp = metered.app.now_ms() / 1_000;
    let refused = metered
        .app
        .client
        .post(metered.app.url(&format!(
            "/wechat/push/{}?signature=0000&timestamp={timestamp}&nonce=7",
            metered.appid
        )))
        .body("<xml><ToUserName>gh_x</ToUserName></xml>")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let after = metered.scrape().await;
    let reason = [app, ("reason", "bad_signature")];
    assert_eq!(
        sum(&after, "formid_push_refused_total", &reason),
        1.0,
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_are_counted_by_outcome() {
    let metered = spawn_metered(Backend::Sqlite).await;
    let app = ("app", metered.appid.as_str());
    // Nobody listens on port 1: each delivery is unreachable.
    let endpoint = metered
        .app
        .call(
            Method::POST,
            &format!("/v1/apps/{}/webhooks", metered.appid),
            Some(ADMIN_KEY),
            Some(json!({"url": "http://127.0.0.1:1/hooks", "event_types": ["message.sent"]})),
        )
        .await;
    assert_eq!(endpoint.status, 201, "{:?}", endpoint.body);
    metered.collect("o-hooked").await;
    let sent = metered.send("o-hooked", json!({})).await;
    assert_eq!(sent["status"], "sent", "{sent}");
    metered.app.webhook_delivery.run_once().await.unwrap();
    let page = metered.scrape().await;
    let unreachable = [app, ("outcome", "unreachable")];
    assert_eq!(
        sum(&page, "formid_webhook_deliveries_total", &unreachable),
        1.0,
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_recipients_are_counted_by_outcome() {
    let metered = spawn_metered(Backend::Sqlite).await;
    let app = ("app", metered.appid.as_str());
    metered.collect("o-holds-one").await;
    let created = metered
        .call(
            Method::POST,
            "/broadcasts",
            Some(
                json!({"template_id": TEMPLATE, "data": {"keyword1": {"value": "Sale"}},
                        "audience": {"recipients": [{"openid": "o-holds-one"},
                                                    {"openid": "o-holds-none"}]}}),
            ),
        )
        .await;
    let id = created["id"].as_str().expect("a broadcast").to_owned();
    for _ in 0..100 {
        if metered.app.broadcasts.run_once().await.unwrap() == 0 {
            let progress = metered
                .call(Method::GET, &format!("/broadcasts/{id}"), None)
                .await;
            if progress["finished_at"].is_string() {
                break;
            }
            metered.app.advance(chrono::Duration::seconds(1));
        }
    }
    let page = metered.scrape().await;
    let recipients = |outcome: &str| {
        let labels = [app, ("outcome", outcome)];
        sum(&page, "formid_broadcast_recipients_total", &labels)
    };
    assert_eq!(recipients("sent"), 1.0, "{page}");
    assert_eq!(recipients("no_credential"), 1.0, "{page}");
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = {"type": family.type, "samples": len(family.samples)}
print(json.dumps(families))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_page_reads_with_the_prometheus_parser() {
    let metered = spawn_metered(Backend::Sqlite).await;
    let openid = "o-parsed";
    metered.collect(openid).await;
    let sent = metered.send(openid, json!({})).await;
    assert_eq!(sent["status"], "sent", "{sent}");
    metered
        .app
        .backlog
        .as_ref()
        .unwrap()
        .run_once()
        .await
        .unwrap();
    let page = metered.scrape().await;

    let python = pypi_python("metrics-venv", PARSER_REQUIREMENT, "prometheus_client");
    let output = crate::helpers::run_python(&python, PARSE, page.as_bytes());
    assert!(
        output.status.success(),
        "the parser refused the page: {}\n{page}",
        String::from_utf8_lossy(&output.stderr)
    );
    let families: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The parser names a counter's family without `_total`.
    for (family, kind) in [
        ("formid_sends", "counter"),
        ("formid_send_attempts", "counter"),
        ("formid_claims", "counter"),
        ("formid_http_requests", "counter"),
        ("formid_http_request_duration_seconds", "histogram"),
        ("formid_wechat_call_duration_seconds", "histogram"),
        ("formid_group_commit_batch_size", "histogram"),
        ("formid_token_refreshes", "counter"),
        ("formid_token_expires_in_seconds", "gauge"),
        ("formid_messages", "gauge"),
    ] {
        assert_eq!(families[family]["type"], kind, "{family}: {families}");
        assert!(
            families[family]["samples"].as_u64().unwrap() > 0,
            "{family}"
        );
    }
}
