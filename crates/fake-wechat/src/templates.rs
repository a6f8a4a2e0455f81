//! Template management, both of WeChat's systems:
//!
//! * subscribe templates, `wxaapi/newtmpl/*`
//!   (docs/wechat/subscribe-messages.md, "Template management");
//! * the classic template-message library, `cgi-bin/wxopen/template/*`
//!   (docs/wechat/template-messages.md, "The classic template library":
//!   the shapes and limits, and the errcodes, which were never published per
//!   API and come from the global table).
//!
//! The limits and answers below are from those two sections unless another
//! is named.
//!
//! Where a document gives no errcode for a failure (an unknown library id or
//! template id in `library/get`, `add`, `del`, `deltemplate`), the fake answers
//! 40037 `invalid template_id`, WeChat's code for a wrong template id in the
//! send APIs; such places say "assumed".

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::codes::{self, error_body_msg};
use crate::library::{self, LibraryKeyword, PubKeyword, TemplateType};
use crate::state::{err, random_token, Answer, Reply, State};

/// At most 25 private templates per account: documented for newtmpl
/// (200012 "上限25个"); assumed for the classic library, where the global
/// table's 45026 `template num exceeds limit` is the answer.
const TEMPLATE_LIMIT: usize = 25;
/// `library/list` and `template/list`: `count` at most 20.
const MAX_COUNT: u64 = 20;
/// `template/add`: at most 10 keyword ids.
const MAX_CLASSIC_KEYWORDS: usize = 10;
/// `getpubtemplatetitles`: limit ≤ 30.
const MAX_TITLES_LIMIT: u64 = 30;
/// `addtemplate`: kidList of 2–5 keyword ids.
const KID_LIST_LEN: std::ops::RangeInclusive<usize> = 2..=5;
/// `addtemplate`: sceneDesc ≤ 15 characters.
const MAX_SCENE_DESC: usize = 15;
/// Length of generated template ids, as the doc examples
/// (`wDYzYZVxobJivW9oMpSCpuvACOfJXQIoKUm0PY397Tc`).
const TEMPLATE_ID_LEN: usize = 43;

/// A subscribe template of the account.
#[derive(Debug)]
pub(crate) struct SubscribeTemplate {
    /// `priTmplId`.
    pub(crate) id: String,
    pub(crate) tid: u32,
    pub(crate) title: &'static str,
    pub(crate) kind: TemplateType,
    /// The chosen keywords, in the order of `kidList`.
    pub(crate) keywords: Vec<&'static PubKeyword>,
    kid_list: Vec<u32>,
}

impl SubscribeTemplate {
    /// `会议时间:{{date2.DATA}}\n会议地点:{{thing1.DATA}}\n`, as `gettemplate`
    /// shows it.
    fn content(&self) -> String {
        self.keywords
            .iter()
            .map(|k| format!("{}:{{{{{}.DATA}}}}\n", k.name, k.code()))
            .collect()
    }

    fn example(&self) -> String {
        self.keywords
            .iter()
            .map(|k| format!("{}:{}\n", k.name, k.example))
            .collect()
    }
}

/// A template of the classic personal library.
#[derive(Debug)]
pub(crate) struct ClassicTemplate {
    pub(crate) id: String,
    title: &'static str,
    keywords: Vec<&'static LibraryKeyword>,
}

impl ClassicTemplate {
    /// `购买地点{{keyword1.DATA}}\n购买时间{{keyword2.DATA}}\n`, as `template/list`
    /// shows it: placeholders numbered by position, no colon.
    fn content(&self) -> String {
        self.keywords
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{}{{{{keyword{}.DATA}}}}\n", k.name, i + 1))
            .collect()
    }

    /// `购买地点:TIT造舰厂\n购买时间:2016年6月6日\n` (same example).
    fn example(&self) -> String {
        self.keywords
            .iter()
            .map(|k| format!("{}:{}\n", k.name, k.example))
            .collect()
    }
}

/// One template-management API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ManageApi {
    GetCategory,
    GetPubTemplateTitles,
    GetPubTemplateKeywords,
    AddTemplate,
    GetTemplate,
    DelTemplate,
    LibraryList,
    LibraryGet,
    ClassicAdd,
    ClassicList,
    ClassicDel,
}

impl ManageApi {
    /// Every API, for routing.
    pub(crate) const ALL: [Self; 11] = [
        Self::GetCategory,
        Self::GetPubTemplateTitles,
        Self::GetPubTemplateKeywords,
        Self::AddTemplate,
        Self::GetTemplate,
        Self::DelTemplate,
        Self::LibraryList,
        Self::LibraryGet,
        Self::ClassicAdd,
        Self::ClassicList,
        Self::ClassicDel,
    ];

