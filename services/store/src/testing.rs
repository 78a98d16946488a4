//! Test helpers: a real etcd server in a temporary directory, in plain
//! text or with TLS / mutual TLS on its client URL, optionally with
//! username/password authentication enabled.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::etcd::{EtcdOptions, EtcdStore, EtcdTls};
use crate::{SharedStore, Store};

/// Why a test etcd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EtcdServerError {
    /// No `etcd` binary on `PATH`.
    #[error(
        "etcd not found: install Debian's etcd-server (cargo xtask test does this when run as root)"
    )]
    NotFound,
    /// Local I/O failed.
    #[error("starting etcd failed")]
    Io(#[from] std::io::Error),
    /// etcd did not answer in time.
    #[error("etcd did not become ready; log: {0}")]
    NotReady(PathBuf),
}

/// `true` when etcd tests should be skipped (`UPSHIFT_SKIP_ETCD=1`); prints
/// a loud notice. Without it, a missing etcd fails the tests.
pub fn skip_etcd() -> bool {
    let skip = std::env::var("UPSHIFT_SKIP_ETCD").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("\n!!!!!!!! UPSHIFT_SKIP_ETCD=1: SKIPPING etcd tests !!!!!!!!\n");
    }
    skip
}

/// TLS of a test etcd's client URL (all PEM).
#[derive(Clone)]
pub struct EtcdServerTls {
    /// The server's certificate (`--cert-file`); it must name `127.0.0.1`.
    pub cert_pem: Vec<u8>,
    /// The server's private key (`--key-file`).
    pub key_pem: Vec<u8>,
    /// When set, etcd requires client certificates signed by this CA
    /// (`--client-cert-auth --trusted-ca-file`).
    pub client_ca_pem: Option<Vec<u8>>,
    /// What [`EtcdServer::options`] (and the readiness probe) connect with:
    /// the CA of `cert_pem`, and a client certificate when
    /// `client_ca_pem` is set.
    pub client: EtcdTls,
}

impl std::fmt::Debug for EtcdServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdServerTls")
            .field("client_cert_auth", &self.client_ca_pem.is_some())
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// A single-member etcd running on loopback ports in a temporary directory.
/// It is killed on drop; its log stays in the directory, whose path is
/// printed if the test panicked.
#[derive(Debug)]
pub struct EtcdServer {
    dir: tempfile::TempDir,
    binary: PathBuf,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdServerTls>,
    extra_args: Vec<String>,
    user: Option<(String, String)>,
    child: Option<Child>,
}

/// How to start a test etcd: [`EtcdServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct EtcdServerConfig {
    /// TLS (or mutual TLS) on the client URL; plain text when `None`.
    pub tls: Option<EtcdServerTls>,
    /// More etcd flags, e.g. `["--auth-token-ttl", "1"]`.
    pub extra_args: Vec<String>,
}

impl EtcdServer {
    /// Starts etcd in plain text and waits until it answers.
    pub async fn start() -> Result<Self, EtcdServerError> {
        Self::start_with(EtcdServerConfig::default()).await
    }

    /// Starts etcd serving its client URL over TLS (`https://`), with
    /// client certificate authentication when `tls.client_ca_pem` is set,
    /// and waits until it answers to `tls.client`.
    pub async fn start_tls(tls: EtcdServerTls) -> Result<Self, EtcdServerError> {
        Self::start_with(EtcdServerConfig {
            tls: Some(tls),
            ..EtcdServerConfig::default()
        })
        .await
    }

