//! Test doubles of rpm-ostree (`org.projectatomic.rpmostree1`) and logind
//! (`org.freedesktop.login1`), served with zbus on a private bus. They keep
//! a small model of the host (deployments, sessions) and record every call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{Connection, fdo, interface};

pub const OS_PATH: &str = "/org/projectatomic/rpmostree1/fedora_coreos";

/// A deployment in the double's model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeDeployment {
    pub version: String,
    pub checksum: String,
    pub booted: bool,
    pub staged: bool,
    pub finalization_locked: bool,
    /// Container image reference (`<transport><name>@<digest>`) for image deployments.
    pub image: Option<String>,
}

impl FakeDeployment {
    fn to_dict(&self, serial: usize) -> HashMap<String, OwnedValue> {
        let mut d: HashMap<String, OwnedValue> = HashMap::new();
        let mut put = |k: &str, v: Value<'_>| {
            d.insert(k.into(), v.try_into().expect("owned value"));
        };
        put(
            "id",
            Value::from(format!("fedora-coreos-{}.{serial}", self.checksum)),
        );
        put("osname", Value::from("fedora-coreos"));
        put("checksum", Value::from(self.checksum.clone()));
        put("version", Value::from(self.version.clone()));
        put("serial", Value::from(serial as i32));
        put("booted", Value::from(self.booted));
        if let Some(image) = &self.image {
            put("container-image-reference", Value::from(image.clone()));
            if let Some((_, digest)) = image.split_once('@') {
                put(
                    "container-image-reference-digest",
                    Value::from(digest.to_owned()),
                );
            }
        }
        if self.staged {
            put("staged", Value::from(true));
            put("finalization-locked", Value::from(self.finalization_locked));
        }
        d
    }
}

/// One recorded `UpdateDeployment` call.
#[derive(Debug, Clone, Default)]
pub struct DeployCall {
    pub revision: Option<String>,
    pub refspec: Option<String>,
    pub lock_finalization: Option<bool>,
    pub allow_downgrade: Option<bool>,
    pub register_driver: Option<String>,
}

/// The rpm-ostree double's model and call log.
#[derive(Debug, Default)]
pub struct RpmState {
    /// Deployments in boot order (staged first).
    pub deployments: Vec<FakeDeployment>,
    /// Commits the "remote" has: checksum -> version.
    pub remote: HashMap<String, String>,
    /// Images the registry has: `name@digest` -> (version, commit checksum).
    pub images: HashMap<String, (String, String)>,
    pub clients: Vec<String>,
    pub drivers: Vec<String>,
    pub deploys: Vec<DeployCall>,
    pub finalized: Vec<String>,
    pub cleanups: Vec<Vec<String>>,
    /// Deploy transactions finish with this error message.
    pub fail_deploy: Option<String>,
    /// Transactions never send `Finished`.
    pub hang_transactions: bool,
    /// `Reload` never answers.
    pub hang_calls: bool,
    /// `RegisterClient` is refused as polkit would refuse it.
    pub deny_clients: bool,
}

type Shared<T> = Arc<Mutex<T>>;
type Work = Box<dyn FnOnce() -> (bool, String) + Send>;

fn lock<T>(s: &Shared<T>) -> std::sync::MutexGuard<'_, T> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn opt_str(m: &HashMap<String, OwnedValue>, k: &str) -> Option<String> {
    m.get(k)
        .and_then(|v| <&str>::try_from(v).ok())
        .map(str::to_owned)
}

fn opt_bool(m: &HashMap<String, OwnedValue>, k: &str) -> Option<bool> {
    m.get(k).and_then(|v| bool::try_from(v).ok())
}

struct Sysroot {
    state: Shared<RpmState>,
}

#[interface(name = "org.projectatomic.rpmostree1.Sysroot")]
impl Sysroot {
    async fn register_client(&self, options: HashMap<String, OwnedValue>) -> fdo::Result<()> {
        let mut s = lock(&self.state);
        if s.deny_clients {
            return Err(fdo::Error::AccessDenied("Not authorized".into()));
        }
        s.clients.push(opt_str(&options, "id").unwrap_or_default());
        Ok(())
    }

    async fn reload(&self) {
        let hang = lock(&self.state).hang_calls;
        if hang {
            std::future::pending::<()>().await;
        }
    }

    #[zbus(property)]
    async fn booted(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(OS_PATH).expect("object path")
    }

    #[zbus(property)]
    async fn deployments(&self) -> Vec<HashMap<String, OwnedValue>> {
        lock(&self.state)
            .deployments
            .iter()
            .enumerate()
            .map(|(i, d)| d.to_dict(i))
            .collect()
    }
}

struct Os {
    state: Shared<RpmState>,
    dir: PathBuf,
    serial: Arc<AtomicUsize>,
}

