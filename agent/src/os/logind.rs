//! systemd-logind over D-Bus (`org.freedesktop.login1`): interactive user
//! sessions (for the sessions gate) and reboot.

use std::collections::HashMap;
use std::time::Duration;

use zbus::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use super::dbus;
use super::{Op, OsError};

/// Well-known bus name of logind.
pub const SERVICE: &str = "org.freedesktop.login1";
/// Object path of the manager.
pub const MANAGER_PATH: &str = "/org/freedesktop/login1";
/// Manager interface (`ListSessions`, `Reboot`).
pub const MANAGER_IFACE: &str = "org.freedesktop.login1.Manager";
/// Session interface (`Class`, `Type`, `Remote`, `TTY`).
pub const SESSION_IFACE: &str = "org.freedesktop.login1.Session";
const OPERATION_IN_PROGRESS: &str = "org.freedesktop.login1.OperationInProgress";
const UNKNOWN_OBJECT: &str = "org.freedesktop.DBus.Error.UnknownObject";

/// A login session with the properties the agent looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Session id (`"3"`, `"c1"`).
    pub id: String,
    /// User id.
    pub uid: u32,
    /// User name.
    pub user: String,
    /// Seat (empty for remote sessions).
    pub seat: String,
    /// Object path of the session.
    pub path: String,
    /// `Class`: `user`, `greeter`, `lock-screen`, `background`, `manager`, ...
    pub class: String,
    /// `Type`: `tty`, `x11`, `wayland`, `mir`, `web` or `unspecified`.
    pub kind: String,
    /// `Remote`: logged in over the network (ssh).
    pub remote: bool,
    /// `TTY`: terminal device name under `/dev` (`pts/0`, `tty1`), or empty.
    pub tty: String,
}

impl Session {
    /// A person is (probably) at this session: a user-class session with a
    /// terminal or a graphical/terminal type. Background jobs (cron,
    /// `systemd-run`), `user@` managers and greeters do not count.
    pub fn is_interactive(&self) -> bool {
        let user_class = self.class == "user" || self.class.starts_with("user-");
        user_class && (!self.tty.is_empty() || !matches!(self.kind.as_str(), "" | "unspecified"))
    }

    fn from_props(
        (id, uid, user, seat, path): (String, u32, String, String, OwnedObjectPath),
        p: &HashMap<String, OwnedValue>,
    ) -> Session {
        let s = |k: &str| {
            p.get(k)
                .and_then(|v| <&str>::try_from(v).ok())
                .unwrap_or_default()
                .to_owned()
        };
        Session {
            id,
            uid,
            user,
            seat,
            path: path.as_str().to_owned(),
            class: s("Class"),
            kind: s("Type"),
            remote: p.get("Remote").and_then(|v| bool::try_from(v).ok()) == Some(true),
            tty: s("TTY"),
        }
    }
}

/// logind client.
#[derive(Debug, Clone)]
pub struct Logind {
    svc: dbus::Service,
}

impl Logind {
    /// A client on `conn`; every call is limited to `timeout`.
    pub fn new(conn: Connection, timeout: Duration) -> Logind {
        Logind {
            svc: dbus::Service {
                conn,
                name: SERVICE,
                timeout,
            },
        }
    }

    /// All sessions, with their properties. Sessions that end while being
    /// read are left out.
    pub async fn sessions(&self) -> Result<Vec<Session>, OsError> {
        let op = Op::ListSessions;
        let list: Vec<(String, u32, String, String, OwnedObjectPath)> = self
            .svc
            .call(op, MANAGER_PATH, MANAGER_IFACE, "ListSessions", &())
            .await?;
        let mut out = Vec::with_capacity(list.len());
        for entry in list {
            let props: Result<HashMap<String, OwnedValue>, _> = self
                .svc
                .call(
                    op,
                    entry.4.as_str(),
                    "org.freedesktop.DBus.Properties",
                    "GetAll",
                    &(SESSION_IFACE,),
                )
                .await;
            match props {
                Ok(p) => out.push(Session::from_props(entry, &p)),
                Err(e) if dbus::error_name(&e) == Some(UNKNOWN_OBJECT) => {
                    tracing::debug!(session = %entry.0, "session ended while listing");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Sessions with a person at them ([`Session::is_interactive`]).
    pub async fn interactive_sessions(&self) -> Result<Vec<Session>, OsError> {
        let mut s = self.sessions().await?;
        s.retain(Session::is_interactive);
        Ok(s)
    }

    /// `Manager.Reboot(false)` (not interactive: never prompts). A reboot
    /// already in progress (rpm-ostree starts one after finalizing) is fine.
    pub async fn reboot(&self) -> Result<(), OsError> {
        let r: Result<(), OsError> = self
            .svc
            .call(Op::Reboot, MANAGER_PATH, MANAGER_IFACE, "Reboot", &(false,))
            .await;
        match r {
            Err(e) if dbus::error_name(&e) == Some(OPERATION_IN_PROGRESS) => {
                tracing::info!("a reboot is already in progress");
                Ok(())
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(class: &str, kind: &str, tty: &str) -> Session {
        Session {
            id: "1".into(),
            uid: 1000,
            user: "core".into(),
            seat: String::new(),
            path: "/org/freedesktop/login1/session/_31".into(),
            class: class.into(),
            kind: kind.into(),
            remote: false,
            tty: tty.into(),
        }
    }

    #[test]
    fn interactive_sessions() {
        for (class, kind, tty, want) in [
            ("user", "tty", "pts/0", true),
            ("user", "wayland", "", true),
            ("user", "unspecified", "tty2", true),
            ("user-early", "tty", "tty1", true),
            ("user", "unspecified", "", false),
            ("background", "unspecified", "", false),
            ("manager", "unspecified", "", false),
            ("greeter", "x11", "tty1", false),
        ] {
            assert_eq!(
                session(class, kind, tty).is_interactive(),
                want,
                "{class} {kind} {tty}"
            );
        }
    }
}
