//! The etcd3 store, for deployments with several replicas.
//!
//! One [`etcd_client::Client`] per process (it is cheap to clone and
//! reconnects by itself); every request runs under the configured deadline
//! and maps a timeout or transport failure to [`StoreError::Unavailable`].
//! A request that could not be sent because no connection could be made
//! (refused, TLS handshake failed) is retried within its deadline: with an
//! endpoints list the client's balancer may hand a request to a member that
//! is down instead of a live one (grpc/grpc-rust#2839), and a restarting
//! member comes back. With a user name, the client authenticates again when
//! etcd has dropped its token (idle past `--auth-token-ttl`).
//! Watch streams survive broken connections: they re-open the watch from the
//! revision after the last one delivered, ending only on compaction.

mod watch;

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, Identity,
    PutOptions, TlsOptions, TxnOp,
};
use tokio::time::Instant;

use crate::{Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn, TxnOutcome, WatchStream};

/// TLS material for talking to etcd.
#[derive(Clone)]
pub struct EtcdTls {
    /// CA certificate(s) that sign the server certificate, PEM.
    pub ca_pem: Vec<u8>,
    /// Client certificate for mutual TLS, PEM.
    pub cert_pem: Option<Vec<u8>>,
    /// Client private key for mutual TLS, PEM.
    pub key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("mtls", &self.cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// How to reach etcd.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Endpoints, e.g. `http://127.0.0.1:2379` or `https://etcd-0:2379`.
    pub endpoints: Vec<String>,
    /// TLS, for `https` endpoints.
    pub tls: Option<EtcdTls>,
    /// User name and password.
    pub user: Option<(String, String)>,
    /// Deadline of every request.
    pub request_timeout: Duration,
    /// Deadline of establishing a connection.
    pub connect_timeout: Duration,
    /// Prepended to every key (e.g. `""` or `"/upshift/"`).
    pub key_prefix: String,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl EtcdOptions {
    /// Plain-text options for `endpoints` with 5 s deadlines and no prefix.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            user: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            key_prefix: String::new(),
        }
    }
}

/// The etcd store handle.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

/// A request that did not finish within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("etcd request timed out after {0:?}")]
pub struct Timeout(pub Duration);

/// No connection to any endpoint could be made within a request's deadline;
/// `source` is the last attempt's error (e.g. connection refused, or the TLS
/// handshake's certificate error).
#[derive(Debug, thiserror::Error)]
#[error("no etcd endpoint could be connected to within {after:?}")]
pub struct Unreachable {
    /// The deadline.
    pub after: Duration,
    /// The last connection error.
    #[source]
    pub source: etcd_client::Error,
}

/// Why [`retry_connect`] gave up.
#[derive(Debug)]
pub(crate) enum CallError {
    /// etcd (or the transport) answered with this; not retried.
    Etcd(etcd_client::Error),
    /// The deadline passed; `last` is the last connection failure, if the
    /// attempts failed rather than hung.
    Deadline {
        after: Duration,
        last: Option<etcd_client::Error>,
    },
}

impl CallError {
    /// As a store error; `lease` names the lease an etcd "lease not found"
    /// refers to.
    pub(crate) fn into_store(self, lease: Option<LeaseId>) -> StoreError {
        match self {
            CallError::Etcd(e) => map_err(e, lease),
            CallError::Deadline { after, last: None } => unavailable(Timeout(after)),
            CallError::Deadline {
                after,
                last: Some(source),
            } => unavailable(Unreachable { after, source }),
        }
    }
}

/// Whether the request failed because no connection could be made, i.e. it
/// was never sent and may be sent again.
pub(crate) fn is_connect_error(e: &etcd_client::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        etcd_client::Error::TransportError(e) => Some(e),
        _ => None,
    };
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(250);

/// Runs `attempt` until it succeeds or fails other than by a connection
/// failure, within `timeout` in all.
pub(crate) async fn retry_connect<T, F, Fut>(
    timeout: Duration,
    mut attempt: F,
) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + timeout;
    let mut backoff = RETRY_MIN;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if is_connect_error(&e) => {
                tracing::debug!(error = %e, "connecting to etcd failed; retrying");
                last = Some(e);
            }
            Ok(Err(e)) => return Err(CallError::Etcd(e)),
            Err(_) => break,
        }
        if Instant::now() + backoff >= deadline {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
    Err(CallError::Deadline {
        after: timeout,
        last,
    })
}

