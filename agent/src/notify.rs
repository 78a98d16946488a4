//! sd_notify for `Type=notify` units: `READY=1` once the OS backend is up,
//! a `STATUS=` line that follows the agent's state (what `systemctl status`
//! shows), and `STOPPING=1` on a graceful stop.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::status::Status;

/// The service manager's notification socket (`$NOTIFY_SOCKET`).
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path or `@abstract`); `None` when unset or
    /// unusable (not run by systemd).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(&path),
        }
        .ok()?;
        let sock = UnixDatagram::unbound().ok()?;
        Some(Notifier { sock, addr })
    }

    /// Sends one message (`KEY=value` lines); failures are logged.
    pub fn send(&self, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            tracing::debug!(error = %e, "sd_notify");
        }
    }

    /// Sends `STATUS=<summary>` whenever the summary of `status` changes,
    /// until `cancel` fires or the status sender is gone.
    pub fn follow(self, mut status: watch::Receiver<Status>, cancel: CancellationToken) {
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                let line = status.borrow_and_update().summary();
                if line != last {
                    self.send(&format!("STATUS={line}"));
                    last = line;
                }
                // After STOPPING=1 no new STATUS goes out.
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    r = status.changed() => if r.is_err() { return },
                }
            }
        });
    }
}
