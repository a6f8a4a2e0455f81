//! Temporary media (docs/wechat/media.md): `POST /cgi-bin/media/upload?
//! access_token=&type=` with a `multipart/form-data` body whose file part is
//! named `media`, answered `{"type","media_id","created_at"}`; and
//! `GET /cgi-bin/media/get?access_token=&media_id=`, answered with the file's
//! bytes, its `Content-Type` and a `Content-Disposition` naming it. The
//! token is checked first, as for every business API; then the type, the
//! file part and the type's size limit. A media file lives 3 days.

use std::collections::HashMap;
use std::sync::Mutex;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::codes;
use super::FakeWeChat;

const INVALID_MEDIA_TYPE: i64 = 40004;
const INVALID_FILE_SIZE: i64 = 40005;
const INVALID_MEDIA_ID: i64 = 40007;
const MEDIA_DATA_MISSING: i64 = 41005;

/// A temporary media file lives 3 days.
const MEDIA_LIFETIME_MS: i64 = 3 * 86_400_000;

/// One uploaded file.
#[derive(Debug, Clone)]
pub struct MediaFile {
    /// The app whose token uploaded it.
    pub appid: String,
    /// `image`, `voice`, `video` or `thumb`.
    pub kind: String,
    /// The file part's own `Content-Type`.
    pub content_type: String,
    /// The file part's `filename`.
    pub filename: String,
    /// The bytes, exactly as received.
    pub bytes: Vec<u8>,
    /// When it was uploaded (the fake's clock).
    pub created_ms: i64,
}

/// The uploaded files by media_id.
#[derive(Debug, Default)]
pub struct MediaState {
    files: Mutex<HashMap<String, MediaFile>>,
}

/// The size limit of each media type, or `None` for a type WeChat does not
/// take.
fn size_limit(kind: &str) -> Option<usize> {
    match kind {
        "image" | "video" => Some(10 * 1024 * 1024),
        "voice" => Some(2 * 1024 * 1024),
        "thumb" => Some(64 * 1024),
        _ => None,
    }
}

/// The file part named `media` of a multipart body: its filename, its
/// content type and its bytes.
fn media_part(content_type: &str, body: &[u8]) -> Option<(String, String, Vec<u8>)> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|parameter| parameter.strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let mut rest = body;
    loop {
        let start = find(rest, delimiter.as_bytes())? + delimiter.len();
        rest = &rest[start..];
        if rest.starts_with(b"--") {
            return None;
        }
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        let content = &rest[head_end + 4..];
        let end = find(content, format!("\r\n{delimiter}").as_bytes())?;
        if head.contains("name=\"media\"") {
            let filename = head
                .split("filename=\"")
                .nth(1)
                .and_then(|tail| tail.split('"').next())
                .unwrap_or("media")
                .to_owned();
            let part_type = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case("content-type")
                        .then(|| value.trim().to_owned())
                })
                .unwrap_or_else(|| "application/octet-stream".into());
            return Some((filename, part_type, content[..end].to_vec()));
        }
        rest = &content[end..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn query_of(req: &HttpRequest) -> HashMap<String, String> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default()
}

fn error(code: i64) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("content-type", "application/json; encoding=utf-8"))
        .body(codes::error_body(code).to_string())
}

/// `POST /cgi-bin/media/upload`.
pub(crate) async fn upload(
    req: HttpRequest,
    body: web::Bytes,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    fake.apply_latency().await;
    let query = query_of(&req);
    let token = query.get("access_token").map(String::as_str);
    let appid = match fake.call(|s, now| s.check_token(token, now)) {
        Ok(appid) => appid,
        Err(code) => return error(code),
    };
    if req.method() != Method::POST {
        return error(codes::REQUIRE_POST);
    }
    let kind = query.get("type").cloned().unwrap_or_default();
    let Some(limit) = size_limit(&kind) else {
        return error(INVALID_MEDIA_TYPE);
    };
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let Some((filename, part_type, bytes)) = media_part(content_type, &body) else {
        return error(MEDIA_DATA_MISSING);
    };
    if bytes.is_empty() || bytes.len() > limit {
        return error(INVALID_FILE_SIZE);
    }
    let media_id = format!("fake-media-{}", codes::rid().replace('-', ""));
    let now = fake.now_ms();
    fake.media.files.lock().expect("media").insert(
        media_id.clone(),
        MediaFile {
            appid,
            kind: kind.clone(),
            content_type: part_type,
            filename,
            bytes,
            created_ms: now,
        },
    );
    HttpResponse::Ok()
        .insert_header(("content-type", "application/json; encoding=utf-8"))
        .body(json!({"type": kind, "media_id": media_id, "created_at": now / 1000}).to_string())
}

/// `GET /cgi-bin/media/get`.
pub(crate) async fn get(req: HttpRequest, fake: web::Data<FakeWeChat>) -> HttpResponse {
    fake.apply_latency().await;
    let query = query_of(&req);
    let token = query.get("access_token").map(String::as_str);
    let appid = match fake.call(|s, now| s.check_token(token, now)) {
        Ok(appid) => appid,
        Err(code) => return error(code),
    };
    let now = fake.now_ms();
    let file = query.get("media_id").and_then(|id| {
        fake.media
            .files
            .lock()
            .expect("media")
            .get(id)
            .filter(|file| file.appid == appid && now - file.created_ms < MEDIA_LIFETIME_MS)
            .cloned()
    });
    match file {
        Some(file) => HttpResponse::Ok()
            .insert_header(("content-type", file.content_type))
            .insert_header((
                "content-disposition",
                format!("attachment; filename=\"{}\"", file.filename),
            ))
            .body(file.bytes),
        None => error(INVALID_MEDIA_ID),
    }
}

impl FakeWeChat {
    /// Every media file uploaded, by media_id.
    pub fn media(&self) -> HashMap<String, MediaFile> {
        self.media.files.lock().expect("media").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_media_part_is_read_byte_for_byte() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nnope\r\n--XyZ\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n\x00\xff\r\n--XyZ--\r\n";
        let (filename, content_type, bytes) =
            media_part("multipart/form-data; boundary=XyZ", body).unwrap();
        assert_eq!(filename, "a.png");
        assert_eq!(content_type, "image/png");
        assert_eq!(bytes, b"\x89PNG\r\n\x00\xff");
        assert!(media_part("multipart/form-data; boundary=XyZ", b"--XyZ--\r\n").is_none());
        assert!(media_part("application/json", body).is_none());
    }
}
