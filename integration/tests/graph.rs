//! The graph service as a real process: HTTP, gRPC, grpcurl, metrics,
//! reload on file change, and exit codes.

use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use upshift_integration::tools::{grpcurl, promtool_check_metrics};
use upshift_integration::{ServiceProcess, Workdir, stable_metadata};
use upshift_proto::graph::v1 as pb;
use upshift_proto::graph::v1::graph_service_client::GraphServiceClient;

async fn start_graph(dir: &Workdir) -> Result<ServiceProcess> {
    let metadata = dir.path().join("metadata");
    stable_metadata(&metadata, 10)?;
    let data = dir.path().join("data");
    let graph = ServiceProcess::start(
        "graph",
        dir.path(),
        &[
            "serve",
            "graph",
            "--metadata",
            metadata.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    )?;
    graph.wait_ready(Duration::from_secs(20)).await?;
    Ok(graph)
}

fn x86_scope() -> pb::Scope {
    pb::Scope {
        stream: "stable".into(),
        basearch: "x86_64".into(),
        scheme: pb::PayloadScheme::Checksum as i32,
    }
}

#[tokio::test]
async fn serves_cincinnati_json_with_etag_and_errors() -> Result<()> {
    let dir = Workdir::new()?;
    let graph = start_graph(&dir).await?;
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v1/graph?basearch=x86_64&stream=stable&node_uuid=ignored",
        graph.url()
    );
    let response = client.get(&url).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let etag = response.headers()["etag"].to_str()?.to_string();
    let body: serde_json::Value = response.json().await?;
    assert!(!body["nodes"].as_array().unwrap().is_empty());
    assert!(body["edges"].is_array());

    let cached = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await?;
    assert_eq!(cached.status(), 304);

    for (query, status, kind) in [
        ("stream=stable", 400, "missing_params"),
        ("basearch=x86_64&stream=nope", 404, "unknown_stream"),
        ("basearch=s390x&stream=stable", 404, "unknown_basearch"),
        (
            "basearch=x86_64&stream=stable&oci=maybe",
            400,
            "invalid_params",
        ),
    ] {
        let response = client
            .get(format!("{}/v1/graph?{query}", graph.url()))
            .send()
            .await?;
        assert_eq!(response.status(), status, "{query}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let error: serde_json::Value = response.json().await?;
        assert_eq!(error["kind"], kind, "{query}");
        assert!(error["value"].as_str().is_some_and(|v| !v.is_empty()));
    }
    Ok(())
}

#[tokio::test]
async fn watch_graph_sees_a_file_edit_and_bad_edits_keep_the_last_good_graph() -> Result<()> {
    let dir = Workdir::new()?;
    let graph = start_graph(&dir).await?;
    let mut client = GraphServiceClient::connect(graph.url()).await?;
    let first = client
        .get_graph(pb::GetGraphRequest {
            scope: Some(x86_scope()),
        })
        .await?
        .into_inner();
    let first = first.graph.expect("graph");

    let mut watch = client
        .watch_graph(pb::WatchGraphRequest {
            scopes: vec![x86_scope()],
            since_revision: 0,
        })
        .await?
        .into_inner();
    let current = watch.next().await.expect("current graph")?;
    assert_eq!(
        current.graph.as_ref().map(|g| g.revision),
        Some(first.revision)
    );

    // A malformed edit is rejected; the status says why; the graph stays.
    let updates = dir.path().join("metadata/stable/updates.json");
    std::fs::write(&updates, b"{ not json")?;
    let status = wait_for_rejection(&mut client).await?;
    assert_eq!(
        status.error_file,
        updates.display().to_string(),
        "the full path"
    );
    assert_eq!(status.error_kind, "parse");
    let log = std::fs::read_to_string(graph.log_path())?;
    assert!(
        log.lines()
            .any(|l| l.contains("metadata rejected") && l.contains(&updates.display().to_string())),
        "the log line names the full path:\n{log}"
    );
    let still = client
        .get_graph(pb::GetGraphRequest {
            scope: Some(x86_scope()),
        })
        .await?
        .into_inner();
    assert_eq!(still.graph.expect("graph").digest, first.digest);

    // A real change arrives on the open stream as a new revision.
    let history = upshift_integration::fixtures().join("fcos/stable/updates-history/026.json");
    std::fs::copy(history, &updates)?;
    let next = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await?
        .expect("new revision")?;
    let next = next.graph.expect("graph");
    assert!(next.revision > first.revision);
    assert_ne!(next.digest, first.digest);
    Ok(())
}

async fn wait_for_rejection(
    client: &mut GraphServiceClient<tonic::transport::Channel>,
) -> Result<pb::SourceStatus> {
    for _ in 0..200 {
        let status = client
            .get_source_status(pb::GetSourceStatusRequest {
                stream: "stable".into(),
            })
            .await?
            .into_inner();
        let source = status.sources.into_iter().next().expect("stable source");
        if source.state == pb::SourceState::Rejected as i32 {
            return Ok(source);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the malformed file was never rejected")
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls() -> Result<()> {
    let dir = Workdir::new()?;
    let graph = start_graph(&dir).await?;
    let addr = graph.addr();
    let services = grpcurl(&[addr, "list"])?;
    assert!(
        services.contains("upshift.graph.v1.GraphService"),
        "{services}"
    );
    assert!(services.contains("grpc.health.v1.Health"), "{services}");
    assert!(
        !services.contains("upshift.lock.v1"),
        "advertises only what it implements: {services}"
    );

    let described = grpcurl(&[addr, "describe", "upshift.graph.v1.GraphService"])?;
    assert!(described.contains("rpc WatchGraph"), "{described}");

    let request = r#"{"scope":{"stream":"stable","basearch":"x86_64"}}"#;
    let answer = grpcurl(&[
        "-d",
        request,
        addr,
        "upshift.graph.v1.GraphService/GetGraph",
    ])?;
    let answer: serde_json::Value = serde_json::from_str(&answer)?;
    assert!(
        answer["graph"]["nodes"]
            .as_array()
            .is_some_and(|n| !n.is_empty())
    );

    let health = grpcurl(&[addr, "grpc.health.v1.Health/Check"])?;
    assert!(health.contains("SERVING"), "{health}");

    // A WatchGraph stream through grpcurl sees an update made while it runs.
    let watcher = std::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-max-time",
            "8",
            "-d",
            r#"{"scopes":[{"stream":"stable","basearch":"x86_64"}]}"#,
        ])
        .args([addr, "upshift.graph.v1.GraphService/WatchGraph"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = upshift_integration::fixtures().join("fcos/stable/updates-history/026.json");
    std::fs::copy(history, dir.path().join("metadata/stable/updates.json"))?;
    let output = watcher.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let revisions: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("\"revision\": \""))
        .filter_map(|l| l.trim_end_matches(['"', ',']).parse().ok())
        .collect();
    assert!(
        revisions.len() >= 2,
        "expected the current and a new revision, got {revisions:?} from:\n{text}"
    );
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    Ok(())
}

#[tokio::test]
async fn metrics_pass_promtool_and_sigterm_exits_cleanly() -> Result<()> {
    let dir = Workdir::new()?;
    let mut graph = start_graph(&dir).await?;
    let client = reqwest::Client::new();
    client
        .get(format!(
            "{}/v1/graph?basearch=x86_64&stream=stable",
            graph.url()
        ))
        .send()
        .await?;
    let metrics = client
        .get(format!("{}/metrics", graph.url()))
        .send()
        .await?
        .text()
        .await?;
    assert!(metrics.contains("upshift_graph_nodes"), "{metrics}");
    assert!(metrics.contains("stream=\"stable\""), "{metrics}");
    promtool_check_metrics(&metrics)?;
    assert_eq!(graph.terminate(Duration::from_secs(10))?, Some(0));
    Ok(())
}

#[test]
fn bad_configuration_exits_64_and_reports_every_error() -> Result<()> {
    let dir = Workdir::new()?;
    let config = dir.path().join("graph.toml");
    std::fs::write(
        &config,
        "\
bogus_key = 1
debounce = 5
other_bogus = \"x\"
[server]
listen = 7401
lisen = \"0.0.0.0:1\"
[streams.stable]
dir = \"/x\"
releases = \"https://example.org/r.json\"
",
    )?;
    let missing = dir.path().join("no-such-metadata");
    let output = std::process::Command::new(upshift_integration::bin("upshift")?)
        .args(["serve", "graph", "--config"])
        .arg(&config)
        .arg("--metadata")
        .arg(&missing)
        .args(["--listen", "notanaddr"])
        .output()?;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = config.display().to_string();
    for planted in [
        // Three unknown keys, with their lines.
        format!("{file}:1: bogus_key: unknown field `bogus_key`"),
        format!("{file}:3: other_bogus: unknown field `other_bogus`"),
        format!("{file}:6: server.lisen: unknown field `lisen`"),
        // Two type errors.
        format!("{file}:2: debounce: invalid type: integer `5`"),
        format!("{file}:5: server.listen: invalid type: integer `7401`"),
        // Validation of what the file got right.
        "streams.stable: `dir` and URLs are mutually exclusive".to_string(),
        // Flags.
        format!("--metadata: {}: cannot read directory", missing.display()),
        "--listen: \"notanaddr\" is not an address".to_string(),
    ] {
        assert!(
            stderr.contains(&planted),
            "{planted:?} missing from:\n{stderr}"
        );
    }
    Ok(())
}

#[test]
fn bad_flag_and_env_values_exit_64_help_and_version_exit_0() -> Result<()> {
    let upshift = upshift_integration::bin("upshift")?;
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(&upshift);
        command.args(args).env_remove("UPSHIFT_LISTEN");
        for (k, v) in env {
            command.env(k, v);
        }
        command.output()
    };
    let flag = run(
        &[
            "serve",
            "graph",
            "--listen",
            "notanaddr",
            "--metadata",
            "/x",
        ],
        &[],
    )?;
    assert_eq!(flag.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&flag.stderr).contains("--listen"));
    let env = run(
        &["serve", "graph", "--metadata", "/x"],
        &[("UPSHIFT_LISTEN", "bad")],
    )?;
    assert_eq!(env.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&env.stderr).contains("\"bad\" is not an address"));
    let unknown_flag = run(&["serve", "graph", "--no-such-flag"], &[])?;
    assert_eq!(unknown_flag.status.code(), Some(64), "clap usage errors");
    for ok in [&["--version"][..], &["serve", "graph", "--help"]] {
        let out = run(ok, &[])?;
        assert_eq!(out.status.code(), Some(0), "{ok:?}");
        assert!(!out.stdout.is_empty());
    }
    Ok(())
}

