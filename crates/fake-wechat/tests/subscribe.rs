//! `POST /cgi-bin/message/subscribe/send` over HTTP: grants, long-term
//! subscriptions, the value rules, errcodes, `msgid`, faults and the user
//! controls.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;
use fake_wechat::{Fault, GrantUse, SubscribeGrants};

fn grants(one_time: u32, long_term: bool) -> SubscribeGrants {
    SubscribeGrants {
        one_time,
        long_term,
    }
}

#[tokio::test]
async fn grants_accumulate_and_each_delivered_send_spends_one() {
    let h = harness().await;
    let token = h.token().await;
    let tpl = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, 40003);

    for _ in 0..3 {
        h.fake().grant(APP, USER, &tpl);
    }
    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(3, false));
    for left in [2, 1, 0] {
        let v = h.subscribe(&token, order_msg(USER, &tpl)).await;
        assert_eq!(code(&v), 0, "{v}");
        assert_eq!(errmsg(&v), "ok");
        assert_eq!(
            h.fake().subscribe_grants(APP, USER, &tpl),
            grants(left, false)
        );
    }
    let v = h.subscribe(&token, order_msg(USER, &tpl)).await;
    assert_eq!(code(&v), 43101);
    assert_errmsg(&v, "user refuse to accept the msg");
    assert!(v.get("msgid").is_none());

    let sends = h.fake().subscribe_sends();
    let used: Vec<Option<GrantUse>> = sends.iter().map(|s| s.grant_used).collect();
    assert_eq!(
        used,
        vec![
            None,
            Some(GrantUse::OneTime),
            Some(GrantUse::OneTime),
            Some(GrantUse::OneTime),
            None
        ]
    );
    assert_eq!(sends[4].errcode, 43101);
    assert!(!sends[4].delivered());
    assert_eq!(sends[1].appid.as_deref(), Some(APP));
    assert_eq!(sends[1].data["thing1"]["value"], "咖啡");
    assert_eq!(sends[1].miniprogram_state, "formal");
    h.server.stop().await;
}

#[tokio::test]
async fn a_grant_pays_only_for_its_own_template_user_and_app() {
    let h = harness().await;
    let token = h.token().await;
    let t1 = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    let t2 = h.add_subscribe_template(&token, 401, &[1, 2, 3]).await;
    h.fake().grant(APP, USER, &t1);
    h.fake().register_user(APP, USER2);

    let mut m = order_msg(USER, &t2);
    m["data"]["time3"] = json!({"value": "15:01"});
    assert_eq!(
        h.subscribe_code(&token, m).await,
        43101,
        "T1's grant for T2"
    );
    assert_eq!(
        h.subscribe_code(&token, order_msg(USER2, &t1)).await,
        43101,
        "USER's grant for USER2"
    );
    // Another app with its own template and the same openid string.
    let token2 = h.token_for(APP2, SECRET2).await;
    let t_app2 = h.add_subscribe_template(&token2, 401, &[1, 2]).await;
    h.fake().register_user(APP2, USER);
    assert_eq!(
        h.subscribe_code(&token2, order_msg(USER, &t_app2)).await,
        43101
    );
    // APP's template id is unknown to APP2.
    assert_eq!(h.subscribe_code(&token2, order_msg(USER, &t1)).await, 40037);

    assert_eq!(h.fake().subscribe_grants(APP, USER, &t1), grants(1, false));
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &t1)).await, 0);
    h.server.stop().await;
}

#[tokio::test]
async fn long_term_is_not_consumed_and_revoke_turns_it_off() {
    let h = harness().await;
    let token = h.token().await;
    // 5002 乘车提醒 is a long-term title (type 3).
    let tpl = h.add_subscribe_template(&token, 5002, &[1, 3]).await;
    let msg = json!({
        "touser": USER,
        "template_id": tpl,
        "data": {"thing1": {"value": "1路"}, "time3": {"value": "07:30"}},
    });
    h.fake().register_user(APP, USER);
    assert_eq!(h.subscribe_code(&token, msg.clone()).await, 43101);

    // An accept of a long-term template switches it on, no counter.
    h.fake().grant(APP, USER, &tpl);
    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(0, true));
    for _ in 0..5 {
        assert_eq!(h.subscribe_code(&token, msg.clone()).await, 0);
    }
    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(0, true));
    assert!(h
        .fake()
        .subscribe_sends()
        .iter()
        .skip(1)
        .all(|s| s.grant_used == Some(GrantUse::LongTerm)));

    h.fake().revoke(APP, USER, &tpl);
    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(0, false));
    assert_eq!(h.subscribe_code(&token, msg.clone()).await, 43101);

    // Switched on again by the user.
    h.fake().grant_long_term(APP, USER, &tpl);
    assert_eq!(h.subscribe_code(&token, msg).await, 0);
    h.server.stop().await;
}

