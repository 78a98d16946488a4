//! compose.yaml, the Containerfile and everything under deploy/, checked
//! without a container engine: referenced files exist, ports agree with the
//! services' defaults and with Prometheus, every `upshift` and
//! `upshift-agent` command line is accepted by the real binaries with the
//! real configuration files (container paths mapped to the repository),
//! Prometheus config, rules and dashboard queries pass promtool, and the
//! Grafana, collector and Kubernetes files are consistent with the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize as _;
use serde_yaml_ng::Value;
use upshift_integration::tools::{on_path, promtool_check_file};
use upshift_integration::{ServiceProcess, Workdir, bin};

/// The Upshift services of compose.yaml and their documented default ports
/// (README.md "Default ports"; `upshift serve <svc> --help`).
const DEFAULT_PORTS: &[(&str, u16)] = &[
    ("graph", 7401),
    ("policy", 7402),
    ("lock", 7403),
    ("telemetry", 7404),
    ("bridge", 9598),
];

/// Ports of the third-party services, as their images and configs define them.
const OTHER_PORTS: &[(&str, &[u16])] = &[
    ("etcd", &[2379, 2380]),
    ("otel-collector", &[4317, 4318, 8888, 8889]),
    ("prometheus", &[9090]),
    ("grafana", &[3000]),
];

/// The image the Containerfile builds, used by every Upshift service.
const UPSHIFT_IMAGE: &str = "localhost/upshift:dev";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn yaml(path: &Path) -> Result<Value> {
    serde_yaml_ng::from_str(&read(path)?).with_context(|| format!("parsing {}", path.display()))
}

fn default_port(service: &str) -> Option<u16> {
    DEFAULT_PORTS
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, port)| *port)
}

/// One bind mount or named volume of a service.
#[derive(Debug, Clone)]
struct Mount {
    /// `./relative/path` (bind) or a volume name.
    source: String,
    /// Path inside the container.
    target: String,
    read_only: bool,
}

impl Mount {
    fn is_bind(&self) -> bool {
        self.source.starts_with("./") || self.source.starts_with('/')
    }

    fn host_path(&self) -> PathBuf {
        repo().join(self.source.trim_start_matches("./"))
    }
}

/// One published port.
#[derive(Debug, Clone)]
struct Port {
    host_ip: Option<String>,
    host: u16,
    container: u16,
}

/// What the tests need of one compose service.
#[derive(Debug, Clone, Default)]
struct Service {
    name: String,
    image: Option<String>,
    build: Option<(String, String)>,
    entrypoint: Vec<String>,
    command: Vec<String>,
    mounts: Vec<Mount>,
    secrets: Vec<String>,
    ports: Vec<Port>,
    healthcheck: Vec<String>,
    depends_on: Vec<String>,
}

fn strings(value: &Value, what: &str) -> Result<Vec<String>> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Sequence(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => bail!("{what}: expected strings, found {other:?}"),
            })
            .collect(),
        other => bail!("{what}: expected a list (exec form), found {other:?}"),
    }
}

fn str_of(value: &Value, what: &str) -> Result<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => bail!("{what}: expected a string, found {other:?}"),
    }
}

/// The compose file: services plus the top-level volumes and secrets.
#[derive(Debug)]
struct Compose {
    services: BTreeMap<String, Service>,
    volumes: BTreeSet<String>,
    secrets: BTreeMap<String, PathBuf>,
}

impl Compose {
    fn load() -> Result<Self> {
        let doc = yaml(&repo().join("compose.yaml"))?;
        let mut services = BTreeMap::new();
        let Some(Value::Mapping(map)) = doc.get("services") else {
            bail!("compose.yaml has no services mapping");
        };
        for (name, body) in map {
            let name = name.as_str().context("service name")?.to_string();
            services.insert(name.clone(), parse_service(&name, body)?);
        }
        let volumes = match doc.get("volumes") {
            Some(Value::Mapping(m)) => m
                .keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect(),
            _ => BTreeSet::new(),
        };
        let mut secrets = BTreeMap::new();
        if let Some(Value::Mapping(m)) = doc.get("secrets") {
            for (name, body) in m {
                let name = name.as_str().context("secret name")?.to_string();
                let file = str_of(&body["file"], &format!("secrets.{name}.file"))?
                    .with_context(|| format!("secret {name} has no file"))?;
                ensure!(
                    file.starts_with("./"),
                    "secret {name}: file {file} should be relative to the repository"
                );
                secrets.insert(name, repo().join(file.trim_start_matches("./")));
            }
        }
        Ok(Self {
            services,
            volumes,
            secrets,
        })
    }

    /// Services whose command runs one of the workspace's binaries.
    fn upshift_services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().filter(|s| {
            matches!(
                s.command.first().map(String::as_str),
                Some("upshift" | "upshift-agent")
            )
        })
    }

    fn service(&self, name: &str) -> Result<&Service> {
        self.services
            .get(name)
            .with_context(|| format!("compose.yaml has no service {name}"))
    }

    /// Container path -> repository path of a service's bind mounts and secrets.
    fn path_map(&self, service: &Service) -> Result<Vec<(String, PathBuf)>> {
        let mut map: Vec<(String, PathBuf)> = service
            .mounts
            .iter()
            .filter(|m| m.is_bind())
            .map(|m| (m.target.clone(), m.host_path()))
            .collect();
        for secret in &service.secrets {
            let file = self
                .secrets
                .get(secret)
                .with_context(|| format!("{}: undeclared secret {secret}", service.name))?;
            map.push((format!("/run/secrets/{secret}"), file.clone()));
        }
        // Longest container path first, so nested mounts win.
        map.sort_by_key(|(target, _)| std::cmp::Reverse(target.len()));
        Ok(map)
    }

    /// Every port a service listens on inside the network.
    fn known_ports(&self, service: &str) -> Result<Vec<u16>> {
        if let Some(port) = default_port(service) {
            return Ok(vec![port]);
        }
        if let Some((_, ports)) = OTHER_PORTS.iter().find(|(name, _)| *name == service) {
            return Ok(ports.to_vec());
        }
        if self.services.contains_key(service) {
            return Ok(Vec::new());
        }
        bail!("{service} is not a compose service")
    }

    /// `name` and every service it depends on, transitively.
    fn dependency_closure(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        while let Some(next) = todo.pop() {
            if let Some(service) = self.services.get(&next) {
                for dep in &service.depends_on {
                    if seen.insert(dep.clone()) {
                        todo.push(dep.clone());
                    }
                }
            }
        }
        seen
    }
}

fn parse_service(name: &str, body: &Value) -> Result<Service> {
    let mut service = Service {
        name: name.to_string(),
        image: str_of(&body["image"], &format!("{name}.image"))?,
        entrypoint: strings(&body["entrypoint"], &format!("{name}.entrypoint"))?,
        command: strings(&body["command"], &format!("{name}.command"))?,
        ..Service::default()
    };
    if let Some(build) = body.get("build") {
        let context = str_of(&build["context"], &format!("{name}.build.context"))?
            .context("build.context")?;
        let file = str_of(&build["dockerfile"], &format!("{name}.build.dockerfile"))?
            .unwrap_or_else(|| "Dockerfile".to_string());
        service.build = Some((context, file));
    }
    for volume in strings(&body["volumes"], &format!("{name}.volumes"))? {
        let parts: Vec<&str> = volume.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [s, t] => (*s, *t, ""),
            [s, t, m] => (*s, *t, *m),
            _ => bail!("{name}: volume {volume:?} is not SOURCE:TARGET[:MODE]"),
        };
        service.mounts.push(Mount {
            source: source.to_string(),
            target: target.to_string(),
            read_only: mode.split(',').any(|m| m == "ro"),
        });
    }
    service.secrets = strings(&body["secrets"], &format!("{name}.secrets"))?;
    for port in strings(&body["ports"], &format!("{name}.ports"))? {
        let parts: Vec<&str> = port.split(':').collect();
        let (host_ip, host, container) = match parts.as_slice() {
            [h, c] => (None, *h, *c),
            [ip, h, c] => (Some(ip.to_string()), *h, *c),
            _ => bail!("{name}: port {port:?} is not [IP:]HOST:CONTAINER"),
        };
        service.ports.push(Port {
            host_ip,
            host: host.parse().with_context(|| format!("{name}: {port}"))?,
            container: container
                .parse()
                .with_context(|| format!("{name}: {port}"))?,
        });
    }
    if let Some(health) = body.get("healthcheck") {
        service.healthcheck = strings(&health["test"], &format!("{name}.healthcheck.test"))?;
    }
    service.depends_on = match body.get("depends_on") {
        None => Vec::new(),
        Some(Value::Sequence(_)) => strings(&body["depends_on"], "depends_on")?,
        Some(Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        Some(other) => bail!("{name}.depends_on: unexpected {other:?}"),
    };
    Ok(service)
}

