//! Local observability and control on Unix sockets under the run directory:
//!
//! - `agent-metrics.sock`: Prometheus text exposition, a full dump per
//!   connection (as Zincati does); read it with
//!   `socat - UNIX-CONNECT:/run/upshift/agent-metrics.sock` or the bridge.
//! - `agent-control.sock` (mode 0600, so root only): one request line per
//!   connection (`status`, `check-now`, `pause`, `resume`, `finalize-now`,
//!   `finalize-now --force`), one JSON answer line
//!   `{"ok": bool, "message": "...", "status": {...}}`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::driver::{Command, Control};
use crate::status::Status;

/// Metrics socket file name.
pub const METRICS_SOCKET: &str = "agent-metrics.sock";
/// Control socket file name.
pub const CONTROL_SOCKET: &str = "agent-control.sock";
/// Longest request line and read time on the control socket.
const MAX_LINE: usize = 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// Parses a control request line.
pub fn parse_request(line: &str) -> Result<Option<Command>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    Ok(match words.as_slice() {
        ["status"] => None,
        ["check-now"] => Some(Command::CheckNow),
        ["pause"] => Some(Command::Pause),
        ["resume"] => Some(Command::Resume),
        ["finalize-now"] => Some(Command::FinalizeNow { force: false }),
        ["finalize-now", "--force"] => Some(Command::FinalizeNow { force: true }),
        _ => return Err(format!("unknown request {line:?}")),
    })
}

/// Binds both sockets under `run_dir` (replacing stale files) and serves
/// them until `cancel`.
pub fn serve(
    run_dir: &Path,
    status: watch::Receiver<Status>,
    control: Control,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    std::fs::create_dir_all(run_dir)?;
    let metrics = bind(&run_dir.join(METRICS_SOCKET), 0o644)?;
    let ctl = bind(&run_dir.join(CONTROL_SOCKET), 0o600)?;
    let (st, c) = (status.clone(), cancel.clone());
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                r = metrics.accept() => r,
                _ = c.cancelled() => return,
            };
            if let Ok((mut s, _)) = conn {
                let body = st.borrow().render_metrics();
                tokio::spawn(async move {
                    let _ = s.write_all(body.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                r = ctl.accept() => r,
                _ = cancel.cancelled() => return,
            };
            if let Ok((s, _)) = conn {
                tokio::spawn(handle_control(s, status.clone(), control.clone()));
            }
        }
    });
    Ok(())
}

fn bind(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

async fn handle_control(s: UnixStream, status: watch::Receiver<Status>, control: Control) {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r).take(MAX_LINE as u64);
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await;
    let answer = match read {
        Ok(Ok(_)) => answer(line.trim(), &status, &control).await,
        _ => Answer {
            ok: false,
            message: "no request line".into(),
            status: None,
        },
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    let _ = w.write_all(&out).await;
    let _ = w.shutdown().await;
}

async fn answer(line: &str, status: &watch::Receiver<Status>, control: &Control) -> Answer {
    let result = match parse_request(line) {
        Err(e) => Err(e),
        Ok(None) => Ok("status".to_string()),
        Ok(Some(cmd)) => control.send(cmd).await,
    };
    let snapshot = serde_json::to_value(&*status.borrow()).ok();
    match result {
        Ok(message) => Answer {
            ok: true,
            message,
            status: snapshot,
        },
        Err(message) => Answer {
            ok: false,
            message,
            status: snapshot,
        },
    }
}

/// Sends one request line to the control socket and reads the answer.
pub async fn request(socket: &Path, line: &str) -> std::io::Result<Answer> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let mut text = String::new();
    BufReader::new(s).read_line(&mut text).await?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// Reads one metrics dump.
pub async fn scrape(socket: &Path) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket).await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    Ok(text)
}

/// Socket paths under a run directory.
pub fn paths(run_dir: &Path) -> (PathBuf, PathBuf) {
    (run_dir.join(METRICS_SOCKET), run_dir.join(CONTROL_SOCKET))
}

/// Human-readable `status` lines from the JSON status.
pub fn format_status(v: &serde_json::Value) -> String {
    let s = |k: &str| match &v[k] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(x) if x.is_empty() => "-".to_string(),
        serde_json::Value::String(x) => x.clone(),
        x => x.to_string(),
    };
    let t = |k: &str| match v[k].as_f64() {
        Some(secs) => {
            let at = upshift_common::clock::from_epoch_secs(secs);
            humantime::format_rfc3339_seconds(at).to_string()
        }
        None => "-".to_string(),
    };
    let err = match &v["last_error"] {
        serde_json::Value::Null => "-".to_string(),
        e => format!(
            "{} ({})",
            e["kind"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        ),
    };
    format!(
        "state:        {}\nbooted:       {}\ntarget:       {}\nlast check:   {}\nlast error:   {}\nlock held:    {}\npaused:       {}\nwaiting for:  {}\nnext window:  {}\ndead-end:     {}\n",
        s("state"),
        s("booted"),
        s("target"),
        t("last_check"),
        err,
        s("lock_held"),
        s("paused"),
        s("waiting_for"),
        t("next_window"),
        s("dead_end"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(parse_request("status"), Ok(None));
        assert_eq!(
            parse_request(" finalize-now --force "),
            Ok(Some(Command::FinalizeNow { force: true }))
        );
        assert_eq!(parse_request("pause"), Ok(Some(Command::Pause)));
        assert!(parse_request("reboot").is_err());
        assert!(parse_request("").is_err());
    }
}
