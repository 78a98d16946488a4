//! FleetLock HTTP: `POST {base}v1/pre-reboot` and `POST {base}v1/steady-state`.

use std::time::Instant as StdInstant;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::{Method as HttpMethod, StatusCode};
use serde::Deserialize;
use upshift_common::http_error::ApiError;

use crate::error::LockError;
use crate::semaphore::{LockRequest, Method};
use crate::service::{CLIENT_ACTOR, LockService};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The FleetLock request body.
#[derive(Debug, Deserialize)]
struct FleetLockBody {
    client_params: ClientParams,
}

#[derive(Debug, Deserialize)]
struct ClientParams {
    /// Early Zincati releases sent `node_uuid`; the protocol names it `id`.
    #[serde(alias = "node_uuid")]
    id: String,
    group: String,
}

#[derive(Debug, Clone, Copy)]
enum Api {
    PreReboot,
    SteadyState,
}

/// The FleetLock router, with endpoints under the configured base path.
pub fn router(svc: LockService) -> Router {
    let base = svc.settings().base_path.clone();
    Router::new()
        .route(
            &format!("{base}v1/pre-reboot"),
            any(|State(svc): State<LockService>, req: Request| handle(svc, Api::PreReboot, req)),
        )
        .route(
            &format!("{base}v1/steady-state"),
            any(|State(svc): State<LockService>, req: Request| handle(svc, Api::SteadyState, req)),
        )
        .with_state(svc)
}

async fn handle(svc: LockService, api: Api, req: Request) -> Response {
    let started = StdInstant::now();
    let name = match api {
        Api::PreReboot => "fleetlock_pre_reboot",
        Api::SteadyState => "fleetlock_steady_state",
    };
    let result = run(&svc, api, req).await;
    let kind = match &result {
        Ok(()) => "ok",
        Err(e) => e.kind,
    };
    svc.inner.metrics.request(name, kind, started.elapsed());
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) if e.status == StatusCode::METHOD_NOT_ALLOWED => {
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn run(svc: &LockService, api: Api, req: Request) -> Result<(), ApiError> {
    if req.method() != HttpMethod::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed; use POST", req.method()),
        ));
    }
    let header_ok = req
        .headers()
        .get("fleet-lock-protocol")
        .is_some_and(|v| v.as_bytes() == b"true");
    if !header_ok {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_fleet_lock_header",
            "header `fleet-lock-protocol: true` is required",
        ));
    }
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            )
        })?;
    // Content-Type is deliberately not checked: Zincati sends none.
    let body: FleetLockBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_client_params",
            format!("cannot parse body: {e}"),
        )
    })?;
    let ClientParams { id, group } = body.client_params;
    if id.is_empty() {
        return Err(LockError::InvalidParams("id must not be empty".into()).to_api());
    }
    let settings = svc.group_settings(&group).map_err(|e| e.to_api())?;
    match api {
        Api::PreReboot => {
            let req = LockRequest {
                id,
                method: Method::Fleetlock,
                ttl_secs: settings.fleetlock_ttl.map(|t| t.as_secs()),
            };
            svc.lock(&group, req, CLIENT_ACTOR)
                .await
                .map_err(|e| e.to_api())?;
        }
        Api::SteadyState => {
            svc.unlock(&group, &id, CLIENT_ACTOR, "release", "steady-state")
                .await
                .map_err(|e| e.to_api())?;
        }
    }
    Ok(())
}
