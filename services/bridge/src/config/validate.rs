//! Per-kind checks of the raw selectors; every problem is collected.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderValue, Uri};
use upshift_common::config::ConfigErrors;

use super::{BridgeConfig, BridgeSettings, Limits, LimitsConfig, Selector, SelectorConfig};
use crate::source::{Bus, DbusTarget, HttpTarget, Source};

/// Whether `name` is a valid selector name (`^[a-zA-Z0-9_.-]+$`).
pub fn valid_selector_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub(super) fn validate(config: &BridgeConfig) -> Result<BridgeSettings, ConfigErrors> {
    let mut errors = ConfigErrors::new();
    let request_timeout = config.server.request_timeout;
    check_limits("defaults", &config.defaults, &mut errors);
    let default_total = config
        .defaults
        .total_timeout
        .unwrap_or(super::DEFAULT_TOTAL_TIMEOUT);
    check_total("defaults", default_total, request_timeout, &mut errors);
    if config.selectors.is_empty() {
        errors.push("selectors", "no selector configured");
    }
    let mut settings = BridgeSettings::default();
    for (name, raw) in &config.selectors {
        let key = format!("selectors.{name}");
        if !valid_selector_name(name) {
            errors.push(
                key.clone(),
                "selector names may only contain letters, digits, '_', '.' and '-'",
            );
        }
        check_limits(
            &key,
            &raw.limits_over(&LimitsConfig::default()),
            &mut errors,
        );
        if let Some(total) = raw.total_timeout {
            check_total(&key, total, request_timeout, &mut errors);
        }
        let limits = raw.limits_over(&config.defaults);
        let source = source(&key, raw, &mut errors);
        let content_type = limits
            .content_type
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok());
        let limits = Limits {
            connect_timeout: limits
                .connect_timeout
                .unwrap_or(super::DEFAULT_CONNECT_TIMEOUT),
            read_timeout: limits.read_timeout.unwrap_or(super::DEFAULT_READ_TIMEOUT),
            total_timeout: limits.total_timeout.unwrap_or(super::DEFAULT_TOTAL_TIMEOUT),
            max_bytes: limits.max_bytes.unwrap_or(super::DEFAULT_MAX_BYTES),
        };
        if let Some(source) = source {
            settings.selectors.insert(
                name.clone(),
                Selector {
                    name: name.clone(),
                    source,
                    limits,
                    content_type,
                },
            );
        }
    }
    errors.into_result(settings)
}

/// The host answers 408 after `server.request_timeout`: a scrape must end before.
fn check_total(key: &str, total: Duration, request_timeout: Duration, errors: &mut ConfigErrors) {
    if total >= request_timeout {
        errors.push(
            format!("{key}.total_timeout"),
            format!("must be shorter than server.request_timeout ({request_timeout:?})"),
        );
    }
}

/// Checks the limits written in one table (inherited values are checked where written).
fn check_limits(key: &str, limits: &LimitsConfig, errors: &mut ConfigErrors) {
    for (name, value) in [
        ("connect_timeout", limits.connect_timeout),
        ("read_timeout", limits.read_timeout),
        ("total_timeout", limits.total_timeout),
    ] {
        if value.is_some_and(|v| v.is_zero()) {
            errors.push(format!("{key}.{name}"), "must be greater than zero");
        }
    }
    if limits.max_bytes == Some(0) {
        errors.push(format!("{key}.max_bytes"), "must be greater than zero");
    }
    if let Some(value) = &limits.content_type
        && (HeaderValue::from_str(value).is_err() || !value.contains('/'))
    {
        errors.push(
            format!("{key}.content_type"),
            format!("`{value}` is not a media type"),
        );
    }
}

/// Keys each kind uses besides `kind` and the limits.
fn allowed_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "uds" | "file" => &["path"],
        "http" => &["url", "unix_socket", "path"],
        "dbus" => &["bus", "destination", "path", "interface", "method"],
        _ => &[],
    }
}

fn source(key: &str, raw: &SelectorConfig, errors: &mut ConfigErrors) -> Option<Source> {
    let Some(kind) = raw.kind.as_deref() else {
        errors.push(
            format!("{key}.kind"),
            "missing: one of uds, file, http, dbus",
        );
        return None;
    };
    let given = [
        ("path", raw.path.is_some()),
        ("url", raw.url.is_some()),
        ("unix_socket", raw.unix_socket.is_some()),
        ("bus", raw.bus.is_some()),
        ("destination", raw.destination.is_some()),
        ("interface", raw.interface.is_some()),
        ("method", raw.method.is_some()),
    ];
    let allowed = allowed_keys(kind);
    if !allowed.is_empty() {
        for (name, _) in given.iter().filter(|(n, set)| *set && !allowed.contains(n)) {
            errors.push(
                format!("{key}.{name}"),
                format!("not used by kind `{kind}`"),
            );
        }
    }
    match kind {
        "uds" => {
            absolute_path(key, "path", raw.path.as_deref(), errors).map(|path| Source::Uds { path })
        }
        "file" => absolute_path(key, "path", raw.path.as_deref(), errors)
            .map(|path| Source::File { path }),
        "http" => http_target(key, raw, errors).map(Source::Http),
        "dbus" => dbus_target(key, raw, errors).map(Source::Dbus),
        other => {
            errors.push(
                format!("{key}.kind"),
                format!("unknown kind `{other}`: one of uds, file, http, dbus"),
            );
            None
        }
    }
}

