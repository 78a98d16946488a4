//! Helpers of the CLI tests: the mesh of service processes, running the
//! CLI, golden files, telemetry reports and test certificates.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::Value;
use upshift_integration::{ServiceProcess, Workdir, bin, stable_metadata};
use upshift_proto::telemetry::v1::telemetry_service_client::TelemetryServiceClient;
use upshift_proto::telemetry::v1::{AgentState, HostStatus, ReportRequest};

/// A token the services accept (at least 16 characters).
pub const TOKEN: &str = "cli-test-admin-token-0123456789";
pub const NEW_ROLLOUT: &str = "34.20211016.3.0";

/// graph, policy and lock as processes on the stable metadata with
/// updates-history/058.json, both admin services sharing one token file.
pub struct Mesh {
    /// The admin token file both admin services use.
    pub token_file: PathBuf,
    /// The graph service.
    pub graph: ServiceProcess,
    /// The policy service.
    pub policy: ServiceProcess,
    /// The lock service.
    pub lock: ServiceProcess,
    /// Dropped last, after the processes; kept when a test fails.
    pub dir: Workdir,
}

impl Mesh {
    pub async fn start() -> Result<Self> {
        let dir = Workdir::new()?;
        let metadata = dir.path().join("metadata");
        stable_metadata(&metadata, 58)?;
        let token_file = dir.path().join("admin-token");
        std::fs::write(&token_file, format!("{TOKEN}\n"))?;
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let data = |name: &str| path(&dir.path().join(name));
        let graph = ServiceProcess::start(
            "graph",
            dir.path(),
            &[
                "serve",
                "graph",
                "--metadata",
                &path(&metadata),
                "--data-dir",
                &data("graph-data"),
            ],
        )?;
        graph.wait_ready(Duration::from_secs(20)).await?;
        let graph_url = graph.url();
        let policy = ServiceProcess::start(
            "policy",
            dir.path(),
            &[
                "serve",
                "policy",
                "--graph",
                &graph_url,
                "--data-dir",
                &data("policy-data"),
                "--admin-token-file",
                &path(&token_file),
            ],
        )?;
        let lock = ServiceProcess::start(
            "lock",
            dir.path(),
            &[
                "serve",
                "lock",
                "--data-dir",
                &data("lock-data"),
                "--admin-token-file",
                &path(&token_file),
            ],
        )?;
        policy.wait_ready(Duration::from_secs(20)).await?;
        lock.wait_ready(Duration::from_secs(20)).await?;
        Ok(Self {
            token_file,
            graph,
            policy,
            lock,
            dir,
        })
    }

    /// Runs `upshift` with the mesh's URLs in the environment.
    pub fn cli(&self, args: &[&str]) -> Result<Run> {
        run_cli(
            args,
            &[
                ("UPSHIFT_GRAPH_URL", self.graph.url()),
                ("UPSHIFT_POLICY_URL", self.policy.url()),
                ("UPSHIFT_LOCK_URL", self.lock.url()),
                ("UPSHIFT_TELEMETRY_URL", closed_port_url()?),
            ],
        )
    }

    /// Like [`Mesh::cli`] with `--admin-token-file`.
    pub fn admin(&self, args: &[&str]) -> Result<Run> {
        let mut all = args.to_vec();
        let token = self.token_file.to_str().unwrap().to_string();
        all.extend(["--admin-token-file", &token]);
        self.cli(&all)
    }

    /// The placeholders URLs become in golden files.
    pub fn urls(&self) -> Vec<(String, &'static str)> {
        vec![
            (self.graph.url(), "<graph-url>"),
            (self.policy.url(), "<policy-url>"),
            (self.lock.url(), "<lock-url>"),
        ]
    }
}

/// One CLI run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    pub fn expect(self, code: i32) -> Result<Self> {
        if self.code != Some(code) {
            bail!(
                "expected exit {code}, got {:?}\nstdout:\n{}\nstderr:\n{}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout is not JSON:\n{}", self.stdout))
    }
}

