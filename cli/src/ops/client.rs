//! Connections to the services: URLs, TLS, the admin token, deadlines, and
//! the errors (with their exit codes) every operator command shares.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

/// Default URL of the graph service.
pub const DEFAULT_GRAPH_URL: &str = "http://127.0.0.1:7401";
/// Default URL of the policy service.
pub const DEFAULT_POLICY_URL: &str = "http://127.0.0.1:7402";
/// Default URL of the lock service.
pub const DEFAULT_LOCK_URL: &str = "http://127.0.0.1:7403";
/// Default URL of the telemetry service.
pub const DEFAULT_TELEMETRY_URL: &str = "http://127.0.0.1:7404";

/// Process exit codes of the operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The call failed (server error, not found, permission denied).
    Failed = 1,
    /// Usage error (flags, unreadable files): `EX_USAGE`, like a bad flag
    /// or configuration anywhere in `upshift`.
    Usage = 64,
    /// A service is unreachable or not serving.
    Unavailable = 3,
}

impl Exit {
    /// The worse of two outcomes: usage, then unavailable, then a failed
    /// call, then success.
    pub fn worse(self, other: Exit) -> Exit {
        let rank = |e: Exit| match e {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Unavailable => 2,
            Exit::Usage => 3,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    Table,
    /// One JSON document on stdout (field names are stable).
    Json,
}

/// Flags every operator command has (global: they may follow the
/// subcommand).
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Output format.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value_t = Format::Table,
        env = "UPSHIFT_OUTPUT",
        global = true
    )]
    pub output: Format,
    /// Deadline of each call (connect included), e.g. 5s, 500ms.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    /// PEM CA bundle trusted for https URLs (default: the public web PKI roots).
    #[arg(long, value_name = "FILE", env = "UPSHIFT_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mTLS (with --client-key).
    #[arg(long, value_name = "FILE", env = "UPSHIFT_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, value_name = "FILE", env = "UPSHIFT_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
    /// File holding the admin token (else env UPSHIFT_ADMIN_TOKEN is used).
    #[arg(
        long,
        value_name = "FILE",
        env = "UPSHIFT_ADMIN_TOKEN_FILE",
        global = true
    )]
    pub admin_token_file: Option<PathBuf>,
}

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// No connection could be made, or the service is not serving.
    #[error("{service} at {url} is unreachable: {reason}")]
    Unreachable {
        /// Which service ("graph service").
        service: String,
        /// Its URL.
        url: String,
        /// The transport error chain.
        reason: String,
    },
    /// The service answered with an error.
    #[error("{service} at {url}: {}: {message}{hint}", code_name(*.code))]
    Call {
        /// Which service ("graph service").
        service: String,
        /// Its URL.
        url: String,
        /// gRPC status code.
        code: Code,
        /// Status message.
        message: String,
        /// Advice for the operator (may be empty).
        hint: &'static str,
    },
    /// Bad flags or an unreadable file.
    #[error("{0}")]
    Usage(String),
}

impl OpsError {
    /// The exit code for this error.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Unreachable { .. } => Exit::Unavailable,
            Self::Call { code, .. } if is_unavailable(*code) => Exit::Unavailable,
            Self::Call { .. } => Exit::Failed,
            Self::Usage(_) => Exit::Usage,
        }
    }
}

/// Whether a status code means the service could not be reached in time.
pub fn is_unavailable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// Stable snake_case name of a gRPC status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Resolved connection settings shared by every service connection.
#[derive(Debug, Clone)]
pub struct Options {
    timeout: Duration,
    tls: Option<TlsFiles>,
    token: Option<String>,
}