fn absolute_path(
    key: &str,
    name: &str,
    value: Option<&str>,
    errors: &mut ConfigErrors,
) -> Option<PathBuf> {
    match value {
        None => {
            errors.push(format!("{key}.{name}"), "missing");
            None
        }
        Some(p) if !p.starts_with('/') => {
            errors.push(
                format!("{key}.{name}"),
                format!("`{p}` must be an absolute path"),
            );
            None
        }
        Some(p) => Some(PathBuf::from(p)),
    }
}

fn http_target(key: &str, raw: &SelectorConfig, errors: &mut ConfigErrors) -> Option<HttpTarget> {
    match (&raw.url, &raw.unix_socket) {
        (Some(_), Some(_)) => {
            errors.push(
                format!("{key}.url"),
                "set either url or unix_socket, not both",
            );
            None
        }
        (None, None) => {
            errors.push(
                format!("{key}.url"),
                "missing: set url (on localhost) or unix_socket",
            );
            None
        }
        (Some(url), None) => {
            if raw.path.is_some() {
                errors.push(
                    format!("{key}.path"),
                    "only used with unix_socket; put the path in url",
                );
            }
            loopback_url(&format!("{key}.url"), url, errors)
        }
        (None, Some(socket)) => {
            let socket = absolute_path(key, "unix_socket", socket.to_str(), errors);
            let path_and_query = raw.path.clone().unwrap_or_else(|| "/metrics".to_string());
            let valid = path_and_query.starts_with('/')
                && path_and_query.parse::<http::uri::PathAndQuery>().is_ok();
            if !valid {
                errors.push(
                    format!("{key}.path"),
                    format!("`{path_and_query}` is not an HTTP path (it starts with '/')"),
                );
            }
            match socket {
                Some(socket) if valid => Some(HttpTarget::Unix {
                    socket,
                    path_and_query,
                }),
                _ => None,
            }
        }
    }
}

fn loopback_url(key: &str, url: &str, errors: &mut ConfigErrors) -> Option<HttpTarget> {
    let uri = match url.parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => {
            errors.push(key, format!("`{url}` is not a URL: {e}"));
            return None;
        }
    };
    if uri.scheme_str() != Some("http") {
        errors.push(key, format!("`{url}` must be an http:// URL"));
        return None;
    }
    let Some(authority) = uri.authority() else {
        errors.push(key, format!("`{url}` has no host"));
        return None;
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        errors.push(
            key,
            format!("`{url}`: only localhost or a loopback address may be scraped"),
        );
        return None;
    }
    if authority.as_str().contains('@') {
        errors.push(
            key,
            format!("`{url}`: credentials in the URL are not supported"),
        );
        return None;
    }
    Some(HttpTarget::Tcp {
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(80),
        authority: authority.as_str().to_string(),
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
    })
}

fn dbus_target(key: &str, raw: &SelectorConfig, errors: &mut ConfigErrors) -> Option<DbusTarget> {
    use zbus::names::{BusName, InterfaceName, MemberName};
    use zbus::zvariant::ObjectPath;

    let mut field = |name: &str, value: Option<&String>, valid: &dyn Fn(&str) -> bool| {
        match value {
            None => errors.push(format!("{key}.{name}"), "missing"),
            Some(v) if !valid(v) => errors.push(
                format!("{key}.{name}"),
                format!("`{v}` is not a valid D-Bus {}", name.replace('_', " ")),
            ),
            Some(v) => return Some(v.clone()),
        }
        None
    };
    let bus = field("bus", raw.bus.as_ref(), &|v| {
        matches!(v, "system" | "session") || zbus::Address::try_from(v).is_ok()
    });
    let destination = field("destination", raw.destination.as_ref(), &|v| {
        BusName::try_from(v).is_ok()
    });
    let path = field("path", raw.path.as_ref(), &|v| {
        ObjectPath::try_from(v).is_ok()
    });
    let interface = field("interface", raw.interface.as_ref(), &|v| {
        InterfaceName::try_from(v).is_ok()
    });
    let method = field("method", raw.method.as_ref(), &|v| {
        MemberName::try_from(v).is_ok()
    });
    let bus = match bus?.as_str() {
        "system" => Bus::System,
        "session" => Bus::Session,
        address => Bus::Address(address.to_string()),
    };
    Some(DbusTarget {
        bus,
        destination: destination?,
        path: path?,
        interface: interface?,
        method: method?,
    })
}
