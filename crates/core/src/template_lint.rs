//! The template audit rules of WeChat's template-message documentation
//! (审核说明: 1.1–1.6 on the title, 2.1–2.5 on the keywords; summarised in
//! docs/wechat/template-messages.md, "The audit rules"), as a pure check of
//! a template draft.
//!
//! WeChat's reviewers are people; these rules are the letter of their guide
//! turned into checks. A finding is an [`Severity::Error`] where the document
//! states the rule plainly and the check is exact (the title's ending, an
//! identical title or keyword, a word the document itself names); it is a
//! [`Severity::Warning`] where the check is a heuristic for a judgement
//! ("过度相似", too similar; "个性化字词", personalised words; words this
//! module adds to the document's own lists). Nothing here calls WeChat.

use serde::{Deserialize, Serialize, Serializer};

/// A keyword of a template draft: its name and the example shown with it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct KeywordDraft {
    /// The keyword, e.g. `购买时间`.
    pub name: String,
    /// Its example value, e.g. `2016年6月6日`.
    pub example: String,
}

/// One audit rule of the documents, numbered as they number it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditRule {
    /// 1.1 标题不能存在相同: no two titles the same.
    TitleUnique,
    /// 1.2 标题意思不能存在过度相似: no two titles too similar in meaning.
    TitleNotTooSimilar,
    /// 1.3 标题必须以"提醒"或"通知"结尾: the title ends with 提醒 or 通知.
    TitleEnding,
    /// 1.4 标题不能带特殊符号、个性化字词: no special symbols or personalised words.
    TitlePlainWords,
    /// 1.5 标题必须能体现具体服务场景: the title names a concrete service scene.
    TitleServiceScene,
    /// 1.6 标题不能涉及营销相关内容: no marketing.
    TitleNoMarketing,
    /// 2.1 同一标题下，关键词不能存在相同: no two keywords the same.
    KeywordUnique,
    /// 2.2 同一标题下，关键词不能存在过度相似: no two keywords too similar.
    KeywordNotTooSimilar,
    /// 2.3 关键词不能带特殊符号、个性化字词: no special symbols or personalised words.
    KeywordPlainWords,
    /// 2.4 关键词内容示例必须与关键词对应匹配: the example fits its keyword.
    ExampleFitsKeyword,
    /// 2.5 关键词不能太过宽泛: no keyword too broad ("内容").
    KeywordNotTooBroad,
}

impl AuditRule {
    /// The rule's number in the documents, `"1.1"` … `"2.5"`.
    pub fn number(self) -> &'static str {
        match self {
            Self::TitleUnique => "1.1",
            Self::TitleNotTooSimilar => "1.2",
            Self::TitleEnding => "1.3",
            Self::TitlePlainWords => "1.4",
            Self::TitleServiceScene => "1.5",
            Self::TitleNoMarketing => "1.6",
            Self::KeywordUnique => "2.1",
            Self::KeywordNotTooSimilar => "2.2",
            Self::KeywordPlainWords => "2.3",
            Self::ExampleFitsKeyword => "2.4",
            Self::KeywordNotTooBroad => "2.5",
        }
    }
}

/// On the wire a rule is its number, as people quote it.
impl Serialize for AuditRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.number())
    }
}

/// How sure the linter is that the reviewers would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The draft breaks the rule as the document words it.
    Error,
    /// The draft probably breaks the rule; a person should look.
    Warning,
}

/// One problem found in a draft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule broken.
    pub rule: AuditRule,
    /// Error or warning.
    pub severity: Severity,
    /// The index in the draft's keywords of the keyword concerned; `None`
    /// for the title.
    pub keyword: Option<usize>,
    /// A sentence for a person.
    pub message: String,
}

/// Normalised similarity (1 − edit distance / length, on characters) from
/// which two titles or two keywords are "too similar" (1.2, 2.2). Calibrated
/// on the documents' own library, whose titles coexist: 购买成功通知 and
/// 购买失败通知 share 4 of 6 characters (0.67) and must pass; 订单号 and
/// 订单编号 (0.75) must not.
const TOO_SIMILAR: f64 = 0.75;

