//! Unix socket and file selectors against real sockets and files, through
//! the bridge's HTTP listener.

#[path = "support/harness.rs"]
mod harness;

use harness::{Bridge, Script, UdsServer, exposition, promtool_check_metrics, sample};

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn uds_selector(name: &str, path: &std::path::Path, extra: &str) -> String {
    format!(
        "[selectors.{name}]\nkind = \"uds\"\npath = \"{}\"\n{extra}\n",
        path.display()
    )
}

#[tokio::test]
async fn uds_dump_is_passed_through_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    // Large enough to take many reads on both sides.
    let text = exposition(3000);
    let _server = UdsServer::start(
        &dir.path().join("a.sock"),
        Script::Dump(text.clone().into()),
    );
    let bridge = Bridge::start(&uds_selector("agent", &dir.path().join("a.sock"), "")).await;

    let (status, content_type, body) = bridge.scrape("agent").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, TEXT);
    assert_eq!(body, text);
    promtool_check_metrics(&body);

    let metrics = bridge.metrics().await;
    let labels = [("selector", "agent"), ("result", "ok")];
    assert_eq!(
        sample(&metrics, "upshift_bridge_scrapes_total", &labels),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "upshift_bridge_scrape_bytes_total",
            &[("selector", "agent")]
        ),
        Some(text.len() as f64)
    );
}

#[tokio::test]
async fn uds_that_hangs_is_a_504() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hang.sock");
    let _server = UdsServer::start(&path, Script::Hang);
    let bridge = Bridge::start(&uds_selector("hang", &path, "read_timeout = \"300ms\"")).await;

    let (status, content_type, body) = bridge.scrape("hang").await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(content_type, "text/plain; charset=utf-8");
    assert!(body.starts_with("source timed out: "), "{body}");

    let metrics = bridge.metrics().await;
    let labels = [("selector", "hang"), ("result", "timeout")];
    assert_eq!(
        sample(&metrics, "upshift_bridge_scrapes_total", &labels),
        Some(1.0)
    );
    let labels = [("selector", "hang"), ("reason", "read_timeout")];
    assert_eq!(
        sample(&metrics, "upshift_bridge_scrape_errors_total", &labels),
        Some(1.0)
    );
}

#[tokio::test]
async fn total_timeout_bounds_a_source_that_trickles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trickle.sock");
    // Keeps sending a byte well within the read timeout, forever.
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut stream, _) = listener.accept().await.unwrap();
        while stream.write_all(b"#").await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let bridge = Bridge::start(&uds_selector(
        "trickle",
        &path,
        "read_timeout = \"2s\"\ntotal_timeout = \"400ms\"",
    ))
    .await;
    let (status, _, body) = bridge.scrape("trickle").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("the scrape took longer than 400ms"), "{body}");
    server.abort();
}

#[tokio::test]
async fn uds_that_stops_half_way_is_never_a_200() {
    let dir = tempfile::tempdir().unwrap();
    let text = exposition(50);
    let half = text.as_bytes()[..text.len() / 2 + 7].to_vec();
    assert_ne!(half.last(), Some(&b'\n'), "cut inside a line");
    let closes = dir.path().join("closes.sock");
    let hangs = dir.path().join("hangs.sock");
    let _closes = UdsServer::start(&closes, Script::Dump(half.clone()));
    let _hangs = UdsServer::start(&hangs, Script::WriteThenHang(half));
    let config = uds_selector("closes", &closes, "")
        + &uds_selector("hangs", &hangs, "read_timeout = \"300ms\"");
    let bridge = Bridge::start(&config).await;

    let (status, _, body) = bridge.scrape("closes").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("incomplete"), "{body}");
    let (status, _, body) = bridge.scrape("hangs").await;
    assert_eq!(status, 504, "{body}");
    assert!(!body.contains("upshift_agent_state"), "{body}");
}

#[tokio::test]
async fn uds_without_a_listener_is_a_502() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.sock");
    let bridge = Bridge::start(&uds_selector("gone", &path, "")).await;
    let (status, _, body) = bridge.scrape("gone").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.starts_with("source failed: cannot reach "), "{body}");
    assert!(body.contains("nobody.sock"), "{body}");
    let metrics = bridge.metrics().await;
    let labels = [("selector", "gone"), ("reason", "unavailable")];
    assert_eq!(
        sample(&metrics, "upshift_bridge_scrape_errors_total", &labels),
        Some(1.0)
    );
}

#[tokio::test]
async fn uds_past_the_size_limit_is_a_502() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.sock");
    let text = exposition(500);
    let _server = UdsServer::start(&path, Script::Dump(text.clone().into()));
    let limit = text.len() - 1;
    let bridge = Bridge::start(&uds_selector("big", &path, &format!("max_bytes = {limit}"))).await;
    let (status, _, body) = bridge.scrape("big").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(&format!("larger than {limit} bytes")),
        "{body}"
    );
}

#[tokio::test]
async fn files_are_read_whole_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let text = exposition(200);
    let good = dir.path().join("node.prom");
    let half = dir.path().join("half.prom");
    let big = dir.path().join("big.prom");
    std::fs::write(&good, &text).unwrap();
    std::fs::write(&half, &text[..text.len() - 3]).unwrap();
    std::fs::write(&big, exposition(2000)).unwrap();
    let missing = dir.path().join("missing.prom");
    let mut config = String::new();
    for (name, path) in [("good", &good), ("half", &half), ("missing", &missing)] {
        config += &format!(
            "[selectors.{name}]\nkind = \"file\"\npath = \"{}\"\n",
            path.display()
        );
    }
    config += &format!(
        "[selectors.big]\nkind = \"file\"\npath = \"{}\"\nmax_bytes = 10000\n",
        big.display()
    );
    config += &format!(
        "[selectors.typed]\nkind = \"file\"\npath = \"{}\"\ncontent_type = \"text/plain; version=0.0.4\"\n",
        good.display()
    );
    let bridge = Bridge::start(&config).await;

    let (status, content_type, body) = bridge.scrape("good").await;
    assert_eq!((status, content_type.as_str()), (200, TEXT));
    assert_eq!(body, text);
    let (status, content_type, _) = bridge.scrape("typed").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/plain; version=0.0.4")
    );
    for (selector, needle) in [
        ("half", "incomplete"),
        ("missing", "missing.prom: No such file or directory"),
        ("big", "larger than 10000 bytes"),
    ] {
        let (status, _, body) = bridge.scrape(selector).await;
        assert_eq!(status, 502, "{selector}: {body}");
        assert!(body.contains(needle), "{selector}: {body}");
    }
    // A file replaced between scrapes is served fresh.
    std::fs::write(&good, exposition(3)).unwrap();
    assert_eq!(bridge.scrape("good").await.2, exposition(3));

    let metrics = bridge.metrics().await;
    for (selector, reason) in [
        ("half", "incomplete"),
        ("missing", "unavailable"),
        ("big", "too_large"),
    ] {
        let labels = [("selector", selector), ("reason", reason)];
        assert_eq!(
            sample(&metrics, "upshift_bridge_scrape_errors_total", &labels),
            Some(1.0),
            "{selector}"
        );
    }
    bridge.stop().await;
}
