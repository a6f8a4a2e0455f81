//! Template management over HTTP: the subscribe templates (`wxaapi/newtmpl/*`)
//! and the classic library (`cgi-bin/wxopen/template/*`), their limits and
//! errcodes.

mod common;

use serde_json::{json, Value};

use common::*;

const GETCATEGORY: &str = "/wxaapi/newtmpl/getcategory";
const TITLES: &str = "/wxaapi/newtmpl/getpubtemplatetitles";
const KEYWORDS: &str = "/wxaapi/newtmpl/getpubtemplatekeywords";
const ADD: &str = "/wxaapi/newtmpl/addtemplate";
const GET: &str = "/wxaapi/newtmpl/gettemplate";
const DEL: &str = "/wxaapi/newtmpl/deltemplate";
const LIB_LIST: &str = "/cgi-bin/wxopen/template/library/list";
const LIB_GET: &str = "/cgi-bin/wxopen/template/library/get";
const C_ADD: &str = "/cgi-bin/wxopen/template/add";
const C_LIST: &str = "/cgi-bin/wxopen/template/list";
const C_DEL: &str = "/cgi-bin/wxopen/template/del";

fn is_template_id(id: &str) -> bool {
    id.len() == 43
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

// ------------------------------------------------------------ newtmpl

#[tokio::test]
async fn categories_titles_and_keywords() {
    let h = harness().await;
    let token = h.token().await;
    let v = h.get(GETCATEGORY, &token, &[]).await;
    assert_eq!(code(&v), 0);
    assert!(v["data"]
        .as_array()
        .unwrap()
        .contains(&json!({"id": 616, "name": "公交"})));

    let v = h
        .get(
            TITLES,
            &token,
            &[("ids", "2,616"), ("start", "0"), ("limit", "30")],
        )
        .await;
    assert_eq!(code(&v), 0);
    let data = v["data"].as_array().unwrap();
    assert_eq!(v["count"].as_u64().unwrap() as usize, data.len());
    assert!(
        data.contains(&json!({"tid": 99, "title": "付款成功通知", "type": 2, "categoryId": "616"}))
    );
    assert!(data.iter().any(|t| t["type"] == 3), "a long-term title");
    assert!(data.iter().all(|t| t["categoryId"] != "8"));
    // Paging: count stays the total.
    let page = h
        .get(
            TITLES,
            &token,
            &[("ids", "2,616"), ("start", "1"), ("limit", "1")],
        )
        .await;
    assert_eq!(page["count"], v["count"]);
    assert_eq!(page["data"], json!([data[1]]));

    let cases: &[(&[(&str, &str)], i64)] = &[
        (&[("start", "0"), ("limit", "30")], 200018),
        (&[("ids", ""), ("start", "0"), ("limit", "30")], 200018),
        (&[("ids", "2,x"), ("start", "0"), ("limit", "30")], 200019),
        (&[("ids", "2"), ("limit", "30")], 200016),
        (&[("ids", "2"), ("start", "-1"), ("limit", "30")], 200016),
        (&[("ids", "2"), ("start", "0")], 200017),
        (&[("ids", "2"), ("start", "0"), ("limit", "0")], 200017),
        (&[("ids", "2"), ("start", "0"), ("limit", "31")], 200017),
    ];
    for (query, expected) in cases {
        let v = h.get(TITLES, &token, query).await;
        assert_eq!(code(&v), *expected, "{query:?}");
        assert!(errmsg(&v).contains(" rid: "));
    }

    let v = h.get(KEYWORDS, &token, &[("tid", "401")]).await;
    assert_eq!(code(&v), 0);
    assert_eq!(v["count"], 12);
    assert_eq!(
        v["data"][0],
        json!({"kid": 1, "name": "物品名称", "example": "名称", "rule": "thing"})
    );
    let rules: std::collections::HashSet<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules.len(), 12, "one keyword of every type: {rules:?}");
    for query in [&[("tid", "4")][..], &[("tid", "x")], &[]] {
        let v = h.get(KEYWORDS, &token, query).await;
        assert_eq!(code(&v), 200014, "{query:?}");
        assert_errmsg(&v, "tid does not exist");
    }
    h.server.stop().await;
}

