//! The template catalogue through the gateway: templates of both
//! channels added, listed, refreshed and deleted against the fake; WeChat's
//! refusals mapped; the public libraries browsed; the audit linter; keys and
//! scopes.

use reqwest::Method;
use rstest::rstest;
use serde_json::{json, Value};

use formid_gateway::ledger::states::Channel;
use formid_gateway::ledger::templates::{check_send, SendParts};

use crate::helpers::*;

fn templates_path() -> String {
    format!("/v1/apps/{APPID}/templates")
}

impl TestApp {
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call(method, path, Some(ADMIN_KEY), body).await
    }

    async fn add_template(&self, body: Value) -> Answer {
        self.admin(Method::POST, &templates_path(), Some(body))
            .await
    }

    async fn list_templates(&self, query: &str) -> Vec<Value> {
        let answer = self
            .admin(Method::GET, &format!("{}{query}", templates_path()), None)
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        answer.body["templates"].as_array().unwrap().clone()
    }

    /// An admin GET of an app path that must answer 200.
    async fn get_ok(&self, path: &str) -> Value {
        let answer = self
            .admin(Method::GET, &format!("/v1/apps/{APPID}{path}"), None)
            .await;
        assert_eq!(answer.status, 200, "{path}: {:?}", answer.body);
        answer.body
    }

    async fn lint(&self, key: &str, body: Value) -> Answer {
        self.call(Method::POST, "/v1/template-lint", Some(key), Some(body))
            .await
    }
}

fn ids(templates: &[Value]) -> Vec<&str> {
    templates
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect()
}

