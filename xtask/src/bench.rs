//! `cargo xtask bench <name>`: benchmarks that print and save figures.

use anyhow::{Result, bail};

/// Runs the named benchmark.
pub fn run(args: &[String]) -> Result<()> {
    let Some(name) = args.first() else {
        bail!("usage: cargo xtask bench <graph|lock>");
    };
    bail!("unknown benchmark {name:?}")
}
