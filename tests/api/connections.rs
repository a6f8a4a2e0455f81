//! Connections: an idle keep-alive connection outlives the idle timeouts of
//! common clients' pools, so the client closes it first. A server that
//! closes first races with the client's next request on it, which is then
//! lost on the wire with no way to know whether it was processed (found
//! under load by several instances' clients as `IncompleteMessage`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Sends one request on `stream` and reads its whole answer (the health
/// answer is small: one read of the head and its short body).
async fn health(stream: &mut TcpStream, host: &str) -> String {
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the gateway closed the connection");
        answer.extend_from_slice(&buffer[..read]);
    }
    // The body follows the head; its length is small and fixed.
    tokio::time::sleep(Duration::from_millis(50)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_stays_open_past_a_clients_short_pause() {
    let app = spawn_app(Backend::Sqlite).await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&host).await.unwrap();
    assert!(health(&mut stream, &host).await.starts_with("HTTP/1.1 200"));
    // Longer than actix's default keep-alive (5 s): a pause any client's
    // pool may leave between two requests on one connection.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let again = health(&mut stream, &host).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
}
