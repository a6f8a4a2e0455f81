//! Concurrent sends never spend one credential twice.

use std::collections::HashSet;

use rstest::rstest;

use crate::helpers::*;

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_sends_to_a_user_with_ten_form_ids_send_exactly_ten(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    let mut issued = HashSet::new();
    for _ in 0..10 {
        issued.insert(app.collect_form_id("o-popular").await);
    }
    // Warm the token so all 40 race on credentials, not on the first fetch.
    assert_eq!(app.access_token().await.status, 200);
    let app = std::sync::Arc::new(app);
    let sends = (0..40).map(|_| {
        let app = app.clone();
        tokio::spawn(async move { app.notify("o-popular").await })
    });
    let answers: Vec<Answer> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let sent = answers.iter().filter(|answer| answer.status == 200).count();
    let conflicts = answers
        .iter()
        .filter(|answer| answer.status == 409 && answer.body["error"]["code"] == "no_credential")
        .count();
    assert_eq!(
        (sent, conflicts),
        (10, 30),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    let delivered = app.delivered_form_ids();
    assert_eq!(delivered.len(), 10);
    let distinct: HashSet<String> = delivered.into_iter().collect();
    assert_eq!(distinct, issued, "every form_id used exactly once");
    assert!(
        app.fake.sends().iter().all(|send| send.errcode == 0),
        "no call was refused as a reuse"
    );
    assert_eq!(app.sends_available("o-popular").await, 0);
}