impl Os {
    /// Serves one transaction on its own socket; `work` runs on `Start`.
    fn transaction(&self, work: Work) -> fdo::Result<String> {
        let n = self.serial.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.join(format!("txn-{n}"));
        let listener =
            tokio::net::UnixListener::bind(&path).map_err(|e| fdo::Error::Failed(e.to_string()))?;
        let hang = lock(&self.state).hang_transactions;
        tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let txn = Transaction {
                work: Mutex::new(Some(work)),
                hang,
            };
            let conn = zbus::connection::Builder::unix_stream(stream)
                .server(zbus::Guid::generate())
                .expect("guid")
                .p2p()
                .serve_at("/", txn)
                .expect("serve")
                .build()
                .await;
            if let Ok(conn) = conn {
                // Keep serving until the client hangs up.
                let mut incoming = zbus::MessageStream::from(&conn);
                while let Some(Ok(_)) = futures::StreamExt::next(&mut incoming).await {}
            }
        });
        Ok(format!("unix:path={}", path.display()))
    }
}

#[interface(name = "org.projectatomic.rpmostree1.OS")]
impl Os {
    async fn update_deployment(
        &self,
        modifiers: HashMap<String, OwnedValue>,
        options: HashMap<String, OwnedValue>,
    ) -> fdo::Result<String> {
        let call = DeployCall {
            revision: opt_str(&modifiers, "set-revision"),
            refspec: opt_str(&modifiers, "set-refspec"),
            lock_finalization: opt_bool(&options, "lock-finalization"),
            allow_downgrade: opt_bool(&options, "allow-downgrade"),
            register_driver: opt_str(&options, "register-driver"),
        };
        let state = self.state.clone();
        self.transaction(Box::new(move || {
            let mut s = lock(&state);
            if let Some(d) = &call.register_driver {
                s.drivers.push(d.clone());
            }
            s.deploys.push(call.clone());
            if let Some(msg) = s.fail_deploy.clone() {
                return (false, msg);
            }
            let (version, checksum, image) = match (&call.revision, &call.refspec) {
                (Some(rev), _) => {
                    let checksum = rev.trim_start_matches("revision=").to_owned();
                    match s.remote.get(&checksum) {
                        Some(v) => (v.clone(), checksum, None),
                        None => return (false, format!("No such commit {checksum}")),
                    }
                }
                (None, Some(refspec)) => {
                    let pullspec = refspec
                        .strip_prefix("ostree-unverified-registry:")
                        .unwrap_or(refspec);
                    match s.images.get(pullspec) {
                        Some((v, c)) => (v.clone(), c.clone(), Some(refspec.clone())),
                        None => return (false, format!("manifest unknown: {pullspec}")),
                    }
                }
                (None, None) => return (true, "No change.".into()),
            };
            s.deployments.retain(|d| !d.staged);
            s.deployments.insert(
                0,
                FakeDeployment {
                    version,
                    checksum,
                    booted: false,
                    staged: true,
                    finalization_locked: call.lock_finalization == Some(true),
                    image,
                },
            );
            (true, String::new())
        }))
    }

    async fn finalize_deployment(
        &self,
        options: HashMap<String, OwnedValue>,
    ) -> fdo::Result<String> {
        let checksum = opt_str(&options, "checksum");
        let state = self.state.clone();
        self.transaction(Box::new(move || {
            let mut s = lock(&state);
            let Some(staged) = s.deployments.iter_mut().find(|d| d.staged) else {
                return (false, "No staged deployment".into());
            };
            if checksum.as_deref() != Some(staged.checksum.as_str()) {
                return (false, "Expected staged base checksum mismatch".into());
            }
            if !staged.finalization_locked {
                return (false, "Staged deployment is not locked".into());
            }
            staged.finalization_locked = false;
            let c = staged.checksum.clone();
            s.finalized.push(c);
            (true, String::new())
        }))
    }

    async fn cleanup(&self, elements: Vec<String>) -> fdo::Result<String> {
        let state = self.state.clone();
        self.transaction(Box::new(move || {
            let mut s = lock(&state);
            if elements.iter().any(|e| e == "pending-deploy") {
                s.deployments.retain(|d| !d.staged);
            }
            s.cleanups.push(elements);
            (true, String::new())
        }))
    }
}

struct Transaction {
    work: Mutex<Option<Work>>,
    hang: bool,
}

