//! The fake's message push (docs/wechat/message-push.md) against a tiny
//! receiver: every mode and format, signatures, encryption (opened with the
//! fake's own crypto), retries, and the events the user controls and the
//! subscribe send emit.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

use common::*;
use fake_wechat::push_crypto as crypto;
use fake_wechat::{PopupChoice, PushEvent, PushFormat, PushMode, PushTarget, SentResult};

const TOKEN: &str = "push-token";
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

#[derive(Clone, Debug)]
struct Received {
    query: HashMap<String, String>,
    body: String,
    content_type: String,
}

/// A receiver that records every request, sleeps `hang` on the first
/// `hang_first` of them, then answers `success`.
#[derive(Clone)]
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
    hang_first: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(hang_first: usize, hang: Duration) -> Self {
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let hang_first = Arc::new(AtomicUsize::new(hang_first));
        let (s, h) = (seen.clone(), hang_first.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/wechat/push/{APP}",
            listener.local_addr().unwrap()
        );
        let server = HttpServer::new(move || {
            let (s, h) = (s.clone(), h.clone());
            App::new().route(
                "/wechat/push/{appid}",
                web::post().to(move |req: HttpRequest, body: web::Bytes| {
                    let (s, h) = (s.clone(), h.clone());
                    async move {
                        let query =
                            web::Query::<HashMap<String, String>>::from_query(req.query_string())
                                .unwrap()
                                .into_inner();
                        s.lock().unwrap().push(Received {
                            query,
                            body: String::from_utf8(body.to_vec()).unwrap(),
                            content_type: req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned(),
                        });
                        let hang_now = h
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        if hang_now {
                            tokio::time::sleep(hang).await;
                        }
                        HttpResponse::Ok().body("success")
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Self {
            url,
            seen,
            hang_first,
        }
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

fn target(url: &str, mode: PushMode, format: PushFormat) -> PushTarget {
    let mut t = PushTarget::new(url, TOKEN, KEY, mode, format);
    t.timeout = Duration::from_millis(300);
    t.sent_event_delay = Duration::from_millis(10);
    t
}

/// Checks the signatures of a received push as a developer's server must,
/// and returns the document it carries (decrypted when encrypted).
fn open(r: &Received, mode: PushMode) -> String {
    let q = |k: &str| r.query.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(
        crypto::sign(&[TOKEN, q("timestamp"), q("nonce")]),
        q("signature"),
        "signature"
    );
    if mode == PushMode::Plain {
        assert!(!r.query.contains_key("encrypt_type"));
        assert!(!r.query.contains_key("msg_signature"));
        assert!(!r.body.contains("Encrypt"));
        return r.body.clone();
    }
    assert_eq!(q("encrypt_type"), "aes");
    let encrypt = if r.body.starts_with('<') {
        let start = r.body.find("<Encrypt><![CDATA[").unwrap() + "<Encrypt><![CDATA[".len();
        let end = start + r.body[start..].find("]]>").unwrap();
        r.body[start..end].to_owned()
    } else {
        let v: Value = serde_json::from_str(&r.body).unwrap();
        v["Encrypt"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        crypto::sign(&[TOKEN, q("timestamp"), q("nonce"), &encrypt]),
        q("msg_signature"),
        "msg_signature"
    );
    let (message, appid) = crypto::decrypt(&crypto::aes_key(KEY).unwrap(), &encrypt).unwrap();
    assert_eq!(appid, APP);
    String::from_utf8(message).unwrap()
}

fn two_choices() -> PushEvent {
    PushEvent::Popup {
        openid: USER.into(),
        items: vec![
            PopupChoice {
                template_id: "T1".into(),
                status: "accept".into(),
            },
            PopupChoice {
                template_id: "T2".into(),
                status: "reject".into(),
            },
        ],
    }
}

#[tokio::test]
async fn every_mode_and_format_is_signed_encrypted_and_shaped_as_documented() {
    let h = harness().await;
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let now_secs = (START_MS / 1000).to_string();
    for format in [PushFormat::Xml, PushFormat::Json] {
        for mode in [PushMode::Plain, PushMode::Compatible, PushMode::Safe] {
            h.fake()
                .set_push_target(APP, target(&receiver.url, mode, format))
                .unwrap();
            let record = h.fake().push_event(APP, two_choices()).await.unwrap();
            assert_eq!(record.attempts, 1);
            assert!(record.acknowledged(), "{record:?}");
            let r = receiver.seen().pop().unwrap();
            assert_eq!(r.body, record.body);
            assert_eq!(r.query["timestamp"], now_secs);
            assert_eq!(r.query["openid"], USER);
            let doc = open(&r, mode);
            match format {
                PushFormat::Xml => {
                    assert_eq!(r.content_type, "text/xml");
                    assert!(r.body.starts_with("<xml>"));
                    for part in [
                        "<FromUserName><![CDATA[o-user-1]]></FromUserName>",
                        "<ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>",
                        &format!("<CreateTime>{now_secs}</CreateTime>"),
                        "<Event><![CDATA[subscribe_msg_popup_event]]></Event>",
                        "<SubscribeMsgPopupEvent><List><TemplateId><![CDATA[T1]]></TemplateId><SubscribeStatusString><![CDATA[accept]]></SubscribeStatusString><PopupScene>0</PopupScene></List><List><TemplateId><![CDATA[T2]]></TemplateId>",
                    ] {
                        assert!(doc.contains(part), "{mode:?}: {part} not in {doc}");
                    }
                }
                PushFormat::Json => {
                    assert_eq!(r.content_type, "application/json");
                    let v: Value = serde_json::from_str(&doc).unwrap();
                    assert_eq!(v["FromUserName"], USER);
                    assert_eq!(v["CreateTime"], json!(START_MS / 1000));
                    assert_eq!(v["Event"], "subscribe_msg_popup_event");
                    assert_eq!(v["List"][1]["TemplateId"], "T2");
                    assert_eq!(v["List"][0]["PopupScene"], "0");
                }
            }
            // What travels beside the cipher.
            match mode {
                PushMode::Safe => assert!(!r.body.contains("FromUserName"), "{}", r.body),
                PushMode::Compatible => assert!(r.body.contains("FromUserName")),
                PushMode::Plain => {}
            }
        }
    }
    assert_eq!(h.fake().pushes().len(), 6);
    h.server.stop().await;
}

#[tokio::test]
async fn a_single_item_list_is_an_object_in_json() {
    let h = harness().await;
    let receiver = Receiver::start(0, Duration::ZERO).await;
    h.fake()
        .set_push_target(APP, target(&receiver.url, PushMode::Safe, PushFormat::Json))
        .unwrap();
    let event = PushEvent::Sent {
        openid: USER.into(),
        items: vec![SentResult {
            template_id: "T1".into(),
            msgid: 1_700_827_132_819_554_305,
            error_code: 0,
            error_status: "success".into(),
        }],
    };
    h.fake().push_event(APP, event).await.unwrap();
    let doc = open(&receiver.seen()[0], PushMode::Safe);
    let v: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(v["List"]["MsgID"], "1700827132819554305");
    assert_eq!(v["List"]["ErrorCode"], "0");
    assert_eq!(v["Event"], "subscribe_msg_sent_event");
    h.server.stop().await;
}

#[tokio::test]
async fn an_unanswered_push_is_tried_three_times_in_all_with_the_same_request() {
    let h = harness().await;
    // The first two tries get no answer within the 300 ms timeout.
    let receiver = Receiver::start(2, Duration::from_secs(2)).await;
    h.fake()
        .set_push_target(APP, target(&receiver.url, PushMode::Safe, PushFormat::Xml))
        .unwrap();
    let record = h.fake().push_event(APP, two_choices()).await.unwrap();
    assert_eq!(record.attempts, 3);
    assert!(record.acknowledged());
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|r| r.body == seen[0].body && r.query == seen[0].query));

    // Never answered: 3 tries, then WeChat gives up.
    receiver.hang_first.store(3, Ordering::SeqCst);
    let record = h.fake().push_event(APP, two_choices()).await.unwrap();
    assert_eq!(record.attempts, 3);
    assert_eq!(record.status, None);
    assert!(record.error.is_some());
    assert!(!record.acknowledged());
    assert_eq!(receiver.seen().len(), 6);

    // Nobody listening at all: connection refused, 3 tries.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x", closed.local_addr().unwrap());
    drop(closed);
    h.fake()
        .set_push_target(APP, target(&url, PushMode::Plain, PushFormat::Json))
        .unwrap();
    let record = h.fake().push_event(APP, two_choices()).await.unwrap();
    assert_eq!((record.attempts, record.status), (3, None));
    h.server.stop().await;
}

#[tokio::test]
async fn user_actions_and_delivered_sends_push_their_events() {
    let h = harness().await;
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let token = h.token().await;
    let tpl = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    // No target yet: nothing is pushed.
    h.fake().grant(APP, USER, &tpl);
    assert!(h
        .fake()
        .wait_for_pushes(0, Duration::from_secs(1))
        .await
        .is_empty());

    h.fake()
        .set_push_target(
            APP,
            target(&receiver.url, PushMode::Compatible, PushFormat::Json),
        )
        .unwrap();
    let base = format!("/fake/apps/{APP}/users/{USER}/grants/{tpl}");
    for action in ["accept", "reject"] {
        let r = h
            .http
            .post(h.url(&format!("{base}/{action}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        h.fake().wait_for_pushes(1, Duration::from_secs(5)).await;
    }
    // The delivered send: its msgid comes back in the sent event.
    let answer = h.subscribe(&token, order_msg(USER, &tpl)).await;
    assert_eq!(code(&answer), 0, "{answer}");
    let msgid = answer["msgid"].as_u64().unwrap();
    h.fake().wait_for_pushes(3, Duration::from_secs(5)).await;
    // A refused send pushes nothing (only async delivery failures do).
    h.fake()
        .push_sent_outcomes([(10_001, "system failed".to_owned())]);
    let r = h
        .http
        .post(h.url(&format!("{base}/revoke")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, 43101);
    let pushes = h.fake().wait_for_pushes(4, Duration::from_secs(5)).await;

    let docs: Vec<Value> = receiver
        .seen()
        .iter()
        .map(|r| serde_json::from_str(&open(r, PushMode::Compatible)).unwrap())
        .collect();
    assert_eq!(docs.len(), 4, "{pushes:?}");
    assert_eq!(docs[0]["Event"], "subscribe_msg_popup_event");
    assert_eq!(docs[0]["List"]["SubscribeStatusString"], "accept");
    assert_eq!(docs[0]["List"]["TemplateId"], tpl.as_str());
    assert_eq!(docs[1]["List"]["SubscribeStatusString"], "reject");
    assert_eq!(docs[2]["Event"], "subscribe_msg_sent_event");
    assert_eq!(docs[2]["List"]["MsgID"], msgid.to_string());
    assert_eq!(docs[2]["List"]["ErrorCode"], "0");
    assert_eq!(docs[2]["List"]["ErrorStatus"], "success");
    assert_eq!(docs[3]["Event"], "subscribe_msg_change_event");
    assert_eq!(docs[3]["List"]["SubscribeStatusString"], "reject");
    assert!(docs.iter().all(|d| d["FromUserName"] == USER));

    // The queued failure goes to the next delivered send.
    h.fake().grant(APP, USER, &tpl);
    assert_eq!(code(&h.subscribe(&token, order_msg(USER, &tpl)).await), 0);
    let pushes = h.fake().wait_for_pushes(6, Duration::from_secs(5)).await;
    assert_eq!(pushes.len(), 6);
    let last = pushes.iter().find(
        |p| matches!(&p.event, PushEvent::Sent { items, .. } if items[0].error_code == 10_001),
    );
    assert!(last.is_some(), "{pushes:?}");
    h.server.stop().await;
}

#[tokio::test]
async fn the_http_controls_configure_push_and_show_no_secret() {
    let h = harness().await;
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let url = h.url(&format!("/fake/apps/{APP}/push_target"));
    let bad = h
        .http
        .put(&url)
        .json(&json!({"url": receiver.url, "token": TOKEN, "encoding_aes_key": "short", "mode": "safe", "format": "xml"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(h.http.get(&url).send().await.unwrap().status(), 404);
    let push = |body: Value| {
        h.http
            .post(h.url(&format!("/fake/apps/{APP}/push")))
            .json(&body)
            .send()
    };
    assert_eq!(
        push(json!({"event":"change","openid":USER,"template_ids":["T9"]}))
            .await
            .unwrap()
            .status(),
        404
    );

    let ok = h
        .http
        .put(&url)
        .json(
            &json!({"url": receiver.url, "token": TOKEN, "encoding_aes_key": KEY,
            "mode": "safe", "format": "json", "timeout_ms": 500, "attempts": 2}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let shown = ok.text().await.unwrap();
    assert!(!shown.contains(TOKEN) && !shown.contains(KEY), "{shown}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["attempts"], 2);
    assert_eq!(shown["mode"], "safe");
    assert!(!format!("{:?}", h.fake().push_target(APP).unwrap()).contains(KEY));

    let record: Value = push(json!({"event":"change","openid":USER,"template_ids":["T9"]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["status"], 200);
    assert_eq!(record["answer"], "success");
    let doc: Value = serde_json::from_str(&open(&receiver.seen()[0], PushMode::Safe)).unwrap();
    assert_eq!(doc["Event"], "subscribe_msg_change_event");
    assert_eq!(doc["List"]["TemplateId"], "T9");

    let all: Value = h
        .http
        .get(h.url("/fake/pushes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(all[0]["event"]["event"], "change");

    let gone = h.http.delete(&url).send().await.unwrap();
    assert_eq!(gone.status(), 204);
    assert!(h.fake().push_target(APP).is_none());
    h.server.stop().await;
}
