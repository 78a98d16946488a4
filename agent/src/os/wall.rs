//! Messages to logged-in users' terminals, as `wall` does: the text is
//! written to each session's TTY under `/dev`; terminals that cannot be
//! opened (gone, permissions, would block) are skipped.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::logind::Session;

/// The broadcast text around `message`.
pub fn format_message(message: &str) -> String {
    format!("\r\nBroadcast message from upshift-agent:\r\n{message}\r\n\r\n")
}

/// Writes messages to terminals under a device directory.
#[derive(Debug, Clone)]
pub struct Wall {
    /// Directory the session TTY names are relative to (`/dev`).
    pub dev_dir: PathBuf,
    /// Limit for the whole broadcast.
    pub timeout: Duration,
}

impl Default for Wall {
    fn default() -> Self {
        Wall {
            dev_dir: PathBuf::from("/dev"),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a broadcast reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WallReport {
    /// Terminals written to.
    pub reached: usize,
    /// Terminals skipped, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// A TTY name logind may report: `tty1`, `pts/3`, `ttyS0`, `hvc0`.
fn valid_tty(tty: &str) -> bool {
    let mut parts = tty.split('/');
    let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), None, None) => ok(a),
        (Some(a), Some(b), None) => ok(a) && ok(b),
        _ => false,
    }
}

fn write_one(dev_dir: &Path, tty: &str, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        // Never become the controlling terminal, never block on a stuck tty.
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(dev_dir.join(tty))?;
    f.write_all(text.as_bytes())
}

impl Wall {
    /// Writes `message` once to every distinct TTY of `sessions`.
    pub async fn broadcast(&self, sessions: &[Session], message: &str) -> WallReport {
        let ttys: BTreeSet<String> = sessions
            .iter()
            .filter(|s| !s.tty.is_empty())
            .map(|s| s.tty.clone())
            .collect();
        let dev_dir = self.dev_dir.clone();
        let text = format_message(message);
        let work = tokio::task::spawn_blocking(move || {
            let mut r = WallReport::default();
            for tty in ttys {
                if !valid_tty(&tty) {
                    r.skipped.push((tty, "not a terminal name".into()));
                    continue;
                }
                match write_one(&dev_dir, &tty, &text) {
                    Ok(()) => r.reached += 1,
                    Err(e) => r.skipped.push((tty, e.to_string())),
                }
            }
            r
        });
        let report = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => WallReport {
                reached: 0,
                skipped: vec![("*".into(), format!("writer task failed: {e}"))],
            },
            Err(_) => WallReport {
                reached: 0,
                skipped: vec![("*".into(), "timed out".into())],
            },
        };
        for (tty, why) in &report.skipped {
            tracing::warn!(%tty, %why, "could not message terminal");
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_names() {
        for t in ["tty1", "pts/0", "ttyS0", "hvc0"] {
            assert!(valid_tty(t), "{t}");
        }
        for t in [
            "",
            "../etc/passwd",
            "pts/../x",
            "/dev/tty1",
            "a/b/c",
            "pts/",
        ] {
            assert!(!valid_tty(t), "{t}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn writes_each_tty_once_and_skips_missing() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("pts")).unwrap();
        std::fs::write(t.path().join("pts/0"), "").unwrap();
        let s = |tty: &str| Session {
            id: tty.into(),
            uid: 0,
            user: "u".into(),
            seat: String::new(),
            path: "/s".into(),
            class: "user".into(),
            kind: "tty".into(),
            remote: true,
            tty: tty.into(),
        };
        let wall = Wall {
            dev_dir: t.path().into(),
            ..Wall::default()
        };
        let r = wall
            .broadcast(
                &[s("pts/0"), s("pts/0"), s("pts/7"), s("../x")],
                "rebooting",
            )
            .await;
        assert_eq!(r.reached, 1);
        assert_eq!(r.skipped.len(), 2);
        let text = std::fs::read_to_string(t.path().join("pts/0")).unwrap();
        assert_eq!(text.matches("rebooting").count(), 1);
    }
}
