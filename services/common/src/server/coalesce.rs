//! Write coalescing for accepted connections.
//!
//! hyper's HTTP/2 connection task writes and flushes as soon as a stream
//! task hands it a frame, and tokio runs the woken connection task right
//! after the stream task that woke it. A change pushed to the 150 hint
//! streams of one connection was therefore 150 `writev` calls, the largest
//! cost of a fleet-wide push. [`Coalesced`] takes writes into a buffer and,
//! at the first flush with data pending, yields once to the scheduler, so
//! the frames other streams produce meanwhile join the buffer; the next
//! flush writes them all in one call. A lone response costs one extra poll
//! of its connection task, no timer and no added wait beyond the tasks that
//! were already runnable. Only HTTP/2 connections batch (seen from the
//! client's connection preface, or set after a TLS handshake that chose
//! `h2`): an HTTP/1.1 response has nothing to share its write with.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest buffered amount; beyond it writes go out before more are taken.
const MAX_BUFFER: usize = 64 * 1024;

/// The HTTP/2 client connection preface starts with these bytes.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Whether writes are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing read yet: writes pass through.
    Undecided,
    /// Writes pass through.
    Direct,
    /// Writes are buffered until a flush that yields once.
    Batch,
}

/// An I/O object whose writes are buffered until a flush, and whose
/// flushes yield once to let concurrent writers join.
#[derive(Debug)]
pub struct Coalesced<S> {
    inner: S,
    mode: Mode,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    written: usize,
    /// Whether the pending flush has yielded already.
    yielded: bool,
}

impl<S> Coalesced<S> {
    /// Wraps `inner`; batching starts if the peer speaks HTTP/2.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            mode: Mode::Undecided,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }

    /// Turns batching on (HTTP/2 negotiated by TLS ALPN) or off.
    pub fn set_batching(&mut self, on: bool) {
        if self.buf.is_empty() {
            self.mode = if on { Mode::Batch } else { Mode::Direct };
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Idle connections keep no buffer (a policy instance holds many).
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.mode == Mode::Undecided {
            let got = &buf.filled()[before..];
            let n = got.len().min(H2_PREFACE.len());
            if n > 0 {
                this.mode = if got[..n] == H2_PREFACE[..n] {
                    Mode::Batch
                } else {
                    Mode::Direct
                };
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.mode != Mode::Batch {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.len() + data.len() > MAX_BUFFER {
            ready!(this.poll_drain(cx))?;
            if data.len() > MAX_BUFFER {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.mode != Mode::Batch {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.buf.len() + total > MAX_BUFFER {
            ready!(this.poll_drain(cx))?;
            if total > MAX_BUFFER {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        self.mode == Mode::Batch || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.yielded {
            // Waking itself puts the task behind the ones already runnable.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn writes_arrive_whole_and_in_order_after_a_flush() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = Coalesced::new(a);
        w.set_batching(true);
        w.write_all(b"hello ").await.unwrap();
        let n = w
            .write_vectored(&[IoSlice::new(b"wor"), IoSlice::new(b"ld")])
            .await
            .unwrap();
        assert_eq!(n, 5, "both slices are taken");
        let mut probe = [0u8; 1];
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), b.read(&mut probe));
        assert!(early.await.is_err(), "nothing is written before a flush");
        w.flush().await.unwrap();
        let mut got = vec![0u8; 11];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
    }

    #[tokio::test]
    async fn large_writes_pass_through_and_shutdown_drains() {
        let (a, mut b) = tokio::io::duplex(4 << 20);
        let mut w = Coalesced::new(a);
        w.set_batching(true);
        w.write_all(b"head").await.unwrap();
        let big = vec![7u8; 3 * MAX_BUFFER];
        w.write_all(&big).await.unwrap();
        w.write_all(b"tail").await.unwrap();
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 4 + big.len() + 4);
        assert_eq!(&got[..4], b"head");
        assert!(got[4..4 + big.len()].iter().all(|&x| x == 7));
        assert_eq!(&got[got.len() - 4..], b"tail");
    }

    #[tokio::test]
    async fn only_an_http2_peer_gets_batched_writes() {
        for (preface, batched) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM"[..], true),
            (b"GET / HTTP/1.1\r\n", false),
        ] {
            let (a, mut b) = tokio::io::duplex(1 << 16);
            let mut w = Coalesced::new(a);
            b.write_all(preface).await.unwrap();
            let mut got = vec![0u8; preface.len()];
            w.read_exact(&mut got).await.unwrap();
            w.write_all(b"reply").await.unwrap();
            let mut probe = [0u8; 5];
            let read = tokio::time::timeout(
                std::time::Duration::from_millis(20),
                b.read_exact(&mut probe),
            )
            .await;
            assert_eq!(
                read.is_err(),
                batched,
                "{:?}",
                String::from_utf8_lossy(preface)
            );
        }
    }

    #[tokio::test]
    async fn a_flush_yields_once_then_writes() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = Coalesced::new(a);
        w.set_batching(true);
        w.write_all(b"x").await.unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_pending());
        assert!(matches!(
            Pin::new(&mut w).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        let mut got = [0u8; 1];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"x");
        assert!(
            matches!(Pin::new(&mut w).poll_flush(&mut cx), Poll::Ready(Ok(()))),
            "nothing pending: no yield"
        );
    }
}