/// The endings 1.3 requires.
const TITLE_ENDINGS: [&str; 2] = ["提醒", "通知"];

/// 1.6's own list: "消费优惠类、购物返利类、商品更新类、优惠券类、代金券类、红包类、
/// 会员卡类、积分类、活动类等营销倾向通知".
const MARKETING_DOC: [&str; 10] = [
    "优惠",
    "返利",
    "商品更新",
    "上新",
    "优惠券",
    "代金券",
    "红包",
    "会员卡",
    "积分",
    "活动",
];
/// Marketing words the document does not list ("包括不限于", not limited to).
const MARKETING_MORE: [&str; 11] = [
    "促销", "秒杀", "特价", "折扣", "满减", "返现", "抽奖", "中奖", "福利", "新品", "大促",
];

/// Personalised, colloquial words with no industry-wide use (1.4, 2.3).
/// Single characters that begin common words (哈 in 哈尔滨) are left out.
const PERSONAL_WORDS: [&str; 14] = [
    "亲爱的",
    "亲~",
    "宝贝",
    "小主",
    "主人",
    "您",
    "你",
    "我们",
    "咱们",
    "哦",
    "啦",
    "呀",
    "哟",
    "哈哈",
];

/// Titles made of these words alone name no service scene (1.5).
const GENERIC_TITLE_WORDS: [&str; 10] = [
    "消息", "系统", "服务", "信息", "通用", "重要", "温馨", "最新", "新", "的",
];

/// Keywords made of these words alone are too broad (2.5; 内容 is the
/// document's own example).
const BROAD_KEYWORD_WORDS: [&str; 14] = [
    "内容", "信息", "备注", "说明", "详情", "消息", "描述", "其他", "事项", "情况", "数据", "温馨",
    "提示", "通知",
];
/// Single words that say little on their own but are sometimes accepted.
const VAGUE_KEYWORDS: [&str; 8] = [
    "时间", "日期", "金额", "名称", "状态", "结果", "类型", "地址",
];

/// Checks a template draft against the audit rules. `existing_titles` are
/// the titles the draft must not repeat or resemble (1.1, 1.2): the app's
/// templates, or a library. Findings come title first, then keyword by
/// keyword, in rule order.
pub fn lint(title: &str, keywords: &[KeywordDraft], existing_titles: &[String]) -> Vec<Finding> {
    let mut findings = Vec::new();
    lint_title(title, existing_titles, &mut findings);
    lint_keywords(keywords, &mut findings);
    findings
}

fn finding(
    rule: AuditRule,
    severity: Severity,
    keyword: Option<usize>,
    message: String,
) -> Finding {
    Finding {
        rule,
        severity,
        keyword,
        message,
    }
}

/// Without white space and with ASCII letters folded: what two names are
/// compared on.
fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn similarity(a: &str, b: &str) -> f64 {
    strsim::normalized_levenshtein(a, b)
}

/// A Chinese (CJK unified) character.
fn is_cjk(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' | '\u{F900}'..='\u{FAFF}')
}

/// Characters a title or keyword may use: Chinese, ASCII letters and digits,
/// and spaces. Anything else (【】, ！, ★, emoji, punctuation) is a special symbol.
fn special_symbols(s: &str) -> Vec<char> {
    let mut found: Vec<char> = Vec::new();
    for c in s.chars() {
        let plain = is_cjk(c) || c.is_ascii_alphanumeric() || c == ' ';
        if !plain && !found.contains(&c) {
            found.push(c);
        }
    }
    found
}

