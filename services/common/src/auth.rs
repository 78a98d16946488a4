//! Admin authorization shared by the admin RPCs of lock and policy.

use std::fmt;

use tonic::{Request, Status};

use crate::server::PeerIdentity;

/// Who performed an admin call, as written to the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks admin bearer tokens and admin client certificate names.
#[derive(Clone)]
pub struct AdminAuth {
    token: Option<String>,
    cert_names: Vec<String>,
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAuth")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cert_names", &self.cert_names)
            .finish()
    }
}

impl AdminAuth {
    /// Creates an authorizer; empty tokens are treated as unset.
    pub fn new(token: Option<String>, admin_cert_names: Vec<String>) -> Self {
        let token = token.filter(|t| !t.is_empty());
        Self {
            token,
            cert_names: admin_cert_names,
        }
    }

    /// Returns the actor when the request carries a valid admin credential.
    pub fn authorize<T>(&self, req: &Request<T>) -> Result<Actor, Status> {
        if self.token.is_none() && self.cert_names.is_empty() {
            return Err(Status::permission_denied(
                "admin calls are disabled: configure server.admin_token_file \
                 (or --admin-token-file / UPSHIFT_ADMIN_TOKEN_FILE) or server.admin_cert_names",
            ));
        }
        if let Some(peer) = req.extensions().get::<PeerIdentity>()
            && let Some(cn) = &peer.common_name
            && self.cert_names.iter().any(|n| n == cn)
        {
            return Ok(Actor(format!("cert:{cn}")));
        }
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "admin call needs `authorization: Bearer <token>` or an admin client certificate",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        match &self.token {
            Some(t) if constant_time_eq(t.as_bytes(), presented.trim().as_bytes()) => {
                Ok(Actor("token".to_string()))
            }
            _ => Err(Status::permission_denied("invalid admin token")),
        }
    }
}

/// Compares without an early exit so timing does not reveal the matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn req(auth: Option<&str>, cn: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        if let Some(cn) = cn {
            r.extensions_mut().insert(PeerIdentity {
                common_name: Some(cn.into()),
                der: Vec::new(),
            });
        }
        r
    }

    #[test]
    fn token_and_cert() {
        let a = AdminAuth::new(Some("s3cret-token-value".into()), vec!["ops-admin".into()]);
        assert_eq!(
            a.authorize(&req(Some("Bearer s3cret-token-value"), None))
                .unwrap()
                .to_string(),
            "token"
        );
        assert_eq!(
            a.authorize(&req(None, Some("ops-admin")))
                .unwrap()
                .to_string(),
            "cert:ops-admin"
        );
        assert_eq!(
            a.authorize(&req(None, None)).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            a.authorize(&req(Some("Bearer nope"), None))
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        assert_eq!(
            a.authorize(&req(None, Some("intruder")))
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
    }

    #[test]
    fn unconfigured_refuses() {
        let a = AdminAuth::new(None, vec![]);
        let err = a.authorize(&req(Some("Bearer x"), None)).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("admin_token_file"));
    }
}
