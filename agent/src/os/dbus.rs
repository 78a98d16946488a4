//! Shared D-Bus plumbing for the host backends: which bus to use, call
//! timeouts, and mapping zbus errors to [`OsError`].

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use zbus::Connection;
use zbus::zvariant::DynamicType;

use super::{Op, OsError};

/// Which bus to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// The system bus (`$DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket).
    System,
    /// An explicit bus address, e.g. `unix:path=/run/test/bus` (tests).
    Address(String),
}

/// Time limits for D-Bus work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting and every single method call or property read.
    pub call: Duration,
    /// A whole rpm-ostree transaction, from `Start` to `Finished` (a deploy
    /// downloads the new OS, so this is long).
    pub transaction: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            call: Duration::from_secs(30),
            transaction: Duration::from_secs(60 * 60),
        }
    }
}

/// Opens a connection to `bus` within `timeout`.
pub async fn connect(bus: &Bus, timeout: Duration) -> Result<Connection, OsError> {
    let service = "the bus";
    let build = async {
        match bus {
            Bus::System => zbus::connection::Builder::system()?.build().await,
            Bus::Address(a) => {
                zbus::connection::Builder::address(a.as_str())?
                    .build()
                    .await
            }
        }
    };
    timed(Op::Connect, service, timeout, build).await
}

/// Runs one D-Bus future under `after`, mapping failures to [`OsError`].
pub(crate) async fn timed<T>(
    op: Op,
    service: &'static str,
    after: Duration,
    fut: impl Future<Output = zbus::Result<T>>,
) -> Result<T, OsError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_error(op, service, e)),
        Err(_) => Err(OsError::Timeout { op, after }),
    }
}

/// One service on a connection, with the time limit for each call.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(crate) conn: Connection,
    pub(crate) name: &'static str,
    pub(crate) timeout: Duration,
}

impl Service {
    /// Calls `interface.method(body)` at `path` and deserializes the reply
    /// body, all within the call time limit.
    pub(crate) async fn call<B, R>(
        &self,
        op: Op,
        path: &str,
        interface: &str,
        method: &str,
        body: &B,
    ) -> Result<R, OsError>
    where
        B: serde::Serialize + DynamicType,
        R: DeserializeOwned + zbus::zvariant::Type,
    {
        let reply = timed(
            op,
            self.name,
            self.timeout,
            self.conn
                .call_method(Some(self.name), path, Some(interface), method, body),
        )
        .await?;
        reply
            .body()
            .deserialize::<R>()
            .map_err(|e| OsError::BadReply {
                op,
                detail: format!("{interface}.{method}: {e}"),
            })
    }
}

/// Classifies a zbus error: service missing, access denied, or other.
pub(crate) fn map_error(op: Op, service: &'static str, e: zbus::Error) -> OsError {
    let name = match &e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str().to_owned()),
        zbus::Error::FDO(f) => match f.as_ref() {
            zbus::fdo::Error::ServiceUnknown(_) => {
                Some("org.freedesktop.DBus.Error.ServiceUnknown".into())
            }
            zbus::fdo::Error::NameHasNoOwner(_) => {
                Some("org.freedesktop.DBus.Error.NameHasNoOwner".into())
            }
            zbus::fdo::Error::AccessDenied(_) => {
                Some("org.freedesktop.DBus.Error.AccessDenied".into())
            }
            _ => None,
        },
        _ => None,
    };
    let source = Box::new(e);
    match name.as_deref() {
        Some(
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner",
        ) => OsError::ServiceUnavailable {
            op,
            service,
            source,
        },
        Some(
            "org.freedesktop.DBus.Error.AccessDenied"
            | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        ) => OsError::Denied {
            op,
            service,
            source,
        },
        _ => OsError::Dbus {
            op,
            service,
            source,
        },
    }
}

/// The error name of a D-Bus error reply, if `e` is one.
pub(crate) fn error_name(e: &OsError) -> Option<&str> {
    match e {
        OsError::Dbus { source, .. } => match source.as_ref() {
            zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
            _ => None,
        },
        _ => None,
    }
}
