//! Logging: one subscriber for the process, and a quiet, rate-limited line
//! for what anonymous clients do to the socket.
//!
//! actix-http logs a connection that sends garbage, or drops a request half
//! way, at ERROR (`stream error: …`), one line per connection. Anyone who can
//! reach the port could fill the log and page an operator with them. Those
//! events are counted here instead of printed, and
//! [`report_connection_errors`] writes one WARN line a minute at most, with
//! the count and the last detail.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;
use tracing_subscriber::Registry;

pub use crate::config::LogFormat;

static CONNECTION_ERRORS: AtomicU64 = AtomicU64::new(0);
static LAST_DETAIL: Mutex<String> = Mutex::new(String::new());

/// An event the HTTP server logs about one client's connection: a request
/// that cannot be parsed, a payload cut short, a stream error.
fn is_connection_error(metadata: &Metadata<'_>) -> bool {
    metadata.target().starts_with("actix_http::") && *metadata.level() <= Level::WARN
}

/// Counts connection errors and keeps the last one's message.
struct ConnectionErrors;

impl<S: Subscriber> Layer<S> for ConnectionErrors {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        struct Message(String);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        CONNECTION_ERRORS.fetch_add(1, Ordering::Relaxed);
        // The detail is actix's own text about the wire (a parse error, an
        // I/O error); it carries no header and no body.
        message.0.truncate(200);
        *LAST_DETAIL.lock().expect("detail lock") = message.0;
    }
}

/// Installs the process's subscriber: `RUST_LOG` (or `default_filter`) for
/// everything but connection errors, which are counted instead; lines in
/// `format`.
pub fn init(default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    subscriber(filter, std::io::stderr, format).init();
}

/// The line writer: text, or one JSON object per line. A JSON line carries
/// the fields of every span it is written in (`spans`, outermost first), so
/// each line of a request holds the `request_id` of its `request` span.
fn lines<W>(writer: W, format: LogFormat) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
    }
}

/// The subscriber [`init`] installs, writing to `writer`.
///
/// Why every filter carries a level hint: the process's maximum level is
/// the highest hint of its filters, and a filter without one counts as
/// TRACE. Then every `debug!` and `trace!` in the process (sqlx logs each
/// statement at DEBUG, actix's access log is an `info!` of the `log`
/// crate) is built and handed to the filters on every call, only to be
/// dropped there; with the hints, a disabled level costs one comparison.
fn subscriber<W>(filter: EnvFilter, writer: W, format: LogFormat) -> impl Subscriber + Send + Sync
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let hint = Filter::<Registry>::max_level_hint(&filter).unwrap_or(LevelFilter::TRACE);
    tracing_subscriber::registry()
        .with(lines(writer, format).with_filter(filter).with_filter(
            filter_fn(|metadata| !is_connection_error(metadata)).with_max_level_hint(hint),
        ))
        .with(
            ConnectionErrors
                .with_filter(filter_fn(is_connection_error).with_max_level_hint(LevelFilter::WARN)),
        )
}

/// Connection errors counted since the last call, and the last one's detail.
pub fn take_connection_errors() -> (u64, String) {
    let count = CONNECTION_ERRORS.swap(0, Ordering::Relaxed);
    let detail = std::mem::take(&mut *LAST_DETAIL.lock().expect("detail lock"));
    (count, detail)
}

/// Writes one WARN line per `every` at most, when clients broke connections.
pub async fn report_connection_errors(every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let (count, detail) = take_connection_errors();
        if count > 0 {
            tracing::warn!(
                count,
                last = %detail,
                "clients sent requests that could not be parsed or broke their connections"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_counted_not_printed() {
        let printed = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = printed.clone();
        let subscriber = subscriber(
            EnvFilter::new("info"),
            move || Writer(sink.clone()),
            LogFormat::Text,
        );
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                tracing::error!(target: "actix_http::h1::dispatcher", "stream error: parse error");
            }
            tracing::error!(target: "formid_gateway::api", "a real failure");
        });
        let printed = String::from_utf8(printed.lock().unwrap().clone()).unwrap();
        assert!(!printed.contains("stream error"), "{printed}");
        assert!(printed.contains("a real failure"), "{printed}");
        let (count, detail) = take_connection_errors();
        assert_eq!(count, 3);
        assert!(detail.contains("stream error"), "{detail}");
        assert_eq!(take_connection_errors().0, 0);
    }

    /// In JSON, every line is one object, and a line written inside a
    /// request's span (however deep) carries the request's id.
    #[test]
    fn json_lines_are_objects_that_carry_the_request_id() {
        let printed = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = printed.clone();
        let subscriber = subscriber(
            EnvFilter::new("info"),
            move || Writer(sink.clone()),
            LogFormat::Json,
        );
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request", request_id = "req-77", path = "/x");
            let _request = request.enter();
            tracing::info!("in the request");
            let send = tracing::info_span!("send", appid = "wx1");
            let _send = send.enter();
            tracing::warn!(errcode = 43101, "deeper in it");
        });
        let printed = String::from_utf8(printed.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = printed
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2, "{printed}");
        for line in &lines {
            let spans = line["spans"].as_array().expect("the spans");
            assert_eq!(spans[0]["request_id"], "req-77", "{line}");
        }
        assert_eq!(lines[1]["fields"]["errcode"], 43101);
        assert_eq!(lines[1]["fields"]["message"], "deeper in it");
        assert_eq!(lines[1]["spans"][1]["appid"], "wx1");
    }

    /// Below the level asked for, nothing reaches a filter: the process's
    /// maximum level is the filter's, not TRACE.
    #[test]
    fn the_process_level_is_the_filters_level() {
        for (directive, level) in [
            ("warn", LevelFilter::WARN),
            ("info", LevelFilter::INFO),
            ("error", LevelFilter::WARN),
            ("formid_gateway=debug,warn", LevelFilter::DEBUG),
        ] {
            let subscriber = subscriber(EnvFilter::new(directive), std::io::sink, LogFormat::Text);
            assert_eq!(subscriber.max_level_hint(), Some(level), "{directive}");
        }
    }

    struct Writer(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
