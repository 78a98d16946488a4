use std::io::Write;

use upshift_common::config::parse_toml;

use super::*;
use crate::source::{Bus, DbusTarget, HttpTarget};

fn settings(text: &str) -> Result<BridgeSettings, ConfigErrors> {
    parse_toml::<BridgeConfig>(text)?.validate()
}

/// The `key: message` lines of every error.
fn errors(text: &str) -> Vec<String> {
    let errors = settings(text).expect_err("config should be rejected");
    errors
        .errors()
        .iter()
        .map(|e| format!("{}: {}", e.key, e.message))
        .collect()
}

fn assert_has(errors: &[String], key: &str, needle: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{key}: ")) && e.contains(needle)),
        "no error for {key} containing {needle:?} in {errors:#?}"
    );
}

#[test]
fn every_kind_parses_with_defaults_and_overrides() {
    let s = settings(
        r#"
        [defaults]
        read_timeout = "3s"
        max_bytes = 1000

        [selectors.agent]
        kind = "uds"
        path = "/run/upshift/agent-metrics.sock"
        total_timeout = "4s"

        [selectors."node.textfile"]
        kind = "file"
        path = "/var/lib/node_exporter/textfile/upshift.prom"
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"

        [selectors.local_http]
        kind = "http"
        url = "http://localhost:9100/metrics?x=1"

        [selectors.v6]
        kind = "http"
        url = "http://[::1]:9100"

        [selectors.sock]
        kind = "http"
        unix_socket = "/run/exporter.sock"

        [selectors.bus]
        kind = "dbus"
        bus = "unix:path=/run/dbus/system_bus_socket"
        destination = "org.example.Exporter"
        path = "/org/example/Exporter"
        interface = "org.example.Exporter1"
        method = "Metrics"
        "#,
    )
    .unwrap();
    let agent = &s.selectors["agent"];
    assert_eq!(
        agent.source,
        Source::Uds {
            path: "/run/upshift/agent-metrics.sock".into()
        }
    );
    assert_eq!(
        agent.limits,
        Limits {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: Duration::from_secs(3),
            total_timeout: Duration::from_secs(4),
            max_bytes: 1000,
        }
    );
    assert!(agent.content_type.is_none());
    assert_eq!(
        s.selectors["node.textfile"].content_type.as_ref().unwrap(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(
        s.selectors["local_http"].source,
        Source::Http(HttpTarget::Tcp {
            host: "localhost".into(),
            port: 9100,
            authority: "localhost:9100".into(),
            path_and_query: "/metrics?x=1".into(),
        })
    );
    assert_eq!(
        s.selectors["v6"].source,
        Source::Http(HttpTarget::Tcp {
            host: "::1".into(),
            port: 9100,
            authority: "[::1]:9100".into(),
            path_and_query: "/".into(),
        })
    );
    assert_eq!(
        s.selectors["sock"].source,
        Source::Http(HttpTarget::Unix {
            socket: "/run/exporter.sock".into(),
            path_and_query: "/metrics".into(),
        })
    );
    assert_eq!(
        s.selectors["bus"].source,
        Source::Dbus(DbusTarget {
            bus: Bus::Address("unix:path=/run/dbus/system_bus_socket".into()),
            destination: "org.example.Exporter".into(),
            path: "/org/example/Exporter".into(),
            interface: "org.example.Exporter1".into(),
            method: "Metrics".into(),
        })
    );
}

#[test]
fn uds_and_file_errors() {
    let e = errors(
        r#"
        [selectors.a]
        kind = "uds"

        [selectors.b]
        kind = "file"
        path = "relative/x.prom"
        url = "http://localhost/"
        method = "Metrics"
        "#,
    );
    assert_has(&e, "selectors.a.path", "missing");
    assert_has(&e, "selectors.b.path", "absolute path");
    assert_has(&e, "selectors.b.url", "not used by kind `file`");
    assert_has(&e, "selectors.b.method", "not used by kind `file`");
    assert_eq!(e.len(), 4, "{e:#?}");
}

#[test]
fn http_errors() {
    let e = errors(
        r#"
        [selectors.remote]
        kind = "http"
        url = "http://example.org:9100/metrics"

        [selectors.private]
        kind = "http"
        url = "http://10.0.0.1/metrics"

        [selectors.tls]
        kind = "http"
        url = "https://localhost/metrics"

        [selectors.both]
        kind = "http"
        url = "http://localhost/"
        unix_socket = "/run/x.sock"

        [selectors.none]
        kind = "http"

        [selectors.badpath]
        kind = "http"
        unix_socket = "/run/x.sock"
        path = "metrics"

        [selectors.pathwithurl]
        kind = "http"
        url = "http://127.0.0.1:9100/metrics"
        path = "/other"
        bus = "system"
        "#,
    );
    assert_has(&e, "selectors.remote.url", "only localhost or a loopback");
    assert_has(&e, "selectors.private.url", "only localhost or a loopback");
    assert_has(&e, "selectors.tls.url", "must be an http:// URL");
    assert_has(&e, "selectors.both.url", "not both");
    assert_has(&e, "selectors.none.url", "missing");
    assert_has(&e, "selectors.badpath.path", "not an HTTP path");
    assert_has(
        &e,
        "selectors.pathwithurl.path",
        "only used with unix_socket",
    );
    assert_has(&e, "selectors.pathwithurl.bus", "not used by kind `http`");
    assert_eq!(e.len(), 8, "{e:#?}");
}

#[test]
fn dbus_errors() {
    let e = errors(
        r#"
        [selectors.d]
        kind = "dbus"
        bus = "nonsense"
        destination = "not a name"
        path = "no/slash"
        interface = "NoDots"
        method = "bad.member"
        url = "http://localhost/"

        [selectors.empty]
        kind = "dbus"
        "#,
    );
    assert_has(&e, "selectors.d.bus", "not a valid D-Bus bus");
    assert_has(
        &e,
        "selectors.d.destination",
        "not a valid D-Bus destination",
    );
    assert_has(&e, "selectors.d.path", "not a valid D-Bus path");
    assert_has(&e, "selectors.d.interface", "not a valid D-Bus interface");
    assert_has(&e, "selectors.d.method", "not a valid D-Bus method");
    assert_has(&e, "selectors.d.url", "not used by kind `dbus`");
    for key in ["bus", "destination", "path", "interface", "method"] {
        assert_has(&e, &format!("selectors.empty.{key}"), "missing");
    }
    assert_eq!(e.len(), 11, "{e:#?}");
}

#[test]
fn names_kinds_and_limits() {
    let e = errors(
        r#"
        [defaults]
        connect_timeout = "0s"
        max_bytes = 0

        [selectors."bad name!"]
        kind = "file"
        path = "/x"

        [selectors.nokind]
        path = "/x"

        [selectors.weird]
        kind = "ftp"

        [selectors.limits]
        kind = "file"
        path = "/x"
        read_timeout = "0s"
        total_timeout = "1h"
        content_type = "plain"
        "#,
    );
    assert_has(&e, "defaults.connect_timeout", "greater than zero");
    assert_has(&e, "defaults.max_bytes", "greater than zero");
    assert_has(&e, "selectors.bad name!", "may only contain");
    assert_has(&e, "selectors.nokind.kind", "missing");
    assert_has(&e, "selectors.weird.kind", "unknown kind `ftp`");
    assert_has(&e, "selectors.limits.read_timeout", "greater than zero");
    assert_has(
        &e,
        "selectors.limits.total_timeout",
        "server.request_timeout",
    );
    assert_has(&e, "selectors.limits.content_type", "not a media type");
}

#[test]
fn no_selector_is_an_error() {
    assert_eq!(
        errors("[defaults]\nmax_bytes = 10\n"),
        ["selectors: no selector configured"]
    );
}

#[test]
fn selector_names() {
    for good in ["a", "node_exporter", "agent.v1", "x-y-Z_9"] {
        assert!(valid_selector_name(good), "{good}");
    }
    for bad in ["", "a b", "a/b", "a?b", "é", "a=b"] {
        assert!(!valid_selector_name(bad), "{bad}");
    }
}

#[test]
fn unknown_keys_are_all_reported_with_their_table() {
    let e = errors(
        r#"
        [defaults]
        read_timout = "1s"

        [selectors.a]
        kind = "file"
        path = "/x"
        max_byte = 10
        "#,
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("defaults.read_timout: unknown field"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("selectors.a.max_byte: unknown field"),
        "{e:#?}"
    );
}

#[test]
fn load_names_the_file_and_checks_the_server_section() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "[server]\nrequest_timeout = \"0s\"\n\n[selectors.a]\nkind = \"uds\"\npath = \"x.sock\""
    )
    .unwrap();
    let errors = load(file.path()).unwrap_err();
    let lines: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
    let prefix = format!("{}: ", file.path().display());
    assert!(lines.iter().all(|l| l.starts_with(&prefix)), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("server.request_timeout: must be greater than zero")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("selectors.a.path: `x.sock` must be an absolute path")),
        "{lines:#?}"
    );
}

#[test]
fn the_shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/bridge/bridge.toml");
    let (config, settings) = load(&path).unwrap();
    assert_eq!(config.server.listen.port(), DEFAULT_PORT);
    assert_eq!(
        settings.selectors["agent"].source,
        Source::Uds {
            path: "/run/upshift/agent-metrics.sock".into()
        }
    );
    assert!(matches!(
        settings.selectors["textfile"].source,
        Source::File { .. }
    ));
}
