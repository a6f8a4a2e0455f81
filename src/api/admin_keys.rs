//! `/v1/admin/keys` (scope `admin`): API keys kept as data
//! ([`crate::keys`]). `POST` creates one and shows it once, `GET` lists them
//! (never a key), `DELETE /v1/admin/keys/{name}` revokes one. An admin key
//! limited to some apps may create keys for those apps only.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::authorized::{AdminScope, AuthorizedAnyApp};
use super::error::ApiError;
use super::{ApiContext, Route};
use crate::clock::from_ms;
use crate::keys::{parse_scope, scope_name, CreateError, KeyListing, KeyRequest};

/// The admin routes, outside any app's scope.
pub fn endpoints() -> Vec<Route> {
    vec![
        Route::new("/v1/admin/keys").post(create).get(list),
        Route::new("/v1/admin/keys/{name}").delete(revoke),
    ]
}

/// A key as listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyListed {
    /// AppIDs, or `["*"]`.
    pub apps: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// The visible part of the key (`fgk_<key_id>_…`).
    pub key_id: String,
    pub last_used_at: Option<DateTime<Utc>>,
    pub name: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub scopes: Vec<&'static str>,
}

impl From<KeyListing> for KeyListed {
    fn from(listing: KeyListing) -> Self {
        Self {
            apps: listing
                .grant
                .apps
                .map_or_else(|| vec!["*".to_owned()], |apps| apps.into_iter().collect()),
            created_at: from_ms(listing.created_at),
            key_id: listing.key_id,
            last_used_at: listing.last_used_at.map(from_ms),
            name: listing.name,
            revoked_at: listing.revoked_at.map(from_ms),
            scopes: listing.grant.scopes.into_iter().map(scope_name).collect(),
        }
    }
}

/// `POST /v1/admin/keys`: the new key, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyCreated {
    /// The key: store it now; the gateway keeps only its hash.
    pub key: String,
    #[serde(flatten)]
    pub listed: KeyListed,
}

/// `GET /v1/admin/keys`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyListed>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    apps: Vec<String>,
    scopes: Vec<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_key_request",
        message,
    )
}

/// Creates a key for apps the admin key itself is allowed.
#[utoipa::path(
    post, path = "/v1/admin/keys", tag = "admin", operation_id = "create_key",
    request_body = crate::api::requests::CreateKey,
    responses((status = 201, description = "The key (shown once)", body = KeyCreated)),
    security(("api_key" = [])),
)]
#[tracing::instrument(name = "admin_keys_create", skip_all)]
async fn create(
    auth: AuthorizedAnyApp<AdminScope>,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let text = context.read_json_text(&request, payload).await?;
    let body: CreateBody = serde_json::from_slice(&text)
        .map_err(|_| invalid("the body is {\"name\", \"apps\", \"scopes\"}"))?;
    let every_app = body.apps == ["*"];
    let apps: Vec<&String> = if every_app {
        context.apps.keys().collect()
    } else {
        body.apps.iter().collect()
    };
    for appid in apps {
        // An app this gateway does not serve is a wrong value in the body,
        // not a missing resource: 422, like every other wrong field here.
        auth.for_app(&context, appid).map_err(|refused| {
            if refused.status() == StatusCode::NOT_FOUND {
                invalid(format!("{appid:?} is not an app of this gateway"))
            } else {
                refused
            }
        })?;
    }
    let scopes = body
        .scopes
        .iter()
        .map(|scope| {
            parse_scope(scope).ok_or_else(|| {
                invalid(format!(
                    "unknown scope {scope:?} (collect, send, token, admin)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let key_request = KeyRequest {
        name: body.name,
        apps: body.apps,
        scopes,
    };
    let created = context
        .stored_keys
        .create(&key_request)
        .await
        .map_err(|error| match error {
            CreateError::NameTaken(_) => {
                ApiError::new(StatusCode::CONFLICT, "key_name_taken", error.to_string())
            }
            CreateError::Invalid(message) => invalid(message),
            CreateError::Storage(error) => ApiError::internal(error),
        })?;
    Ok(HttpResponse::Created().json(KeyCreated {
        key: created.key.expose_secret().to_owned(),
        listed: created.listing.into(),
    }))
}

/// Lists every key: names, apps, scopes, created and last used.
#[utoipa::path(
    get, path = "/v1/admin/keys", tag = "admin", operation_id = "list_keys",
    responses((status = 200, description = "The stored keys (never a key itself)", body = KeyList)),
    security(("api_key" = [])),
)]
async fn list(
    _auth: AuthorizedAnyApp<AdminScope>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let keys = context.stored_keys.list().await?;
    Ok(HttpResponse::Ok().json(KeyList {
        keys: keys.into_iter().map(KeyListed::from).collect(),
    }))
}

#[derive(Deserialize)]
struct NamePath {
    name: String,
}

/// Revokes a key by name: every instance refuses it within `keys.cache_secs`.
#[utoipa::path(
    delete, path = "/v1/admin/keys/{name}", tag = "admin", operation_id = "revoke_key",
    params(("name" = String, Path, description = "The key's name")),
    responses((status = 204, description = "Revoked")),
    security(("api_key" = [])),
)]
#[tracing::instrument(name = "admin_keys_revoke", skip_all, fields(name = %path.name))]
async fn revoke(
    _auth: AuthorizedAnyApp<AdminScope>,
    path: web::Path<NamePath>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    if context.stored_keys.revoke(&path.name).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_key",
            "no live key has this name",
        ))
    }
}
