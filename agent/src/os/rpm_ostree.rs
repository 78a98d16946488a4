//! The real host backend: rpm-ostree over D-Bus
//! (`org.projectatomic.rpmostree1`) for deployments, logind for sessions and
//! reboot.
//!
//! Mutating rpm-ostree methods return the address of a private peer-to-peer
//! D-Bus server: the client connects to it, calls `Transaction.Start` on `/`
//! and waits for the `Finished(success, error_message)` signal.

use std::collections::HashMap;

use futures::StreamExt;
use zbus::Connection;
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::dbus::{self, Bus, Timeouts};
use super::logind::Logind;
use super::wall::Wall;
use super::{Op, OsBackend, OsError, Release};

/// Well-known bus name of the rpm-ostree daemon.
pub const SERVICE: &str = "org.projectatomic.rpmostree1";
/// Object path of the sysroot.
pub const SYSROOT_PATH: &str = "/org/projectatomic/rpmostree1/Sysroot";
/// Sysroot interface (deployments, booted OS object, client registration).
pub const SYSROOT_IFACE: &str = "org.projectatomic.rpmostree1.Sysroot";
/// OS interface (deploy, finalize, cleanup).
pub const OS_IFACE: &str = "org.projectatomic.rpmostree1.OS";
/// Transaction interface, served at `/` on the transaction's own address.
pub const TRANSACTION_IFACE: &str = "org.projectatomic.rpmostree1.Transaction";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";

/// One deployment as rpm-ostree describes it (Sysroot `Deployments`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deployment {
    /// Deployment id (`osname-checksum.serial`).
    pub id: String,
    /// OS name (stateroot).
    pub osname: String,
    /// Commit checksum of the deployment (with any layering).
    pub checksum: String,
    /// Base commit when packages are layered on top.
    pub base_checksum: Option<String>,
    /// OS version string, when the commit has one.
    pub version: Option<String>,
    /// Container image reference for image-based deployments.
    pub container_image_reference: Option<String>,
    /// Manifest digest of that image.
    pub container_image_digest: Option<String>,
    /// Whether this is the running deployment.
    pub booted: bool,
    /// Whether this deployment is staged for the next boot.
    pub staged: bool,
    /// Whether finalization of the staged deployment is locked.
    pub finalization_locked: bool,
}