#[tokio::test]
async fn revoke_drops_the_remaining_one_time_grants_until_a_new_accept() {
    let h = harness().await;
    let token = h.token().await;
    let tpl = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    for _ in 0..4 {
        h.fake().grant(APP, USER, &tpl);
    }
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, 0);
    h.fake().revoke(APP, USER, &tpl);
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, 43101);
    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(0, false));
    h.fake().grant(APP, USER, &tpl);
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, 0);
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, 43101);
    h.server.stop().await;
}

#[tokio::test]
async fn msgid_is_a_json_number_above_2_53_that_a_double_cannot_hold() {
    let h = harness().await;
    let token = h.token().await;
    let tpl = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    h.fake().grant(APP, USER, &tpl);
    h.fake().grant(APP, USER, &tpl);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let text = h
            .post_raw(
                SUBSCRIBE_PATH,
                &token,
                "application/json",
                order_msg(USER, &tpl).to_string().into_bytes(),
            )
            .await
            .text()
            .await
            .unwrap();
        // The wire form: `"msgid":1700827132819554305`, a bare number
        // (docs/wechat/subscribe-messages.md, "The send").
        let digits: String = text
            .split("\"msgid\":")
            .nth(1)
            .expect("msgid present")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let id: u64 = digits.parse().unwrap();
        assert!(id > 1 << 53, "{id}");
        assert_ne!(id as f64 as u64, id, "a double would round {id}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["msgid"].as_u64(), Some(id));
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    let recorded: Vec<Option<u64>> = h.fake().subscribe_sends().iter().map(|s| s.msgid).collect();
    assert_eq!(recorded, vec![Some(ids[0]), Some(ids[1])]);
    h.server.stop().await;
}

#[tokio::test]
async fn request_errors_never_spend_a_grant() {
    let h = harness().await;
    let token = h.token().await;
    let tpl = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    h.fake().grant(APP, USER, &tpl);
    h.fake().register_user(APP2, "o-app2-only");

    // 40003: unknown, empty, another app's openid.
    for who in ["o-stranger", "", "o-app2-only"] {
        let v = h.subscribe(&token, order_msg(who, &tpl)).await;
        assert_eq!(code(&v), 40003, "{who}");
        assert_errmsg(&v, "invalid openid");
    }
    // 40037: unknown, missing, a classic template id.
    let v = h.subscribe(&token, order_msg(USER, "TPL-NOPE")).await;
    assert_eq!(code(&v), 40037);
    assert_errmsg(&v, "invalid template_id");
    let mut m = order_msg(USER, &tpl);
    m.as_object_mut().unwrap().remove("template_id");
    assert_eq!(h.subscribe_code(&token, m).await, 40037);
    h.fake().register_template(APP, "TPL-CLASSIC");
    assert_eq!(
        h.subscribe_code(&token, order_msg(USER, "TPL-CLASSIC"))
            .await,
        40037
    );
    // 41030: a leading slash.
    let mut m = order_msg(USER, &tpl);
    m["page"] = json!("/pages/index/index");
    assert_eq!(h.subscribe_code(&token, m).await, 41030);
    // 47003 on miniprogram_state and lang outside their values.
    for (field, bad) in [
        ("miniprogram_state", json!("production")),
        ("miniprogram_state", json!(1)),
        ("lang", json!("fr_FR")),
    ] {
        let mut m = order_msg(USER, &tpl);
        m[field] = bad;
        let v = h.subscribe(&token, m).await;
        assert_eq!(code(&v), 47003);
        assert_errmsg(&v, &format!("argument invalid! {field} invalid"));
    }
    // 47001 not JSON, 44002 empty, 43002 GET.
    for body in [&b"touser=x"[..], b"[1]", b"{\"touser\":"] {
        let v: Value = h
            .post_raw(SUBSCRIBE_PATH, &token, "application/json", body.to_vec())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(code(&v), 47001);
    }
    let v: Value = h
        .post_raw(SUBSCRIBE_PATH, &token, "application/json", Vec::new())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(code(&v), 44002);
    let v = h.get(SUBSCRIBE_PATH, &token, &[]).await;
    assert_eq!(code(&v), 43002);

    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(1, false));
    // Every allowed state and language, and page/state/lang left out.
    for (state, lang) in [
        ("developer", "en_US"),
        ("trial", "zh_HK"),
        ("formal", "zh_TW"),
    ] {
        h.fake().grant(APP, USER, &tpl);
        let mut m = order_msg(USER, &tpl);
        m["miniprogram_state"] = json!(state);
        m["lang"] = json!(lang);
        assert_eq!(h.subscribe_code(&token, m).await, 0, "{state} {lang}");
    }
    let mut m = order_msg(USER, &tpl);
    for f in ["page", "miniprogram_state", "lang"] {
        m.as_object_mut().unwrap().remove(f);
    }
    assert_eq!(h.subscribe_code(&token, m).await, 0);
    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(0, false));
    h.server.stop().await;
}

