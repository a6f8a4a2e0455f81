//! Every code an error answer of the API can carry: its statuses and what it
//! means. The OpenAPI document (`src/api/openapi.rs`) lists, per route, the
//! codes of this catalogue it can answer; an [`ApiError`](super::ApiError)
//! built with a code not listed here fails a debug build's assertion, and
//! the contract test (`tests/api/contract.rs`) checks the catalogue against
//! the document and the source both ways.

/// One error code of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The `error.code` of the answer.
    pub code: &'static str,
    /// The HTTP statuses an answer with this code can have.
    pub statuses: &'static [u16],
    /// What it means, for the document.
    pub meaning: &'static str,
}

const fn code(code: &'static str, statuses: &'static [u16], meaning: &'static str) -> Code {
    Code {
        code,
        statuses,
        meaning,
    }
}

/// The catalogue, by theme.
#[rustfmt::skip]
pub const CODES: &[Code] = &[
    // Who calls.
    code("missing_api_key", &[401], "no Authorization header: send `Authorization: Bearer <key>`"),
    code("invalid_api_key", &[401], "the bearer is not a key this gateway knows (or was revoked)"),
    code("invalid_session", &[401], "the session token is unknown, expired or ended: log in again"),
    code("forbidden", &[403], "the key is not allowed this app or this route's scope, or the session is another app's"),
    code("session_required", &[403], "an API key on a route only a user's session may call"),
    code("api_key_required", &[403], "a session token on a route only an API key may call"),
    code("origin_not_allowed", &[403], "a browser Origin the app's cors_origins does not list"),
    code("unknown_app", &[404], "the app is not configured"),
    code("rate_limited", &[429], "a request rate limit, or WeChat's per-minute limit, was reached: see Retry-After"),
    // Reading the request.
    code("unsupported_media_type", &[415], "the body is not sent as application/json (UTF-8)"),
    code("body_too_large", &[413], "the body is larger than the route allows"),
    code("body_timeout", &[408], "the body did not arrive in time"),
    code("invalid_json", &[400], "the body is not JSON, has a key twice, or is not the route's shape"),
    code("unreadable_body", &[400], "the body broke off"),
    code("bad_request", &[400], "a request the framework refused before its handler (a path or query it could not read)"),
    code("not_found", &[404], "no such endpoint (any method on an unknown path), or no such broadcast"),
    code("method_not_allowed", &[405], "the path exists but not with this method: see Allow"),
    code("internal", &[500], "a failure of the gateway's own (logged, not told)"),
    code("database_unavailable", &[503], "the ledger cannot be reached"),
    // Send.
    code("invalid_field", &[422], "a field has a value the route does not take"),
    code("invalid_template_data", &[422], "the data does not fit the template or channel: see field and rule"),
    code("invalid_idempotency_key", &[400], "Idempotency-Key is not 1 to 255 visible ASCII characters"),
    code("idempotency_key_reused", &[422], "the Idempotency-Key was used with another body"),
    code("idempotency_key_in_flight", &[409], "a request with this Idempotency-Key is still running"),
    code("urgent_not_allowed", &[403], "`urgent: true` needs a key with the urgent scope"),
    code("no_credential", &[409], "the user holds no usable credential or grant"),
    code("credential_not_ready", &[409], "the only credentials are prepay_ids WeChat does not know yet: try again shortly"),
    code("daily_quota_exhausted", &[429], "the app's daily WeChat quota is spent: see Retry-After"),
    code("user_send_limit", &[429], "a per-user send cap is full: see retry_at"),
    code("quiet_hours", &[429], "inside the app's quiet hours: see opens_at"),
    code("cancelled", &[409], "the scheduled message was cancelled"),
    code("invalid_template_id", &[422], "WeChat (or the gateway) knows no such template id"),
    code("invalid_page", &[422], "WeChat refused the page"),
    code("invalid_data", &[422], "WeChat refused the data"),
    code("invalid_openid", &[400, 422], "the openid cannot be one (400 in a path), or WeChat does not know it as the app's user"),
    code("content_blacklisted", &[422], "WeChat refused the content"),
    code("request_rejected", &[422], "WeChat refused the request"),
    code("api_retired", &[502], "WeChat retired this API"),
    code("token_unavailable", &[500, 503], "no access_token could be had (503), or the ledger failed reading it (500)"),
    code("token_rejected", &[502], "WeChat rejected a freshly refreshed access_token"),
    code("token_refused", &[502], "WeChat refused to issue a token (appid or secret)"),
    code("upstream_busy", &[503], "WeChat answered busy after every retry"),
    code("upstream_unreachable", &[503], "WeChat could not be reached; nothing was sent"),
    code("upstream_circuit_open", &[503], "WeChat failed repeatedly: calls are held back, see Retry-After"),
    code("attempt_limit_reached", &[503], "too many dead credentials in a row"),
    code("outcome_unknown", &[502], "WeChat may or may not have delivered: the credential counts as spent"),
    code("outcome_pending", &[202], "WeChat was called but the outcome is not settled yet: poll the message"),
    code("upstream_error", &[502], "WeChat answered an errcode without a rule"),
    // Messages.
    code("message_not_found", &[404], "no message with this id for this app"),
    code("not_scheduled", &[409], "the message is no longer scheduled"),
    // Tokens.
    code("invalid_stale_token", &[422], "stale_token is not a token"),
    // Credentials and prompts.
    code("invalid_body", &[400, 422], "the body is not the route's shape"),
    code("too_many_items", &[413], "the batch carries more items than ledger.max_batch"),
    code("invalid_item", &[422], "a credential is not a JSON object"),
    code("missing_field", &[422], "a required field is missing or null"),
    code("invalid_type", &[422], "a field has the wrong JSON type"),
    code("unknown_field", &[422], "the body has a field the route does not know"),
    code("unknown_kind", &[422], "kind is not form_id or prepay_id"),
    code("mock_form_id", &[422], "a formId from WeChat's developer tools"),
    code("client_failure", &[422], "the client failed to obtain a formId"),
    code("kind_mismatch", &[422], "the value is of another kind"),
    code("invalid_characters", &[422], "the value has characters WeChat never puts in one"),
    code("empty_value", &[422], "the value is empty"),
    code("value_too_long", &[422], "the value is longer than 64 characters"),
    code("invalid_collected_at", &[422], "collected_at is not a time"),
    code("collected_in_future", &[422], "collected_at is later than now"),
    code("already_expired", &[422], "the credential has expired already"),
    code("kind_conflict", &[422], "the value is stored already as another kind"),
    code("owned_by_another_user", &[422], "the value is stored already for another user"),
    code("invalid_request_id", &[422], "request_id is not 1 to 128 visible ASCII characters"),
    code("invalid_result", &[422], "result is not the object wx.requestSubscribeMessage resolved with"),
    code("invalid_status", &[422], "a template's decision is not one WeChat gives"),
    code("prompt_failed", &[422], "the prompt did not resolve: nothing was granted"),
    code("too_many_templates", &[422], "one prompt carries more templates than WeChat allows"),
    code("request_id_reused", &[409], "this request_id was posted before with another result"),
    // Templates.
    code("invalid_query", &[400], "the query string cannot be read, or names a parameter twice or unknown"),
    code("invalid_channel", &[422], "channel is not template or subscribe, or does not fit the request"),
    code("invalid_tid", &[422], "not a public title id of the subscribe library"),
    code("invalid_library_id", &[422], "not an id of the classic library"),
    code("invalid_keyword_ids", &[422], "keyword_ids do not fit the title"),
    code("invalid_scene_desc", &[422], "scene_desc is longer than WeChat allows"),
    code("invalid_paging", &[422], "start, limit or count out of WeChat's range (or the console's limit out of 1 to 100)"),
    code("invalid_cursor", &[422], "`before` is not the id of a message of the app"),
    code("invalid_category_ids", &[422], "category_ids are not the account's"),
    code("unknown_template", &[404], "WeChat knows no template or library title with this id"),
    code("template_limit_reached", &[409], "the app holds as many templates as WeChat allows"),
    code("template_not_listed", &[502], "WeChat added a template but does not list it"),
    code("wechat_refused", &[502], "WeChat refuses this account or template the call"),
    code("wechat_rate_limited", &[429], "WeChat's limit of this API was reached"),
    code("wechat_busy", &[503], "WeChat is busy: try again later"),
    code("wechat_error", &[502], "WeChat refused the call with an errcode without a rule"),
    code("wechat_unreachable", &[503], "WeChat could not be reached"),
    code("wechat_answer_lost", &[502], "WeChat's answer was lost: the call may have taken effect"),
    code("wechat_unexpected_answer", &[502], "WeChat answered something the gateway cannot read"),
    code("invalid_draft", &[422], "the template draft is not one the linter reads"),
    // Broadcasts.
    code("broadcast_state", &[409], "the broadcast's state does not allow the command: see state"),
    // Webhooks.
    code("invalid_webhook_url", &[422], "the URL is not an https address the gateway may call"),
    code("unknown_event_type", &[422], "an event type the gateway does not send"),
    code("too_many_webhooks", &[409], "the app has as many endpoints as allowed"),
    code("webhook_not_found", &[404], "no such endpoint for this app"),
    code("webhook_disabled", &[409], "the endpoint is disabled"),
    code("invalid_since", &[422], "since is not an RFC 3339 time"),
    // Sessions.
    code("invalid_code", &[401], "the wx.login code is invalid, expired or used"),
    code("login_rate_limited", &[429], "WeChat's per-minute login limit for this user"),
    code("user_blocked", &[403], "WeChat blocks this user's login"),
    code("app_configuration", &[502], "WeChat refused the app's configuration"),
    code("wechat_unavailable", &[503], "WeChat could not answer the login"),
    code("openid_not_allowed", &[422], "a /me body names an openid"),
    // API keys.
    code("invalid_key_request", &[422], "the key request is not {name, apps, scopes} within the admin key's rights"),
    code("key_name_taken", &[409], "a live key has this name"),
    code("unknown_key", &[404], "no live key has this name"),
    // Message push (from WeChat).
    code("bad_query", &[400], "the push's query lacks or garbles signature, timestamp, nonce or encrypt_type"),
    code("stale_timestamp", &[401], "the push's timestamp is too far from now"),
    code("bad_signature", &[401], "the push's signature does not match the push token"),
    code("bad_mode", &[400], "the push is plain where only encrypted is taken, or lacks Encrypt"),
    code("no_encoding_aes_key", &[400], "an encrypted push for an app without EncodingAESKey"),
    code("bad_document", &[400], "the push is not a readable XML or JSON document"),
    code("bad_ciphertext", &[400], "Encrypt could not be opened"),
    code("bad_event", &[400], "the document is not a valid event"),
];

/// The catalogue's entry of `code`.
pub fn find(code: &str) -> Option<&'static Code> {
    CODES.iter().find(|entry| entry.code == code)
}
