//! HTTP selectors against real local HTTP servers: axum on 127.0.0.1:0 and
//! on a Unix socket, and raw TCP servers that break the exchange half-way.

#[path = "support/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use harness::{Bridge, exposition, openmetrics, promtool_check_metrics, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The routes of the local exporter the bridge scrapes.
fn exporter() -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    exposition(400),
                )
            }),
        )
        .route(
            "/openmetrics",
            get(|| async { ([(header::CONTENT_TYPE, OPENMETRICS)], openmetrics()) }),
        )
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "exporter broke\n") }),
        )
        .route("/hang", get(std::future::pending::<String>))
        .route(
            "/endless",
            get(|| async {
                let chunks = endless_body();
                Body::from_stream(chunks)
            }),
        )
        .route(
            "/accept",
            get(|headers: HeaderMap| async move {
                let accept = headers
                    .get(header::ACCEPT)
                    .map(|v| v.to_str().unwrap().replace('"', "'"))
                    .unwrap_or_default();
                format!("accept_seen{{value=\"{accept}\"}} 1\n")
            }),
        )
}

/// An endless chunked body (no Content-Length).
fn endless_body()
-> impl tokio_stream::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    tokio_stream::iter(std::iter::repeat_with(|| {
        Ok(bytes::Bytes::from_static(b"endless_metric{a=\"b\"} 1\n"))
    }))
}

async fn serve_tcp() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, exporter()).await.unwrap() });
    addr
}

async fn serve_unix(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move { axum::serve(listener, exporter()).await.unwrap() });
}

/// A raw TCP "exporter" answering every request with `head` + `body`, then
/// resetting the connection (or closing it cleanly when `reset` is false).
async fn serve_broken(head: &'static str, body: &'static [u8], reset: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body).await;
            let _ = stream.flush().await;
            if reset {
                stream.set_zero_linger().unwrap();
            } else {
                let _ = stream.shutdown().await;
            }
            drop(stream);
        }
    });
    addr
}

fn http_selector(name: &str, url: &str, extra: &str) -> String {
    format!("[selectors.{name}]\nkind = \"http\"\nurl = \"{url}\"\n{extra}\n")
}

#[tokio::test]
async fn passes_text_and_openmetrics_through() {
    let addr = serve_tcp().await;
    let port = addr.port();
    let config = http_selector("text", &format!("http://{addr}/metrics"), "")
        // `localhost` may resolve to ::1 first, where nothing listens: the next address is tried.
        + &http_selector("om", &format!("http://localhost:{port}/openmetrics"), "")
        + &http_selector(
            "forced",
            &format!("http://{addr}/openmetrics"),
            "content_type = \"text/plain; version=0.0.4\"",
        );
    let bridge = Bridge::start(&config).await;

    let (status, content_type, body) = bridge.scrape("text").await;
    assert_eq!((status, content_type.as_str()), (200, TEXT), "{body}");
    assert_eq!(body, exposition(400));
    promtool_check_metrics(&body);

    let (status, content_type, body) = bridge.scrape("om").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, OPENMETRICS),
        "{body}"
    );
    assert_eq!(body, openmetrics());

    let (status, content_type, _) = bridge.scrape("forced").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/plain; version=0.0.4")
    );
}

#[tokio::test]
async fn forwards_the_scrapers_accept_header() {
    let addr = serve_tcp().await;
    let bridge = Bridge::start(&http_selector("a", &format!("http://{addr}/accept"), "")).await;
    let prometheus_accept =
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4";
    let body = bridge
        .client
        .get(bridge.url("/bridge?selector=a"))
        .header("accept", prometheus_accept)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        body,
        format!("accept_seen{{value=\"{prometheus_accept}\"}} 1\n")
    );
    // Without one, the bridge asks for the text format.
    let (_, _, body) = bridge.scrape("a").await;
    assert!(body.contains("text/plain;version=0.0.4"), "{body}");
}

#[tokio::test]
async fn source_errors_are_502_and_stalls_504() {
    let addr = serve_tcp().await;
    let cut = serve_broken(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n",
        b"cut_metric 1\ncut_metric_two 2\n",
        true,
    )
    .await;
    let unterminated = serve_broken(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"d\r\nhalf_metric 1\n\r\n",
        false,
    )
    .await;
    let garbage = serve_broken("SSH-2.0-OpenSSH_9.6\r\n", b"", false).await;
    // A port that was free a moment ago: nothing listens.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = http_selector("fail", &format!("http://{addr}/fail"), "")
        + &http_selector(
            "hang",
            &format!("http://{addr}/hang"),
            "read_timeout = \"300ms\"",
        )
        + &http_selector(
            "endless",
            &format!("http://{addr}/endless"),
            "max_bytes = 100000",
        )
        + &http_selector("cut", &format!("http://{cut}/metrics"), "")
        + &http_selector("unterminated", &format!("http://{unterminated}/"), "")
        + &http_selector("garbage", &format!("http://{garbage}/"), "")
        + &http_selector("closed", &format!("http://{closed}/metrics"), "");
    let bridge = Bridge::start(&config).await;

    for (selector, status, reason, needle) in [
        (
            "fail",
            502,
            "http_status",
            "answered HTTP 500 Internal Server Error",
        ),
        ("hang", 504, "read_timeout", "sent nothing for 300ms"),
        ("endless", 502, "too_large", "larger than 100000 bytes"),
        ("cut", 502, "protocol", "HTTP exchange with"),
        ("unterminated", 502, "protocol", "HTTP exchange with"),
        ("garbage", 502, "protocol", "HTTP exchange with"),
        ("closed", 502, "unavailable", "cannot reach"),
    ] {
        let (got, content_type, body) = bridge.scrape(selector).await;
        assert_eq!(got, status, "{selector}: {body}");
        assert_eq!(content_type, "text/plain; charset=utf-8", "{selector}");
        assert!(body.contains(needle), "{selector}: {body}");
        assert!(
            !body.contains("_metric"),
            "{selector} leaked a partial body: {body}"
        );
        let metrics = bridge.metrics().await;
        let labels = [("selector", selector), ("reason", reason)];
        assert_eq!(
            sample(&metrics, "upshift_bridge_scrape_errors_total", &labels),
            Some(1.0),
            "{selector}"
        );
    }
}

