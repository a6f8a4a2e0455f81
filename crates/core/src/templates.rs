//! The template catalogue as rules: the placeholders a template's `content`
//! declares, and the checks a send must pass before anything is claimed or
//! sent.
//!
//! Pure: no database, no HTTP. The send route (`api/messages.rs`) asks the
//! catalogue for the app's template (`Catalogue::for_send`: a per-process
//! copy of `Storage::send_templates`, each entry already a
//! [`CatalogueTemplate`]) and calls [`check_send`] with the request's parts;
//! a failure is a 422 `invalid_template_data` naming the field and the rule.
//!
//! The value rules of subscribe placeholders are the table of
//! docs/wechat/subscribe-messages.md, "Value rules per placeholder type",
//! one [`ValueRule`] per row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::NaiveDate;
use serde::Serialize;
use serde_json::{Map, Value};

use super::states::{Channel, SubscriptionType};

/// The longest `page` forwarded: WeChat gives no bound; this keeps rows small
/// and matches the send request's own bound (`ledger::message`).
pub const MAX_PAGE_LEN: usize = 1024;

/// The type of a subscribe placeholder: the prefix of its name (`thing` in
/// `thing1`, `character_string` in `character_string13`), the `rule` of a
/// public keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueRule {
    /// ≤ 20 characters of any kind.
    Thing,
    /// ≤ 32 digits, a decimal point allowed.
    Number,
    /// ≤ 32 letters.
    Letter,
    /// ≤ 5 symbols.
    Symbol,
    /// ≤ 32 digits, letters or symbols.
    CharacterString,
    /// A 24-hour time, optionally after a date; a `~` range allowed.
    Time,
    /// A date, optionally followed by a 24-hour time; a `~` range allowed.
    Date,
    /// One currency symbol (optional) + ≤ 10 digits, decimals allowed, may end with `元`.
    Amount,
    /// ≤ 17 digits and symbols.
    PhoneNumber,
    /// ≤ 8 characters; the first and last may be Chinese, the rest letters or digits.
    CarNumber,
    /// ≤ 10 Chinese characters, or ≤ 20 letters or symbols.
    Name,
    /// ≤ 5 Chinese characters.
    Phrase,
    /// One of the values the template lists for it (`keywordEnumValueList`).
    Enum,
}

impl ValueRule {
    /// Every rule, in the order of the table of value rules.
    pub const ALL: [ValueRule; 13] = [
        ValueRule::Thing,
        ValueRule::Number,
        ValueRule::Letter,
        ValueRule::Symbol,
        ValueRule::CharacterString,
        ValueRule::Time,
        ValueRule::Date,
        ValueRule::Amount,
        ValueRule::PhoneNumber,
        ValueRule::CarNumber,
        ValueRule::Name,
        ValueRule::Phrase,
        ValueRule::Enum,
    ];

    /// The name WeChat uses (the prefix of a placeholder, a keyword's `rule`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Thing => "thing",
            Self::Number => "number",
            Self::Letter => "letter",
            Self::Symbol => "symbol",
            Self::CharacterString => "character_string",
            Self::Time => "time",
            Self::Date => "date",
            Self::Amount => "amount",
            Self::PhoneNumber => "phone_number",
            Self::CarNumber => "car_number",
            Self::Name => "name",
            Self::Phrase => "phrase",
            Self::Enum => "enum",
        }
    }

    /// The rule named by a type such as `thing` or `character_string`
    /// (`enum_string` too, the spelling some templates use).
    pub fn from_type(text: &str) -> Option<Self> {
        if text == "enum_string" {
            return Some(Self::Enum);
        }
        Self::ALL.into_iter().find(|rule| rule.as_str() == text)
    }

    /// The rule in a sentence, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Thing => "at most 20 characters",
            Self::Number => "at most 32 digits, with at most one decimal point",
            Self::Letter => "at most 32 letters",
            Self::Symbol => "at most 5 symbols",
            Self::CharacterString => "at most 32 digits, letters or symbols",
            Self::Time => "a 24-hour time, optionally after a date (e.g. 15:01 or 2019年10月1日 15:01); a range joined by ~ is allowed",
            Self::Date => "a date, optionally followed by a 24-hour time (e.g. 2019年10月1日); a range joined by ~ is allowed",
            Self::Amount => "an amount: one currency symbol at most, at most 10 digits, decimals allowed, may end with 元",
            Self::PhoneNumber => "at most 17 digits and symbols",
            Self::CarNumber => "a car number of at most 8 characters: the first and last may be Chinese, the rest letters or digits",
            Self::Name => "at most 10 Chinese characters, or at most 20 letters or symbols",
            Self::Phrase => "at most 5 Chinese characters",
            Self::Enum => "one of the values the template lists",
        }
    }

    /// Whether a non-empty `value` obeys this rule; `Enum` is judged by the
    /// caller, which knows the template's values.
    pub fn accepts(self, value: &str) -> bool {
        let len = value.chars().count();
        match self {
            Self::Thing => len <= 20 && !value.chars().any(char::is_control),
            Self::Number => len <= 32 && is_decimal(value),
            Self::Letter => len <= 32 && value.chars().all(|c| c.is_ascii_alphabetic()),
            Self::Symbol => len <= 5 && value.chars().all(is_symbol),
            Self::CharacterString => {
                len <= 32
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || is_symbol(c))
            }
            Self::Time => each_side_of_range(value, is_time),
            Self::Date => each_side_of_range(value, is_date),
            Self::Amount => is_amount(value),
            Self::PhoneNumber => {
                len <= 17
                    && value.chars().any(|c| c.is_ascii_digit())
                    && value.chars().all(|c| c.is_ascii_digit() || is_symbol(c))
            }
            Self::CarNumber => is_car_number(value),
            Self::Name => is_name(value),
            Self::Phrase => len <= 5 && value.chars().all(is_cjk),
            Self::Enum => true,
        }
    }
}