pub fn run_cli(args: &[&str], env: &[(&str, String)]) -> Result<Run> {
    let mut command = Command::new(bin("upshift")?);
    command.args(args);
    for var in [
        "UPSHIFT_ADMIN_TOKEN",
        "UPSHIFT_ADMIN_TOKEN_FILE",
        "UPSHIFT_OUTPUT",
        "UPSHIFT_CA_FILE",
        "UPSHIFT_CLIENT_CERT",
        "UPSHIFT_CLIENT_KEY",
        "UPSHIFT_GRAPH_URL",
        "UPSHIFT_POLICY_URL",
        "UPSHIFT_LOCK_URL",
        "UPSHIFT_TELEMETRY_URL",
    ] {
        command.env_remove(var);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().context("running upshift")?;
    Ok(Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// A URL on a loopback port nothing listens on.
pub fn closed_port_url() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    Ok(format!("http://127.0.0.1:{port}"))
}

/// Replaces what depends on the run: URLs become placeholders, timestamps
/// from 2023 on (the services' clock; the fixtures' rollout times are older
/// and stay) become `____-__-__T__:__:__Z` (same width, so golden files stay
/// aligned), and ages such as `7s` or `1m05s` become `<age>`.
pub fn placeholders(text: &str, urls: &[(String, &'static str)]) -> String {
    let mut text = text.to_string();
    for (url, placeholder) in urls {
        text = text.replace(url.as_str(), placeholder);
    }
    replace_ages(&replace_times(&text))
}

/// Collapses runs of two or more spaces (column padding, which follows the
/// widths of the replaced values) to two spaces, for comparing.
pub fn collapse(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut out = String::new();
            let mut spaces = 0;
            for c in line.chars() {
                if c == ' ' {
                    spaces += 1;
                    continue;
                }
                out.push_str(match spaces {
                    0 => "",
                    1 => " ",
                    _ => "  ",
                });
                spaces = 0;
                out.push(c);
            }
            out + "\n"
        })
        .collect()
}

pub fn replace_times(text: &str) -> String {
    let bytes = text.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:ddZ";
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let candidate = bytes.get(i..i + shape.len());
        let is_time = candidate.is_some_and(|c| {
            c.iter().zip(shape).all(|(b, s)| match s {
                b'd' => b.is_ascii_digit(),
                _ => b == s,
            })
        });
        if is_time && text[i..i + 4].parse::<u32>().is_ok_and(|year| year >= 2023) {
            out.push_str("____-__-__T__:__:__Z");
            i += shape.len();
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

pub fn is_age(word: &str) -> bool {
    let split = |w: &str| -> Option<(String, char, String)> {
        let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
        let rest = &w[digits.len()..];
        let unit = rest.chars().next()?;
        (!digits.is_empty()).then(|| (digits, unit, rest[1..].to_string()))
    };
    match split(word) {
        Some((_, 's', rest)) => rest.is_empty(),
        Some((_, unit @ ('m' | 'h' | 'd'), rest)) => {
            let next = match unit {
                'm' => 's',
                'h' => 'm',
                _ => 'h',
            };
            rest.len() == 3 && rest[..2].chars().all(|c| c.is_ascii_digit()) && rest.ends_with(next)
        }
        _ => false,
    }
}

pub fn replace_ages(text: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if is_age(word) {
            out.push_str("<age>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Compares normalised output with `tests/golden/<name>.txt`, or writes it
/// when `UPSHIFT_BLESS=1`.
pub fn golden(name: &str, actual: &str, urls: &[(String, &'static str)]) -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    let actual = placeholders(actual, urls);
    if std::env::var("UPSHIFT_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, &actual)?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} missing: run with UPSHIFT_BLESS=1 to create it",
            path.display()
        )
    })?;
    if collapse(&expected) != collapse(&actual) {
        bail!(
            "output differs from {} (UPSHIFT_BLESS=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
    Ok(())
}

pub async fn fleetlock_pre_reboot(lock: &ServiceProcess, id: &str, group: &str) -> Result<()> {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/pre-reboot", lock.url()))
        .header("fleet-lock-protocol", "true")
        .body(format!(
            r#"{{"client_params":{{"id":"{id}","group":"{group}"}}}}"#
        ))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "pre-reboot: {} {}",
            response.status(),
            response.text().await?
        );
    }
    Ok(())
}

pub fn host(node: &str, group: &str, version: &str, state: i32, target: &str) -> HostStatus {
    HostStatus {
        node_uuid: node.into(),
        group: group.into(),
        stream: "stable".into(),
        basearch: "x86_64".into(),
        platform: "qemu".into(),
        booted_version: version.into(),
        target_version: target.into(),
        state,
        agent_version: "0.1.0".into(),
        lock_held: state == AgentState::Rebooting as i32,
        ..Default::default()
    }
}

/// Reports hosts over the agents' Report stream and waits for the acks.
pub async fn report(telemetry: &ServiceProcess, hosts: Vec<HostStatus>) -> Result<()> {
    let mut client = TelemetryServiceClient::connect(telemetry.url()).await?;
    let count = hosts.len() as u64;
    let requests: Vec<ReportRequest> = hosts
        .into_iter()
        .zip(1..)
        .map(|(status, sequence)| ReportRequest {
            sequence,
            status: Some(status),
        })
        .collect();
    let mut acks = client
        .report(futures::stream::iter(requests))
        .await?
        .into_inner();
    while let Some(ack) = tokio::time::timeout(Duration::from_secs(20), acks.next()).await? {
        if ack?.acknowledged >= count {
            return Ok(());
        }
    }
    bail!("the report stream ended before acknowledging {count} reports")
}

/// Runs openssl with `args` in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    if !output.status.success() {
        bail!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client
/// certificate with CN `ops-admin`, as PEM files in `dir`.
pub fn make_certificates(dir: &Path) -> Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=upshift-test-ca",
    ]);
    openssl(dir, &ca)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    for (name, cn) in [("server", "localhost"), ("client", "ops-admin")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subject = format!("/CN={cn}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(dir, &req)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        )?;
    }
    Ok(())
}