#[tokio::test]
async fn the_grant_is_checked_before_the_data() {
    let h = harness().await;
    let token = h.token().await;
    let tpl = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    h.fake().register_user(APP, USER);
    // `data` sent as a JSON string: 43101 without a grant, 47003 with one
    // (the two reports in docs/wechat/subscribe-messages.md, "The send's
    // errcodes").
    let mut m = order_msg(USER, &tpl);
    m["data"] = json!(m["data"].to_string());
    assert_eq!(h.subscribe_code(&token, m.clone()).await, 43101);
    h.fake().grant(APP, USER, &tpl);
    let v = h.subscribe(&token, m).await;
    assert_eq!(code(&v), 47003);
    assert_errmsg(&v, "argument invalid! data invalid");
    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(1, false));
    h.server.stop().await;
}

/// The table of value rules (docs/wechat/subscribe-messages.md, "Value rules
/// per placeholder type") through title 401, which has one keyword of each
/// type.
#[tokio::test]
async fn each_placeholder_type_is_checked_and_47003_names_the_field() {
    let h = harness().await;
    let token = h.token().await;
    // (kid, code, a good value, bad values)
    let table: &[(u32, &str, Value, &[Value])] = &[
        (
            1,
            "thing1",
            json!("粤海喜来登酒店"),
            &[json!("一二三四五六七八九十一二三四五六七八九十一")],
        ),
        (
            2,
            "character_string2",
            json!("SN-2024_0501"),
            &[json!("单号SN1"), json!("x".repeat(33))],
        ),
        (
            3,
            "time3",
            json!("2019年10月1日 15:01"),
            &[json!("2019年10月1日"), json!("25:00")],
        ),
        (
            4,
            "amount4",
            json!("¥88.00"),
            &[json!("¥12345678901"), json!("免费")],
        ),
        (
            5,
            "number5",
            json!(12.5),
            &[json!("12a"), json!("1".repeat(33))],
        ),
        (
            6,
            "name6",
            json!("张三"),
            &[json!("张三3"), json!("欧阳娜娜娜娜娜娜娜娜娜")],
        ),
        (
            7,
            "phone_number7",
            json!("+86-0766-66888866"),
            &[json!("+86-0766-668888661")],
        ),
        (
            8,
            "phrase8",
            json!("配送中"),
            &[json!("六个中文字哦"), json!("ok")],
        ),
        (
            9,
            "date9",
            json!("2019年10月1日~2019年10月7日"),
            &[json!("15:01"), json!("2023年2月29日")],
        ),
        (10, "letter10", json!("XL"), &[json!("X1")]),
        (11, "symbol11", json!("★★★"), &[json!("★★★★★★")]),
        (
            12,
            "car_number12",
            json!("粤A8Z888挂"),
            &[json!("粤A8Z888挂9")],
        ),
    ];
    h.fake().register_user(APP, USER);
    for chunk in table.chunks(4) {
        let kids: Vec<u32> = chunk.iter().map(|r| r.0).collect();
        let tpl = h.add_subscribe_template(&token, 401, &kids).await;
        let good: serde_json::Map<String, Value> = chunk
            .iter()
            .map(|(_, code, v, _)| ((*code).to_owned(), json!({ "value": v })))
            .collect();
        let msg = |data: serde_json::Map<String, Value>| json!({"touser": USER, "template_id": tpl, "data": data});
        h.fake().grant(APP, USER, &tpl);
        let v = h.subscribe(&token, msg(good.clone())).await;
        assert_eq!(code(&v), 0, "{kids:?}: {v}");

        h.fake().grant(APP, USER, &tpl);
        for (_, field, _, bads) in chunk {
            for bad in *bads {
                let mut data = good.clone();
                data.insert((*field).to_owned(), json!({ "value": bad }));
                let v = h.subscribe(&token, msg(data)).await;
                assert_eq!(code(&v), 47003, "{field} {bad}");
                assert_errmsg(&v, &format!("argument invalid! data.{field}.value invalid"));
            }
            // Missing, empty, null, the `.DATA` suffix: "is emtpy" (sic).
            let mut missing = good.clone();
            missing.remove(*field);
            let mut suffixed = missing.clone();
            suffixed.insert(format!("{field}.DATA"), good[*field].clone());
            let mut empty = good.clone();
            empty.insert((*field).to_owned(), json!({"value": ""}));
            let mut null = good.clone();
            null.insert((*field).to_owned(), json!({"value": null}));
            for data in [missing, suffixed, empty, null] {
                let v = h.subscribe(&token, msg(data)).await;
                assert_eq!(code(&v), 47003, "{field}");
                assert_errmsg(
                    &v,
                    &format!("argument invalid! data.{field}.value is emtpy"),
                );
            }
            let mut nested = good.clone();
            nested.insert((*field).to_owned(), json!({"value": {"v": 1}}));
            let v = h.subscribe(&token, msg(nested)).await;
            assert_errmsg(&v, &format!("argument invalid! data.{field}.value invalid"));
        }
        // None of that spent the grant; extra keys and colours are ignored.
        assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(1, false));
        let mut extra = good.clone();
        extra.insert("keyword9".into(), json!({"value": "x", "color": "#173177"}));
        assert_eq!(h.subscribe_code(&token, msg(extra)).await, 0);
    }
    let last = h.fake().subscribe_sends().pop().unwrap();
    assert!(last.delivered());
    h.server.stop().await;
}

