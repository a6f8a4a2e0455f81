//! The template catalogue through the gateway (scope admin):
//! `GET|POST /v1/apps/{appid}/templates`, `DELETE …/templates/{template_id}`,
//! and WeChat's public libraries, `GET …/template-library`,
//! `…/template-library/categories`, `…/template-library/{id}`.
//!
//! Input is checked against WeChat's documented limits before WeChat is
//! asked (4xx with a machine-readable code, nothing called, nothing stored);
//! WeChat's refusals come back with `wechat_errcode` and a sentence.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{render, AccessError, ApiErrorCode, BodyError};
use super::ApiContext;
use crate::catalogue::CatalogueError;
use crate::clock::from_ms;
use crate::config::Scope;
use crate::ledger::collect::is_plain_identifier;
use crate::ledger::settle::{classify, Verdict};
use crate::ledger::states::{Channel, SubscriptionType};
use crate::storage::TemplateRecord;
use crate::tokens::TokenError;
use crate::wechat::templates::{
    EMPTY_KID_LIST_TIDS, KID_LIST_LEN, MAX_CLASSIC_COUNT, MAX_CLASSIC_KEYWORDS, MAX_SCENE_DESC,
    MAX_TITLES_LIMIT,
};
use crate::wechat::CallError;

/// Longest template id or library id accepted.
const MAX_ID_LEN: usize = 128;
/// Most category ids in one titles query.
const MAX_CATEGORY_IDS: usize = 50;

/// Errors of the template endpoints.
#[derive(Debug, thiserror::Error)]
pub enum TemplateEndpointError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The request is wrong; WeChat was not asked.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
}

fn invalid(code: &'static str, message: impl Into<String>) -> TemplateEndpointError {
    TemplateEndpointError::Invalid {
        code,
        message: message.into(),
    }
}

/// What a WeChat errcode of the template APIs means for the caller: the
/// status, the code, and a sentence.
fn wechat_failure(errcode: i64) -> (StatusCode, &'static str, &'static str) {
    use StatusCode as S;
    match errcode {
        40037 => (
            S::NOT_FOUND,
            "unknown_template",
            "WeChat knows no template or library title with this id",
        ),
        200014 => (
            S::UNPROCESSABLE_ENTITY,
            "invalid_tid",
            "WeChat's public subscribe library has no title with this tid",
        ),
        200020 => (
            S::UNPROCESSABLE_ENTITY,
            "invalid_keyword_ids",
            "keyword_ids must be 2 to 5 different keywords of this title",
        ),
        200021 => (
            S::UNPROCESSABLE_ENTITY,
            "invalid_scene_desc",
            "scene_desc must be at most 15 characters",
        ),
        45075 => (
            S::UNPROCESSABLE_ENTITY,
            "invalid_keyword_ids",
            "a keyword id is not one of this library title's, or is repeated",
        ),
        45100 => (
            S::UNPROCESSABLE_ENTITY,
            "invalid_keyword_ids",
            "keyword_ids must hold 1 to 10 keyword ids",
        ),
        45076 => (
            S::UNPROCESSABLE_ENTITY,
            "invalid_paging",
            "count must be 1 to 20",
        ),
        200016 | 200017 => (
            S::UNPROCESSABLE_ENTITY,
            "invalid_paging",
            "start must be 0 or more and limit 1 to 30",
        ),
        200018 | 200019 => (
            S::UNPROCESSABLE_ENTITY,
            "invalid_category_ids",
            "category_ids must list the account's category ids",
        ),
        200012 => (
            S::CONFLICT,
            "template_limit_reached",
            "the app already holds 25 subscribe templates, WeChat's limit: delete one first",
        ),
        45026 => (
            S::CONFLICT,
            "template_limit_reached",
            "the app already holds as many classic templates as WeChat allows: delete one first",
        ),
        200011 => (
            S::BAD_GATEWAY,
            "wechat_refused",
            "WeChat has banned this account from adding templates",
        ),
        200013 => (
            S::BAD_GATEWAY,
            "wechat_refused",
            "WeChat has banned this template",
        ),
        43106 | 48004 => (
            S::BAD_GATEWAY,
            "wechat_refused",
            "WeChat refuses this account the template APIs, as a punishment",
        ),
        48001 => (
            S::BAD_GATEWAY,
            "wechat_refused",
            "this app is not authorised for this WeChat API",
        ),
        45009 => (
            S::TOO_MANY_REQUESTS,
            "wechat_rate_limited",
            "the app has spent its daily quota of this WeChat API",
        ),
        45011 => (
            S::TOO_MANY_REQUESTS,
            "wechat_rate_limited",
            "WeChat's per-minute limit of this API was reached: try again in a minute",
        ),
        45103 | 45109 => (S::BAD_GATEWAY, "api_retired", "WeChat retired this API"),
        -1 => (
            S::SERVICE_UNAVAILABLE,
            "wechat_busy",
            "WeChat is busy: try again later",
        ),
        code if classify(code) == Verdict::TokenRejected => (
            S::BAD_GATEWAY,
            "token_rejected",
            "WeChat rejected a freshly refreshed access_token",
        ),
        _ => (S::BAD_GATEWAY, "wechat_error", "WeChat refused the call"),
    }
}

