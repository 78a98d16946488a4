//! Reading one exposition from a source, whole and bounded: every kind gets
//! the selector's connect, read and total timeouts and its size limit, and
//! nothing is returned before the source has delivered all of it.

mod dbus;
mod http;
mod stream;

use std::path::PathBuf;

use bytes::Bytes;
use tokio::time::timeout;

use crate::config::Limits;
use crate::error::SourceError;

/// Where a selector's exposition comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A Unix stream socket: connect, read to EOF.
    Uds {
        /// Socket path.
        path: PathBuf,
    },
    /// A file, read whole.
    File {
        /// File path.
        path: PathBuf,
    },
    /// An HTTP endpoint on this host.
    Http(HttpTarget),
    /// A D-Bus method returning the exposition.
    Dbus(DbusTarget),
}

impl Source {
    /// The configured kind, as written in the config (`uds`, `file`, `http`, `dbus`).
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Uds { .. } => "uds",
            Source::File { .. } => "file",
            Source::Http(_) => "http",
            Source::Dbus(_) => "dbus",
        }
    }
}

/// An HTTP source: loopback TCP or a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpTarget {
    /// `http://HOST:PORT/PATH` where HOST is `localhost` or a loopback address.
    Tcp {
        /// Host name or IP literal (without brackets).
        host: String,
        /// TCP port.
        port: u16,
        /// `Host` header value.
        authority: String,
        /// Request path and query.
        path_and_query: String,
    },
    /// HTTP over a Unix stream socket.
    Unix {
        /// Socket path.
        socket: PathBuf,
        /// Request path and query.
        path_and_query: String,
    },
}

/// Which D-Bus bus to call on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// The system bus.
    System,
    /// The session bus of the bridge's environment.
    Session,
    /// An explicit D-Bus address (`unix:path=...`).
    Address(String),
}

/// A D-Bus method call returning the exposition as `s` or `ay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbusTarget {
    /// The bus.
    pub bus: Bus,
    /// Bus name of the service.
    pub destination: String,
    /// Object path.
    pub path: String,
    /// Interface name.
    pub interface: String,
    /// Method name.
    pub method: String,
}

/// A whole exposition read from a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposition {
    /// The bytes, unchanged.
    pub body: Bytes,
    /// The source's OpenMetrics content type, when an HTTP source declared one.
    pub openmetrics_type: Option<::http::HeaderValue>,
}

/// Per-scrape inputs besides the selector.
#[derive(Debug, Clone, Default)]
pub struct ScrapeRequest {
    /// `Accept` of the scraper, forwarded to HTTP sources.
    pub accept: Option<::http::HeaderValue>,
}

/// Reads the whole exposition of `source` within `limits`.
pub async fn fetch(
    source: &Source,
    limits: &Limits,
    request: &ScrapeRequest,
) -> Result<Exposition, SourceError> {
    let read = async {
        match source {
            Source::Uds { path } => stream::read_uds(path, limits).await.map(plain),
            Source::File { path } => stream::read_file(path, limits).await.map(plain),
            Source::Http(target) => http::fetch(target, limits, request).await,
            Source::Dbus(target) => dbus::call(target, limits).await.map(plain),
        }
    };
    timeout(limits.total_timeout, read)
        .await
        .map_err(|_| SourceError::TotalTimeout(limits.total_timeout))?
}

fn plain(body: Bytes) -> Exposition {
    Exposition {
        body,
        openmetrics_type: None,
    }
}

/// Rejects a stream that ended in the middle of a line: the text format
/// ends every line (the last one too) with `\n`, so a source that stopped
/// writing half-way is caught even when it closed its end cleanly.
fn require_complete(body: &[u8]) -> Result<(), SourceError> {
    match body.last() {
        None | Some(b'\n') => Ok(()),
        Some(_) => Err(SourceError::Incomplete {
            expected: "a newline",
        }),
    }
}

/// Rejects an OpenMetrics exposition without its closing `# EOF` line (the
/// format's end marker; the newline after it is optional), so a body cut
/// anywhere, even between lines, is caught.
fn require_openmetrics_eof(body: &[u8]) -> Result<(), SourceError> {
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let last_line = body.rsplit(|b| *b == b'\n').next().unwrap_or_default();
    if last_line == b"# EOF" {
        Ok(())
    } else {
        Err(SourceError::Incomplete {
            expected: "`# EOF`",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_must_end_with_eof() {
        for whole in ["# EOF", "# EOF\n", "a 1\n# EOF\n", "a 1\n# EOF"] {
            assert!(
                require_openmetrics_eof(whole.as_bytes()).is_ok(),
                "{whole:?}"
            );
        }
        for cut in [
            "",
            "a 1\n",
            "a 1\n# EO",
            "a 1 # EOF\n",
            "# EOF\n\n",
            "# EOF\na 1\n",
        ] {
            let error = require_openmetrics_eof(cut.as_bytes()).unwrap_err();
            assert_eq!(error.reason(), crate::error::Reason::Incomplete, "{cut:?}");
        }
    }

    #[test]
    fn text_must_end_with_a_newline() {
        assert!(require_complete(b"").is_ok());
        assert!(require_complete(b"a 1\n").is_ok());
        assert!(require_complete(b"a 1\nb").is_err());
    }
}