#[tokio::test]
async fn token_errors_come_first_and_leave_faults_alone() {
    let h = harness().await;
    let token = h.token().await;
    let tpl = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    h.fake().grant(APP, USER, &tpl);
    h.fake().push_subscribe_faults([Fault::Errcode(-1)]);
    assert_eq!(h.subscribe_code("", order_msg(USER, &tpl)).await, 41001);
    assert_eq!(h.subscribe_code("junk", order_msg(USER, &tpl)).await, 40014);
    h.fake().invalidate_tokens(APP);
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, 40001);
    let token = h.token().await;
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, -1);
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, 0);
    let codes: Vec<i64> = h
        .fake()
        .subscribe_sends()
        .iter()
        .map(|s| s.errcode)
        .collect();
    assert_eq!(codes, vec![41001, 40014, 40001, -1, 0]);
    h.server.stop().await;
}

#[tokio::test]
async fn faults_lose_the_answer_before_or_after_processing() {
    let h = harness().await;
    let token = h.token().await;
    let tpl = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    for _ in 0..3 {
        h.fake().grant(APP, USER, &tpl);
    }
    // Template-send faults belong to the template send.
    h.fake().push_send_faults([Fault::Errcode(45011)]);
    h.fake().push_subscribe_faults([
        Fault::Errcode(-1),
        Fault::HttpStatus(502),
        Fault::Garbage,
        Fault::DeliverThenFail(500),
    ]);
    let v = h.subscribe(&token, order_msg(USER, &tpl)).await;
    assert_eq!(code(&v), -1);
    assert_errmsg(&v, "system error");
    let body = order_msg(USER, &tpl).to_string().into_bytes();
    for status in [502, 200, 500] {
        let resp = h
            .post_raw(SUBSCRIBE_PATH, &token, "application/json", body.clone())
            .await;
        assert_eq!(resp.status(), status);
        let text = resp.text().await.unwrap();
        assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    }
    // Lost before processing: grants kept; DeliverThenFail: one spent.
    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(2, false));
    let sends = h.fake().subscribe_sends();
    let rows: Vec<(i64, bool)> = sends.iter().map(|s| (s.errcode, s.delivered())).collect();
    assert_eq!(rows, vec![(-1, false), (-2, false), (-2, false), (0, true)]);
    assert!(sends[3].msgid.is_some());

    // Hang: processed on arrival, answered late.
    h.fake()
        .push_subscribe_faults([Fault::Hang(Duration::from_millis(400))]);
    let started = Instant::now();
    let result = h
        .http
        .post(h.url(SUBSCRIBE_PATH))
        .query(&[("access_token", token.as_str())])
        .json(&order_msg(USER, &tpl))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(1, false));
    assert!(h.fake().subscribe_sends()[4].delivered());
    h.server.stop().await;
}