impl ResponseError for TemplateEndpointError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Access(error) => error.status_code(),
            Self::Body(error) => error.status_code(),
            Self::Invalid { code, .. } => match *code {
                "invalid_query" => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            },
            Self::Catalogue(error) => match error {
                CatalogueError::WeChat { errcode, .. } => wechat_failure(*errcode).0,
                CatalogueError::Call {
                    error: CallError::NotSent(_),
                    ..
                } => StatusCode::SERVICE_UNAVAILABLE,
                CatalogueError::Call { .. } | CatalogueError::Shape { .. } => {
                    StatusCode::BAD_GATEWAY
                }
                CatalogueError::NotListed { .. } => StatusCode::BAD_GATEWAY,
                CatalogueError::UnknownTemplate { .. } => StatusCode::NOT_FOUND,
                CatalogueError::Token(TokenError::Refused { .. }) => StatusCode::BAD_GATEWAY,
                CatalogueError::Token(TokenError::Storage(_)) | CatalogueError::Storage(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                CatalogueError::Token(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        render(self)
    }
}

impl ApiErrorCode for TemplateEndpointError {
    fn code(&self) -> &'static str {
        match self {
            Self::Access(error) => error.code(),
            Self::Body(error) => error.code(),
            Self::Invalid { code, .. } => code,
            Self::Catalogue(error) => match error {
                CatalogueError::WeChat { errcode, .. } => wechat_failure(*errcode).1,
                CatalogueError::Call {
                    error: CallError::NotSent(_),
                    ..
                } => "wechat_unreachable",
                CatalogueError::Call { .. } => "wechat_answer_lost",
                CatalogueError::Shape { .. } => "wechat_unexpected_answer",
                CatalogueError::NotListed { .. } => "template_not_listed",
                CatalogueError::UnknownTemplate { .. } => "unknown_template",
                CatalogueError::Token(TokenError::Refused { .. }) => "token_refused",
                CatalogueError::Token(_) => "token_unavailable",
                CatalogueError::Storage(_) => "internal",
            },
        }
    }

    fn wechat_errcode(&self) -> Option<i64> {
        match self {
            Self::Catalogue(CatalogueError::WeChat { errcode, .. })
            | Self::Catalogue(CatalogueError::Token(TokenError::Refused { errcode, .. })) => {
                Some(*errcode)
            }
            _ => None,
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::Catalogue(CatalogueError::WeChat {
                api,
                errcode,
                errmsg,
            }) => format!(
                "{} (WeChat answered {errcode} to {api}: {errmsg})",
                wechat_failure(*errcode).2
            ),
            other => other.to_string(),
        }
    }
}

/// A template as answered: its placeholders parsed from its content.
fn template_json(record: &TemplateRecord) -> Value {
    let template = record.to_catalogue();
    let mut answer = json!({
        "channel": template.channel,
        "id": template.template_id,
        "title": template.title,
        "content": template.content,
        "example": template.example,
        "type": template.subscription,
        "placeholders": template.placeholders,
        "refreshed_at": from_ms(record.refreshed_at),
    });
    if !template.enum_values.is_empty() {
        answer["enum_values"] = json!(template.enum_values);
    }
    answer
}