/// One `{{name.DATA}}` of a template's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placeholder {
    /// The data key: `keyword1`, `thing1`, `character_string13`.
    pub name: String,
    /// The type: the name without its trailing digits (`keyword`, `thing`,
    /// `character_string`).
    #[serde(rename = "type")]
    pub kind: String,
}

impl Placeholder {
    /// The subscribe value rule of this placeholder, when its type is one of
    /// the table of value rules.
    pub fn rule(&self) -> Option<ValueRule> {
        ValueRule::from_type(&self.kind)
    }
}

/// The placeholders of a template's content, in order of first appearance:
/// `购买地点{{keyword1.DATA}}\n` → `keyword1` (type `keyword`),
/// `会议时间:{{date2.DATA}}` → `date2` (type `date`). Text that is not a
/// well-formed placeholder is ignored.
pub fn parse_placeholders(content: &str) -> Vec<Placeholder> {
    let mut found: Vec<Placeholder> = Vec::new();
    let mut rest = content;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let inner = after[..end].trim();
        rest = &after[end + 2..];
        let Some(name) = inner.strip_suffix(".DATA") else {
            continue;
        };
        let well_formed = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && name.as_bytes()[0].is_ascii_alphabetic();
        if !well_formed || found.iter().any(|p| p.name == name) {
            continue;
        }
        let kind = name.trim_end_matches(|c: char| c.is_ascii_digit());
        found.push(Placeholder {
            name: name.to_owned(),
            kind: kind.to_owned(),
        });
    }
    found
}

/// A template of the app's catalogue, as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogueTemplate {
    /// `template_id` (classic) or `priTmplId` (subscribe).
    pub template_id: String,
    /// Which send API it belongs to.
    pub channel: Channel,
    /// The title.
    pub title: String,
    /// The content, with its `{{name.DATA}}` placeholders.
    pub content: String,
    /// WeChat's example.
    pub example: String,
    /// One-time or long-term (classic templates are one-time).
    #[serde(rename = "type")]
    pub subscription: SubscriptionType,
    /// The placeholders parsed from `content`.
    pub placeholders: Vec<Placeholder>,
    /// Enum placeholders' allowed values, by placeholder name (without `.DATA`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub enum_values: BTreeMap<String, Vec<String>>,
}

impl CatalogueTemplate {
    /// A template from its stored parts; the placeholders are parsed from
    /// `content`. `enum_values` keys may carry `.DATA` (as WeChat's
    /// `keywordCode` does); it is dropped.
    pub fn new(
        template_id: impl Into<String>,
        channel: Channel,
        title: impl Into<String>,
        content: impl Into<String>,
        example: impl Into<String>,
        subscription: SubscriptionType,
        enum_values: BTreeMap<String, Vec<String>>,
    ) -> Self {
        let content = content.into();
        Self {
            template_id: template_id.into(),
            channel,
            title: title.into(),
            placeholders: parse_placeholders(&content),
            content,
            example: example.into(),
            subscription,
            enum_values: enum_values
                .into_iter()
                .map(|(key, values)| (strip_data(&key).to_owned(), values))
                .collect(),
        }
    }

    fn placeholder(&self, name: &str) -> Option<&Placeholder> {
        self.placeholders.iter().find(|p| p.name == name)
    }
}

fn strip_data(key: &str) -> &str {
    key.strip_suffix(".DATA").unwrap_or(key)
}

/// The parts of a send request the checks read, channel-specific ones
/// included; built by the send path from the request it parsed.
#[derive(Debug, Clone, Copy)]
pub struct SendParts<'a> {
    /// The channel the message goes out on (named by the request, or the template's).
    pub channel: Channel,
    /// `data`, when given.
    pub data: Option<&'a Map<String, Value>>,
    /// `page`, when given.
    pub page: Option<&'a str>,
    /// `emphasis_keyword` (legacy only), when given.
    pub emphasis_keyword: Option<&'a str>,
    /// The top-level `color` (legacy only), when given.
    pub color: Option<&'a str>,
}

/// Why a send does not fit its template: 422 `invalid_template_data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct InvalidTemplateData {
    /// The field at fault, as a path: `data.thing1.value`, `page`, `emphasis_keyword`.
    pub field: String,
    /// The rule broken, machine-readable: `missing_placeholder`,
    /// `unknown_placeholder`, `data_suffix`, `value_type`, `empty_value`,
    /// `enum_value`, `not_in_subscribe`, `emphasis_keyword`, `color`,
    /// `page`, `channel`, `value_shape`.
    pub rule: &'static str,
    /// A sentence for a person.
    pub message: String,
}

impl InvalidTemplateData {
    /// A broken rule of `field`.
    pub fn new(field: impl Into<String>, rule: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule,
            message: message.into(),
        }
    }
}

/// The top-level fields only a template message has, refused on a
/// subscribe send whatever its template: WeChat would refuse them (47003)
/// or drop them silently.
pub fn check_no_template_fields(
    emphasis_keyword: Option<&str>,
    color: Option<&str>,
) -> Result<(), InvalidTemplateData> {
    if emphasis_keyword.is_some() {
        return Err(InvalidTemplateData::new(
            "emphasis_keyword",
            "not_in_subscribe",
            "a subscribe message has no emphasis_keyword: remove it",
        ));
    }
    if color.is_some() {
        return Err(InvalidTemplateData::new(
            "color",
            "not_in_subscribe",
            "a subscribe message has no colours: remove color",
        ));
    }
    Ok(())
}