impl EtcdStore {
    /// Creates the client. It connects lazily (with credentials, it
    /// authenticates here) and reconnects by itself; an unreachable etcd
    /// shows as [`StoreError::Unavailable`] on each request.
    pub async fn connect(opts: EtcdOptions) -> Result<Self, StoreError> {
        let mut connect = ConnectOptions::new()
            .with_timeout(opts.request_timeout)
            .with_connect_timeout(opts.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &opts.user {
            // etcd drops a token unused for `--auth-token-ttl` (5 minutes by
            // default): authenticate again instead of failing every request.
            connect = connect
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &opts.tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let (Some(cert), Some(key)) = (&tls.cert_pem, &tls.key_pem) {
                config = config.identity(Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(config);
        }
        // With credentials, connecting authenticates, which may be handed to
        // an endpoint that is down: retried like any request.
        let deadline = opts.connect_timeout + opts.request_timeout;
        let client = retry_connect(deadline, || {
            Client::connect(&opts.endpoints, Some(connect.clone()))
        })
        .await
        .map_err(|e| e.into_store(None))?;
        Ok(Self {
            client,
            prefix: opts.key_prefix,
            timeout: opts.request_timeout,
        })
    }

    /// The underlying client (e.g. for etcd maintenance in tests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs one request (made by `attempt`, again after a connection
    /// failure) under the deadline; `lease` names the lease an etcd "lease
    /// not found" refers to.
    async fn call<T, F, Fut>(&self, lease: Option<LeaseId>, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        retry_connect(self.timeout, attempt)
            .await
            .map_err(|e| e.into_store(lease))
    }

    /// Reads the keys starting with `prefix` (every key when both it and
    /// the key prefix are empty), with `options` adding to the range
    /// options; the keys and the response they came in.
    async fn range(
        &self,
        prefix: &str,
        options: impl FnOnce(GetOptions) -> GetOptions,
    ) -> Result<(Vec<KeyValue>, etcd_client::GetResponse), StoreError> {
        let full = self.full(prefix);
        let range = if full.is_empty() {
            GetOptions::new().with_all_keys()
        } else {
            GetOptions::new().with_prefix()
        };
        let options = options(range);
        let resp = self
            .call(None, || {
                let (mut kv, full, options) =
                    (self.client.kv_client(), full.clone(), options.clone());
                async move { kv.get(full, Some(options)).await }
            })
            .await?;
        let kvs = resp
            .kvs()
            .iter()
            .map(|kv| self.to_kv(kv))
            .collect::<Result<_, _>>()?;
        Ok((kvs, resp))
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        convert_kv(&self.prefix, kv)
    }
}

pub(crate) fn convert_kv(prefix: &str, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let key = std::str::from_utf8(kv.key())
        .map_err(|_| StoreError::Corrupt("etcd key is not UTF-8".into()))?;
    let key = key.strip_prefix(prefix).unwrap_or(key).to_owned();
    Ok(KeyValue {
        key,
        value: kv.value().to_vec(),
        create_revision: revision(kv.create_revision()),
        mod_revision: revision(kv.mod_revision()),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    })
}

pub(crate) fn revision(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| revision(h.revision()))
}

fn signed(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}

/// Maps an etcd error, recognising "lease not found" for `lease`.
fn map_err(e: etcd_client::Error, lease: Option<LeaseId>) -> StoreError {
    let message = match &e {
        etcd_client::Error::GRpcStatus(status) => status.message(),
        etcd_client::Error::LeaseKeepAliveError(message) => message.as_str(),
        _ => "",
    };
    match lease {
        Some(id) if message.contains("lease not found") => StoreError::LeaseNotFound(id),
        _ => unavailable(e),
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .call(None, || {
                let (mut kv, key) = (self.client.kv_client(), self.full(key));
                async move { kv.get(key, None).await }
            })
            .await?;
        resp.kvs().first().map(|kv| self.to_kv(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let (kvs, resp) = self.range(prefix, |o| o).await?;
        Ok((kvs, header_revision(resp.header())))
    }

    async fn list_first(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, usize), StoreError> {
        // etcd reads only the values it returns; a limit of 0 means none.
        let (kvs, resp) = self
            .range(prefix, |options| match i64::try_from(limit) {
                Ok(0) => options.with_count_only(),
                Ok(limit) => options.with_limit(limit),
                Err(_) => options,
            })
            .await?;
        Ok((kvs, usize::try_from(resp.count()).unwrap_or(usize::MAX)))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|Compare::ModRevision(key, rev)| {
                EtcdCompare::mod_revision(self.full(key), CompareOp::Equal, signed(*rev))
            })
            .collect();
        let mut lease_used = None;
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    lease_used = lease_used.or(*lease);
                    TxnOp::put(
                        self.full(key),
                        value.clone(),
                        lease.map(|l| PutOptions::new().with_lease(l)),
                    )
                }
                Op::Delete { key } => TxnOp::delete(self.full(key), None),
            })
            .collect();
        let request = etcd_client::Txn::new().when(compares).and_then(ops);
        let resp = self
            .call(lease_used, || {
                let (mut kv, request) = (self.client.kv_client(), request.clone());
                async move { kv.txn(request).await }
            })
            .await?;
        Ok(TxnOutcome {
            succeeded: resp.succeeded(),
            revision: header_revision(resp.header()),
        })
    }

    async fn watch(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
    ) -> Result<WatchStream, StoreError> {
        watch::open(
            self.client.clone(),
            self.prefix.clone(),
            prefix,
            from_revision,
            self.timeout,
        )
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        // etcd TTLs are whole seconds: round up so a lease never ends early.
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let resp = self
            .call(None, || {
                let mut lease = self.client.lease_client();
                async move { lease.grant(signed(secs.max(1)), None).await }
            })
            .await?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<Duration, StoreError> {
        let resp = self
            .call(Some(id), || {
                let mut lease = self.client.lease_client();
                async move {
                    let (mut keeper, mut stream) = lease.keep_alive(id).await?;
                    keeper.keep_alive().await?;
                    stream.message().await
                }
            })
            .await?;
        match resp {
            Some(r) if r.ttl() > 0 => Ok(Duration::from_secs(revision(r.ttl()))),
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    fn key_prefix(&self) -> &str {
        &self.prefix
    }

    fn root(self: std::sync::Arc<Self>) -> crate::SharedStore {
        std::sync::Arc::new(Self {
            client: self.client.clone(),
            prefix: String::new(),
            timeout: self.timeout,
        })
    }

    async fn revoke_lease(&self, id: LeaseId) -> Result<(), StoreError> {
        self.call(Some(id), || {
            let mut lease = self.client.lease_client();
            async move { lease.revoke(id).await }
        })
        .await?;
        Ok(())
    }
}
