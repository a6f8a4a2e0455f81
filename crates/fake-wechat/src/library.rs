//! The public template libraries the fake serves: a small seed, enough for
//! tests to add templates from.
//!
//! * Subscribe templates (`wxaapi/newtmpl/*`, docs/wechat/subscribe-messages.md,
//!   "Template management" and "Long-term subscriptions"): categories, titles
//!   (type 2 one-time, 3 long-term) and typed keywords. The ids and keyword
//!   of the documentation's own examples (category 616 公交, tid 99
//!   付款成功通知, tid 401, `物品名称`/`名称`/`thing`) are kept; the rest is
//!   invented. Title 401 carries one keyword of every value rule so that
//!   tests can exercise the whole table of value rules
//!   (docs/wechat/subscribe-messages.md, "Value rules per placeholder type")
//!   through one title.
//! * The classic template-message library (`cgi-bin/wxopen/template/library/*`,
//!   docs/wechat/template-messages.md, "The classic template library"): the
//!   five titles of the document's own `library/list` example, with
//!   `AT0002`'s keywords 3, 4, 5 exactly as in its `library/get` example.

use crate::rules::KeywordRule;

/// Subscribe template type: 2 one-time, 3 long-term
/// (docs/wechat/subscribe-messages.md, "Long-term subscriptions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TemplateType {
    OneTime,
    LongTerm,
}

impl TemplateType {
    /// The number on the wire.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::OneTime => 2,
            Self::LongTerm => 3,
        }
    }
}

/// A category of the account (`getcategory`).
#[derive(Debug)]
pub(crate) struct Category {
    pub(crate) id: u32,
    pub(crate) name: &'static str,
}

/// A keyword of a public subscribe title (`getpubtemplatekeywords`).
#[derive(Debug)]
pub(crate) struct PubKeyword {
    pub(crate) kid: u32,
    pub(crate) name: &'static str,
    pub(crate) example: &'static str,
    pub(crate) rule: KeywordRule,
}

impl PubKeyword {
    /// The placeholder code a template built from this keyword uses: the
    /// rule followed by the keyword id, e.g. `thing1`, `character_string13`.
    pub(crate) fn code(&self) -> String {
        format!("{}{}", self.rule.as_str(), self.kid)
    }
}

/// A public subscribe title (`getpubtemplatetitles`).
#[derive(Debug)]
pub(crate) struct PubTitle {
    pub(crate) tid: u32,
    pub(crate) title: &'static str,
    pub(crate) kind: TemplateType,
    pub(crate) category_id: u32,
    pub(crate) keywords: &'static [PubKeyword],
}

/// A keyword of a classic library title (`library/get`).
#[derive(Debug)]
pub(crate) struct LibraryKeyword {
    pub(crate) keyword_id: u32,
    pub(crate) name: &'static str,
    pub(crate) example: &'static str,
}

/// A classic library title (`library/list`).
#[derive(Debug)]
pub(crate) struct LibraryTitle {
    pub(crate) id: &'static str,
    pub(crate) title: &'static str,
    pub(crate) keywords: &'static [LibraryKeyword],
}

/// The account's categories.
pub(crate) const CATEGORIES: &[Category] = &[
    Category {
        id: 2,
        name: "生活服务",
    },
    Category {
        id: 8,
        name: "教育",
    },
    Category {
        id: 616,
        name: "公交",
    },
];

const fn kw(kid: u32, name: &'static str, example: &'static str, rule: KeywordRule) -> PubKeyword {
    PubKeyword {
        kid,
        name,
        example,
        rule,
    }
}

