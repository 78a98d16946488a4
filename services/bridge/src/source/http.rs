//! HTTP sources on this host: loopback TCP or a Unix socket, HTTP/1.1,
//! one connection per scrape, the body read whole before anything is answered.

use std::net::SocketAddr;

use ::http::{HeaderValue, Request, Response, header};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::{Exposition, HttpTarget, ScrapeRequest, require_complete, require_openmetrics_eof};
use crate::config::Limits;
use crate::error::SourceError;

/// What the bridge asks for when the scraper sent no `Accept`.
const DEFAULT_ACCEPT: &str = "text/plain;version=0.0.4;q=1,*/*;q=0.1";

/// Requests the exposition from `target`.
pub(super) async fn fetch(
    target: &HttpTarget,
    limits: &Limits,
    request: &ScrapeRequest,
) -> Result<Exposition, SourceError> {
    match target {
        HttpTarget::Tcp {
            host,
            port,
            authority,
            path_and_query,
        } => {
            let url = format!("http://{authority}{path_and_query}");
            let stream = timeout(limits.connect_timeout, connect_loopback(host, *port, &url))
                .await
                .map_err(|_| SourceError::ConnectTimeout(limits.connect_timeout))??;
            let _ = stream.set_nodelay(true);
            exchange(stream, authority, path_and_query, &url, limits, request).await
        }
        HttpTarget::Unix {
            socket,
            path_and_query,
        } => {
            let url = format!("unix:{}:{path_and_query}", socket.display());
            let stream = timeout(limits.connect_timeout, UnixStream::connect(socket))
                .await
                .map_err(|_| SourceError::ConnectTimeout(limits.connect_timeout))?
                .map_err(|source| SourceError::Unavailable {
                    target: url.clone(),
                    source,
                })?;
            exchange(stream, "localhost", path_and_query, &url, limits, request).await
        }
    }
}

/// Connects to the first loopback address of `host` that accepts.
async fn connect_loopback(host: &str, port: u16, url: &str) -> Result<TcpStream, SourceError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| SourceError::Unavailable {
            target: url.to_string(),
            source,
        })?
        .filter(|a| a.ip().is_loopback())
        .collect();
    if addrs.is_empty() {
        return Err(SourceError::NotLoopback {
            host: host.to_string(),
        });
    }
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(SourceError::Unavailable {
        target: url.to_string(),
        source: last.unwrap_or_else(|| std::io::Error::other("no address")),
    })
}

/// Aborts the connection task when the scrape ends, however it ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange<S>(
    stream: S,
    authority: &str,
    path_and_query: &str,
    url: &str,
    limits: &Limits,
    scrape: &ScrapeRequest,
) -> Result<Exposition, SourceError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = |source| SourceError::Http {
        target: url.to_string(),
        source,
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(protocol)?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let request = build_request(authority, path_and_query, scrape, url)?;
    let response = timeout(limits.read_timeout, sender.send_request(request))
        .await
        .map_err(|_| SourceError::ReadTimeout(limits.read_timeout))?
        .map_err(protocol)?;
    let openmetrics_type = check_head(&response, limits, url)?;
    let body = read_body(response.into_body(), limits, url).await?;
    // A body without framing (no length, not chunked) ends when the source
    // closes, cut or not: the format's own end is checked on every body.
    if openmetrics_type.is_some() {
        require_openmetrics_eof(&body)?;
    } else {
        require_complete(&body)?;
    }
    Ok(Exposition {
        body,
        openmetrics_type,
    })
}

fn build_request(
    authority: &str,
    path_and_query: &str,
    scrape: &ScrapeRequest,
    url: &str,
) -> Result<Request<Empty<Bytes>>, SourceError> {
    let accept = scrape
        .accept
        .clone()
        .unwrap_or(HeaderValue::from_static(DEFAULT_ACCEPT));
    Request::get(path_and_query)
        .header(header::HOST, authority)
        .header(header::ACCEPT, accept)
        .header(
            header::USER_AGENT,
            concat!("upshift-bridge/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|e| SourceError::Unavailable {
            target: url.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })
}

/// Fails on a non-2xx status or a declared length past the limit; returns
/// the source's OpenMetrics content type, if it declared one.
fn check_head(
    response: &Response<Incoming>,
    limits: &Limits,
    url: &str,
) -> Result<Option<HeaderValue>, SourceError> {
    if !response.status().is_success() {
        return Err(SourceError::HttpStatus {
            target: url.to_string(),
            status: response.status(),
        });
    }
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes) {
        return Err(SourceError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    Ok(response
        .headers()
        .get(header::CONTENT_TYPE)
        .filter(|v| is_openmetrics(v))
        .cloned())
}

/// Reads the body to its end; hyper reports a body cut short (by
/// `Content-Length` or chunked framing) as an error, never as an end.
async fn read_body(mut body: Incoming, limits: &Limits, url: &str) -> Result<Bytes, SourceError> {
    let mut buf = BytesMut::new();
    loop {
        let frame = timeout(limits.read_timeout, body.frame())
            .await
            .map_err(|_| SourceError::ReadTimeout(limits.read_timeout))?;
        let Some(frame) = frame else {
            return Ok(buf.freeze());
        };
        let frame = frame.map_err(|source| SourceError::Http {
            target: url.to_string(),
            source,
        })?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limits.max_bytes {
                return Err(SourceError::TooLarge {
                    limit: limits.max_bytes,
                });
            }
            buf.extend_from_slice(&data);
        }
    }
}

fn is_openmetrics(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|v| {
        v.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/openmetrics-text")
    })
}
