//! The `upshift-agent` binary under `--root`: `run` against the real policy
//! service with its spans exported to an in-process OTLP receiver, and the
//! control subcommands through its socket.

#[path = "support/otlp.rs"]
mod otlp;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use upshift_cincinnati::graph::{Graph, Node, PayloadScheme};
use upshift_common::auth::AdminAuth;
use upshift_common::clock::SystemClock;
use upshift_common::telemetry::Metrics;
use upshift_policy::PolicyConfig;
use upshift_policy::state::ScopeKey;

const BIN: &str = env!("CARGO_BIN_EXE_upshift-agent");

fn graph() -> Graph {
    let nodes = ["1", "2"]
        .iter()
        .enumerate()
        .map(|(i, v)| Node {
            version: v.to_string(),
            payload: format!("p{v}"),
            metadata: BTreeMap::from([(
                "org.fedoraproject.coreos.releases.age_index".to_string(),
                i.to_string(),
            )]),
        })
        .collect();
    Graph::new(nodes, vec![(0, 1)]).unwrap()
}

fn agent(root: &Path, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| {
        Command::new(BIN)
            .arg("--root")
            .arg(root)
            .args(args)
            .output()
            .unwrap()
    })
}

/// Kills the agent process if the test fails early.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_control_subcommands_under_a_root() {
    let stop = CancellationToken::new();
    let mut c = PolicyConfig::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    let srv = upshift_policy::bind(
        &c,
        upshift_policy::store::MemoryStore::shared(),
        SystemClock::shared(),
        Metrics::new("policy-test"),
        AdminAuth::new(None, Vec::new()),
    )
    .await
    .unwrap();
    let url = format!("http://{}", srv.bound.local_addr());
    srv.service.publish(
        ScopeKey {
            stream: "stable".into(),
            basearch: "x86_64".into(),
            scheme: PayloadScheme::Checksum,
        },
        1,
        graph(),
    );
    let s = stop.clone();
    tokio::spawn(async move { srv.bound.serve(async move { s.cancelled().await }).await });

    // The agent process exports its spans here.
    let (otlp, receiver) = otlp::Receiver::start().await;
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    // A daily window opening in 12 hours: closed now.
    let opens = (chrono::Utc::now() + chrono::Duration::hours(12)).format("%H:%M");
    let conf = root.join("etc/upshift/agent.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("50-test.toml"),
        format!(
            "[identity]\nnode_uuid = \"cli-node\"\nbasearch = \"x86_64\"\n\
             [updates]\nbackend = \"stream\"\npolicy_url = \"{url}\"\n\
             [[updates.windows]]\nstart = \"{opens}\"\nlength = \"1h\"\n\
             [lock]\nkind = \"immediate\"\n[os]\nbackend = \"simulated\"\n\
             [telemetry]\notlp_endpoint = \"{otlp}\"\n"
        ),
    )
    .unwrap();
    let shown = agent(root, &["config", "show"]);
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(
        text(&shown).contains(&format!(
            "telemetry.otlp_endpoint = \"{otlp}\"  # {}",
            conf.join("50-test.toml").display()
        )),
        "{}",
        text(&shown)
    );
    let state = root.join("var/lib/upshift");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("simulated-os.json"),
        r#"{"booted":{"version":"1","payload":"p1"}}"#,
    )
    .unwrap();

    let mut child = Reaper(
        Command::new(BIN)
            .arg("--root")
            .arg(root)
            .arg("run")
            .spawn()
            .unwrap(),
    );
    // Wait (bounded) for the agent to stage and stop at the window gate.
    let mut last = String::new();
    for _ in 0..300 {
        let o = agent(root, &["status"]);
        last = text(&o);
        if o.status.success() && last.contains("waiting-for-gates") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.contains("state:        waiting-for-gates"), "{last}");
    assert!(last.contains("target:       2"), "{last}");
    assert!(last.contains("outside the maintenance windows"), "{last}");

    let o = agent(root, &["pause"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("updates paused"));
    assert!(text(&agent(root, &["status"])).contains("paused:       true"));
    assert!(agent(root, &["resume"]).status.success());
    assert!(agent(root, &["check-now"]).status.success());
    assert_eq!(agent(root, &["reboot"]).status.code(), Some(64));

    // finalize-now --force: the simulated host reboots, the process exits 100.
    let o = agent(root, &["finalize-now", "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    let code = tokio::task::block_in_place(|| child.0.wait().unwrap()).code();
    assert_eq!(code, Some(100));
    let sim = std::fs::read_to_string(state.join("simulated-os.json")).unwrap();
    assert!(sim.contains("\"version\": \"2\""), "{sim}");
    // Nobody answers on the socket any more.
    assert_eq!(agent(root, &["status"]).status.code(), Some(69));
    // The update's spans left the process before it exited.
    let spans = receiver.spans();
    let update = spans
        .iter()
        .find(|(_, s)| s.name == "update")
        .map(|(svc, s)| (svc.clone(), s.clone()));
    let (service, update) = update.expect("the update span was exported");
    assert_eq!(service, "upshift-agent");
    assert_eq!(otlp::attr(&update, "to_version").as_deref(), Some("2"));
    for step in ["staging", "gates", "finalize", "reboot"] {
        assert!(
            spans.iter().any(|(_, s)| s.name == step
                && s.trace_id == update.trace_id
                && s.parent_span_id == update.span_id),
            "{step} under the update"
        );
    }
    stop.cancel();
}