/// The public subscribe titles.
pub(crate) const PUB_TITLES: &[PubTitle] = &[
    PubTitle {
        tid: 99,
        title: "付款成功通知",
        kind: TemplateType::OneTime,
        category_id: 616,
        keywords: &[
            kw(1, "付款金额", "¥12.50", KeywordRule::Amount),
            kw(2, "付款时间", "2024年5月1日 10:00", KeywordRule::Time),
            kw(3, "商户名称", "公交卡充值", KeywordRule::Thing),
            kw(
                4,
                "交易单号",
                "4200001234202405011234",
                KeywordRule::CharacterString,
            ),
        ],
    },
    PubTitle {
        tid: 401,
        title: "订单发货提醒",
        kind: TemplateType::OneTime,
        category_id: 2,
        keywords: &[
            kw(1, "物品名称", "名称", KeywordRule::Thing),
            kw(2, "订单编号", "SN20240501001", KeywordRule::CharacterString),
            kw(3, "发货时间", "2024年5月1日 10:00", KeywordRule::Time),
            kw(4, "订单金额", "¥88.00", KeywordRule::Amount),
            kw(5, "商品数量", "2", KeywordRule::Number),
            kw(6, "收货人", "张三", KeywordRule::Name),
            kw(7, "联系电话", "+86-0766-66888866", KeywordRule::PhoneNumber),
            kw(8, "配送状态", "配送中", KeywordRule::Phrase),
            kw(9, "预计送达日期", "2024年5月3日", KeywordRule::Date),
            kw(10, "商品尺码", "XL", KeywordRule::Letter),
            kw(11, "商品评级", "★★★", KeywordRule::Symbol),
            kw(12, "配送车辆", "粤A8Z888挂", KeywordRule::CarNumber),
        ],
    },
    PubTitle {
        tid: 1209,
        title: "预约成功通知",
        kind: TemplateType::OneTime,
        category_id: 2,
        keywords: &[
            kw(1, "预约项目", "洗车", KeywordRule::Thing),
            kw(2, "预约时间", "2024年5月1日 10:00~11:00", KeywordRule::Time),
            kw(3, "门店电话", "020-88888888", KeywordRule::PhoneNumber),
        ],
    },
    PubTitle {
        tid: 5001,
        title: "上课提醒",
        kind: TemplateType::LongTerm,
        category_id: 8,
        keywords: &[
            kw(1, "课程名称", "高一数学", KeywordRule::Thing),
            kw(2, "上课时间", "2024年5月1日 08:00", KeywordRule::Time),
            kw(3, "授课老师", "李老师", KeywordRule::Name),
        ],
    },
    PubTitle {
        tid: 5002,
        title: "乘车提醒",
        kind: TemplateType::LongTerm,
        category_id: 616,
        keywords: &[
            kw(1, "线路名称", "1路", KeywordRule::Thing),
            kw(2, "上车站点", "火车站", KeywordRule::Thing),
            kw(3, "发车时间", "07:30", KeywordRule::Time),
            kw(4, "车牌号码", "粤A8Z888挂", KeywordRule::CarNumber),
        ],
    },
];

const fn lk(keyword_id: u32, name: &'static str, example: &'static str) -> LibraryKeyword {
    LibraryKeyword {
        keyword_id,
        name,
        example,
    }
}

/// The classic template-message library.
pub(crate) const LIBRARY: &[LibraryTitle] = &[
    LibraryTitle {
        id: "AT0002",
        title: "购买成功通知",
        keywords: &[
            lk(1, "订单号", "339208499"),
            lk(2, "购买金额", "¥12.00"),
            lk(3, "购买地点", "TIT造舰厂"),
            lk(4, "购买时间", "2016年6月6日"),
            lk(5, "物品名称", "咖啡"),
            lk(6, "购买数量", "2"),
            lk(7, "交易单号", "4200000123201606061234"),
            lk(8, "支付方式", "微信支付"),
            lk(9, "商户名称", "粤海喜来登酒店"),
            lk(10, "商户地址", "广州市天河区天河路208号"),
            lk(11, "联系电话", "020-88888888"),
            lk(12, "服务时间", "2015年01月05日 12:30"),
        ],
    },
    LibraryTitle {
        id: "AT0003",
        title: "购买失败通知",
        keywords: &[lk(1, "物品名称", "咖啡"), lk(2, "失败原因", "库存不足")],
    },
    LibraryTitle {
        id: "AT0004",
        title: "交易提醒",
        keywords: &[
            lk(1, "交易金额", "¥12.00"),
            lk(2, "交易时间", "2016年6月6日 12:30"),
        ],
    },
    LibraryTitle {
        id: "AT0005",
        title: "付款成功通知",
        keywords: &[
            lk(1, "付款金额", "¥12.00"),
            lk(2, "付款时间", "2016年6月6日 12:30"),
        ],
    },
    LibraryTitle {
        id: "AT0006",
        title: "付款失败通知",
        keywords: &[lk(1, "付款金额", "¥12.00"), lk(2, "失败原因", "余额不足")],
    },
];

/// A public subscribe title by id.
pub(crate) fn pub_title(tid: u32) -> Option<&'static PubTitle> {
    PUB_TITLES.iter().find(|t| t.tid == tid)
}

/// A classic library title by id.
pub(crate) fn library_title(id: &str) -> Option<&'static LibraryTitle> {
    LIBRARY.iter().find(|t| t.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_examples_obey_their_rules_and_ids_are_unique() {
        for t in PUB_TITLES {
            assert!(
                CATEGORIES.iter().any(|c| c.id == t.category_id),
                "{}",
                t.tid
            );
            for (i, k) in t.keywords.iter().enumerate() {
                assert!(k.rule.accepts(k.example), "{} {}", t.tid, k.name);
                assert!(t.keywords[..i].iter().all(|o| o.kid != k.kid));
            }
        }
        let rules: std::collections::HashSet<&str> = pub_title(401)
            .unwrap()
            .keywords
            .iter()
            .map(|k| k.rule.as_str())
            .collect();
        assert_eq!(
            rules.len(),
            crate::rules::all().len(),
            "401 covers every rule"
        );
        for t in LIBRARY {
            for (i, k) in t.keywords.iter().enumerate() {
                assert!(t.keywords[..i].iter().all(|o| o.keyword_id != k.keyword_id));
            }
        }
    }
}
