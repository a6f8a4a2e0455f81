//! The operator console: its JSON endpoints under `/v1/admin/apps` (scope
//! admin) on both ledgers, the page's headers, and the page itself in a real
//! headless Chromium (`console_browser.rs`).

use chrono::Duration;
use reqwest::Method;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::*;

async fn admin_get(app: &TestApp, path: &str) -> Answer {
    app.call(Method::GET, path, Some(ADMIN_KEY), None).await
}

fn overview_path(appid: &str) -> String {
    format!("/v1/admin/apps/{appid}/overview")
}

/// The kind's figures in an overview.
fn kind<'a>(overview: &'a Value, name: &str) -> &'a Value {
    overview["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kind| kind["kind"] == name)
        .unwrap_or_else(|| panic!("no {name} in {overview}"))
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_counts_who_the_app_can_reach(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    // The first look reads the figures; later looks read the worker's
    // snapshot, however the ledger changed since.
    let first = admin_get(&app, &overview_path(APPID)).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["users_reachable"], 0);
    assert_eq!(kind(&first.body, "form_id")["credentials"], 0);

    app.collect_form_id("o-fresh").await;
    // Collected six and a half days ago: a form_id lives seven.
    let old = app.fake.mint_form_id(APPID, "o-old");
    let collected_at = app.now_ms() - Duration::hours(156).num_milliseconds();
    app.post_one("o-old", "form_id", &old, Some(collected_at))
        .await;
    app.collect_prepay_id("o-payer").await;
    let template = app
        .fake
        .add_subscribe_template(APPID, 401, &[1, 2])
        .expect("the fake adds the template");
    app.accept_prompt("o-fan", &template, "prompt-1").await;
    app.accept_prompt("o-fan", &template, "prompt-2").await;
    // One of the prepay_id's three sends is spent.
    assert_eq!(app.notify("o-payer").await.status, 200);

    let stale = admin_get(&app, &overview_path(APPID)).await;
    assert_eq!(stale.body["users_reachable"], 0, "the snapshot is kept");
    app.stats.run_once().await.expect("the stats worker runs");
    let overview = admin_get(&app, &overview_path(APPID)).await.body;
    assert_eq!(overview["appid"], APPID);
    assert_eq!(overview["users_reachable"], 4, "{overview}");
    let form_ids = kind(&overview, "form_id");
    assert_eq!(form_ids["credentials"], 2, "{overview}");
    assert_eq!(form_ids["sends"], 2);
    assert_eq!(form_ids["users"], 2);
    assert_eq!(form_ids["expiring_24h"], 1);
    let prepay = kind(&overview, "prepay_id");
    assert_eq!(
        (&prepay["credentials"], &prepay["sends"]),
        (&json!(1), &json!(2))
    );
    assert_eq!(
        overview["templates"],
        json!([{"template_id": template, "grants": 2, "users_reachable": 1,
            "long_term_subscribers": 0, "expiring_24h": 0}])
    );
    assert_eq!(
        overview["expiring_24h"],
        json!({"credentials": 1, "grants": 0})
    );

    // A day later the old form_id has expired and reaches no one.
    app.advance(Duration::hours(13));
    app.stats.run_once().await.unwrap();
    let later = admin_get(&app, &overview_path(APPID)).await.body;
    assert_eq!(later["users_reachable"], 3, "{later}");
    assert_eq!(kind(&later, "form_id")["credentials"], 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_routes_refuse_what_an_admin_key_would_not_allow(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    for path in [
        overview_path(APPID),
        format!("/v1/admin/apps/{APPID}/messages"),
        format!("/v1/admin/apps/{APPID}/failures"),
        format!("/v1/admin/apps/{APPID}/token"),
        "/v1/admin/apps".to_owned(),
    ] {
        let none = app.call(Method::GET, &path, None, None).await;
        assert_eq!(none.status, 401, "{path}");
        assert_eq!(none.body["error"]["code"], "missing_api_key");
        let wrong = app.call(Method::GET, &path, Some("wrong-key"), None).await;
        assert_eq!(wrong.status, 401, "{path}");
        assert_eq!(wrong.body["error"]["code"], "invalid_api_key");
        let send = app.call(Method::GET, &path, Some(SEND_KEY), None).await;
        assert_eq!(send.status, 403, "{path}");
        assert_eq!(send.body["error"]["code"], "forbidden");
    }
    let unknown = admin_get(&app, &overview_path("wxunknown0000001")).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body["error"]["code"], "unknown_app");

    // An admin key of one app sees that app alone.
    let created = app
        .call(
            Method::POST,
            "/v1/admin/keys",
            Some(ADMIN_KEY),
            Some(json!({"name": "ops-one", "apps": [APPID], "scopes": ["admin"]})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let key = created.body["key"].as_str().unwrap();
    let all = admin_get(&app, "/v1/admin/apps").await;
    assert_eq!(
        all.body,
        json!({"apps": [{"appid": APPID}, {"appid": OTHER_APPID}]})
    );
    let own = app
        .call(Method::GET, "/v1/admin/apps", Some(key), None)
        .await;
    assert_eq!(own.body, json!({"apps": [{"appid": APPID}]}));
    let other = app
        .call(Method::GET, &overview_path(OTHER_APPID), Some(key), None)
        .await;
    assert_eq!(other.status, 403);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_listed_newest_first_searched_and_paged(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let mut sent = Vec::new();
    for openid in ["o-a", "o-b", "o-a", "o-nobody"] {
        if openid != "o-nobody" {
            app.collect_form_id(openid).await;
        }
        let answer = app.notify(openid).await;
        sent.push(answer.body["id"].as_str().unwrap().to_owned());
        app.advance(Duration::seconds(1));
    }
    let messages = format!("/v1/admin/apps/{APPID}/messages");
    let ids = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| message["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let newest: Vec<String> = sent.iter().rev().cloned().collect();

    let all = admin_get(&app, &messages).await;
    assert_eq!(all.status, 200, "{:?}", all.body);
    assert_eq!(ids(&all.body), newest);
    assert!(all.body.get("next_before").is_none());
    let failed = &all.body["messages"][0];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "no_credential");
    let delivered = &all.body["messages"][1];
    assert_eq!(delivered["status"], "sent");
    assert_eq!(delivered["attempts"][0]["outcome"], "sent");
    assert_eq!(delivered["attempts"][0]["errcode"], 0);
    assert_eq!(delivered["attempts"][0]["credential_kind"], "form_id");

    // Pages of two, each continuing where the last ended.
    let first = admin_get(&app, &format!("{messages}?limit=2")).await.body;
    assert_eq!(ids(&first), newest[..2]);
    let before = first["next_before"].as_str().unwrap();
    let second = admin_get(&app, &format!("{messages}?limit=2&before={before}"))
        .await
        .body;
    assert_eq!(ids(&second), newest[2..]);

    let user = admin_get(&app, &format!("{messages}?openid=o-a"))
        .await
        .body;
    assert_eq!(ids(&user), vec![sent[2].clone(), sent[0].clone()]);
    let one = admin_get(&app, &format!("{messages}?message_id={}", sent[1]))
        .await
        .body;
    assert_eq!(ids(&one), vec![sent[1].clone()]);
    let not_theirs = admin_get(
        &app,
        &format!("{messages}?message_id={}&openid=o-a", sent[1]),
    )
    .await;
    assert_eq!(ids(&not_theirs.body), Vec::<String>::new());
    let unknown = admin_get(
        &app,
        &format!("{messages}?message_id=00000000-0000-4000-8000-000000000000"),
    )
    .await;
    assert_eq!((unknown.status, ids(&unknown.body).len()), (200, 0));

    for (query, status, code) in [
        ("limit=0", 422, "invalid_paging"),
        ("limit=101", 422, "invalid_paging"),
        ("openid=has%20space", 422, "invalid_openid"),
        ("before=not-a-message", 422, "invalid_cursor"),
        ("colour=blue", 400, "invalid_query"),
        ("limit=two", 400, "invalid_query"),
    ] {
        let answer = admin_get(&app, &format!("{messages}?{query}")).await;
        assert_eq!(answer.status, status, "{query}: {:?}", answer.body);
        assert_eq!(answer.body["error"]["code"], code, "{query}");
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_hour_and_errcode(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let failures = format!("/v1/admin/apps/{APPID}/failures");
    let empty = admin_get(&app, &failures).await;
    assert_eq!(empty.status, 200, "{:?}", empty.body);
    assert_eq!(empty.body["total"], 0);
    assert_eq!(empty.body["hours"].as_array().unwrap().len(), 24);

    assert_eq!(app.notify("o-none").await.body["status"], "failed");
    app.advance(Duration::hours(3));
    assert_eq!(app.notify("o-none").await.body["status"], "failed");
    app.notify("o-none-either").await;
    app.advance(Duration::minutes(30));

    let body = admin_get(&app, &failures).await.body;
    assert_eq!(body["total"], 3, "{body}");
    assert_eq!(
        body["by_code"],
        json!([{"code": "no_credential", "error_code": "no_credential", "messages": 3}])
    );
    let hours = body["hours"].as_array().unwrap();
    let totals: Vec<i64> = hours
        .iter()
        .map(|hour| hour["total"].as_i64().unwrap())
        .collect();
    assert_eq!(totals.iter().sum::<i64>(), 3);
    assert_eq!(totals[23], 2, "{totals:?}");
    assert_eq!(totals[20], 1, "{totals:?}");
    assert_eq!(hours[23]["failures"][0]["code"], "no_credential");

    // A failure older than a day is out of the window.
    app.advance(Duration::hours(21));
    let later = admin_get(&app, &failures).await.body;
    assert_eq!(later["total"], 2, "the first failure left the window");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_status_tells_expiry_and_refresh_but_never_the_token(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let path = format!("/v1/admin/apps/{APPID}/token");
    let before = admin_get(&app, &path).await;
    assert_eq!(before.status, 200, "{:?}", before.body);
    assert_eq!(before.body["has_token"], false);
    assert_eq!(before.body["expires_in"], Value::Null);

    let token = app.access_token().await;
    assert_eq!(token.status, 200, "{:?}", token.body);
    let secret = token.body["access_token"].as_str().unwrap().to_owned();
    let status = app
        .client
        .get(app.url(&path))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let text = status.text().await.unwrap();
    assert!(!text.contains(&secret), "the token leaked: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["has_token"], true);
    let expires_in = body["expires_in"].as_i64().unwrap();
    assert!(
        (6_000..=7_200).contains(&expires_in),
        "expires in {expires_in} s"
    );
    assert!(body["refreshed_at"].is_string(), "{body}");
    assert_eq!(
        body["refresh_lease"],
        Value::Null,
        "the lease was given back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_a_strict_content_security_policy() {
    let app = spawn_app(Backend::Sqlite).await;
    let page = app.client.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert!(page.headers().get("set-cookie").is_none());
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script src="/admin/console.js" defer></script>"#));
    assert_eq!(html.matches("<script").count(), 1, "no inline script");
    for handler in ["onclick", "onload", "onsubmit", "onerror", "javascript:"] {
        assert!(
            !html.contains(handler),
            "no inline event handler: {handler}"
        );
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );

    let script = app
        .client
        .get(app.url("/admin/console.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let script = script.text().await.unwrap();
    assert!(!script.contains("innerHTML") && !script.contains("outerHTML"));
    assert!(!script.contains("document.cookie"));
    assert!(script.contains("sessionStorage"));
    let style = app
        .client
        .get(app.url("/admin/console.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(style.status(), 200);
}

/// The Python with Selenium installed: a venv under the target directory,
/// made (and Selenium installed from PyPI) when missing.
fn selenium_python() -> std::path::PathBuf {
    crate::helpers::pypi_python("console-venv", "selenium", "selenium")
}

/// Log in with a wrong key and see the error; with the admin key, pick the
/// app, see a message sent through the API with its attempt, look a user
/// up, see the failures chart, and read it all at a phone's width. Each
/// step leaves a screenshot in `<target>/console-screenshots/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(binary).exists(),
            "{binary} is missing: the browser test needs Debian's chromium and \
             chromium-driver (apt-get install -y chromium chromium-driver; .ci/run does)"
        );
    }
    let app = spawn_app(Backend::Sqlite).await;
    app.collect_form_id("o-browser").await;
    // A failure for the chart.
    assert_eq!(app.notify("o-unreachable").await.body["status"], "failed");
    let screenshots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("console-screenshots");
    let config = json!({
        "base": app.address,
        "appid": APPID,
        "admin_key": ADMIN_KEY,
        "send_key": SEND_KEY,
        "openid": "o-browser",
        "template": TEMPLATE,
        "screenshots": screenshots,
    });
    let python = selenium_python();
    let driver = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/console/console_driver.py"
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(driver)
            .arg(config.to_string())
            .output()
    })
    .await
    .unwrap()
    .expect("running the console driver");
    assert!(
        output.status.success(),
        "the console driver failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let shots = std::fs::read_dir(&screenshots)
        .expect("the screenshots' directory")
        .count();
    assert!(
        shots >= 7,
        "{shots} screenshots in {}",
        screenshots.display()
    );
}

/// The stats worker's reads stay inside indexes on SQLite (the version the
/// gateway links): each walks one app's entries of a partial index that
/// holds every column it reads, never the table and never another app's rows.
#[tokio::test]
async fn the_stats_reads_are_index_only_on_sqlite() {
    use formid_gateway::storage::stats::{LIVE_COUNTS, TEMPLATE_REACH, USERS_REACHABLE};
    use sqlx::Row;
    let app = spawn_app(Backend::Sqlite).await;
    let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
    for (name, statement, index) in [
        ("LIVE_COUNTS", LIVE_COUNTS, "credentials_live_by_kind"),
        ("TEMPLATE_REACH", TEMPLATE_REACH, "credentials_live_by_kind"),
        ("USERS_REACHABLE", USERS_REACHABLE, "credentials_claimable"),
    ] {
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {statement}"))
            .bind(APPID)
            .bind(0_i64)
            .bind(0_i64)
            .fetch_all(&pool)
            .await
            .unwrap();
        let plan: Vec<String> = rows.iter().map(|row| row.get::<String, _>(3)).collect();
        let plan = plan.join("\n");
        assert!(
            plan.contains(&format!(
                "SEARCH credentials USING COVERING INDEX {index} (appid=?"
            )),
            "{name}:\n{plan}"
        );
        assert!(!plan.contains("SCAN credentials"), "{name}:\n{plan}");
        if statement.contains("FROM subscriptions") {
            assert!(
                plan.contains("USING COVERING INDEX subscriptions_long_term (appid=?"),
                "{name}:\n{plan}"
            );
        }
    }
}
