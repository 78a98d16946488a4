//! Starts the lock service on a loopback port for tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use upshift_common::auth::AdminAuth;
use upshift_common::clock::SharedClock;
use upshift_common::config::{ServerSettings, parse_toml};
use upshift_common::telemetry::Metrics;
use upshift_lock::{LockConfig, LockService};
use upshift_proto::lock::v1::lock_admin_service_client::LockAdminServiceClient;
use upshift_proto::lock::v1::lock_service_client::LockServiceClient;
use upshift_store::SharedStore;

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub struct Server {
    pub addr: SocketAddr,
    pub service: LockService,
    pub metrics: Metrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(toml: &str, store: SharedStore, clock: SharedClock) -> Server {
        let cfg: LockConfig = parse_toml(toml).unwrap();
        let settings = cfg.validate().unwrap();
        let server = ServerSettings {
            listen: ([127, 0, 0, 1], 0).into(),
            ..Default::default()
        };
        let metrics = Metrics::new("upshift-lock");
        let admin = AdminAuth::new(Some(ADMIN_TOKEN.into()), vec![]);
        let started = upshift_lock::bind(&server, settings, store, clock, metrics.clone(), admin)
            .await
            .unwrap();
        let addr = started.bound.local_addr();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            started
                .bound
                .serve(async move { s.cancelled().await })
                .await
                .unwrap();
        });
        Server {
            addr,
            service: started.service,
            metrics,
            stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn client(&self) -> LockServiceClient<tonic::transport::Channel> {
        LockServiceClient::connect(self.url("")).await.unwrap()
    }

    pub async fn admin(&self) -> LockAdminServiceClient<tonic::transport::Channel> {
        LockAdminServiceClient::connect(self.url("")).await.unwrap()
    }

    /// The value of the gauge `name` for `group` on `/metrics`, if exported.
    pub async fn metric(&self, name: &str, group: &str) -> Option<f64> {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(&text, name, group)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

pub fn mem_store() -> SharedStore {
    Arc::new(super::mem::MemStore::new())
}

pub fn admin_req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    r
}

/// The value of `name{...group="<group>"...}` in a Prometheus exposition.
pub fn metric_value(text: &str, name: &str, group: &str) -> Option<f64> {
    let label = format!("group=\"{group}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}
