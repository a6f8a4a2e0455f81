//! Broadcasts: every holder of a template's grants, or a list, sent to
//! through the send path, each recipient once; paced, paused by 45009,
//! scheduled, commanded, taken over after a crash, worked by two instances.

use std::collections::BTreeMap;

use chrono::Duration;
use formid_gateway::broadcasts::BroadcastWorker;
use formid_gateway::ledger::states::{Channel, Delivery, MessageStatus};
use formid_gateway::storage::broadcasts::RecipientLease;
use formid_gateway::storage::{new_lease, NewMessage, StartSend};
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::*;

/// A one-time template (title 401: thing1, character_string2), read into
/// the app's catalogue so that sends are checked against it.
async fn one_time_template(app: &TestApp) -> String {
    let template = app
        .fake
        .add_subscribe_template(APPID, 401, &[1, 2])
        .expect("the fake adds the template");
    let listed = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{APPID}/templates?refresh=true"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    template
}

fn data_401() -> Value {
    json!({"thing1": {"value": "Blue mug"}, "character_string2": {"value": "SN20240501001"}})
}

/// The user accepts `template`: WeChat counts the grant, the frontend posts it.
async fn accept(app: &TestApp, openid: &str, template: &str) {
    app.fake.grant(APPID, openid, template);
    let answer = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{APPID}/subscriptions"),
            Some(COLLECT_KEY),
            Some(
                json!({"openid": openid, "request_id": format!("r-{openid}"),
                "result": {"errMsg": "requestSubscribeMessage:ok", template: "accept"}}),
            ),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

async fn create(app: &TestApp, body: Value) -> Answer {
    app.call(
        reqwest::Method::POST,
        &format!("/v1/apps/{APPID}/broadcasts"),
        Some(SEND_KEY),
        Some(body),
    )
    .await
}

async fn progress(app: &TestApp, id: &str) -> Value {
    let answer = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{APPID}/broadcasts/{id}"),
            Some(SEND_KEY),
            None,
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body
}

async fn command(app: &TestApp, id: &str, verb: &str) -> Answer {
    app.call(
        reqwest::Method::POST,
        &format!("/v1/apps/{APPID}/broadcasts/{id}/{verb}"),
        Some(SEND_KEY),
        None,
    )
    .await
}

/// Runs the workers until the job ends (the clock moves a second whenever
/// a step found nothing, for the pacing); returns its progress.
async fn drain(app: &TestApp, workers: &[&BroadcastWorker], id: &str) -> Value {
    for _ in 0..400 {
        let steps = futures::future::join_all(workers.iter().map(|worker| worker.run_once())).await;
        let handled: usize = steps
            .into_iter()
            .map(|step| step.expect("a worker step"))
            .sum();
        let now = progress(app, id).await;
        if now["finished_at"].is_string() {
            return now;
        }
        if handled == 0 {
            app.advance(Duration::seconds(1));
        }
    }
    panic!("the broadcast did not end: {}", progress(app, id).await);
}

/// Deliveries at the fake, per user.
fn deliveries(app: &TestApp) -> BTreeMap<String, usize> {
    let mut by_user = BTreeMap::new();
    for send in app.fake.subscribe_sends() {
        if send.grant_used.is_some() {
            *by_user.entry(send.touser.clone()).or_default() += 1;
        }
    }
    by_user
}

async fn results(app: &TestApp, id: &str) -> Vec<Value> {
    let response = app
        .client
        .get(app.url(&format!("/v1/apps/{APPID}/broadcasts/{id}/results")))
        .bearer_auth(SEND_KEY)
        .send()
        .await
        .expect("the results");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let text = response.text().await.expect("the body");
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn every_holder_is_notified_once_and_accounted_for(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app).await;
    let users: Vec<String> = (0..12).map(|n| format!("o-holder-{n:02}")).collect();
    for user in &users {
        accept(&app, user, &template).await;
    }
    // A user who refused holds nothing and is no holder.
    app.fake.reject(APPID, "o-refuser", &template);
    let answer = create(
        &app,
        json!({"template_id": template, "data": data_401(), "page": "pages/index",
            "audience": "holders"}),
    )
    .await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.body["recipients"], 12);
    assert_eq!(answer.body["state"], "running");
    assert_eq!(answer.body["channel"], "subscribe");
    let id = answer.body["id"].as_str().unwrap().to_owned();

    let done = drain(&app, &[&app.broadcasts], &id).await;
    assert_eq!(done["state"], "finished");
    assert_eq!(done["sent"], 12);
    assert_eq!(done["remaining"], 0);
    assert_eq!(done["no_credential"], 0);
    assert!(done["first_send_at"].is_string());
    let delivered = deliveries(&app);
    assert_eq!(delivered.len(), 12);
    assert!(delivered.values().all(|count| *count == 1), "{delivered:?}");
    let lines = results(&app, &id).await;
    assert_eq!(lines.len(), 12);
    assert!(lines.iter().all(|line| line["state"] == "sent"));
    // Each recipient's message is an ordinary message of the ledger.
    let message = app.message(lines[0]["message_id"].as_str().unwrap()).await;
    assert_eq!(message.body["status"], "sent");
    // Every grant was spent once: a second broadcast has no holder.
    let again = create(
        &app,
        json!({"template_id": template, "data": data_401(), "audience": "holders"}),
    )
    .await;
    assert_eq!(again.body["recipients"], 0);
    let listed = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{APPID}/broadcasts"),
            Some(SEND_KEY),
            None,
        )
        .await;
    assert_eq!(listed.body["broadcasts"].as_array().unwrap().len(), 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_list_with_its_own_data_reports_who_holds_nothing(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app).await;
    accept(&app, "o-ann", &template).await;
    accept(&app, "o-ben", &template).await;
    let mine = json!({"thing1": {"value": "Ann's mug"}, "character_string2": {"value": "SN1"}});
    let answer = create(
        &app,
        json!({"template_id": template, "data": data_401(), "audience": {"recipients": [
            {"openid": "o-ann", "data": mine},
            {"openid": "o-ben"},
            {"openid": "o-nobody"},
            {"openid": "o-ben"},
        ]}}),
    )
    .await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(
        answer.body["recipients"], 3,
        "a repeated user is one recipient"
    );
    let id = answer.body["id"].as_str().unwrap().to_owned();
    let done = drain(&app, &[&app.broadcasts], &id).await;
    assert_eq!(done["sent"], 2);
    assert_eq!(done["no_credential"], 1);
    let sends = app.fake.subscribe_sends();
    let ann = sends.iter().find(|send| send.touser == "o-ann").unwrap();
    assert!(
        format!("{:?}", ann.data).contains("Ann's mug"),
        "{:?}",
        ann.data
    );
    let lines = results(&app, &id).await;
    let states: Vec<&str> = lines.iter().map(|l| l["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["sent", "sent", "no_credential"]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn bad_input_is_refused_before_anything_is_recorded(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app).await;
    accept(&app, "o-ann", &template).await;
    let cases = [
        (
            json!({"template_id": template, "data": {"thing1": {"value": "x"}}, "audience": "holders"}),
            422,
            "invalid_template_data",
        ),
        (
            json!({"template_id": template, "data": data_401(), "audience": {"openids": []}}),
            422,
            "invalid_field",
        ),
        (
            json!({"template_id": template, "data": data_401(), "audience": {"openids": ["has space"]}}),
            422,
            "invalid_field",
        ),
        (
            json!({"template_id": template, "data": data_401(), "audience": "holders", "send_at": "tomorrow"}),
            422,
            "invalid_field",
        ),
        (
            json!({"template_id": template, "data": data_401(), "audience": "everyone"}),
            400,
            "invalid_json",
        ),
        (
            json!({"template_id": template, "data": data_401(), "audience": "holders", "touser": "o-ann"}),
            400,
            "invalid_json",
        ),
        (
            json!({"template_id": template, "data": data_401(), "audience": {"recipients": [
            {"openid": "o-ann"}, {"openid": "o-ann", "data": {"thing1": {"value": "x"}}}]}}),
            422,
            "invalid_field",
        ),
    ];
    for (body, status, code) in cases {
        let answer = create(&app, body.clone()).await;
        assert_eq!(answer.status, status, "{body}: {:?}", answer.body);
        assert_eq!(answer.body["error"]["code"], code, "{body}");
    }
    let listed = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{APPID}/broadcasts"),
            Some(SEND_KEY),
            None,
        )
        .await;
    assert_eq!(listed.body["broadcasts"], json!([]));
    // Another app's key sees no broadcast of this app.
    let other = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{APPID}/broadcasts"),
            Some(OTHER_APP_KEY),
            None,
        )
        .await;
    assert_eq!(other.status, 403);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn send_at_holds_the_job_and_commands_steer_it(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app).await;
    for user in ["o-a", "o-b", "o-c"] {
        accept(&app, user, &template).await;
    }
    let at = chrono::DateTime::from_timestamp_millis(app.now_ms() + 3_600_000).unwrap();
    let answer = create(
        &app,
        json!({"template_id": template, "data": data_401(), "audience": "holders",
            "send_at": at.to_rfc3339()}),
    )
    .await;
    assert_eq!(answer.body["state"], "scheduled");
    let id = answer.body["id"].as_str().unwrap().to_owned();
    assert_eq!(app.broadcasts.run_once().await.unwrap(), 0);
    assert!(app.fake.subscribe_sends().is_empty());
    // Paused while scheduled: its time comes and nothing is sent.
    assert_eq!(command(&app, &id, "pause").await.body["state"], "paused");
    app.advance(Duration::hours(2));
    assert_eq!(app.broadcasts.run_once().await.unwrap(), 0);
    assert!(app.fake.subscribe_sends().is_empty());
    let resumed = command(&app, &id, "resume").await;
    assert_eq!(resumed.body["state"], "running");
    let done = drain(&app, &[&app.broadcasts], &id).await;
    assert_eq!(done["sent"], 3);
    // A finished job takes no command.
    let refused = command(&app, &id, "cancel").await;
    assert_eq!(refused.status, 409);
    assert_eq!(refused.body["error"]["code"], "broadcast_state");

    // A cancelled job: its queued recipients are cancelled, nothing sent.
    for user in ["o-d", "o-e"] {
        accept(&app, user, &template).await;
    }
    let second = create(
        &app,
        json!({"template_id": template, "data": data_401(), "audience": "holders"}),
    )
    .await;
    let second_id = second.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        command(&app, &second_id, "cancel").await.body["state"],
        "cancelled"
    );
    let ended = drain(&app, &[&app.broadcasts], &second_id).await;
    assert_eq!(ended["state"], "cancelled");
    assert_eq!(ended["cancelled"], 2);
    assert_eq!(deliveries(&app).len(), 3);
    let missing = command(&app, "no-such-id", "pause").await;
    assert_eq!(missing.status, 404);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn quota_45009_pauses_the_job_until_midnight_china_time(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app).await;
    let users: Vec<String> = (0..6).map(|n| format!("o-q{n}")).collect();
    for user in &users {
        accept(&app, user, &template).await;
    }
    app.fake.set_daily_subscribe_quota(APPID, 3);
    let answer = create(
        &app,
        json!({"template_id": template, "data": data_401(), "audience": "holders"}),
    )
    .await;
    let id = answer.body["id"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        app.broadcasts.run_once().await.unwrap();
        app.advance(Duration::seconds(1));
    }
    let paused = progress(&app, &id).await;
    assert_eq!(paused["state"], "paused", "{paused}");
    assert_eq!(paused["pause_reason"], "quota");
    assert_eq!(paused["sent"], 3);
    assert_eq!(
        paused["remaining"], 3,
        "the rest wait, not failed: {paused}"
    );
    assert_eq!(paused["failed"], json!({}));
    // Past midnight China time the quota is back and the job goes on.
    app.advance(Duration::hours(25));
    let done = drain(&app, &[&app.broadcasts], &id).await;
    assert_eq!(done["sent"], 6);
    assert_eq!(deliveries(&app).len(), 6);
    assert!(deliveries(&app).values().all(|count| *count == 1));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn two_instances_share_a_job_without_a_second_notification(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["broadcasts"] = json!({"batch": 4, "rate_per_sec": 1000});
    })
    .await;
    let sibling = spawn_sibling_with(&app, |settings| {
        settings["broadcasts"] = json!({"batch": 4, "rate_per_sec": 1000});
    })
    .await;
    let template = one_time_template(&app).await;
    let users: Vec<String> = (0..40).map(|n| format!("o-two-{n:02}")).collect();
    for user in &users {
        accept(&app, user, &template).await;
    }
    let answer = create(
        &app,
        json!({"template_id": template, "data": data_401(), "audience": "holders"}),
    )
    .await;
    let id = answer.body["id"].as_str().unwrap().to_owned();
    let done = drain(&app, &[&app.broadcasts, &sibling.broadcasts], &id).await;
    assert_eq!(done["sent"], 40);
    let delivered = deliveries(&app);
    assert_eq!(delivered.len(), 40);
    assert!(delivered.values().all(|count| *count == 1), "{delivered:?}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_recipient_taken_over_after_a_crash_is_resolved_not_resent(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app).await;
    for user in ["o-c1", "o-c2", "o-c3"] {
        accept(&app, user, &template).await;
    }
    let answer = create(
        &app,
        json!({"template_id": template, "data": data_401(), "audience": "holders"}),
    )
    .await;
    let id = answer.body["id"].as_str().unwrap().to_owned();
    // An instance leases the batch and dies after the first recipient's
    // send started (its message recorded and a grant claimed).
    let now = app.now_ms();
    let lease = RecipientLease {
        broadcast_id: &id,
        token: 77,
        now,
        lease_until: now + 60_000,
        max_batch: 64,
    };
    app.storage.lease_recipients(&lease).await.unwrap();
    let message_id = formid_gateway::ledger::broadcast::message_id(&id, 1, 0);
    let held = new_lease(message_id.clone());
    let claimed = app
        .storage
        .start_send(&StartSend {
            message: NewMessage {
                id: message_id.clone(),
                appid: APPID.into(),
                touser: "o-c1".into(),
                template_id: template.clone(),
                payload: json!({"template_id": template, "touser": "o-c1", "data": data_401()})
                    .to_string(),
                status: MessageStatus::Pending,
                delivery: Delivery::AtMostOnce,
                wait_until: None,
                lease_until: now + 120_000,
                lease_token: held.token,
                channel: Channel::Subscribe,
                reference: None,
                idempotency_key: None,
            },
            valid_after: now,
            now,
        })
        .await
        .unwrap();
    assert!(claimed.is_some(), "the dead instance claimed a grant");
    // Until its lease runs out, nobody touches its recipients.
    assert_eq!(app.broadcasts.run_once().await.unwrap(), 0);
    // Then the ledger's recovery resolves the send (a grant is never probed:
    // unknown), and the broadcast reads it instead of sending again.
    app.advance(Duration::seconds(200));
    app.recovery.run_once().await.unwrap();
    let done = drain(&app, &[&app.broadcasts], &id).await;
    assert_eq!(done["sent"], 2, "{done}");
    assert_eq!(done["unknown"], 1, "{done}");
    assert!(
        !deliveries(&app).contains_key("o-c1"),
        "never sent twice (nor once here)"
    );
    let lines = results(&app, &id).await;
    assert_eq!(lines[0]["message_id"], message_id);
    assert_eq!(lines[0]["state"], "unknown");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn an_ndjson_upload_lists_the_recipients(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = one_time_template(&app).await;
    accept(&app, "o-up1", &template).await;
    accept(&app, "o-up2", &template).await;
    let head = json!({"template_id": template, "data": data_401(), "audience": "upload"});
    let body = format!(
        "{head}\n\"o-up1\"\n\n{}\n\"o-up3\"\n",
        json!({"openid": "o-up2", "data": {"thing1": {"value": "Yours"}, "character_string2": {"value": "SN2"}}})
    );
    let response = app
        .client
        .post(app.url(&format!("/v1/apps/{APPID}/broadcasts")))
        .bearer_auth(SEND_KEY)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["recipients"], 3, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let done = drain(&app, &[&app.broadcasts], &id).await;
    assert_eq!(done["sent"], 2);
    assert_eq!(done["no_credential"], 1);
    // A first line that is not an upload's is refused, nothing recorded.
    let refused = app
        .client
        .post(app.url(&format!("/v1/apps/{APPID}/broadcasts")))
        .bearer_auth(SEND_KEY)
        .header("content-type", "application/x-ndjson")
        .body(format!(
            "{}\n\"o-up1\"\n",
            json!({"template_id": template, "audience": "holders"})
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_and_a_cancelled_job_each_report_broadcast_finished_once(
    #[case] backend: Backend,
) {
    use crate::webhooks::{create_endpoint, deliver_all, spawn_webhook_app, Receiver};
    let app = spawn_webhook_app(backend).await;
    let receiver = Receiver::start(&[]).await;
    let wanted = Some(&["broadcast.finished"][..]);
    assert_eq!(
        create_endpoint(&app, &receiver.url, wanted).await.status,
        201
    );
    let template = one_time_template(&app).await;
    accept(&app, "o-bf-1", &template).await;
    let finished = create(
        &app,
        json!({"template_id": template, "data": data_401(), "audience": "holders"}),
    )
    .await;
    let finished = finished.body["id"].as_str().unwrap().to_owned();
    assert_eq!(drain(&app, &[&app.broadcasts], &finished).await["sent"], 1);
    let later = chrono::DateTime::from_timestamp_millis(app.now_ms() + 3_600_000)
        .unwrap()
        .to_rfc3339();
    let cancelled = create(
        &app,
        json!({"template_id": template, "data": data_401(),
            "audience": {"openids": ["o-bf-2"]}, "send_at": later}),
    )
    .await;
    assert_eq!(cancelled.status, 202, "{:?}", cancelled.body);
    let cancelled = cancelled.body["id"].as_str().unwrap().to_owned();
    assert_eq!(command(&app, &cancelled, "cancel").await.status, 200);
    drain(&app, &[&app.broadcasts], &cancelled).await;
    // More steps of the worker write nothing more.
    app.broadcasts.run_once().await.unwrap();
    deliver_all(&app).await;
    // Events without a user are not ordered: read them by the job they name.
    let mut events: Vec<(String, Value)> = receiver
        .received()
        .iter()
        .map(|event| (event.id.clone(), event.json()))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    let position = |id: &str| usize::from(id != finished.as_str());
    events.sort_by_key(|(_, body)| position(body["data"]["detail"].as_str().unwrap_or_default()));
    for ((event_id, body), (id, state)) in events
        .iter()
        .zip([(&finished, "finished"), (&cancelled, "cancelled")])
    {
        assert_eq!(body["type"], "broadcast.finished");
        assert_eq!(body["data"]["detail"], id.as_str());
        assert_eq!(body["data"]["status"], state);
        assert_eq!(body["data"]["template_id"], template.as_str());
        assert_eq!(event_id, &format!("evt_broadcast_{id}"));
    }
}