/// Checks a send against its catalogued template, before any credential is
/// claimed: the first rule broken, in this order:
///
/// 1. the channel is the template's;
/// 2. `page` is a relative in-app path: no scheme, no host, no leading `/`,
///    no spaces or control characters, at most [`MAX_PAGE_LEN`] bytes;
/// 3. subscribe: no `emphasis_keyword`, no `color` (top-level or per field);
///    legacy: `emphasis_keyword` is `keywordN.DATA` naming a placeholder,
///    colours are `#RRGGBB`;
/// 4. every `data` key is a placeholder (a subscribe key with `.DATA` is
///    refused as such), and every placeholder has a key;
/// 5. each value is a string or number; a subscribe value is non-empty and
///    obeys its type (enum: one of the template's values).
pub fn check_send(
    template: &CatalogueTemplate,
    parts: &SendParts<'_>,
) -> Result<(), InvalidTemplateData> {
    if parts.channel != template.channel {
        return Err(InvalidTemplateData::new(
            "channel",
            "channel",
            format!(
                "template {} is a {} template; it cannot be sent on the {} channel",
                template.template_id,
                template.channel.as_str(),
                parts.channel.as_str()
            ),
        ));
    }
    if let Some(page) = parts.page {
        check_page(page)?;
    }
    let subscribe = template.channel == Channel::Subscribe;
    if subscribe {
        check_no_template_fields(parts.emphasis_keyword, parts.color)?;
    } else {
        if let Some(keyword) = parts.emphasis_keyword {
            check_emphasis(template, keyword)?;
        }
        if let Some(color) = parts.color {
            check_color("color", color)?;
        }
    }
    let empty = Map::new();
    let data = parts.data.unwrap_or(&empty);
    for key in data.keys() {
        if template.placeholder(key).is_some() {
            continue;
        }
        let stripped = strip_data(key);
        if subscribe && stripped != key && template.placeholder(stripped).is_some() {
            return Err(InvalidTemplateData::new(
                format!("data.{key}"),
                "data_suffix",
                format!("subscribe data keys carry no .DATA suffix: use {stripped}"),
            ));
        }
        return Err(InvalidTemplateData::new(
            format!("data.{key}"),
            "unknown_placeholder",
            format!(
                "template {} has no placeholder {key}; its placeholders are {}",
                template.template_id,
                names(template)
            ),
        ));
    }
    if let Some(missing) = template
        .placeholders
        .iter()
        .find(|p| !data.contains_key(&p.name))
    {
        return Err(InvalidTemplateData::new(
            format!("data.{}", missing.name),
            "missing_placeholder",
            format!(
                "data.{} is missing: template {} needs {}",
                missing.name,
                template.template_id,
                names(template)
            ),
        ));
    }
    for placeholder in &template.placeholders {
        check_field(template, placeholder, &data[&placeholder.name])?;
    }
    Ok(())
}

fn names(template: &CatalogueTemplate) -> String {
    let names: Vec<&str> = template
        .placeholders
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn check_page(page: &str) -> Result<(), InvalidTemplateData> {
    let refuse = |why: &str| {
        Err(InvalidTemplateData::new(
            "page",
            "page",
            format!("page must be a relative in-app path such as pages/order/detail?id=1: {why}"),
        ))
    };
    if page.len() > MAX_PAGE_LEN {
        return refuse("it is longer than 1024 bytes");
    }
    let path = page.split(['?', '#']).next().unwrap_or("");
    if path.starts_with('/') || path.starts_with('\\') {
        return refuse("it starts with a slash (WeChat answers 41030)");
    }
    if let Some((scheme, _)) = path.split_once(':') {
        if !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return refuse("it names a scheme, not an in-app page");
        }
    }
    if page.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("it contains spaces or control characters");
    }
    if !page.is_empty() && path.is_empty() {
        return refuse("it has a query but no path");
    }
    Ok(())
}

fn check_emphasis(template: &CatalogueTemplate, keyword: &str) -> Result<(), InvalidTemplateData> {
    let named = keyword
        .strip_suffix(".DATA")
        .and_then(|name| template.placeholder(name));
    if named.is_some() {
        return Ok(());
    }
    let example = template.placeholders.first().map_or_else(
        || "keyword1.DATA".to_owned(),
        |p| format!("{}.DATA", p.name),
    );
    Err(InvalidTemplateData::new(
        "emphasis_keyword",
        "emphasis_keyword",
        format!(
            "emphasis_keyword must name one of the template's keywords as {example}; \
             {keyword:?} does not"
        ),
    ))
}

fn check_color(field: &str, color: &str) -> Result<(), InvalidTemplateData> {
    let ok = color.len() == 7
        && color.starts_with('#')
        && color[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(InvalidTemplateData::new(
            field,
            "color",
            format!("{field} must be a colour as #RRGGBB, e.g. #173177"),
        ))
    }
}

fn check_field(
    template: &CatalogueTemplate,
    placeholder: &Placeholder,
    field: &Value,
) -> Result<(), InvalidTemplateData> {
    let name = &placeholder.name;
    let (object, value) = field_value(name, field)?;
    let subscribe = template.channel == Channel::Subscribe;
    if let Some(color) = object.get("color") {
        check_field_color(name, color, subscribe)?;
    }
    if let Some(other) = object.keys().find(|k| *k != "value" && *k != "color") {
        return Err(InvalidTemplateData::new(
            format!("data.{name}.{other}"),
            "value_shape",
            format!("data.{name} may carry only value (and color, legacy only), not {other}"),
        ));
    }
    // Only subscribe templates say what their values may be.
    if !subscribe {
        return Ok(());
    }
    check_subscribe_value(template, placeholder, &value)
}

/// The field `data.{name}` as an object and its `value` as text (a number is
/// taken as written).
fn field_value<'f>(
    name: &str,
    field: &'f Value,
) -> Result<(&'f Map<String, Value>, String), InvalidTemplateData> {
    let shape = || {
        InvalidTemplateData::new(
            format!("data.{name}"),
            "value_shape",
            format!("data.{name} must be {{\"value\": text}}"),
        )
    };
    let object = field.as_object().ok_or_else(shape)?;
    let value = match object.get("value") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => return Err(shape()),
    };
    Ok((object, value))
}