/// Maps a container path to the repository path mounted there (unchanged
/// when no mount covers it).
fn map_path(map: &[(String, PathBuf)], path: &str) -> String {
    for (target, host) in map {
        if path == target {
            return host.display().to_string();
        }
        if let Some(rest) = path.strip_prefix(target.as_str())
            && rest.starts_with('/')
        {
            return format!("{}{rest}", host.display());
        }
    }
    path.to_string()
}

/// Rewrites every string value of a TOML document that names a mounted
/// container path.
fn map_toml(value: &mut toml::Value, map: &[(String, PathBuf)]) {
    match value {
        toml::Value::String(s) => *s = map_path(map, s),
        toml::Value::Array(items) => items.iter_mut().for_each(|v| map_toml(v, map)),
        toml::Value::Table(table) => table.iter_mut().for_each(|(_, v)| map_toml(v, map)),
        _ => {}
    }
}

/// The `--config` file of a command line, as a container path.
fn config_arg(command: &[String]) -> Option<&str> {
    command
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].as_str())
}

/// A service's config file from the repository, parsed.
fn service_config(compose: &Compose, service: &Service) -> Result<toml::Table> {
    let path = config_arg(&service.command)
        .with_context(|| format!("{}: command has no --config", service.name))?;
    let host = map_path(&compose.path_map(service)?, path);
    ensure!(
        host != path,
        "{}: --config {path} is not a mounted file",
        service.name
    );
    read(Path::new(&host))?
        .parse::<toml::Table>()
        .with_context(|| format!("{}: parsing {host}", service.name))
}

/// Runs a workspace binary; returns its output.
fn run(binary: &str, args: &[String]) -> Result<Output> {
    let path = bin(binary)?;
    Command::new(&path)
        .args(args)
        .env_remove("UPSHIFT_CONFIG")
        .env_remove("UPSHIFT_ETCD")
        .env_remove("UPSHIFT_LISTEN")
        .env_remove("UPSHIFT_DATA_DIR")
        .output()
        .with_context(|| format!("running {}", path.display()))
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The command line of `service` with its config rewritten to repository
/// paths (written into `dir`) and every other mounted path mapped.
fn mapped_command(compose: &Compose, service: &Service, dir: &Path) -> Result<Vec<String>> {
    mapped_command_with(compose, service, dir, |_| {})
}

/// [`mapped_command`], with `edit` applied to the config document.
fn mapped_command_with(
    compose: &Compose,
    service: &Service,
    dir: &Path,
    edit: impl Fn(&mut toml::Value),
) -> Result<Vec<String>> {
    let map = compose.path_map(service)?;
    let mut args = Vec::new();
    let mut iter = service.command.iter().skip(1).peekable();
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            let path = iter.next().context("--config without a value")?;
            let host = map_path(&map, path);
            let mut doc: toml::Value = read(Path::new(&host))?
                .parse::<toml::Table>()
                .map(toml::Value::Table)
                .with_context(|| format!("parsing {host}"))?;
            map_toml(&mut doc, &map);
            edit(&mut doc);
            let mapped = dir.join(format!("{}.toml", service.name));
            std::fs::write(&mapped, toml::to_string(&doc)?)?;
            args.push(arg.clone());
            args.push(mapped.display().to_string());
        } else {
            args.push(map_path(&map, arg));
        }
    }
    Ok(args)
}

#[test]
fn services_use_the_image_the_containerfile_builds() -> Result<()> {
    let compose = Compose::load()?;
    ensure!(!compose.services.is_empty(), "no services");
    for service in compose.services.values() {
        ensure!(
            service.image.is_some() || service.build.is_some(),
            "{} has neither image nor build",
            service.name
        );
        if let Some((context, file)) = &service.build {
            let context = repo().join(context);
            ensure!(context.is_dir(), "{}: no build context", service.name);
            ensure!(
                context.join(file).is_file(),
                "{}: {file} missing in the build context",
                service.name
            );
        }
    }
    let upshift: Vec<_> = compose.upshift_services().collect();
    ensure!(
        upshift.len() == DEFAULT_PORTS.len() + 3,
        "expected every Upshift service and three agents"
    );
    for service in &upshift {
        ensure!(
            service.build == Some((".".to_string(), "Containerfile".to_string())),
            "{} must be built from ./Containerfile",
            service.name
        );
        ensure!(
            service.image.as_deref() == Some(UPSHIFT_IMAGE),
            "{} must use the one image {UPSHIFT_IMAGE}",
            service.name
        );
    }

    let containerfile = read(&repo().join("Containerfile"))?;
    let stages: Vec<&str> = containerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    ensure!(stages.len() == 2, "multi-stage build expected: {stages:?}");
    ensure!(
        stages[0].contains("rust:1.95"),
        "build stage: {}",
        stages[0]
    );
    ensure!(
        containerfile.contains("-p upshift-cli") && containerfile.contains("-p upshift-agent"),
        "the Containerfile must build upshift and upshift-agent"
    );
    ensure!(
        !containerfile.contains("PROTOC="),
        "protoc comes from protoc-bin-vendored, not the environment"
    );
    for binary in ["upshift", "upshift-agent"] {
        ensure!(
            containerfile.contains(&format!("target/release/{binary}")),
            "{binary} is not installed into the runtime image"
        );
    }
    // COPY sources from the build context exist (and are not ignored).
    let ignored: Vec<String> = read(&repo().join(".dockerignore"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    ensure!(
        ignored.iter().any(|l| l == "target"),
        ".dockerignore must keep target/ out of the context"
    );
    for line in containerfile.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        for source in &words[1..words.len() - 1] {
            if *source == "." {
                continue;
            }
            ensure!(repo().join(source).exists(), "COPY source {source} missing");
            let top = source.split('/').next().unwrap_or_default();
            ensure!(
                !ignored.iter().any(|l| l == top),
                "COPY source {source} is excluded by .dockerignore"
            );
        }
    }
    // The agent's default fragment reaches the image.
    ensure!(
        containerfile.contains("COPY dist/usr/lib/upshift/ /usr/lib/upshift/"),
        "the image must carry /usr/lib/upshift/agent.d/00-defaults.toml"
    );
    let user = containerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .context("no USER in the runtime stage")?;
    ensure!(
        !user.contains("root") && !user.contains(" 0"),
        "runtime user must not be root: {user}"
    );
    Ok(())
}

#[test]
fn mounted_files_volumes_and_dependencies_exist() -> Result<()> {
    let compose = Compose::load()?;
    let mut used_volumes = BTreeSet::new();
    for service in compose.services.values() {
        for mount in &service.mounts {
            if mount.is_bind() {
                ensure!(
                    mount.source.starts_with("./"),
                    "{}: bind source {} should be relative to the repository",
                    service.name,
                    mount.source
                );
                ensure!(
                    mount.host_path().exists(),
                    "{}: {} does not exist",
                    service.name,
                    mount.source
                );
                ensure!(
                    mount.read_only,
                    "{}: configuration mount {} should be read-only",
                    service.name,
                    mount.source
                );
            } else {
                ensure!(
                    compose.volumes.contains(&mount.source),
                    "{}: volume {} is not declared",
                    service.name,
                    mount.source
                );
                used_volumes.insert(mount.source.clone());
            }
        }
        for secret in &service.secrets {
            let file = compose
                .secrets
                .get(secret)
                .with_context(|| format!("{}: undeclared secret {secret}", service.name))?;
            ensure!(file.is_file(), "secret file {} missing", file.display());
        }
        for dep in &service.depends_on {
            ensure!(
                compose.services.contains_key(dep),
                "{} depends on unknown {dep}",
                service.name
            );
        }
        ensure!(
            !compose
                .dependency_closure(&service.name)
                .contains(&service.name),
            "{} depends on itself",
            service.name
        );
    }
    let unused: Vec<_> = compose.volumes.difference(&used_volumes).collect();
    ensure!(unused.is_empty(), "declared but unused volumes: {unused:?}");
    let token = read(compose.secrets.get("admin-token").context("admin-token")?)?;
    ensure!(
        token.trim().len() >= 16,
        "admin tokens must be at least 16 characters"
    );
    Ok(())
}

/// Every `http://HOST:PORT` naming a compose service, in a TOML document.
fn service_urls(value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) if s.starts_with("http://") || s.starts_with("https://") => {
            out.push(s.clone());
        }
        toml::Value::Array(items) => items.iter().for_each(|v| service_urls(v, out)),
        toml::Value::Table(t) => t.values().for_each(|v| service_urls(v, out)),
        _ => {}
    }
}

fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .with_context(|| format!("{url} is not a URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .with_context(|| format!("{url} names no port"))?;
    Ok((host.to_string(), port.parse()?))
}

/// Checks that a URL points at a compose service's port, and that `from`
/// starts after that service.
fn check_service_url(compose: &Compose, from: &str, url: &str) -> Result<()> {
    let (host, port) = host_port(url)?;
    if host == "127.0.0.1" || host == "localhost" {
        return Ok(());
    }
    let ports = compose
        .known_ports(&host)
        .with_context(|| format!("{from}: {url}"))?;
    ensure!(
        ports.contains(&port),
        "{from}: {url}: {host} listens on {ports:?}, not {port}"
    );
    ensure!(
        compose.dependency_closure(from).contains(&host),
        "{from} uses {url} but does not depend on {host}"
    );
    Ok(())
}

#[test]
fn ports_agree_with_defaults_configs_and_prometheus() -> Result<()> {
    let compose = Compose::load()?;
    for (name, port) in DEFAULT_PORTS {
        let service = compose.service(name)?;
        let config = service_config(&compose, service)?;
        let listen = config
            .get("server")
            .and_then(|s| s.get("listen"))
            .and_then(toml::Value::as_str)
            .with_context(|| format!("{name}: [server] listen"))?;
        ensure!(
            listen == format!("0.0.0.0:{port}"),
            "{name} listens on {listen}, not its default port {port}"
        );
        ensure!(
            service.ports.len() == 1,
            "{name}: one published port expected"
        );
        let published = &service.ports[0];
        ensure!(
            published.container == *port && published.host == *port,
            "{name} publishes {}:{}, expected {port}:{port}",
            published.host,
            published.container
        );
        ensure!(
            published.host_ip.as_deref() == Some("127.0.0.1"),
            "{name}: publish on 127.0.0.1 only (admin APIs, a dev token)"
        );
        ensure!(
            !service.healthcheck.is_empty(),
            "{name} has no health check"
        );
    }
    for service in compose.services.values() {
        for port in &service.ports {
            let known = compose.known_ports(&service.name)?;
            ensure!(
                known.contains(&port.container),
                "{} publishes {}, which it does not listen on ({known:?})",
                service.name,
                port.container
            );
        }
    }

    // URLs inside the service configs and agent fragments point at the
    // right service and port, and the service waits for it.
    for service in compose.upshift_services() {
        let map = compose.path_map(service)?;
        for (target, host) in &map {
            if !(target.ends_with(".toml") && host.is_file()) {
                continue;
            }
            let doc: toml::Value = toml::Value::Table(read(host)?.parse::<toml::Table>()?);
            let mut urls = Vec::new();
            service_urls(&doc, &mut urls);
            for url in urls {
                check_service_url(&compose, &service.name, &url)
                    .with_context(|| format!("in {}", host.display()))?;
            }
        }
    }

    // Prometheus scrapes every Upshift service on its port, the collector's
    // exporter, and nothing that does not exist.
    let prometheus = yaml(&repo().join("deploy/prometheus/prometheus.yml"))?;
    let mut targets: BTreeMap<String, Vec<(String, u16)>> = BTreeMap::new();
    for job in prometheus["scrape_configs"]
        .as_sequence()
        .context("scrape_configs")?
    {
        let name = job["job_name"].as_str().context("job_name")?.to_string();
        for sc in job["static_configs"]
            .as_sequence()
            .context("static_configs")?
        {
            for target in strings(&sc["targets"], "targets")? {
                let (host, port) = host_port(&format!("http://{target}"))?;
                if host != "localhost" {
                    let known = compose.known_ports(&host)?;
                    ensure!(
                        known.contains(&port),
                        "job {name}: {target}: {host} listens on {known:?}"
                    );
                    ensure!(
                        compose.dependency_closure("prometheus").contains(&host),
                        "prometheus should depend on {host}"
                    );
                }
                targets.entry(name.clone()).or_default().push((host, port));
            }
        }
    }
    for (name, port) in DEFAULT_PORTS {
        let job = format!("upshift-{name}");
        ensure!(
            targets.get(&job) == Some(&vec![(name.to_string(), *port)]),
            "job {job} should scrape {name}:{port}, has {:?}",
            targets.get(&job)
        );
    }
    let agent_job = prometheus["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|j| j["job_name"].as_str() == Some("upshift-agent"))
        .context("no upshift-agent job (the agent's metrics through the bridge)")?;
    ensure!(agent_job["metrics_path"].as_str() == Some("/bridge"));
    let selector = strings(&agent_job["params"]["selector"], "selector")?;
    let bridge = compose.service("bridge")?;
    let bridge_config = service_config(&compose, bridge)?;
    for name in &selector {
        ensure!(
            bridge_config
                .get("selectors")
                .and_then(|s| s.get(name))
                .is_some(),
            "selector {name} scraped but not configured in the bridge"
        );
    }
    let collector = yaml(&repo().join("deploy/otel-collector/config.yaml"))?;
    let exporter = collector["exporters"]["prometheus"]["endpoint"]
        .as_str()
        .context("collector prometheus exporter endpoint")?;
    let exporter_port: u16 = exporter.rsplit_once(':').context("port")?.1.parse()?;
    ensure!(
        targets
            .values()
            .flatten()
            .any(|t| *t == ("otel-collector".to_string(), exporter_port)),
        "Prometheus does not scrape the collector's exporter on {exporter_port}"
    );
    Ok(())
}

#[test]
fn serve_commands_pass_check_config_with_the_mounted_files() -> Result<()> {
    let compose = Compose::load()?;
    let dir = tempfile::tempdir()?;
    let mut checked = 0;
    for service in compose.upshift_services() {
        if service.command[0] != "upshift" {
            continue;
        }
        ensure!(
            service.entrypoint.is_empty(),
            "{}: the image has no entrypoint to override",
            service.name
        );
        let mut args = mapped_command(&compose, service, dir.path())?;
        args.push("--check-config".to_string());
        let output = run("upshift", &args)?;
        ensure!(
            output.status.success()
                && String::from_utf8_lossy(&output.stdout).contains("configuration OK"),
            "{}: upshift {} rejected:\n{}",
            service.name,
            args.join(" "),
            describe(&output)
        );
        checked += 1;
    }
    ensure!(
        checked == DEFAULT_PORTS.len(),
        "checked {checked} upshift services"
    );

    // The check can fail: without the path mapping the mounted metadata and
    // token files are missing, and the services say so with exit code 64.
    for name in ["policy", "lock"] {
        let service = compose.service(name)?;
        let mut args: Vec<String> = service.command[1..].to_vec();
        let config = config_arg(&service.command).context("--config")?;
        let host = map_path(&compose.path_map(service)?, config);
        let position = args.iter().position(|a| a == config).context("config")?;
        args[position] = host;
        args.push("--check-config".to_string());
        let output = run("upshift", &args)?;
        ensure!(
            output.status.code() == Some(64),
            "{name}: unmapped container paths should be rejected:\n{}",
            describe(&output)
        );
    }
    Ok(())
}

#[test]
fn health_checks_call_the_grpc_health_service() -> Result<()> {
    let compose = Compose::load()?;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    for service in compose.upshift_services() {
        if service.healthcheck.is_empty() {
            continue;
        }
        let port = default_port(&service.name)
            .with_context(|| format!("{} has a health check but no port", service.name))?;
        ensure!(
            service.healthcheck
                == [
                    "CMD",
                    "upshift",
                    "health",
                    &format!("http://127.0.0.1:{port}")
                ],
            "{}: health check should be `upshift health http://127.0.0.1:{port}`, is {:?}",
            service.name,
            service.healthcheck
        );
    }
    // The command line parses and reports an unreachable service with the
    // documented exit code 3 (2 would be a usage error).
    let output = run(
        "upshift",
        &["health".to_string(), format!("http://127.0.0.1:{closed}")],
    )?;
    ensure!(
        output.status.code() == Some(3),
        "upshift health on a closed port: {}",
        describe(&output)
    );
    let etcd = compose.service("etcd")?;
    ensure!(
        etcd.healthcheck.iter().any(|a| a == "endpoint")
            && etcd.healthcheck.iter().any(|a| a == "health"),
        "etcd needs an `etcdctl endpoint health` check"
    );
    for dependent in ["policy", "lock", "telemetry"] {
        ensure!(
            compose
                .service(dependent)?
                .depends_on
                .contains(&"etcd".into()),
            "{dependent} should wait for etcd"
        );
    }
    Ok(())
}

#[test]
fn etcd_and_prometheus_flags_exist() -> Result<()> {
    let compose = Compose::load()?;
    for (service, binary) in [("etcd", "etcd"), ("prometheus", "prometheus")] {
        if !on_path(binary) {
            eprintln!("NOTICE: {binary} not on PATH; not checking the {service} flags");
            continue;
        }
        let help = Command::new(binary).arg("--help").output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&help.stdout),
            String::from_utf8_lossy(&help.stderr)
        );
        let command = &compose.service(service)?.command;
        for flag in command.iter().filter(|a| a.starts_with("--")) {
            let name = flag.split('=').next().unwrap_or_default();
            ensure!(
                text.contains(name),
                "{service}: `{binary} --help` knows no {name}"
            );
        }
    }
    Ok(())
}

