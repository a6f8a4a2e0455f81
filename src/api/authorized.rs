//! The authorization of a route, as an extractor: a handler that takes an
//! [`Authorized<S>`] runs only for a principal allowed the app of its path
//! and one of the scopes `S`; one that takes an [`AuthorizedAnyApp<S>`],
//! for a principal with one of those scopes, whatever its apps.
//!
//! A handler that takes a [`SessionAuthorized`] runs only for a
//! mini-program user's session of the app of its path (the `/me` routes).
//!
//! What each refusal answers: no `Authorization` 401 `missing_api_key`, a
//! key that is not `Bearer <configured or stored key>` 401
//! `invalid_api_key`, a session token that is forged, expired or revoked 401
//! `invalid_session` (all with `WWW-Authenticate: Bearer`), a key not allowed
//! the app 403 `forbidden` (whether the app exists or not), an app the
//! gateway does not serve 404 `unknown_app`, a key without the scope 403
//! `forbidden`, a session on a route of API keys 403 `api_key_required`, a
//! key on a session route 403 `session_required`, a session of another app
//! 403 `forbidden`. Past authorization, a principal over its rate limit
//! gets 429 `rate_limited` ([`super::limits`]).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use serde::Deserialize;

use super::auth::{bearer_of, Principal};
use super::error::ApiError;
use super::ApiContext;
use crate::config::Scope;
use formid_core::sessions::{bearer_kind, BearerKind};

/// An extractor's future: authorization may read the ledger.
type Extracting<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

/// The scopes a route needs: a principal with any one of them (or `admin`)
/// may call it.
pub trait ScopeSet: 'static {
    /// The scopes, any one of which will do.
    const SCOPES: &'static [Scope];
}

macro_rules! scope_sets {
    ($($(#[$doc:meta])* $name:ident = [$($scope:ident),+];)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl ScopeSet for $name {
            const SCOPES: &'static [Scope] = &[$(Scope::$scope),+];
        }
    )*};
}

scope_sets! {
    /// `collect`: posting credentials and prompt results (frontends).
    CollectScope = [Collect];
    /// `send`: sending messages and reading them (business services).
    SendScope = [Send];
    /// `send` or `collect`: reading a user's quota.
    QuotaScope = [Send, Collect];
    /// `token`: the app's access token (the app's other servers).
    TokenScope = [Token];
    /// `admin`: the template catalogue and the template lint.
    AdminScope = [Admin];
}

/// A principal allowed the app of the route's `{appid}` and one of `S`.
#[derive(Debug)]
pub struct Authorized<S: ScopeSet> {
    principal: Principal,
    appid: String,
    scopes: PhantomData<fn() -> S>,
}

/// A principal with one of the scopes `S`, for a route whose path names no
/// app. [`AuthorizedAnyApp::for_app`] checks an app the request names
/// elsewhere.
#[derive(Debug)]
pub struct AuthorizedAnyApp<S: ScopeSet> {
    principal: Principal,
    scopes: PhantomData<fn() -> S>,
}

/// The `{appid}` of a route's path.
#[derive(Deserialize)]
struct AppSegment {
    appid: String,
}

impl<S: ScopeSet> Authorized<S> {
    /// Who called.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The app the principal is allowed.
    pub fn appid(&self) -> &str {
        &self.appid
    }

    async fn extract(request: HttpRequest) -> Result<Self, ApiError> {
        let context = context_of(&request)?;
        let principal = principal_of(context, &request).await?;
        let appid = appid_of(&request)?;
        principal.check_app(&appid, context.apps.contains_key(&appid), S::SCOPES)?;
        context.limits.check_api_key(principal.name())?;
        Ok(Self {
            principal,
            appid,
            scopes: PhantomData,
        })
    }
}

impl<S: ScopeSet> AuthorizedAnyApp<S> {
    /// Who called.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The same principal, checked for `appid` and the scopes `S`.
    pub fn for_app(&self, context: &ApiContext, appid: &str) -> Result<Authorized<S>, ApiError> {
        self.principal
            .check_app(appid, context.apps.contains_key(appid), S::SCOPES)?;
        Ok(Authorized {
            principal: self.principal.clone(),
            appid: appid.to_owned(),
            scopes: PhantomData,
        })
    }

    async fn extract(request: HttpRequest) -> Result<Self, ApiError> {
        let context = context_of(&request)?;
        let principal = principal_of(context, &request).await?;
        principal.check_scopes(S::SCOPES)?;
        context.limits.check_api_key(principal.name())?;
        Ok(Self {
            principal,
            scopes: PhantomData,
        })
    }
}

/// A mini-program user's session, of the app of the route's `{appid}`.
#[derive(Debug)]
pub struct SessionAuthorized {
    /// The session's id.
    pub id: Arc<str>,
    /// The app (the path's, which is the session's).
    pub appid: Arc<str>,
    /// The user: the only openid the request may act for.
    pub openid: Arc<str>,
}

impl SessionAuthorized {
    async fn extract(request: HttpRequest) -> Result<Self, ApiError> {
        let context = context_of(&request)?;
        context.limits.check_ip(&request)?;
        let Principal::Session { id, appid, openid } = principal_of(context, &request).await?
        else {
            return Err(ApiError::session_required());
        };
        if *appid != *appid_of(&request)? {
            return Err(ApiError::other_app_session());
        }
        if !context.apps.contains_key(&*appid) {
            return Err(ApiError::unknown_app());
        }
        context.limits.check_session(&id)?;
        Ok(Self { id, appid, openid })
    }
}

/// Who the request's bearer is: a session (`fgs_…`), a stored key
/// (`fgk_…`) or a configured key.
async fn principal_of(context: &ApiContext, request: &HttpRequest) -> Result<Principal, ApiError> {
    let token = bearer_of(request)?;
    match bearer_kind(token) {
        BearerKind::Session => {
            let session = context.sessions.authenticate(token).await?;
            Ok(Principal::Session {
                id: session.id.into(),
                appid: session.appid.into(),
                openid: session.openid.into(),
            })
        }
        BearerKind::StoredKey => match context.stored_keys.authenticate(token).await? {
            Some(key) => Ok(Principal::ApiKey {
                name: key.name.into(),
                grant: Arc::new(key.grant.into()),
            }),
            None => Err(ApiError::invalid_api_key()),
        },
        BearerKind::ConfiguredKey => context.keys.configured(token),
    }
}

/// The route's `{appid}`.
fn appid_of(request: &HttpRequest) -> Result<String, ApiError> {
    Ok(web::Path::<AppSegment>::extract(request)
        .into_inner()
        .map_err(|error| ApiError::internal(format!("a route without {{appid}}: {error}")))?
        .into_inner()
        .appid)
}

/// The context the routes were registered with.
fn context_of(request: &HttpRequest) -> Result<&ApiContext, ApiError> {
    request
        .app_data::<web::Data<ApiContext>>()
        .map(|context| context.get_ref())
        .ok_or_else(|| ApiError::internal("no ApiContext registered"))
}

impl<S: ScopeSet> FromRequest for Authorized<S> {
    type Error = ApiError;
    type Future = Extracting<Self>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(Self::extract(request.clone()))
    }
}

impl<S: ScopeSet> FromRequest for AuthorizedAnyApp<S> {
    type Error = ApiError;
    type Future = Extracting<Self>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(Self::extract(request.clone()))
    }
}

impl FromRequest for SessionAuthorized {
    type Error = ApiError;
    type Future = Extracting<Self>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(Self::extract(request.clone()))
    }
}