#[tokio::test]
async fn addtemplate_is_form_encoded_and_checks_kidlist_and_scene_desc() {
    let h = harness().await;
    let token = h.token().await;
    let v = h
        .post_form(
            ADD,
            &token,
            &[
                ("tid", "401"),
                ("kidList", "3"),
                ("kidList", "1"),
                ("sceneDesc", "发货后通知买家"),
            ],
        )
        .await;
    assert_eq!(code(&v), 0, "{v}");
    let id = v["priTmplId"].as_str().unwrap().to_owned();
    assert!(is_template_id(&id), "{id}");

    let v = h.get(GET, &token, &[]).await;
    assert_eq!(code(&v), 0);
    assert_eq!(
        v["data"],
        json!([{
            "priTmplId": id,
            "title": "订单发货提醒",
            "content": "发货时间:{{time3.DATA}}\n物品名称:{{thing1.DATA}}\n",
            "example": "发货时间:2024年5月1日 10:00\n物品名称:名称\n",
            "type": 2,
        }])
    );

    // JSON is not supported: read as a form it has no tid.
    let v = h
        .post(
            ADD,
            &token,
            json!({"tid": 401, "kidList": [1, 2], "sceneDesc": "x"}),
        )
        .await;
    assert_eq!(code(&v), 200014);
    let fifteen = "一二三四五六七八九十一二三四五";
    let sixteen = "一二三四五六七八九十一二三四五六";
    let cases: &[(&[(&str, &str)], i64)] = &[
        (&[("tid", "4"), ("kidList", "1"), ("kidList", "2")], 200014),
        (&[("kidList", "1"), ("kidList", "2")], 200014),
        (&[("tid", "401"), ("kidList", "1")], 200020),
        (&[("tid", "401")], 200020),
        (
            &[("tid", "401"), ("kidList", "1"), ("kidList", "1")],
            200020,
        ),
        (
            &[("tid", "401"), ("kidList", "1"), ("kidList", "13")],
            200020,
        ),
        (
            &[("tid", "401"), ("kidList", "1"), ("kidList", "x")],
            200020,
        ),
        (
            &[
                ("tid", "401"),
                ("kidList", "1"),
                ("kidList", "2"),
                ("kidList", "3"),
                ("kidList", "4"),
                ("kidList", "5"),
                ("kidList", "6"),
            ],
            200020,
        ),
        (
            &[
                ("tid", "401"),
                ("kidList", "1"),
                ("kidList", "2"),
                ("sceneDesc", sixteen),
            ],
            200021,
        ),
    ];
    for (form, expected) in cases {
        let v = h.post_form(ADD, &token, form).await;
        assert_eq!(code(&v), *expected, "{form:?}");
        assert!(v.get("priTmplId").is_none());
    }
    // Five ids, fifteen characters: fine. A long-term title gives type 3.
    let five = [
        ("kidList", "1"),
        ("kidList", "2"),
        ("kidList", "3"),
        ("kidList", "4"),
        ("kidList", "5"),
    ];
    let mut form = vec![("tid", "401"), ("sceneDesc", fifteen)];
    form.extend(five);
    assert_eq!(code(&h.post_form(ADD, &token, &form).await), 0);
    h.add_subscribe_template(&token, 5002, &[1, 2]).await;
    let v = h.get(GET, &token, &[]).await;
    let types: Vec<&Value> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["type"])
        .collect();
    assert_eq!(types, vec![&json!(2), &json!(2), &json!(3)]);

    // Method: addtemplate is POST, gettemplate GET.
    assert_eq!(code(&h.get(ADD, &token, &[("tid", "401")]).await), 43002);
    assert_eq!(code(&h.post(GET, &token, json!({})).await), 43001);
    assert_eq!(code(&h.get(GET, "junk", &[]).await), 40014);
    h.server.stop().await;
}

#[tokio::test]
async fn addtemplate_again_answers_200022_with_the_latest_identical_id() {
    let h = harness().await;
    let token = h.token().await;
    let first = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    let form = [("tid", "401"), ("kidList", "1"), ("kidList", "2")];
    let v = h.post_form(ADD, &token, &form).await;
    assert_eq!(code(&v), 200022);
    assert_errmsg(&v, "template has added already");
    assert_eq!(v["priTmplId"], first.as_str());
    // The order of kidList makes another template.
    let reordered = h.add_subscribe_template(&token, 401, &[2, 1]).await;
    assert_ne!(reordered, first);
    // WeChat compares with the latest only: the first combination can be
    // added again after another one, as observed
    // (docs/wechat/subscribe-messages.md, "Template management").
    let again = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    assert_ne!(again, first);
    let v = h.get(GET, &token, &[]).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    // The Rust control follows the same rule and returns the id on 200022.
    assert_eq!(
        h.fake().add_subscribe_template(APP, 401, &[1, 2]),
        Ok(again)
    );
    assert_eq!(h.fake().add_subscribe_template(APP, 401, &[1]), Err(200020));
    h.server.stop().await;
}

