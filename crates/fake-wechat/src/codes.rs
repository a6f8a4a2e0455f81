//! Errcodes and the errmsg stems WeChat puts on the wire.

use rand::Rng;
use serde_json::{json, Value};

pub const SYSTEM_ERROR: i64 = -1;
pub const OK: i64 = 0;
pub const INVALID_CREDENTIAL: i64 = 40001;
pub const INVALID_GRANT_TYPE: i64 = 40002;
pub const INVALID_OPENID: i64 = 40003;
pub const INVALID_APPID: i64 = 40013;
pub const INVALID_ACCESS_TOKEN: i64 = 40014;
pub const INVALID_TEMPLATE_ID: i64 = 40037;
pub const INVALID_APPSECRET: i64 = 40125;
pub const ACCESS_TOKEN_MISSING: i64 = 41001;
pub const APPID_MISSING: i64 = 41002;
pub const APPSECRET_MISSING: i64 = 41004;
pub const INVALID_FORM_ID: i64 = 41028;
pub const FORM_ID_USED_UP: i64 = 41029;
pub const INVALID_PAGE: i64 = 41030;
pub const ACCESS_TOKEN_EXPIRED: i64 = 42001;
pub const REQUIRE_GET: i64 = 43001;
pub const REQUIRE_POST: i64 = 43002;
pub const USER_REFUSED: i64 = 43101;
pub const EMPTY_POST_DATA: i64 = 44002;
pub const DAILY_QUOTA: i64 = 45009;
pub const TEMPLATE_LIMIT: i64 = 45026;
pub const INVALID_KEYWORD_ID: i64 = 45075;
pub const INVALID_COUNT: i64 = 45076;
pub const INVALID_KEYWORD_LIST_SIZE: i64 = 45100;
pub const API_RETIRED: i64 = 45103;
pub const DATA_FORMAT_ERROR: i64 = 47001;
pub const ARGUMENT_INVALID: i64 = 47003;
pub const PRIVATE_TEMPLATE_LIMIT: i64 = 200012;
pub const INVALID_TID: i64 = 200014;
pub const INVALID_START: i64 = 200016;
pub const INVALID_LIMIT: i64 = 200017;
pub const IDS_MISSING: i64 = 200018;
pub const INVALID_IDS: i64 = 200019;
pub const INVALID_KID_LIST: i64 = 200020;
pub const INVALID_SCENE_DESC: i64 = 200021;
pub const TEMPLATE_ADDED_ALREADY: i64 = 200022;

/// Record code for an injected fault answered without JSON.
pub const NO_JSON: i64 = -2;

/// The documented errmsg stem (docs/wechat/errcodes.md, "Codes and their
/// errmsg stems": 41031–41035 from WxJava's `WxOpenErrorMsgEnum`,
/// 45026/45075/45076/45100 from WeChat's global table). Where only a
/// description was documented and no wire text observed (200012–200021
/// except 200014), the stem is the doc's description.
pub fn stem(code: i64) -> &'static str {
    match code {
        SYSTEM_ERROR => "system error",
        OK => "ok",
        INVALID_CREDENTIAL => {
            "invalid credential, access_token is invalid or not latest, could get access_token \
             by getStableAccessToken, more details at https://mmbizurl.cn/s/JtxxFh33r"
        }
        INVALID_GRANT_TYPE => "invalid grant_type",
        INVALID_OPENID => "invalid openid",
        INVALID_APPID => "invalid appid",
        INVALID_ACCESS_TOKEN => "invalid access_token",
        INVALID_TEMPLATE_ID => "invalid template_id",
        INVALID_APPSECRET => "invalid appsecret",
        40164 => "invalid ip, not in whitelist",
        ACCESS_TOKEN_MISSING => "access_token missing",
        APPID_MISSING => "appid missing",
        APPSECRET_MISSING => "appsecret missing",
        INVALID_FORM_ID => "invalid form id",
        FORM_ID_USED_UP => "form id used count reach limit",
        INVALID_PAGE => "invalid page",
        41031 => "the form id have been blocked!",
        41032 | 41034 => "not allow to send message with submitted form id, for punishment",
        41035 => "not allow to send message with prepay id, for punishment",
        ACCESS_TOKEN_EXPIRED => "access_token expired",
        REQUIRE_GET => "require GET method",
        REQUIRE_POST => "require POST method",
        USER_REFUSED => "user refuse to accept the msg",
        EMPTY_POST_DATA => "empty post data",
        DAILY_QUOTA => "reach max api daily quota limit",
        45011 => "api minute-quota reach limit must slower retry next minute",
        40029 => "invalid code",
        40163 => "code been used",
        40226 => "code blocked",
        41008 => "missing code",
        TEMPLATE_LIMIT => "template num exceeds limit",
        INVALID_KEYWORD_ID => "invalid keyword id",
        INVALID_COUNT => "invalid count",
        INVALID_KEYWORD_LIST_SIZE => "invalid size of keyword_id_list",
        API_RETIRED => "This API has been unsupported",
        DATA_FORMAT_ERROR => "data format error",
        ARGUMENT_INVALID => "argument invalid!",
        48001 => "api unauthorized",
        48004 => "api forbidden for irregularities",
        PRIVATE_TEMPLATE_LIMIT => "私有模板数已达上限，上限 25 个",
        INVALID_TID => "tid does not exist",
        INVALID_START => "start 参数错误",
        INVALID_LIMIT => "limit 参数错误",
        IDS_MISSING => "类目 ids 缺失",
        INVALID_IDS => "类目 ids 不合法",
        INVALID_KID_LIST => "关键词列表 kidList 参数错误",
        INVALID_SCENE_DESC => "场景描述 sceneDesc 参数错误",
        TEMPLATE_ADDED_ALREADY => "template has added already",
        _ => "unknown error",
    }
}

/// The request-id suffix in its current form, `xxxxxxxx-xxxxxxxx-xxxxxxxx`
/// (docs/wechat/errcodes.md, "The shape of an answer").
pub fn rid() -> String {
    let mut rng = rand::thread_rng();
    format!(
        "{:08x}-{:08x}-{:08x}",
        rng.gen::<u32>(),
        rng.gen::<u32>(),
        rng.gen::<u32>()
    )
}

/// `{"errcode":N,"errmsg":"<stem> rid: …"}`; errcode 0 is plain `"ok"`.
pub fn error_body(code: i64) -> Value {
    error_body_msg(code, stem(code))
}

/// Like [`error_body`] with a specific stem (e.g. naming the bad data field).
pub fn error_body_msg(code: i64, msg: &str) -> Value {
    if code == OK {
        return json!({"errcode": 0, "errmsg": "ok"});
    }
    json!({"errcode": code, "errmsg": format!("{msg} rid: {}", rid())})
}

/// The HTML page a proxy in front of WeChat would answer with.
pub fn html_status_page(status: u16) -> String {
    format!(
        "<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n\
         <center><h1>{status}</h1></center>\r\n<hr><center>stgw</center>\r\n</body>\r\n</html>\r\n"
    )
}

/// A 200 body that is not JSON.
pub const GARBAGE_BODY: &str = "<html><body>system busy, please try again later</body></html>";