impl Deployment {
    /// Parses one `a{sv}` entry; `None` when the checksum is missing.
    pub fn from_dict(d: &HashMap<String, OwnedValue>) -> Option<Deployment> {
        let s = |k: &str| {
            d.get(k)
                .and_then(|v| <&str>::try_from(v).ok())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let b = |k: &str| d.get(k).and_then(|v| bool::try_from(v).ok()) == Some(true);
        Some(Deployment {
            id: s("id").unwrap_or_default(),
            osname: s("osname").unwrap_or_default(),
            checksum: s("checksum")?,
            base_checksum: s("base-checksum"),
            version: s("version"),
            container_image_reference: s("container-image-reference"),
            container_image_digest: s("container-image-reference-digest"),
            booted: b("booted"),
            staged: b("staged"),
            finalization_locked: b("finalization-locked"),
        })
    }

    /// OCI for image-based deployments (a container image reference),
    /// else the OSTree checksum scheme.
    pub fn scheme(&self) -> super::PayloadScheme {
        match self.container_image_reference {
            Some(_) => super::PayloadScheme::Oci,
            None => super::PayloadScheme::Checksum,
        }
    }

    /// The release this deployment runs: the payload is the image
    /// `name@digest` for container deployments, else the base commit.
    pub fn release(&self) -> Release {
        let payload = match (
            &self.container_image_reference,
            &self.container_image_digest,
        ) {
            (Some(r), Some(digest)) => format!("{}@{digest}", image_name(r)),
            _ => self
                .base_checksum
                .clone()
                .unwrap_or_else(|| self.checksum.clone()),
        };
        Release {
            version: self.version.clone().unwrap_or_default(),
            payload,
        }
    }
}

/// `ostree-remote-registry:fedora:quay.io/x/y:stable` -> `quay.io/x/y`.
fn image_name(reference: &str) -> &str {
    let mut r = reference;
    for prefix in [
        "ostree-unverified-registry:",
        "ostree-unverified-image:",
        "ostree-image-signed:",
        "ostree-remote-registry:",
        "ostree-remote-image:",
    ] {
        if let Some(rest) = r.strip_prefix(prefix) {
            r = rest;
            if prefix.starts_with("ostree-remote-") {
                // Skip the OSTree remote name.
                r = r.split_once(':').map_or(r, |(_, image)| image);
            }
            break;
        }
    }
    r = r
        .strip_prefix("registry:")
        .or_else(|| r.strip_prefix("docker://"))
        .unwrap_or(r);
    r = r.split('@').next().unwrap_or(r);
    match r.rsplit_once(':') {
        // A tag, not a registry port (`host:5000/...`).
        Some((name, tag)) if !tag.contains('/') => name,
        _ => r,
    }
}

fn is_checksum(p: &str) -> bool {
    p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Options of the rpm-ostree backend.
#[derive(Debug, Clone)]
pub struct RpmOstreeOptions {
    /// Client id and update-driver name given to rpm-ostree.
    pub client_id: String,
    /// Whether deploying an older release is accepted.
    pub allow_downgrade: bool,
    /// Prefix for OCI payloads (`<transport><image>@sha256:...`).
    pub oci_transport: String,
    /// Call and transaction time limits.
    pub timeouts: Timeouts,
}

impl Default for RpmOstreeOptions {
    fn default() -> Self {
        RpmOstreeOptions {
            client_id: "upshift-agent".into(),
            allow_downgrade: false,
            oci_transport: "ostree-unverified-registry:".into(),
            timeouts: Timeouts::default(),
        }
    }
}

/// Host OS over D-Bus: rpm-ostree deployments plus logind sessions/reboot.
#[derive(Debug, Clone)]
pub struct RpmOstree {
    svc: dbus::Service,
    opts: RpmOstreeOptions,
    logind: Logind,
    wall: Wall,
}

impl RpmOstree {
    /// Connects to `bus` and registers with rpm-ostree as a client.
    pub async fn connect(bus: &Bus, opts: RpmOstreeOptions) -> Result<RpmOstree, OsError> {
        let conn = dbus::connect(bus, opts.timeouts.call).await?;
        let me = RpmOstree::with_connection(conn, opts);
        me.register_client().await?;
        Ok(me)
    }

    /// What the agent does at start-up: [`RpmOstree::connect`] on `bus`,
    /// then [`RpmOstree::register_driver`].
    pub async fn start(bus: &Bus, opts: RpmOstreeOptions) -> Result<RpmOstree, OsError> {
        let me = RpmOstree::connect(bus, opts).await?;
        me.register_driver().await?;
        Ok(me)
    }

    /// Uses an existing connection for both rpm-ostree and logind.
    pub fn with_connection(conn: Connection, opts: RpmOstreeOptions) -> RpmOstree {
        let logind = Logind::new(conn.clone(), opts.timeouts.call);
        RpmOstree {
            svc: dbus::Service {
                conn,
                name: SERVICE,
                timeout: opts.timeouts.call,
            },
            opts,
            logind,
            wall: Wall::default(),
        }
    }

    /// Replaces how messages reach terminals (tests point it at a temp dir).
    pub fn with_wall(mut self, wall: Wall) -> RpmOstree {
        self.wall = wall;
        self
    }

    /// The logind client sharing this connection.
    pub fn logind(&self) -> &Logind {
        &self.logind
    }

    /// `Sysroot.RegisterClient({"id": client_id})`, so the daemon stays up.
    pub async fn register_client(&self) -> Result<(), OsError> {
        let opts = HashMap::from([("id", Value::from(self.opts.client_id.as_str()))]);
        self.sysroot_call::<_, ()>(Op::RegisterClient, "RegisterClient", &(opts,))
            .await
    }

    /// Registers as the update driver without changing the deployments
    /// (`UpdateDeployment({}, {"register-driver", "no-pull-base"})`), as
    /// Zincati does at start-up with `deploy --register-driver`.
    pub async fn register_driver(&self) -> Result<(), OsError> {
        let modifiers: HashMap<&str, Value<'_>> = HashMap::new();
        let options = HashMap::from([
            ("register-driver", Value::from(self.opts.client_id.as_str())),
            ("no-pull-base", Value::from(true)),
            ("initiating-command-line", Value::from("upshift-agent")),
        ]);
        let path = self.os_path(Op::RegisterDriver).await?;
        let addr: String = self
            .os_call(
                Op::RegisterDriver,
                &path,
                "UpdateDeployment",
                &(modifiers, options),
            )
            .await?;
        self.run_transaction(Op::RegisterDriver, &addr).await
    }

    /// All deployments in boot order (reloads the daemon's view first).
    pub async fn deployments(&self) -> Result<Vec<Deployment>, OsError> {
        let op = Op::ReadDeployments;
        self.sysroot_call::<_, ()>(op, "Reload", &()).await?;
        let v = self.sysroot_property(op, "Deployments").await?;
        let list: Vec<HashMap<String, OwnedValue>> =
            Vec::try_from(v).map_err(|e| OsError::BadReply {
                op,
                detail: format!("Deployments is not aa{{sv}}: {e}"),
            })?;
        list.iter()
            .map(|d| {
                Deployment::from_dict(d).ok_or_else(|| OsError::BadReply {
                    op,
                    detail: "deployment without checksum".into(),
                })
            })
            .collect()
    }

    /// The booted deployment.
    pub async fn booted_deployment(&self) -> Result<Deployment, OsError> {
        self.deployments()
            .await?
            .into_iter()
            .find(|d| d.booted)
            .ok_or_else(|| OsError::BadReply {
                op: Op::ReadDeployments,
                detail: "no booted deployment".into(),
            })
    }

    /// The staged deployment, if any.
    pub async fn staged_deployment(&self) -> Result<Option<Deployment>, OsError> {
        Ok(self.deployments().await?.into_iter().find(|d| d.staged))
    }

    /// Stages `target` with finalization locked and checks the result.
    pub async fn deploy_locked(&self, target: &Release) -> Result<Deployment, OsError> {
        let op = Op::Deploy;
        let modifiers = if is_checksum(&target.payload) {
            HashMap::from([(
                "set-revision",
                Value::from(format!("revision={}", target.payload)),
            )])
        } else if target.payload.contains("@sha256:") {
            HashMap::from([(
                "set-refspec",
                Value::from(format!("{}{}", self.opts.oci_transport, target.payload)),
            )])
        } else {
            return Err(OsError::UnsupportedPayload(target.payload.clone()));
        };
        let options = HashMap::from([
            ("lock-finalization", Value::from(true)),
            ("skip-branch-check", Value::from(true)),
            ("allow-downgrade", Value::from(self.opts.allow_downgrade)),
            ("register-driver", Value::from(self.opts.client_id.as_str())),
            ("initiating-command-line", Value::from("upshift-agent")),
        ]);
        let path = self.os_path(op).await?;
        let addr: String = self
            .os_call(op, &path, "UpdateDeployment", &(modifiers, options))
            .await?;
        self.run_transaction(op, &addr).await?;
        let staged = self
            .staged_deployment()
            .await?
            .ok_or_else(|| OsError::BadReply {
                op,
                detail: "deploy finished but nothing is staged".into(),
            })?;
        if staged.release().payload != target.payload {
            return Err(OsError::BadReply {
                op,
                detail: format!(
                    "staged payload {} is not the target {}",
                    staged.release().payload,
                    target.payload
                ),
            });
        }
        Ok(staged)
    }

    /// Unlocks and finalizes the staged deployment (`FinalizeDeployment`
    /// with its checksum). rpm-ostree reboots the host once this succeeds.
    pub async fn finalize_staged(&self) -> Result<(), OsError> {
        let op = Op::Finalize;
        let staged = self
            .staged_deployment()
            .await?
            .ok_or(OsError::NothingStaged)?;
        let options = HashMap::from([("checksum", Value::from(staged.checksum.as_str()))]);
        let path = self.os_path(op).await?;
        let addr: String = self
            .os_call(op, &path, "FinalizeDeployment", &(options,))
            .await?;
        self.run_transaction(op, &addr).await
    }

    /// Removes the pending (staged) deployment (`Cleanup(["pending-deploy"])`).
    pub async fn cleanup_pending(&self) -> Result<(), OsError> {
        let op = Op::Cleanup;
        let path = self.os_path(op).await?;
        let addr: String = self
            .os_call(op, &path, "Cleanup", &(vec!["pending-deploy"],))
            .await?;
        self.run_transaction(op, &addr).await
    }

    /// Object path of the booted OS (Sysroot `Booted`).
    async fn os_path(&self, op: Op) -> Result<OwnedObjectPath, OsError> {
        let v = self.sysroot_property(op, "Booted").await?;
        OwnedObjectPath::try_from(v).map_err(|e| OsError::BadReply {
            op,
            detail: format!("Booted is not an object path: {e}"),
        })
    }

    async fn sysroot_call<B, R>(&self, op: Op, method: &str, body: &B) -> Result<R, OsError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: serde::de::DeserializeOwned + zbus::zvariant::Type,
    {
        self.svc
            .call(op, SYSROOT_PATH, SYSROOT_IFACE, method, body)
            .await
    }

    /// Reads a Sysroot property fresh from the daemon (no cache).
    async fn sysroot_property(&self, op: Op, name: &str) -> Result<OwnedValue, OsError> {
        self.svc
            .call(
                op,
                SYSROOT_PATH,
                PROPERTIES_IFACE,
                "Get",
                &(SYSROOT_IFACE, name),
            )
            .await
    }

    async fn os_call<B, R>(
        &self,
        op: Op,
        path: &OwnedObjectPath,
        method: &str,
        body: &B,
    ) -> Result<R, OsError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: serde::de::DeserializeOwned + zbus::zvariant::Type,
    {
        self.svc
            .call(op, path.as_str(), OS_IFACE, method, body)
            .await
    }

    /// Connects to a transaction's private address, starts it and waits
    /// for `Finished`.
    async fn run_transaction(&self, op: Op, address: &str) -> Result<(), OsError> {
        let t = self.opts.timeouts;
        let conn = dbus::timed(op, SERVICE, t.call, async {
            zbus::connection::Builder::address(address)?
                .p2p()
                .build()
                .await
        })
        .await?;
        // Subscribe before Start: signals may follow its reply at once.
        let mut stream = zbus::MessageStream::from(&conn);
        dbus::timed(
            op,
            SERVICE,
            t.call,
            conn.call_method(None::<&str>, "/", Some(TRANSACTION_IFACE), "Start", &()),
        )
        .await?;
        let finished = wait_finished(op, &mut stream);
        match tokio::time::timeout(t.transaction, finished).await {
            Err(_) => Err(OsError::Timeout {
                op,
                after: t.transaction,
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok((true, _))) => Ok(()),
            Ok(Ok((false, message))) => Err(OsError::TransactionFailed { op, message }),
        }
    }
}

/// Reads a transaction's signals until `Finished(success, error_message)`;
/// progress messages are logged at debug level.
async fn wait_finished(
    op: Op,
    stream: &mut zbus::MessageStream,
) -> Result<(bool, String), OsError> {
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|e| dbus::map_error(op, SERVICE, e))?;
        let h = msg.header();
        if msg.message_type() != MessageType::Signal
            || h.interface().map(|i| i.as_str()) != Some(TRANSACTION_IFACE)
        {
            continue;
        }
        match h.member().map(|m| m.as_str()) {
            Some("Finished") => {
                return msg.body().deserialize().map_err(|e| OsError::BadReply {
                    op,
                    detail: format!("Finished: {e}"),
                });
            }
            Some("Message" | "TaskBegin" | "TaskEnd") => {
                if let Ok(text) = msg.body().deserialize::<String>() {
                    tracing::debug!(%op, %text, "rpm-ostree");
                }
            }
            _ => {}
        }
    }
    Err(OsError::BadReply {
        op,
        detail: "transaction connection closed before Finished".into(),
    })
}

impl OsBackend for RpmOstree {
    async fn booted(&self) -> Result<Release, OsError> {
        let r = self.booted_deployment().await?.release();
        if r.version.is_empty() {
            // Update graphs are keyed by version: without one there is no edge to follow.
            return Err(OsError::BadReply {
                op: Op::ReadDeployments,
                detail: "the booted deployment has no version".into(),
            });
        }
        Ok(r)
    }
    /// OCI when the booted deployment has a container image reference.
    async fn booted_scheme(&self) -> Result<super::PayloadScheme, OsError> {
        Ok(self.booted_deployment().await?.scheme())
    }
    async fn staged(&self) -> Result<Option<Release>, OsError> {
        Ok(self.staged_deployment().await?.map(|d| d.release()))
    }
    async fn stage(&self, target: &Release) -> Result<(), OsError> {
        self.deploy_locked(target).await.map(|_| ())
    }
    async fn finalize(&self) -> Result<(), OsError> {
        self.finalize_staged().await
    }
    async fn cleanup(&self) -> Result<(), OsError> {
        self.cleanup_pending().await
    }
    async fn reboot(&self) -> Result<(), OsError> {
        self.logind.reboot().await
    }
    async fn active_sessions(&self) -> Result<usize, OsError> {
        Ok(self.logind.interactive_sessions().await?.len())
    }
    async fn message_sessions(&self, message: &str) -> Result<usize, OsError> {
        let sessions = self.logind.interactive_sessions().await?;
        Ok(self.wall.broadcast(&sessions, message).await.reached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert_eq!(
            image_name("ostree-remote-registry:fedora:quay.io/fedora/fedora-coreos:stable"),
            "quay.io/fedora/fedora-coreos"
        );
        assert_eq!(
            image_name("ostree-unverified-registry:localhost:5000/os@sha256:ab"),
            "localhost:5000/os"
        );
        assert_eq!(image_name("quay.io/x/y"), "quay.io/x/y");
        assert_eq!(
            image_name("ostree-remote-image:fedora:registry:quay.io/x/y:testing"),
            "quay.io/x/y"
        );
    }

    #[test]
    fn release_of_deployments() {
        let mut d = Deployment {
            checksum: "c".repeat(64),
            version: Some("41.1".into()),
            ..Deployment::default()
        };
        assert_eq!(d.release().payload, "c".repeat(64));
        assert_eq!(d.scheme(), super::super::PayloadScheme::Checksum);
        d.base_checksum = Some("b".repeat(64));
        assert_eq!(d.release().payload, "b".repeat(64));
        d.container_image_reference =
            Some("ostree-remote-registry:fedora:quay.io/fedora/fedora-coreos:stable".into());
        d.container_image_digest = Some("sha256:00".into());
        assert_eq!(
            d.release().payload,
            "quay.io/fedora/fedora-coreos@sha256:00"
        );
        assert_eq!(d.scheme(), super::super::PayloadScheme::Oci);
        assert!(is_checksum(&"a".repeat(64)));
        assert!(!is_checksum("41.1"));
    }

    #[test]
    fn deployment_dict_needs_a_checksum() {
        let mut m: HashMap<String, OwnedValue> = HashMap::new();
        m.insert(
            "version".into(),
            OwnedValue::from(zbus::zvariant::Str::from("1")),
        );
        assert_eq!(Deployment::from_dict(&m), None);
        m.insert(
            "checksum".into(),
            OwnedValue::from(zbus::zvariant::Str::from("abc")),
        );
        m.insert("staged".into(), OwnedValue::from(true));
        let d = Deployment::from_dict(&m).unwrap();
        assert!(d.staged && !d.booted);
        assert_eq!(d.version.as_deref(), Some("1"));
    }
}