#[derive(Debug, Clone)]
struct TlsFiles {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Options {
    /// Reads the CA and client certificate files, and the admin token when
    /// the command is an admin call (so read-only commands and health checks
    /// never fail over a token file they do not need).
    pub fn load(args: &CommonArgs, admin: bool) -> Result<Self, OpsError> {
        let ca = args.ca_file.as_deref().map(read_file).transpose()?;
        let identity = match (&args.client_cert, &args.client_key) {
            (Some(cert), Some(key)) => Some((read_file(cert)?, read_file(key)?)),
            (None, None) => None,
            _ => {
                return Err(OpsError::Usage(
                    "--client-cert and --client-key go together".into(),
                ));
            }
        };
        let token = match &args.admin_token_file {
            _ if !admin => None,
            Some(path) => {
                let text = String::from_utf8(read_file(path)?).map_err(|_| {
                    OpsError::Usage(format!("{}: the token is not UTF-8", path.display()))
                })?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(OpsError::Usage(format!(
                        "{}: the token file is empty",
                        path.display()
                    )));
                }
                Some(token)
            }
            None => std::env::var("UPSHIFT_ADMIN_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        let tls = (ca.is_some() || identity.is_some()).then_some(TlsFiles { ca, identity });
        Ok(Self {
            timeout: args.timeout,
            tls,
            token,
        })
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, OpsError> {
    std::fs::read(path).map_err(|e| OpsError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// A connection to one service.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Which service, for messages ("graph service").
    pub service: String,
    /// The URL connected to.
    pub url: String,
    /// The gRPC channel.
    pub channel: Channel,
    options: Options,
}

impl Conn {
    /// Connects (TLS for https URLs), failing with `Unreachable` when the
    /// service cannot be reached within the deadline.
    pub async fn connect(service: &str, url: &str, options: &Options) -> Result<Self, OpsError> {
        let endpoint = endpoint(service, url, options)?;
        let service = service.to_string();
        let channel = match tokio::time::timeout(options.timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(err)) => {
                let mut reason = error_chain(&err);
                if reason.contains("certificate") {
                    reason.push_str(" (for a private CA, give it with --ca-file)");
                }
                return Err(OpsError::Unreachable {
                    service,
                    url: url.to_string(),
                    reason,
                });
            }
            Err(_) => {
                return Err(OpsError::Unreachable {
                    service,
                    url: url.to_string(),
                    reason: format!("no connection within {:?}", options.timeout),
                });
            }
        };
        Ok(Self {
            service,
            url: url.to_string(),
            channel,
            options: options.clone(),
        })
    }

    /// A request with the deadline set, and the admin token when one is
    /// configured.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.options.timeout);
        if let Some(token) = &self.options.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// Turns a failed call into an error naming the service and URL.
    pub fn fail(&self, status: Status) -> OpsError {
        // A connection that breaks during the call (e.g. plain HTTP/2 to a
        // TLS port) surfaces as `unknown` or `internal`, and the client-side
        // deadline as `cancelled`, each with a local source error; statuses
        // sent by a server carry no source.
        if let Some(source) = std::error::Error::source(&status) {
            let reason = match status.code() {
                Code::Cancelled => Some(format!(
                    "no answer within {:?} ({})",
                    self.options.timeout,
                    error_chain(source)
                )),
                Code::Unknown | Code::Internal => {
                    Some(format!("{}: {}", status.message(), error_chain(source)))
                }
                _ => None,
            };
            if let Some(reason) = reason {
                return OpsError::Unreachable {
                    service: self.service.clone(),
                    url: self.url.clone(),
                    reason,
                };
            }
        }
        let hint = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied if self.options.token.is_none() => {
                " (no admin token given: use --admin-token-file FILE or UPSHIFT_ADMIN_TOKEN)"
            }
            Code::Unauthenticated | Code::PermissionDenied => {
                " (check the admin token given with --admin-token-file or UPSHIFT_ADMIN_TOKEN)"
            }
            _ => "",
        };
        OpsError::Call {
            service: self.service.clone(),
            url: self.url.clone(),
            code: status.code(),
            message: status.message().to_string(),
            hint,
        }
    }
}

fn endpoint(service: &str, url: &str, options: &Options) -> Result<Endpoint, OpsError> {
    let usage = |reason: String| OpsError::Usage(format!("{service} URL {url:?}: {reason}"));
    let https = url.starts_with("https://");
    if !https && !url.starts_with("http://") {
        return Err(usage("must start with http:// or https://".into()));
    }
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| usage(e.to_string()))?
        .connect_timeout(options.timeout)
        .timeout(options.timeout);
    if https {
        let mut tls = ClientTlsConfig::new();
        match options.tls.as_ref() {
            Some(files) => {
                tls = match &files.ca {
                    Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                    None => tls.with_webpki_roots(),
                };
                if let Some((cert, key)) = &files.identity {
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
            }
            None => tls = tls.with_webpki_roots(),
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| usage(error_chain(&e)))?;
    }
    Ok(endpoint)
}

/// An error and its sources, joined by ": ".
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(token_file: Option<PathBuf>) -> CommonArgs {
        CommonArgs {
            output: Format::Table,
            timeout: Duration::from_secs(1),
            ca_file: None,
            client_cert: None,
            client_key: None,
            admin_token_file: token_file,
        }
    }

    #[test]
    fn token_file_is_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("upshift-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  s3cret-token-value\n").unwrap();
        let options = Options::load(&args(Some(file.clone())), true).unwrap();
        assert_eq!(options.token.as_deref(), Some("s3cret-token-value"));
        std::fs::write(&file, "\n").unwrap();
        let err = Options::load(&args(Some(file.clone())), true).unwrap_err();
        assert_eq!(err.exit(), Exit::Usage);
        let err = Options::load(&args(Some(dir.join("missing"))), true).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        // Read-only commands ignore the token file.
        assert!(Options::load(&args(Some(dir.join("missing"))), false).is_ok());
        let mut half = args(None);
        half.client_cert = Some(dir.join("cert.pem"));
        assert_eq!(Options::load(&half, false).unwrap_err().exit(), Exit::Usage);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn requests_carry_the_deadline_and_the_bearer_token() {
        let mut options = Options::load(&args(None), false).unwrap();
        options.token = Some("s3cret-token-value".into());
        let conn = Conn {
            service: "policy service".into(),
            url: "http://127.0.0.1:1".into(),
            channel: Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
            options,
        };
        let request = conn.request(());
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret-token-value"
        );
        assert_eq!(request.metadata().get("grpc-timeout").unwrap(), "1000000u");
        let err = conn.fail(Status::permission_denied("invalid admin token"));
        assert!(err.to_string().contains("check the admin token"), "{err}");
    }

