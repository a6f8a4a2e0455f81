//! The authorization of a route, as an extractor: a handler that takes an
//! [`Authorized<S>`] runs only for a principal allowed the app of its path
//! and one of the scopes `S`; one that takes an [`AuthorizedAnyApp<S>`],
//! for a principal with one of those scopes, whatever its apps.
//!
//! What each refusal answers: no `Authorization` 401 `missing_api_key`, a
//! key that is not `Bearer <configured key>` 401 `invalid_api_key` (both
//! with `WWW-Authenticate: Bearer`), a key not allowed the app 403
//! `forbidden` (whether the app exists or not), an app the gateway does not
//! serve 404 `unknown_app`, a key without the scope 403 `forbidden`.

use std::future::{ready, Ready};
use std::marker::PhantomData;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use serde::Deserialize;

use super::auth::Principal;
use super::error::ApiError;
use super::ApiContext;
use crate::config::Scope;

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

    fn extract(request: &HttpRequest) -> Result<Self, ApiError> {
        let context = context_of(request)?;
        let principal = context.keys.principal(request)?;
        let appid = web::Path::<AppSegment>::extract(request)
            .into_inner()
            .map_err(|error| ApiError::internal(format!("a route without {{appid}}: {error}")))?
            .into_inner()
            .appid;
        principal.check_app(&appid, context.apps.contains_key(&appid), S::SCOPES)?;
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

    fn extract(request: &HttpRequest) -> Result<Self, ApiError> {
        let principal = context_of(request)?.keys.principal(request)?;
        principal.check_scopes(S::SCOPES)?;
        Ok(Self {
            principal,
            scopes: PhantomData,
        })
    }
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
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Self::extract(request))
    }
}

impl<S: ScopeSet> FromRequest for AuthorizedAnyApp<S> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Self::extract(request))
    }
}