    /// The path WeChat serves it on.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::GetCategory => "/wxaapi/newtmpl/getcategory",
            Self::GetPubTemplateTitles => "/wxaapi/newtmpl/getpubtemplatetitles",
            Self::GetPubTemplateKeywords => "/wxaapi/newtmpl/getpubtemplatekeywords",
            Self::AddTemplate => "/wxaapi/newtmpl/addtemplate",
            Self::GetTemplate => "/wxaapi/newtmpl/gettemplate",
            Self::DelTemplate => "/wxaapi/newtmpl/deltemplate",
            Self::LibraryList => "/cgi-bin/wxopen/template/library/list",
            Self::LibraryGet => "/cgi-bin/wxopen/template/library/get",
            Self::ClassicAdd => "/cgi-bin/wxopen/template/add",
            Self::ClassicList => "/cgi-bin/wxopen/template/list",
            Self::ClassicDel => "/cgi-bin/wxopen/template/del",
        }
    }

    /// The newtmpl readers are GET; everything else is POST.
    fn is_get(self) -> bool {
        matches!(
            self,
            Self::GetCategory
                | Self::GetPubTemplateTitles
                | Self::GetPubTemplateKeywords
                | Self::GetTemplate
        )
    }
}

/// One management call as the HTTP layer hands it over.
pub(crate) struct ManageCall<'a> {
    pub(crate) api: ManageApi,
    pub(crate) is_get: bool,
    pub(crate) is_post: bool,
    pub(crate) query: &'a HashMap<String, String>,
    pub(crate) body: &'a [u8],
}

/// A success body, or the errcode to answer.
type Outcome = Result<Value, i64>;

fn ok(mut fields: Value) -> Value {
    if let Some(obj) = fields.as_object_mut() {
        obj.insert("errcode".into(), json!(0));
        obj.insert("errmsg".into(), json!("ok"));
    }
    fields
}

/// The JSON object body of a classic API: 44002 empty, 47001 not an object.
fn json_body(body: &[u8]) -> Result<Map<String, Value>, i64> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(codes::EMPTY_POST_DATA);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        _ => Err(codes::DATA_FORMAT_ERROR),
    }
}

/// `offset` and `count` of `library/list` and `template/list`: both required;
/// count 1..=20 else 45076 `invalid count` (as observed on `library/list`);
/// a missing or non-integer offset is a 47001 (assumed).
fn page_of(obj: &Map<String, Value>) -> Result<(usize, usize), i64> {
    let count = obj
        .get("count")
        .and_then(Value::as_u64)
        .filter(|c| (1..=MAX_COUNT).contains(c))
        .ok_or(codes::INVALID_COUNT)?;
    let offset = obj
        .get("offset")
        .and_then(Value::as_u64)
        .ok_or(codes::DATA_FORMAT_ERROR)?;
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok((to_usize(offset), to_usize(count)))
}

fn template_id(state: &State) -> String {
    loop {
        let candidate = random_token(TEMPLATE_ID_LEN);
        let taken = state.apps.values().any(|a| {
            a.subscribe_templates.iter().any(|t| t.id == candidate)
                || a.classic_templates.iter().any(|t| t.id == candidate)
        });
        if !taken {
            return candidate;
        }
    }
}

impl State {
    /// Any template-management call: the token first (as the send APIs), then
    /// the method (GET APIs answer 43001 to anything else, POST APIs 43002),
    /// then the API itself.
    pub(crate) fn manage(&mut self, token: Option<&str>, call: &ManageCall<'_>, now: i64) -> Reply {
        self.manage_calls.push(call.api.path());
        let appid = match self.check_token(token, now) {
            Ok(appid) => appid,
            Err(code) => return err(code),
        };
        if call.api.is_get() && !call.is_get {
            return err(codes::REQUIRE_GET);
        }
        if !call.api.is_get() && !call.is_post {
            return err(codes::REQUIRE_POST);
        }
        let outcome = match call.api {
            ManageApi::GetCategory => Ok(get_category()),
            ManageApi::GetPubTemplateTitles => pub_template_titles(call.query),
            ManageApi::GetPubTemplateKeywords => pub_template_keywords(call.query),
            ManageApi::AddTemplate => return self.add_subscribe_template_form(&appid, call.body),
            ManageApi::GetTemplate => Ok(self.get_subscribe_templates(&appid)),
            ManageApi::DelTemplate => self.del_subscribe_template(&appid, call.body),
            // Since the retirement, `library/list` is reported to answer
            // -1 persistently.
            ManageApi::LibraryList if self.retired => Err(codes::SYSTEM_ERROR),
            ManageApi::LibraryList => json_body(call.body).and_then(|b| library_list(&b)),
            ManageApi::LibraryGet => json_body(call.body).and_then(|b| library_get(&b)),
            ManageApi::ClassicAdd => {
                json_body(call.body).and_then(|b| self.classic_add(&appid, &b))
            }
            ManageApi::ClassicList => {
                json_body(call.body).and_then(|b| self.classic_list(&appid, &b))
            }
            ManageApi::ClassicDel => {
                json_body(call.body).and_then(|b| self.classic_del(&appid, &b))
            }
        };
        match outcome {
            Ok(body) => Answer::Json(body).into(),
            Err(code) => err(code),
        }
    }

