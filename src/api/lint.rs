//! `POST /v1/template-lint` (scope admin): the template audit rules of the
//! original documents (审核说明, rules 1.1–2.5) as a service. With an `appid`,
//! the draft's title is compared with that app's stored templates (1.1,
//! 1.2). Never calls WeChat.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::authorized::{AdminScope, AuthorizedAnyApp};
use super::error::ApiError;
use super::responses::{LintFinding, Linted};
use super::ApiContext;
use crate::ledger::template_lint::{lint as lint_draft, KeywordDraft, Severity};

/// Bounds on a draft: well above any real template, small enough to keep the
/// quadratic similarity checks cheap.
const MAX_TITLE_CHARS: usize = 64;
const MAX_KEYWORDS: usize = 30;
const MAX_KEYWORD_CHARS: usize = 64;
const MAX_EXAMPLE_CHARS: usize = 256;

/// 422 `invalid_draft`: the draft is not one the linter reads.
fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_draft", message)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Draft {
    title: String,
    #[serde(default, deserialize_with = "formid_core::nulls::null_as_default")]
    keywords: Vec<KeywordDraft>,
    appid: Option<String>,
}

/// The draft, read and checked against the bounds.
fn draft_of(body: serde_json::Value) -> Result<Draft, ApiError> {
    // serde reads a struct from a JSON array of its fields too: refuse that.
    if !body.is_object() {
        return Err(ApiError::invalid_json("the body must be a JSON object"));
    }
    let draft: Draft = serde_json::from_value(body).map_err(|error| invalid(error.to_string()))?;
    let chars = |text: &str| text.chars().count();
    if draft.title.trim().is_empty() || chars(&draft.title) > MAX_TITLE_CHARS {
        return Err(invalid(format!(
            "title must be 1 to {MAX_TITLE_CHARS} characters"
        )));
    }
    if draft.keywords.len() > MAX_KEYWORDS {
        return Err(invalid(format!(
            "a draft has at most {MAX_KEYWORDS} keywords"
        )));
    }
    if draft
        .keywords
        .iter()
        .any(|k| chars(&k.name) > MAX_KEYWORD_CHARS || chars(&k.example) > MAX_EXAMPLE_CHARS)
    {
        return Err(invalid(format!(
            "a keyword name is at most {MAX_KEYWORD_CHARS} characters, an example at most {MAX_EXAMPLE_CHARS}"
        )));
    }
    Ok(draft)
}

/// Lints a template draft: `{"title":"…","keywords":[{"name":"…","example":"…"}],"appid"?:"…"}`
/// → `{"findings":[{"rule":"1.3","severity":"error","keyword":null,"message":"…"}],"errors":N,"warnings":N}`.
#[utoipa::path(
    post, path = "/v1/template-lint", tag = "lint", operation_id = "lint_template",
    request_body = crate::api::requests::LintDraft,
    responses((status = 200, description = "The findings", body = crate::api::responses::Linted)),
    security(("api_key" = [])),
)]
pub async fn lint(
    auth: AuthorizedAnyApp<AdminScope>,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    // The key first (any app), then the body; with an appid, the key must
    // be allowed that app too.
    let body = context.read_json(&request, payload).await?.value;
    let draft = draft_of(body)?;
    let existing: Vec<String> = match &draft.appid {
        Some(appid) => {
            let app = auth.for_app(&context, appid)?;
            context
                .storage
                .templates(app.appid())
                .await?
                .into_iter()
                .map(|t| t.title)
                .collect()
        }
        None => Vec::new(),
    };
    let findings = lint_draft(&draft.title, &draft.keywords, &existing);
    let count = |severity: Severity| findings.iter().filter(|f| f.severity == severity).count();
    Ok(HttpResponse::Ok().json(Linted {
        compared_with: existing.len(),
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        findings: findings.into_iter().map(LintFinding::from).collect(),
    }))
}