fn assert_error(answer: &Answer, status: u16, code: &str, errcode: Option<i64>) {
    assert_eq!(answer.status, status, "{:?}", answer.body);
    assert_eq!(answer.body["error"]["code"], code, "{:?}", answer.body);
    match errcode {
        Some(errcode) => assert_eq!(
            answer.body["error"]["wechat_errcode"], errcode,
            "{:?}",
            answer.body
        ),
        None => assert!(
            answer.body["error"].get("wechat_errcode").is_none(),
            "{:?}",
            answer.body
        ),
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_template_is_added_listed_checked_and_deleted(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let added = app
        .add_template(json!({"channel": "subscribe", "tid": 401, "keyword_ids": [1, 2, 3], "scene_desc": "订单发货后"}))
        .await;
    assert_eq!(added.status, 201, "{:?}", added.body);
    let template = &added.body;
    let id = template["id"].as_str().unwrap().to_owned();
    assert_eq!(template["channel"], "subscribe");
    assert_eq!(template["title"], "订单发货提醒");
    assert_eq!(template["type"], "one_time");
    assert_eq!(
        template["placeholders"],
        json!([
            {"name": "thing1", "type": "thing"},
            {"name": "character_string2", "type": "character_string"},
            {"name": "time3", "type": "time"},
        ])
    );
    assert!(template["content"]
        .as_str()
        .unwrap()
        .contains("{{thing1.DATA}}"));
    // WeChat knows it; the ledger lists it.
    assert_eq!(ids(&app.list_templates("").await), [id.as_str()]);

    // 200022: the same combination again is the same template, a success.
    let again = app
        .add_template(json!({"channel": "subscribe", "tid": 401, "keyword_ids": [1, 2, 3]}))
        .await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_eq!(again.body["id"], id.as_str());

    // The read the send path makes, and the checks it runs before claiming.
    let stored = app
        .storage
        .template(APPID, &id)
        .await
        .unwrap()
        .expect("stored");
    let catalogue = stored.to_catalogue();
    let data = json!({"thing1": {"value": "咖啡"}, "character_string2": {"value": "SN1"}, "time3": {"value": "15:01"}});
    let parts = SendParts {
        channel: Channel::Subscribe,
        data: data.as_object(),
        page: Some("pages/order/detail?id=1"),
        emphasis_keyword: None,
        color: None,
    };
    assert_eq!(check_send(&catalogue, &parts), Ok(()));
    let data = json!({"thing1.DATA": {"value": "咖啡"}, "character_string2": {"value": "SN1"}, "time3": {"value": "15:01"}});
    let error = check_send(
        &catalogue,
        &SendParts {
            data: data.as_object(),
            ..parts
        },
    )
    .unwrap_err();
    assert_eq!(
        (error.field.as_str(), error.rule),
        ("data.thing1.DATA", "data_suffix")
    );

    let deleted = app
        .admin(Method::DELETE, &format!("{}/{id}", templates_path()), None)
        .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert!(app.list_templates("").await.is_empty());
    assert!(app.storage.template(APPID, &id).await.unwrap().is_none());
    // Gone at WeChat too: a refresh finds nothing.
    assert!(app.list_templates("?refresh=true").await.is_empty());
    // Deleting it again: neither stored nor listed.
    let again = app
        .admin(Method::DELETE, &format!("{}/{id}", templates_path()), None)
        .await;
    assert_error(&again, 404, "unknown_template", None);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_template_is_added_listed_and_deleted(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    // The documentation's own example: AT0002 with keywords 3, 4, 5
    // (docs/wechat/template-messages.md, "The classic template library").
    let added = app
        .add_template(
            json!({"channel": "template", "library_id": "AT0002", "keyword_ids": [3, 4, 5]}),
        )
        .await;
    assert_eq!(added.status, 201, "{:?}", added.body);
    let id = added.body["id"].as_str().unwrap().to_owned();
    assert_eq!(added.body["channel"], "template");
    assert_eq!(added.body["title"], "购买成功通知");
    assert_eq!(added.body["type"], "one_time");
    assert_eq!(
        added.body["content"],
        "购买地点{{keyword1.DATA}}\n购买时间{{keyword2.DATA}}\n物品名称{{keyword3.DATA}}\n"
    );
    assert_eq!(
        added.body["placeholders"],
        json!([
            {"name": "keyword1", "type": "keyword"},
            {"name": "keyword2", "type": "keyword"},
            {"name": "keyword3", "type": "keyword"},
        ])
    );
    // Both channels side by side.
    app.add_template(json!({"channel": "subscribe", "tid": 99, "keyword_ids": [1, 2]}))
        .await;
    let listed = app.list_templates("").await;
    assert_eq!(listed.len(), 2);
    assert_eq!(app.list_templates("?channel=template").await.len(), 1);
    assert_eq!(
        app.list_templates("?channel=subscribe").await[0]["channel"],
        "subscribe"
    );

    let deleted = app
        .admin(Method::DELETE, &format!("{}/{id}", templates_path()), None)
        .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    let left = app.list_templates("?refresh=true").await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["channel"], "subscribe");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rereads_wechat_and_a_refused_token_is_refreshed_once(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    // Added in WeChat's console, not through the gateway: a long-term one.
    let id = app
        .fake
        .add_subscribe_template(APPID, 5001, &[1, 2, 3])
        .unwrap();
    assert!(app.list_templates("").await.is_empty());
    // The catalogue is read with the app's token; an invalidated one is
    // refreshed (compare-and-refresh) and the call made again, once.
    app.list_templates("?refresh=true&channel=subscribe").await;
    let fetches = app.fake.token_fetches(APPID);
    app.fake.invalidate_tokens(APPID);
    let listed = app.list_templates("?refresh=true").await;
    assert_eq!(app.fake.token_fetches(APPID), fetches + 1);
    assert_eq!(ids(&listed), [id.as_str()]);
    assert_eq!(listed[0]["type"], "long_term");
    assert_eq!(listed[0]["title"], "上课提醒");
    assert_eq!(
        listed[0]["placeholders"][2],
        json!({"name": "name3", "type": "name"})
    );
    // What the send path runs after a 40037: a refresh on its own task, once
    // per app within 30 s however many sends ask.
    let other = app
        .fake
        .add_subscribe_template(APPID, 1209, &[1, 2])
        .unwrap();
    let before = app.fake.manage_calls().len();
    for _ in 0..5 {
        app.catalogue.refresh_in_background(APPID);
    }
    let mut waited = 0;
    while app.storage.template(APPID, &other).await.unwrap().is_none() {
        assert!(waited < 100, "the background refresh never stored {other}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // One refresh: one classic page and one gettemplate.
    assert_eq!(
        app.fake.manage_calls().len() - before,
        2,
        "{:?}",
        app.fake.manage_calls()
    );
    formid_gateway::templates::refresh_catalogue(&app.catalogue, APPID)
        .await
        .unwrap();
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_refusals_come_back_with_their_errcode_and_nothing_is_stored(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    // 200014: no such public title.
    let answer = app
        .add_template(json!({"channel": "subscribe", "tid": 999, "keyword_ids": [1, 2]}))
        .await;
    assert_error(&answer, 422, "invalid_tid", Some(200014));
    // 200020: keywords not of that title.
    let answer = app
        .add_template(json!({"channel": "subscribe", "tid": 99, "keyword_ids": [1, 42]}))
        .await;
    assert_error(&answer, 422, "invalid_keyword_ids", Some(200020));
    // 45075: a keyword id the library title does not have.
    let answer = app
        .add_template(json!({"channel": "template", "library_id": "AT0003", "keyword_ids": [1, 9]}))
        .await;
    assert_error(&answer, 422, "invalid_keyword_ids", Some(45075));
    // 40037: no such library title.
    let answer = app
        .admin(
            Method::GET,
            &format!("/v1/apps/{APPID}/template-library/AT9999?channel=template"),
            None,
        )
        .await;
    assert_error(&answer, 404, "unknown_template", Some(40037));
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no template or library title"));
    // 200012: 25 subscribe templates already.
    let mut pairs = Vec::new();
    for first in 1..=12u32 {
        for second in first + 1..=12 {
            pairs.push([first, second]);
        }
    }
    for pair in &pairs[..25] {
        app.fake.add_subscribe_template(APPID, 401, pair).unwrap();
    }
    let answer = app
        .add_template(json!({"channel": "subscribe", "tid": 401, "keyword_ids": pairs[25]}))
        .await;
    assert_error(&answer, 409, "template_limit_reached", Some(200012));
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("25"));
    assert!(app.list_templates("").await.is_empty(), "nothing stored");
    // -1: the classic library since the retirement.
    app.fake.set_retired(true);
    let answer = app
        .admin(
            Method::GET,
            &format!("/v1/apps/{APPID}/template-library?channel=template"),
            None,
        )
        .await;
    assert_error(&answer, 503, "wechat_busy", Some(-1));
    // A secret or token never reaches the answer.
    let token = app.fake.current_token(APPID).unwrap();
    assert!(!answer.body.to_string().contains(&token));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_wechat_is_asked(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let bodies = [
        (
            json!({"channel": "subscribe", "tid": 401, "keyword_ids": [1]}),
            422,
            "invalid_keyword_ids",
        ),
        (
            json!({"channel": "subscribe", "tid": 401, "keyword_ids": [1, 2, 3, 4, 5, 6]}),
            422,
            "invalid_keyword_ids",
        ),
        (
            json!({"channel": "subscribe", "tid": 401, "keyword_ids": [1, 1]}),
            422,
            "invalid_keyword_ids",
        ),
        (
            json!({"channel": "subscribe", "tid": 401, "keyword_ids": [1, 2], "scene_desc": "一二三四五六七八九十一二三四五六"}),
            422,
            "invalid_scene_desc",
        ),
        (
            json!({"channel": "subscribe", "tid": 0, "keyword_ids": [1, 2]}),
            422,
            "invalid_tid",
        ),
        (
            json!({"channel": "subscribe", "tid": "401", "keyword_ids": [1, 2]}),
            422,
            "invalid_field",
        ),
        (
            json!({"channel": "subscribe", "tid": 401, "kidList": [1, 2]}),
            422,
            "invalid_field",
        ),
        (
            json!({"channel": "template", "library_id": "AT0002", "keyword_ids": []}),
            422,
            "invalid_keyword_ids",
        ),
        (
            json!({"channel": "template", "library_id": "AT0002", "keyword_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}),
            422,
            "invalid_keyword_ids",
        ),
        (
            json!({"channel": "template", "library_id": "", "keyword_ids": [3]}),
            422,
            "invalid_library_id",
        ),
        (
            json!({"channel": "template", "library_id": "AT0002", "keyword_ids": [3], "tid": 1}),
            422,
            "invalid_field",
        ),
        (
            json!({"channel": "sms", "tid": 401, "keyword_ids": [1, 2]}),
            422,
            "invalid_channel",
        ),
        (
            json!({"tid": 401, "keyword_ids": [1, 2]}),
            422,
            "invalid_channel",
        ),
        (json!([1, 2]), 400, "invalid_json"),
    ];
    for (body, status, code) in bodies {
        let answer = app.add_template(body.clone()).await;
        assert_error(&answer, status, code, None);
        let _ = body;
    }
    let queries = [
        (
            "/template-library?channel=template&count=21",
            422,
            "invalid_paging",
        ),
        (
            "/template-library?channel=template&count=0",
            422,
            "invalid_paging",
        ),
        (
            "/template-library?channel=subscribe&category_ids=2&limit=31",
            422,
            "invalid_paging",
        ),
        (
            "/template-library?channel=subscribe",
            422,
            "invalid_category_ids",
        ),
        (
            "/template-library?channel=subscribe&category_ids=2,x",
            422,
            "invalid_category_ids",
        ),
        (
            "/template-library?channel=subscribe&category_ids=2&count=5",
            400,
            "invalid_query",
        ),
        ("/template-library", 422, "invalid_channel"),
        (
            "/template-library?channel=template&channel=subscribe",
            400,
            "invalid_query",
        ),
        (
            "/template-library/abc?channel=subscribe",
            422,
            "invalid_tid",
        ),
        (
            "/template-library/categories?channel=template",
            422,
            "invalid_channel",
        ),
        ("/templates?refresh=yes", 400, "invalid_query"),
        ("/templates?page=2", 400, "invalid_query"),
    ];
    for (query, status, code) in queries {
        let answer = app
            .admin(Method::GET, &format!("/v1/apps/{APPID}{query}"), None)
            .await;
        assert_eq!(answer.status, status, "{query}: {:?}", answer.body);
        assert_eq!(
            answer.body["error"]["code"], code,
            "{query}: {:?}",
            answer.body
        );
    }
    assert!(
        app.fake.manage_calls().is_empty(),
        "{:?}",
        app.fake.manage_calls()
    );
    assert!(app.list_templates("").await.is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_libraries_are_browsed(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let page = app
        .get_ok("/template-library?channel=template&offset=1&count=2")
        .await;
    assert_eq!(page["total_count"], 5);
    assert_eq!(
        page["titles"],
        json!([{"id": "AT0003", "title": "购买失败通知"}, {"id": "AT0004", "title": "交易提醒"}])
    );
    let entry = app
        .get_ok("/template-library/AT0002?channel=template")
        .await;
    assert_eq!(entry["title"], "购买成功通知");
    let keyword3 = entry["keywords"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == 3)
        .unwrap();
    assert_eq!(
        *keyword3,
        json!({"id": 3, "name": "购买地点", "example": "TIT造舰厂"})
    );
    let categories = app.get_ok("/template-library/categories").await;
    assert!(categories["categories"]
        .as_array()
        .unwrap()
        .contains(&json!({"id": 616, "name": "公交"})));
    let titles = app
        .get_ok("/template-library?channel=subscribe&category_ids=8,616&start=0&limit=30")
        .await;
    assert_eq!(titles["total_count"], 3);
    let long_term: Vec<&Value> = titles["titles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "long_term")
        .collect();
    assert_eq!(long_term.len(), 2, "{titles:?}");
    let keywords = app.get_ok("/template-library/99?channel=subscribe").await;
    assert_eq!(
        keywords["keywords"][0],
        json!({"id": 1, "name": "付款金额", "example": "¥12.50", "type": "amount"})
    );
    // Browsing stores nothing.
    assert!(app.list_templates("").await.is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_linter_judges_the_documents_examples_without_calling_wechat(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    // The documents' own template (004: AT0002, 购买成功通知) passes.
    let draft = json!({
        "title": "购买成功通知",
        "keywords": [
            {"name": "购买地点", "example": "TIT造舰厂"},
            {"name": "购买时间", "example": "2016年6月6日"},
            {"name": "物品名称", "example": "咖啡"},
        ],
    });
    let answer = app.lint(ADMIN_KEY, draft.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["errors"], 0, "{:?}", answer.body);
    // 2.5's own example ("内容" is too broad), 1.3 and 1.6 on a marketing title.
    let answer = app
        .lint(
            ADMIN_KEY,
            json!({"title": "红包", "keywords": [{"name": "内容", "example": "恭喜"}]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let rules: Vec<&str> = answer.body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    for rule in ["1.3", "1.6", "2.5"] {
        assert!(rules.contains(&rule), "{rule} in {rules:?}");
    }
    let finding = &answer.body["findings"][0];
    assert!(finding["severity"] == "error" || finding["severity"] == "warning");
    assert!(finding["message"].as_str().unwrap().len() > 20);

    // With an appid: the app's stored titles (1.1).
    app.add_template(
        json!({"channel": "template", "library_id": "AT0002", "keyword_ids": [3, 4, 5]}),
    )
    .await;
    let calls = app.fake.manage_calls().len();
    let mut with_app = draft.clone();
    with_app["appid"] = APPID.into();
    let answer = app.lint(ADMIN_KEY, with_app).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["compared_with"], 1);
    assert_eq!(answer.body["findings"][0]["rule"], "1.1");
    assert_eq!(answer.body["findings"][0]["severity"], "error");
    assert_eq!(
        app.fake.manage_calls().len(),
        calls,
        "the linter never calls WeChat"
    );

    // Bad drafts.
    for body in [
        json!({"title": ""}),
        json!({"title": "购买成功通知", "keywords": [{"name": "a"}]}),
        json!({"title": "购买成功通知", "extra": 1}),
        json!({"title": "好".repeat(65)}),
    ] {
        let answer = app.lint(ADMIN_KEY, body).await;
        assert_error(&answer, 422, "invalid_draft", None);
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_key_of_the_app_manages_its_templates(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let add = json!({"channel": "subscribe", "tid": 401, "keyword_ids": [1, 2]});
    let routes = [
        (Method::GET, templates_path(), None),
        (Method::POST, templates_path(), Some(add.clone())),
        (
            Method::DELETE,
            format!("{}/some-template", templates_path()),
            None,
        ),
        (
            Method::GET,
            format!("/v1/apps/{APPID}/template-library?channel=template"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/apps/{APPID}/template-library/categories"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/apps/{APPID}/template-library/AT0002?channel=template"),
            None,
        ),
    ];
    for (method, path, body) in &routes {
        let none = app.call(method.clone(), path, None, body.clone()).await;
        assert_error(&none, 401, "missing_api_key", None);
        let wrong = app
            .call(method.clone(), path, Some("not-a-key"), body.clone())
            .await;
        assert_error(&wrong, 401, "invalid_api_key", None);
        for key in [SEND_KEY, COLLECT_KEY, TOKEN_KEY, OTHER_APP_KEY] {
            let refused = app
                .call(method.clone(), path, Some(key), body.clone())
                .await;
            assert_error(&refused, 403, "forbidden", None);
        }
    }
    let unknown = app
        .call(
            Method::GET,
            "/v1/apps/wxunknown00000000/templates",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_error(&unknown, 404, "unknown_app", None);
    // The linter: admin only, and an appid the key may not manage is refused.
    let draft = json!({"title": "订单发货提醒", "keywords": []});
    assert_error(
        &app.lint(SEND_KEY, draft.clone()).await,
        403,
        "forbidden",
        None,
    );
    let none = app
        .call(Method::POST, "/v1/template-lint", None, Some(draft.clone()))
        .await;
    assert_error(&none, 401, "missing_api_key", None);
    let mut unknown_app = draft.clone();
    unknown_app["appid"] = "wxunknown00000000".into();
    assert_error(
        &app.lint(ADMIN_KEY, unknown_app).await,
        404,
        "unknown_app",
        None,
    );
    assert!(app.fake.manage_calls().is_empty());
}