#[tokio::test]
async fn twenty_five_subscribe_templates_then_200012_and_deltemplate() {
    let h = harness().await;
    let token = h.token().await;
    let mut ids = Vec::new();
    for i in 0..25 {
        // Alternate combinations: none is the latest of its title.
        let kids: &[u32] = if i % 2 == 0 { &[1, 2] } else { &[2, 1] };
        ids.push(h.add_subscribe_template(&token, 401, kids).await);
    }
    let v = h
        .post_form(
            ADD,
            &token,
            &[("tid", "99"), ("kidList", "1"), ("kidList", "2")],
        )
        .await;
    assert_eq!(code(&v), 200012);
    // Another account has its own 25.
    let token2 = h.token_for(APP2, SECRET2).await;
    h.add_subscribe_template(&token2, 99, &[1, 2]).await;

    // deltemplate: JSON body; an unknown id is 40037.
    let v = h.post(DEL, &token, json!({"priTmplId": ids[0]})).await;
    assert_eq!(code(&v), 0);
    assert_eq!(errmsg(&v), "ok");
    let v = h.post(DEL, &token, json!({"priTmplId": ids[0]})).await;
    assert_eq!(code(&v), 40037);
    assert_eq!(code(&h.post(DEL, &token, json!({})).await), 40037);
    // A form body works too.
    let v = h.post_form(DEL, &token, &[("priTmplId", &ids[1])]).await;
    assert_eq!(code(&v), 0);
    assert_eq!(code(&h.get(DEL, &token, &[]).await), 43002);

    let v = h.get(GET, &token, &[]).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 23);
    h.add_subscribe_template(&token, 99, &[1, 2]).await;

    // A deleted template no longer sends.
    h.fake().grant(APP, USER, &ids[0]);
    assert_eq!(
        h.subscribe_code(&token, order_msg(USER, &ids[0])).await,
        40037
    );
    h.fake().grant(APP, USER, &ids[2]);
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &ids[2])).await, 0);
    h.server.stop().await;
}

// ------------------------------------------------------------ classic

#[tokio::test]
async fn classic_library_list_and_get_as_documented() {
    let h = harness().await;
    let token = h.token().await;
    let v = h
        .post(LIB_LIST, &token, json!({"offset": 0, "count": 5}))
        .await;
    assert_eq!(code(&v), 0);
    assert_eq!(
        v["list"],
        json!([
            {"id": "AT0002", "title": "购买成功通知"},
            {"id": "AT0003", "title": "购买失败通知"},
            {"id": "AT0004", "title": "交易提醒"},
            {"id": "AT0005", "title": "付款成功通知"},
            {"id": "AT0006", "title": "付款失败通知"},
        ])
    );
    assert_eq!(v["total_count"], 5);
    let v = h
        .post(LIB_LIST, &token, json!({"offset": 4, "count": 20}))
        .await;
    assert_eq!(v["list"].as_array().unwrap().len(), 1);

    for body in [
        json!({"offset": 0, "count": 21}),
        json!({"offset": 0, "count": 0}),
        json!({"offset": 0}),
        json!({"offset": 0, "count": "5"}),
    ] {
        let v = h.post(LIB_LIST, &token, body.clone()).await;
        assert_eq!(code(&v), 45076, "{body}");
        assert_errmsg(&v, "invalid count");
    }
    assert_eq!(
        code(&h.post(LIB_LIST, &token, json!({"count": 5})).await),
        47001
    );
    let resp = h
        .post_raw(LIB_LIST, &token, "application/json", Vec::new())
        .await;
    assert_eq!(code(&resp.json::<Value>().await.unwrap()), 44002);
    assert_eq!(code(&h.get(LIB_LIST, &token, &[]).await), 43002);

    let v = h.post(LIB_GET, &token, json!({"id": "AT0002"})).await;
    assert_eq!(code(&v), 0);
    assert_eq!(v["id"], "AT0002");
    assert_eq!(v["title"], "购买成功通知");
    let kws = v["keyword_list"].as_array().unwrap();
    for doc in [
        json!({"keyword_id": 3, "name": "购买地点", "example": "TIT造舰厂"}),
        json!({"keyword_id": 4, "name": "购买时间", "example": "2016年6月6日"}),
        json!({"keyword_id": 5, "name": "物品名称", "example": "咖啡"}),
    ] {
        assert!(kws.contains(&doc), "{doc}");
    }
    assert_eq!(
        code(&h.post(LIB_GET, &token, json!({"id": "AT9999"})).await),
        40037
    );
    h.server.stop().await;
}

