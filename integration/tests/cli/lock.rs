//! `upshift lock list|show|release|slots|pause|resume|audit`.

use anyhow::{Context, Result};

use crate::support::{Mesh, fleetlock_pre_reboot, golden};

#[tokio::test]
async fn lock_list_show_release_and_admin_changes() -> Result<()> {
    let mesh = Mesh::start().await?;
    let urls = mesh.urls();
    fleetlock_pre_reboot(&mesh.lock, "node-a", "workers").await?;
    fleetlock_pre_reboot(&mesh.lock, "node-b", "db").await?;

    check_list_and_show(&mesh, &urls)?;
    check_release(&mesh, &urls)?;
    check_admin_changes(&mesh)?;
    let audit = mesh
        .admin(&["lock", "audit", "--group", "workers", "-o", "json"])?
        .expect(0)?
        .json()?;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        // The second force-release found nothing held: audited all the same.
        [
            "resume",
            "pause",
            "set-slots",
            "force-release",
            "force-release",
            "grant"
        ],
        "{audit}"
    );
    let outcomes: Vec<&str> = audit["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["action"] == "force-release")
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["held nothing", "released"], "{audit}");
    Ok(())
}

/// `lock list` and `lock show` with node-a holding the workers' slot.
fn check_list_and_show(mesh: &Mesh, urls: &[(String, &'static str)]) -> Result<()> {
    let list = mesh.cli(&["lock", "list"])?.expect(0)?;
    golden("lock-list", &list.stdout, urls)?;
    let show = mesh.cli(&["lock", "show", "workers"])?.expect(0)?;
    golden("lock-show", &show.stdout, urls)?;
    let json = mesh
        .cli(&["lock", "list", "-o", "json"])?
        .expect(0)?
        .json()?;
    let groups = json["groups"].as_array().context("groups")?;
    let names: Vec<&str> = groups.iter().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(names, ["db", "workers"]);
    let workers = &groups[1];
    assert_eq!(workers["total_slots"], 1);
    assert_eq!(workers["holders"][0]["id"], "node-a");
    assert_eq!(workers["holders"][0]["method"], "fleetlock");
    assert!(workers["holders"][0]["age_seconds"].is_u64());
    Ok(())
}

/// `lock release` needs the admin token and is idempotent.
fn check_release(mesh: &Mesh, urls: &[(String, &'static str)]) -> Result<()> {
    let release = [
        "lock",
        "release",
        "workers",
        "node-a",
        "--reason",
        "stuck host",
    ];
    let refused = mesh.cli(&release)?.expect(1)?;
    assert!(
        refused
            .stderr
            .contains(&format!("lock service at {}", mesh.lock.url())),
        "{}",
        refused.stderr
    );
    let released = mesh.admin(&release)?.expect(0)?;
    golden("lock-release", &released.stdout, urls)?;
    let again = mesh.admin(&release)?.expect(0)?;
    assert_eq!(again.stdout, "node-a held no slot in workers\n");
    let json = mesh
        .cli(&["lock", "show", "workers", "-o", "json"])?
        .expect(0)?
        .json()?;
    assert_eq!(json["holders"], serde_json::json!([]));
    Ok(())
}

/// `lock slots`, `lock pause` and `lock resume` on the workers group.
fn check_admin_changes(mesh: &Mesh) -> Result<()> {
    let slots = mesh
        .admin(&[
            "lock", "slots", "workers", "3", "--reason", "bigger", "-o", "json",
        ])?
        .expect(0)?
        .json()?;
    assert_eq!(slots["total_slots"], 3);
    mesh.cli(&["lock", "slots", "workers", "0", "--reason", "x"])?
        .expect(64)?;
    let paused = mesh
        .admin(&[
            "lock",
            "pause",
            "workers",
            "--reason",
            "change freeze",
            "-o",
            "json",
        ])?
        .expect(0)?
        .json()?;
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["pause_reason"], "change freeze");
    let resumed = mesh
        .admin(&[
            "lock", "resume", "workers", "--reason", "done", "-o", "json",
        ])?
        .expect(0)?
        .json()?;
    assert_eq!(resumed["paused"], false);
    Ok(())
}