    // ------------------------------------------------------------ newtmpl

    /// `POST wxaapi/newtmpl/addtemplate`, form-urlencoded
    /// (`tid=401&kidList=1&kidList=2&sceneDesc=…`; WeChat's page refuses
    /// JSON). A JSON body is read as a form too, where it has no
    /// `tid`: 200014.
    fn add_subscribe_template_form(&mut self, appid: &str, body: &[u8]) -> Reply {
        let mut tid = None;
        let mut kids = Vec::new();
        let mut scene_desc = String::new();
        let mut bad_kid = false;
        for (k, v) in form_urlencoded::parse(body) {
            match k.as_ref() {
                "tid" => tid = v.parse::<u32>().ok(),
                "kidList" => match v.parse::<u32>() {
                    Ok(kid) => kids.push(kid),
                    Err(_) => bad_kid = true,
                },
                "sceneDesc" => scene_desc = v.into_owned(),
                _ => {}
            }
        }
        let kids = if bad_kid { None } else { Some(kids) };
        match self.add_subscribe_template(appid, tid, kids, &scene_desc) {
            Ok(id) => Answer::Json(ok(json!({ "priTmplId": id }))).into(),
            Err(AddRefusal::AddedAlready(id)) => {
                let mut body = error_body_msg(
                    codes::TEMPLATE_ADDED_ALREADY,
                    codes::stem(codes::TEMPLATE_ADDED_ALREADY),
                );
                body["priTmplId"] = json!(id);
                Answer::Json(body).into()
            }
            Err(AddRefusal::Code(code)) => err(code),
        }
    }

    /// Adds a subscribe template from the public library; the rules of
    /// `addtemplate`:
    ///
    /// * 200014: `tid` missing or not in the library;
    /// * 200020: `kidList` not 2–5 ids, an id repeated or not of that title
    ///   (`None`: an id that is not a number);
    /// * 200021: `sceneDesc` longer than 15 characters (it is optional);
    /// * 200022 `template has added already` with the existing `priTmplId`,
    ///   when the same title and keyword list equal the account's latest
    ///   template of that title: WeChat compares with the latest only, so
    ///   once another combination was added the first can be added again,
    ///   as observed;
    /// * 200012: 25 templates already.
    pub(crate) fn add_subscribe_template(
        &mut self,
        appid: &str,
        tid: Option<u32>,
        kids: Option<Vec<u32>>,
        scene_desc: &str,
    ) -> Result<String, AddRefusal> {
        let title = tid
            .and_then(library::pub_title)
            .ok_or(AddRefusal::Code(codes::INVALID_TID))?;
        let kids = kids.ok_or(AddRefusal::Code(codes::INVALID_KID_LIST))?;
        let keywords: Option<Vec<&'static PubKeyword>> = kids
            .iter()
            .map(|kid| title.keywords.iter().find(|k| k.kid == *kid))
            .collect();
        let distinct = kids.iter().enumerate().all(|(i, k)| !kids[..i].contains(k));
        let keywords = keywords
            .filter(|_| KID_LIST_LEN.contains(&kids.len()) && distinct)
            .ok_or(AddRefusal::Code(codes::INVALID_KID_LIST))?;
        if scene_desc.chars().count() > MAX_SCENE_DESC {
            return Err(AddRefusal::Code(codes::INVALID_SCENE_DESC));
        }
        let app = self.app_mut(appid);
        if let Some(latest) = app
            .subscribe_templates
            .iter()
            .rev()
            .find(|t| t.tid == title.tid)
        {
            if latest.kid_list == kids {
                return Err(AddRefusal::AddedAlready(latest.id.clone()));
            }
        }
        if app.subscribe_templates.len() >= TEMPLATE_LIMIT {
            return Err(AddRefusal::Code(codes::PRIVATE_TEMPLATE_LIMIT));
        }
        let id = template_id(self);
        self.app_mut(appid)
            .subscribe_templates
            .push(SubscribeTemplate {
                id: id.clone(),
                tid: title.tid,
                title: title.title,
                kind: title.kind,
                keywords,
                kid_list: kids,
            });
        Ok(id)
    }

