//! The template catalogue through the gateway (scope admin):
//! `GET|POST /v1/apps/{appid}/templates`, `DELETE …/templates/{template_id}`,
//! and WeChat's public libraries, `GET …/template-library`,
//! `…/template-library/categories`, `…/template-library/{id}`.
//!
//! Input is checked against WeChat's documented limits before WeChat is
//! asked (4xx with a machine-readable code, nothing called, nothing stored);
//! WeChat's refusals come back with `wechat_errcode` and a sentence.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::authorized::{AdminScope, Authorized};
use super::error::ApiError;
use super::responses::{
    Category, CategoryList, ClassicKeyword, ClassicLibraryEntry, ClassicLibraryPage, ClassicTitle,
    SubscribeKeyword, SubscribeLibraryEntry, SubscribeLibraryPage, SubscribeTitle, Template,
    TemplateDeleted, TemplateList,
};
use super::ApiContext;
use crate::ledger::collect::is_plain_identifier;
use crate::ledger::states::{Channel, SubscriptionType};
use crate::storage::TemplateRecord;
use crate::wechat::template_calls::{
    EMPTY_KID_LIST_TIDS, KID_LIST_LEN, MAX_CLASSIC_COUNT, MAX_CLASSIC_KEYWORDS, MAX_SCENE_DESC,
    MAX_TITLES_LIMIT,
};

/// Longest template id or library id accepted.
const MAX_ID_LEN: usize = 128;
/// Most category ids in one titles query.
const MAX_CATEGORY_IDS: usize = 50;

/// The request is wrong and WeChat was not asked: 400 for the query string
/// itself, 422 for a value in it or in the body.
fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    let status = match code {
        "invalid_query" => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, code, message)
}

/// The query's pairs; a name given twice or one not in `allowed` is a 400.
fn query(request: &HttpRequest, allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(request.query_string())
        .map_err(|_| invalid("invalid_query", "the query string cannot be read"))?
        .into_inner();
    let mut map = Map::new();
    for (name, value) in pairs {
        if !allowed.contains(&name.as_str()) {
            return Err(invalid(
                "invalid_query",
                format!(
                    "unknown query parameter {name:?}; this endpoint takes {}",
                    allowed.join(", ")
                ),
            ));
        }
        if map.insert(name.clone(), Value::String(value)).is_some() {
            return Err(invalid(
                "invalid_query",
                format!("query parameter {name:?} is given twice"),
            ));
        }
    }
    Ok(map)
}

fn text<'a>(query: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    query.get(name).and_then(Value::as_str)
}

