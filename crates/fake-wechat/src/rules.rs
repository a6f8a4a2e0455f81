//! The value rules of subscribe-message placeholders
//! (docs/wechat/subscribe-messages.md, "Value rules per placeholder type";
//! 订阅消息参数值内容限制说明). A subscribe template's keywords
//! are typed (`thing1`, `time2`, `character_string13`…); a value that breaks
//! its type is answered 47003 naming the field.

use chrono::NaiveDate;

/// The type of a subscribe placeholder (the `rule` of a public keyword, the
/// prefix of a placeholder code such as `thing` in `thing1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeywordRule {
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
    /// One currency symbol + ≤ 10 digits, decimals allowed, may end with `元`.
    Amount,
    /// ≤ 17 digits and symbols.
    PhoneNumber,
    /// ≤ 8 characters; the first and last may be Chinese, the rest letters or digits.
    CarNumber,
    /// ≤ 10 Chinese characters, or ≤ 20 letters or symbols.
    Name,
    /// ≤ 5 Chinese characters.
    Phrase,
}

#[cfg(test)]
const ALL: [KeywordRule; 12] = [
    KeywordRule::Thing,
    KeywordRule::Number,
    KeywordRule::Letter,
    KeywordRule::Symbol,
    KeywordRule::CharacterString,
    KeywordRule::Time,
    KeywordRule::Date,
    KeywordRule::Amount,
    KeywordRule::PhoneNumber,
    KeywordRule::CarNumber,
    KeywordRule::Name,
    KeywordRule::Phrase,
];

impl KeywordRule {
    /// The name WeChat uses: the `rule` field of `getpubtemplatekeywords` and
    /// the prefix of a placeholder code.
    pub(crate) fn as_str(self) -> &'static str {
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
        }
    }

    /// The rule of a placeholder code such as `character_string13`: the code
    /// minus its trailing digits, which must be present.
    #[cfg(test)]
    fn of_code(code: &str) -> Option<Self> {
        let prefix = code.trim_end_matches(|c: char| c.is_ascii_digit());
        if prefix.len() == code.len() {
            return None;
        }
        ALL.into_iter().find(|r| r.as_str() == prefix)
    }

    /// Whether `value` (non-empty) obeys this rule.
    pub(crate) fn accepts(self, value: &str) -> bool {
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
        }
    }
}

/// Every rule, for tables and tests.
#[cfg(test)]
pub(crate) fn all() -> [KeywordRule; 12] {
    ALL
}

/// A Chinese (CJK unified) character.
pub(crate) fn is_cjk(c: char) -> bool {
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

/// "1 currency symbol + ≤10 digits; decimals allowed; may end with 元": the
/// symbol is optional (a bare `100.00` or `100元` is what most senders use),
/// and the ≤ 10 counts every digit, decimals included.
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

/// ≤ 10 Chinese characters, or ≤ 20 letters or symbols; "a mix of Chinese
/// and letters counts as Chinese (≤10)". No digits.
fn is_name(s: &str) -> bool {
    let allowed = s
        .chars()
        .all(|c| is_cjk(c) || c.is_alphabetic() || c == ' ' || is_symbol(c));
    let limit = if s.chars().any(is_cjk) { 10 } else { 20 };
    allowed && s.chars().count() <= limit
}

/// Applies `check` to the value, or to both sides of one `~` ("a range joined
/// by `~` is allowed").
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
/// `2019/10/1`, `2019.10.01`, or `10月1日` without a year); returns the rest.
fn date_prefix(s: &str) -> Option<&str> {
    let valid = |y: u32, m: u32, d: u32| NaiveDate::from_ymd_opt(y as i32, m, d).is_some();
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

#[cfg(test)]
mod tests {
    use super::KeywordRule::{self, *};

    #[test]
    fn codes_name_their_rule() {
        assert_eq!(KeywordRule::of_code("thing1"), Some(Thing));
        assert_eq!(
            KeywordRule::of_code("character_string13"),
            Some(CharacterString)
        );
        assert_eq!(KeywordRule::of_code("phone_number7"), Some(PhoneNumber));
        assert_eq!(KeywordRule::of_code("thing"), None);
        assert_eq!(KeywordRule::of_code("keyword1"), None);
        for rule in super::all() {
            assert_eq!(
                KeywordRule::of_code(&format!("{}2", rule.as_str())),
                Some(rule)
            );
        }
    }

    /// The table of value rules, one rule per row: values it accepts, values
    /// it refuses.
    #[test]
    fn each_rule_accepts_and_refuses() {
        let table: &[(KeywordRule, &[&str], &[&str])] = &[
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
                    "10月1日 08:00",
                    "15:01~16:30",
                    "2019年10月1日 15:01 ~ 2019年10月1日 18:00",
                ],
                &[
                    "2019年10月1日",
                    "25:00",
                    "15:1",
                    "3pm",
                    "15:01~",
                    "1:00~2:00~3:00",
                    "2019年2月30日 10:00",
                ],
            ),
            (
                Date,
                &[
                    "2019年10月1日",
                    "2019-10-01",
                    "2019/10/1",
                    "2024年2月29日 15:01",
                    "10月1日",
                    "2019年10月1日~2019年10月7日",
                ],
                &[
                    "15:01",
                    "2019年13月1日",
                    "2023年2月29日",
                    "2019-10/01",
                    "明天",
                    "20191001",
                ],
            ),
            (
                Amount,
                &["¥100.00", "￥8", "$12.5", "100元", "88.00", "¥1234567890"],
                &["¥12345678901", "¥¥1", "1,000", "100 元", "免费", "1.2.3"],
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
                &[
                    "张三",
                    "欧阳娜娜娜娜娜娜娜娜",
                    "John Smith",
                    "Jean-Luc",
                    "张San",
                ],
                &["欧阳娜娜娜娜娜娜娜娜娜", &"a".repeat(21), "张三3", "R2D2"],
            ),
            (
                Phrase,
                &["配送中", "已签收", "五个中文字"],
                &["六个中文字哦", "ok", "配送中!"],
            ),
        ];
        for (rule, good, bad) in table {
            for v in *good {
                assert!(rule.accepts(v), "{rule:?} should accept {v:?}");
            }
            for v in *bad {
                assert!(!rule.accepts(v), "{rule:?} should refuse {v:?}");
            }
        }
        assert_eq!(table.len(), super::all().len(), "every rule has a row");
    }
}