    /// `GET wxaapi/newtmpl/gettemplate`.
    fn get_subscribe_templates(&self, appid: &str) -> Value {
        let data: Vec<Value> = self
            .apps
            .get(appid)
            .map(|a| a.subscribe_templates.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|t| {
                json!({
                    "priTmplId": t.id,
                    "title": t.title,
                    "content": t.content(),
                    "example": t.example(),
                    "type": t.kind.code(),
                })
            })
            .collect();
        ok(json!({ "data": data }))
    }

    /// `POST wxaapi/newtmpl/deltemplate` `{"priTmplId":"…"}`; a form
    /// body `priTmplId=…` is read too. Unknown id: 40037 (assumed).
    fn del_subscribe_template(&mut self, appid: &str, body: &[u8]) -> Outcome {
        let id = match serde_json::from_slice::<Value>(body) {
            Ok(v) => v
                .get("priTmplId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            Err(_) => form_urlencoded::parse(body)
                .find(|(k, _)| k == "priTmplId")
                .map(|(_, v)| v.into_owned()),
        };
        let templates = &mut self.app_mut(appid).subscribe_templates;
        let at = id
            .and_then(|id| templates.iter().position(|t| t.id == id))
            .ok_or(codes::INVALID_TEMPLATE_ID)?;
        templates.remove(at);
        Ok(ok(json!({})))
    }

    // ------------------------------------------------------------ classic

    /// `POST cgi-bin/wxopen/template/add {id, keyword_id_list}`: 40037
    /// unknown id (assumed); 47001 a list that is not of integers; 45100 an
    /// empty list or more than 10 ids; 45075 an id repeated or not of that
    /// title; 45026 at 25 templates.
    fn classic_add(&mut self, appid: &str, body: &Map<String, Value>) -> Outcome {
        let title = body
            .get("id")
            .and_then(Value::as_str)
            .and_then(library::library_title)
            .ok_or(codes::INVALID_TEMPLATE_ID)?;
        let ids: Vec<u64> = body
            .get("keyword_id_list")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .unwrap_or(Some(Vec::new()))
            .ok_or(codes::DATA_FORMAT_ERROR)?;
        if ids.is_empty() || ids.len() > MAX_CLASSIC_KEYWORDS {
            return Err(codes::INVALID_KEYWORD_LIST_SIZE);
        }
        let distinct = ids.iter().enumerate().all(|(i, k)| !ids[..i].contains(k));
        let keywords: Vec<&'static LibraryKeyword> = ids
            .iter()
            .map(|id| {
                title
                    .keywords
                    .iter()
                    .find(|k| u64::from(k.keyword_id) == *id)
            })
            .collect::<Option<_>>()
            .filter(|_| distinct)
            .ok_or(codes::INVALID_KEYWORD_ID)?;
        if self.app_mut(appid).classic_templates.len() >= TEMPLATE_LIMIT {
            return Err(codes::TEMPLATE_LIMIT);
        }
        let id = template_id(self);
        let app = self.app_mut(appid);
        app.classic_templates.push(ClassicTemplate {
            id: id.clone(),
            title: title.title,
            keywords,
        });
        // The template can be used by the (retired) template send.
        app.templates.insert(id.clone());
        Ok(ok(json!({ "template_id": id })))
    }

    /// `POST cgi-bin/wxopen/template/list {offset, count}`.
    fn classic_list(&self, appid: &str, body: &Map<String, Value>) -> Outcome {
        let (offset, count) = page_of(body)?;
        let list: Vec<Value> = self
            .apps
            .get(appid)
            .map(|a| a.classic_templates.as_slice())
            .unwrap_or_default()
            .iter()
            .skip(offset)
            .take(count)
            .map(|t| {
                json!({
                    "template_id": t.id,
                    "title": t.title,
                    "content": t.content(),
                    "example": t.example(),
                })
            })
            .collect();
        Ok(ok(json!({ "list": list })))
    }

    /// `POST cgi-bin/wxopen/template/del {template_id}`.
    /// Unknown id: 40037 (assumed).
    fn classic_del(&mut self, appid: &str, body: &Map<String, Value>) -> Outcome {
        let id = body
            .get("template_id")
            .and_then(Value::as_str)
            .unwrap_or("");
        let app = self.app_mut(appid);
        let at = app
            .classic_templates
            .iter()
            .position(|t| t.id == id)
            .ok_or(codes::INVALID_TEMPLATE_ID)?;
        app.classic_templates.remove(at);
        app.templates.remove(id);
        Ok(ok(json!({})))
    }
}

/// Why `addtemplate` refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AddRefusal {
    /// 200022: the same template is the latest of its title; its id.
    AddedAlready(String),
    /// Any other errcode.
    Code(i64),
}

