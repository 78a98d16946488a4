use clap::Parser;
use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SvcConfig {
    #[serde(default)]
    server: ServerSettings,
    #[serde(default)]
    #[allow(dead_code)]
    name: String,
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

#[test]
fn unknown_keys_are_all_named_with_lines() {
    let text = "name = \"x\"\n[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"oops\"\nshutdown_grase = \"1s\"\n";
    let errs = parse_toml::<SvcConfig>(text).unwrap_err();
    let keys: Vec<_> = errs
        .errors()
        .iter()
        .map(|e| (e.key.as_str(), e.line))
        .collect();
    assert_eq!(
        keys,
        [
            ("server.lisen", Some(4)),
            ("server.shutdown_grase", Some(5))
        ],
        "{errs}"
    );
    assert!(errs.to_string().contains("unknown field `lisen`"), "{errs}");
}

#[test]
fn load_toml_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svc.toml");
    std::fs::write(
        &path,
        "[server]\nrequest_timeout = \"5s\"\nmax_request_bytes = 10\n",
    )
    .unwrap();
    let cfg: SvcConfig = load_toml(&path).unwrap();
    assert_eq!(cfg.server.request_timeout, Duration::from_secs(5));
    assert_eq!(cfg.server.max_request_bytes, 10);

    std::fs::write(&path, "[server]\nbogus = 1\n").unwrap();
    let err = load_toml::<SvcConfig>(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:2: server.bogus:", path.display())),
        "{err}"
    );
}

#[test]
fn validate_reports_every_problem() {
    let s = ServerSettings {
        request_timeout: Duration::ZERO,
        max_request_bytes: 0,
        otlp_endpoint: Some("collector:4317".into()),
        tls: Some(TlsSettings {
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
            client_ca: None,
        }),
        ..Default::default()
    };
    let errs = s.validate().unwrap_err();
    let keys: Vec<_> = errs.errors().iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.request_timeout",
            "server.max_request_bytes",
            "server.otlp_endpoint",
            "server.tls.cert",
            "server.tls.key"
        ]
    );
}

#[test]
fn flags_override_file() {
    let file: SvcConfig = parse_toml(
        "[server]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/from/file\"\nlog_format = \"json\"\n\
         [server.tls]\ncert = \"f.pem\"\nkey = \"f.key\"\nclient_ca = \"ca.pem\"\n",
    )
    .unwrap();
    let cli = Cli::parse_from([
        "svc",
        "--listen",
        "0.0.0.0:9",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
    ]);
    let merged = cli.serve.merge_into(file.server).unwrap();
    assert_eq!(merged.listen, "0.0.0.0:9".parse().unwrap());
    assert_eq!(merged.data_dir, PathBuf::from("/from/file"));
    assert_eq!(merged.log_format, LogFormat::Json);
    let tls = merged.tls.unwrap();
    assert_eq!(tls.cert, PathBuf::from("c.pem"));
    assert_eq!(tls.client_ca, Some(PathBuf::from("ca.pem")));

    let cli = Cli::parse_from(["svc", "--tls-cert", "c.pem"]);
    let errs = cli.serve.merge_into(ServerSettings::default()).unwrap_err();
    assert_eq!(errs.errors()[0].key, "--tls-cert/--tls-key");
}
