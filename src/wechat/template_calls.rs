//! The template-management calls of WeChat's two template systems, as one
//! enum the client sends ([`WeChatApi::manage_templates`](crate::wechat::WeChatApi)):
//!
//! * the classic template-message library, `cgi-bin/wxopen/template/*`
//!   (docs/wechat/template-messages.md, "The classic template library": all
//!   POST JSON, `count` ≤ 20, at most 10 keyword ids);
//! * the subscribe templates, `wxaapi/newtmpl/*`
//!   (docs/wechat/subscribe-messages.md, "Template management": the readers
//!   are GET, `addtemplate` is form-urlencoded, `deltemplate` JSON).
//!
//! The answers are WeChat's JSON, read by the typed readers below.

use serde::Deserialize;
use serde_json::Value;

/// `count` of `library/list` and `template/list`: at most 20.
pub const MAX_CLASSIC_COUNT: u32 = 20;
/// `keyword_id_list` of `template/add`: at most 10 ids.
pub const MAX_CLASSIC_KEYWORDS: usize = 10;
/// `limit` of `getpubtemplatetitles`: at most 30.
pub const MAX_TITLES_LIMIT: u32 = 30;
/// `kidList` of `addtemplate`: 2 to 5 keyword ids.
pub const KID_LIST_LEN: std::ops::RangeInclusive<usize> = 2..=5;
/// `sceneDesc` of `addtemplate`: at most 15 characters.
pub const MAX_SCENE_DESC: usize = 15;
/// The tids of the new one-time templates, added with an empty `kidList`.
pub const EMPTY_KID_LIST_TIDS: std::ops::Range<u32> = 10_000_001..20_000_000;
/// 200022 `template has added already`: `addtemplate` answers the existing
/// `priTmplId`; a success.
pub const ADDED_ALREADY: i64 = 200_022;

/// One template-management call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateCall {
    /// `POST cgi-bin/wxopen/template/library/list {offset, count}`.
    LibraryList { offset: u32, count: u32 },
    /// `POST cgi-bin/wxopen/template/library/get {id}`.
    LibraryGet { id: String },
    /// `POST cgi-bin/wxopen/template/add {id, keyword_id_list}`.
    ClassicAdd { id: String, keyword_ids: Vec<u32> },
    /// `POST cgi-bin/wxopen/template/list {offset, count}`.
    ClassicList { offset: u32, count: u32 },
    /// `POST cgi-bin/wxopen/template/del {template_id}`.
    ClassicDel { template_id: String },
    /// `GET wxaapi/newtmpl/getcategory`.
    GetCategory,
    /// `GET wxaapi/newtmpl/getpubtemplatetitles?ids=&start=&limit=`.
    GetPubTemplateTitles {
        category_ids: Vec<u32>,
        start: u32,
        limit: u32,
    },
    /// `GET wxaapi/newtmpl/getpubtemplatekeywords?tid=`.
    GetPubTemplateKeywords { tid: u32 },
    /// `POST wxaapi/newtmpl/addtemplate` (form: `tid`, `kidList` repeated, `sceneDesc`).
    AddTemplate {
        tid: u32,
        keyword_ids: Vec<u32>,
        scene_desc: String,
    },
    /// `GET wxaapi/newtmpl/gettemplate`.
    GetTemplate,
    /// `POST wxaapi/newtmpl/deltemplate {priTmplId}`.
    DelTemplate { pri_tmpl_id: String },
}

