//! Client plumbing shared by the hint stream, the lock and telemetry:
//! gRPC channels and jittered exponential backoff with an injectable RNG.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A source of uniform random numbers in `[0, 1)`; injected so tests are
/// deterministic.
pub type Rng = Box<dyn FnMut() -> f64 + Send + Sync>;

/// The process RNG.
pub fn thread_rng() -> Rng {
    Box::new(|| rand::random_range(0.0..1.0))
}

/// TLS material for the agent's clients (`[tls]`): a CA bundle to verify
/// the services, and an optional client certificate for mTLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA bundle.
    pub ca_pem: Option<String>,
    /// PEM client certificate chain and key.
    pub identity: Option<(String, String)>,
}

impl ClientTls {
    fn tonic(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_pem {
            c = c.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }

    /// Applies the CA and client identity to an HTTP client builder.
    pub fn reqwest(
        &self,
        mut b: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, reqwest::Error> {
        if let Some(ca) = &self.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(ca.as_bytes())? {
                b = b.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &self.identity {
            b = b.identity(reqwest::Identity::from_pem(
                format!("{cert}\n{key}").as_bytes(),
            )?);
        }
        Ok(b)
    }
}

/// An HTTP client with the agent's TLS material and a whole-request timeout.
pub fn http_client(tls: Option<&ClientTls>, timeout: Duration) -> reqwest::Client {
    let b = reqwest::Client::builder().timeout(timeout);
    let b = match tls {
        Some(t) => match t.reqwest(b) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "TLS material rejected by the HTTP client");
                reqwest::Client::builder().timeout(timeout)
            }
        },
        None => b,
    };
    b.build().unwrap_or_default()
}

/// A lazily connecting gRPC channel to `url` (`http://host:port`, or
/// `https://` verified with the `[tls]` CA), with HTTP/2 keepalives so dead
/// peers are noticed.
pub fn channel(url: &str, tls: Option<&ClientTls>) -> Result<Channel, tonic::transport::Error> {
    let mut e = Endpoint::from_shared(url.to_owned())?;
    if url.starts_with("https://") {
        e = e.tls_config(tls.cloned().unwrap_or_default().tonic())?;
    }
    Ok(e.connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Jittered exponential backoff ("equal jitter": half fixed, half random),
/// reset after a success; a server's retry hint replaces the exponential
/// step and is spread upwards by up to a quarter.
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: Rng,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff")
            .field("base", &self.base)
            .field("max", &self.max)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Backoff {
    /// Backoff from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration, rng: Rng) -> Self {
        Self {
            base,
            max,
            attempt: 0,
            rng,
        }
    }

    /// Consecutive failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self, server_hint: Option<Duration>) -> Duration {
        let r = (self.rng)().clamp(0.0, 1.0);
        if let Some(h) = server_hint {
            self.attempt = 0;
            return h + h.mul_f64(0.25 * r);
        }
        let cap = self
            .base
            .saturating_mul(2u32.saturating_pow(self.attempt.min(30)))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        cap / 2 + (cap / 2).mul_f64(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(r: f64) -> Rng {
        Box::new(move || r)
    }

    #[test]
    fn exponential_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8), fixed(0.0));
        let got: Vec<_> = (0..6).map(|_| b.next_delay(None).as_millis()).collect();
        assert_eq!(got, vec![500, 1000, 2000, 4000, 4000, 4000]);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8), fixed(1.0));
        let got: Vec<_> = (0..5).map(|_| b.next_delay(None).as_millis()).collect();
        assert_eq!(got, vec![1000, 2000, 4000, 8000, 8000]);
        assert_eq!(b.attempts(), 5);
        b.reset();
        assert_eq!(b.next_delay(None), Duration::from_secs(1));
    }

    #[test]
    fn server_hint_wins_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), fixed(0.5));
        b.next_delay(None);
        b.next_delay(None);
        let d = b.next_delay(Some(Duration::from_secs(40)));
        assert_eq!(d, Duration::from_secs(45));
        assert_eq!(b.attempts(), 0);
    }
}
