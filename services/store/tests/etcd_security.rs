//! The etcd store over TLS, mutual TLS and username/password, and with an
//! endpoints list, against real etcd servers. Certificates are generated
//! here, at test time.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use upshift_store::conformance;
use upshift_store::etcd::{EtcdOptions, EtcdStore, EtcdTls};
use upshift_store::settings::{Backend, StoreSettings};
use upshift_store::testing::{EtcdServer, EtcdServerConfig, EtcdServerTls, skip_etcd};
use upshift_store::{Op, SharedStore, Store, StoreError, Txn};

/// A test certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its private key, PEM.
struct Leaf {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    fn pem(&self) -> Vec<u8> {
        self.cert.pem().into_bytes()
    }

    fn issue(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        }
    }

    /// A server certificate for etcd on loopback.
    fn server(&self) -> Leaf {
        self.issue(
            "etcd",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    fn client(&self, name: &str) -> Leaf {
        self.issue(name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// The error and its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn connect(options: EtcdOptions) -> SharedStore {
    Arc::new(EtcdStore::connect(options).await.unwrap())
}

/// A store on `options` with `name/` appended to the key prefix, so that
/// each conformance function starts on an empty key space.
async fn fresh(options: &EtcdOptions, name: &str) -> SharedStore {
    let mut options = options.clone();
    options.key_prefix = format!("{}{name}/", options.key_prefix);
    connect(options).await
}

/// A part of the conformance suite that covers every kind of request: reads,
/// CAS transactions, watches (from a past revision, so the watch replays
/// history and then follows live writes), and leases.
async fn run_conformance(options: &EtcdOptions) {
    conformance::get_and_list_by_prefix(fresh(options, "list").await).await;
    conformance::compare_and_swap(fresh(options, "cas").await).await;
    conformance::multi_op_atomicity(fresh(options, "atomic").await).await;
    conformance::watch_from_past_revision(fresh(options, "watch").await).await;
    conformance::revoke_deletes_keys(fresh(options, "revoke").await).await;
    conformance::unknown_lease(fresh(options, "lease").await).await;
}

/// Asserts that a store built from `options` fails, on connecting or on its
/// first request, with an `Unavailable` error whose chain mentions one of
/// `expected` (ignoring case), within the deadlines of `options` (not a hang).
async fn assert_refused(options: EtcdOptions, expected: &[&str]) -> String {
    let bound = options.connect_timeout + options.request_timeout + Duration::from_secs(1);
    let started = Instant::now();
    let result = match EtcdStore::connect(options).await {
        Ok(store) => store
            .txn(Txn::new().then(Op::put("refused", "x")))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    let elapsed = started.elapsed();
    let e = result.expect_err("the store must refuse");
    let text = chain(&e);
    assert!(matches!(e, StoreError::Unavailable(_)), "{text}");
    assert!(
        expected
            .iter()
            .any(|word| text.to_lowercase().contains(&word.to_lowercase())),
        "expected one of {expected:?} in {text:?}"
    );
    assert!(
        elapsed < bound,
        "took {elapsed:?} (bound {bound:?}): {text}"
    );
    eprintln!("refused after {elapsed:?}, as expected: {text}");
    text
}

/// Short deadlines for the failure cases.
fn short(mut options: EtcdOptions) -> EtcdOptions {
    options.connect_timeout = Duration::from_secs(1);
    options.request_timeout = Duration::from_secs(2);
    options
}

fn tls_server(ca: &Ca, client_ca: Option<&Ca>, client: Option<&Leaf>) -> EtcdServerTls {
    let server = ca.server();
    EtcdServerTls {
        cert_pem: server.cert_pem,
        key_pem: server.key_pem,
        client_ca_pem: client_ca.map(Ca::pem),
        client: EtcdTls {
            ca_pem: ca.pem(),
            cert_pem: client.map(|c| c.cert_pem.clone()),
            key_pem: client.map(|c| c.key_pem.clone()),
        },
    }
}

async fn start_tls(tls: EtcdServerTls) -> Option<EtcdServer> {
    if skip_etcd() {
        return None;
    }
    Some(
        EtcdServer::start_tls(tls)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_runs_conformance_with_the_ca() {
    let ca = Ca::new("test etcd ca");
    let Some(server) = start_tls(tls_server(&ca, None, None)).await else {
        return;
    };
    assert!(server.endpoint().starts_with("https://127.0.0.1:"));
    run_conformance(&server.options("/tls/")).await;
}

/// 32 tasks of CAS increments sharing one TLS client (the slowest
/// conformance function, so on its own and only over TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_concurrent_cas_counter() {
    let ca = Ca::new("test etcd ca");
    let Some(server) = start_tls(tls_server(&ca, None, None)).await else {
        return;
    };
    conformance::concurrent_cas_counter(connect(server.options("/tls/")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_the_ca_fails_within_the_deadline() {
    let ca = Ca::new("test etcd ca");
    let Some(server) = start_tls(tls_server(&ca, None, None)).await else {
        return;
    };
    let certificate_words = ["certificate", "UnknownIssuer", "unknown issuer"];
    // No TLS material at all for an https:// endpoint: no trusted roots.
    let mut options = short(server.options(""));
    options.tls = None;
    assert_refused(options, &certificate_words).await;
    // A CA, but not the one that signed the server's certificate.
    let mut options = short(server.options(""));
    options.tls = Some(EtcdTls {
        ca_pem: Ca::new("some other ca").pem(),
        cert_pem: None,
        key_pem: None,
    });
    assert_refused(options, &certificate_words).await;
    // Plain text against the TLS port.
    let mut options = short(server.options(""));
    options.tls = None;
    options.endpoints = vec![format!("http://127.0.0.1:{}", server.port())];
    assert_refused(
        options,
        &[
            "connection closed",
            "broken pipe",
            "connection reset",
            "frame",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_runs_conformance_with_a_client_certificate() {
    let (ca, client_ca) = (Ca::new("test etcd ca"), Ca::new("test client ca"));
    let client = client_ca.client("upshift");
    let Some(server) = start_tls(tls_server(&ca, Some(&client_ca), Some(&client))).await else {
        return;
    };
    run_conformance(&server.options("/mtls/")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_without_an_accepted_client_certificate_fails() {
    let (ca, client_ca) = (Ca::new("test etcd ca"), Ca::new("test client ca"));
    let client = client_ca.client("upshift");
    let Some(server) = start_tls(tls_server(&ca, Some(&client_ca), Some(&client))).await else {
        return;
    };
    // The server is fine for a client with the certificate.
    let store = connect(server.options("")).await;
    store.get("k").await.unwrap();
    // With TLS 1.3 the client finishes its handshake before etcd checks the
    // client certificate, so the refusal shows as the connection closing
    // under the first request.
    let refusal = [
        "certificate",
        "handshake",
        "broken pipe",
        "connection closed",
        "connection reset",
    ];
    let mut options = short(server.options(""));
    options.tls.as_mut().unwrap().cert_pem = None;
    options.tls.as_mut().unwrap().key_pem = None;
    assert_refused(options, &refusal).await;
    // A client certificate from a CA etcd does not trust.
    let stranger = Ca::new("stranger ca").client("upshift");
    let mut options = short(server.options(""));
    options.tls.as_mut().unwrap().cert_pem = Some(stranger.cert_pem);
    options.tls.as_mut().unwrap().key_pem = Some(stranger.key_pem);
    assert_refused(options, &refusal).await;
}

/// The `[store.etcd]` settings path: PEM files and a password file, read by
/// `StoreSettings::open`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_files_configure_mtls_and_a_password() {
    let (ca, client_ca) = (Ca::new("test etcd ca"), Ca::new("test client ca"));
    let client = client_ca.client("upshift");
    let Some(mut server) = start_tls(tls_server(&ca, Some(&client_ca), Some(&client))).await else {
        return;
    };
    enable_auth(&server, "s3cret").await;
    server.set_user(Some(("root".into(), "s3cret".into())));

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let mut settings = StoreSettings::default();
    settings.use_etcd(vec![server.endpoint()]);
    settings.etcd.key_prefix = "/settings/".into();
    settings.etcd.ca_file = Some(write("ca.pem", &ca.pem()));
    settings.etcd.cert_file = Some(write("client.pem", &client.cert_pem));
    settings.etcd.key_file = Some(write("client-key.pem", &client.key_pem));
    settings.etcd.username = Some("root".into());
    // Written by hand or by `echo`: the trailing newline is not part of it.
    settings.etcd.password_file = Some(write("password", b"s3cret\n"));
    settings.etcd.request_timeout = Duration::from_secs(3);
    settings.etcd.connect_timeout = Duration::from_secs(2);
    settings.validate().unwrap();
    assert_eq!(settings.backend, Backend::Etcd);
    let store = settings.open(Path::new("/nonexistent")).await.unwrap();
    conformance::compare_and_swap(store.clone()).await;
    let root = store.clone().root();
    assert!(root.get("/settings/cas").await.unwrap().is_some());

    settings.etcd.password_file = Some(write("wrong", b"not it\n"));
    let e = settings.open(Path::new("/nonexistent")).await.unwrap_err();
    let text = chain(&e);
    assert!(text.contains("authentication failed"), "{text}");
    assert!(text.contains(&server.endpoint()), "{text}");
}

/// Creates user `root` with `password`, grants it the `root` role and turns
/// authentication on, through etcd-client's auth API.
async fn enable_auth(server: &EtcdServer, password: &str) {
    let store = EtcdStore::connect(server.options("")).await.unwrap();
    let mut auth = store.client().auth_client();
    auth.user_add("root", password, None).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.auth_enable().await.unwrap();
}

async fn start() -> Option<EtcdServer> {
    if skip_etcd() {
        return None;
    }
    Some(EtcdServer::start().await.unwrap_or_else(|e| panic!("{e}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_runs_conformance() {
    let Some(mut server) = start().await else {
        return;
    };
    enable_auth(&server, "pa55word").await;
    server.set_user(Some(("root".into(), "pa55word".into())));
    run_conformance(&server.options("/auth/")).await;
}

/// Requests and a watch opened before a restart work after it, with auth on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_survives_a_restart() {
    let Some(mut server) = start().await else {
        return;
    };
    enable_auth(&server, "pa55word").await;
    server.set_user(Some(("root".into(), "pa55word".into())));
    let store = connect(server.options("/auth/")).await;
    let mut watch = store.watch("restart/", None).await.unwrap();
    store.get("k").await.unwrap();
    server.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let revision = loop {
        match store
            .txn(Txn::new().then(Op::put("restart/after", "x")))
            .await
        {
            Ok(outcome) => break outcome.revision,
            Err(e) if Instant::now() < deadline && !chain(&e).contains("auth") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("after the restart: {}", chain(&e)),
        }
    };
    let event = conformance::next_event(&mut watch).await;
    assert_eq!((event.key(), event.revision()), ("restart/after", revision));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_refuses_wrong_or_missing_credentials() {
    let Some(mut server) = start().await else {
        return;
    };
    enable_auth(&server, "pa55word").await;
    server.set_user(Some(("root".into(), "pa55word".into())));
    connect(server.options("")).await.get("k").await.unwrap();

    let mut options = short(server.options(""));
    options.user = Some(("root".into(), "wrong".into()));
    let text = assert_refused(options, &["authentication failed"]).await;
    assert!(
        !text.contains("wrong"),
        "the password is not echoed: {text}"
    );
    let mut options = short(server.options(""));
    options.user = Some(("nobody".into(), "pa55word".into()));
    assert_refused(options, &["authentication failed"]).await;
    let mut options = short(server.options(""));
    options.user = None;
    assert_refused(options, &["user name is empty", "permission denied"]).await;
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_list_skips_a_dead_endpoint_and_reconnects() {
    let Some(mut server) = start().await else {
        return;
    };
    let mut options = server.options("/endpoints/");
    options.endpoints = vec![
        format!("http://127.0.0.1:{}", closed_port()),
        server.endpoint(),
    ];
    let store = connect(options.clone()).await;
    for i in 0..20 {
        store
            .txn(Txn::new().then(Op::put(format!("k{i}"), "v")))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {}", chain(&e)));
    }
    assert_eq!(store.list("k").await.unwrap().0.len(), 20);
    conformance::compare_and_swap(connect(options.clone()).await).await;

    // The live member goes away: requests fail within their deadline...
    server.stop();
    let started = Instant::now();
    assert!(matches!(
        store.get("k0").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(started.elapsed() < options.request_timeout + Duration::from_secs(1));
    // ...and succeed again once it is back on the same port.
    server.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store.get("k0").await {
            Ok(kv) => break assert_eq!(kv.unwrap().value, b"v"),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("not back after the restart: {}", chain(&e)),
        }
    }
}

/// etcd forgets a simple token unused for `--auth-token-ttl`: an idle store
/// must authenticate again, for requests and for new watches alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_survives_token_expiry() {
    if skip_etcd() {
        return;
    }
    let config = EtcdServerConfig {
        extra_args: vec!["--auth-token-ttl".into(), "1".into()],
        ..EtcdServerConfig::default()
    };
    let mut server = EtcdServer::start_with(config).await.unwrap();
    enable_auth(&server, "pa55word").await;
    server.set_user(Some(("root".into(), "pa55word".into())));
    let store = connect(server.options("/expiry/")).await;
    store.get("k").await.unwrap();

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut watch = store
        .watch("w/", None)
        .await
        .unwrap_or_else(|e| panic!("watch after expiry: {}", chain(&e)));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let outcome = store
        .txn(Txn::new().then(Op::put("w/k", "v")))
        .await
        .unwrap_or_else(|e| panic!("write after expiry: {}", chain(&e)));
    let event = conformance::next_event(&mut watch).await;
    assert_eq!((event.key(), event.revision()), ("w/k", outcome.revision));
}