/// The agents' fragments, as the agent merges them over the image's
/// defaults (a root assembled like the container's file system).
fn agent_root(compose: &Compose, service: &Service) -> Result<tempfile::TempDir> {
    let root = tempfile::tempdir()?;
    let defaults = repo().join("dist/usr/lib/upshift/agent.d");
    let into = root.path().join("usr/lib/upshift/agent.d");
    std::fs::create_dir_all(&into)?;
    for entry in std::fs::read_dir(&defaults)? {
        let entry = entry?;
        std::fs::copy(entry.path(), into.join(entry.file_name()))?;
    }
    for (target, host) in compose.path_map(service)? {
        if target.starts_with("/etc/upshift/agent.d/") {
            let dest = root.path().join(target.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().context("parent")?)?;
            std::fs::copy(&host, &dest)?;
        }
    }
    Ok(root)
}

#[test]
fn simulated_agents_have_valid_configs_and_seeds() -> Result<()> {
    let compose = Compose::load()?;
    let releases: serde_json::Value =
        serde_json::from_str(&read(&repo().join("deploy/metadata/stable/releases.json"))?)?;
    let agents: Vec<_> = compose
        .upshift_services()
        .filter(|s| s.command[0] == "upshift-agent")
        .collect();
    ensure!(agents.len() == 3, "three simulated agents expected");
    let mut uuids = BTreeSet::new();
    for agent in agents {
        ensure!(
            agent.command == ["upshift-agent", "--root", "/", "run"],
            "{}: command {:?}",
            agent.name,
            agent.command
        );
        // The entrypoint seeds the booted release, then execs the command.
        let map = compose.path_map(agent)?;
        let script = agent.entrypoint.last().context("entrypoint")?;
        let script = map_path(&map, script);
        let text = read(Path::new(&script))?;
        ensure!(
            text.contains("exec \"$@\""),
            "{script} must exec the command"
        );
        let seed = map_path(&map, "/etc/upshift/simulated-os.seed.json");
        let seed: serde_json::Value = serde_json::from_str(&read(Path::new(&seed))?)
            .with_context(|| format!("{}: seed", agent.name))?;
        let version = seed["booted"]["version"].as_str().context("version")?;
        let payload = seed["booted"]["payload"].as_str().context("payload")?;
        let release = releases["releases"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["version"] == version)
            .with_context(|| format!("{}: {version} is not in releases.json", agent.name))?;
        ensure!(
            release["commits"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["architecture"] == "x86_64" && c["checksum"] == payload),
            "{}: payload of {version} does not match releases.json",
            agent.name
        );

        // The agent accepts the merged configuration.
        let root = agent_root(&compose, agent)?;
        let args = vec![
            "--root".to_string(),
            root.path().display().to_string(),
            "config".to_string(),
            "show".to_string(),
        ];
        let output = run("upshift-agent", &args)?;
        ensure!(
            output.status.success(),
            "{}: upshift-agent config show:\n{}",
            agent.name,
            describe(&output)
        );
        let shown = String::from_utf8_lossy(&output.stdout);
        let value = |key: &str| -> Option<String> {
            shown.lines().find_map(|l| {
                l.strip_prefix(&format!("{key} = "))
                    .map(|v| v.split("  #").next().unwrap_or_default().to_string())
            })
        };
        ensure!(
            value("os.backend").as_deref() == Some("\"simulated\""),
            "{}: not on the simulated backend:\n{shown}",
            agent.name
        );
        let uuid = value("identity.node_uuid").with_context(|| {
            format!(
                "{}: no node_uuid (containers have no machine-id)",
                agent.name
            )
        })?;
        ensure!(uuids.insert(uuid), "{}: node_uuid reused", agent.name);
        for key in [
            "updates.policy_url",
            "updates.cincinnati_url",
            "lock.url",
            "telemetry.url",
        ] {
            if let Some(url) = value(key) {
                check_service_url(&compose, &agent.name, url.trim_matches('"'))?;
            }
        }
    }
    Ok(())
}

#[test]
fn prometheus_config_and_rules_pass_promtool() -> Result<()> {
    // /etc/prometheus as the container sees it, assembled from the mounts.
    let compose = Compose::load()?;
    let prometheus = compose.service("prometheus")?;
    let etc = tempfile::tempdir()?;
    for mount in prometheus.mounts.iter().filter(|m| m.is_bind()) {
        let relative = mount
            .target
            .strip_prefix("/etc/prometheus/")
            .with_context(|| format!("unexpected Prometheus mount {}", mount.target))?;
        let dest = etc.path().join(relative);
        std::fs::create_dir_all(dest.parent().context("parent")?)?;
        std::fs::copy(mount.host_path(), &dest)?;
    }
    let config = etc.path().join("prometheus.yml");
    ensure!(
        prometheus
            .command
            .contains(&"--config.file=/etc/prometheus/prometheus.yml".to_string()),
        "Prometheus should load /etc/prometheus/prometheus.yml"
    );
    let doc = yaml(&config)?;
    let mut rules_text = String::new();
    let mut alerts = BTreeSet::new();
    for pattern in strings(&doc["rule_files"], "rule_files")? {
        let (dir, suffix) = pattern
            .rsplit_once("/*")
            .with_context(|| format!("rule_files entry {pattern} is not DIR/*.EXT"))?;
        let mut files = 0;
        for entry in std::fs::read_dir(etc.path().join(dir))? {
            let path = entry?.path();
            if !path.to_string_lossy().ends_with(suffix) {
                continue;
            }
            files += 1;
            let text = read(&path)?;
            let rules = yaml(&path)?;
            for group in rules["groups"].as_sequence().context("groups")? {
                for rule in group["rules"].as_sequence().context("rules")? {
                    let Some(name) = rule["alert"].as_str() else {
                        continue;
                    };
                    ensure!(
                        alerts.insert(name.to_string()),
                        "alert {name} defined twice across the rule files"
                    );
                    ensure!(
                        rule["labels"]["severity"].as_str().is_some(),
                        "alert {name} without severity"
                    );
                    ensure!(
                        rule["annotations"]["summary"].as_str().is_some(),
                        "alert {name} without summary"
                    );
                }
            }
            rules_text.push_str(&text);
        }
        ensure!(files > 0, "rule_files {pattern} matches no mounted file");
    }
    ensure!(
        rules_text.contains("upshift_telemetry_halts") && alerts.contains("UpshiftRolloutHalted"),
        "no alert on automatic halts"
    );
    ensure!(
        rules_text.contains("up{job=~\"upshift-.*\"} == 0"),
        "no alert on services down"
    );
    ensure!(alerts.len() >= 8, "only {} alerts", alerts.len());
    if !promtool_check_file("config", &config)? {
        eprintln!("NOTICE: promtool absent: Prometheus config and rules parsed as YAML only");
        return Ok(());
    }
    let tests = repo().join("deploy/prometheus/tests/upshift.test.yaml");
    let output = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&tests)
        .output()?;
    ensure!(
        output.status.success(),
        "promtool test rules:\n{}",
        describe(&output)
    );
    Ok(())
}

/// Every `expr` of a dashboard panel, with Grafana's variables replaced.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    out
}