    #[test]
    fn errors_map_to_exit_codes_and_name_the_service() {
        let call = |code| OpsError::Call {
            service: "lock service".into(),
            url: "http://h:1".into(),
            code,
            message: "m".into(),
            hint: "",
        };
        assert_eq!(call(Code::NotFound).exit(), Exit::Failed);
        assert_eq!(call(Code::PermissionDenied).exit(), Exit::Failed);
        assert_eq!(call(Code::Unavailable).exit(), Exit::Unavailable);
        assert_eq!(call(Code::DeadlineExceeded).exit(), Exit::Unavailable);
        assert_eq!(
            call(Code::NotFound).to_string(),
            "lock service at http://h:1: not_found: m"
        );
        let unreachable = OpsError::Unreachable {
            service: "graph service".into(),
            url: "http://h:2".into(),
            reason: "refused".into(),
        };
        assert_eq!(unreachable.exit(), Exit::Unavailable);
        assert_eq!(
            unreachable.to_string(),
            "graph service at http://h:2 is unreachable: refused"
        );
    }

    #[test]
    fn urls_must_be_http_or_https() {
        let options = Options::load(&args(None), false).unwrap();
        let err = endpoint("graph service", "ftp://x", &options).unwrap_err();
        assert_eq!(err.exit(), Exit::Usage);
        assert!(endpoint("graph service", "https://example.org:7401", &options).is_ok());
    }
}
