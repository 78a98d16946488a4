//! Injected time. Services never read the wall clock directly: they take a
//! [`SharedClock`], so tests can run on tokio's paused clock and the dev mesh
//! can run faster than real time.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A source of wall-clock time that can also say when a wall-clock instant
/// will arrive on tokio's timer, so tasks can sleep until it.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// The tokio instant at which this clock will read `at` (now or earlier
    /// when `at` has passed).
    fn deadline_for(&self, at: SystemTime) -> Instant;

    /// Seconds since the Unix epoch, as a float.
    fn now_epoch_secs(&self) -> f64 {
        epoch_secs(self.now())
    }
}

/// The clock handle services hold.
pub type SharedClock = Arc<dyn Clock>;

/// Seconds since the Unix epoch of `t` (negative before 1970).
pub fn epoch_secs(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The `SystemTime` of `secs` seconds since the Unix epoch.
pub fn from_epoch_secs(secs: f64) -> SystemTime {
    if secs >= 0.0 {
        UNIX_EPOCH + Duration::from_secs_f64(secs)
    } else {
        UNIX_EPOCH - Duration::from_secs_f64(-secs)
    }
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    /// A shared handle to the real clock.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that reads the wall clock
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn deadline_for(&self, at: SystemTime) -> Instant {
        let wait = at.duration_since(self.now()).unwrap_or(Duration::ZERO);
        Instant::now() + wait
    }
}

/// A clock that starts at a given wall time and advances `speed` times as
/// fast as tokio's clock. With `speed = 1` on a paused tokio runtime it is the
/// deterministic test clock; with `speed = 2880` the dev mesh runs a 48-hour
/// rollout in a minute.
#[derive(Debug, Clone)]
pub struct ScaledClock {
    base_wall: SystemTime,
    base_instant: Instant,
    speed: f64,
}

impl ScaledClock {
    /// A clock reading `start` now and running `speed` times real (tokio) time.
    ///
    /// A non-finite or non-positive `speed` is treated as 1.
    pub fn new(start: SystemTime, speed: f64) -> Self {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        Self {
            base_wall: start,
            base_instant: Instant::now(),
            speed,
        }
    }

    /// A shared handle.
    pub fn shared(start: SystemTime, speed: f64) -> SharedClock {
        Arc::new(Self::new(start, speed))
    }

    /// The speed factor.
    pub fn speed(&self) -> f64 {
        self.speed
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> SystemTime {
        let elapsed = Instant::now().saturating_duration_since(self.base_instant);
        self.base_wall + elapsed.mul_f64(self.speed)
    }

    fn deadline_for(&self, at: SystemTime) -> Instant {
        match at.duration_since(self.base_wall) {
            Ok(ahead) => self.base_instant + ahead.div_f64(self.speed),
            Err(_) => self.base_instant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn scaled_clock_follows_tokio_time() {
        let start = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        let clock = ScaledClock::new(start, 60.0);
        assert_eq!(clock.now(), start);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(120));
        let target = start + Duration::from_secs(600);
        tokio::time::sleep_until(clock.deadline_for(target)).await;
        assert_eq!(clock.now(), target);
    }

    #[test]
    fn epoch_round_trip() {
        let t = from_epoch_secs(1_602_077_400.5);
        assert!((epoch_secs(t) - 1_602_077_400.5).abs() < 1e-6);
        assert!(epoch_secs(from_epoch_secs(-5.0)) + 5.0 < 1e-9);
    }
}
