//! A three-member (or any size) etcd cluster on loopback ports in a temp
//! dir, whose members can be killed and restarted one at a time.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A running etcd cluster; every member is killed on drop. The temp dir
/// (data and one log per member) is kept and printed when a test panics.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: Option<tempfile::TempDir>,
    binary: PathBuf,
    members: Vec<Member>,
}

/// Distinct free loopback ports (all bound at once, then released).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn find_etcd() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .context("etcd not found on PATH: install Debian's etcd-server (cargo xtask test does)")
}

impl EtcdCluster {
    /// Starts `size` members with a static `--initial-cluster` and waits
    /// until each answers `/health`.
    pub async fn start(size: usize) -> Result<Self> {
        let binary = find_etcd()?;
        let dir = tempfile::Builder::new()
            .prefix("upshift-etcd-cluster-")
            .tempdir()?;
        let ports = free_ports(size * 2)?;
        let members = (0..size)
            .map(|i| Member {
                name: format!("member-{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let mut cluster = Self {
            dir: Some(dir),
            binary,
            members,
        };
        for index in 0..size {
            cluster.spawn(index)?;
        }
        for index in 0..size {
            cluster.wait_healthy(index, Duration::from_secs(30)).await?;
        }
        Ok(cluster)
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("cluster dir").path()
    }

    /// The log file of member `index`.
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.path()
            .join(format!("{}.log", self.members[index].name))
    }

    /// Every member's client URL, comma-separated (the services' `--etcd`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(index))?;
        let data = self
            .path()
            .join(format!("{}.data", self.members[index].name));
        let member = &self.members[index];
        let (client, peer) = (member.client_url(), member.peer_url());
        let child = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(&data)
            .args(["--name", &member.name])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "upshift-it"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting etcd {}", member.name))?;
        self.members[index].child = Some(child);
        Ok(())
    }

    /// Waits until member `index` answers `GET /health` with `"health":"true"`.
    pub async fn wait_healthy(&mut self, index: usize, timeout: Duration) -> Result<()> {
        let url = format!("{}/health", self.members[index].client_url());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.members[index].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "etcd {} exited with {status}; log {}",
                    self.members[index].name,
                    self.log_path(index).display()
                );
            }
            if let Ok(response) = client.get(&url).send().await
                && let Ok(body) = response.text().await
                && body.contains("\"health\":\"true\"")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd {} not healthy after {timeout:?}; log {}",
                    self.members[index].name,
                    self.log_path(index).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the current leader, asked of the running members
    /// (`/v3/maintenance/status`: the member whose id is the leader's).
    pub async fn leader(&self) -> Result<usize> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let mut ids = Vec::with_capacity(self.members.len());
        let mut leader = None;
        for member in &self.members {
            if member.child.is_none() {
                ids.push(None);
                continue;
            }
            let status: serde_json::Value = client
                .post(format!("{}/v3/maintenance/status", member.client_url()))
                .body("{}")
                .send()
                .await?
                .json()
                .await?;
            ids.push(status["header"]["member_id"].as_str().map(str::to_string));
            if let Some(l) = status["leader"].as_str() {
                leader = Some(l.to_string());
            }
        }
        let leader = leader.context("no member knows a leader")?;
        ids.iter()
            .position(|id| id.as_deref() == Some(leader.as_str()))
            .with_context(|| format!("leader {leader} is not a running member"))
    }

    /// Kills member `index` (SIGKILL; its data stays).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `index` again on its data and ports and waits until
    /// it is healthy (rejoined).
    pub async fn restart(&mut self, index: usize) -> Result<()> {
        self.kill(index);
        self.spawn(index)?;
        self.wait_healthy(index, Duration::from_secs(30)).await
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("--- keeping etcd cluster dir {}", dir.keep().display());
        }
    }
}
