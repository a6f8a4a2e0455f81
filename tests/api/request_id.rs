//! The request id of every HTTP answer: the caller's `X-Request-Id` echoed
//! when it is sane, a new UUID otherwise. (That the id reaches every log line
//! of the request is tested where the middleware lives, `src/api/request_id.rs`.)

use serde_json::json;

use crate::helpers::*;

async fn request_id(app: &TestApp, path: &str, sent: Option<&[u8]>) -> (u16, String) {
    let mut request = app
        .client
        .post(app.url(path))
        .bearer_auth(SEND_KEY)
        .json(&json!({"touser": "o-request-id", "template_id": TEMPLATE}));
    if let Some(sent) = sent {
        let value = reqwest::header::HeaderValue::from_bytes(sent).unwrap();
        request = request.header("X-Request-Id", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let ids: Vec<_> = response.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "one id per answer: {ids:?}");
    (status, ids[0].to_str().unwrap().to_owned())
}

fn is_uuid(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|u| u.hyphenated().to_string() == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_request_id_is_echoed_on_every_kind_of_answer() {
    let app = spawn_app(Backend::Sqlite).await;
    let send = format!("/v1/apps/{APPID}/messages");
    // 409 no_credential from the send path, 404 from an unknown route.
    let (status, id) = request_id(&app, &send, Some(b"order-1024-attempt-1")).await;
    assert_eq!((status, id.as_str()), (409, "order-1024-attempt-1"));
    let (status, id) = request_id(&app, "/nowhere", Some(b"a.b:c/d_e-f")).await;
    assert_eq!((status, id.as_str()), (404, "a.b:c/d_e-f"));
    let longest = "r".repeat(128);
    let (_, id) = request_id(&app, &send, Some(longest.as_bytes())).await;
    assert_eq!(id, longest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unfit_request_id_is_replaced_by_a_new_one() {
    let app = spawn_app(Backend::Sqlite).await;
    let send = format!("/v1/apps/{APPID}/messages");
    let (status, first) = request_id(&app, &send, None).await;
    assert_eq!(status, 409);
    assert!(is_uuid(&first), "{first}");
    let (_, second) = request_id(&app, &send, None).await;
    assert!(is_uuid(&second) && second != first, "{second}");

    let too_long = "r".repeat(129);
    let unfit: [&[u8]; 4] = [b"two words", b"", too_long.as_bytes(), b"caf\xc3\xa9"];
    for sent in unfit {
        let (status, id) = request_id(&app, &send, Some(sent)).await;
        assert_eq!(status, 409);
        assert!(
            is_uuid(&id),
            "{:?} gave {id}",
            String::from_utf8_lossy(sent)
        );
    }
}
