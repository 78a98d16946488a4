//! D-Bus selectors against a real object (zbus `#[interface]`) on a private
//! `dbus-daemon`.

#[path = "support/dbus_daemon.rs"]
mod dbus_daemon;
#[path = "support/harness.rs"]
mod harness;

use dbus_daemon::DbusDaemon;
use harness::{Bridge, exposition, promtool_check_metrics, sample};

const NAME: &str = "org.upshift.Test";
const PATH: &str = "/org/upshift/Test";
const INTERFACE: &str = "org.upshift.Test.Exporter1";

/// A local exporter speaking D-Bus.
struct Exporter {
    text: String,
}

#[zbus::interface(name = "org.upshift.Test.Exporter1")]
impl Exporter {
    /// The exposition as a string (`s`).
    fn metrics(&self) -> String {
        self.text.clone()
    }

    /// The exposition as bytes (`ay`).
    fn metrics_bytes(&self) -> Vec<u8> {
        self.text.clone().into_bytes()
    }

    /// A reply of the wrong type.
    fn count(&self) -> u32 {
        7
    }

    /// An error reply.
    fn broken(&self) -> zbus::fdo::Result<String> {
        Err(zbus::fdo::Error::Failed("exporter broke".into()))
    }

    /// Never replies.
    async fn stall(&self) -> String {
        std::future::pending().await
    }
}

async fn serve_exporter(address: &str, text: String) -> zbus::Connection {
    zbus::connection::Builder::address(address)
        .unwrap()
        .name(NAME)
        .unwrap()
        .serve_at(PATH, Exporter { text })
        .unwrap()
        .build()
        .await
        .expect("exporter connects to the private bus")
}

fn selector(name: &str, bus: &str, destination: &str, method: &str, extra: &str) -> String {
    format!(
        "[selectors.{name}]\nkind = \"dbus\"\nbus = \"{bus}\"\ndestination = \"{destination}\"\n\
         path = \"{PATH}\"\ninterface = \"{INTERFACE}\"\nmethod = \"{method}\"\n{extra}\n"
    )
}

#[tokio::test]
async fn dbus_methods_returning_the_exposition() {
    let daemon = DbusDaemon::start();
    let text = exposition(300);
    let _exporter = serve_exporter(&daemon.address, text.clone()).await;
    let bus = daemon.address.as_str();
    let config = selector("string", bus, NAME, "Metrics", "")
        + &selector("bytes", bus, NAME, "MetricsBytes", "")
        + &selector("limited", bus, NAME, "Metrics", "max_bytes = 1000");
    let bridge = Bridge::start(&config).await;

    for name in ["string", "bytes"] {
        let (status, content_type, body) = bridge.scrape(name).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert_eq!(body, text, "{name}");
    }
    promtool_check_metrics(&bridge.scrape("string").await.2);
    let (status, _, body) = bridge.scrape("limited").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("larger than 1000 bytes"), "{body}");
}

#[tokio::test]
async fn dbus_failures_are_502_and_a_silent_method_504() {
    let daemon = DbusDaemon::start();
    let _exporter = serve_exporter(&daemon.address, exposition(3)).await;
    let bus = daemon.address.as_str();
    let config = selector("wrong_type", bus, NAME, "Count", "")
        + &selector("error_reply", bus, NAME, "Broken", "")
        + &selector("no_method", bus, NAME, "Nope", "")
        + &selector("no_service", bus, "org.upshift.Absent", "Metrics", "")
        + &selector(
            "no_bus",
            "unix:path=/nonexistent/upshift-bus",
            NAME,
            "Metrics",
            "",
        )
        + &selector("stall", bus, NAME, "Stall", "read_timeout = \"300ms\"");
    let bridge = Bridge::start(&config).await;

    for (name, status, needle) in [
        (
            "wrong_type",
            502,
            "returned signature `u`, expected `s` or `ay`",
        ),
        ("error_reply", 502, "exporter broke"),
        ("no_method", 502, "Nope"),
        ("no_service", 502, "org.upshift.Absent"),
        (
            "no_bus",
            502,
            "cannot connect to the D-Bus bus at unix:path=/nonexistent/upshift-bus",
        ),
        ("stall", 504, "sent nothing for 300ms"),
    ] {
        let (got, _, body) = bridge.scrape(name).await;
        assert_eq!(got, status, "{name}: {body}");
        assert!(body.contains(needle), "{name}: {body}");
    }
    let metrics = bridge.metrics().await;
    let labels = [("selector", "error_reply"), ("reason", "dbus")];
    assert_eq!(
        sample(&metrics, "upshift_bridge_scrape_errors_total", &labels),
        Some(1.0)
    );
    let labels = [("selector", "stall"), ("reason", "read_timeout")];
    assert_eq!(
        sample(&metrics, "upshift_bridge_scrape_errors_total", &labels),
        Some(1.0)
    );
}