#[tokio::test]
async fn classic_add_list_del_with_their_limits() {
    let h = harness().await;
    let token = h.token().await;
    let v = h
        .post(
            C_ADD,
            &token,
            json!({"id": "AT0002", "keyword_id_list": [3, 4, 5]}),
        )
        .await;
    assert_eq!(code(&v), 0);
    let id = v["template_id"].as_str().unwrap().to_owned();
    assert!(is_template_id(&id), "{id}");

    let v = h
        .post(C_LIST, &token, json!({"offset": 0, "count": 1}))
        .await;
    assert_eq!(
        v["list"],
        json!([{
            "template_id": id,
            "title": "购买成功通知",
            "content": "购买地点{{keyword1.DATA}}\n购买时间{{keyword2.DATA}}\n物品名称{{keyword3.DATA}}\n",
            "example": "购买地点:TIT造舰厂\n购买时间:2016年6月6日\n物品名称:咖啡\n",
        }])
    );
    assert_eq!(
        code(
            &h.post(C_LIST, &token, json!({"offset": 0, "count": 21}))
                .await
        ),
        45076
    );

    let ten: Vec<u32> = (1..=10).collect();
    let eleven: Vec<u32> = (1..=11).collect();
    let cases = [
        (json!({"id": "AT0002", "keyword_id_list": eleven}), 45100),
        (json!({"id": "AT0002", "keyword_id_list": []}), 45100),
        (json!({"id": "AT0002"}), 45100),
        (json!({"id": "AT0002", "keyword_id_list": [3, 99]}), 45075),
        (json!({"id": "AT0002", "keyword_id_list": [3, 3]}), 45075),
        (json!({"id": "AT0002", "keyword_id_list": ["3"]}), 47001),
        (json!({"id": "AT9999", "keyword_id_list": [1]}), 40037),
    ];
    for (body, expected) in cases {
        let v = h.post(C_ADD, &token, body.clone()).await;
        assert_eq!(code(&v), expected, "{body}");
        assert!(v.get("template_id").is_none());
    }
    let v = h
        .post(
            C_ADD,
            &token,
            json!({"id": "AT0002", "keyword_id_list": ten}),
        )
        .await;
    assert_eq!(code(&v), 0, "ten keywords are allowed");
    let v = h
        .post(
            C_ADD,
            &token,
            json!({"id": "AT0002", "keyword_id_list": [5, 3, 4]}),
        )
        .await;
    assert_eq!(code(&v), 0, "order is free");

    // The added template sends through the (retired) template send.
    let f = h.fake().mint_form_id(APP, USER);
    let send = json!({"touser": USER, "template_id": id, "form_id": f});
    let path = "/cgi-bin/message/wxopen/template/send";
    assert_eq!(code(&h.post(path, &token, send.clone()).await), 0);

    // del, then the template is gone from the list and from the send.
    assert_eq!(
        code(&h.post(C_DEL, &token, json!({"template_id": id})).await),
        0
    );
    assert_eq!(
        code(&h.post(C_DEL, &token, json!({"template_id": id})).await),
        40037
    );
    let v = h
        .post(C_LIST, &token, json!({"offset": 0, "count": 20}))
        .await;
    assert_eq!(v["list"].as_array().unwrap().len(), 2);
    let f = h.fake().mint_form_id(APP, USER);
    let send = json!({"touser": USER, "template_id": id, "form_id": f});
    assert_eq!(code(&h.post(path, &token, send).await), 40037);

    // 25 templates at most: the 26th is 45026.
    for _ in 0..23 {
        let v = h
            .post(
                C_ADD,
                &token,
                json!({"id": "AT0003", "keyword_id_list": [1, 2]}),
            )
            .await;
        assert_eq!(code(&v), 0);
    }
    let v = h
        .post(
            C_ADD,
            &token,
            json!({"id": "AT0003", "keyword_id_list": [1, 2]}),
        )
        .await;
    assert_eq!(code(&v), 45026);
    assert_errmsg(&v, "template num exceeds limit");
    let v = h
        .post(C_LIST, &token, json!({"offset": 20, "count": 20}))
        .await;
    assert_eq!(
        v["list"].as_array().unwrap().len(),
        5,
        "the last page is short"
    );
    h.server.stop().await;
}

#[tokio::test]
async fn retired_library_list_answers_system_error() {
    let h = harness().await;
    let token = h.token().await;
    h.fake().set_retired(true);
    let v = h
        .post(LIB_LIST, &token, json!({"offset": 0, "count": 5}))
        .await;
    assert_eq!(code(&v), -1);
    assert_errmsg(&v, "system error");
    // Subscribe templates are not retired.
    assert_eq!(code(&h.get(GETCATEGORY, &token, &[]).await), 0);
    h.fake().set_retired(false);
    let v = h
        .post(LIB_LIST, &token, json!({"offset": 0, "count": 5}))
        .await;
    assert_eq!(code(&v), 0);
    h.server.stop().await;
}
