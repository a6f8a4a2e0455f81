//! A request id per HTTP request.
//!
//! The id is the caller's `X-Request-Id` when it is a sane one (visible ASCII,
//! at most [`MAX_LEN`] bytes), otherwise a new UUID. It is echoed in the
//! response's `X-Request-Id` and carried by every log line of the request:
//! the handler runs inside a `request` span holding the id, the method and the
//! path, and so does the access log line, which actix writes only once the
//! body has been sent.
//!
//! Only those three go into the span, never the query string or a header
//! value other than the id: the token endpoints' callers and WeChat's own
//! URLs put secrets in queries, and `Authorization` holds the API key.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use tracing::{Instrument, Span};

/// The header a request id comes in and goes out in.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a caller, in bytes; longer ones are
/// replaced (a log line should not carry a caller's kilobytes).
pub const MAX_LEN: usize = 128;

/// The caller's request id, when it is one we take: 1 to [`MAX_LEN`] visible
/// ASCII characters (no spaces, no control characters, nothing non-ASCII).
pub fn accepted(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    let sane = (1..=MAX_LEN).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic);
    sane.then(|| value.to_str().ok()).flatten()
}

/// The middleware (register with `actix_web::middleware::from_fn`, outside
/// the access log so that its line is written inside the request's span).
pub async fn middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<InSpan>, actix_web::Error> {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(accepted)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.path(),
    );
    // Handlers' and extractors' errors arrive here as responses already; an
    // `Err` could only come from a middleware inside this one (none fails).
    let response = next.call(request).instrument(span.clone()).await?;
    let mut response = response.map_into_boxed_body().map_body(|_, body| InSpan {
        body: Some(body),
        span,
    });
    let value = HeaderValue::from_str(&id).expect("an accepted id or a UUID is a header value");
    response.headers_mut().insert(REQUEST_ID, value);
    Ok(response)
}

/// A response body that is sent, and dropped, inside the request's span: the
/// access log writes its line when the body it wraps is dropped.
pub struct InSpan {
    body: Option<BoxBody>,
    span: Span,
}

impl MessageBody for InSpan {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.as_ref().map_or(BodySize::None, MessageBody::size)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        match this.body.as_mut() {
            Some(body) => Pin::new(body).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for InSpan {
    fn drop(&mut self) {
        let _entered = self.span.enter();
        drop(self.body.take());
    }
}

/// One line per request once its answer is sent. %U is the path without its
/// query string: nothing a caller puts in a query ever reaches the log.
pub fn access_log() -> actix_web::middleware::Logger {
    actix_web::middleware::Logger::new("%{r}a \"%{METHOD}xi %U\" %s %Dms")
        .custom_request_replace("METHOD", |request| request.method().to_string())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use actix_web::middleware::from_fn;
    use actix_web::test::{call_service, init_service, read_body, TestRequest};
    use actix_web::{web, App, HttpResponse};

    use super::*;

    #[test]
    fn a_sane_id_is_taken_and_anything_else_is_not() {
        let header = |s: &[u8]| HeaderValue::from_bytes(s).unwrap();
        assert_eq!(accepted(&header(b"req-42_a.b:c/d")), Some("req-42_a.b:c/d"));
        let longest = "x".repeat(MAX_LEN);
        assert_eq!(
            accepted(&header(longest.as_bytes())),
            Some(longest.as_str())
        );
        assert_eq!(accepted(&header("x".repeat(MAX_LEN + 1).as_bytes())), None);
        assert_eq!(accepted(&header(b"")), None);
        assert_eq!(accepted(&header(b"two words")), None);
        assert_eq!(accepted(&header(b"tab\there")), None);
        assert_eq!(accepted(&header("caf\u{e9}".as_bytes())), None);
    }

    /// Log lines written while the guard lives, as text.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    async fn handler() -> HttpResponse {
        tracing::info!("handling the request");
        HttpResponse::Ok().body("done")
    }

    #[actix_web::test]
    async fn every_log_line_of_a_request_carries_its_id() {
        // The access log writes through the `log` crate.
        let _ = tracing_log::LogTracer::init();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // The same stack as the gateway's (see startup).
        let app = init_service(
            App::new()
                .wrap(super::access_log())
                .wrap(from_fn(middleware))
                .route("/work", web::get().to(handler)),
        )
        .await;

        let request = TestRequest::get()
            .uri("/work?access_token=SECRET-IN-QUERY")
            .insert_header((REQUEST_ID, "trace-me-7"))
            .insert_header(("Authorization", "Bearer SECRET-KEY"))
            .to_request();
        let response = call_service(&app, request).await;
        assert_eq!(response.headers().get(REQUEST_ID).unwrap(), "trace-me-7");
        assert_eq!(read_body(response).await, "done");

        let text = captured.text();
        let handled: Vec<&str> = text.lines().filter(|l| l.contains("handling")).collect();
        assert_eq!(handled.len(), 1, "{text}");
        assert!(handled[0].contains("request_id=trace-me-7"), "{text}");
        assert!(handled[0].contains("method=GET path=/work"), "{text}");
        let access: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"GET /work\" 200"))
            .collect();
        assert_eq!(access.len(), 1, "{text}");
        assert!(access[0].contains("request_id=trace-me-7"), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
    }
}
