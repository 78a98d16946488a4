//! Times building every scope of the stable stream for each fixture revision
//! of `updates.json`. Prints one JSON object (used by `cargo xtask bench graph`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use upshift_graph::catalog::Catalog;
use upshift_graph::source::{RawMetadata, SourceEvent};

fn main() {
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/fcos/stable");
    let releases =
        Bytes::from(std::fs::read(fixtures.join("releases.json")).expect("releases.json"));
    let mut revisions: Vec<PathBuf> = std::fs::read_dir(fixtures.join("updates-history"))
        .expect("updates-history")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    revisions.sort();
    let rounds = 200u32;
    let mut per_revision = Vec::new();
    for path in &revisions {
        let updates = Bytes::from(std::fs::read(path).expect("updates"));
        let mut best = Duration::MAX;
        let mut total = Duration::ZERO;
        for _ in 0..rounds {
            // A fresh catalog each round so every round really builds.
            let mut catalog =
                Catalog::new([("stable".to_string(), String::new(), Vec::new())], None);
            let event = SourceEvent {
                stream: "stable".into(),
                result: Ok(RawMetadata {
                    releases: releases.clone(),
                    updates: updates.clone(),
                    releases_from: "releases.json".into(),
                    updates_from: path.display().to_string(),
                }),
            };
            let start = Instant::now();
            catalog.apply(event, SystemTime::UNIX_EPOCH);
            let took = start.elapsed();
            best = best.min(took);
            total += took;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        per_revision.push(serde_json::json!({
            "revision": name,
            "mean_us": (total / rounds).as_secs_f64() * 1e6,
            "min_us": best.as_secs_f64() * 1e6,
        }));
    }
    let means: Vec<f64> = per_revision
        .iter()
        .map(|r| r["mean_us"].as_f64().unwrap())
        .collect();
    let report = serde_json::json!({
        "what": "parse + build all scopes (x86_64, aarch64 x checksum, oci) + serialize, per updates.json revision",
        "rounds": rounds,
        "revisions": per_revision,
        "max_mean_us": means.iter().cloned().fold(0.0, f64::max),
        "avg_mean_us": means.iter().sum::<f64>() / means.len() as f64,
    });
    println!("{report}");
}