/// The query's pairs; a name given twice or one not in `allowed` is a 400.
fn query(
    request: &HttpRequest,
    allowed: &[&str],
) -> Result<Map<String, Value>, TemplateEndpointError> {
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
) -> Result<u32, TemplateEndpointError> {
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
fn channel(
    query: &Map<String, Value>,
    default: Option<Channel>,
) -> Result<Channel, TemplateEndpointError> {
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
#[tracing::instrument(skip_all, fields(appid = %path.as_str()))]
pub async fn list(
    request: HttpRequest,
    path: web::Path<String>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, TemplateEndpointError> {
    let appid = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Admin])?;
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
        context.catalogue.refresh(&appid, &channels).await?;
    }
    let templates: Vec<Value> = context
        .catalogue
        .stored(&appid)
        .await?
        .iter()
        .filter(|record| only.is_none_or(|channel| record.channel == channel))
        .map(template_json)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "templates": templates })))
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
    #[serde(default)]
    scene_desc: String,
}

fn distinct(ids: &[u32]) -> bool {
    ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id))
}

/// `POST /v1/apps/{appid}/templates`: adds a template from a library,
/// `{"channel":"template","library_id":"AT0002","keyword_ids":[3,4,5]}` or
/// `{"channel":"subscribe","tid":401,"keyword_ids":[1,2],"scene_desc":"…"}`;
/// answers 201 with the template as WeChat then lists it.
#[tracing::instrument(skip_all, fields(appid = %path.as_str()))]
pub async fn add(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, TemplateEndpointError> {
    let appid = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Admin])?;
    let body = context.read_json(&request, payload).await?.value;
    let Value::Object(mut body) = body else {
        return Err(BodyError::InvalidJson("the body must be a JSON object".into()).into());
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
    let fields = |error: serde_json::Error| invalid("invalid_field", error.to_string());
    let record = match channel {
        Channel::Template => {
            let add: AddClassic = serde_json::from_value(Value::Object(body)).map_err(fields)?;
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
            context
                .catalogue
                .add_classic(&appid, &add.library_id, &add.keyword_ids)
                .await?
        }
        Channel::Subscribe => {
            let add: AddSubscribe = serde_json::from_value(Value::Object(body)).map_err(fields)?;
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
            context
                .catalogue
                .add_subscribe(&appid, add.tid, &add.keyword_ids, &add.scene_desc)
                .await?
        }
    };
    Ok(HttpResponse::Created().json(template_json(&record)))
}

/// `DELETE /v1/apps/{appid}/templates/{template_id}`: deletes it at WeChat
/// and from the ledger.
#[tracing::instrument(skip_all, fields(appid = %path.0))]
pub async fn delete(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, TemplateEndpointError> {
    let (appid, template_id) = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Admin])?;
    if !is_plain_identifier(&template_id, MAX_ID_LEN) {
        return Err(invalid(
            "invalid_template_id",
            "template_id must be 1 to 128 printable characters",
        ));
    }
    context.catalogue.delete(&appid, &template_id).await?;
    Ok(HttpResponse::Ok().json(json!({"id": template_id, "deleted": true})))
}

