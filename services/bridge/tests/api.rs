//! The bridge's HTTP surface: request errors, the scraper's timeout header,
//! health, and its own metrics (checked with promtool).

#[path = "support/harness.rs"]
mod harness;

use harness::{Bridge, Script, UdsServer, exposition, promtool_check_metrics, sample};

async fn file_bridge(dir: &std::path::Path) -> Bridge {
    let path = dir.join("node.prom");
    std::fs::write(&path, exposition(10)).unwrap();
    Bridge::start(&format!(
        "[selectors.node]\nkind = \"file\"\npath = \"{}\"\n",
        path.display()
    ))
    .await
}

#[tokio::test]
async fn request_errors_have_short_text_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = file_bridge(dir.path()).await;
    let client = &bridge.client;
    for (query, status, body) in [
        ("", 400, "missing selector parameter\n"),
        ("?selector=", 400, "missing selector parameter\n"),
        ("?other=node", 400, "missing selector parameter\n"),
        (
            "?selector=node&selector=other",
            400,
            "give exactly one selector\n",
        ),
        ("?selector=nope", 404, "unknown selector\n"),
        ("?selector=..%2Fnode", 404, "unknown selector\n"),
    ] {
        let response = client
            .get(bridge.url(&format!("/bridge{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=utf-8"
        );
        assert_eq!(response.text().await.unwrap(), body, "{query}");
    }
    // The same selector twice is still one selector; extra parameters are ignored.
    let response = client
        .get(bridge.url("/bridge?selector=node&selector=node&job=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let response = client
            .request(method.clone(), bridge.url("/bridge?selector=node"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "GET, HEAD");
        assert_eq!(response.text().await.unwrap(), "only GET and HEAD\n");
    }
    let head = client
        .head(bridge.url("/bridge?selector=node"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);

    let metrics = bridge.metrics().await;
    for (reason, count) in [
        ("missing_selector", 4.0),
        ("unknown_selector", 2.0),
        ("method_not_allowed", 3.0),
    ] {
        assert_eq!(
            sample(
                &metrics,
                "upshift_bridge_rejected_requests_total",
                &[("reason", reason)]
            ),
            Some(count),
            "{reason}"
        );
    }
    // Unknown names never become label values.
    assert!(!metrics.contains("selector=\"nope\""), "{metrics}");
}

#[tokio::test]
async fn health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = file_bridge(dir.path()).await;
    for path in ["/healthz", "/readyz"] {
        let response = bridge.client.get(bridge.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    bridge.stop().await;
}

#[tokio::test]
async fn the_scrapers_timeout_caps_the_total_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hang.sock");
    let _server = UdsServer::start(&path, Script::Hang);
    // Configured far longer than the scraper is willing to wait.
    let bridge = Bridge::start(&format!(
        "[selectors.hang]\nkind = \"uds\"\npath = \"{}\"\nread_timeout = \"20s\"\ntotal_timeout = \"25s\"\n",
        path.display()
    ))
    .await;
    let response = bridge
        .client
        .get(bridge.url("/bridge?selector=hang"))
        .header("x-prometheus-scrape-timeout-seconds", "0.6")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("the scrape took longer than 300ms")
    );
}

#[tokio::test]
async fn own_metrics_pass_promtool_and_count_every_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.sock");
    let hang = dir.path().join("hang.sock");
    let text = exposition(20);
    let _good = UdsServer::start(&good, Script::Dump(text.clone().into()));
    let _hang = UdsServer::start(&hang, Script::Hang);
    let bridge = Bridge::start(&format!(
        "[selectors.good]\nkind = \"uds\"\npath = \"{}\"\n\
         [selectors.hang]\nkind = \"uds\"\npath = \"{}\"\nread_timeout = \"200ms\"\n\
         [selectors.gone]\nkind = \"file\"\npath = \"{}\"\n\
         [selectors.idle]\nkind = \"file\"\npath = \"/nonexistent/never-scraped\"\n",
        good.display(),
        hang.display(),
        dir.path().join("gone.prom").display()
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(bridge.scrape("good").await.0, 200);
    }
    assert_eq!(bridge.scrape("hang").await.0, 504);
    assert_eq!(bridge.scrape("gone").await.0, 502);

    let metrics = bridge.metrics().await;
    promtool_check_metrics(&metrics);
    let scrapes = |selector: &str, result: &str| {
        sample(
            &metrics,
            "upshift_bridge_scrapes_total",
            &[("selector", selector), ("result", result)],
        )
    };
    assert_eq!(scrapes("good", "ok"), Some(3.0));
    assert_eq!(scrapes("good", "error"), Some(0.0));
    assert_eq!(scrapes("hang", "timeout"), Some(1.0));
    assert_eq!(scrapes("gone", "error"), Some(1.0));
    // Configured selectors show before their first scrape.
    assert_eq!(scrapes("idle", "ok"), Some(0.0));
    assert_eq!(
        sample(
            &metrics,
            "upshift_bridge_scrape_bytes_total",
            &[("selector", "good")]
        ),
        Some(3.0 * text.len() as f64)
    );
    assert_eq!(
        sample(
            &metrics,
            "upshift_bridge_scrape_duration_seconds_count",
            &[("selector", "good")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "upshift_bridge_scrape_errors_total",
            &[("selector", "hang"), ("reason", "read_timeout")]
        ),
        Some(1.0)
    );
}
