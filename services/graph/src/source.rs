//! Metadata sources: a watched directory or polled URLs. Each source task
//! sends the raw bytes of `releases.json` and `updates.json` whenever they may
//! have changed; the catalog decides whether anything really did.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use notify::Watcher;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::{Location, ValidStream};

/// Both metadata files of a stream, with where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMetadata {
    /// Content of `releases.json`.
    pub releases: Bytes,
    /// Content of `updates.json`.
    pub updates: Bytes,
    /// Full path or URL of `releases.json` (names it in rejections).
    pub releases_from: String,
    /// Full path or URL of `updates.json`.
    pub updates_from: String,
}

/// Why a source could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    /// File or URL concerned.
    pub file: String,
    /// Closed error kind (a metric label).
    pub kind: FailureKind,
    /// What went wrong.
    pub message: String,
}

/// Closed set of load failure kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// A file is missing.
    Missing,
    /// A file could not be read.
    Io,
    /// An HTTP fetch failed.
    Fetch,
    /// A file is not valid metadata.
    Parse,
    /// The metadata is valid JSON but breaks a graph rule.
    Invalid,
}

impl FailureKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Missing => "missing",
            FailureKind::Io => "io",
            FailureKind::Fetch => "fetch",
            FailureKind::Parse => "parse",
            FailureKind::Invalid => "invalid",
        }
    }
}

/// What a source task reports.
#[derive(Debug, Clone)]
pub struct SourceEvent {
    /// Stream.
    pub stream: String,
    /// The fetched content, or why it could not be fetched.
    pub result: Result<RawMetadata, LoadFailure>,
}

/// Starts the task feeding one stream's metadata into `tx`.
pub fn spawn(
    stream: ValidStream,
    debounce: Duration,
    tx: mpsc::Sender<SourceEvent>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    match stream.location.clone() {
        Location::Dir(dir) => tokio::spawn(run_dir(stream.name, dir, debounce, tx, cancel)),
        Location::Http {
            releases,
            updates,
            interval,
        } => tokio::spawn(run_http(
            stream.name,
            releases,
            updates,
            interval,
            tx,
            cancel,
        )),
    }
}

async fn run_dir(
    stream: String,
    dir: PathBuf,
    debounce: Duration,
    tx: mpsc::Sender<SourceEvent>,
    cancel: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    // The watcher thread only pokes the notifier: any number of file events
    // collapse into one pending reload, so nothing queues up.
    let poke = changed.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads show up as access events: reacting to them would
        // reload forever.
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            poke.notify_one();
        }
    });
    let _watcher = match watcher {
        Ok(mut watcher) => match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(watcher),
            Err(err) => {
                tracing::warn!(%stream, dir = %dir.display(), %err, "cannot watch directory; changes will not be picked up");
                None
            }
        },
        Err(err) => {
            tracing::warn!(%stream, %err, "cannot create file watcher");
            None
        }
    };
    loop {
        let result = read_dir_metadata(&dir).await;
        if tx
            .send(SourceEvent {
                stream: stream.clone(),
                result,
            })
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = changed.notified() => {}
        }
        // Debounce: wait until the directory has been quiet for `debounce`.
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = changed.notified() => continue,
                () = tokio::time::sleep(debounce) => break,
            }
        }
    }
}

/// Reads both files of a stream directory.
pub async fn read_dir_metadata(dir: &Path) -> Result<RawMetadata, LoadFailure> {
    let (releases_path, updates_path) = (dir.join("releases.json"), dir.join("updates.json"));
    let releases = read_file(&releases_path).await?;
    let updates = read_file(&updates_path).await?;
    Ok(RawMetadata {
        releases,
        updates,
        releases_from: releases_path.display().to_string(),
        updates_from: updates_path.display().to_string(),
    })
}

async fn read_file(path: &Path) -> Result<Bytes, LoadFailure> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Ok(Bytes::from(bytes)),
        Err(err) => Err(LoadFailure {
            file: path.display().to_string(),
            kind: if err.kind() == std::io::ErrorKind::NotFound {
                FailureKind::Missing
            } else {
                FailureKind::Io
            },
            message: err.to_string(),
        }),
    }
}

/// One polled URL with its cache validators.
#[derive(Debug)]
struct Polled {
    url: url::Url,
    etag: Option<String>,
    last_modified: Option<String>,
    body: Option<Bytes>,
}

impl Polled {
    fn new(url: url::Url) -> Self {
        Self {
            url,
            etag: None,
            last_modified: None,
            body: None,
        }
    }

    /// Fetches the URL; returns whether the content changed.
    async fn fetch(&mut self, client: &reqwest::Client) -> Result<bool, LoadFailure> {
        let mut request = client.get(self.url.clone());
        if self.body.is_some() {
            if let Some(etag) = &self.etag {
                request = request.header(http::header::IF_NONE_MATCH, etag);
            }
            if let Some(modified) = &self.last_modified {
                request = request.header(http::header::IF_MODIFIED_SINCE, modified);
            }
        }
        let failure = |message: String| LoadFailure {
            file: self.url.to_string(),
            kind: FailureKind::Fetch,
            message,
        };
        let response = request.send().await.map_err(|e| failure(e.to_string()))?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(false);
        }
        if !response.status().is_success() {
            return Err(failure(format!("HTTP {}", response.status())));
        }
        let header = |name: http::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(http::header::ETAG);
        let last_modified = header(http::header::LAST_MODIFIED);
        let body = response.bytes().await.map_err(|e| failure(e.to_string()))?;
        let changed = self.body.as_ref() != Some(&body);
        self.etag = etag;
        self.last_modified = last_modified;
        self.body = Some(body);
        Ok(changed)
    }
}

async fn run_http(
    stream: String,
    releases: url::Url,
    updates: url::Url,
    interval: Duration,
    tx: mpsc::Sender<SourceEvent>,
    cancel: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("upshift-graph/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(%stream, %err, "cannot build HTTP client");
            return;
        }
    };
    let mut releases = Polled::new(releases);
    let mut updates = Polled::new(updates);
    let mut failing = false;
    loop {
        let result = poll_both(&client, &mut releases, &mut updates).await;
        // Send on change, on failure, and on recovery from a failure.
        let send = match &result {
            Ok(Some(_)) => true,
            Ok(None) => failing,
            Err(_) => true,
        };
        failing = result.is_err();
        if send {
            let result = result.map(|content| content.unwrap_or_else(|| both(&releases, &updates)));
            if tx
                .send(SourceEvent {
                    stream: stream.clone(),
                    result,
                })
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Polls both URLs; `Some` with both bodies when either changed.
async fn poll_both(
    client: &reqwest::Client,
    releases: &mut Polled,
    updates: &mut Polled,
) -> Result<Option<RawMetadata>, LoadFailure> {
    let releases_changed = releases.fetch(client).await?;
    let updates_changed = updates.fetch(client).await?;
    if !(releases_changed || updates_changed) {
        return Ok(None);
    }
    Ok(Some(both(releases, updates)))
}

/// The last bodies of both URLs.
fn both(releases: &Polled, updates: &Polled) -> RawMetadata {
    RawMetadata {
        releases: releases.body.clone().unwrap_or_default(),
        updates: updates.body.clone().unwrap_or_default(),
        releases_from: releases.url.to_string(),
        updates_from: updates.url.to_string(),
    }
}
