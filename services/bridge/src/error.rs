//! Why a scrape failed, and how that shows on the wire and in the metrics.

use std::io;
use std::time::Duration;

use http::StatusCode;

/// A source could not deliver a whole exposition.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Connecting (or opening the file) failed.
    #[error("cannot reach {target}")]
    Unavailable {
        /// Socket, file, URL or bus.
        target: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading failed after connecting (reset, I/O error).
    #[error("reading from {target} failed")]
    Read {
        /// Socket, file or URL.
        target: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The source kept sending past the size limit.
    #[error("the exposition is larger than {limit} bytes")]
    TooLarge {
        /// The selector's `max_bytes`.
        limit: u64,
    },
    /// The exposition stopped before its end: a text exposition in the
    /// middle of a line, an OpenMetrics one before `# EOF`.
    #[error("the exposition is incomplete (it does not end with {expected})")]
    Incomplete {
        /// What a whole exposition ends with.
        expected: &'static str,
    },
    /// An HTTP source answered with a non-2xx status.
    #[error("{target} answered HTTP {status}")]
    HttpStatus {
        /// URL.
        target: String,
        /// Its status.
        status: StatusCode,
    },
    /// The HTTP exchange failed (bad response, body cut short).
    #[error("HTTP exchange with {target} failed")]
    Http {
        /// URL.
        target: String,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// A `localhost` URL resolved to no loopback address.
    #[error("{host} resolves to no loopback address")]
    NotLoopback {
        /// Host name.
        host: String,
    },
    /// Connecting to the bus failed.
    #[error("cannot connect to the D-Bus {bus}")]
    DbusConnect {
        /// Bus description.
        bus: String,
        /// Cause.
        #[source]
        source: Box<zbus::Error>,
    },
    /// The D-Bus call failed (error reply, unknown name or method).
    #[error("D-Bus call {method} failed")]
    DbusCall {
        /// `destination path interface.method`.
        method: String,
        /// Cause.
        #[source]
        source: Box<zbus::Error>,
    },
    /// The D-Bus method returned something other than `s` or `ay`.
    #[error("D-Bus method {method} returned signature `{signature}`, expected `s` or `ay`")]
    DbusSignature {
        /// `destination path interface.method`.
        method: String,
        /// Signature of the reply body.
        signature: String,
    },
    /// Connecting took longer than `connect_timeout`.
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    /// The source sent nothing for `read_timeout`.
    #[error("the source sent nothing for {0:?}")]
    ReadTimeout(Duration),
    /// The whole scrape took longer than `total_timeout` (or the scraper's own timeout).
    #[error("the scrape took longer than {0:?}")]
    TotalTimeout(Duration),
}

/// Closed set of failure reasons, the `reason` label of the error metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Connect or open failed.
    Unavailable,
    /// Read failed mid-way.
    Read,
    /// Larger than `max_bytes`.
    TooLarge,
    /// Ended before the format's end (mid-line, or before `# EOF`).
    Incomplete,
    /// Non-2xx from an HTTP source.
    HttpStatus,
    /// Broken HTTP exchange.
    Protocol,
    /// D-Bus connect or call failure, or a reply of the wrong type.
    Dbus,
    /// Connect timeout.
    ConnectTimeout,
    /// Read timeout.
    ReadTimeout,
    /// Total timeout.
    TotalTimeout,
}

impl Reason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [Reason; 10] = [
        Reason::Unavailable,
        Reason::Read,
        Reason::TooLarge,
        Reason::Incomplete,
        Reason::HttpStatus,
        Reason::Protocol,
        Reason::Dbus,
        Reason::ConnectTimeout,
        Reason::ReadTimeout,
        Reason::TotalTimeout,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unavailable => "unavailable",
            Reason::Read => "read",
            Reason::TooLarge => "too_large",
            Reason::Incomplete => "incomplete",
            Reason::HttpStatus => "http_status",
            Reason::Protocol => "protocol",
            Reason::Dbus => "dbus",
            Reason::ConnectTimeout => "connect_timeout",
            Reason::ReadTimeout => "read_timeout",
            Reason::TotalTimeout => "total_timeout",
        }
    }

    /// True for the timeouts (answered 504).
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            Reason::ConnectTimeout | Reason::ReadTimeout | Reason::TotalTimeout
        )
    }
}

impl SourceError {
    /// The failure reason.
    pub fn reason(&self) -> Reason {
        match self {
            SourceError::Unavailable { .. } | SourceError::NotLoopback { .. } => {
                Reason::Unavailable
            }
            SourceError::Read { .. } => Reason::Read,
            SourceError::TooLarge { .. } => Reason::TooLarge,
            SourceError::Incomplete { .. } => Reason::Incomplete,
            SourceError::HttpStatus { .. } => Reason::HttpStatus,
            SourceError::Http { .. } => Reason::Protocol,
            SourceError::DbusConnect { .. }
            | SourceError::DbusCall { .. }
            | SourceError::DbusSignature { .. } => Reason::Dbus,
            SourceError::ConnectTimeout(_) => Reason::ConnectTimeout,
            SourceError::ReadTimeout(_) => Reason::ReadTimeout,
            SourceError::TotalTimeout(_) => Reason::TotalTimeout,
        }
    }

    /// 504 for timeouts, 502 for every other failure.
    pub fn status(&self) -> StatusCode {
        if self.reason().is_timeout() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        }
    }

    /// The message and its causes on one line (`a: b: c`).
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cause = e.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_504_and_failures_502() {
        for reason in Reason::ALL {
            let error = match reason {
                Reason::ConnectTimeout => SourceError::ConnectTimeout(Duration::from_secs(1)),
                Reason::ReadTimeout => SourceError::ReadTimeout(Duration::from_secs(1)),
                Reason::TotalTimeout => SourceError::TotalTimeout(Duration::from_secs(1)),
                _ => SourceError::TooLarge { limit: 1 },
            };
            let expected = if reason.is_timeout() { 504 } else { 502 };
            assert_eq!(error.status().as_u16(), expected, "{reason:?}");
        }
    }

    #[test]
    fn chain_names_the_cause() {
        let error = SourceError::Unavailable {
            target: "/run/x.sock".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "No such file or directory"),
        };
        assert_eq!(
            error.chain(),
            "cannot reach /run/x.sock: No such file or directory"
        );
        assert_eq!(error.reason().as_str(), "unavailable");
    }
}