fn quoted(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s` without any of `words`.
fn strip_all(mut s: String, words: &[&str]) -> String {
    // Longest words first, so that 备注信息 loses 备注 and 信息, not a part.
    let mut words = words.to_vec();
    words.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    for w in words {
        s = s.replace(w, "");
    }
    s
}

/// Symbols (→ error) and personalised words (→ warning) in a title or keyword
/// (1.4, 2.3).
fn plain_words(
    rule: AuditRule,
    what: &str,
    text: &str,
    keyword: Option<usize>,
    out: &mut Vec<Finding>,
) {
    let symbols = special_symbols(text);
    if !symbols.is_empty() {
        let list: String = symbols
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(finding(
            rule,
            Severity::Error,
            keyword,
            format!("{what} \"{text}\" carries special symbols ({list}); use words only."),
        ));
    }
    let personal: Vec<&str> = PERSONAL_WORDS
        .iter()
        .copied()
        .filter(|w| text.contains(w))
        .collect();
    if !personal.is_empty() {
        out.push(finding(
            rule,
            Severity::Warning,
            keyword,
            format!(
                "{what} \"{text}\" uses personalised wording ({}) that is not common to the industry.",
                quoted(&personal)
            ),
        ));
    }
}

fn lint_title(title: &str, existing: &[String], out: &mut Vec<Finding>) {
    let title = title.trim();
    let norm = normalise(title);
    let own_stem = title_stem(&norm);
    lint_title_against_existing(title, &norm, &own_stem, existing, out);
    lint_title_ending(title, &norm, out);
    plain_words(AuditRule::TitlePlainWords, "The title", title, None, out);
    lint_title_scene(title, &own_stem, out);
    lint_title_marketing(title, &norm, out);
}

/// A normalised title without the ending 1.3 requires: titles that differ
/// only there say the same thing.
fn title_stem(norm: &str) -> String {
    TITLE_ENDINGS
        .iter()
        .find_map(|e| norm.strip_suffix(e))
        .unwrap_or(norm)
        .to_owned()
}

/// 1.1 and 1.2: one finding per existing title that matches or resembles it.
fn lint_title_against_existing(
    title: &str,
    norm: &str,
    own_stem: &str,
    existing: &[String],
    out: &mut Vec<Finding>,
) {
    for other in existing {
        let other_norm = normalise(other);
        let other_stem = title_stem(&other_norm);
        if other_norm == norm {
            out.push(finding(
                AuditRule::TitleUnique,
                Severity::Error,
                None,
                format!("The title \"{title}\" already exists."),
            ));
        } else if !own_stem.is_empty() && other_stem == own_stem {
            out.push(finding(
                AuditRule::TitleNotTooSimilar,
                Severity::Error,
                None,
                format!(
                    "The title \"{title}\" differs from the existing \"{}\" only in its ending.",
                    other.trim()
                ),
            ));
        } else if !own_stem.is_empty() && similarity(own_stem, &other_stem) >= TOO_SIMILAR {
            out.push(finding(
                AuditRule::TitleNotTooSimilar,
                Severity::Warning,
                None,
                format!(
                    "The title \"{title}\" is very close to the existing \"{}\"; titles must differ in meaning.",
                    other.trim()
                ),
            ));
        }
    }
}

/// 1.3, on the words: a trailing "！" is 1.4's business.
fn lint_title_ending(title: &str, norm: &str, out: &mut Vec<Finding>) {
    let words_end = norm.trim_end_matches(|c: char| !is_cjk(c) && !c.is_ascii_alphanumeric());
    if !TITLE_ENDINGS.iter().any(|e| words_end.ends_with(e)) {
        out.push(finding(
            AuditRule::TitleEnding,
            Severity::Error,
            None,
            format!("The title \"{title}\" must end with \"提醒\" or \"通知\"."),
        ));
    }
}

/// 1.5: once the ending and generic words are gone, something must remain.
fn lint_title_scene(title: &str, own_stem: &str, out: &mut Vec<Finding>) {
    let scene = strip_all(own_stem.to_owned(), &GENERIC_TITLE_WORDS);
    let scene: String = scene
        .chars()
        .filter(|c| is_cjk(*c) || c.is_ascii_alphanumeric())
        .collect();
    if scene.is_empty() {
        out.push(finding(
            AuditRule::TitleServiceScene,
            Severity::Error,
            None,
            format!(
                "The title \"{title}\" names no service scene; say what happened, e.g. \"订单发货提醒\"."
            ),
        ));
    }
}

/// 1.6: the document's own categories are errors, further words warnings.
fn lint_title_marketing(title: &str, norm: &str, out: &mut Vec<Finding>) {
    let named = words_in(&MARKETING_DOC, norm);
    if !named.is_empty() {
        out.push(finding(
            AuditRule::TitleNoMarketing,
            Severity::Error,
            None,
            format!(
                "The title \"{title}\" is about marketing ({}), which templates may not carry.",
                quoted(&named)
            ),
        ));
        return;
    }
    let more = words_in(&MARKETING_MORE, norm);
    if !more.is_empty() {
        out.push(finding(
            AuditRule::TitleNoMarketing,
            Severity::Warning,
            None,
            format!(
                "The title \"{title}\" looks like marketing ({}), which templates may not carry.",
                quoted(&more)
            ),
        ));
    }
}

/// The `words` that occur in `text`, in list order.
fn words_in<'w>(words: &[&'w str], text: &str) -> Vec<&'w str> {
    words.iter().copied().filter(|w| text.contains(w)).collect()
}

fn lint_keywords(keywords: &[KeywordDraft], out: &mut Vec<Finding>) {
    let names: Vec<String> = keywords.iter().map(|k| normalise(&k.name)).collect();
    for (i, k) in keywords.iter().enumerate() {
        let name = k.name.trim();
        let norm = &names[i];

        // 2.1 and 2.2 against the earlier keywords: one finding per pair.
        for (j, earlier) in names[..i].iter().enumerate() {
            let earlier_name = keywords[j].name.trim();
            if earlier == norm {
                out.push(finding(
                    AuditRule::KeywordUnique,
                    Severity::Error,
                    Some(i),
                    format!(
                        "The keyword \"{name}\" appears twice (keywords {} and {}).",
                        j + 1,
                        i + 1
                    ),
                ));
            } else if similarity(earlier, norm) >= TOO_SIMILAR
                || (!earlier.is_empty()
                    && !norm.is_empty()
                    && (earlier.contains(norm.as_str()) || norm.contains(earlier.as_str())))
            {
                out.push(finding(
                    AuditRule::KeywordNotTooSimilar,
                    Severity::Warning,
                    Some(i),
                    format!(
                        "The keyword \"{name}\" is very close to \"{earlier_name}\"; keywords of one title must differ."
                    ),
                ));
            }
        }

        // 2.3.
        plain_words(
            AuditRule::KeywordPlainWords,
            "The keyword",
            name,
            Some(i),
            out,
        );

        // 2.4.
        if let Some(msg) = example_mismatch(name, k.example.trim()) {
            out.push(finding(
                AuditRule::ExampleFitsKeyword,
                Severity::Error,
                Some(i),
                msg,
            ));
        }

        // 2.5.
        let rest = strip_all(norm.clone(), &BROAD_KEYWORD_WORDS);
        if !norm.is_empty() && rest.is_empty() {
            out.push(finding(
                AuditRule::KeywordNotTooBroad,
                Severity::Error,
                Some(i),
                format!(
                    "The keyword \"{name}\" is too broad (the documents' own example is \"内容\"); name what it holds, e.g. \"物品名称\"."
                ),
            ));
        } else if VAGUE_KEYWORDS.contains(&norm.as_str()) {
            out.push(finding(
                AuditRule::KeywordNotTooBroad,
                Severity::Warning,
                Some(i),
                format!(
                    "The keyword \"{name}\" is broad on its own; say whose, e.g. \"下单{name}\"."
                ),
            ));
        }
    }
}

/// What a keyword's name says its example must contain (2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExampleKind {
    /// 时间: a time of day or a date (the documents' own 购买时间 example is
    /// `2016年6月6日`).
    Time,
    /// 日期: a date.
    Date,
    /// 金额, 价格, 费用…: an amount.
    Amount,
    /// 电话, 手机: a phone number.
    Phone,
    /// 数量, 人数, 次数…: a number.
    Count,
    /// 单号, 编号, 订单号…: a code of letters and digits.
    Code,
}

/// Name fragments and the kind of example they call for; the first match wins,
/// so `日期时间` reads as a time and `金额` before `号`.
const EXAMPLE_KINDS: [(&str, ExampleKind); 20] = [
    ("时间", ExampleKind::Time),
    ("时刻", ExampleKind::Time),
    ("日期", ExampleKind::Date),
    ("金额", ExampleKind::Amount),
    ("价格", ExampleKind::Amount),
    ("费用", ExampleKind::Amount),
    ("单价", ExampleKind::Amount),
    ("总价", ExampleKind::Amount),
    ("余额", ExampleKind::Amount),
    ("运费", ExampleKind::Amount),
    ("电话", ExampleKind::Phone),
    ("手机", ExampleKind::Phone),
    ("数量", ExampleKind::Count),
    ("人数", ExampleKind::Count),
    ("次数", ExampleKind::Count),
    ("件数", ExampleKind::Count),
    ("单号", ExampleKind::Code),
    ("编号", ExampleKind::Code),
    ("订单号", ExampleKind::Code),
    ("编码", ExampleKind::Code),
];

fn example_mismatch(name: &str, example: &str) -> Option<String> {
    if example.is_empty() {
        return Some(format!(
            "The keyword \"{name}\" has no example; give one that fits it."
        ));
    }
    let kind = EXAMPLE_KINDS
        .iter()
        .find(|(fragment, _)| name.contains(fragment))
        .map(|(_, kind)| *kind)?;
    let (fits, wanted) = match kind {
        ExampleKind::Time => (
            has_clock(example) || has_date(example),
            "a time or a date, e.g. \"2015年01月05日 12:30\"",
        ),
        ExampleKind::Date => (has_date(example), "a date, e.g. \"2016年6月6日\""),
        ExampleKind::Amount => (
            is_amount(example),
            "an amount, e.g. \"¥12.00\" or \"12.00元\"",
        ),
        ExampleKind::Phone => (is_phone(example), "a phone number, e.g. \"020-88888888\""),
        ExampleKind::Count => (
            example.chars().any(|c| c.is_ascii_digit()),
            "a number, e.g. \"2\"",
        ),
        ExampleKind::Code => (
            example.chars().any(|c| c.is_ascii_alphanumeric()),
            "a code of letters and digits, e.g. \"339208499\"",
        ),
    };
    (!fits).then(|| {
        format!(
            "The example \"{example}\" does not fit the keyword \"{name}\": it should be {wanted}."
        )
    })
}

/// Digits, a ':' or '：' or '时', then two digits: `12:30`, `12时30分`.
fn has_clock(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    chars.windows(4).any(|w| {
        w[0].is_ascii_digit()
            && matches!(w[1], ':' | '：' | '时')
            && w[2].is_ascii_digit()
            && w[3].is_ascii_digit()
    }) || chars
        .windows(2)
        .any(|w| w[0].is_ascii_digit() && w[1] == '点')
}

/// `2016年6月6日`, `6月6日`, `2016-06-06`, `2016/6/6`, `2016.6.6`.
fn has_date(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let cjk = chars
        .windows(2)
        .any(|w| w[0].is_ascii_digit() && matches!(w[1], '月' | '日' | '号'))
        && s.contains('月');
    let numeric = chars
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && matches!(w[1], '-' | '/' | '.') && w[2].is_ascii_digit())
        && chars
            .iter()
            .filter(|c| matches!(c, '-' | '/' | '.'))
            .count()
            >= 2;
    cjk || numeric
}

/// An optional currency sign, digits with optional decimals, an optional 元.
fn is_amount(s: &str) -> bool {
    let s = s.trim_start_matches(['¥', '￥', '$', '€', '£']);
    let s = s.trim_end_matches('元').trim();
    let mut parts = s.split('.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    let int_ok = !int.is_empty() && int.chars().all(|c| c.is_ascii_digit() || c == ',');
    let frac_ok = frac.is_none_or(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()));
    parts.next().is_none() && int_ok && frac_ok && int.starts_with(|c: char| c.is_ascii_digit())
}

/// At least 5 digits and nothing but digits, spaces and `+-()`.
fn is_phone(s: &str) -> bool {
    s.chars().filter(char::is_ascii_digit).count() >= 5
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '(' | ')' | ' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(name: &str, example: &str) -> KeywordDraft {
        KeywordDraft {
            name: name.to_owned(),
            example: example.to_owned(),
        }
    }

    fn titles(ts: &[&str]) -> Vec<String> {
        ts.iter().map(|t| (*t).to_owned()).collect()
    }

    /// (rule number, severity, keyword index) of each finding.
    fn summary(findings: &[Finding]) -> Vec<(&'static str, Severity, Option<usize>)> {
        findings
            .iter()
            .map(|f| (f.rule.number(), f.severity, f.keyword))
            .collect()
    }

    /// The document's own library (docs/wechat/template-messages.md, "The
    /// classic template library"): its five titles coexist, and AT0002 with
    /// keywords 3, 4, 5 is a template WeChat made.
    #[test]
    fn the_documents_own_templates_pass() {
        let library = [
            "购买成功通知",
            "购买失败通知",
            "交易提醒",
            "付款成功通知",
            "付款失败通知",
        ];
        let at0002 = [
            kw("购买地点", "TIT造舰厂"),
            kw("购买时间", "2016年6月6日"),
            kw("物品名称", "咖啡"),
        ];
        for title in library {
            let others: Vec<String> = library
                .iter()
                .filter(|t| **t != title)
                .map(|t| (*t).to_owned())
                .collect();
            let found = lint(title, &at0002, &others);
            assert!(found.is_empty(), "{title}: {found:?}");
        }
        // The send example's values under plausible keyword names (doc 001).
        let send_example = [
            kw("订单号", "339208499"),
            kw("预订时间", "2015年01月05日 12:30"),
            kw("酒店名称", "粤海喜来登酒店"),
            kw("酒店地址", "广州市天河区天河路208号"),
        ];
        assert!(lint("酒店预订成功通知", &send_example, &[]).is_empty());
    }

    #[test]
    fn title_rules() {
        use Severity::{Error, Warning};
        let existing = titles(&["购买成功通知", "订单发货提醒"]);
        let fine = [kw("物品名称", "咖啡")];
        let table: &[(&str, &[(&str, Severity)])] = &[
            // 1.1: the same title, spaces aside.
            ("购买成功通知", &[("1.1", Error)]),
            ("购买 成功通知", &[("1.1", Error)]),
            // 1.2: only the ending differs; nearly the same stem.
            ("订单发货通知", &[("1.2", Error)]),
            ("订单已发货提醒", &[("1.2", Warning)]),
            // Different meaning, same shape: fine (as the library's own pairs).
            ("购买失败通知", &[]),
            // 1.3.
            ("订单发货", &[("1.2", Error), ("1.3", Error)]),
            ("退款成功消息", &[("1.3", Error)]),
            // 1.4: symbols, personalised words.
            ("【重要】退款成功通知", &[("1.4", Error)]),
            ("退款成功通知！", &[("1.4", Error)]),
            ("亲爱的您退款成功啦通知", &[("1.4", Warning)]),
            // 1.5: nothing but generic words.
            ("系统消息通知", &[("1.5", Error)]),
            ("通知", &[("1.5", Error)]),
            // 1.6: each category the document names, and further words.
            ("消费优惠通知", &[("1.6", Error)]),
            ("购物返利提醒", &[("1.6", Error)]),
            ("商品更新提醒", &[("1.6", Error)]),
            ("优惠券到账通知", &[("1.6", Error)]),
            ("代金券发放通知", &[("1.6", Error)]),
            ("红包到账提醒", &[("1.6", Error)]),
            ("会员卡开通通知", &[("1.6", Error)]),
            ("积分变动提醒", &[("1.6", Error)]),
            ("活动开始提醒", &[("1.6", Error)]),
            ("限时秒杀提醒", &[("1.6", Warning)]),
        ];
        for (title, expected) in table {
            let got: Vec<(&str, Severity)> = lint(title, &fine, &existing)
                .iter()
                .map(|f| (f.rule.number(), f.severity))
                .collect();
            assert_eq!(&got, expected, "{title}");
        }
    }

    #[test]
    fn keyword_rules() {
        use Severity::{Error, Warning};
        let title = "订单发货提醒";
        // (keywords as (name, example), expected (rule, severity, keyword index))
        type Row<'a> = (
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, Severity, Option<usize>)],
        );
        let table: &[Row<'_>] = &[
            // 2.1: the same keyword twice.
            (
                &[("物品名称", "咖啡"), ("物品名称", "茶")],
                &[("2.1", Error, Some(1))],
            ),
            // 2.2: nearly the same, or one inside the other.
            (
                &[("订单号", "339208499"), ("订单编号", "339208499")],
                &[("2.2", Warning, Some(1))],
            ),
            (
                &[("发货时间", "2016年6月6日"), ("时间", "12:30")],
                &[("2.2", Warning, Some(1)), ("2.5", Warning, Some(1))],
            ),
            // Distinct keywords of one shape are fine.
            (&[("开始时间", "08:00"), ("结束时间", "18:00")], &[]),
            // 2.3.
            (&[("【物品】名称", "咖啡")], &[("2.3", Error, Some(0))]),
            (&[("您的物品", "咖啡")], &[("2.3", Warning, Some(0))]),
            // 2.4: each kind of keyword with an example that does not fit.
            (&[("购买时间", "咖啡")], &[("2.4", Error, Some(0))]),
            (&[("购买时间", "下午")], &[("2.4", Error, Some(0))]),
            (&[("预计送达日期", "明天")], &[("2.4", Error, Some(0))]),
            (&[("订单金额", "免费")], &[("2.4", Error, Some(0))]),
            (&[("订单金额", "十二元")], &[("2.4", Error, Some(0))]),
            (&[("联系电话", "张三")], &[("2.4", Error, Some(0))]),
            (&[("商品数量", "两件")], &[("2.4", Error, Some(0))]),
            (&[("快递单号", "顺丰")], &[("2.4", Error, Some(0))]),
            (&[("物品名称", "")], &[("2.4", Error, Some(0))]),
            // ... and examples that do.
            (
                &[
                    ("发货时间", "12:30"),
                    ("预计送达日期", "2016-06-06"),
                    ("订单金额", "¥12.00"),
                    ("运费", "8元"),
                    ("联系电话", "+86-0766-66888866"),
                    ("商品数量", "2"),
                    ("快递单号", "SF1234567890"),
                ],
                &[],
            ),
            // 2.5: the documents' own "内容", its kin, and vague single words.
            (&[("内容", "咖啡")], &[("2.5", Error, Some(0))]),
            (&[("备注信息", "请尽快取件")], &[("2.5", Error, Some(0))]),
            (&[("其他说明", "无")], &[("2.5", Error, Some(0))]),
            (&[("状态", "已发货")], &[("2.5", Warning, Some(0))]),
            (&[("物流状态", "已发货")], &[]),
        ];
        for (keywords, expected) in table {
            let drafts: Vec<KeywordDraft> = keywords.iter().map(|(n, e)| kw(n, e)).collect();
            let found = lint(title, &drafts, &[]);
            assert_eq!(&summary(&found), expected, "{keywords:?}");
        }
    }

    #[test]
    fn findings_carry_a_sentence_and_serialise_with_the_rule_number() {
        let found = lint("红包", &[kw("内容", "")], &titles(&["红包"]));
        let rules: Vec<&str> = found.iter().map(|f| f.rule.number()).collect();
        assert_eq!(rules, vec!["1.1", "1.3", "1.6", "2.4", "2.5"]);
        for f in &found {
            assert!(f.message.ends_with('.'), "{}", f.message);
            assert!(f.message.len() > 20, "{}", f.message);
        }
        let json = serde_json::to_value(&found[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "rule": "1.1",
                "severity": "error",
                "keyword": null,
                "message": "The title \"红包\" already exists.",
            })
        );
        let draft: KeywordDraft =
            serde_json::from_str(r#"{"name":"物品名称","example":"咖啡"}"#).unwrap();
        assert_eq!(draft, kw("物品名称", "咖啡"));
    }
}
