//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `test`: provides every tool the suite needs (protoc, etcd, promtool,
//!   grpcurl, dbus-daemon), then runs all tests of the workspace.
//! - `dev [--release] [-- upshift dev args]`: builds `upshift` (optimized
//!   with `--release`, for fleets of thousands) and runs `upshift dev` (the
//!   whole mesh on the bundled fixtures).
//! - `bench <graph|lock|...>`: builds in release mode and runs a benchmark
//!   that prints and saves its figures under `target/bench/`.
//! - `lint`: `cargo fmt --check` and `cargo clippy --all-targets -- -D
//!   warnings` over the workspace, with protoc provided (a plain `cargo
//!   clippy` cannot build etcd-client's protos on a machine without protoc).

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

mod bench;
mod tools;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "test" => test(&rest),
        "dev" => dev(&rest),
        "bench" => bench::run(&rest),
        "lint" => lint(),
        "tools" => tools::Tools::provide().map(|t| t.print()),
        _ => {
            eprintln!(
                "usage: cargo xtask <test [cargo test args]|dev [--release] [-- upshift dev args]|bench <name>|lint|tools>"
            );
            bail!("unknown task {task:?}")
        }
    }
}

/// Runs the whole test suite with every tool it needs provided.
fn test(extra: &[String]) -> Result<()> {
    let tools = tools::Tools::provide()?;
    tools.print();
    // The integration tests start the real binaries: build them first.
    tools.cargo(&["build", "--workspace", "--bins"])?;
    let mut args: Vec<&str> = Vec::new();
    if tools::on_path("cargo-nextest") {
        args.extend(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        args.extend(["test", "--workspace", "--no-fail-fast"]);
    }
    args.extend(extra.iter().map(String::as_str));
    tools.cargo(&args).context("tests failed")
}

/// Formatting and clippy, as `.ci/run` checks them.
fn lint() -> Result<()> {
    let tools = tools::Tools::provide_build_only()?;
    tools
        .cargo(&["fmt", "--all", "--check"])
        .context("cargo fmt --check found unformatted code (run cargo fmt)")?;
    tools.cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

/// Builds and runs the dev mesh.
fn dev(extra: &[String]) -> Result<()> {
    let tools = tools::Tools::provide_build_only()?;
    // `cargo xtask dev --release -- ...`: an optimized build; what follows
    // (an optional `--`) goes to `upshift dev`.
    let release = extra.first().is_some_and(|a| a == "--release");
    let extra = &extra[usize::from(release)..];
    let extra = match extra.first() {
        Some(a) if a == "--" => &extra[1..],
        _ => extra,
    };
    let profile = if release { "release" } else { "debug" };
    let mut build = vec!["build", "--bin", "upshift"];
    if release {
        build.push("--release");
    }
    tools.cargo(&build)?;
    let bin = tools::target_dir().join(profile).join("upshift");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("dev");
    cmd.arg("--fixtures")
        .arg(tools::workspace_root().join("../shared/fixtures"));
    cmd.arg("--workdir").arg(tools::target_dir().join("dev"));
    cmd.args(extra);
    tools.apply_env(&mut cmd);
    let status = cmd.status().context("running upshift dev")?;
    if !status.success() {
        bail!("upshift dev exited with {status}");
    }
    Ok(())
}