#[interface(name = "org.projectatomic.rpmostree1.Transaction")]
impl Transaction {
    async fn start(&self, #[zbus(signal_emitter)] emitter: SignalEmitter<'_>) -> bool {
        let Some(work) = self.work.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return false;
        };
        let hang = self.hang;
        let emitter = emitter.into_owned();
        tokio::spawn(async move {
            let _ = Transaction::message(&emitter, "working").await;
            if hang {
                return;
            }
            let (ok, msg) = work();
            let _ = Transaction::finished(&emitter, ok, &msg).await;
        });
        true
    }

    #[zbus(signal)]
    async fn finished(
        emitter: &SignalEmitter<'_>,
        success: bool,
        error_message: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn message(emitter: &SignalEmitter<'_>, text: &str) -> zbus::Result<()>;
}

/// The rpm-ostree double on a bus.
pub struct RpmOstreeDouble {
    pub state: Shared<RpmState>,
    _conn: Connection,
    _dir: tempfile::TempDir,
}

impl RpmOstreeDouble {
    /// Serves the double on `bus` under `org.projectatomic.rpmostree1`.
    pub async fn start(bus: &str, state: RpmState) -> RpmOstreeDouble {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = Arc::new(Mutex::new(state));
        let conn = zbus::connection::Builder::address(bus)
            .expect("address")
            .name("org.projectatomic.rpmostree1")
            .expect("name")
            .serve_at(
                "/org/projectatomic/rpmostree1/Sysroot",
                Sysroot {
                    state: state.clone(),
                },
            )
            .expect("sysroot")
            .serve_at(
                OS_PATH,
                Os {
                    state: state.clone(),
                    dir: dir.path().into(),
                    serial: Arc::new(AtomicUsize::new(0)),
                },
            )
            .expect("os")
            .build()
            .await
            .expect("rpm-ostree double on the bus");
        RpmOstreeDouble {
            state,
            _conn: conn,
            _dir: dir,
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, RpmState> {
        lock(&self.state)
    }
}

/// A logind session in the double.
#[derive(Debug, Clone)]
pub struct FakeSession {
    pub id: String,
    pub uid: u32,
    pub user: String,
    pub class: String,
    pub kind: String,
    pub remote: bool,
    pub tty: String,
}

impl FakeSession {
    fn path(&self) -> String {
        // logind escapes ids with leading digits: "3" -> "_33".
        let escaped: String = self
            .id
            .bytes()
            .map(|b| {
                if b.is_ascii_alphabetic() {
                    (b as char).to_string()
                } else {
                    format!("_{b:02x}")
                }
            })
            .collect();
        format!("/org/freedesktop/login1/session/{escaped}")
    }
}

struct SessionObj(FakeSession);

#[interface(name = "org.freedesktop.login1.Session")]
impl SessionObj {
    #[zbus(property)]
    async fn class(&self) -> String {
        self.0.class.clone()
    }
    #[zbus(property, name = "Type")]
    async fn kind(&self) -> String {
        self.0.kind.clone()
    }
    #[zbus(property)]
    async fn remote(&self) -> bool {
        self.0.remote
    }
    #[zbus(property, name = "TTY")]
    async fn tty(&self) -> String {
        self.0.tty.clone()
    }
    #[zbus(property)]
    async fn name(&self) -> String {
        self.0.user.clone()
    }
}

/// The logind double's model and call log.
#[derive(Debug, Default)]
pub struct LoginState {
    pub sessions: Vec<FakeSession>,
    /// Listed by `ListSessions` but without an object (ended meanwhile).
    pub ended: Vec<FakeSession>,
    /// `interactive` argument of every `Reboot` call.
    pub reboots: Vec<bool>,
}

struct Manager {
    state: Shared<LoginState>,
}

#[interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    async fn list_sessions(&self) -> Vec<(String, u32, String, String, OwnedObjectPath)> {
        let st = lock(&self.state);
        st.sessions
            .iter()
            .chain(&st.ended)
            .map(|s| {
                (
                    s.id.clone(),
                    s.uid,
                    s.user.clone(),
                    String::new(),
                    OwnedObjectPath::try_from(s.path()).expect("session path"),
                )
            })
            .collect()
    }

    async fn reboot(&self, interactive: bool) {
        lock(&self.state).reboots.push(interactive);
    }
}

/// The logind double on a bus.
pub struct LogindDouble {
    pub state: Shared<LoginState>,
    _conn: Connection,
}

impl LogindDouble {
    /// Serves the double on `bus` under `org.freedesktop.login1`.
    pub async fn start(bus: &str, state: LoginState) -> LogindDouble {
        let sessions = state.sessions.clone();
        let state = Arc::new(Mutex::new(state));
        let mut b = zbus::connection::Builder::address(bus)
            .expect("address")
            .name("org.freedesktop.login1")
            .expect("name")
            .serve_at(
                "/org/freedesktop/login1",
                Manager {
                    state: state.clone(),
                },
            )
            .expect("manager");
        for s in sessions {
            b = b.serve_at(s.path(), SessionObj(s)).expect("session");
        }
        let conn = b.build().await.expect("logind double on the bus");
        LogindDouble { state, _conn: conn }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, LoginState> {
        lock(&self.state)
    }
}