/// A number parameter within `range`, or its default when absent.
fn number(
    query: &Map<String, Value>,
    name: &str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ApiError> {
    let Some(raw) = text(query, name) else {
        return Ok(default);
    };
    raw.parse::<u32>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            invalid(
                "invalid_paging",
                format!(
                    "{name} must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

/// `channel`: required where `required`, else `default`.
fn channel(query: &Map<String, Value>, default: Option<Channel>) -> Result<Channel, ApiError> {
    match text(query, "channel") {
        Some(name) => name.parse().map_err(|_| {
            invalid(
                "invalid_channel",
                "channel must be \"template\" or \"subscribe\"",
            )
        }),
        None => default.ok_or_else(|| {
            invalid(
                "invalid_channel",
                "channel is required: \"template\" or \"subscribe\"",
            )
        }),
    }
}

/// `GET /v1/apps/{appid}/templates[?refresh=true][&channel=…]`: the app's
/// templates of both channels (or one) from the ledger; `refresh=true`
/// re-reads them from WeChat first.
#[utoipa::path(
    get, path = "/v1/apps/{appid}/templates", tag = "templates", operation_id = "list_templates",
    params(("appid" = String, Path, description = "The app's AppID"), ("channel" = Option<String>, Query, description = "template or subscribe; both when unset"), ("refresh" = Option<bool>, Query, description = "Re-read them from WeChat first")),
    responses((status = 200, description = "The app's templates", body = TemplateList)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn list(
    auth: Authorized<AdminScope>,
    request: HttpRequest,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let appid = auth.appid();
    let query = query(&request, &["refresh", "channel"])?;
    let only = match text(&query, "channel") {
        Some(_) => Some(channel(&query, None)?),
        None => None,
    };
    let refresh = match text(&query, "refresh") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(invalid("invalid_query", "refresh must be true or false")),
    };
    if refresh {
        let channels = only.map_or(Channel::ALL.to_vec(), |channel| vec![channel]);
        context.catalogue.refresh(appid, &channels).await?;
    }
    let templates = context
        .catalogue
        .stored(appid)
        .await?
        .iter()
        .filter(|record| only.is_none_or(|channel| record.channel == channel))
        .map(Template::from)
        .collect();
    Ok(HttpResponse::Ok().json(TemplateList { templates }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddClassic {
    library_id: String,
    keyword_ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddSubscribe {
    tid: u32,
    keyword_ids: Vec<u32>,
    #[serde(default, deserialize_with = "formid_core::nulls::null_as_default")]
    scene_desc: String,
}

fn distinct(ids: &[u32]) -> bool {
    ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id))
}

/// The fields of an added template, read as `T`.
fn fields<T: serde::de::DeserializeOwned>(body: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(body))
        .map_err(|error| invalid("invalid_field", error.to_string()))
}

/// A classic template to add, checked against WeChat's limits.
fn add_classic(body: Map<String, Value>) -> Result<AddClassic, ApiError> {
    let add: AddClassic = fields(body)?;
    if !is_plain_identifier(&add.library_id, MAX_ID_LEN) {
        return Err(invalid(
            "invalid_library_id",
            "library_id must be a library title id such as AT0002",
        ));
    }
    if add.keyword_ids.is_empty()
        || add.keyword_ids.len() > MAX_CLASSIC_KEYWORDS
        || !distinct(&add.keyword_ids)
    {
        return Err(invalid(
            "invalid_keyword_ids",
            "keyword_ids must hold 1 to 10 different keyword ids of the library title",
        ));
    }
    Ok(add)
}

/// A subscribe template to add, checked against WeChat's limits.
fn add_subscribe(body: Map<String, Value>) -> Result<AddSubscribe, ApiError> {
    let add: AddSubscribe = fields(body)?;
    if add.tid == 0 {
        return Err(invalid("invalid_tid", "tid must be a public title id"));
    }
    let kids_ok = if EMPTY_KID_LIST_TIDS.contains(&add.tid) {
        add.keyword_ids.is_empty() || KID_LIST_LEN.contains(&add.keyword_ids.len())
    } else {
        KID_LIST_LEN.contains(&add.keyword_ids.len())
    };
    if !kids_ok || !distinct(&add.keyword_ids) {
        return Err(invalid(
            "invalid_keyword_ids",
            "keyword_ids must hold 2 to 5 different keyword ids of the title",
        ));
    }
    if add.scene_desc.chars().count() > MAX_SCENE_DESC
        || add.scene_desc.chars().any(char::is_control)
    {
        return Err(invalid(
            "invalid_scene_desc",
            "scene_desc must be at most 15 characters, without control characters",
        ));
    }
    Ok(add)
}

/// `POST /v1/apps/{appid}/templates`: adds a template from a library,
/// `{"channel":"template","library_id":"AT0002","keyword_ids":[3,4,5]}` or
/// `{"channel":"subscribe","tid":401,"keyword_ids":[1,2],"scene_desc":"…"}`;
/// answers 201 with the template as WeChat then lists it.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/templates", tag = "templates", operation_id = "add_template",
    params(("appid" = String, Path, description = "The app's AppID")),
    request_body = crate::api::requests::AddTemplate,
    responses((status = 201, description = "The template WeChat added", body = Template)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn add(
    auth: Authorized<AdminScope>,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let appid = auth.appid();
    let body = context.read_json(&request, payload).await?.value;
    let Value::Object(mut body) = body else {
        return Err(ApiError::invalid_json("the body must be a JSON object"));
    };
    let channel = match body.remove("channel") {
        Some(Value::String(name)) => name.parse::<Channel>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        invalid(
            "invalid_channel",
            "channel must be \"template\" or \"subscribe\"",
        )
    })?;
    let record: TemplateRecord = match channel {
        Channel::Template => {
            let add = add_classic(body)?;
            context
                .catalogue
                .add_classic(appid, &add.library_id, &add.keyword_ids)
                .await?
        }
        Channel::Subscribe => {
            let add = add_subscribe(body)?;
            context
                .catalogue
                .add_subscribe(appid, add.tid, &add.keyword_ids, &add.scene_desc)
                .await?
        }
    };
    Ok(HttpResponse::Created().json(Template::from(&record)))
}

/// The `{template_id}` of a template's route.
#[derive(Deserialize)]
pub struct TemplatePath {
    template_id: String,
}

/// `DELETE /v1/apps/{appid}/templates/{template_id}`: deletes it at WeChat
/// and from the ledger.
#[utoipa::path(
    delete, path = "/v1/apps/{appid}/templates/{template_id}", tag = "templates", operation_id = "delete_template",
    params(("appid" = String, Path, description = "The app's AppID"), ("template_id" = String, Path, description = "The id of the template")),
    responses((status = 200, description = "Deleted", body = TemplateDeleted)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn delete(
    auth: Authorized<AdminScope>,
    path: web::Path<TemplatePath>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let template_id = path.into_inner().template_id;
    if !is_plain_identifier(&template_id, MAX_ID_LEN) {
        return Err(invalid(
            "invalid_template_id",
            "template_id must be 1 to 128 printable characters",
        ));
    }
    context.catalogue.delete(auth.appid(), &template_id).await?;
    Ok(HttpResponse::Ok().json(TemplateDeleted {
        deleted: true,
        id: template_id,
    }))
}

/// `GET /v1/apps/{appid}/template-library?channel=template&offset=&count=`
/// (classic titles, `count` ≤ 20) or
/// `?channel=subscribe&category_ids=2,616&start=&limit=` (public subscribe
/// titles, `limit` ≤ 30).
#[utoipa::path(
    get, path = "/v1/apps/{appid}/template-library", tag = "templates", operation_id = "template_library",
    params(("appid" = String, Path, description = "The app's AppID"), ("channel" = Option<String>, Query, description = "template or subscribe"), ("offset" = Option<u32>, Query), ("count" = Option<u32>, Query), ("category_ids" = Option<String>, Query, description = "Comma-separated"), ("start" = Option<u32>, Query), ("limit" = Option<u32>, Query)),
    responses(
        (status = 200, description = "A page of WeChat's library", content(
            (ClassicLibraryPage = "application/json"),
            (SubscribeLibraryPage = "application/json"),
        )),
    ),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn library(
    auth: Authorized<AdminScope>,
    request: HttpRequest,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let query = query(
        &request,
        &[
            "channel",
            "offset",
            "count",
            "category_ids",
            "start",
            "limit",
        ],
    )?;
    match channel(&query, None)? {
        Channel::Template => classic_library(&context, auth.appid(), &query).await,
        Channel::Subscribe => subscribe_library(&context, auth.appid(), &query).await,
    }
}

/// A page of the classic library: `offset` and `count`.
async fn classic_library(
    context: &ApiContext,
    appid: &str,
    query: &Map<String, Value>,
) -> Result<HttpResponse, ApiError> {
    if ["category_ids", "start", "limit"]
        .iter()
        .any(|name| text(query, name).is_some())
    {
        return Err(invalid(
            "invalid_query",
            "the classic library pages with offset and count",
        ));
    }
    let offset = number(query, "offset", 0, 0..=u32::MAX / 2)?;
    let count = number(query, "count", MAX_CLASSIC_COUNT, 1..=MAX_CLASSIC_COUNT)?;
    let page = context
        .catalogue
        .library_titles(appid, offset, count)
        .await?;
    Ok(HttpResponse::Ok().json(ClassicLibraryPage {
        channel: Channel::Template,
        titles: page
            .list
            .into_iter()
            .map(|t| ClassicTitle {
                id: t.id,
                title: t.title,
            })
            .collect(),
        total_count: page.total_count,
    }))
}

/// A page of the public subscribe library: `category_ids`, `start` and
/// `limit`.
async fn subscribe_library(
    context: &ApiContext,
    appid: &str,
    query: &Map<String, Value>,
) -> Result<HttpResponse, ApiError> {
    if text(query, "offset").is_some() || text(query, "count").is_some() {
        return Err(invalid(
            "invalid_query",
            "the subscribe library pages with start and limit",
        ));
    }
    let ids: Option<Vec<u32>> = text(query, "category_ids").map(|raw| {
        raw.split(',')
            .map(|id| id.trim().parse::<u32>().ok())
            .collect::<Option<Vec<u32>>>()
            .unwrap_or_default()
    });
    let ids = ids
        .filter(|ids| !ids.is_empty() && ids.len() <= MAX_CATEGORY_IDS)
        .ok_or_else(|| {
            invalid(
                "invalid_category_ids",
                "category_ids is required: the account's category ids, comma-separated \
                 (GET …/template-library/categories lists them)",
            )
        })?;
    let start = number(query, "start", 0, 0..=u32::MAX / 2)?;
    let limit = number(query, "limit", MAX_TITLES_LIMIT, 1..=MAX_TITLES_LIMIT)?;
    let page = context
        .catalogue
        .pub_titles(appid, &ids, start, limit)
        .await?;
    Ok(HttpResponse::Ok().json(SubscribeLibraryPage {
        channel: Channel::Subscribe,
        titles: page
            .data
            .into_iter()
            .map(|t| SubscribeTitle {
                category_id: t.category_id,
                id: t.tid,
                title: t.title,
                subscription: subscription_of(t.kind),
            })
            .collect(),
        total_count: page.count,
    }))
}

fn subscription_of(kind: u8) -> SubscriptionType {
    if kind == 3 {
        SubscriptionType::LongTerm
    } else {
        SubscriptionType::OneTime
    }
}

/// `GET /v1/apps/{appid}/template-library/categories`: the account's
/// categories, for the subscribe library's `category_ids`.
#[utoipa::path(
    get, path = "/v1/apps/{appid}/template-library/categories", tag = "templates", operation_id = "template_categories",
    params(("appid" = String, Path, description = "The app's AppID"), ("channel" = Option<String>, Query, description = "subscribe")),
    responses((status = 200, description = "The account's categories", body = CategoryList)),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn categories(
    auth: Authorized<AdminScope>,
    request: HttpRequest,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let query = query(&request, &["channel"])?;
    if channel(&query, Some(Channel::Subscribe))? != Channel::Subscribe {
        return Err(invalid(
            "invalid_channel",
            "only the subscribe library has categories",
        ));
    }
    let categories = context.catalogue.categories(auth.appid()).await?;
    Ok(HttpResponse::Ok().json(CategoryList {
        categories: categories
            .data
            .into_iter()
            .map(|c| Category {
                id: c.id,
                name: c.name,
            })
            .collect(),
    }))
}

/// The `{id}` of a library title's route.
#[derive(Deserialize)]
pub struct LibraryPath {
    id: String,
}

/// `GET /v1/apps/{appid}/template-library/{id}?channel=…`: a library title
/// and its keywords (subscribe keywords with their placeholder type).
#[utoipa::path(
    get, path = "/v1/apps/{appid}/template-library/{id}", tag = "templates", operation_id = "template_library_entry",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path, description = "A classic library id or a subscribe tid"), ("channel" = Option<String>, Query, description = "template or subscribe")),
    responses(
        (status = 200, description = "A library title and its keywords", content(
            (ClassicLibraryEntry = "application/json"),
            (SubscribeLibraryEntry = "application/json"),
        )),
    ),
    security(("api_key" = [])),
)]
#[tracing::instrument(skip_all, fields(appid = %auth.appid()))]
pub async fn library_entry(
    auth: Authorized<AdminScope>,
    request: HttpRequest,
    path: web::Path<LibraryPath>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let (appid, id) = (auth.appid(), path.into_inner().id);
    let query = query(&request, &["channel"])?;
    match channel(&query, None)? {
        Channel::Template => {
            if !is_plain_identifier(&id, MAX_ID_LEN) {
                return Err(invalid(
                    "invalid_library_id",
                    "the id must be a library title id such as AT0002",
                ));
            }
            let entry = context.catalogue.library_entry(appid, &id).await?;
            let keywords = entry.keyword_list.into_iter().map(|k| ClassicKeyword {
                example: k.example,
                id: k.keyword_id,
                name: k.name,
            });
            Ok(HttpResponse::Ok().json(ClassicLibraryEntry {
                channel: Channel::Template,
                id: entry.id,
                keywords: keywords.collect(),
                title: entry.title,
            }))
        }
        Channel::Subscribe => {
            let tid = id
                .parse::<u32>()
                .ok()
                .filter(|tid| *tid > 0)
                .ok_or_else(|| invalid("invalid_tid", "the id must be a public title id (tid)"))?;
            let keywords = context.catalogue.pub_keywords(appid, tid).await?;
            let keywords = keywords.data.into_iter().map(|k| SubscribeKeyword {
                example: k.example,
                id: k.kid,
                name: k.name,
                rule: k.rule,
            });
            Ok(HttpResponse::Ok().json(SubscribeLibraryEntry {
                channel: Channel::Subscribe,
                id: tid,
                keywords: keywords.collect(),
            }))
        }
    }
}
