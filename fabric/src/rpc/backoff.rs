//! Reconnect back-off: exponential, capped, with jitter. Pure: the caller
//! supplies the random number, so tests and simulations are deterministic.

use std::time::Duration;

/// Exponential back-off with "equal jitter": the n-th consecutive failure
/// waits a uniformly random time in `[d/2, d]`, `d = min(max, initial·2ⁿ)`.
/// Half the delay is guaranteed (a dead peer is not hammered), half is
/// random (peers that lost the same node do not reconnect in lock-step).
#[derive(Clone, Debug)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    failures: u32,
}

impl Backoff {
    pub fn new(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            initial_ms: initial_ms.max(1),
            max_ms: max_ms.max(initial_ms.max(1)),
            failures: 0,
        }
    }

    /// Records a failure; returns how long to wait before the next attempt.
    /// `unit` is a random number in `[0, 1)`.
    pub fn on_failure(&mut self, unit: f64) -> Duration {
        let exp = self.failures.min(32);
        let d = self.initial_ms.saturating_mul(1u64 << exp).min(self.max_ms);
        self.failures = self.failures.saturating_add(1);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = d / 2;
        Duration::from_millis(half + ((d - half) as f64 * unit) as u64)
    }

    /// Records a success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(50, 1000);
        let lows: Vec<u64> = (0..8)
            .map(|_| b.on_failure(0.0).as_millis() as u64)
            .collect();
        assert_eq!(lows, [25, 50, 100, 200, 400, 500, 500, 500]);
        let mut b = Backoff::new(50, 1000);
        let highs: Vec<u64> = (0..8)
            .map(|_| b.on_failure(1.0).as_millis() as u64)
            .collect();
        assert_eq!(highs, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.on_failure(1.0), Duration::from_millis(50));
        for _ in 0..100 {
            b.on_failure(f64::NAN);
        }
        assert!(b.on_failure(0.5) <= Duration::from_millis(1000));
    }
}