/// A run as an ordinary user must not end in a bare "Permission denied":
/// an unusable data directory is named, with the flag to change it.
#[test]
fn an_unusable_data_dir_exits_64_naming_it_and_the_flag() -> Result<()> {
    let dir = Workdir::new()?;
    let metadata = dir.path().join("metadata");
    stable_metadata(&metadata, 10)?;
    let file = dir.path().join("a-file");
    std::fs::write(&file, "")?;
    let data = file.join("data");
    let (metadata, data) = (metadata.to_str().unwrap(), data.to_str().unwrap());
    for args in [
        &["serve", "graph", "--metadata", metadata, "--data-dir", data][..],
        &["serve", "lock", "--data-dir", data],
    ] {
        let output = std::process::Command::new(upshift_integration::bin("upshift")?)
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "server.data_dir: {data}: cannot create the directory"
            )),
            "{stderr}"
        );
        assert!(stderr.contains("--data-dir DIR"), "{stderr}");
    }
    Ok(())
}

/// Under systemd, `StateDirectory=` sets `$STATE_DIRECTORY`: the default
/// data directory.
#[test]
fn state_directory_is_the_default_data_dir() -> Result<()> {
    let dir = Workdir::new()?;
    let metadata = dir.path().join("metadata");
    stable_metadata(&metadata, 10)?;
    let state = dir.path().join("state");
    let addr_file = dir.path().join("graph.addr");
    let mut child = std::process::Command::new(upshift_integration::bin("upshift")?)
        .args(["serve", "graph", "--metadata"])
        .arg(&metadata)
        .args(["--listen", "127.0.0.1:0", "--addr-file"])
        .arg(&addr_file)
        .env("STATE_DIRECTORY", &state)
        .env_remove("UPSHIFT_DATA_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let written = loop {
        if state.join("graph-state.json").is_file() || std::time::Instant::now() > deadline {
            break state.join("graph-state.json").is_file();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill()?;
    child.wait()?;
    assert!(written, "graph state not written under $STATE_DIRECTORY");
    Ok(())
}
