//! WeChat's message push at `/wechat/push/{appid}`: the fake
//! pushes signed and encrypted subscribe events to the gateway's real
//! address, in every mode and format, and the ledger follows them.
//!
//! Two apps: `APPID` takes encrypted pushes (current and previous key) and
//! its grants come from WeChat; `OTHER_APPID` takes plain pushes (a token
//! only) and its grants come from its frontend.

use std::time::Duration;

use fake_wechat::push_crypto;
use fake_wechat::{PopupChoice, PushEvent, PushFormat, PushMode, PushRecord, PushTarget};
use formid_gateway::ledger::states::{Channel, SubscriptionType};
use formid_gateway::storage::TemplateRecord;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::*;

const TOKEN: &str = "pushToken123";
const OTHER_TOKEN: &str = "otherToken456";
/// The current EncodingAESKey of `APPID` (the classic sample key).
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// The key before the rotation (non-zero trailing base64 bits).
const OLD_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
/// A key the gateway never had.
const STRANGER_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const TEMPLATE_A: &str = "tmpl-popup-a";
const TEMPLATE_B: &str = "tmpl-popup-b";

/// A gateway whose apps receive pushes (see the module doc).
async fn spawn_push_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |settings| {
        let app = &mut settings["apps"][APPID];
        app["push_token"] = json!(TOKEN);
        app["encoding_aes_key"] = json!(KEY);
        app["previous_encoding_aes_key"] = json!(OLD_KEY);
        app["subscribe_grants_from"] = json!("wechat");
        settings["apps"][OTHER_APPID]["push_token"] = json!(OTHER_TOKEN);
    })
    .await
}

fn push_url(app: &TestApp, appid: &str) -> String {
    app.url(&format!("/wechat/push/{appid}"))
}

/// Points the fake's push for `appid` at the gateway.
fn target(app: &TestApp, appid: &str, key: &str, mode: PushMode, format: PushFormat) {
    let token = if appid == APPID { TOKEN } else { OTHER_TOKEN };
    app.fake
        .set_push_target(
            appid,
            PushTarget::new(push_url(app, appid), token, key, mode, format),
        )
        .expect("a valid push target");
}

fn popup(openid: &str, items: &[(&str, &str)]) -> PushEvent {
    PushEvent::Popup {
        openid: openid.to_owned(),
        items: items
            .iter()
            .map(|(template_id, status)| PopupChoice {
                template_id: (*template_id).to_owned(),
                status: (*status).to_owned(),
            })
            .collect(),
    }
}

/// Pushes `event` through the fake and insists the gateway said `success`.
async fn push(app: &TestApp, appid: &str, event: PushEvent) -> PushRecord {
    let record = app.fake.push_event(appid, event).await.expect("a target");
    assert!(record.acknowledged(), "{record:?}");
    record
}

/// POSTs a push by hand: (status, body text).
async fn post_raw(
    app: &TestApp,
    appid: &str,
    query: &str,
    body: impl Into<String>,
) -> (u16, String) {
    let response = app
        .client
        .post(format!("{}?{query}", push_url(app, appid)))
        .header("content-type", "text/xml")
        .body(body.into())
        .send()
        .await
        .expect("calling the gateway");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The user's standing per template, by template id.
async fn standing(app: &TestApp, appid: &str, openid: &str, template: &str) -> Value {
    let key = if appid == APPID {
        SEND_KEY
    } else {
        OTHER_APP_KEY
    };
    let answer = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{appid}/users/{openid}/quota"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["template_id"] == template)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn grants(app: &TestApp, appid: &str, openid: &str, template: &str) -> i64 {
    standing(app, appid, openid, template).await["one_time_grants"]
        .as_i64()
        .unwrap_or(0)
}

async fn post_prompt(
    app: &TestApp,
    appid: &str,
    openid: &str,
    request_id: &str,
    template: &str,
) -> Answer {
    let key = if appid == APPID {
        COLLECT_KEY
    } else {
        OTHER_APP_KEY
    };
    app.call(
        reqwest::Method::POST,
        &format!("/v1/apps/{appid}/subscriptions"),
        Some(key),
        Some(json!({"openid": openid, "request_id": request_id,
                    "result": {"errMsg": "requestSubscribeMessage:ok", template: "accept"}})),
    )
    .await
}

/// A safe-mode push built by hand for `APPID`'s token: (query, XML body).
fn safe_xml(key: &str, appid_inside: &str, inner: &str, timestamp: i64) -> (String, String) {
    let key = push_crypto::aes_key(key).expect("a 43-char key");
    let encrypt = push_crypto::encrypt(&key, &[7; 16], inner.as_bytes(), appid_inside);
    signed_safe(&encrypt, timestamp)
}

fn signed_safe(encrypt: &str, timestamp: i64) -> (String, String) {
    let timestamp = timestamp.to_string();
    let nonce = "1234567";
    let signature = push_crypto::sign(&[TOKEN, &timestamp, nonce]);
    let msg_signature = push_crypto::sign(&[TOKEN, &timestamp, nonce, encrypt]);
    (
        format!(
            "signature={signature}&timestamp={timestamp}&nonce={nonce}&openid=o-x&encrypt_type=aes&msg_signature={msg_signature}"
        ),
        format!("<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"),
    )
}

fn popup_xml(openid: &str, template: &str, create_time: i64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>\
         <CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[subscribe_msg_popup_event]]></Event><SubscribeMsgPopupEvent><List>\
         <TemplateId><![CDATA[{template}]]></TemplateId><SubscribeStatusString><![CDATA[accept]]></SubscribeStatusString>\
         <PopupScene>0</PopupScene></List></SubscribeMsgPopupEvent></xml>"
    )
}

