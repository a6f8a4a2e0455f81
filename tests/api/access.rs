//! Health, API keys and scopes, unknown apps and routes.

use serde_json::json;

use rstest::rstest;

use crate::helpers::*;

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_need_no_key(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let health = app.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, 200);
    let ready = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "ready");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_for_app_and_scope(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let credentials = format!("/v1/apps/{APPID}/credentials");
    let item = json!({"openid": "o-a", "kind": "form_id", "value": "v-1"});
    let cases: Vec<(Option<&str>, u16, &str)> = vec![
        (None, 401, "missing_api_key"),
        (Some("not-a-key-at-all-000000"), 401, "invalid_api_key"),
        (Some(SEND_KEY), 403, "forbidden"),
        (Some(TOKEN_KEY), 403, "forbidden"),
        (Some(OTHER_APP_KEY), 403, "forbidden"),
    ];
    for (key, status, code) in cases {
        let answer = app
            .call(reqwest::Method::POST, &credentials, key, Some(item.clone()))
            .await;
        assert_eq!(answer.status, status, "{key:?}");
        assert_eq!(answer.body["error"]["code"], code, "{key:?}");
    }
    let unauthorized = app
        .call(
            reqwest::Method::POST,
            &credentials,
            None,
            Some(item.clone()),
        )
        .await;
    assert_eq!(unauthorized.headers["www-authenticate"], "Bearer");
    assert_eq!(
        app.call(
            reqwest::Method::POST,
            &credentials,
            Some(COLLECT_KEY),
            Some(item.clone())
        )
        .await
        .status,
        200
    );
    assert_eq!(
        app.call(
            reqwest::Method::POST,
            &credentials,
            Some(ADMIN_KEY),
            Some(json!({"openid": "o-a", "kind": "form_id", "value": "v-2"}))
        )
        .await
        .status,
        200
    );
    let token = format!("/v1/apps/{APPID}/access_token");
    assert_eq!(
        app.call(reqwest::Method::GET, &token, Some(SEND_KEY), None)
            .await
            .status,
        403
    );
    assert_eq!(
        app.call(reqwest::Method::GET, &token, Some(COLLECT_KEY), None)
            .await
            .status,
        403
    );
    let messages = format!("/v1/apps/{APPID}/messages");
    let send = json!({"touser": "o-a", "template_id": TEMPLATE});
    assert_eq!(
        app.call(
            reqwest::Method::POST,
            &messages,
            Some(COLLECT_KEY),
            Some(send)
        )
        .await
        .status,
        403
    );
    assert!(app.fake.sends().is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_app_is_404(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let answer = app
        .call(
            reqwest::Method::POST,
            "/v1/apps/wxnotconfigured0001/credentials",
            Some(ADMIN_KEY),
            Some(json!({"openid": "o", "kind": "form_id", "value": "v"})),
        )
        .await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body["error"]["code"], "unknown_app");
    let route = app
        .call(reqwest::Method::GET, "/v2/anything", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(route.status, 404);
    assert_eq!(route.body["error"]["code"], "not_found");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_are_400_and_oversized_ones_413(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .post(app.url(&format!("/v1/apps/{APPID}/credentials")))
        .bearer_auth(COLLECT_KEY)
        .header("content-type", "application/json")
        .body("{\"openid\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
    let huge = "x".repeat(2 * 1024 * 1024);
    let response = app
        .client
        .post(app.url(&format!("/v1/apps/{APPID}/credentials")))
        .bearer_auth(COLLECT_KEY)
        .header("content-type", "application/json")
        .body(format!("{{\"openid\": \"{huge}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_too_large");
    assert_eq!(app.sends_available("o-a").await, 0);
    assert_eq!(
        app.call(reqwest::Method::GET, "/healthz", None, None)
            .await
            .status,
        200
    );
}

// RFC 7235: the auth scheme is case-insensitive. RFC 9110: a GET route
// answers HEAD, and a method a known route does not serve is 405 with Allow.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_schemes_and_content_types_follow_http(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let quota = app.url(&format!("/v1/apps/{APPID}/users/o-h/quota"));
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let response = app
            .client
            .get(&quota)
            .header("authorization", format!("{scheme} {SEND_KEY}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
    for path in [
        "/healthz".to_owned(),
        "/readyz".to_owned(),
        format!("/v1/apps/{APPID}/users/o-h/quota"),
        format!("/v1/apps/{APPID}/access_token"),
    ] {
        let response = app
            .client
            .head(app.url(&path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "HEAD {path}");
        assert!(response.bytes().await.unwrap().is_empty());
    }
    let cases = [
        (
            reqwest::Method::GET,
            format!("/v1/apps/{APPID}/credentials"),
            "POST",
        ),
        (
            reqwest::Method::DELETE,
            format!("/v1/apps/{APPID}/messages"),
            "POST",
        ),
        (
            reqwest::Method::PUT,
            format!("/v1/apps/{APPID}/access_token"),
            "GET, HEAD",
        ),
        (reqwest::Method::POST, "/healthz".to_owned(), "GET, HEAD"),
    ];
    for (method, path, allowed) in cases {
        let answer = app.call(method.clone(), &path, Some(ADMIN_KEY), None).await;
        assert_eq!(answer.status, 405, "{method} {path}");
        assert_eq!(answer.body["error"]["code"], "method_not_allowed");
        let allow = answer.headers["allow"].to_str().unwrap();
        let mut allow: Vec<&str> = allow.split(',').map(str::trim).collect();
        allow.sort_unstable();
        assert_eq!(allow.join(", "), allowed, "{method} {path}");
    }
    // application/json with a charset is JSON.
    let response = app
        .client
        .post(app.url(&format!("/v1/apps/{APPID}/credentials")))
        .bearer_auth(COLLECT_KEY)
        .header("content-type", "application/json; charset=UTF-8")
        .body(r#"{"openid":"o-h","kind":"form_id","value":"charset-ok-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.sends_available("o-h").await, 1);
}
