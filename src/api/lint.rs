//! `POST /v1/template-lint` (scope admin): the template audit rules of the
//! original documents (审核说明, rules 1.1–2.5) as a service. With an `appid`,
//! the draft's title is compared with that app's stored templates (1.1,
//! 1.2). Never calls WeChat.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{render, AccessError, ApiErrorCode, BodyError};
use super::ApiContext;
use crate::config::Scope;
use crate::ledger::template_lint::{lint as lint_draft, KeywordDraft, Severity};

/// Bounds on a draft: well above any real template, small enough to keep the
/// quadratic similarity checks cheap.
const MAX_TITLE_CHARS: usize = 64;
const MAX_KEYWORDS: usize = 30;
const MAX_KEYWORD_CHARS: usize = 64;
const MAX_EXAMPLE_CHARS: usize = 256;

/// Errors of the lint endpoint.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ResponseError for LintError {
    fn status_code(&self) -> StatusCode {
        match self {
            LintError::Access(error) => error.status_code(),
            LintError::Body(error) => error.status_code(),
            LintError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            LintError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        render(self)
    }
}

impl ApiErrorCode for LintError {
    fn code(&self) -> &'static str {
        match self {
            LintError::Access(error) => error.code(),
            LintError::Body(error) => error.code(),
            LintError::Invalid(_) => "invalid_draft",
            LintError::Unexpected(_) => "internal",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Draft {
    title: String,
    #[serde(default)]
    keywords: Vec<KeywordDraft>,
    appid: Option<String>,
}

/// Lints a template draft: `{"title":"…","keywords":[{"name":"…","example":"…"}],"appid"?:"…"}`
/// → `{"findings":[{"rule":"1.3","severity":"error","keyword":null,"message":"…"}],"errors":N,"warnings":N}`.
pub async fn lint(
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, LintError> {
    // The key first (any app), then the body; with an appid, the key must
    // be allowed that app too.
    context.authorize_scope(&request, &[Scope::Admin])?;
    let body = context.read_json(&request, payload).await?.value;
    if !body.is_object() {
        return Err(BodyError::InvalidJson("the body must be a JSON object".into()).into());
    }
    let draft: Draft =
        serde_json::from_value(body).map_err(|error| LintError::Invalid(error.to_string()))?;
    let chars = |text: &str| text.chars().count();
    if draft.title.trim().is_empty() || chars(&draft.title) > MAX_TITLE_CHARS {
        return Err(LintError::Invalid(format!(
            "title must be 1 to {MAX_TITLE_CHARS} characters"
        )));
    }
    if draft.keywords.len() > MAX_KEYWORDS {
        return Err(LintError::Invalid(format!(
            "a draft has at most {MAX_KEYWORDS} keywords"
        )));
    }
    if draft
        .keywords
        .iter()
        .any(|k| chars(&k.name) > MAX_KEYWORD_CHARS || chars(&k.example) > MAX_EXAMPLE_CHARS)
    {
        return Err(LintError::Invalid(format!(
            "a keyword name is at most {MAX_KEYWORD_CHARS} characters, an example at most {MAX_EXAMPLE_CHARS}"
        )));
    }
    let existing: Vec<String> = match &draft.appid {
        Some(appid) => {
            context.authorize(&request, appid, &[Scope::Admin])?;
            context
                .storage
                .templates(appid)
                .await?
                .into_iter()
                .map(|t| t.title)
                .collect()
        }
        None => Vec::new(),
    };
    let findings = lint_draft(&draft.title, &draft.keywords, &existing);
    let count = |severity: Severity| findings.iter().filter(|f| f.severity == severity).count();
    let answer: Value = json!({
        "errors": count(Severity::Error),
        "warnings": count(Severity::Warning),
        "compared_with": existing.len(),
        "findings": findings,
    });
    Ok(HttpResponse::Ok().json(answer))
}
