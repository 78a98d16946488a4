//! `upshift bridge` as a real process on the shipped example configuration
//! (`dist/bridge/`): every selector of the Prometheus scrape config answers
//! through the bridge, errors over the wire, exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use upshift_integration::tools::{promtool_check_file, promtool_check_metrics};
use upshift_integration::{ServiceProcess, Workdir, bin};

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/bridge")
}

/// A text exposition like the agent's.
fn agent_exposition() -> String {
    let mut text = String::from(
        "# HELP upshift_agent_info Agent build and node.\n# TYPE upshift_agent_info gauge\n",
    );
    for stream in ["stable", "testing", "next"] {
        text.push_str(&format!("upshift_agent_info{{stream=\"{stream}\"}} 1\n"));
    }
    text
}

/// The selector names of `bridge.toml` (`[selectors.NAME]` headers).
fn configured_selectors(toml: &str) -> Vec<String> {
    toml.lines()
        .filter_map(|l| l.trim().strip_prefix("[selectors.")?.strip_suffix(']'))
        .map(str::to_string)
        .collect()
}

/// The `selector: [NAME]` params of the scrape config's jobs.
fn scraped_selectors(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix("selector: [")?.strip_suffix(']'))
        .map(str::to_string)
        .collect()
}

/// Serves `text` once per connection on a Unix socket, then closes.
fn serve_uds(path: &Path, text: String) -> Result<tokio::task::JoinHandle<()>> {
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    Ok(tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(text.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    }))
}

/// `dist/bridge/bridge.toml` with its paths moved into `dir`.
fn example_config(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(dist().join("bridge.toml"))?;
    let socket = dir.join("agent-metrics.sock");
    let textfile = dir.join("upshift.prom");
    let moved = text
        .replace(
            "/run/upshift/agent-metrics.sock",
            socket.to_str().context("utf-8 path")?,
        )
        .replace(
            "/var/lib/prometheus/node-exporter/upshift.prom",
            textfile.to_str().context("utf-8 path")?,
        );
    ensure!(
        moved != text,
        "the example's paths changed: update this test"
    );
    let config = dir.join("bridge.toml");
    std::fs::write(&config, moved)?;
    Ok((config, socket, textfile))
}

#[tokio::test]
async fn the_example_serves_every_selector_prometheus_scrapes() -> Result<()> {
    let dir = Workdir::new()?;
    let (config, socket, textfile) = example_config(dir.path())?;
    let agent = serve_uds(&socket, agent_exposition())?;
    let node = "# HELP node_upshift_staged Staged deployment present.\n\
                # TYPE node_upshift_staged gauge\nnode_upshift_staged 0\n";
    std::fs::write(&textfile, node)?;

    let toml = std::fs::read_to_string(dist().join("bridge.toml"))?;
    let yaml = std::fs::read_to_string(dist().join("prometheus-scrape.yaml"))?;
    let mut configured = configured_selectors(&toml);
    let mut scraped = scraped_selectors(&yaml);
    configured.sort();
    scraped.sort();
    assert_eq!(configured, ["agent", "textfile"]);
    assert_eq!(configured, scraped, "one scrape job per selector");
    promtool_check_file("config", &dist().join("prometheus-scrape.yaml"))?;

    let bridge = ServiceProcess::start(
        "bridge",
        dir.path(),
        &["bridge", "--config", config.to_str().unwrap()],
    )?;
    bridge.wait_ready(Duration::from_secs(20)).await?;
    let client = reqwest::Client::new();
    for (selector, expected) in [
        ("agent", agent_exposition()),
        ("textfile", node.to_string()),
    ] {
        // As Prometheus asks: metrics_path /bridge, params {selector: [NAME]}.
        let response = client
            .get(format!("{}/bridge", bridge.url()))
            .query(&[("selector", &selector)])
            .header("accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1")
            .header("x-prometheus-scrape-timeout-seconds", "10")
            .send()
            .await?;
        assert_eq!(response.status(), 200, "{selector}");
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let body = response.text().await?;
        assert_eq!(body, expected, "{selector}");
        promtool_check_metrics(&body)?;
    }
    let metrics = client
        .get(format!("{}/metrics", bridge.url()))
        .send()
        .await?
        .text()
        .await?;
    promtool_check_metrics(&metrics)?;
    assert!(
        metrics.contains("upshift_bridge_scrapes_total{result=\"ok\",selector=\"agent\"} 1"),
        "{metrics}"
    );

    // The agent goes away: 502 with a short text body, never a stale answer.
    agent.abort();
    let _ = agent.await;
    std::fs::remove_file(&socket)?;
    let response = client
        .get(format!("{}/bridge?selector=agent", bridge.url()))
        .send()
        .await?;
    assert_eq!(response.status(), 502);
    let body = response.text().await?;
    assert!(body.starts_with("source failed: cannot reach "), "{body}");
    Ok(())
}

#[tokio::test]
async fn request_errors_and_graceful_stop() -> Result<()> {
    let dir = Workdir::new()?;
    let (config, _socket, _textfile) = example_config(dir.path())?;
    let mut bridge = ServiceProcess::start(
        "bridge",
        dir.path(),
        &["bridge", "--config", config.to_str().unwrap()],
    )?;
    bridge.wait_ready(Duration::from_secs(20)).await?;
    let client = reqwest::Client::new();
    for (query, status) in [
        ("", 400),
        ("?selector=nope", 404),
        ("?selector=textfile", 502),
    ] {
        let response = client
            .get(format!("{}/bridge{query}", bridge.url()))
            .send()
            .await?;
        assert_eq!(response.status(), status, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=utf-8"
        );
    }
    let response = client
        .post(format!("{}/bridge?selector=agent", bridge.url()))
        .send()
        .await?;
    assert_eq!(response.status(), 405);
    assert_eq!(bridge.terminate(Duration::from_secs(15))?, Some(0));
    Ok(())
}

#[test]
fn an_invalid_config_exits_64_naming_file_and_keys() -> Result<()> {
    let dir = Workdir::new()?;
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[selectors.agent]\nkind = \"uds\"\n\n[selectors.web]\nkind = \"http\"\nurl = \"http://example.org/metrics\"\ncolour = \"red\"\n",
    )?;
    let output = Command::new(bin("upshift")?)
        .args(["bridge", "--config"])
        .arg(&config)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    // Unknown keys are reported first, all of them, before the per-kind checks.
    assert!(
        stderr.contains(&format!("{}:", config.display()))
            && stderr.contains("selectors.web.colour"),
        "{stderr}"
    );

    std::fs::write(
        &config,
        "[selectors.agent]\nkind = \"uds\"\n\n[selectors.web]\nkind = \"http\"\nurl = \"http://example.org/metrics\"\n",
    )?;
    let output = Command::new(bin("upshift")?)
        .args(["bridge", "--check-config", "--config"])
        .arg(&config)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    for key in ["selectors.agent.path: missing", "selectors.web.url:"] {
        assert!(
            stderr.contains(&format!("{}: {key}", config.display())),
            "{key} in {stderr}"
        );
    }

    let output = Command::new(bin("upshift")?)
        .args(["bridge", "--check-config", "--config"])
        .arg(dist().join("bridge.toml"))
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "configuration OK: bridge would listen on 0.0.0.0:9598\n"
    );
    Ok(())
}
