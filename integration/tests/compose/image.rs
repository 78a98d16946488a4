//! The image every Upshift service uses (Containerfile, .dockerignore), and
//! the files, volumes, secrets and dependencies compose.yaml refers to.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};

use crate::model::{Compose, Service};
use crate::{DEFAULT_PORTS, UPSHIFT_IMAGE, read, repo};

#[test]
fn services_use_the_image_the_containerfile_builds() -> Result<()> {
    let compose = Compose::load()?;
    check_builds(&compose)?;
    let containerfile = read(&repo().join("Containerfile"))?;
    check_build_stages(&containerfile)?;
    check_copy_sources(&containerfile)?;
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

/// Every service has an image or a build context; the Upshift services and
/// agents are built from ./Containerfile into the one image.
fn check_builds(compose: &Compose) -> Result<()> {
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
    Ok(())
}

/// A build stage on the pinned Rust and a runtime stage holding both
/// binaries.
fn check_build_stages(containerfile: &str) -> Result<()> {
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
    Ok(())
}

/// COPY sources from the build context exist (and are not ignored).
fn check_copy_sources(containerfile: &str) -> Result<()> {
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
    Ok(())
}

#[test]
fn mounted_files_volumes_and_dependencies_exist() -> Result<()> {
    let compose = Compose::load()?;
    let mut used_volumes = BTreeSet::new();
    for service in compose.services.values() {
        check_mounts(&compose, service, &mut used_volumes)?;
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

/// Bind mounts are existing, read-only repository files; named volumes are
/// declared (and recorded in `used_volumes`).
fn check_mounts(
    compose: &Compose,
    service: &Service,
    used_volumes: &mut BTreeSet<String>,
) -> Result<()> {
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
    Ok(())
}
