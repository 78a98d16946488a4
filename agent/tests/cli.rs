//! The `upshift-agent` binary under `--root`: `run` against the real policy
//! service with its spans exported to an in-process OTLP receiver, the
//! control subcommands through its socket, sd_notify to a fake
//! `NOTIFY_SOCKET`, and `config show`.

#[path = "support/mesh.rs"]
mod mesh;
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

/// Datagrams received on a fake `$NOTIFY_SOCKET`, in order.
struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            sock,
            seen: Vec::new(),
        }
    }

    /// Receives until a message has the line `want`; returns its index.
    fn until(&mut self, want: &str) -> usize {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(i) = self.seen.iter().position(|m| m.lines().any(|l| l == want)) {
                return i;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{want:?} not received; got {:?}",
                self.seen
            );
            let mut buf = [0u8; 4096];
            let got = tokio::task::block_in_place(|| self.sock.recv(&mut buf));
            if let Ok(n) = got {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_follows_the_state_and_sigterm_stops_gracefully() {
    let p = mesh::policy(Duration::from_secs(1800)).await;
    p.service.publish(mesh::key(), 1, mesh::graph(&["1"], &[]));
    let l = mesh::lock().await;
    l.take("other-node").await;
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let conf = root.join("etc/upshift/agent.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("50-test.toml"),
        format!(
            "[identity]\nnode_uuid = \"notify-node\"\nbasearch = \"x86_64\"\n\
             [updates]\nbackend = \"stream\"\npolicy_url = \"{}\"\n\
             [lock]\nkind = \"grpc\"\nurl = \"{}\"\n[os]\nbackend = \"simulated\"\n",
            p.url, l.url
        ),
    )
    .unwrap();
    let state = root.join("var/lib/upshift");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("simulated-os.json"),
        r#"{"booted":{"version":"1","payload":"p1"}}"#,
    )
    .unwrap();
    let mut notify = NotifySocket::bind(&root.join("notify.sock"));
    let mut child = Reaper(
        Command::new(BIN)
            .arg("--root")
            .arg(root)
            .arg("run")
            .env("NOTIFY_SOCKET", root.join("notify.sock"))
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let ready = notify.until("READY=1");
    let idle = notify.until("STATUS=idle, booted 1");
    assert!(ready < idle, "READY before the state: {:?}", notify.seen);
    // An update while another node holds the one slot.
    p.service
        .publish(mesh::key(), 2, mesh::graph(&["1", "2"], &[(0, 1)]));
    notify.until("STATUS=waiting for a reboot slot (queue position 1) to reboot into 2");

    // SIGTERM: STOPPING=1, exit 0, the staged target kept, nothing released
    // that the next start needs, the queue left.
    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(kill.success());
    let stopping = notify.until("STOPPING=1");
    let code = tokio::task::block_in_place(|| child.0.wait().unwrap()).code();
    assert_eq!(code, Some(0), "{:?}", notify.seen);
    assert!(
        !notify.seen[stopping + 1..]
            .iter()
            .any(|m| m.starts_with("STATUS=waiting")),
        "no state after STOPPING: {:?}",
        notify.seen
    );
    let saved = upshift_agent::persist::load(&state).unwrap();
    assert_eq!(saved.pending_target.as_deref(), Some("2"));
    assert!(!saved.lock_held);
    assert_eq!(l.holders().await, vec!["other-node".to_string()]);
    let sim = std::fs::read_to_string(state.join("simulated-os.json")).unwrap();
    assert!(sim.contains("\"staged\": {"), "{sim}");
}

/// Copies `dist/<rel>/*.toml` of the repository into `<root>/<dir>`.
fn install(root: &Path, rel: &str, dir: &str) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(rel);
    let to = root.join(dir);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn config_show_on_the_shipped_fragments() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    install(root, "usr/lib/upshift/agent.d", "usr/lib/upshift/agent.d");
    // The defaults alone: the policy URL is missing, and the error says so.
    let o = std::process::Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(["config", "show"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("config error: updates.policy_url: not set"),
        "{err}"
    );
    let defaults = root.join("usr/lib/upshift/agent.d/00-defaults.toml");
    assert!(
        err.contains(&format!(
            "updates.backend = \"stream\" (set in {})",
            defaults.display()
        )),
        "{err}"
    );
    let etc = root.join("etc/upshift/agent.d");
    assert!(err.contains(&format!("{}/", etc.display())), "{err}");
    assert!(err.contains("policy_url = \""), "{err}");

    // With the shipped example in /etc/upshift/agent.d/: it starts.
    install(
        root,
        "usr/share/doc/upshift-agent/examples",
        "etc/upshift/agent.d",
    );
    let o = std::process::Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(["config", "show"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        shown.contains(&format!(
            "updates.policy_url = \"http://policy.example.com:7402\"  # {}",
            etc.join("50-updates.toml").display()
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "updates.backend = \"stream\"  # {}",
            defaults.display()
        )),
        "{shown}"
    );
}

#[test]
fn run_exit_codes_name_what_failed() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let conf = root.join("etc/upshift/agent.d");
    std::fs::create_dir_all(&conf).unwrap();
    let write = |body: &str| std::fs::write(conf.join("50-test.toml"), body).unwrap();
    let run = |env: &[(&str, String)]| {
        let o = std::process::Command::new(BIN)
            .arg("--root")
            .arg(root)
            .arg("run")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        (o.status.code(), text(&o))
    };
    // 64: bad configuration.
    write("[updates]\npolicy_url = 7\n");
    let (code, out) = run(&[]);
    assert_eq!(code, Some(64), "{out}");
    // 78: no usable identity (no /etc/machine-id, no identity.node_uuid).
    write("[updates]\npolicy_url = \"http://127.0.0.1:9\"\n[os]\nbackend = \"simulated\"\n");
    let (code, out) = run(&[]);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("machine-id"), "{out}");
    // 69: the rpm-ostree backend cannot start (no system bus here).
    write("[identity]\nnode_uuid = \"n1\"\n[updates]\npolicy_url = \"http://127.0.0.1:9\"\n");
    let bus = format!("unix:path={}", root.join("no-bus").display());
    let (code, out) = run(&[("DBUS_SYSTEM_BUS_ADDRESS", bus)]);
    assert_eq!(code, Some(69), "{out}");
    assert!(out.contains("connect"), "{out}");
}