#[tokio::test]
async fn daily_quota_answers_45009_until_china_midnight() {
    let h = harness().await;
    let token = h.token().await;
    let tpl = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    h.fake().set_daily_subscribe_quota(APP, 1);
    h.fake().grant(APP, USER, &tpl);
    h.fake().grant(APP, USER, &tpl);
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, 0);
    let v = h.subscribe(&token, order_msg(USER, &tpl)).await;
    assert_eq!(code(&v), 45009);
    assert_errmsg(&v, "reach max api daily quota limit");
    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(1, false));
    // 10:00 China time + 14 h = midnight.
    h.advance_ms(14 * 3_600_000);
    let token = h.token().await;
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, 0);
    h.server.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_sends_on_five_grants_deliver_five() {
    let h = harness().await;
    let token = h.token().await;
    let tpl = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    for _ in 0..5 {
        h.fake().grant(APP, USER, &tpl);
    }
    // Twenty clients at once, each on its own task.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (http, url, token) = (h.http.clone(), h.url(SUBSCRIBE_PATH), token.clone());
        let body = order_msg(USER, &tpl);
        set.spawn(async move {
            let resp = http
                .post(url)
                .query(&[("access_token", token)])
                .json(&body)
                .send()
                .await
                .unwrap();
            code(&resp.json::<Value>().await.unwrap())
        });
    }
    let codes = set.join_all().await;
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 5);
    assert_eq!(codes.iter().filter(|c| **c == 43101).count(), 15);
    assert_eq!(h.fake().subscribe_grants(APP, USER, &tpl), grants(0, false));
    let delivered = h
        .fake()
        .subscribe_sends()
        .iter()
        .filter(|s| s.delivered())
        .count();
    assert_eq!(delivered, 5);
    h.server.stop().await;
}

#[tokio::test]
async fn user_controls_over_http() {
    let h = harness().await;
    let token = h.token().await;
    let tpl = h.add_subscribe_template(&token, 401, &[1, 2]).await;
    let path = |action: &str| format!("/fake/apps/{APP}/users/{USER}/grants/{tpl}/{action}");
    let hr = &h;
    let post = |p: String| async move { hr.http.post(hr.url(&p)).send().await.unwrap() };
    for _ in 0..2 {
        let v: Value = post(path("accept")).await.json().await.unwrap();
        assert!(v["one_time"].as_u64().unwrap() > 0);
    }
    let v: Value = post(path("long_term")).await.json().await.unwrap();
    assert_eq!(v, json!({"one_time": 2, "long_term": true}));
    let v: Value = h
        .http
        .get(h.url(&format!("/fake/apps/{APP}/users/{USER}/grants/{tpl}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"one_time": 2, "long_term": true}));
    assert_eq!(h.subscribe_code(&token, order_msg(USER, &tpl)).await, 0);
    let v: Value = post(path("revoke")).await.json().await.unwrap();
    assert_eq!(v, json!({"one_time": 0, "long_term": false}));
    assert_eq!(post(path("shrug")).await.status(), 404);
    let resp = post(format!(
        "/fake/apps/wxnope/users/{USER}/grants/{tpl}/accept"
    ))
    .await;
    assert_eq!(resp.status(), 404);

    let sends: Vec<Value> = h
        .http
        .get(h.url("/fake/subscribe_sends"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0]["grant_used"], "long_term");
    assert_eq!(sends[0]["template_id"], tpl.as_str());
    assert!(sends[0]["msgid"].as_u64().unwrap() > 1 << 53);
    h.server.stop().await;
}