/// `data.{name}.color`: a legacy template's colour; a subscribe message has
/// none.
fn check_field_color(
    name: &str,
    color: &Value,
    subscribe: bool,
) -> Result<(), InvalidTemplateData> {
    if subscribe {
        return Err(InvalidTemplateData::new(
            format!("data.{name}.color"),
            "not_in_subscribe",
            format!("a subscribe message has no colours: remove data.{name}.color"),
        ));
    }
    match color.as_str() {
        Some(text) => check_color(&format!("data.{name}.color"), text),
        None => Err(InvalidTemplateData::new(
            format!("data.{name}.color"),
            "color",
            format!("data.{name}.color must be a colour as #RRGGBB, e.g. #173177"),
        )),
    }
}

/// A subscribe value against the template: not empty, one of its enum
/// values if it lists them, else of its placeholder's type.
fn check_subscribe_value(
    template: &CatalogueTemplate,
    placeholder: &Placeholder,
    value: &str,
) -> Result<(), InvalidTemplateData> {
    let name = &placeholder.name;
    let field_path = format!("data.{name}.value");
    if value.trim().is_empty() {
        return Err(InvalidTemplateData::new(
            field_path,
            "empty_value",
            format!("data.{name}.value is empty (WeChat answers 47003)"),
        ));
    }
    if let Some(allowed) = template.enum_values.get(name) {
        if allowed.iter().any(|v| v == value) {
            return Ok(());
        }
        return Err(InvalidTemplateData::new(
            field_path,
            "enum_value",
            format!(
                "data.{name}.value must be one of the template's values: {}",
                allowed.join(", ")
            ),
        ));
    }
    match placeholder.rule() {
        // An enum without its list, or a type this gateway does not know:
        // WeChat judges it.
        Some(ValueRule::Enum) | None => Ok(()),
        Some(rule) if rule.accepts(value) => Ok(()),
        Some(rule) => Err(InvalidTemplateData::new(
            field_path,
            "value_type",
            format!(
                "data.{name}.value is a {} placeholder: {} (WeChat answers 47003)",
                rule.as_str(),
                rule.describe()
            ),
        )),
    }
}

/// A Chinese (CJK unified) character.
fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{4E00}'..='\u{9FFF}'
        | '\u{3400}'..='\u{4DBF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{20000}'..='\u{2A6DF}')
}

/// A symbol: neither a letter, a digit, a Chinese character nor white space.
fn is_symbol(c: char) -> bool {
    !c.is_alphanumeric() && !c.is_whitespace() && !c.is_control()
}