#[test]
fn grafana_dashboard_uses_the_provisioned_datasource_and_valid_queries() -> Result<()> {
    let compose = Compose::load()?;
    let grafana = compose.service("grafana")?;
    let map = compose.path_map(grafana)?;
    let datasources = yaml(Path::new(&map_path(
        &map,
        "/etc/grafana/provisioning/datasources/prometheus.yaml",
    )))?;
    let source = &datasources["datasources"][0];
    let uid = source["uid"].as_str().context("datasource uid")?;
    ensure!(source["type"].as_str() == Some("prometheus"));
    let url = source["url"].as_str().context("datasource url")?;
    check_service_url(&compose, "grafana", url)?;

    let providers = yaml(Path::new(&map_path(
        &map,
        "/etc/grafana/provisioning/dashboards/upshift.yaml",
    )))?;
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .context("dashboard provider path")?;
    let dashboards = PathBuf::from(map_path(&map, path));
    ensure!(
        dashboards.is_dir() && dashboards.starts_with(repo()),
        "provider path {path} is not a mounted directory"
    );
    let mut found = 0;
    for entry in std::fs::read_dir(&dashboards)? {
        let path = entry?.path();
        let dashboard: serde_json::Value = serde_json::from_str(&read(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        found += 1;
        ensure!(dashboard["uid"].as_str().is_some(), "dashboard without uid");
        let mut ids = BTreeSet::new();
        for panel in dashboard["panels"].as_array().context("panels")? {
            ensure!(
                ids.insert(panel["id"].as_u64().context("panel id")?),
                "duplicate panel id"
            );
            if panel["type"] == "row" {
                continue;
            }
            ensure!(
                panel["datasource"]["uid"].as_str() == Some(uid),
                "panel {} does not use datasource {uid}",
                panel["title"]
            );
            for target in panel["targets"].as_array().context("targets")? {
                ensure!(
                    target["datasource"]["uid"].as_str() == Some(uid),
                    "a target of {} does not use datasource {uid}",
                    panel["title"]
                );
            }
        }
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            ensure!(
                variable["datasource"]["uid"].as_str() == Some(uid),
                "variable {} does not use datasource {uid}",
                variable["name"]
            );
        }
        let exprs = dashboard_exprs(&dashboard);
        // The topics the dashboard exists for.
        for (topic, metric) in [
            ("fleet by version", "upshift_telemetry_hosts"),
            ("rollout throttle", "upshift_policy_rollout_throttle"),
            ("halts", "upshift_telemetry_halts"),
            ("lock holders", "upshift_lock_holders"),
            ("errors", "upshift_grpc_server_requests_total"),
        ] {
            ensure!(
                exprs.iter().any(|(_, e)| e.contains(metric)),
                "no panel shows {topic} ({metric})"
            );
        }
        // Each query is valid PromQL: promtool checks them as recording rules.
        let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (i, (_, expr)) in exprs.iter().enumerate() {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$stream", ".*");
            rules.push_str(&format!(
                "      - record: dashboard:query_{i}\n        expr: {}\n",
                serde_json::to_string(&expr)?
            ));
        }
        let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
        std::fs::write(file.path(), rules)?;
        promtool_check_file("rules", file.path())
            .with_context(|| format!("queries of {}", path.display()))?;
    }
    ensure!(found >= 1, "no dashboard in {}", dashboards.display());
    Ok(())
}

/// `upshift_*` metric names in a text (PromQL, rules, dashboards).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("upshift_") {
        let start = i + found;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
        };
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end] == b'_'
                || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        if boundary {
            names.insert(text[start..end].trim_end_matches('_').to_string());
        }
        i = end.max(start + 1);
    }
    names
}

fn rust_sources(dir: &Path, out: &mut String) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&read(&path)?);
        }
    }
    Ok(())
}

#[test]
fn alerts_and_dashboards_name_metrics_the_code_exports() -> Result<()> {
    let mut sources = String::new();
    for dir in ["services", "agent/src"] {
        rust_sources(&repo().join(dir), &mut sources)?;
    }
    let mut text = read(&repo().join("deploy/prometheus/rules/upshift.yaml"))?;
    for entry in std::fs::read_dir(repo().join("deploy/grafana/dashboards"))? {
        text.push_str(&read(&entry?.path())?);
    }
    let names = metric_names(&text);
    ensure!(names.len() >= 15, "few metrics found: {names:?}");
    let mut missing = Vec::new();
    for name in &names {
        // Exposition suffixes the exporter adds to the instrument's name.
        let mut base = name.as_str();
        for suffix in ["_bucket", "_sum", "_count", "_total"] {
            base = base.strip_suffix(suffix).unwrap_or(base);
        }
        let unitless = base.strip_suffix("_seconds").unwrap_or(base);
        let candidates = [
            format!("\"{base}\""),
            format!("\"{unitless}\""),
            // Instruments named with dots and the server kind as a parameter.
            format!(
                "\"{}\"",
                unitless
                    .replacen("upshift_http_server_", "upshift.{prefix}.server.", 1)
                    .replacen("upshift_grpc_server_", "upshift.{prefix}.server.", 1)
            ),
            // Hand-written expositions (the agent) write the full name.
            format!("\"{name}\""),
            format!("\"{name}{{"),
        ];
        if !candidates.iter().any(|c| sources.contains(c.as_str())) {
            missing.push(name.clone());
        }
    }
    ensure!(
        missing.is_empty(),
        "rules/dashboards name metrics no code exports: {missing:?}"
    );
    Ok(())
}

#[test]
fn collector_receives_otlp_and_exports_to_prometheus() -> Result<()> {
    let compose = Compose::load()?;
    let collector = compose.service("otel-collector")?;
    let map = compose.path_map(collector)?;
    let config_path = collector
        .command
        .iter()
        .find_map(|a| a.strip_prefix("--config="))
        .context("collector --config")?;
    let config = yaml(Path::new(&map_path(&map, config_path)))?;
    let grpc = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .context("OTLP gRPC receiver")?;
    ensure!(grpc.ends_with(":4317"), "OTLP gRPC on {grpc}");
    ensure!(
        config["exporters"]["prometheus"].is_mapping(),
        "no prometheus exporter"
    );
    // Pipelines use only defined components, and traces reach Prometheus.
    let defined = |kind: &str, name: &str| {
        config[kind]
            .as_mapping()
            .is_some_and(|m| m.contains_key(Value::String(name.to_string())))
    };
    let pipelines = config["service"]["pipelines"]
        .as_mapping()
        .context("pipelines")?;
    ensure!(pipelines.contains_key(Value::String("traces".into())));
    for (name, pipeline) in pipelines {
        for (field, kinds) in [
            ("receivers", &["receivers", "connectors"][..]),
            ("processors", &["processors"][..]),
            ("exporters", &["exporters", "connectors"][..]),
        ] {
            for component in strings(&pipeline[field], field)? {
                ensure!(
                    kinds.iter().any(|k| defined(k, &component)),
                    "pipeline {name:?}: {field} {component} is not defined"
                );
            }
        }
    }
    // Every Upshift service exports its spans to that receiver.
    for (name, _) in DEFAULT_PORTS {
        let service = compose.service(name)?;
        let config = service_config(&compose, service)?;
        let endpoint = config
            .get("server")
            .and_then(|s| s.get("otlp_endpoint"))
            .and_then(toml::Value::as_str)
            .with_context(|| format!("{name}: no server.otlp_endpoint"));
        let endpoint = endpoint?;
        ensure!(
            endpoint == "http://otel-collector:4317",
            "{name}: {endpoint}"
        );
        check_service_url(&compose, name, endpoint)?;
    }
    Ok(())
}

/// deploy/kustomization.yaml and the manifests it lists.
#[derive(Debug)]
struct Kustomization {
    /// Every document of every resource file, with the file it came from.
    docs: Vec<(PathBuf, Value)>,
    /// ConfigMap/Secret name -> key -> repository file.
    generated: BTreeMap<String, BTreeMap<String, PathBuf>>,
}