/// `GET /v1/apps/{appid}/template-library?channel=template&offset=&count=`
/// (classic titles, `count` ≤ 20) or
/// `?channel=subscribe&category_ids=2,616&start=&limit=` (public subscribe
/// titles, `limit` ≤ 30).
#[tracing::instrument(skip_all, fields(appid = %path.as_str()))]
pub async fn library(
    request: HttpRequest,
    path: web::Path<String>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, TemplateEndpointError> {
    let appid = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Admin])?;
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
        Channel::Template => {
            if text(&query, "category_ids").is_some()
                || text(&query, "start").is_some()
                || text(&query, "limit").is_some()
            {
                return Err(invalid(
                    "invalid_query",
                    "the classic library pages with offset and count",
                ));
            }
            let offset = number(&query, "offset", 0, 0..=u32::MAX / 2)?;
            let count = number(&query, "count", MAX_CLASSIC_COUNT, 1..=MAX_CLASSIC_COUNT)?;
            let page = context
                .catalogue
                .library_titles(&appid, offset, count)
                .await?;
            let titles: Vec<Value> = page
                .list
                .iter()
                .map(|t| json!({"id": t.id, "title": t.title}))
                .collect();
            Ok(HttpResponse::Ok().json(json!({
                "channel": Channel::Template,
                "total_count": page.total_count,
                "titles": titles,
            })))
        }
        Channel::Subscribe => {
            if text(&query, "offset").is_some() || text(&query, "count").is_some() {
                return Err(invalid(
                    "invalid_query",
                    "the subscribe library pages with start and limit",
                ));
            }
            let ids: Option<Vec<u32>> = text(&query, "category_ids").map(|raw| {
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
            let start = number(&query, "start", 0, 0..=u32::MAX / 2)?;
            let limit = number(&query, "limit", MAX_TITLES_LIMIT, 1..=MAX_TITLES_LIMIT)?;
            let page = context
                .catalogue
                .pub_titles(&appid, &ids, start, limit)
                .await?;
            let titles: Vec<Value> = page
                .data
                .iter()
                .map(|t| {
                    json!({
                        "id": t.tid,
                        "title": t.title,
                        "type": subscription_of(t.kind),
                        "category_id": t.category_id,
                    })
                })
                .collect();
            Ok(HttpResponse::Ok().json(json!({
                "channel": Channel::Subscribe,
                "total_count": page.count,
                "titles": titles,
            })))
        }
    }
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
#[tracing::instrument(skip_all, fields(appid = %path.as_str()))]
pub async fn categories(
    request: HttpRequest,
    path: web::Path<String>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, TemplateEndpointError> {
    let appid = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Admin])?;
    let query = query(&request, &["channel"])?;
    if channel(&query, Some(Channel::Subscribe))? != Channel::Subscribe {
        return Err(invalid(
            "invalid_channel",
            "only the subscribe library has categories",
        ));
    }
    let categories = context.catalogue.categories(&appid).await?;
    let categories: Vec<Value> = categories
        .data
        .iter()
        .map(|c| json!({"id": c.id, "name": c.name}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "categories": categories })))
}

/// `GET /v1/apps/{appid}/template-library/{id}?channel=…`: a library title
/// and its keywords (subscribe keywords with their placeholder type).
#[tracing::instrument(skip_all, fields(appid = %path.0))]
pub async fn library_entry(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, TemplateEndpointError> {
    let (appid, id) = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Admin])?;
    let query = query(&request, &["channel"])?;
    match channel(&query, None)? {
        Channel::Template => {
            if !is_plain_identifier(&id, MAX_ID_LEN) {
                return Err(invalid(
                    "invalid_library_id",
                    "the id must be a library title id such as AT0002",
                ));
            }
            let entry = context.catalogue.library_entry(&appid, &id).await?;
            let keywords: Vec<Value> = entry
                .keyword_list
                .iter()
                .map(|k| json!({"id": k.keyword_id, "name": k.name, "example": k.example}))
                .collect();
            Ok(HttpResponse::Ok().json(json!({
                "channel": Channel::Template,
                "id": entry.id,
                "title": entry.title,
                "keywords": keywords,
            })))
        }
        Channel::Subscribe => {
            let tid = id
                .parse::<u32>()
                .ok()
                .filter(|tid| *tid > 0)
                .ok_or_else(|| invalid("invalid_tid", "the id must be a public title id (tid)"))?;
            let keywords = context.catalogue.pub_keywords(&appid, tid).await?;
            let keywords: Vec<Value> = keywords
                .data
                .iter()
                .map(|k| json!({"id": k.kid, "name": k.name, "example": k.example, "type": k.rule}))
                .collect();
            Ok(HttpResponse::Ok().json(json!({
                "channel": Channel::Subscribe,
                "id": tid,
                "keywords": keywords,
            })))
        }
    }
}