#[tokio::test]
async fn http_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("exporter.sock");
    serve_unix(&socket).await;
    let config = format!(
        "[selectors.default_path]\nkind = \"http\"\nunix_socket = \"{0}\"\n\
         [selectors.om]\nkind = \"http\"\nunix_socket = \"{0}\"\npath = \"/openmetrics\"\n\
         [selectors.fail]\nkind = \"http\"\nunix_socket = \"{0}\"\npath = \"/fail\"\n",
        socket.display()
    );
    let bridge = Bridge::start(&config).await;
    let (status, content_type, body) = bridge.scrape("default_path").await;
    assert_eq!((status, content_type.as_str()), (200, TEXT), "{body}");
    assert_eq!(body, exposition(400));
    let (status, content_type, body) = bridge.scrape("om").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, OPENMETRICS),
        "{body}"
    );
    assert_eq!(body, openmetrics());
    let (status, _, body) = bridge.scrape("fail").await;
    assert_eq!(status, 502, "{body}");
}

/// Bodies that end before the exposition does are `502`, whatever the
/// framing: no `Content-Length` and `Connection: close` (the end is the
/// close, so the text must end with a newline and OpenMetrics with `# EOF`),
/// or fewer bytes than the declared `Content-Length` before a clean close.
#[tokio::test]
async fn a_body_that_ends_early_is_502() {
    let close_text = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n";
    let close_om = "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0\r\n\
                    Connection: close\r\n\r\n";
    let mid_line = serve_broken(close_text, b"cut_metric_a 1\ncut_metric_b 2", false).await;
    let no_eof = serve_broken(
        close_om,
        b"# TYPE cut_metric_a gauge\ncut_metric_a 1\n",
        false,
    )
    .await;
    let short = serve_broken(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n",
        b"cut_metric_a 1\ncut_metric_b 2\n",
        false,
    )
    .await;
    let config = http_selector("mid_line", &format!("http://{mid_line}/metrics"), "")
        + &http_selector("no_eof", &format!("http://{no_eof}/metrics"), "")
        + &http_selector("short", &format!("http://{short}/metrics"), "");
    let bridge = Bridge::start(&config).await;
    for (selector, reason, needle) in [
        ("mid_line", "incomplete", "does not end with a newline"),
        ("no_eof", "incomplete", "does not end with `# EOF`"),
        ("short", "protocol", "HTTP exchange with"),
    ] {
        let (status, _, body) = bridge.scrape(selector).await;
        assert_eq!(status, 502, "{selector}: {body}");
        assert!(body.contains(needle), "{selector}: {body}");
        assert!(!body.contains("_metric"), "{selector} leaked: {body}");
        let metrics = bridge.metrics().await;
        let labels = [("selector", selector), ("reason", reason)];
        assert_eq!(
            sample(&metrics, "upshift_bridge_scrape_errors_total", &labels),
            Some(1.0),
            "{selector}"
        );
    }
}

/// Close-delimited bodies that are whole pass: text ending with a newline,
/// OpenMetrics ending with `# EOF` (its final newline is optional).
#[tokio::test]
async fn whole_close_delimited_bodies_pass() {
    let text = serve_broken(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\r\n",
        b"close_metric_a 1\nclose_metric_b 2\n",
        false,
    )
    .await;
    let om = serve_broken(
        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0\r\n\
         Connection: close\r\n\r\n",
        b"# TYPE close_metric gauge\nclose_metric 1\n# EOF",
        false,
    )
    .await;
    let config = http_selector("text", &format!("http://{text}/metrics"), "")
        + &http_selector("om", &format!("http://{om}/metrics"), "");
    let bridge = Bridge::start(&config).await;
    let (status, _, body) = bridge.scrape("text").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "close_metric_a 1\nclose_metric_b 2\n")
    );
    let (status, _, body) = bridge.scrape("om").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "# TYPE close_metric gauge\nclose_metric 1\n# EOF")
    );
}