impl Kustomization {
    fn load() -> Result<Self> {
        let deploy = repo().join("deploy");
        let doc = yaml(&deploy.join("kustomization.yaml"))?;
        let mut docs = Vec::new();
        for resource in strings(&doc["resources"], "resources")? {
            let path = deploy.join(&resource);
            let text = read(&path)?;
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                let value = Value::deserialize(document)
                    .with_context(|| format!("parsing {}", path.display()))?;
                if !value.is_null() {
                    docs.push((path.clone(), value));
                }
            }
        }
        let mut generated = BTreeMap::new();
        for field in ["configMapGenerator", "secretGenerator"] {
            for generator in doc[field].as_sequence().into_iter().flatten() {
                let name = generator["name"].as_str().context("generator name")?;
                let mut keys = BTreeMap::new();
                for file in strings(&generator["files"], "files")? {
                    let (key, source) = file.split_once('=').unwrap_or((&file, &file));
                    let source = deploy.join(source);
                    ensure!(
                        source.is_file(),
                        "{field} {name}: {} missing",
                        source.display()
                    );
                    keys.insert(key.to_string(), source);
                }
                generated.insert(name.to_string(), keys);
            }
        }
        Ok(Self { docs, generated })
    }

    fn of_kind<'a>(&'a self, kinds: &'a [&str]) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .filter(move |d| kinds.iter().any(|k| d["kind"].as_str() == Some(*k)))
    }

    /// Container path -> repository file, for a container's ConfigMap and
    /// Secret mounts.
    fn container_files(
        &self,
        pod: &Value,
        claims: &BTreeSet<String>,
        container: &Value,
    ) -> Result<BTreeMap<String, PathBuf>> {
        let mut files = BTreeMap::new();
        for mount in container["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let volume_name = mount["name"].as_str().context("mount name")?;
            let mount_path = mount["mountPath"].as_str().context("mountPath")?;
            let volume = pod["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|v| v["name"].as_str() == Some(volume_name));
            let Some(volume) = volume else {
                ensure!(
                    claims.contains(volume_name),
                    "volume {volume_name} not defined"
                );
                continue;
            };
            let (source, items) = if let Some(cm) = volume.get("configMap") {
                (cm["name"].as_str(), &cm["items"])
            } else if let Some(secret) = volume.get("secret") {
                (secret["secretName"].as_str(), &secret["items"])
            } else {
                continue;
            };
            let source = source.context("configMap/secret name")?;
            let keys = self
                .generated
                .get(source)
                .with_context(|| format!("{source} is not generated by the kustomization"))?;
            match items.as_sequence() {
                Some(items) => {
                    for item in items {
                        let key = item["key"].as_str().context("item key")?;
                        let path = item["path"].as_str().context("item path")?;
                        let file = keys
                            .get(key)
                            .with_context(|| format!("{source} has no key {key}"))?;
                        files.insert(format!("{mount_path}/{path}"), file.clone());
                    }
                }
                None => {
                    for (key, file) in keys {
                        files.insert(format!("{mount_path}/{key}"), file.clone());
                    }
                }
            }
        }
        Ok(files)
    }
}

/// Pod labels.
type Labels = BTreeMap<String, String>;
/// A container port and its name.
type NamedPort = (Option<String>, u16);

fn container_ports(container: &Value) -> Vec<NamedPort> {
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str().map(str::to_string),
                u16::try_from(p["containerPort"].as_u64()?).ok()?,
            ))
        })
        .collect()
}

#[test]
fn kubernetes_manifests_run_the_compose_topology_with_replicas() -> Result<()> {
    let compose = Compose::load()?;
    let k8s = Kustomization::load()?;
    for doc in k8s.docs.iter().map(|(_, d)| d) {
        let kind = doc["kind"].as_str().context("kind")?;
        let api = doc["apiVersion"].as_str().context("apiVersion")?;
        let expected = match kind {
            "Namespace" | "Service" | "ConfigMap" | "Secret" => "v1",
            "Deployment" | "StatefulSet" => "apps/v1",
            "PodDisruptionBudget" => "policy/v1",
            other => bail!("unexpected kind {other}"),
        };
        ensure!(api == expected, "{kind} has apiVersion {api}");
        ensure!(
            doc["metadata"]["name"].as_str().is_some(),
            "{kind} without name"
        );
    }

    let mut seen = BTreeSet::new();
    let mut workload_ports: BTreeMap<String, (Labels, Vec<NamedPort>)> = BTreeMap::new();
    for workload in k8s.of_kind(&["Deployment", "StatefulSet"]) {
        let name = workload["metadata"]["name"].as_str().context("name")?;
        let spec = &workload["spec"];
        let pod = &spec["template"]["spec"];
        let labels: BTreeMap<String, String> =
            serde_yaml_ng::from_value(spec["template"]["metadata"]["labels"].clone())?;
        let selector: BTreeMap<String, String> =
            serde_yaml_ng::from_value(spec["selector"]["matchLabels"].clone())?;
        ensure!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{name}: selector does not match the pod labels"
        );
        let mut ports = Vec::new();
        for container in pod["containers"].as_sequence().context("containers")? {
            ports.extend(container_ports(container));
            if container["image"].as_str() != Some(UPSHIFT_IMAGE) {
                continue;
            }
            let cname = container["name"].as_str().context("container name")?;
            let mut command = strings(&container["command"], "command")?;
            command.extend(strings(&container["args"], "args")?);
            // The compose service running the same program.
            let twin = match cname {
                "agent" => "agent-1",
                other => other,
            };
            let service = compose.service(twin)?;
            ensure!(
                command == service.command,
                "{name}/{cname}: {command:?} differs from compose's {:?}",
                service.command
            );
            seen.insert(twin.to_string());
            ensure!(
                container["securityContext"]["runAsNonRoot"].as_bool() == Some(true),
                "{name}/{cname} must run as non-root"
            );
            if let Some(port) = default_port(twin) {
                ensure!(
                    container_ports(container).iter().any(|(_, p)| *p == port),
                    "{name}/{cname}: containerPort {port} missing"
                );
                if twin != "bridge" {
                    ensure!(
                        container["readinessProbe"]["grpc"]["port"].as_u64()
                            == Some(u64::from(port)),
                        "{name}/{cname}: readiness should use the gRPC health service on {port}"
                    );
                }
            }
            // The same files at the same container paths as in compose.
            if twin.starts_with("agent-") {
                continue;
            }
            let claims: BTreeSet<String> = spec["volumeClaimTemplates"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|c| c["metadata"]["name"].as_str().map(str::to_string))
                .collect();
            let files = k8s.container_files(pod, &claims, container)?;
            for mount in service.mounts.iter().filter(|m| m.is_bind()) {
                let host = mount.host_path();
                let expected: Vec<(String, PathBuf)> = if host.is_dir() {
                    let mut out = Vec::new();
                    for entry in std::fs::read_dir(&host)? {
                        let entry = entry?;
                        if entry.path().is_dir() {
                            for inner in std::fs::read_dir(entry.path())? {
                                let inner = inner?;
                                out.push((
                                    format!(
                                        "{}/{}/{}",
                                        mount.target,
                                        entry.file_name().to_string_lossy(),
                                        inner.file_name().to_string_lossy()
                                    ),
                                    inner.path(),
                                ));
                            }
                        } else {
                            out.push((
                                format!("{}/{}", mount.target, entry.file_name().to_string_lossy()),
                                entry.path(),
                            ));
                        }
                    }
                    out
                } else {
                    vec![(mount.target.clone(), host)]
                };
                for (target, file) in expected {
                    ensure!(
                        files.get(&target) == Some(&file),
                        "{name}/{cname}: {target} should hold {} as in compose, has {:?}",
                        file.display(),
                        files.get(&target)
                    );
                }
            }
            for secret in &service.secrets {
                let target = format!("/run/secrets/{secret}");
                ensure!(
                    files.get(&target) == compose.secrets.get(secret),
                    "{name}/{cname}: secret {target} differs from compose"
                );
            }
        }
        if ["policy", "lock", "telemetry"].contains(&name) {
            ensure!(
                workload["kind"] == "Deployment" && spec["replicas"].as_u64() >= Some(2),
                "{name} should run as several stateless replicas"
            );
        }
        workload_ports.insert(name.to_string(), (labels, ports));
    }
    for name in ["graph", "policy", "lock", "telemetry", "bridge", "agent-1"] {
        ensure!(seen.contains(name), "no Kubernetes workload runs {name}");
    }

    // Services select a workload and forward to its container ports; the
    // names the configs use resolve to Services with the right ports.
    let mut service_ports: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for service in k8s.of_kind(&["Service"]) {
        let name = service["metadata"]["name"].as_str().context("name")?;
        let selector: BTreeMap<String, String> =
            serde_yaml_ng::from_value(service["spec"]["selector"].clone())?;
        let (_, ports) = workload_ports
            .values()
            .find(|(labels, _)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .with_context(|| format!("Service {name} selects no workload"))?;
        for port in service["spec"]["ports"].as_sequence().context("ports")? {
            let number = port["port"].as_u64().context("port")?;
            let target = &port["targetPort"];
            let resolved = match target {
                Value::String(port_name) => ports
                    .iter()
                    .find(|(n, _)| n.as_deref() == Some(port_name.as_str()))
                    .map(|(_, p)| *p),
                Value::Number(n) => ports
                    .iter()
                    .find(|(_, p)| Some(u64::from(*p)) == n.as_u64())
                    .map(|(_, p)| *p),
                _ => None,
            }
            .with_context(|| {
                format!("Service {name}: targetPort {target:?} is no container port")
            })?;
            ensure!(
                u64::from(resolved) == number,
                "Service {name}: port {number} forwards to {resolved}"
            );
            service_ports
                .entry(name.to_string())
                .or_default()
                .push(resolved);
        }
    }
    for keys in k8s.generated.values() {
        for file in keys
            .values()
            .filter(|f| f.extension().is_some_and(|e| e == "toml"))
        {
            let doc = toml::Value::Table(read(file)?.parse::<toml::Table>()?);
            let mut urls = Vec::new();
            service_urls(&doc, &mut urls);
            for url in urls {
                let (host, port) = host_port(&url)?;
                if host == "127.0.0.1" || host == "localhost" {
                    continue;
                }
                ensure!(
                    service_ports.get(&host).is_some_and(|p| p.contains(&port)),
                    "{}: {url} has no Kubernetes Service {host}:{port}",
                    file.display()
                );
            }
        }
    }

    // kubectl renders the kustomization (generators, paths) when present.
    if on_path("kubectl") {
        let output = Command::new("kubectl")
            .arg("kustomize")
            .arg(repo().join("deploy"))
            .output()?;
        ensure!(
            output.status.success(),
            "kubectl kustomize:\n{}",
            describe(&output)
        );
        let text = String::from_utf8(output.stdout)?;
        let rendered = serde_yaml_ng::Deserializer::from_str(&text)
            .map(Value::deserialize)
            .collect::<Result<Vec<_>, _>>()?;
        ensure!(
            rendered.len() == k8s.docs.len() + k8s.generated.len(),
            "kubectl kustomize rendered {} documents",
            rendered.len()
        );
        ensure!(
            rendered
                .iter()
                .filter(|d| d["kind"] != "Namespace")
                .all(|d| d["metadata"]["namespace"] == "upshift"),
            "every object belongs in the upshift namespace"
        );
    } else {
        eprintln!("NOTICE: kubectl not on PATH; the kustomization was checked structurally only");
    }
    Ok(())
}

