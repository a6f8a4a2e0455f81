//! Subscribe messages: grants posted as prompt results, spent one per send
//! of exactly their template, settled by WeChat's answer
//! (docs/wechat/subscribe-messages.md, "The send's errcodes").

use fake_wechat::Fault;
use futures::future::join_all;
use serde_json::{json, Value};

use rstest::rstest;

use crate::helpers::*;

/// A one-time subscribe template of the app at the fake (title 401,
/// keywords thing1 and character_string2); its `priTmplId`.
fn one_time_template(app: &TestApp) -> String {
    app.fake
        .add_subscribe_template(APPID, 401, &[1, 2])
        .expect("the fake adds the template")
}

/// Another one-time template (title 1209: thing1, time2).
fn other_template(app: &TestApp) -> String {
    app.fake
        .add_subscribe_template(APPID, 1209, &[1, 2])
        .expect("the fake adds the template")
}

fn data_401() -> Value {
    json!({"thing1": {"value": "Blue mug"}, "character_string2": {"value": "SN20240501001"}})
}

fn data_1209() -> Value {
    json!({"thing1": {"value": "Car wash"}, "time2": {"value": "2024年5月1日 10:00"}})
}

/// The user accepts `template` in a prompt: WeChat counts the grant, and
/// the frontend posts the result with `request_id`.
async fn accept(app: &TestApp, openid: &str, template: &str, request_id: &str) -> Answer {
    app.fake.grant(APPID, openid, template);
    post_prompt(
        app,
        openid,
        request_id,
        json!({"errMsg": "requestSubscribeMessage:ok", template: "accept"}),
    )
    .await
}

async fn post_prompt(app: &TestApp, openid: &str, request_id: &str, result: Value) -> Answer {
    app.call(
        reqwest::Method::POST,
        &format!("/v1/apps/{APPID}/subscriptions"),
        Some(COLLECT_KEY),
        Some(json!({"openid": openid, "request_id": request_id, "result": result})),
    )
    .await
}

async fn send_subscribe(app: &TestApp, openid: &str, template: &str, data: Value) -> Answer {
    app.send(json!({"touser": openid, "template_id": template, "data": data}))
        .await
}

