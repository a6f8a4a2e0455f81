//! API keys kept as data: `/v1/admin/keys` and `formid-gateway keys`;
//! shown once, stored as a hash, last use recorded, revoked on every
//! instance within `keys.cache_secs`.

use std::process::Command;

use chrono::Duration;
use reqwest::Method;
use rstest::rstest;
use serde_json::json;

use crate::helpers::*;

async fn create_key(app: &TestApp, name: &str, apps: &[&str], scopes: &[&str]) -> Answer {
    app.call(
        Method::POST,
        "/v1/admin/keys",
        Some(ADMIN_KEY),
        Some(json!({"name": name, "apps": apps, "scopes": scopes})),
    )
    .await
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_keys_are_created_listed_used_and_revoked(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create_key(&app, "orders", &[APPID], &["send"]).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let key = created.body["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("fgk_") && key.len() > 40, "{key}");
    assert_eq!(created.body["scopes"], json!(["send"]));
    let quota = format!("/v1/apps/{APPID}/users/o-k/quota");
    assert_eq!(
        app.call(Method::GET, &quota, Some(&key), None).await.status,
        200
    );
    let collect = app
        .call(
            Method::POST,
            &format!("/v1/apps/{APPID}/credentials"),
            Some(&key),
            Some(json!({"openid": "o-k", "kind": "form_id", "value": "v-k"})),
        )
        .await;
    assert_eq!(collect.status, 403, "{:?}", collect.body);
    let other_app = format!("/v1/apps/{OTHER_APPID}/users/o-k/quota");
    assert_eq!(
        app.call(Method::GET, &other_app, Some(&key), None)
            .await
            .status,
        403
    );

    let listed = app
        .call(Method::GET, "/v1/admin/keys", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let row = &listed.body["keys"][0];
    assert_eq!(row["name"], "orders");
    assert!(row["last_used_at"].is_string(), "{row}");
    assert!(row.get("key").is_none());
    assert!(
        !listed.body.to_string().contains(&key[4..]),
        "the key in a listing"
    );

    let refusals = [
        (
            create_key(&app, "orders", &[APPID], &["send"]).await,
            409,
            "key_name_taken",
        ),
        (
            create_key(&app, "bad", &[APPID], &["bogus"]).await,
            422,
            "invalid_key_request",
        ),
        (
            create_key(&app, "bad name", &[APPID], &["send"]).await,
            422,
            "invalid_key_request",
        ),
        (
            app.call(Method::GET, "/v1/admin/keys", Some(&key), None)
                .await,
            403,
            "forbidden",
        ),
        (
            app.call(Method::GET, "/v1/admin/keys", Some(COLLECT_KEY), None)
                .await,
            403,
            "forbidden",
        ),
    ];
    for (answer, status, code) in refusals {
        assert_eq!(answer.status, status, "{:?}", answer.body);
        assert_eq!(answer.body["error"]["code"], code, "{:?}", answer.body);
    }

    let revoked = app
        .call(
            Method::DELETE,
            "/v1/admin/keys/orders",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204, "{:?}", revoked.body);
    // This instance refuses it at once.
    let refused = app.call(Method::GET, &quota, Some(&key), None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body["error"]["code"], "invalid_api_key");
    let again = app
        .call(
            Method::DELETE,
            "/v1/admin/keys/orders",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(again.status, 404);
    // A forged key with a real id is refused too.
    let id = created.body["key_id"].as_str().unwrap();
    let forged = format!("fgk_{id}_{}", "x".repeat(43));
    assert_eq!(
        app.call(Method::GET, &quota, Some(&forged), None)
            .await
            .status,
        401
    );
}

// The bound: a revocation is refused by every instance at most
// keys.cache_secs (5 s by default) after it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_instance_within_the_cache_ttl() {
    let app = spawn_app(Backend::Postgres).await;
    let sibling = spawn_sibling(&app).await;
    let created = create_key(&app, "billing", &["*"], &["send"]).await;
    let key = created.body["key"].as_str().unwrap().to_owned();
    let quota = format!("{}/v1/apps/{APPID}/users/o-r/quota", sibling.address);
    let on_sibling = || call(&app.client, &quota, Method::GET, Some(&key), None);
    assert_eq!(on_sibling().await.status, 200);
    let revoked = app
        .call(
            Method::DELETE,
            "/v1/admin/keys/billing",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204);
    // The sibling answers from its copy for at most the TTL...
    app.advance(Duration::milliseconds(4_900));
    assert_eq!(on_sibling().await.status, 200);
    // ...and refuses the key once its copy ran out.
    app.advance(Duration::milliseconds(200));
    let refused = on_sibling().await;
    assert_eq!(refused.status, 401, "{:?}", refused.body);
}

#[test]
fn the_keys_command_creates_lists_and_revokes() {
    let binary = env!("CARGO_BIN_EXE_formid-gateway");
    let dir = std::env::temp_dir().join(format!("formid-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "database_url = \"sqlite://{}/ledger.db\"\n[apps.wx0123456789abcdef]\nsecret = \"s\"\n\
             [api_keys.a]\nkey = \"0123456789abcdef0123\"\napps = [\"*\"]\nscopes = [\"admin\"]\n",
            dir.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(binary)
            .arg("keys")
            .args(args)
            .arg("--config")
            .arg(&file)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let created = run(&[
        "create",
        "--name",
        "orders",
        "--apps",
        "wx0123456789abcdef",
        "--scopes",
        "send,collect",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("fgk_"), "{key}");
    let listed = run(&["list"]);
    let listing = String::from_utf8(listed.stdout).unwrap();
    assert!(listing.contains("orders\t"), "{listing}");
    assert!(listing.contains("collect,send"), "{listing}");
    assert!(
        !listing.contains(&key[4..]),
        "the key in a listing: {listing}"
    );
    let unknown_app = run(&[
        "create",
        "--name",
        "x",
        "--apps",
        "wxnotconfigured0",
        "--scopes",
        "send",
    ]);
    assert!(!unknown_app.status.success());
    assert!(run(&["revoke", "orders"]).status.success());
    assert!(!run(&["revoke", "orders"]).status.success());
    let listing = String::from_utf8(run(&["list"]).stdout).unwrap();
    let line = listing
        .lines()
        .find(|line| line.starts_with("orders\t"))
        .unwrap();
    assert!(!line.ends_with("\t-"), "revoked_at is set: {line}");
    let _ = std::fs::remove_dir_all(dir);
}
