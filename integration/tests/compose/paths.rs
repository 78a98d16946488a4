//! Container paths mapped to the repository, the services' configuration
//! files and command lines so mapped, and the service URLs inside them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use crate::model::{Compose, Service};
use crate::{read, repo};

/// Maps a container path to the repository path mounted there (unchanged
/// when no mount covers it).
pub fn map_path(map: &[(String, PathBuf)], path: &str) -> String {
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
pub fn map_toml(value: &mut toml::Value, map: &[(String, PathBuf)]) {
    match value {
        toml::Value::String(s) => *s = map_path(map, s),
        toml::Value::Array(items) => items.iter_mut().for_each(|v| map_toml(v, map)),
        toml::Value::Table(table) => table.iter_mut().for_each(|(_, v)| map_toml(v, map)),
        _ => {}
    }
}

/// The `--config` file of a command line, as a container path.
pub fn config_arg(command: &[String]) -> Option<&str> {
    command
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].as_str())
}

/// A service's config file from the repository, parsed.
pub fn service_config(compose: &Compose, service: &Service) -> Result<toml::Table> {
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

/// The command line of `service` with its config rewritten to repository
/// paths (written into `dir`) and every other mounted path mapped.
pub fn mapped_command(compose: &Compose, service: &Service, dir: &Path) -> Result<Vec<String>> {
    mapped_command_with(compose, service, dir, |_| {})
}

/// [`mapped_command`], with `edit` applied to the config document.
pub fn mapped_command_with(
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

/// Copies the image's agent defaults (`dist/usr/lib/upshift/agent.d`) to
/// where the container has them, under `root`.
pub fn install_agent_defaults(root: &Path) -> Result<()> {
    let defaults = repo().join("dist/usr/lib/upshift/agent.d");
    let into = root.join("usr/lib/upshift/agent.d");
    std::fs::create_dir_all(&into)?;
    for entry in std::fs::read_dir(&defaults)? {
        let entry = entry?;
        std::fs::copy(entry.path(), into.join(entry.file_name()))?;
    }
    Ok(())
}

/// Every `http://HOST:PORT` in a TOML file.
pub fn urls_in_file(path: &Path) -> Result<Vec<String>> {
    let doc = toml::Value::Table(read(path)?.parse::<toml::Table>()?);
    let mut urls = Vec::new();
    service_urls(&doc, &mut urls);
    Ok(urls)
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

pub fn host_port(url: &str) -> Result<(String, u16)> {
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
pub fn check_service_url(compose: &Compose, from: &str, url: &str) -> Result<()> {
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
