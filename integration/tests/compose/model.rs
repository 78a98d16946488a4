//! compose.yaml as the tests see it: services with their mounts, ports,
//! secrets and dependencies, plus the top-level volumes and secrets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use serde_yaml_ng::Value;

use crate::{OTHER_PORTS, default_port, repo, yaml};

/// One bind mount or named volume of a service.
#[derive(Debug, Clone)]
pub struct Mount {
    /// `./relative/path` (bind) or a volume name.
    pub source: String,
    /// Path inside the container.
    pub target: String,
    pub read_only: bool,
}

impl Mount {
    pub fn is_bind(&self) -> bool {
        self.source.starts_with("./") || self.source.starts_with('/')
    }

    pub fn host_path(&self) -> PathBuf {
        repo().join(self.source.trim_start_matches("./"))
    }
}

/// One published port.
#[derive(Debug, Clone)]
pub struct Port {
    pub host_ip: Option<String>,
    pub host: u16,
    pub container: u16,
}

/// What the tests need of one compose service.
#[derive(Debug, Clone, Default)]
pub struct Service {
    pub name: String,
    pub image: Option<String>,
    pub build: Option<(String, String)>,
    pub entrypoint: Vec<String>,
    pub command: Vec<String>,
    pub mounts: Vec<Mount>,
    pub secrets: Vec<String>,
    pub ports: Vec<Port>,
    pub healthcheck: Vec<String>,
    pub depends_on: Vec<String>,
}

pub fn strings(value: &Value, what: &str) -> Result<Vec<String>> {
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
pub struct Compose {
    pub services: BTreeMap<String, Service>,
    pub volumes: BTreeSet<String>,
    pub secrets: BTreeMap<String, PathBuf>,
}

impl Compose {
    pub fn load() -> Result<Self> {
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
    pub fn upshift_services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().filter(|s| {
            matches!(
                s.command.first().map(String::as_str),
                Some("upshift" | "upshift-agent")
            )
        })
    }

    /// The services that run `upshift-agent` (the simulated hosts).
    pub fn agents(&self) -> impl Iterator<Item = &Service> {
        self.upshift_services()
            .filter(|s| s.command[0] == "upshift-agent")
    }

    pub fn service(&self, name: &str) -> Result<&Service> {
        self.services
            .get(name)
            .with_context(|| format!("compose.yaml has no service {name}"))
    }

    /// Container path -> repository path of a service's bind mounts and secrets.
    pub fn path_map(&self, service: &Service) -> Result<Vec<(String, PathBuf)>> {
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
    pub fn known_ports(&self, service: &str) -> Result<Vec<u16>> {
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
    pub fn dependency_closure(&self, name: &str) -> BTreeSet<String> {
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
        service.mounts.push(parse_mount(name, &volume)?);
    }
    service.secrets = strings(&body["secrets"], &format!("{name}.secrets"))?;
    for port in strings(&body["ports"], &format!("{name}.ports"))? {
        service.ports.push(parse_port(name, &port)?);
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

/// A `SOURCE:TARGET[:MODE]` volume of service `name`.
fn parse_mount(name: &str, volume: &str) -> Result<Mount> {
    let parts: Vec<&str> = volume.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [s, t] => (*s, *t, ""),
        [s, t, m] => (*s, *t, *m),
        _ => bail!("{name}: volume {volume:?} is not SOURCE:TARGET[:MODE]"),
    };
    Ok(Mount {
        source: source.to_string(),
        target: target.to_string(),
        read_only: mode.split(',').any(|m| m == "ro"),
    })
}

/// An `[IP:]HOST:CONTAINER` published port of service `name`.
fn parse_port(name: &str, port: &str) -> Result<Port> {
    let parts: Vec<&str> = port.split(':').collect();
    let (host_ip, host, container) = match parts.as_slice() {
        [h, c] => (None, *h, *c),
        [ip, h, c] => (Some(ip.to_string()), *h, *c),
        _ => bail!("{name}: port {port:?} is not [IP:]HOST:CONTAINER"),
    };
    Ok(Port {
        host_ip,
        host: host.parse().with_context(|| format!("{name}: {port}"))?,
        container: container
            .parse()
            .with_context(|| format!("{name}: {port}"))?,
    })
}