/// The user's standing with `template` in the quota answer.
async fn standing(app: &TestApp, openid: &str, template: &str) -> Value {
    let quota = app.quota(openid).await;
    quota["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["template_id"] == template)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn grants_left(app: &TestApp, openid: &str, template: &str) -> i64 {
    standing(app, openid, template).await["one_time_grants"]
        .as_i64()
        .unwrap_or(0)
}

fn delivered(app: &TestApp) -> usize {
    app.fake
        .subscribe_sends()
        .iter()
        .filter(|send| send.grant_used.is_some())
        .count()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_accumulate_and_are_spent_oldest_first(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    let first = accept(&app, "o-ann", &template, "prompt-1").await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["granted"], 1);
    assert_eq!(first.body["templates"][0]["effect"], "granted");
    assert_eq!(first.body["subscriptions"][0]["one_time_grants"], 1);
    accept(&app, "o-ann", &template, "prompt-2").await;
    assert_eq!(grants_left(&app, "o-ann", &template).await, 2);
    let row = standing(&app, "o-ann", &template).await;
    assert_eq!(row["decision"], "accept");
    assert_eq!(row["long_term"], false);

    let mut spent = Vec::new();
    for left in [1, 0] {
        let answer = send_subscribe(&app, "o-ann", &template, data_401()).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.body["status"], "sent");
        assert_eq!(
            answer.body["checked"], false,
            "not in the catalogue: WeChat judged"
        );
        let attempt = &answer.body["attempts"][0];
        assert_eq!(attempt["credential_kind"], "subscribe");
        assert!(attempt["msgid"].is_string(), "msgid is a string: {attempt}");
        assert_eq!(grants_left(&app, "o-ann", &template).await, left);
        let id = answer.body["id"].as_str().unwrap();
        let message = app.message(id).await.body;
        assert_eq!(message["channel"], "subscribe");
        assert_eq!(message["attempts"][0]["msgid"], attempt["msgid"]);
        spent.push(message);
    }
    // The msgid WeChat gave is stored digit for digit (it exceeds 2^53).
    let sends = app.fake.subscribe_sends();
    assert_eq!(sends.len(), 2);
    assert_eq!(
        spent[0]["attempts"][0]["msgid"],
        sends[0].msgid.unwrap().to_string()
    );
    // The body WeChat got: the subscribe shape with the app's defaults.
    assert_eq!(sends[0].miniprogram_state, "formal");
    assert_eq!(sends[0].lang, "zh_CN");
    assert_eq!(
        app.fake
            .subscribe_grants(APPID, "o-ann", &template)
            .one_time,
        0
    );
    // None left: 409, and no call.
    let answer = send_subscribe(&app, "o-ann", &template, data_401()).await;
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    assert_eq!(answer.body["error"]["code"], "no_credential");
    assert_eq!(app.fake.subscribe_sends().len(), 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_id_grants_once(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    let result = json!({"errMsg": "requestSubscribeMessage:ok", &template: "accept"});
    let first = post_prompt(&app, "o-ben", "req-1", result.clone()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["replayed"], false);
    let again = post_prompt(&app, "o-ben", "req-1", result).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["granted"], 0);
    assert_eq!(again.body["templates"][0]["effect"], "granted");
    assert_eq!(grants_left(&app, "o-ben", &template).await, 1);
    // The same id with another result: refused, nothing granted.
    let other = post_prompt(
        &app,
        "o-ben",
        "req-1",
        json!({"errMsg": "requestSubscribeMessage:ok", &template: "reject"}),
    )
    .await;
    assert_eq!(other.status, 409, "{:?}", other.body);
    assert_eq!(other.body["error"]["code"], "request_id_reused");
    assert_eq!(grants_left(&app, "o-ben", &template).await, 1);
    // Another user may use the same request_id: ids are per user.
    let other_user = post_prompt(
        &app,
        "o-bob",
        "req-1",
        json!({"errMsg": "requestSubscribeMessage:ok", &template: "accept"}),
    )
    .await;
    assert_eq!(other_user.body["granted"], 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_of_one_template_never_pays_for_another(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let mine = one_time_template(&app);
    let other = other_template(&app);
    accept(&app, "o-cat", &mine, "p1").await;
    let answer = app
        .send(
            json!({"touser": "o-cat", "template_id": other, "channel": "subscribe",
                     "data": data_1209()}),
        )
        .await;
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    assert_eq!(answer.body["error"]["code"], "no_credential");
    assert!(app.fake.subscribe_sends().is_empty());
    assert_eq!(grants_left(&app, "o-cat", &mine).await, 1);
    // Nor a form_id a subscribe send, nor a grant a template send.
    app.collect_form_id("o-cat").await;
    let answer = app
        .send(
            json!({"touser": "o-cat", "template_id": other, "channel": "subscribe",
                     "data": data_1209()}),
        )
        .await;
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    let answer = app
        .send(json!({"touser": "o-cat", "template_id": mine, "channel": "template"}))
        .await;
    assert_eq!(answer.body["attempts"][0]["credential_kind"], "form_id");
    assert_eq!(grants_left(&app, "o-cat", &mine).await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_sends_on_five_grants_send_exactly_five(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    for prompt in 0..5 {
        accept(&app, "o-dan", &template, &format!("p{prompt}")).await;
    }
    let answers =
        join_all((0..20).map(|_| send_subscribe(&app, "o-dan", &template, data_401()))).await;
    let sent = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers
        .iter()
        .filter(|a| a.status == 409 && a.body["error"]["code"] == "no_credential")
        .count();
    assert_eq!((sent, refused), (5, 15), "{answers:?}");
    assert_eq!(delivered(&app), 5);
    assert_eq!(
        app.fake.subscribe_sends().len(),
        5,
        "no call beyond the grants"
    );
    assert_eq!(grants_left(&app, "o-dan", &template).await, 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errcode_43101_retires_the_rest_of_the_templates_grants(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    let other = other_template(&app);
    for prompt in 0..3 {
        accept(&app, "o-eve", &template, &format!("p{prompt}")).await;
    }
    accept(&app, "o-eve", &other, "p-other").await;
    // The user turns the template off in WeChat's settings: the ledger
    // learns it from the next send.
    app.fake.revoke(APPID, "o-eve", &template);
    let answer = send_subscribe(&app, "o-eve", &template, data_401()).await;
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    assert_eq!(answer.body["error"]["code"], "no_credential");
    assert_eq!(answer.body["error"]["wechat_errcode"], 43101);
    assert_eq!(
        app.fake.subscribe_sends().len(),
        1,
        "one call, not one per grant"
    );
    let row = standing(&app, "o-eve", &template).await;
    assert_eq!(row["one_time_grants"], 0);
    assert_eq!(row["decision"], "revoked");
    // Another template's grants are untouched.
    assert_eq!(grants_left(&app, "o-eve", &other).await, 1);
    // The message says why, also when read back.
    let message = app.message(answer.body["id"].as_str().unwrap()).await.body;
    assert_eq!(message["error"]["wechat_errcode"], 43101);
    // A new accept grants again.
    accept(&app, "o-eve", &template, "p-again").await;
    let answer = send_subscribe(&app, "o-eve", &template, data_401()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_and_subscribe_sends_live_side_by_side(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    let form_id = app.collect_form_id("o-fay").await;
    accept(&app, "o-fay", &template, "p1").await;
    let legacy = app.notify("o-fay").await;
    assert_eq!(legacy.status, 200, "{:?}", legacy.body);
    assert_eq!(legacy.body["attempts"][0]["credential_kind"], "form_id");
    // The template the user decided on goes through the subscribe API
    // without being named.
    let subscribe = send_subscribe(&app, "o-fay", &template, data_401()).await;
    assert_eq!(subscribe.status, 200, "{:?}", subscribe.body);
    assert_eq!(
        subscribe.body["attempts"][0]["credential_kind"],
        "subscribe"
    );
    assert_eq!(app.delivered_form_ids(), vec![form_id]);
    assert_eq!(delivered(&app), 1);
    let quota = app.quota("o-fay").await;
    assert_eq!(quota["sends_available"], 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_fields_on_a_subscribe_send_are_refused_before_anything_is_claimed(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    accept(&app, "o-gus", &template, "p1").await;
    for (extra, field) in [
        (json!({"color": "#173177"}), "color"),
        (
            json!({"emphasis_keyword": "keyword1.DATA"}),
            "emphasis_keyword",
        ),
        (
            json!({"data": {"thing1.DATA": {"value": "x"}, "character_string2": {"value": "1"}}}),
            "data.thing1.DATA",
        ),
        (
            json!({"data": {"thing1": {"value": "x", "color": "#000000"}}}),
            "data.thing1.color",
        ),
    ] {
        let mut body = json!({"touser": "o-gus", "template_id": template, "data": data_401()});
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        let answer = app.send(body).await;
        assert_eq!(answer.status, 422, "{field}: {:?}", answer.body);
        assert_eq!(answer.body["error"]["code"], "invalid_template_data");
        assert_eq!(answer.body["error"]["field"], field);
    }
    assert!(app.fake.subscribe_sends().is_empty());
    assert_eq!(grants_left(&app, "o-gus", &template).await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_wechat_refuses_gives_the_grant_back_with_wechats_words(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    accept(&app, "o-hal", &template, "p1").await;
    // thing is at most 20 characters: WeChat answers 47003 naming the field.
    let data = json!({"thing1": {"value": "x".repeat(21)}, "character_string2": {"value": "1"}});
    let answer = send_subscribe(&app, "o-hal", &template, data).await;
    assert_eq!(answer.status, 422, "{:?}", answer.body);
    assert_eq!(answer.body["error"]["code"], "invalid_data");
    assert_eq!(answer.body["error"]["wechat_errcode"], 47003);
    let errmsg = answer.body["error"]["wechat_errmsg"].as_str().unwrap();
    assert!(errmsg.contains("data.thing1.value"), "{errmsg}");
    assert_eq!(grants_left(&app, "o-hal", &template).await, 1);
    assert_eq!(
        app.fake
            .subscribe_grants(APPID, "o-hal", &template)
            .one_time,
        1
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_on_a_grant_is_never_probed(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    accept(&app, "o-ida", &template, "p1").await;
    // WeChat delivers, then the answer is lost. Even on the user's only
    // grant in the ledger, a second call could deliver again (WeChat may
    // hold a grant the frontend has not posted yet): no probe.
    app.fake
        .push_subscribe_faults([Fault::DeliverThenFail(502)]);
    let answer = send_subscribe(&app, "o-ida", &template, data_401()).await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "unknown");
    assert_eq!(answer.body["attempts"][0]["outcome"], "ambiguous");
    assert_eq!(app.fake.subscribe_sends().len(), 1, "never probed");
    assert_eq!(delivered(&app), 1);
    assert_eq!(grants_left(&app, "o-ida", &template).await, 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_with_more_grants_ends_unknown_with_one_spent(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    accept(&app, "o-jo", &template, "p1").await;
    accept(&app, "o-jo", &template, "p2").await;
    app.fake
        .push_subscribe_faults([Fault::DeliverThenFail(502)]);
    let answer = send_subscribe(&app, "o-jo", &template, data_401()).await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "unknown");
    assert_eq!(app.fake.subscribe_sends().len(), 1, "never probed");
    assert_eq!(grants_left(&app, "o-jo", &template).await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_waiting_for_a_grant_is_sent_when_one_arrives(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    let other = other_template(&app);
    let answer = app
        .send(
            json!({"touser": "o-kim", "template_id": template, "channel": "subscribe",
                     "data": data_401(), "wait_seconds": 3600}),
        )
        .await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "waiting");
    // A form_id or a grant of another template does not pay for it.
    app.collect_form_id("o-kim").await;
    accept(&app, "o-kim", &other, "p-other").await;
    assert_eq!(app.waiting.run_once().await.unwrap(), 0);
    accept(&app, "o-kim", &template, "p1").await;
    assert_eq!(app.waiting.run_once().await.unwrap(), 1);
    let message = app.message(answer.body["id"].as_str().unwrap()).await.body;
    assert_eq!(message["status"], "sent", "{message}");
    assert_eq!(delivered(&app), 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_result_that_is_not_one_stores_nothing(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let ok = "requestSubscribeMessage:ok";
    for (result, code) in [
        (
            json!({"errMsg": "requestSubscribeMessage:fail cancel", "T1": "accept"}),
            "prompt_failed",
        ),
        (json!({"T1": "accept"}), "invalid_result"),
        (json!({"errMsg": ok, "T1": "perhaps"}), "invalid_status"),
        (
            json!({"errMsg": ok, "T 1": "accept"}),
            "invalid_template_id",
        ),
        (
            json!({"errMsg": ok, "A": "accept", "B": "accept", "C": "accept", "D": "accept",
                   "E": "accept", "F": "accept"}),
            "too_many_templates",
        ),
        (json!("accept"), "invalid_result"),
    ] {
        let answer = post_prompt(&app, "o-lee", "r1", result).await;
        assert_eq!(answer.status, 422, "{code}: {:?}", answer.body);
        assert_eq!(answer.body["error"]["code"], code);
    }
    let answer = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{APPID}/subscriptions"),
            Some(COLLECT_KEY),
            Some(json!({"openid": "o-lee", "result": {"errMsg": ok, "T1": "accept"}})),
        )
        .await;
    assert_eq!(answer.body["error"]["code"], "missing_field");
    assert_eq!(app.quota("o-lee").await["subscriptions"], json!([]));
    // Only a collect key may post results.
    let answer = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{APPID}/subscriptions"),
            Some(SEND_KEY),
            Some(json!({"openid": "o-lee", "request_id": "r1",
                        "result": {"errMsg": ok, "T1": "accept"}})),
        )
        .await;
    assert_eq!(answer.status, 403);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_recorded_as_decisions_and_grant_nothing(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    let other = other_template(&app);
    let answer = post_prompt(
        &app,
        "o-max",
        "r1",
        json!({"errMsg": "requestSubscribeMessage:ok", &template: "reject", &other: "ban"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["granted"], 0);
    assert_eq!(answer.body["templates"][0]["effect"], "recorded");
    let row = standing(&app, "o-max", &template).await;
    assert_eq!(
        (row["decision"].as_str(), row["one_time_grants"].as_i64()),
        (Some("reject"), Some(0))
    );
    assert_eq!(standing(&app, "o-max", &other).await["decision"], "ban");
}

/// Adds a subscribe template through the gateway (so the catalogue knows
/// it, its type included); its id.
async fn catalogued(app: &TestApp, tid: u32, keyword_ids: &[u32]) -> String {
    let answer = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{APPID}/templates"),
            Some(ADMIN_KEY),
            Some(json!({"channel": "subscribe", "tid": tid, "keyword_ids": keyword_ids})),
        )
        .await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    answer.body["id"].as_str().unwrap().to_owned()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_term_subscription_is_not_consumed_and_43101_turns_it_off(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    // Title 5001 (上课提醒) is a long-term template: thing1, time2.
    let template = catalogued(&app, 5001, &[1, 2]).await;
    let answer = accept(&app, "o-nia", &template, "p1").await;
    assert_eq!(
        answer.body["templates"][0]["effect"], "long_term_on",
        "{:?}",
        answer.body
    );
    let row = standing(&app, "o-nia", &template).await;
    assert_eq!(
        (row["long_term"].as_bool(), row["one_time_grants"].as_i64()),
        (Some(true), Some(0))
    );
    let data = json!({"thing1": {"value": "高一数学"}, "time2": {"value": "2024年5月1日 08:00"}});
    // Concurrent sends do not queue behind one subscription.
    let answers =
        join_all((0..4).map(|_| send_subscribe(&app, "o-nia", &template, data.clone()))).await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.body["attempts"][0]["credential_kind"], "long_term");
        assert_eq!(answer.body["checked"], true);
    }
    assert_eq!(delivered(&app), 4);
    assert_eq!(standing(&app, "o-nia", &template).await["long_term"], true);
    // The user turns it off: the next send learns it from WeChat.
    app.fake.revoke(APPID, "o-nia", &template);
    let answer = send_subscribe(&app, "o-nia", &template, data.clone()).await;
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    assert_eq!(answer.body["error"]["wechat_errcode"], 43101);
    let row = standing(&app, "o-nia", &template).await;
    assert_eq!(
        (row["long_term"].as_bool(), row["decision"].as_str()),
        (Some(false), Some("revoked"))
    );
    let calls = app.fake.subscribe_sends().len();
    let answer = send_subscribe(&app, "o-nia", &template, data).await;
    assert_eq!(answer.status, 409);
    assert_eq!(
        app.fake.subscribe_sends().len(),
        calls,
        "no call once it is off"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_breaks_its_catalogued_template_claims_and_calls_nothing(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    let template = catalogued(&app, 401, &[1, 2]).await;
    accept(&app, "o-oz", &template, "p1").await;
    for (data, field, rule) in [
        (
            json!({"thing1": {"value": "Blue mug"}}),
            "data.character_string2",
            "missing_placeholder",
        ),
        (
            json!({"thing1": {"value": "x".repeat(21)}, "character_string2": {"value": "1"}}),
            "data.thing1.value",
            "value_type",
        ),
        (
            json!({"thing1": {"value": "mug"}, "character_string2": {"value": "1"}, "time3": {"value": "10:00"}}),
            "data.time3",
            "unknown_placeholder",
        ),
    ] {
        let answer = send_subscribe(&app, "o-oz", &template, data).await;
        assert_eq!(answer.status, 422, "{field}: {:?}", answer.body);
        assert_eq!(answer.body["error"]["code"], "invalid_template_data");
        assert_eq!(answer.body["error"]["field"], field, "{:?}", answer.body);
        assert_eq!(answer.body["error"]["rule"], rule, "{:?}", answer.body);
    }
    // A catalogued subscribe template cannot go out as a template message.
    let answer = app
        .send(json!({"touser": "o-oz", "template_id": template, "channel": "template", "data": data_401()}))
        .await;
    assert_eq!(answer.status, 422, "{:?}", answer.body);
    assert_eq!(answer.body["error"]["rule"], "channel");
    assert!(app.fake.subscribe_sends().is_empty());
    assert!(app.fake.sends().is_empty());
    assert_eq!(grants_left(&app, "o-oz", &template).await, 1);
    // The same data that fits goes out, checked.
    let answer = send_subscribe(&app, "o-oz", &template, data_401()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["checked"], true);
    assert_eq!(answer.body["channel"], "subscribe");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_grants_are_swept_after_the_retention_and_live_ones_never(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    accept(&app, "o-pat", &template, "p1").await;
    accept(&app, "o-pat", &template, "p2").await;
    assert_eq!(
        send_subscribe(&app, "o-pat", &template, data_401())
            .await
            .status,
        200
    );
    app.advance(chrono::Duration::days(6));
    assert_eq!(app.sweeper.run_once().await.unwrap().deleted_credentials, 0);
    app.advance(chrono::Duration::days(2));
    let report = app.sweeper.run_once().await.unwrap();
    assert_eq!(
        (report.expired, report.deleted_credentials),
        (0, 1),
        "{report:?}"
    );
    // A grant never expires: a year on, it still pays.
    app.advance(chrono::Duration::days(365));
    app.sweeper.run_once().await.unwrap();
    assert_eq!(grants_left(&app, "o-pat", &template).await, 1);
    assert_eq!(
        send_subscribe(&app, "o-pat", &template, data_401())
            .await
            .status,
        200
    );
}

/// A template one user decided on is a subscribe template for every user of
/// the app (only a subscribe template is ever offered in a prompt), from the
/// very next send: the process drops its copy of the app's templates when it
/// records a first decision on one.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_any_user_decided_on_is_a_subscribe_template_for_all(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app);
    // Unknown to the catalogue and to every user: a template message.
    let before = send_subscribe(&app, "o-bob", &template, data_401()).await;
    assert_eq!(before.status, 409, "{:?}", before.body);
    assert_eq!(before.body["channel"], "template", "{:?}", before.body);
    accept(&app, "o-ann", &template, "p1").await;
    let form_id = app.collect_form_id("o-bob").await;
    let after = send_subscribe(&app, "o-bob", &template, data_401()).await;
    assert_eq!(after.status, 409, "{:?}", after.body);
    assert_eq!(after.body["channel"], "subscribe", "{:?}", after.body);
    assert_eq!(after.body["error"]["code"], "no_credential");
    // o-bob's form_id does not pay for it, and o-ann's grant is hers.
    assert!(app.fake.sends().is_empty());
    assert_eq!(app.quota("o-bob").await["sends_available"], 1);
    assert_eq!(grants_left(&app, "o-ann", &template).await, 1);
    let sent = send_subscribe(&app, "o-ann", &template, data_401()).await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    assert!(!app.delivered_form_ids().contains(&form_id));
}

/// Another instance on the same ledger learns of a first decision within
/// `SEND_TEMPLATES_TTL_MS` (its copy of the app's templates is that old at
/// most), like the token and the 45009 block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_sees_a_first_decision_within_a_second() {
    let app = spawn_app(Backend::Postgres).await;
    let sibling = spawn_sibling(&app).await;
    let template = one_time_template(&app);
    let url = format!("{}/v1/apps/{APPID}/messages", sibling.address);
    let send_via_sibling = || {
        call(
            &app.client,
            &url,
            reqwest::Method::POST,
            Some(SEND_KEY),
            Some(json!({"touser": "o-bob", "template_id": template, "data": data_401()})),
        )
    };
    assert_eq!(send_via_sibling().await.body["channel"], "template");
    accept(&app, "o-ann", &template, "p1").await;
    // The sibling's copy was read just now: it does not know yet...
    assert_eq!(send_via_sibling().await.body["channel"], "template");
    // ...and reads the ledger again once the copy is a second old.
    app.clock.advance(chrono::Duration::milliseconds(
        formid_gateway::templates::SEND_TEMPLATES_TTL_MS,
    ));
    let answer = send_via_sibling().await;
    assert_eq!(answer.body["channel"], "subscribe", "{:?}", answer.body);
    assert_eq!(answer.body["error"]["code"], "no_credential");
}

// A failed message can still have been delivered: an at_least_once send
// whose call's answer was lost, retried with no grant left, ends failed
// after WeChat delivered it. It counts against the user's send cap like a
// sent one, or the user is notified over the cap.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_whose_answer_was_lost_counts_against_the_cap(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["apps"][APPID]["send_caps"] = json!([{"limit": 1, "window_secs": 86_400}]);
    })
    .await;
    let template = one_time_template(&app);
    accept(&app, "o-cap", &template, "p1").await;
    app.fake
        .push_subscribe_faults([Fault::DeliverThenFail(502)]);
    let first = app
        .send(
            json!({"touser": "o-cap", "template_id": template, "data": data_401(),
                     "delivery": "at_least_once"}),
        )
        .await;
    assert_eq!(first.body["status"], "failed", "{:?}", first.body);
    assert_eq!(first.body["attempts"][0]["outcome"], "ambiguous");
    assert_eq!(delivered(&app), 1);
    accept(&app, "o-cap", &template, "p2").await;
    let second = send_subscribe(&app, "o-cap", &template, data_401()).await;
    assert_eq!(second.status, 429, "{:?}", second.body);
    assert_eq!(second.body["error"]["code"], "user_send_limit");
    assert_eq!(delivered(&app), 1);
    assert_eq!(grants_left(&app, "o-cap", &template).await, 1);
}
