//! Starts the bridge in process on a loopback port, and real sources for it:
//! Unix socket servers with scripted behaviour, and expositions to serve.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use upshift_bridge::BridgeConfig;
use upshift_common::clock::SystemClock;
use upshift_common::config::parse_toml;
use upshift_common::telemetry::Metrics;

/// A running bridge; stopped on drop.
pub struct Bridge {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Bridge {
    /// Starts the bridge on `toml` (its `[server] listen` is replaced by 127.0.0.1:0).
    pub async fn start(toml: &str) -> Bridge {
        let mut config: BridgeConfig = parse_toml(toml).expect("test config parses");
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        let settings = config.validate().expect("test config is valid");
        let bound = upshift_bridge::bind(
            &config.server,
            settings,
            Metrics::new("bridge"),
            SystemClock::shared(),
        )
        .await
        .expect("bridge binds");
        let addr = bound.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            bound
                .serve(async {
                    let _ = rx.await;
                })
                .await
                .expect("bridge serves");
        });
        Bridge {
            addr,
            client: reqwest::Client::new(),
            stop: Some(tx),
            task,
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET /bridge?selector=NAME`: status, content type, body.
    pub async fn scrape(&self, selector: &str) -> (u16, String, String) {
        let response = self
            .client
            .get(self.url("/bridge"))
            .query(&[("selector", selector)])
            .send()
            .await
            .expect("bridge answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = response.text().await.expect("body");
        (status, content_type, body)
    }

    /// The bridge's own `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// Stops the bridge and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap();
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of the series `name{labels}` in an exposition, if present.
pub fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

/// A realistic text exposition of `series` gauge series plus a histogram.
pub fn exposition(series: usize) -> String {
    let mut text = String::from(
        "# HELP upshift_agent_state Current state of the update agent.\n\
         # TYPE upshift_agent_state gauge\n",
    );
    for i in 0..series {
        text.push_str(&format!(
            "upshift_agent_state{{state=\"state_{i}\",stream=\"stable\"}} {}\n",
            i % 2
        ));
    }
    text.push_str(
        "# HELP upshift_agent_check_duration_seconds Time of one update check.\n\
         # TYPE upshift_agent_check_duration_seconds histogram\n\
         upshift_agent_check_duration_seconds_bucket{le=\"0.1\"} 3\n\
         upshift_agent_check_duration_seconds_bucket{le=\"1\"} 7\n\
         upshift_agent_check_duration_seconds_bucket{le=\"+Inf\"} 8\n\
         upshift_agent_check_duration_seconds_sum 4.25\n\
         upshift_agent_check_duration_seconds_count 8\n",
    );
    text
}

/// An OpenMetrics exposition (ends with `# EOF`).
pub fn openmetrics() -> String {
    "# TYPE upshift_agent_checks counter\n\
     # HELP upshift_agent_checks Update checks done.\n\
     upshift_agent_checks_total{result=\"ok\"} 17\n\
     upshift_agent_checks_created{result=\"ok\"} 1.7e9\n\
     # EOF\n"
        .to_string()
}

/// What a scripted Unix socket server does with each connection.
#[derive(Debug, Clone)]
pub enum Script {
    /// Writes the bytes in small pieces, then closes.
    Dump(Vec<u8>),
    /// Accepts and never writes or closes.
    Hang,
    /// Writes the bytes, then keeps the connection open without writing.
    WriteThenHang(Vec<u8>),
}

/// A Unix socket server at `path` playing `script` for every connection.
pub struct UdsServer {
    pub path: PathBuf,
    task: JoinHandle<()>,
}

impl UdsServer {
    pub fn start(path: &Path, script: Script) -> UdsServer {
        let listener = UnixListener::bind(path).expect("bind unix socket");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                match &script {
                    Script::Dump(bytes) => {
                        let bytes = bytes.clone();
                        tokio::spawn(async move {
                            for chunk in bytes.chunks(1000) {
                                if stream.write_all(chunk).await.is_err() {
                                    return;
                                }
                                tokio::task::yield_now().await;
                            }
                            let _ = stream.shutdown().await;
                        });
                    }
                    Script::Hang => held.push(stream),
                    Script::WriteThenHang(bytes) => {
                        let _ = stream.write_all(bytes).await;
                        held.push(stream);
                    }
                }
            }
        });
        UdsServer {
            path: path.to_path_buf(),
            task,
        }
    }
}

impl Drop for UdsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `promtool check metrics` on `exposition`; false (with a loud notice)
/// when promtool is not installed.
pub fn promtool_check_metrics(exposition: &str) -> bool {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "NOTICE: promtool not on PATH; SKIPPING the exposition lint \
                 (Debian package prometheus; `cargo xtask test` installs it)"
            );
            return false;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition:\n{exposition}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    true
}