/// Digits with at most one inner decimal point.
fn is_decimal(s: &str) -> bool {
    let mut parts = s.split('.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    parts.next().is_none()
        && !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// "1 currency symbol + ≤10 digits; decimals allowed; may end with 元"; the
/// symbol is optional, the ≤ 10 counts every digit.
fn is_amount(s: &str) -> bool {
    const CURRENCY: &[char] = &['¥', '￥', '$', '€', '£', '₩', '₹', '₽', '฿'];
    let s = s.strip_prefix(CURRENCY).unwrap_or(s);
    let s = s.strip_suffix('元').unwrap_or(s);
    is_decimal(s) && s.bytes().filter(u8::is_ascii_digit).count() <= 10
}

/// `粤A8Z888挂`: ≤ 8 characters, first and last may be Chinese, the rest
/// ASCII letters or digits.
fn is_car_number(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    (2..=8).contains(&n)
        && chars
            .iter()
            .enumerate()
            .all(|(i, &c)| c.is_ascii_alphanumeric() || ((i == 0 || i == n - 1) && is_cjk(c)))
}

/// ≤ 10 Chinese characters, or ≤ 20 letters or symbols; a mix of Chinese and
/// letters counts as Chinese. No digits.
fn is_name(s: &str) -> bool {
    let allowed = s
        .chars()
        .all(|c| is_cjk(c) || c.is_alphabetic() || c == ' ' || is_symbol(c));
    let limit = if s.chars().any(is_cjk) { 10 } else { 20 };
    allowed && s.chars().count() <= limit
}

/// `check` on the value, or on both sides of one `~`.
fn each_side_of_range(s: &str, check: fn(&str) -> bool) -> bool {
    match s.split_once('~') {
        None => check(s.trim()),
        Some((a, b)) => !b.contains('~') && check(a.trim()) && check(b.trim()),
    }
}

/// A time, optionally after a date: `15:01`, `2019年10月1日 15:01`.
fn is_time(s: &str) -> bool {
    is_clock(s) || date_prefix(s).is_some_and(|rest| is_clock(rest.trim_start()))
}

/// A date, optionally followed by a time: `2019年10月1日`, `2019-10-01 08:00`.
fn is_date(s: &str) -> bool {
    date_prefix(s).is_some_and(|rest| rest.is_empty() || is_clock(rest.trim_start()))
}

/// A run of `min..=max` ASCII digits at the start of `s`, and what follows.
fn take_digits(s: &str, min: usize, max: usize) -> Option<(u32, &str)> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n < min || n > max {
        return None;
    }
    Some((s[..n].parse().ok()?, &s[n..]))
}

/// `H:MM` or `HH:MM[:SS]`, 24-hour, and nothing after it.
fn is_clock(s: &str) -> bool {
    let parse = || -> Option<()> {
        let (h, r) = take_digits(s, 1, 2)?;
        let r = r.strip_prefix(':')?;
        let (m, r) = take_digits(r, 2, 2)?;
        let r = match r.strip_prefix(':') {
            Some(r) => {
                let (sec, r) = take_digits(r, 2, 2)?;
                (sec < 60).then_some(r)?
            }
            None => r,
        };
        (h < 24 && m < 60 && r.is_empty()).then_some(())
    };
    parse().is_some()
}

/// A calendar date at the start of `s` (`2019年10月1日`, `2019-10-01`,
/// `2019/10/1`, `2019.10.01`, or `10月1日`); returns the rest.
fn date_prefix(s: &str) -> Option<&str> {
    let valid = |y: u32, m: u32, d: u32| {
        i32::try_from(y)
            .ok()
            .and_then(|y| NaiveDate::from_ymd_opt(y, m, d))
            .is_some()
    };
    if let Some((y, r)) = take_digits(s, 4, 4) {
        if let Some(r) = r.strip_prefix('年') {
            let (m, r) = take_digits(r, 1, 2)?;
            let (d, r) = take_digits(r.strip_prefix('月')?, 1, 2)?;
            let r = r.strip_prefix('日')?;
            return valid(y, m, d).then_some(r);
        }
        let sep = r.chars().next().filter(|c| matches!(c, '-' | '/' | '.'))?;
        let (m, r) = take_digits(&r[1..], 1, 2)?;
        let (d, r) = take_digits(r.strip_prefix(sep)?, 1, 2)?;
        return valid(y, m, d).then_some(r);
    }
    let (m, r) = take_digits(s, 1, 2)?;
    let (d, r) = take_digits(r.strip_prefix('月')?, 1, 2)?;
    let r = r.strip_prefix('日')?;
    // A leap year, so that 2月29日 is a date.
    valid(2000, m, d).then_some(r)
}

/// What the ledger knows of a template a send names.
#[derive(Debug, Clone, Default)]
pub struct TemplateForSend {
    /// The app's catalogue entry, as the send's checks need it.
    pub template: Option<Arc<CatalogueTemplate>>,
    /// The channel the template is known to go through.
    pub channel: Option<Channel>,
}

/// What the ledger knows of an app's templates, for its sends: the
/// catalogue, and every template some user of the app decided on.
#[derive(Debug, Clone, Default)]
pub struct SendTemplates {
    /// Converted once, when read: a send shares the entry instead of
    /// copying its texts and parsing its placeholders again.
    catalogue: HashMap<String, Arc<CatalogueTemplate>>,
    decided: HashSet<String>,
}

impl SendTemplates {
    /// The catalogue's entries and the template ids users decided on.
    pub fn new(
        catalogue: impl IntoIterator<Item = CatalogueTemplate>,
        decided: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            catalogue: catalogue
                .into_iter()
                .map(|template| (template.template_id.clone(), Arc::new(template)))
                .collect(),
            decided: decided.into_iter().collect(),
        }
    }

    /// What a send naming `template_id` goes by: the catalogue's entry and
    /// channel when it knows the template; else `subscribe` when a user
    /// decided on it (only a subscribe template is ever offered in a
    /// prompt); else nothing is known.
    pub fn for_send(&self, template_id: &str) -> TemplateForSend {
        let template = self.catalogue.get(template_id).cloned();
        let channel = template.as_ref().map(|template| template.channel).or(self
            .decided
            .contains(template_id)
            .then_some(Channel::Subscribe));
        TemplateForSend { template, channel }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The document's classic template, as `template/list` answers it
    /// (docs/wechat/template-messages.md, "The classic template library").
    fn classic() -> CatalogueTemplate {
        CatalogueTemplate::new(
            "wDYzYZVxobJivW9oMpSCpuvACOfJXQIoKUm0PY397Tc",
            Channel::Template,
            "购买成功通知",
            "购买地点{{keyword1.DATA}}\n购买时间{{keyword2.DATA}}\n物品名称{{keyword3.DATA}}\n",
            "购买地点:TIT造舰厂\n购买时间:2016年6月6日\n物品名称:咖啡\n",
            SubscriptionType::OneTime,
            BTreeMap::new(),
        )
    }

    /// The document's classic send example: four keywords
    /// (docs/wechat/template-messages.md, "The send").
    fn classic_four() -> CatalogueTemplate {
        CatalogueTemplate::new(
            "TEMPLATE_ID",
            Channel::Template,
            "预订成功通知",
            "订单号{{keyword1.DATA}}\n时间{{keyword2.DATA}}\n酒店{{keyword3.DATA}}\n地址{{keyword4.DATA}}\n",
            "",
            SubscriptionType::OneTime,
            BTreeMap::new(),
        )
    }

    /// A subscribe template with one placeholder of every type.
    fn subscribe() -> CatalogueTemplate {
        let content = "物品名称:{{thing1.DATA}}\n数量:{{number2.DATA}}\n尺码:{{letter3.DATA}}\n\
            评级:{{symbol4.DATA}}\n单号:{{character_string5.DATA}}\n时间:{{time6.DATA}}\n\
            日期:{{date7.DATA}}\n金额:{{amount8.DATA}}\n电话:{{phone_number9.DATA}}\n\
            车牌:{{car_number10.DATA}}\n收货人:{{name11.DATA}}\n状态:{{phrase12.DATA}}\n\
            进度:{{enum_string13.DATA}}\n";
        let mut enums = BTreeMap::new();
        enums.insert(
            "enum_string13.DATA".to_owned(),
            vec!["未发货".to_owned(), "已发货".to_owned()],
        );
        CatalogueTemplate::new(
            "9Aw5ZV1j9xdWTFEkqCpZ7jWySL7aGN6rQom4gXINfJs",
            Channel::Subscribe,
            "订单发货提醒",
            content,
            "",
            SubscriptionType::OneTime,
            enums,
        )
    }

    fn good_subscribe_data() -> Value {
        json!({
            "thing1": {"value": "咖啡"},
            "number2": {"value": "2"},
            "letter3": {"value": "XL"},
            "symbol4": {"value": "★★★"},
            "character_string5": {"value": "SN20240501001"},
            "time6": {"value": "2019年10月1日 15:01"},
            "date7": {"value": "2019年10月1日"},
            "amount8": {"value": "¥88.00"},
            "phone_number9": {"value": "+86-0766-66888866"},
            "car_number10": {"value": "粤A8Z888挂"},
            "name11": {"value": "张三"},
            "phrase12": {"value": "配送中"},
            "enum_string13": {"value": "已发货"},
        })
    }

    fn parts<'a>(channel: Channel, data: &'a Value) -> SendParts<'a> {
        SendParts {
            channel,
            data: data.as_object(),
            page: None,
            emphasis_keyword: None,
            color: None,
        }
    }

    #[test]
    fn placeholders_are_parsed_from_content_in_order_with_their_types() {
        let names: Vec<(String, String)> = classic()
            .placeholders
            .into_iter()
            .map(|p| (p.name, p.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("keyword1", "keyword"),
                ("keyword2", "keyword"),
                ("keyword3", "keyword")
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        // gettemplate's own example (docs/wechat/subscribe-messages.md,
        // "Template management").
        let parsed = parse_placeholders("会议时间:{{date2.DATA}}\n会议地点:{{thing1.DATA}}\n");
        assert_eq!(parsed[0].name, "date2");
        assert_eq!(parsed[0].rule(), Some(ValueRule::Date));
        assert_eq!(parsed[1].rule(), Some(ValueRule::Thing));
        let parsed = parse_placeholders("{{character_string13.DATA}}{{phone_number7.DATA}}");
        assert_eq!(parsed[0].kind, "character_string");
        assert_eq!(parsed[1].rule(), Some(ValueRule::PhoneNumber));
        // Repeats, broken braces and non-placeholders are ignored.
        let parsed =
            parse_placeholders("{{a1.DATA}}{{a1.DATA}}{{b2}}{{ c3.DATA }}{{9x.DATA}}{{d4.DATA");
        let names: Vec<&str> = parsed.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a1", "c3"]);
        assert!(parse_placeholders("").is_empty());
        assert_eq!(subscribe().placeholders.len(), 13);
        assert_eq!(
            subscribe().placeholders[12].rule(),
            Some(ValueRule::Enum),
            "enum_string"
        );
    }

    #[test]
    fn the_documents_own_examples_pass() {
        // The classic send example, colours and emphasis included
        // (docs/wechat/template-messages.md, "The send").
        let data = json!({
            "keyword1": {"value": "339208499", "color": "#173177"},
            "keyword2": {"value": "2015年01月05日 12:30", "color": "#173177"},
            "keyword3": {"value": "粤海喜来登酒店", "color": "#173177"},
            "keyword4": {"value": "广州市天河区天河路208号", "color": "#173177"},
        });
        let send = SendParts {
            page: Some("index"),
            emphasis_keyword: Some("keyword1.DATA"),
            ..parts(Channel::Template, &data)
        };
        assert_eq!(check_send(&classic_four(), &send), Ok(()));
        // The subscribe send's example: page "index?foo=bar", thing1 and
        // time2 (docs/wechat/subscribe-messages.md, "The send").
        let template = CatalogueTemplate::new(
            "T",
            Channel::Subscribe,
            "t",
            "a:{{thing1.DATA}}\nb:{{time2.DATA}}\n",
            "",
            SubscriptionType::OneTime,
            BTreeMap::new(),
        );
        let data = json!({"thing1": {"value": "..."}, "time2": {"value": "2019年10月1日 15:01"}});
        let send = SendParts {
            page: Some("index?foo=bar"),
            ..parts(Channel::Subscribe, &data)
        };
        assert_eq!(check_send(&template, &send), Ok(()));
        // Every type's own example from the table of value rules.
        let data = good_subscribe_data();
        assert_eq!(
            check_send(&subscribe(), &parts(Channel::Subscribe, &data)),
            Ok(())
        );
        // Numbers are values too.
        let data = json!({"keyword1": {"value": 1}, "keyword2": {"value": ""}, "keyword3": {"value": "x"}});
        assert_eq!(
            check_send(&classic(), &parts(Channel::Template, &data)),
            Ok(())
        );
    }

    /// One row per rule: (what, template, request, expected field, expected rule).
    #[test]
    fn each_rule_refuses_with_its_field_and_rule() {
        type Edit = fn(&mut Value);
        struct Row {
            what: &'static str,
            subscribe: bool,
            edit: Edit,
            page: Option<&'static str>,
            emphasis: Option<&'static str>,
            color: Option<&'static str>,
            channel: Option<Channel>,
            field: &'static str,
            rule: &'static str,
        }
        const fn row(
            what: &'static str,
            subscribe: bool,
            edit: Edit,
            field: &'static str,
            rule: &'static str,
        ) -> Row {
            Row {
                what,
                subscribe,
                edit,
                page: None,
                emphasis: None,
                color: None,
                channel: None,
                field,
                rule,
            }
        }
        fn none(_: &mut Value) {}
        fn set(data: &mut Value, key: &str, value: &str) {
            data[key] = json!({ "value": value });
        }
        let rows = [
            row(
                "a key missing",
                true,
                |d| {
                    d.as_object_mut().unwrap().remove("thing1");
                },
                "data.thing1",
                "missing_placeholder",
            ),
            row(
                "a legacy key missing",
                false,
                |d| {
                    d.as_object_mut().unwrap().remove("keyword2");
                },
                "data.keyword2",
                "missing_placeholder",
            ),
            row(
                "an extra key",
                true,
                |d| set(d, "thing99", "x"),
                "data.thing99",
                "unknown_placeholder",
            ),
            row(
                "an extra legacy key",
                false,
                |d| set(d, "keyword4", "x"),
                "data.keyword4",
                "unknown_placeholder",
            ),
            row(
                ".DATA on a subscribe key",
                true,
                |d| {
                    let o = d.as_object_mut().unwrap();
                    let v = o.remove("thing1").unwrap();
                    o.insert("thing1.DATA".into(), v);
                },
                "data.thing1.DATA",
                "data_suffix",
            ),
            row(
                "a value that is not an object",
                true,
                |d| d["thing1"] = json!("咖啡"),
                "data.thing1",
                "value_shape",
            ),
            row(
                "a value that is not text",
                true,
                |d| d["thing1"] = json!({"value": true}),
                "data.thing1",
                "value_shape",
            ),
            row(
                "an unknown field beside value",
                false,
                |d| d["keyword1"] = json!({"value": "a", "font": "x"}),
                "data.keyword1.font",
                "value_shape",
            ),
            row(
                "an empty subscribe value",
                true,
                |d| set(d, "thing1", " "),
                "data.thing1.value",
                "empty_value",
            ),
            row(
                "thing > 20",
                true,
                |d| set(d, "thing1", &"好".repeat(21)),
                "data.thing1.value",
                "value_type",
            ),
            row(
                "number with letters",
                true,
                |d| set(d, "number2", "12a"),
                "data.number2.value",
                "value_type",
            ),
            row(
                "number > 32 digits",
                true,
                |d| set(d, "number2", &"9".repeat(33)),
                "data.number2.value",
                "value_type",
            ),
            row(
                "letter with a digit",
                true,
                |d| set(d, "letter3", "X1"),
                "data.letter3.value",
                "value_type",
            ),
            row(
                "letter > 32",
                true,
                |d| set(d, "letter3", &"a".repeat(33)),
                "data.letter3.value",
                "value_type",
            ),
            row(
                "symbol > 5",
                true,
                |d| set(d, "symbol4", "★★★★★★"),
                "data.symbol4.value",
                "value_type",
            ),
            row(
                "character_string with Chinese",
                true,
                |d| set(d, "character_string5", "单号1"),
                "data.character_string5.value",
                "value_type",
            ),
            row(
                "character_string > 32",
                true,
                |d| set(d, "character_string5", &"x".repeat(33)),
                "data.character_string5.value",
                "value_type",
            ),
            row(
                "time without a time",
                true,
                |d| set(d, "time6", "2019年10月1日"),
                "data.time6.value",
                "value_type",
            ),
            row(
                "time with a broken range",
                true,
                |d| set(d, "time6", "15:01~"),
                "data.time6.value",
                "value_type",
            ),
            row(
                "date that is not one",
                true,
                |d| set(d, "date7", "明天"),
                "data.date7.value",
                "value_type",
            ),
            row(
                "amount > 10 digits",
                true,
                |d| set(d, "amount8", "¥12345678901"),
                "data.amount8.value",
                "value_type",
            ),
            row(
                "amount in words",
                true,
                |d| set(d, "amount8", "免费"),
                "data.amount8.value",
                "value_type",
            ),
            row(
                "phone_number > 17",
                true,
                |d| set(d, "phone_number9", "+86-0766-668888661"),
                "data.phone_number9.value",
                "value_type",
            ),
            row(
                "car_number > 8",
                true,
                |d| set(d, "car_number10", "粤A8Z888挂9"),
                "data.car_number10.value",
                "value_type",
            ),
            row(
                "name > 10 CJK",
                true,
                |d| set(d, "name11", "欧阳娜娜娜娜娜娜娜娜娜"),
                "data.name11.value",
                "value_type",
            ),
            row(
                "name > 20 letters",
                true,
                |d| set(d, "name11", &"a".repeat(21)),
                "data.name11.value",
                "value_type",
            ),
            row(
                "phrase > 5 CJK",
                true,
                |d| set(d, "phrase12", "六个中文字哦"),
                "data.phrase12.value",
                "value_type",
            ),
            row(
                "phrase not CJK",
                true,
                |d| set(d, "phrase12", "ok"),
                "data.phrase12.value",
                "value_type",
            ),
            row(
                "enum value not listed",
                true,
                |d| set(d, "enum_string13", "已签收"),
                "data.enum_string13.value",
                "enum_value",
            ),
            row(
                "colour on a subscribe field",
                true,
                |d| d["thing1"]["color"] = json!("#173177"),
                "data.thing1.color",
                "not_in_subscribe",
            ),
            row(
                "legacy colour not #RRGGBB",
                false,
                |d| d["keyword1"]["color"] = json!("red"),
                "data.keyword1.color",
                "color",
            ),
            row(
                "legacy colour of 3 digits",
                false,
                |d| d["keyword1"]["color"] = json!("#fff"),
                "data.keyword1.color",
                "color",
            ),
            Row {
                color: Some("#17317"),
                ..row("legacy top-level colour", false, none, "color", "color")
            },
            Row {
                color: Some("#173177"),
                ..row(
                    "subscribe top-level colour",
                    true,
                    none,
                    "color",
                    "not_in_subscribe",
                )
            },
            Row {
                emphasis: Some("keyword1.DATA"),
                ..row(
                    "subscribe emphasis",
                    true,
                    none,
                    "emphasis_keyword",
                    "not_in_subscribe",
                )
            },
            Row {
                emphasis: Some("keyword1"),
                ..row(
                    "emphasis without .DATA",
                    false,
                    none,
                    "emphasis_keyword",
                    "emphasis_keyword",
                )
            },
            Row {
                emphasis: Some("keyword9.DATA"),
                ..row(
                    "emphasis of no keyword",
                    false,
                    none,
                    "emphasis_keyword",
                    "emphasis_keyword",
                )
            },
            Row {
                page: Some("https://example.com/x"),
                ..row("page with a scheme", true, none, "page", "page")
            },
            Row {
                page: Some("//example.com/pages/x"),
                ..row("page with a host", false, none, "page", "page")
            },
            Row {
                page: Some("/pages/index/index"),
                ..row("page with a leading slash", true, none, "page", "page")
            },
            Row {
                page: Some("weixin://dl/business"),
                ..row("page with another scheme", true, none, "page", "page")
            },
            Row {
                page: Some("pages/a b"),
                ..row("page with a space", true, none, "page", "page")
            },
            Row {
                page: Some("?id=1"),
                ..row("page without a path", true, none, "page", "page")
            },
            Row {
                page: Some(Box::leak(
                    format!("pages/{}", "a".repeat(1100)).into_boxed_str(),
                )),
                ..row("page too long", true, none, "page", "page")
            },
            Row {
                channel: Some(Channel::Template),
                ..row("the wrong channel", true, none, "channel", "channel")
            },
        ];
        for row in rows {
            let template = if row.subscribe {
                subscribe()
            } else {
                classic()
            };
            let mut data = if row.subscribe {
                good_subscribe_data()
            } else {
                json!({"keyword1": {"value": "TIT造舰厂"}, "keyword2": {"value": "2016年6月6日"}, "keyword3": {"value": "咖啡"}})
            };
            (row.edit)(&mut data);
            let send = SendParts {
                channel: row.channel.unwrap_or(template.channel),
                data: data.as_object(),
                page: row.page,
                emphasis_keyword: row.emphasis,
                color: row.color,
            };
            let error = check_send(&template, &send).expect_err(row.what);
            assert_eq!(
                (error.field.as_str(), error.rule),
                (row.field, row.rule),
                "{}: {}",
                row.what,
                error.message
            );
            assert!(error.message.len() > 20, "{}: {}", row.what, error.message);
        }
    }

    #[test]
    fn a_send_without_data_misses_every_placeholder_and_a_template_without_any_takes_none() {
        let send = SendParts {
            channel: Channel::Template,
            data: None,
            page: Some("pages/order/detail?id=1#top"),
            emphasis_keyword: None,
            color: None,
        };
        let error = check_send(&classic(), &send).unwrap_err();
        assert_eq!(error.rule, "missing_placeholder");
        let bare = CatalogueTemplate::new(
            "T",
            Channel::Subscribe,
            "t",
            "",
            "",
            SubscriptionType::LongTerm,
            BTreeMap::new(),
        );
        assert_eq!(
            check_send(
                &bare,
                &SendParts {
                    channel: Channel::Subscribe,
                    ..send
                }
            ),
            Ok(())
        );
    }

    /// The table of value rules, a row per type: accepted and refused values.
    #[test]
    fn each_value_rule_accepts_and_refuses() {
        use ValueRule::*;
        let table: &[(ValueRule, &[&str], &[&str])] = &[
            (
                Thing,
                &["粤海喜来登酒店", "Order #42 已发货", &"好".repeat(20)],
                &[&"好".repeat(21), "a\u{0}b"],
            ),
            (
                Number,
                &["339208499", "12.5", &"9".repeat(32)],
                &["12a", "1.2.3", ".5", "5.", "-3", &"9".repeat(33)],
            ),
            (
                Letter,
                &["XL", &"a".repeat(32)],
                &["X L", "X1", "中", &"a".repeat(33)],
            ),
            (Symbol, &["★★★", "!?", "-----"], &["★★★★★★", "a!", "1"]),
            (
                CharacterString,
                &["SN20240501001", "4200-0012_x#", &"x".repeat(32)],
                &["单号1", "a b", &"x".repeat(33)],
            ),
            (
                Time,
                &[
                    "15:01",
                    "9:05",
                    "2019年10月1日 15:01",
                    "2019-10-01 15:01:30",
                    "15:01~16:30",
                ],
                &["2019年10月1日", "25:00", "15:1", "3pm", "1:00~2:00~3:00"],
            ),
            (
                Date,
                &[
                    "2019年10月1日",
                    "2019-10-01",
                    "2019/10/1",
                    "2024年2月29日 15:01",
                    "2019年10月1日~2019年10月7日",
                ],
                &[
                    "15:01",
                    "2019年13月1日",
                    "2023年2月29日",
                    "明天",
                    "20191001",
                ],
            ),
            (
                Amount,
                &["¥100.00", "￥8", "$12.5", "100元", "88.00", "¥1234567890"],
                &["¥12345678901", "¥¥1", "1,000", "免费"],
            ),
            (
                PhoneNumber,
                &["+86-0766-66888866", "13800138000", "(020)8888"],
                &["+86-0766-668888661", "电话1380", "+-()", "138 0013"],
            ),
            (
                CarNumber,
                &["粤A8Z888挂", "粤B12345", "AB1234"],
                &["粤A8Z888挂9", "粤A-8Z88", "A粤1234", "粤"],
            ),
            (
                Name,
                &["张三", "欧阳娜娜娜娜娜娜娜娜", "John Smith", "张San"],
                &["欧阳娜娜娜娜娜娜娜娜娜", &"a".repeat(21), "张三3"],
            ),
            (
                Phrase,
                &["配送中", "五个中文字"],
                &["六个中文字哦", "ok", "配送中!"],
            ),
        ];
        for (rule, good, bad) in table {
            for value in *good {
                assert!(rule.accepts(value), "{rule:?} should accept {value:?}");
            }
            for value in *bad {
                assert!(!rule.accepts(value), "{rule:?} should refuse {value:?}");
            }
            assert_eq!(ValueRule::from_type(rule.as_str()), Some(*rule));
        }
        assert_eq!(
            table.len() + 1,
            ValueRule::ALL.len(),
            "every rule but enum has a row"
        );
    }

    #[test]
    fn the_catalogue_names_the_channel_then_a_decision_then_nothing() {
        let entry = |template_id: &str, channel: Channel| {
            CatalogueTemplate::new(
                template_id,
                channel,
                "t",
                "c",
                "",
                SubscriptionType::OneTime,
                BTreeMap::new(),
            )
        };
        let templates = SendTemplates::new(
            [
                entry("classic", Channel::Template),
                entry("catalogued", Channel::Subscribe),
            ],
            ["classic".to_owned(), "decided".to_owned()],
        );
        let channel = |id: &str| templates.for_send(id).channel;
        // The catalogue is WeChat's word: it wins over a decision.
        assert_eq!(channel("classic"), Some(Channel::Template));
        assert_eq!(channel("catalogued"), Some(Channel::Subscribe));
        assert_eq!(channel("decided"), Some(Channel::Subscribe));
        assert_eq!(channel("unknown"), None);
        assert!(templates.for_send("catalogued").template.is_some());
        assert!(templates.for_send("decided").template.is_none());
    }
}