/// Points `scheme://SERVICE:PORT` URLs of the compose network at local
/// addresses, and drops the OTLP endpoint (no collector runs here).
fn localise(value: &mut toml::Value, hosts: &BTreeMap<String, String>) {
    match value {
        toml::Value::String(s) => {
            for (from, to) in hosts {
                *s = s.replace(&format!("://{from}"), &format!("://{to}"));
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| localise(v, hosts)),
        toml::Value::Table(table) => {
            table.remove("otlp_endpoint");
            table.iter_mut().for_each(|(_, v)| localise(v, hosts));
        }
        _ => {}
    }
}

/// One simulated host of compose.yaml run as a local process, restarted
/// after each simulated reboot (exit code 100) as compose's `restart` does.
#[derive(Debug)]
struct SimulatedHost {
    name: String,
    root: PathBuf,
    log: PathBuf,
    child: Option<std::process::Child>,
    reboots: u32,
}

impl SimulatedHost {
    fn start(
        compose: &Compose,
        service: &Service,
        dir: &Path,
        hosts: &BTreeMap<String, String>,
        fail_versions: &[String],
    ) -> Result<Self> {
        let root = dir.join(&service.name);
        if !fail_versions.is_empty() {
            // A fragment after compose's: these releases fail to stage.
            let fragment = root.join("etc/upshift/agent.d/90-fail.toml");
            std::fs::create_dir_all(fragment.parent().context("parent")?)?;
            let mut os = toml::Table::new();
            os.insert("fail_versions".into(), fail_versions.to_vec().into());
            let mut doc = toml::Table::new();
            doc.insert("os".into(), os.into());
            std::fs::write(fragment, toml::to_string(&doc)?)?;
        }
        let map = compose.path_map(service)?;
        for (target, host) in &map {
            if !target.starts_with("/etc/upshift/agent.d/") {
                continue;
            }
            let mut doc = toml::Value::Table(read(host)?.parse::<toml::Table>()?);
            localise(&mut doc, hosts);
            let dest = root.join(target.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().context("parent")?)?;
            std::fs::write(dest, toml::to_string(&doc)?)?;
        }
        let defaults = root.join("usr/lib/upshift/agent.d");
        std::fs::create_dir_all(&defaults)?;
        for entry in std::fs::read_dir(repo().join("dist/usr/lib/upshift/agent.d"))? {
            let entry = entry?;
            std::fs::copy(entry.path(), defaults.join(entry.file_name()))?;
        }
        // What seed-and-run.sh does on the first start.
        let state = root.join("var/lib/upshift");
        std::fs::create_dir_all(&state)?;
        std::fs::copy(
            map_path(&map, "/etc/upshift/simulated-os.seed.json"),
            state.join("simulated-os.json"),
        )?;
        let mut host = Self {
            name: service.name.clone(),
            log: dir.join(format!("{}.log", service.name)),
            root,
            child: None,
            reboots: 0,
        };
        host.spawn()?;
        Ok(host)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(bin("upshift-agent")?)
                .arg("--root")
                .arg(&self.root)
                .arg("run")
                .env("RUST_LOG", "info")
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        Ok(())
    }

    /// Restarts the agent after a simulated reboot; fails on any other exit.
    fn supervise(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait()? {
            None => Ok(()),
            Some(status) if status.code() == Some(100) => {
                self.reboots += 1;
                self.spawn()
            }
            Some(status) => bail!("{} exited with {status}:\n{}", self.name, self.log_tail()),
        }
    }

    fn booted(&self) -> Result<String> {
        let state: serde_json::Value =
            serde_json::from_str(&read(&self.root.join("var/lib/upshift/simulated-os.json"))?)?;
        Ok(state["booted"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for SimulatedHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sum of a metric's samples whose labels contain every `label="value"`.
fn metric_sum(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The newest release of the compose metadata for x86_64.
fn newest_x86_release() -> Result<String> {
    let releases: serde_json::Value =
        serde_json::from_str(&read(&repo().join("deploy/metadata/stable/releases.json"))?)?;
    releases["releases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["commits"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["architecture"] == "x86_64")
        })
        .filter_map(|r| r["version"].as_str())
        .next_back()
        .map(str::to_string)
        .context("no x86_64 release")
}

/// Starts graph, policy, lock and telemetry with compose's command lines and
/// configuration (paths mapped, service names pointed at the local
/// addresses, data in `dir`), checks each with compose's health check, and
/// returns them with the host map for the agents.
async fn start_services(
    compose: &Compose,
    dir: &Workdir,
    etcd: &upshift_store::testing::EtcdServer,
) -> Result<(
    Vec<(&'static str, ServiceProcess)>,
    BTreeMap<String, String>,
)> {
    let mut hosts = BTreeMap::new();
    hosts.insert(
        "etcd:2379".to_string(),
        etcd.endpoint().trim_start_matches("http://").to_string(),
    );
    let mut services = Vec::new();
    for name in ["graph", "policy", "lock", "telemetry"] {
        let service = compose.service(name)?;
        let hosts_now = hosts.clone();
        let mut args = mapped_command_with(compose, service, dir.path(), |doc| {
            localise(doc, &hosts_now)
        })?;
        args.push("--data-dir".to_string());
        args.push(
            dir.path()
                .join(format!("{name}-data"))
                .display()
                .to_string(),
        );
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = ServiceProcess::start(name, dir.path(), &arg_refs)?;
        process.wait_ready(Duration::from_secs(60)).await?;
        // The compose health check, against the real service.
        let health = run("upshift", &["health".to_string(), process.url()])?;
        ensure!(
            health.status.success(),
            "{name}: compose's health check fails:\n{}",
            describe(&health)
        );
        let port = default_port(name).context("port")?;
        hosts.insert(format!("{name}:{port}"), process.addr().to_string());
        services.push((name, process));
    }
    Ok((services, hosts))
}

/// The compose topology without containers: a real etcd, the services with
/// compose's command lines and configuration files (container paths mapped,
/// service names pointed at local addresses), compose's health checks, and
/// the three simulated hosts updating to the newest release through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_topology_runs_as_local_processes() -> Result<()> {
    if upshift_store::testing::skip_etcd() {
        return Ok(());
    }
    let etcd = upshift_store::testing::EtcdServer::start()
        .await
        .context("etcd must be installed (cargo xtask test installs it)")?;
    let compose = Compose::load()?;
    let dir = Workdir::new()?;
    let (services, hosts) = start_services(&compose, &dir, &etcd).await?;

    let target = newest_x86_release()?;
    let mut agents = Vec::new();
    for service in compose
        .upshift_services()
        .filter(|s| s.command[0] == "upshift-agent")
    {
        agents.push(SimulatedHost::start(
            &compose,
            service,
            dir.path(),
            &hosts,
            &[],
        )?);
    }
    ensure!(agents.len() == 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let mut done = 0;
        for agent in &mut agents {
            agent.supervise()?;
            if agent.booted()? == target {
                done += 1;
            }
        }
        if done == agents.len() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let mut report = String::new();
            for agent in &agents {
                report.push_str(&format!(
                    "--- {} booted {} after {} reboots:\n{}\n",
                    agent.name,
                    agent.booted()?,
                    agent.reboots,
                    agent.log_tail()
                ));
            }
            for (name, process) in &services {
                report.push_str(&format!("--- {name}:\n{}\n", process.log_tail()));
            }
            bail!("the simulated hosts did not all reach {target}:\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for agent in &agents {
        ensure!(
            agent.reboots >= 1,
            "{} updated without a reboot",
            agent.name
        );
        eprintln!(
            "{} reached {target} after {} simulated reboot(s)",
            agent.name, agent.reboots
        );
    }

    // Every host reports steady on the new release to telemetry, and every
    // reboot slot is released again.
    let client = reqwest::Client::new();
    let url_of = |name: &str| {
        services
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.url())
            .unwrap_or_default()
    };
    let version_label = format!("version=\"{target}\"");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        for agent in &mut agents {
            agent.supervise()?;
        }
        let telemetry = client
            .get(format!("{}/metrics", url_of("telemetry")))
            .send()
            .await?
            .text()
            .await?;
        let lock = client
            .get(format!("{}/metrics", url_of("lock")))
            .send()
            .await?
            .text()
            .await?;
        let fleet = metric_sum(&telemetry, "upshift_telemetry_hosts", &[&version_label]);
        let holders = metric_sum(&lock, "upshift_lock_holders", &[]);
        if fleet == 3.0 && holders == 0.0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "telemetry counts {fleet} hosts on {target} and the lock {holders} holders:\n\
                 {telemetry}\n{lock}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // agent-1's bridge serves the agent's metrics socket, reached through
    // the volume both containers mount, as the Prometheus job scrapes it.
    let bridge = compose.service("bridge")?;
    let shared = bridge
        .mounts
        .iter()
        .find(|m| !m.is_bind())
        .context("the bridge shares no volume with an agent")?;
    let agent_mount = compose
        .service("agent-1")?
        .mounts
        .iter()
        .find(|m| m.source == shared.source)
        .context("agent-1 does not mount the bridge's volume")?;
    let agent_1 = agents
        .iter()
        .find(|a| a.name == "agent-1")
        .context("agent-1")?;
    let volume = vec![(
        shared.target.clone(),
        agent_1
            .root
            .join(agent_mount.target.trim_start_matches('/')),
    )];
    let args = mapped_command_with(&compose, bridge, dir.path(), |doc| {
        localise(doc, &hosts);
        map_toml(doc, &volume);
    })?;
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let bridge_process = ServiceProcess::start("bridge", dir.path(), &arg_refs)?;
    bridge_process.wait_ready(Duration::from_secs(30)).await?;
    let health = run("upshift", &["health".to_string(), bridge_process.url()])?;
    ensure!(
        health.status.success(),
        "bridge: compose's health check fails:\n{}",
        describe(&health)
    );
    let prometheus = yaml(&repo().join("deploy/prometheus/prometheus.yml"))?;
    let job = prometheus["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|j| j["job_name"].as_str() == Some("upshift-agent"))
        .context("upshift-agent job")?;
    let path = job["metrics_path"].as_str().context("metrics_path")?;
    let selector = strings(&job["params"]["selector"], "selector")?.join("");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exposition = loop {
        for agent in &mut agents {
            agent.supervise()?;
        }
        let response = client
            .get(format!("{}{path}", bridge_process.url()))
            .query(&[("selector", &selector)])
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        if status == 200 {
            break body;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the bridge answers {status} for the agent's metrics: {body}\n{}",
                bridge_process.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        metric_sum(&exposition, "upshift_agent_state", &[]) >= 1.0,
        "the agent's exposition through the bridge has no state:\n{exposition}"
    );
    upshift_integration::tools::promtool_check_metrics(&exposition)?;

    drop(bridge_process);
    drop(agents);
    drop(services);
    drop(etcd);
    Ok(())
}

/// The automatic halt as compose wires it: telemetry (on etcd) pauses the
/// rollout in policy with the admin token from the mounted secret when the
/// compose hosts fail to stage the release, and policy stops offering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_halt_pauses_a_failing_rollout() -> Result<()> {
    if upshift_store::testing::skip_etcd() {
        return Ok(());
    }
    let etcd = upshift_store::testing::EtcdServer::start()
        .await
        .context("etcd must be installed (cargo xtask test installs it)")?;
    let compose = Compose::load()?;
    let dir = Workdir::new()?;
    let (services, hosts) = start_services(&compose, &dir, &etcd).await?;
    let url_of = |name: &str| {
        services
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.url())
            .unwrap_or_default()
    };
    let target = newest_x86_release()?;
    let mut agents = Vec::new();
    for service in compose
        .upshift_services()
        .filter(|s| s.command[0] == "upshift-agent")
    {
        agents.push(SimulatedHost::start(
            &compose,
            service,
            dir.path(),
            &hosts,
            std::slice::from_ref(&target),
        )?);
    }
    let client = reqwest::Client::new();
    let halt_label = format!("version=\"{target}\"");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        for agent in &mut agents {
            agent.supervise()?;
        }
        let telemetry = client
            .get(format!("{}/metrics", url_of("telemetry")))
            .send()
            .await?
            .text()
            .await?;
        let policy = client
            .get(format!("{}/metrics", url_of("policy")))
            .send()
            .await?
            .text()
            .await?;
        let halts = metric_sum(&telemetry, "upshift_telemetry_halts", &[&halt_label]);
        let paused = metric_sum(&policy, "upshift_policy_paused_rollouts", &[]);
        if halts == 1.0 && paused >= 1.0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = agents.iter().map(SimulatedHost::log_tail).collect();
            bail!(
                "no halt of {target}: telemetry halts {halts}, policy paused {paused}\n\
                 telemetry log:\n{}\nagents:\n{}",
                services
                    .iter()
                    .find(|(n, _)| *n == "telemetry")
                    .map(|(_, p)| p.log_tail())
                    .unwrap_or_default(),
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No host installed the failing release, and policy offers it to none of
    // them any more (Cincinnati, as Zincati and agent-3 ask).
    for agent in &agents {
        let booted = agent.booted()?;
        ensure!(booted != target, "{} installed {target}", agent.name);
        let uuid = read(&agent.root.join("etc/upshift/agent.d/50-agent.toml"))?
            .parse::<toml::Table>()?["identity"]["node_uuid"]
            .as_str()
            .context("node_uuid")?
            .to_string();
        let graph: serde_json::Value = client
            .get(format!("{}/v1/graph", url_of("policy")))
            .query(&[
                ("basearch", "x86_64"),
                ("stream", "stable"),
                ("current_version", booted.as_str()),
                ("node_uuid", uuid.as_str()),
            ])
            .send()
            .await?
            .json()
            .await?;
        let nodes = graph["nodes"].as_array().context("nodes")?;
        let index = nodes
            .iter()
            .position(|n| n["version"] == target.as_str())
            .context("target node")?;
        let edges = graph["edges"].as_array().context("edges")?;
        ensure!(!edges.is_empty(), "policy serves a graph without edges");
        let offered = edges.iter().any(|e| e[1].as_u64() == Some(index as u64));
        ensure!(
            !offered,
            "{}: policy still offers {target} after the halt",
            agent.name
        );
    }
    drop(agents);
    drop(services);
    drop(etcd);
    Ok(())
}