/// How a call goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Wire {
    /// A GET with these query parameters (the token is added by the client).
    Get(Vec<(&'static str, String)>),
    /// A POST with a JSON body.
    Json(Value),
    /// A POST with a form-urlencoded body.
    Form(Vec<(&'static str, String)>),
}

impl TemplateCall {
    /// The path WeChat serves it on.
    pub fn path(&self) -> &'static str {
        match self {
            Self::LibraryList { .. } => "/cgi-bin/wxopen/template/library/list",
            Self::LibraryGet { .. } => "/cgi-bin/wxopen/template/library/get",
            Self::ClassicAdd { .. } => "/cgi-bin/wxopen/template/add",
            Self::ClassicList { .. } => "/cgi-bin/wxopen/template/list",
            Self::ClassicDel { .. } => "/cgi-bin/wxopen/template/del",
            Self::GetCategory => "/wxaapi/newtmpl/getcategory",
            Self::GetPubTemplateTitles { .. } => "/wxaapi/newtmpl/getpubtemplatetitles",
            Self::GetPubTemplateKeywords { .. } => "/wxaapi/newtmpl/getpubtemplatekeywords",
            Self::AddTemplate { .. } => "/wxaapi/newtmpl/addtemplate",
            Self::GetTemplate => "/wxaapi/newtmpl/gettemplate",
            Self::DelTemplate { .. } => "/wxaapi/newtmpl/deltemplate",
        }
    }

    /// The API's name, for logs and error messages (never the URL).
    pub fn name(&self) -> &'static str {
        self.path()
            .trim_start_matches("/cgi-bin/wxopen/")
            .trim_start_matches("/wxaapi/")
    }

    /// The method and body (or query) of the call.
    pub fn wire(&self) -> Wire {
        use serde_json::json;
        match self {
            Self::LibraryList { offset, count } | Self::ClassicList { offset, count } => {
                Wire::Json(json!({"offset": offset, "count": count}))
            }
            Self::LibraryGet { id } => Wire::Json(json!({ "id": id })),
            Self::ClassicAdd { id, keyword_ids } => {
                Wire::Json(json!({"id": id, "keyword_id_list": keyword_ids}))
            }
            Self::ClassicDel { template_id } => Wire::Json(json!({ "template_id": template_id })),
            Self::GetCategory | Self::GetTemplate => Wire::Get(Vec::new()),
            Self::GetPubTemplateTitles {
                category_ids,
                start,
                limit,
            } => Wire::Get(vec![
                (
                    "ids",
                    category_ids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                ("start", start.to_string()),
                ("limit", limit.to_string()),
            ]),
            Self::GetPubTemplateKeywords { tid } => Wire::Get(vec![("tid", tid.to_string())]),
            // Form-urlencoded: WeChat's page refuses JSON here
            // (docs/wechat/subscribe-messages.md, "Template management"):
            // `tid=401&kidList=1&kidList=2&sceneDesc=…`.
            Self::AddTemplate {
                tid,
                keyword_ids,
                scene_desc,
            } => {
                let mut form = vec![("tid", tid.to_string())];
                form.extend(keyword_ids.iter().map(|kid| ("kidList", kid.to_string())));
                form.push(("sceneDesc", scene_desc.clone()));
                Wire::Form(form)
            }
            Self::DelTemplate { pri_tmpl_id } => Wire::Json(json!({ "priTmplId": pri_tmpl_id })),
        }
    }
}

/// WeChat's errcode and errmsg of an answer (a missing errcode is 0).
pub fn errcode_of(answer: &Value) -> (i64, String) {
    (
        answer.get("errcode").and_then(Value::as_i64).unwrap_or(0),
        answer
            .get("errmsg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    )
}

/// A title of the classic library (`library/list`).
#[derive(Debug, Clone, Deserialize)]
pub struct LibraryTitle {
    pub id: String,
    pub title: String,
}

/// A page of `library/list`.
#[derive(Debug, Clone, Deserialize)]
pub struct LibraryPage {
    #[serde(default)]
    pub list: Vec<LibraryTitle>,
    #[serde(default)]
    pub total_count: Option<u64>,
}

/// A keyword of a classic library title (`library/get`).
#[derive(Debug, Clone, Deserialize)]
pub struct LibraryKeyword {
    pub keyword_id: u32,
    pub name: String,
    #[serde(default)]
    pub example: String,
}

/// `library/get`.
#[derive(Debug, Clone, Deserialize)]
pub struct LibraryEntry {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub keyword_list: Vec<LibraryKeyword>,
}

/// A template of the classic personal library (`template/list`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClassicTemplate {
    pub template_id: String,
    pub title: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub example: String,
}

/// A page of `template/list`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClassicPage {
    #[serde(default)]
    pub list: Vec<ClassicTemplate>,
}

/// `template/add`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClassicAdded {
    pub template_id: String,
}

/// A category of the account (`getcategory`).
#[derive(Debug, Clone, Deserialize)]
pub struct Category {
    pub id: u32,
    pub name: String,
}

/// `getcategory`.
#[derive(Debug, Clone, Deserialize)]
pub struct Categories {
    #[serde(default)]
    pub data: Vec<Category>,
}

/// A public subscribe title (`getpubtemplatetitles`).
#[derive(Debug, Clone, Deserialize)]
pub struct PubTitle {
    pub tid: u32,
    pub title: String,
    /// 2 one-time, 3 long-term.
    #[serde(rename = "type")]
    pub kind: u8,
    /// A string on the wire (`"616"`), a number in some copies.
    #[serde(rename = "categoryId", default)]
    pub category_id: Option<Value>,
}

/// A page of `getpubtemplatetitles`.
#[derive(Debug, Clone, Deserialize)]
pub struct PubTitles {
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub data: Vec<PubTitle>,
}

/// A keyword of a public subscribe title (`getpubtemplatekeywords`).
#[derive(Debug, Clone, Deserialize)]
pub struct PubKeyword {
    pub kid: u32,
    pub name: String,
    #[serde(default)]
    pub example: String,
    /// The placeholder type (`thing`, `time`, …).
    #[serde(default)]
    pub rule: String,
}

/// `getpubtemplatekeywords`.
#[derive(Debug, Clone, Deserialize)]
pub struct PubKeywords {
    #[serde(default)]
    pub data: Vec<PubKeyword>,
}

/// `addtemplate` (also on 200022, with the existing id).
#[derive(Debug, Clone, Deserialize)]
pub struct SubscribeAdded {
    #[serde(rename = "priTmplId")]
    pub pri_tmpl_id: String,
}

/// The allowed values of an enum placeholder (`keywordEnumValueList`).
#[derive(Debug, Clone, Deserialize)]
pub struct KeywordEnumValues {
    #[serde(rename = "keywordCode")]
    pub keyword_code: String,
    #[serde(rename = "enumValueList", default)]
    pub enum_value_list: Vec<String>,
}

/// A subscribe template of the account (`gettemplate`).
#[derive(Debug, Clone, Deserialize)]
pub struct SubscribeTemplate {
    #[serde(rename = "priTmplId")]
    pub pri_tmpl_id: String,
    pub title: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub example: String,
    /// 2 one-time, 3 long-term.
    #[serde(rename = "type", default = "one_time")]
    pub kind: u8,
    #[serde(rename = "keywordEnumValueList", default)]
    pub keyword_enum_values: Vec<KeywordEnumValues>,
}

fn one_time() -> u8 {
    2
}

/// `gettemplate`.
#[derive(Debug, Clone, Deserialize)]
pub struct SubscribeTemplates {
    #[serde(default)]
    pub data: Vec<SubscribeTemplate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_go_on_the_wire_as_documented() {
        let add = TemplateCall::AddTemplate {
            tid: 401,
            keyword_ids: vec![1, 2],
            scene_desc: "发货".into(),
        };
        assert_eq!(add.path(), "/wxaapi/newtmpl/addtemplate");
        assert_eq!(
            add.wire(),
            Wire::Form(vec![
                ("tid", "401".into()),
                ("kidList", "1".into()),
                ("kidList", "2".into()),
                ("sceneDesc", "发货".into())
            ])
        );
        let titles = TemplateCall::GetPubTemplateTitles {
            category_ids: vec![2, 616],
            start: 0,
            limit: 30,
        };
        assert_eq!(
            titles.wire(),
            Wire::Get(vec![
                ("ids", "2,616".into()),
                ("start", "0".into()),
                ("limit", "30".into())
            ])
        );
        assert_eq!(titles.name(), "newtmpl/getpubtemplatetitles");
        assert_eq!(
            TemplateCall::ClassicAdd {
                id: "AT0002".into(),
                keyword_ids: vec![3, 4, 5]
            }
            .wire(),
            Wire::Json(serde_json::json!({"id": "AT0002", "keyword_id_list": [3, 4, 5]}))
        );
    }

    #[test]
    fn the_documents_answers_read() {
        // gettemplate and template/list as documented
        // (docs/wechat/subscribe-messages.md, "Template management";
        // docs/wechat/template-messages.md, "The classic template library").
        let answer: SubscribeTemplates = serde_json::from_str(
            r#"{"data":[{"priTmplId":"x","title":"报名结果通知","content":"会议时间:{{date2.DATA}}\n","example":"e","type":2,
                "keywordEnumValueList":[{"keywordCode":"enum_string1.DATA","enumValueList":["a","b"]}]}]}"#,
        )
        .unwrap();
        assert_eq!(answer.data[0].kind, 2);
        assert_eq!(
            answer.data[0].keyword_enum_values[0].enum_value_list,
            ["a", "b"]
        );
        let answer: PubTitles = serde_json::from_str(
            r#"{"errcode":0,"errmsg":"ok","count":55,"data":[{"tid":99,"title":"付款成功通知","type":2,"categoryId":"616"}]}"#,
        )
        .unwrap();
        assert_eq!(answer.count, 55);
        let answer: LibraryPage = serde_json::from_str(
            r#"{"errcode":0,"errmsg":"ok","list":[{"id":"AT0002","title":"购买成功通知"}],"total_count":599}"#,
        )
        .unwrap();
        assert_eq!(answer.total_count, Some(599));
        assert_eq!(
            errcode_of(
                &serde_json::json!({"errcode": 200022, "errmsg": "template has added already"})
            )
            .0,
            200022
        );
        assert_eq!(errcode_of(&serde_json::json!({"data": []})).0, 0);
    }
}
