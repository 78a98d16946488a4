//! A private `dbus-daemon` for tests (Debian package `dbus`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running private bus; killed on drop.
pub struct DbusDaemon {
    child: Child,
    /// Bus address to connect to (`unix:path=...,guid=...`).
    pub address: String,
    _dir: tempfile::TempDir,
}

impl DbusDaemon {
    /// Starts `dbus-daemon --config-file=<allow everything> --print-address --nofork`.
    pub fn start() -> DbusDaemon {
        DbusDaemon::start_with_includes(&[])
    }

    /// Like [`DbusDaemon::start`], with extra policy files `<include>`d
    /// (the daemon refuses to start when one is malformed).
    pub fn start_with_includes(includes: &[&Path]) -> DbusDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        // The daemon's own complaints go to a file, not the test output.
        let log = std::fs::File::create(dir.path().join("dbus-daemon.log")).expect("log file");
        std::fs::write(&config, config_text(&socket, includes)).expect("write bus config");
        let mut child = match Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--print-address")
            .arg("--nofork")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "dbus-daemon is not installed: these tests need a private D-Bus daemon \
                 (Debian/Ubuntu: apt-get install dbus; `cargo xtask test` installs it)"
            ),
            Err(e) => panic!("cannot start dbus-daemon: {e}"),
        };
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read dbus-daemon address");
        let address = line.trim().to_owned();
        if !address.starts_with("unix:") {
            let _ = child.wait();
            let log =
                std::fs::read_to_string(dir.path().join("dbus-daemon.log")).unwrap_or_default();
            panic!("dbus-daemon printed no address (got {address:?}); its log:\n{log}");
        }
        DbusDaemon {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(socket: &Path, includes: &[&Path]) -> String {
    let includes: String = includes
        .iter()
        .map(|p| format!("  <include>{}</include>\n", p.display()))
        .collect();
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
{includes}</busconfig>
"#,
        socket.display()
    )
}
