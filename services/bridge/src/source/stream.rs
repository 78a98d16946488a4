//! Byte-stream sources: Unix sockets (connect, read to EOF) and files.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UnixStream;
use tokio::time::timeout;

use super::require_complete;
use crate::config::Limits;
use crate::error::SourceError;

/// Connects to the socket at `path` and reads until the peer closes.
pub(super) async fn read_uds(path: &Path, limits: &Limits) -> Result<Bytes, SourceError> {
    let target = path.display().to_string();
    let stream = timeout(limits.connect_timeout, UnixStream::connect(path))
        .await
        .map_err(|_| SourceError::ConnectTimeout(limits.connect_timeout))?
        .map_err(|source| SourceError::Unavailable {
            target: target.clone(),
            source,
        })?;
    let body = read_bounded(stream, limits, &target).await?;
    require_complete(&body)?;
    Ok(body)
}

/// Reads the file at `path` whole.
pub(super) async fn read_file(path: &Path, limits: &Limits) -> Result<Bytes, SourceError> {
    let target = path.display().to_string();
    // Opening a FIFO blocks until a writer shows up: the connect timeout covers it.
    let file = timeout(limits.connect_timeout, tokio::fs::File::open(path))
        .await
        .map_err(|_| SourceError::ConnectTimeout(limits.connect_timeout))?
        .map_err(|source| SourceError::Unavailable {
            target: target.clone(),
            source,
        })?;
    if let Ok(meta) = file.metadata().await
        && meta.is_file()
        && meta.len() > limits.max_bytes
    {
        return Err(SourceError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let body = read_bounded(file, limits, &target).await?;
    require_complete(&body)?;
    Ok(body)
}

/// Reads `reader` to EOF, failing when a read waits longer than the read
/// timeout or the total passes `max_bytes`.
async fn read_bounded<R: AsyncRead + Unpin>(
    mut reader: R,
    limits: &Limits,
    target: &str,
) -> Result<Bytes, SourceError> {
    let mut body = BytesMut::with_capacity(16 * 1024);
    loop {
        if body.capacity() - body.len() < 8 * 1024 {
            body.reserve(64 * 1024);
        }
        let n = timeout(limits.read_timeout, reader.read_buf(&mut body))
            .await
            .map_err(|_| SourceError::ReadTimeout(limits.read_timeout))?
            .map_err(|source| SourceError::Read {
                target: target.to_string(),
                source,
            })?;
        if n == 0 {
            return Ok(body.freeze());
        }
        if body.len() as u64 > limits.max_bytes {
            return Err(SourceError::TooLarge {
                limit: limits.max_bytes,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    fn limits(max_bytes: u64) -> Limits {
        Limits {
            max_bytes,
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn reads_to_eof_across_many_writes() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for i in 0..500 {
                tx.write_all(format!("m{{i=\"{i}\"}} 1\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let body = read_bounded(rx, &limits(1 << 20), "duplex").await.unwrap();
        writer.await.unwrap();
        assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 500);
        assert!(body.starts_with(b"m{i=\"0\"} 1\nm{i=\"1\"} 1\n"));
    }

    #[tokio::test]
    async fn stops_past_the_limit() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tokio::spawn(async move { while tx.write_all(&[b'x'; 64]).await.is_ok() {} });
        let error = read_bounded(rx, &limits(1000), "duplex").await.unwrap_err();
        assert!(
            matches!(error, SourceError::TooLarge { limit: 1000 }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn exactly_the_limit_is_accepted() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tokio::spawn(async move { tx.write_all(&[b'x'; 1000]).await.unwrap() });
        let body = read_bounded(rx, &limits(1000), "duplex").await.unwrap();
        assert_eq!(body.len(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_source_times_out() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(b"half").await.unwrap();
        let limits = Limits {
            read_timeout: Duration::from_secs(3),
            ..Limits::default()
        };
        let error = read_bounded(rx, &limits, "duplex").await.unwrap_err();
        assert!(matches!(error, SourceError::ReadTimeout(_)), "{error}");
        drop(tx);
    }
}