fn now_secs(app: &TestApp) -> i64 {
    app.now_ms().div_euclid(1000)
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_echoes_only_a_signed_echostr(#[case] backend: Backend) {
    let app = spawn_push_app(backend).await;
    let get = |appid: &str, query: String| {
        let url = format!("{}?{query}", push_url(&app, appid));
        let client = app.client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, content_type, response.text().await.unwrap())
        }
    };
    let signature = push_crypto::sign(&[TOKEN, "1714036504", "1514711492"]);
    let (status, content_type, body) = get(
        APPID,
        format!("signature={signature}&echostr=4375120948345356249&timestamp=1714036504&nonce=1514711492"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(content_type.unwrap().starts_with("text/plain"));
    assert_eq!(body, "4375120948345356249", "verbatim, not wrapped");

    // Signed with another token, or with a parameter changed: 401, no echo.
    for query in [
        format!("signature={signature}&echostr=4375120948345356249&timestamp=1714036505&nonce=1514711492"),
        format!("signature={}&echostr=4375120948345356249&timestamp=1714036504&nonce=1514711492",
            push_crypto::sign(&[OTHER_TOKEN, "1714036504", "1514711492"])),
        "echostr=4375120948345356249&timestamp=1714036504&nonce=1514711492".to_owned(),
    ] {
        let (status, _, body) = get(APPID, query).await;
        assert!(status == 401 || status == 400, "{status}");
        assert!(!body.contains("4375120948345356249"), "{body}");
    }
    // The other app has its own token; an unknown app and an app without a
    // push token are the same 404.
    let other = push_crypto::sign(&[OTHER_TOKEN, "1714036504", "1514711492"]);
    let (status, _, body) = get(
        OTHER_APPID,
        format!("signature={other}&echostr=42&timestamp=1714036504&nonce=1514711492"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "42"));
    let (status, _, _) = get(
        "wxunknown0000000",
        format!("signature={other}&echostr=42&timestamp=1&nonce=2"),
    )
    .await;
    assert_eq!(status, 404);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popups_round_trip_in_every_mode_and_format_and_only_one_source_grants(
    #[case] backend: Backend,
) {
    let app = spawn_push_app(backend).await;
    // APPID (grants from WeChat): compatible and safe, XML and JSON.
    let mut users = Vec::new();
    for mode in [PushMode::Compatible, PushMode::Safe] {
        for format in [PushFormat::Xml, PushFormat::Json] {
            target(&app, APPID, KEY, mode, format);
            let user = format!("o-{mode:?}-{format:?}");
            let record = push(
                &app,
                APPID,
                popup(&user, &[(TEMPLATE_A, "accept"), (TEMPLATE_B, "reject")]),
            )
            .await;
            assert_eq!(record.answer.as_deref(), Some("success"));
            assert_eq!(record.attempts, 1);
            users.push(user);
        }
    }
    for user in &users {
        assert_eq!(grants(&app, APPID, user, TEMPLATE_A).await, 1, "{user}");
        let b = standing(&app, APPID, user, TEMPLATE_B).await;
        assert_eq!(
            (b["decision"].as_str(), b["one_time_grants"].as_i64()),
            (Some("reject"), Some(0))
        );
    }
    // acceptWithAudio / acceptWithAlert grant too.
    target(&app, APPID, KEY, PushMode::Safe, PushFormat::Json);
    push(
        &app,
        APPID,
        popup(
            "o-loud",
            &[
                (TEMPLATE_A, "acceptWithAudio"),
                (TEMPLATE_B, "acceptWithAlert"),
            ],
        ),
    )
    .await;
    assert_eq!(grants(&app, APPID, "o-loud", TEMPLATE_A).await, 1);
    assert_eq!(grants(&app, APPID, "o-loud", TEMPLATE_B).await, 1);
    assert_eq!(
        standing(&app, APPID, "o-loud", TEMPLATE_B).await["decision"],
        "accept_with_alert"
    );
    // A plain push is refused for an app with an EncodingAESKey: its body is signed by nothing.
    target(&app, APPID, KEY, PushMode::Plain, PushFormat::Xml);
    let record = app
        .fake
        .push_event(APPID, popup("o-plain", &[(TEMPLATE_A, "accept")]))
        .await
        .unwrap();
    assert_eq!(record.status, Some(400), "{record:?}");
    assert_eq!(
        standing(&app, APPID, "o-plain", TEMPLATE_A).await,
        Value::Null
    );
    // With grants from WeChat, a frontend's post is the decision only.
    let posted = post_prompt(&app, APPID, "o-Safe-Json", "prompt-1", TEMPLATE_A).await;
    assert_eq!(posted.status, 200, "{:?}", posted.body);
    assert_eq!(posted.body["granted"], 0);
    assert_eq!(posted.body["recorded_only"], true);
    assert_eq!(posted.body["grants_from"], "wechat");
    assert_eq!(posted.body["templates"][0]["effect"], "recorded");
    assert!(posted.body["note"]
        .as_str()
        .unwrap()
        .contains("recorded only"));
    assert_eq!(grants(&app, APPID, "o-Safe-Json", TEMPLATE_A).await, 1);

    // OTHER_APPID (grants from its frontend): plain pushes, XML and JSON,
    // recorded as decisions only.
    for format in [PushFormat::Xml, PushFormat::Json] {
        target(&app, OTHER_APPID, "", PushMode::Plain, format);
        let user = format!("o-plain-{format:?}");
        push(&app, OTHER_APPID, popup(&user, &[(TEMPLATE_A, "accept")])).await;
        let row = standing(&app, OTHER_APPID, &user, TEMPLATE_A).await;
        assert_eq!(row["decision"], "accept");
        assert_eq!(
            row["one_time_grants"], 0,
            "a popup grants nothing with grants from the frontend"
        );
        // The frontend's post grants.
        let posted = post_prompt(&app, OTHER_APPID, &user, "prompt-1", TEMPLATE_A).await;
        assert_eq!(posted.body["granted"], 1, "{:?}", posted.body);
        assert_eq!(posted.body["recorded_only"], false);
        assert_eq!(grants(&app, OTHER_APPID, &user, TEMPLATE_A).await, 1);
    }
    // Nobody was credited by ToUserName (the gh_ id).
    assert_eq!(
        standing(&app, APPID, "gh_0123456789ab", TEMPLATE_A).await,
        Value::Null
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_accept_is_never_counted_twice(#[case] backend: Backend) {
    let app = spawn_push_app(backend).await;
    target(&app, APPID, KEY, PushMode::Safe, PushFormat::Xml);
    let record = push(&app, APPID, popup("o-ann", &[(TEMPLATE_A, "accept")])).await;
    assert_eq!(grants(&app, APPID, "o-ann", TEMPLATE_A).await, 1);
    // The same push again, as WeChat's retries send it: success, once
    // sequentially and 4 times at once.
    assert_eq!(
        post_raw(&app, APPID, &record.query, record.body.clone()).await,
        (200, "success".into())
    );
    let again = futures::future::join_all(
        (0..4).map(|_| post_raw(&app, APPID, &record.query, record.body.clone())),
    )
    .await;
    assert!(
        again
            .iter()
            .all(|answer| *answer == (200, "success".to_owned())),
        "{again:?}"
    );
    assert_eq!(grants(&app, APPID, "o-ann", TEMPLATE_A).await, 1);
    // One template twice in one popup counts once.
    app.advance(chrono::Duration::seconds(1));
    push(
        &app,
        APPID,
        popup("o-ann", &[(TEMPLATE_A, "accept"), (TEMPLATE_A, "accept")]),
    )
    .await;
    assert_eq!(
        grants(&app, APPID, "o-ann", TEMPLATE_A).await,
        2,
        "a new popup is a new grant"
    );

    // The fake's own retries: no answer within 1 ms, 3 tries of the same body.
    let mut impatient = PushTarget::new(
        push_url(&app, APPID),
        TOKEN,
        KEY,
        PushMode::Safe,
        PushFormat::Json,
    );
    impatient.timeout = Duration::from_millis(1);
    app.fake.set_push_target(APPID, impatient).unwrap();
    let record = app
        .fake
        .push_event(APPID, popup("o-bob", &[(TEMPLATE_A, "accept")]))
        .await
        .unwrap();
    // How many tries beat the 1 ms depends on the machine (a replay is
    // answered fast); the fake's own tests pin the retry count.
    assert!((1..=3).contains(&record.attempts), "{record:?}");
    // Whatever those tries did, one more gets success and one grant in all.
    assert_eq!(
        post_raw(&app, APPID, &record.query, record.body.clone()).await,
        (200, "success".into())
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(grants(&app, APPID, "o-bob", TEMPLATE_A).await, 1);
    assert_eq!(count_rows(&app, "push_events").await, 3);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_event_revokes_whatever_the_source(#[case] backend: Backend) {
    let app = spawn_push_app(backend).await;
    // A long-term template in APPID's catalogue.
    app.storage
        .upsert_template(
            APPID,
            &TemplateRecord {
                template_id: TEMPLATE_B.to_owned(),
                channel: Channel::Subscribe,
                title: "长期提醒".to_owned(),
                content: "事项:{{thing1.DATA}}".to_owned(),
                example: String::new(),
                subscription: SubscriptionType::LongTerm,
                enum_values: None,
                refreshed_at: app.now_ms(),
            },
        )
        .await
        .unwrap();
    target(&app, APPID, KEY, PushMode::Compatible, PushFormat::Json);
    for _ in 0..2 {
        push(
            &app,
            APPID,
            popup("o-ann", &[(TEMPLATE_A, "accept"), (TEMPLATE_B, "accept")]),
        )
        .await;
        app.advance(chrono::Duration::seconds(1));
    }
    assert_eq!(grants(&app, APPID, "o-ann", TEMPLATE_A).await, 2);
    let b = standing(&app, APPID, "o-ann", TEMPLATE_B).await;
    assert_eq!(
        (b["long_term"].as_bool(), b["one_time_grants"].as_i64()),
        (Some(true), Some(0))
    );

    // The user turns both off in the service-notification settings.
    app.fake.revoke(APPID, "o-ann", TEMPLATE_A);
    app.fake.revoke(APPID, "o-ann", TEMPLATE_B);
    let pushes = app.fake.wait_for_pushes(4, Duration::from_secs(10)).await;
    assert!(pushes.iter().all(PushRecord::acknowledged), "{pushes:?}");
    let a = standing(&app, APPID, "o-ann", TEMPLATE_A).await;
    assert_eq!(
        (a["decision"].as_str(), a["one_time_grants"].as_i64()),
        (Some("revoked"), Some(0))
    );
    let b = standing(&app, APPID, "o-ann", TEMPLATE_B).await;
    assert_eq!(
        (b["decision"].as_str(), b["long_term"].as_bool()),
        (Some("revoked"), Some(false))
    );

    // With grants from the frontend, a change event revokes too.
    target(&app, OTHER_APPID, "", PushMode::Plain, PushFormat::Xml);
    post_prompt(&app, OTHER_APPID, "o-cat", "p-1", TEMPLATE_A).await;
    assert_eq!(grants(&app, OTHER_APPID, "o-cat", TEMPLATE_A).await, 1);
    push(
        &app,
        OTHER_APPID,
        PushEvent::Change {
            openid: "o-cat".into(),
            template_ids: vec![TEMPLATE_A.into()],
        },
    )
    .await;
    let a = standing(&app, OTHER_APPID, "o-cat", TEMPLATE_A).await;
    assert_eq!(
        (a["decision"].as_str(), a["one_time_grants"].as_i64()),
        (Some("revoked"), Some(0))
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_event_is_recorded_on_its_message_by_msgid(#[case] backend: Backend) {
    let app = spawn_push_app(backend).await;
    let template = app
        .fake
        .add_subscribe_template(APPID, 401, &[1, 2])
        .unwrap();
    let mut push_target = PushTarget::new(
        push_url(&app, APPID),
        TOKEN,
        KEY,
        PushMode::Safe,
        PushFormat::Xml,
    );
    push_target.sent_event_delay = Duration::from_millis(20);
    app.fake.set_push_target(APPID, push_target).unwrap();
    // The user accepts twice at WeChat; the popups grant in the gateway.
    app.fake.grant(APPID, "o-ann", &template);
    app.fake.wait_for_pushes(1, Duration::from_secs(10)).await;
    app.advance(chrono::Duration::seconds(1));
    app.fake.grant(APPID, "o-ann", &template);
    app.fake.wait_for_pushes(2, Duration::from_secs(10)).await;
    assert_eq!(grants(&app, APPID, "o-ann", &template).await, 2);

    // The second send is accepted but not delivered in the end.
    app.fake.push_sent_outcomes([
        (0, "success".to_owned()),
        (10_001, "system failure".to_owned()),
    ]);
    let data =
        json!({"thing1": {"value": "Blue mug"}, "character_string2": {"value": "SN20240501001"}});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let answer = app
            .send(json!({"touser": "o-ann", "template_id": template, "data": data}))
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        ids.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    let pushes = app.fake.wait_for_pushes(4, Duration::from_secs(10)).await;
    assert!(pushes.iter().all(PushRecord::acknowledged), "{pushes:?}");
    let first = app.message(&ids[0]).await.body;
    assert_eq!(first["status"], "sent");
    assert_eq!(first["delivery"]["error_code"], 0, "{first}");
    assert_eq!(first["delivery"]["error_status"], "success");
    assert!(first["delivery"]["at"].is_string());
    let second = app.message(&ids[1]).await.body;
    assert_eq!(second["status"], "sent", "the send was accepted");
    assert_eq!(second["delivery"]["error_code"], 10_001, "{second}");
    assert_eq!(second["delivery"]["error_status"], "system failure");
    // No grant is refunded.
    assert_eq!(grants(&app, APPID, "o-ann", &template).await, 0);
    // A sent event of a msgid the gateway never sent changes nothing.
    push(
        &app,
        APPID,
        PushEvent::Sent {
            openid: "o-ann".into(),
            items: vec![fake_wechat::SentResult {
                template_id: template.clone(),
                msgid: 1_700_827_132_819_554_304,
                error_code: 0,
                error_status: "success".into(),
            }],
        },
    )
    .await;
    assert_eq!(count_rows(&app, "push_events").await, 5);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pushes_are_refused_and_store_nothing(#[case] backend: Backend) {
    let app = spawn_push_app(backend).await;
    let now = now_secs(&app);
    let inner = popup_xml("o-eve", TEMPLATE_A, now);
    let refused = |(status, body): (u16, String), expected: u16, code: &str| {
        assert_eq!(status, expected, "{code}: {body}");
        assert!(body.contains(code), "{code}: {body}");
    };
    // A wrong signature.
    let (query, body) = safe_xml(KEY, APPID, &inner, now);
    let forged = query.replace("msg_signature=", "msg_signature=0");
    refused(
        post_raw(&app, APPID, &forged, body.clone()).await,
        401,
        "bad_signature",
    );
    // The right signature with a stale timestamp (a captured push replayed 10 minutes later).
    let (query, body) = safe_xml(KEY, APPID, &inner, now - 600);
    refused(
        post_raw(&app, APPID, &query, body).await,
        401,
        "stale_timestamp",
    );
    // A tampered ciphertext, signed again (only the token holder could): refused at decryption.
    let key = push_crypto::aes_key(KEY).unwrap();
    let good = push_crypto::encrypt(&key, &[7; 16], inner.as_bytes(), APPID);
    let mut bytes = base64_decode(&good);
    let n = bytes.len();
    bytes[n - 17] ^= 0x55; // the pad length byte of the last block
    let (query, body) = signed_safe(&base64_encode(&bytes), now);
    refused(
        post_raw(&app, APPID, &query, body).await,
        400,
        "bad_ciphertext",
    );
    // Truncated base64.
    let (query, body) = signed_safe(&good[..good.len() - 3], now);
    refused(
        post_raw(&app, APPID, &query, body).await,
        400,
        "bad_ciphertext",
    );
    // Another app's appid inside.
    let (query, body) = safe_xml(KEY, OTHER_APPID, &inner, now);
    refused(
        post_raw(&app, APPID, &query, body).await,
        400,
        "bad_ciphertext",
    );
    // APPID's push sent to the other app's path: another token.
    let (query, body) = safe_xml(KEY, APPID, &inner, now);
    refused(
        post_raw(&app, OTHER_APPID, &query, body).await,
        401,
        "bad_signature",
    );
    // An entity-expansion XML, inside the encryption and in a plain body.
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]>{}",
        popup_xml("&lol2;", TEMPLATE_A, now)
    );
    let (query, body) = safe_xml(KEY, APPID, &laughs, now);
    refused(
        post_raw(&app, APPID, &query, body).await,
        400,
        "bad_document",
    );
    let plain_query = |timestamp: i64| {
        let signature = push_crypto::sign(&[OTHER_TOKEN, &timestamp.to_string(), "99"]);
        format!("signature={signature}&timestamp={timestamp}&nonce=99")
    };
    refused(
        post_raw(&app, OTHER_APPID, &plain_query(now), laughs.clone()).await,
        400,
        "bad_document",
    );
    // A 2 MB body.
    let huge = format!(
        "<xml><Encrypt>{}</Encrypt></xml>",
        "A".repeat(2 * 1024 * 1024)
    );
    let (query, _) = signed_safe("A", now);
    let (status, _) = post_raw(&app, APPID, &query, huge).await;
    assert_eq!(status, 413);
    // Encrypted for a key the gateway never had.
    let (query, body) = safe_xml(STRANGER_KEY, APPID, &inner, now);
    refused(
        post_raw(&app, APPID, &query, body).await,
        400,
        "bad_ciphertext",
    );
    // No query at all.
    refused(
        post_raw(&app, APPID, "", inner.clone()).await,
        400,
        "bad_query",
    );
    // A safe-mode body signed only by `signature` (no msg_signature).
    let (query, body) = safe_xml(KEY, APPID, &inner, now);
    let unsigned = query.split("&msg_signature").next().unwrap().to_owned();
    refused(
        post_raw(&app, APPID, &unsigned, body).await,
        400,
        "bad_query",
    );

    // Nothing stored.
    assert_eq!(count_rows(&app, "push_events").await, 0);
    assert_eq!(count_rows(&app, "subscriptions").await, 0);
    assert_eq!(count_rows(&app, "credentials").await, 0);
    // And the endpoint still works: the same popup, properly made.
    let (query, body) = safe_xml(KEY, APPID, &inner, now);
    assert_eq!(
        post_raw(&app, APPID, &query, body).await,
        (200, "success".into())
    );
    assert_eq!(grants(&app, APPID, "o-eve", TEMPLATE_A).await, 1);
    // Other events: success, not stored.
    let other = format!(
        "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[o-eve]]></FromUserName>\
         <CreateTime>{now}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[debug_demo]]></Event></xml>"
    );
    let (query, body) = safe_xml(KEY, APPID, &other, now);
    assert_eq!(
        post_raw(&app, APPID, &query, body).await,
        (200, "success".into())
    );
    assert_eq!(count_rows(&app, "push_events").await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_key_still_opens_pushes_after_a_rotation(#[case] backend: Backend) {
    let app = spawn_push_app(backend).await;
    for (user, key) in [("o-old", OLD_KEY), ("o-new", KEY)] {
        target(&app, APPID, key, PushMode::Safe, PushFormat::Json);
        push(&app, APPID, popup(user, &[(TEMPLATE_A, "accept")])).await;
        assert_eq!(grants(&app, APPID, user, TEMPLATE_A).await, 1, "{user}");
    }
    target(&app, APPID, STRANGER_KEY, PushMode::Safe, PushFormat::Json);
    let record = app
        .fake
        .push_event(APPID, popup("o-stranger", &[(TEMPLATE_A, "accept")]))
        .await
        .unwrap();
    assert_eq!(record.status, Some(400), "{record:?}");
    assert_eq!(
        standing(&app, APPID, "o-stranger", TEMPLATE_A).await,
        Value::Null
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_the_ledger_fails_to_apply_is_never_answered_success_nor_half_applied(
    #[case] backend: Backend,
) {
    let app = spawn_push_app(backend).await;
    // The grant's insert fails after the decision and the push's own row
    // were written in the same transaction.
    let (fail, heal): (&[&str], &[&str]) = if backend == Backend::Sqlite {
        (
            &["CREATE TRIGGER fail_grant BEFORE INSERT ON credentials \
               BEGIN SELECT RAISE(ABORT, 'injected'); END"],
            &["DROP TRIGGER fail_grant"],
        )
    } else {
        (
            &[
                "CREATE FUNCTION fail_grant() RETURNS trigger AS $$ \
                 BEGIN RAISE EXCEPTION 'injected'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER fail_grant BEFORE INSERT ON credentials \
                 FOR EACH ROW EXECUTE FUNCTION fail_grant()",
            ],
            &["DROP TRIGGER fail_grant ON credentials"],
        )
    };
    execute_sql(&app, fail).await;
    target(&app, APPID, KEY, PushMode::Safe, PushFormat::Xml);
    let record = app
        .fake
        .push_event(
            APPID,
            popup("o-ann", &[(TEMPLATE_B, "reject"), (TEMPLATE_A, "accept")]),
        )
        .await
        .unwrap();
    assert_eq!(record.status, Some(500), "{record:?}");
    assert!(
        !record.acknowledged(),
        "no success before the event is durable"
    );
    // Nothing of it stayed: not the reject before it, not the push's row.
    assert_eq!(count_rows(&app, "push_events").await, 0);
    assert_eq!(count_rows(&app, "subscriptions").await, 0);
    // WeChat tries again once the ledger works: applied, once.
    execute_sql(&app, heal).await;
    for _ in 0..2 {
        assert_eq!(
            post_raw(&app, APPID, &record.query, record.body.clone()).await,
            (200, "success".into())
        );
    }
    assert_eq!(grants(&app, APPID, "o-ann", TEMPLATE_A).await, 1);
    assert_eq!(
        standing(&app, APPID, "o-ann", TEMPLATE_B).await["decision"],
        "reject"
    );
    assert_eq!(count_rows(&app, "push_events").await, 2);
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// WeChat may push a send's final result before the gateway has written
/// the msgid its call got back: the push waits for that write (within
/// WeChat's 5-second reply window) and files the delivery on its message.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_event_ahead_of_its_send_is_filed_once_the_send_is_recorded(
    #[case] backend: Backend,
) {
    use formid_gateway::ledger::states::{AttemptOutcome, Delivery, MessageStatus};
    use formid_gateway::storage::{new_lease, MessageOutcome, NewAttempt, NewMessage};

    let app = spawn_push_app(backend).await;
    target(&app, APPID, KEY, PushMode::Safe, PushFormat::Xml);
    let event = PushEvent::Sent {
        openid: "o-early".into(),
        items: vec![fake_wechat::SentResult {
            template_id: TEMPLATE_A.into(),
            msgid: 4_242,
            error_code: 10_001,
            error_status: "system failure".into(),
        }],
    };
    let push = app.fake.push_event(APPID, event);
    let id = uuid::Uuid::now_v7().to_string();
    // The send's own writes, 300 ms behind the push.
    let record = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = app.now_ms();
        let lease = new_lease(id.clone());
        let message = NewMessage {
            id: id.clone(),
            appid: APPID.into(),
            touser: "o-early".into(),
            template_id: TEMPLATE_A.into(),
            payload: "{}".into(),
            status: MessageStatus::Pending,
            delivery: Delivery::AtMostOnce,
            wait_until: None,
            lease_until: now + 30_000,
            lease_token: lease.token,
            channel: Channel::Subscribe,
            reference: None,
            idempotency_key: None,
        };
        app.storage.create_message(&message, now).await.unwrap();
        let attempt = NewAttempt {
            credential_id: None,
            credential_kind: None,
            errcode: Some(0),
            outcome: AttemptOutcome::Sent,
            detail: None,
            msgid: Some("4242".into()),
        };
        let sent = MessageOutcome {
            status: MessageStatus::Sent,
            error_code: None,
            wechat_errcode: None,
            recovered: false,
        };
        assert!(app
            .storage
            .record_attempt(&lease, &attempt, None, Some(&sent), now)
            .await
            .unwrap());
    };
    let (pushed, ()) = tokio::join!(push, record);
    let pushed = pushed.expect("a push target");
    assert!(pushed.acknowledged(), "{pushed:?}");
    let message = app.message(&id).await.body;
    assert_eq!(message["delivery"]["error_code"], 10_001, "{message}");
    assert_eq!(message["delivery"]["error_status"], "system failure");
}