/// `GET wxaapi/newtmpl/getcategory`.
fn get_category() -> Value {
    let data: Vec<Value> = library::CATEGORIES
        .iter()
        .map(|c| json!({"id": c.id, "name": c.name}))
        .collect();
    ok(json!({ "data": data }))
}

/// `GET wxaapi/newtmpl/getpubtemplatetitles?ids=2,616&start=0&limit=30`:
/// 200018 `ids` missing, 200019 `ids` not a list of numbers, 200016 `start`
/// missing or not a number, 200017 `limit` missing or outside 1–30.
/// `categoryId` is a string on the wire, as in the doc's example.
fn pub_template_titles(query: &HashMap<String, String>) -> Outcome {
    let ids = query
        .get("ids")
        .filter(|s| !s.is_empty())
        .ok_or(codes::IDS_MISSING)?;
    let ids: Vec<u32> = ids
        .split(',')
        .map(|s| s.trim().parse().ok())
        .collect::<Option<_>>()
        .ok_or(codes::INVALID_IDS)?;
    let start: usize = query
        .get("start")
        .and_then(|s| s.parse().ok())
        .ok_or(codes::INVALID_START)?;
    let limit: usize = query
        .get("limit")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|l| (1..=MAX_TITLES_LIMIT).contains(l))
        .and_then(|l| usize::try_from(l).ok())
        .ok_or(codes::INVALID_LIMIT)?;
    let matching: Vec<&library::PubTitle> = library::PUB_TITLES
        .iter()
        .filter(|t| ids.contains(&t.category_id))
        .collect();
    let data: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|t| {
            json!({
                "tid": t.tid,
                "title": t.title,
                "type": t.kind.code(),
                "categoryId": t.category_id.to_string(),
            })
        })
        .collect();
    Ok(ok(json!({"count": matching.len(), "data": data})))
}

/// `GET wxaapi/newtmpl/getpubtemplatekeywords?tid=`: 200014 for a
/// missing or unknown tid.
fn pub_template_keywords(query: &HashMap<String, String>) -> Outcome {
    let title = query
        .get("tid")
        .and_then(|t| t.parse().ok())
        .and_then(library::pub_title)
        .ok_or(codes::INVALID_TID)?;
    let data: Vec<Value> = title
        .keywords
        .iter()
        .map(|k| json!({"kid": k.kid, "name": k.name, "example": k.example, "rule": k.rule.as_str()}))
        .collect();
    Ok(ok(json!({"count": data.len(), "data": data})))
}

/// `POST cgi-bin/wxopen/template/library/list {offset, count}`.
fn library_list(body: &Map<String, Value>) -> Outcome {
    let (offset, count) = page_of(body)?;
    let list: Vec<Value> = library::LIBRARY
        .iter()
        .skip(offset)
        .take(count)
        .map(|t| json!({"id": t.id, "title": t.title}))
        .collect();
    Ok(ok(
        json!({"list": list, "total_count": library::LIBRARY.len()}),
    ))
}

/// `POST cgi-bin/wxopen/template/library/get {id}`. Unknown id: 40037
/// (assumed).
fn library_get(body: &Map<String, Value>) -> Outcome {
    let title = body
        .get("id")
        .and_then(Value::as_str)
        .and_then(library::library_title)
        .ok_or(codes::INVALID_TEMPLATE_ID)?;
    let keyword_list: Vec<Value> = title
        .keywords
        .iter()
        .map(|k| json!({"keyword_id": k.keyword_id, "name": k.name, "example": k.example}))
        .collect();
    Ok(ok(
        json!({"id": title.id, "title": title.title, "keyword_list": keyword_list}),
    ))
}
