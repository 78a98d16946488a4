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

#[test]
fn bad_flag_values_are_configuration_errors_reported_together() {
    let cli = Cli::try_parse_from([
        "svc",
        "--listen",
        "notanaddr",
        "--log-format",
        "yaml",
        "--tls-key",
        "k.pem",
    ])
    .expect("clap accepts any value: merge_into checks them");
    let errs = cli.serve.merge_into(ServerSettings::default()).unwrap_err();
    let keys: Vec<_> = errs.errors().iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["--listen", "--tls-cert/--tls-key", "--log-format"]);
    assert!(errs.to_string().contains("\"notanaddr\""), "{errs}");

    let cli = Cli::parse_from(["svc", "--listen", "[::1]:9", "--log-format", "JSON"]);
    let merged = cli.serve.merge_into(ServerSettings::default()).unwrap();
    assert_eq!(merged.listen, "[::1]:9".parse().unwrap());
    assert_eq!(merged.log_format, LogFormat::Json);
}

/// A file with a bit of everything that can go wrong below the syntax level.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Many {
    #[serde(default)]
    server: ServerSettings,
    #[serde(default)]
    groups: std::collections::BTreeMap<String, Group>,
    top: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    slots: u32,
    #[serde(default)]
    windows: Vec<Window>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Window {
    #[allow(dead_code)]
    start: String,
}

const MANY: &str = "\
top = \"x\"
bogus = 1
[server]
listen = 5
lisen = 1
request_timeout = \"abc\"
data_dir = \"/kept\"
[groups.a]
slots = \"two\"
[groups.b]
slots = 1
[[groups.b.windows]]
start = 7
foo = 1
[groups.c]
[groups.d]
slots = 4
";

#[test]
fn type_errors_unknown_and_missing_keys_are_all_reported_in_line_order() {
    let loaded = parse_toml_partial::<Many>(MANY);
    let found: Vec<_> = loaded
        .errors
        .errors()
        .iter()
        .map(|e| (e.line.unwrap(), e.key.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (1, "top"),
            (2, "bogus"),
            (4, "server.listen"),
            (5, "server.lisen"),
            (6, "server.request_timeout"),
            (9, "groups.a.slots"),
            (13, "groups.b.windows[0].start"),
            (14, "groups.b.windows[0].foo"),
            (15, "groups.c"),
        ],
        "{}",
        loaded.errors
    );
    let messages = loaded.errors.to_string();
    assert!(messages.contains("expected socket address"), "{messages}");
    assert!(messages.contains("missing field `slots`"), "{messages}");
    assert!(
        !messages.contains("groups.a: missing field"),
        "a rejected field is not reported again as missing: {messages}"
    );
}

#[test]
fn what_is_left_of_a_bad_file_is_returned() {
    let many = parse_toml_partial::<Many>(MANY).value.unwrap();
    assert_eq!(many.server.data_dir, PathBuf::from("/kept"));
    assert_eq!(many.server.listen, ServerSettings::default().listen);
    assert_eq!(many.top, None);
    assert_eq!(many.groups.keys().collect::<Vec<_>>(), ["b", "d"]);
    assert_eq!(many.groups["d"].slots, 4);
    assert!(
        many.groups["b"].windows.is_empty(),
        "a bad array element takes its array out"
    );
}

#[test]
fn validation_of_the_rest_skips_what_was_already_rejected() {
    let loaded = parse_toml_partial::<Many>(MANY);
    let mut validation = ConfigErrors::new();
    validation.push("groups.a", "no slots configured"); // a rejected key's table
    validation.push("server.listen", "port 0"); // the rejected key itself
    validation.push("groups.d.slots", "too many"); // unrelated: kept
    validation.push("server.lisen_other", "x"); // only a common prefix: kept
    let kept: Vec<_> = loaded
        .validation_errors(validation)
        .errors()
        .iter()
        .map(|e| e.key.clone())
        .collect();
    assert_eq!(kept, ["groups.d.slots", "server.lisen_other"]);
}

#[test]
fn a_syntax_error_stops_at_once_with_its_line() {
    let loaded = parse_toml_partial::<Many>("top = 1\n[server\nlisten = 5\n");
    assert!(loaded.value.is_none());
    assert_eq!(loaded.errors.errors().len(), 1);
    assert_eq!(loaded.errors.errors()[0].line, Some(2));
}

#[test]
fn a_good_file_has_no_errors() {
    let many = parse_toml::<Many>("[groups.x]\nslots = 2\n").unwrap();
    assert_eq!(many.groups["x"].slots, 2);
}
