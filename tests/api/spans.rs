//! Worker steps run inside spans that name what they work on (the app and the
//! message), and never a credential's value or a token.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::helpers::*;

/// Log lines written on this thread while the guard lives.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

// The worker steps are awaited on the test's own thread, so a thread-local
// subscriber sees everything they log (the HTTP server's threads are not
// captured; the request id test covers those).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_message_is_resumed_inside_spans_naming_it() {
    let app = spawn_app(Backend::Sqlite).await;
    let answer = app
        .send(json!({"touser": "o-span", "template_id": TEMPLATE, "wait_seconds": 600}))
        .await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    let id = answer.body["id"].as_str().unwrap().to_owned();
    let form_id = app.collect_form_id("o-span").await;

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let resumed = {
        let _guard = tracing::subscriber::set_default(subscriber);
        app.waiting.run_once().await.unwrap()
    };
    assert_eq!(resumed, 1);
    assert_eq!(app.message(&id).await.body["status"], "sent");

    let text = captured.text();
    let line = text
        .lines()
        .find(|l| l.contains("waiting message"))
        .unwrap_or_else(|| panic!("no line for the message: {text}"));
    assert!(
        line.contains(&format!(
            "waiting{{due=1}}:resume{{appid={APPID} message_id={id}}}"
        )),
        "{line}"
    );
    assert!(
        !text.contains(&form_id),
        "a credential value in the log: {text}"
    );
    let token = app
        .fake
        .current_token(APPID)
        .expect("the send fetched a token");
    assert!(!text.contains(&token), "a token in the log: {text}");
}
