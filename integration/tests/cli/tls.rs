//! The CLI over HTTPS: a private CA, and an admin client certificate in
//! place of the admin token.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use upshift_integration::{ServiceProcess, Workdir};

use crate::support::{make_certificates, run_cli};

#[tokio::test]
async fn https_with_a_private_ca_and_an_admin_client_certificate() -> Result<()> {
    if !upshift_integration::tools::on_path("openssl") {
        eprintln!("NOTICE: openssl not on PATH; skipping the TLS test");
        return Ok(());
    }
    let dir = Workdir::new()?;
    make_certificates(dir.path())?;
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let lock = start_tls_lock(dir.path())?;
    let https = format!("https://{}", lock.addr());
    let ca = file("ca.pem");
    wait_serving(&https, &ca).await?;

    let untrusted = run_cli(&["health", &https], &[])?.expect(3)?;
    assert!(
        untrusted.stderr.contains("--ca-file"),
        "{}",
        untrusted.stderr
    );
    let plain = run_cli(&["health", &lock.url(), "--timeout", "5s"], &[])?.expect(3)?;
    assert!(plain.stderr.contains(&lock.url()), "{}", plain.stderr);

    let pause = [
        "lock",
        "pause",
        "workers",
        "--reason",
        "tls test",
        "--lock",
        &https,
        "--ca-file",
        &ca,
    ];
    let refused = run_cli(&pause, &[])?.expect(1)?;
    assert!(
        refused.stderr.contains("unauthenticated"),
        "{}",
        refused.stderr
    );
    let mut with_cert = pause.to_vec();
    let (cert, key) = (file("client.pem"), file("client.key"));
    with_cert.extend(["--client-cert", &cert, "--client-key", &key, "-o", "json"]);
    let paused = run_cli(&with_cert, &[])?.expect(0)?.json()?;
    assert_eq!(paused["paused"], true);
    check_audit_and_a_cert_without_key(&https, &ca, &cert, &key)
}

/// A lock service on TLS with a client CA, taking the certificate name
/// `ops-admin` as an admin (certificates from [`make_certificates`] in `dir`).
fn start_tls_lock(dir: &Path) -> Result<ServiceProcess> {
    let file = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let config = dir.join("lock.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nadmin_cert_names = [\"ops-admin\"]\ndata_dir = {:?}\n\
             [server.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
             [default]\nslots = 1\n",
            file("lock-data"),
            file("server.pem"),
            file("server.key"),
            file("ca.pem"),
        ),
    )?;
    ServiceProcess::start(
        "lock",
        dir,
        &["serve", "lock", "--config", config.to_str().unwrap()],
    )
}

/// Waits for `upshift health` of the HTTPS URL, trusting `ca`.
async fn wait_serving(https: &str, ca: &str) -> Result<()> {
    let mut serving = false;
    for _ in 0..200 {
        if run_cli(&["health", https, "--ca-file", ca], &[])?.code == Some(0) {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serving, "the TLS lock service never became healthy");
    Ok(())
}

/// The audit names the certificate, and a certificate without its key is a
/// usage error.
fn check_audit_and_a_cert_without_key(https: &str, ca: &str, cert: &str, key: &str) -> Result<()> {
    let tls = ["--lock", https, "--ca-file", ca, "--client-cert", cert];
    let mut audit = vec!["lock", "audit"];
    audit.extend(tls);
    audit.extend(["--client-key", key, "-o", "json"]);
    let audit = run_cli(&audit, &[])?.expect(0)?.json()?;
    assert_eq!(audit["entries"][0]["actor"], "cert:ops-admin", "{audit}");
    let mut list = vec!["lock", "list"];
    list.extend(tls);
    run_cli(&list, &[])?.expect(64)?;
    Ok(())
}