    /// Starts etcd as `config` says and waits until it answers.
    pub async fn start_with(config: EtcdServerConfig) -> Result<Self, EtcdServerError> {
        let binary = find_on_path("etcd").ok_or(EtcdServerError::NotFound)?;
        let dir = tempfile::Builder::new().prefix("upshift-etcd-").tempdir()?;
        if let Some(tls) = &config.tls {
            std::fs::write(dir.path().join("server.pem"), &tls.cert_pem)?;
            std::fs::write(dir.path().join("server-key.pem"), &tls.key_pem)?;
            if let Some(ca) = &tls.client_ca_pem {
                std::fs::write(dir.path().join("client-ca.pem"), ca)?;
            }
        }
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let mut server = Self {
            dir,
            binary,
            client_port,
            peer_port,
            tls: config.tls,
            extra_args: config.extra_args,
            user: None,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// The client URL, e.g. `http://127.0.0.1:40123` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// Credentials [`options`](Self::options) (and the readiness probe of
    /// [`restart`](Self::restart)) use from now on: set this once auth is
    /// enabled on the server.
    pub fn set_user(&mut self, user: Option<(String, String)>) {
        self.user = user;
    }

    /// Path of the server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Store options pointing at this server, with short deadlines, its
    /// client TLS material and the credentials of [`set_user`](Self::set_user).
    pub fn options(&self, key_prefix: &str) -> EtcdOptions {
        EtcdOptions {
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            key_prefix: key_prefix.to_owned(),
            tls: self.tls.as_ref().map(|t| t.client.clone()),
            user: self.user.clone(),
            ..EtcdOptions::new(vec![self.endpoint()])
        }
    }

    /// A store connected to this server.
    pub async fn store(&self, key_prefix: &str) -> Result<SharedStore, crate::StoreError> {
        Ok(std::sync::Arc::new(
            EtcdStore::connect(self.options(key_prefix)).await?,
        ))
    }

    /// Kills the server (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data and ports.
    pub async fn restart(&mut self) -> Result<(), EtcdServerError> {
        self.stop();
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<(), EtcdServerError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            let dir = self.dir.path();
            command
                .arg("--cert-file")
                .arg(dir.join("server.pem"))
                .arg("--key-file")
                .arg(dir.join("server-key.pem"));
            if tls.client_ca_pem.is_some() {
                command
                    .arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(dir.join("client-ca.pem"));
            }
        }
        let child = command
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--name",
                "default",
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), EtcdServerError> {
        let mut options = self.options("");
        options.request_timeout = Duration::from_millis(500);
        options.connect_timeout = Duration::from_millis(500);
        for _ in 0..60 {
            if let Some(child) = self.child.as_mut()
                && child.try_wait()?.is_some()
            {
                break;
            }
            if let Ok(store) = EtcdStore::connect(options.clone()).await
                && store.get("/upshift-ready-probe").await.is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(EtcdServerError::NotReady(self.log_path()))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::TempDir::new().expect("temp dir"));
            eprintln!("etcd log kept at {}", dir.keep().join("etcd.log").display());
        }
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A loopback port that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(listener.local_addr()?.port())
}

/// Opens a test's store; every call reaches the same data.
pub type Opener = std::sync::Arc<dyn Fn() -> SharedStore + Send + Sync>;

/// An in-memory store ([`crate::memory::MemStore`]).
pub fn mem_opener() -> Opener {
    let store: SharedStore = std::sync::Arc::new(crate::memory::MemStore::new());
    std::sync::Arc::new(move || store.clone())
}

/// The embedded (redb) store in a temporary directory, kept by the
/// returned guard.
pub fn embedded_opener() -> (Opener, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store: SharedStore = std::sync::Arc::new(
        crate::embedded::EmbeddedStore::open(&dir.path().join("store.redb"))
            .expect("a fresh embedded store"),
    );
    (std::sync::Arc::new(move || store.clone()), dir)
}

/// A real etcd on loopback, kept running by the returned guard; `None`
/// when etcd tests are skipped ([`skip_etcd`]).
pub async fn etcd_opener() -> Option<(Opener, EtcdServer)> {
    if skip_etcd() {
        return None;
    }
    let server = EtcdServer::start()
        .await
        .expect("etcd must be installed (cargo xtask test installs it)");
    let store = server.store("/test/").await.expect("connecting to etcd");
    Some((std::sync::Arc::new(move || store.clone()), server))
}

/// `on_each_store!(name, body)` generates `mod name { mem, embedded, etcd }`,
/// one multi-threaded `#[tokio::test]` per store, each calling
/// `body(opener: Opener)`.
#[macro_export]
macro_rules! on_each_store {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mem() {
                super::$body($crate::testing::mem_opener()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let (opener, _dir) = $crate::testing::embedded_opener();
                super::$body(opener).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                let Some((opener, _etcd)) = $crate::testing::etcd_opener().await else {
                    return;
                };
                super::$body(opener).await;
            }
        }
    };
}
