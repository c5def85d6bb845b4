//! The phi-accrual failure detector (Hayashibara et al., 2004), with the
//! exponential approximation Cassandra and chitchat use.
//!
//! Instead of a yes/no timeout it gives a suspicion level that grows with
//! the silence since the last heartbeat, scaled by how regular heartbeats
//! have been: `phi = -log10(P(silence this long))`. With exponentially
//! distributed gaps of mean `m`, `P(gap > t) = e^(-t/m)`, so
//! `phi = t / m * log10(e)`. phi = 8 means "this silence would happen once
//! in 10^8 if the node were alive", i.e. 18.4 mean gaps.

use std::collections::VecDeque;

/// Heartbeat gaps kept to estimate the mean.
pub const PHI_WINDOW_SAMPLES: usize = 64;
/// phi from which a node is `Suspect`: 11.5 mean gaps (2.3 s at 200 ms).
pub const PHI_SUSPECT: f64 = 5.0;
/// phi from which a node is `Dead`: 18.4 mean gaps (3.7 s at 200 ms).
pub const PHI_DEAD: f64 = 8.0;
/// Weight of the prior mean, in samples: a node just learned about (no
/// gaps seen yet) is judged by the configured gossip interval, and a few
/// odd early gaps cannot swing the mean.
pub const PHI_PRIOR_WEIGHT_SAMPLES: u64 = 4;

const LOG10_E: f64 = std::f64::consts::LOG10_E;

/// Heartbeat arrival history of one remote node.
#[derive(Clone, Debug, Default)]
pub struct PhiAccrual {
    gaps_ms: VecDeque<u32>,
    gaps_sum_ms: u64,
    last_arrival_ms: Option<u64>,
}

/// How the detector turns gaps into phi.
#[derive(Clone, Copy, Debug)]
pub struct PhiConfig {
    /// The mean gap assumed before any is seen (the gossip interval).
    pub prior_mean_ms: u64,
    /// Gaps longer than this are not samples (a partition that healed
    /// must not teach the detector that 30 s silences are normal).
    pub gap_ms_max: u64,
    /// The mean is never taken below this: a burst of heartbeats must not
    /// make the next ordinary gap look like death.
    pub mean_ms_min: u64,
}

impl PhiAccrual {
    /// A detector that counts `now` as the last sign of life.
    pub fn new(now_ms: u64) -> PhiAccrual {
        PhiAccrual {
            last_arrival_ms: Some(now_ms),
            ..PhiAccrual::default()
        }
    }

    /// A newer heartbeat arrived at `now_ms`.
    pub fn heartbeat(&mut self, now_ms: u64, cfg: &PhiConfig) {
        if let Some(last) = self.last_arrival_ms {
            let gap = now_ms.saturating_sub(last);
            if gap <= cfg.gap_ms_max {
                if self.gaps_ms.len() >= PHI_WINDOW_SAMPLES {
                    if let Some(old) = self.gaps_ms.pop_front() {
                        self.gaps_sum_ms -= u64::from(old);
                    }
                }
                let gap = u32::try_from(gap).unwrap_or(u32::MAX);
                self.gaps_ms.push_back(gap);
                self.gaps_sum_ms += u64::from(gap);
            }
        }
        self.last_arrival_ms = Some(now_ms.max(self.last_arrival_ms.unwrap_or(0)));
    }

    /// The mean gap, blending in the prior.
    pub fn mean_ms(&self, cfg: &PhiConfig) -> f64 {
        let n = self.gaps_ms.len() as u64 + PHI_PRIOR_WEIGHT_SAMPLES;
        let sum = self.gaps_sum_ms + cfg.prior_mean_ms * PHI_PRIOR_WEIGHT_SAMPLES;
        (sum as f64 / n as f64).max(cfg.mean_ms_min.max(1) as f64)
    }

    /// The suspicion level at `now_ms`.
    pub fn phi(&self, now_ms: u64, cfg: &PhiConfig) -> f64 {
        let Some(last) = self.last_arrival_ms else {
            return 0.0;
        };
        let silence = now_ms.saturating_sub(last) as f64;
        silence / self.mean_ms(cfg) * LOG10_E
    }

    /// Silence (ms) after the last heartbeat at which phi reaches `phi`.
    pub fn silence_ms_for(&self, phi: f64, cfg: &PhiConfig) -> f64 {
        phi / LOG10_E * self.mean_ms(cfg)
    }

    pub fn samples(&self) -> usize {
        self.gaps_ms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: PhiConfig = PhiConfig {
        prior_mean_ms: 200,
        gap_ms_max: 2_000,
        mean_ms_min: 100,
    };

    /// One data-driven helper: heartbeats at the given times, then phi
    /// asked at `at`, compared with `expect` (to 2 decimals).
    fn check(heartbeats_ms: &[u64], at_ms: u64, expect_mean_ms: f64, expect_phi: f64) {
        let mut d = PhiAccrual::new(heartbeats_ms.first().copied().unwrap_or(0));
        for &t in heartbeats_ms.iter().skip(1) {
            d.heartbeat(t, &CFG);
        }
        let mean = d.mean_ms(&CFG);
        let phi = d.phi(at_ms, &CFG);
        assert!(
            (mean - expect_mean_ms).abs() < 0.01 && (phi - expect_phi).abs() < 0.01,
            "heartbeats {heartbeats_ms:?} at {at_ms}: mean {mean:.3} phi {phi:.3}, \
             expected mean {expect_mean_ms} phi {expect_phi}"
        );
    }

    #[test]
    fn phi_table() {
        // Just discovered: judged by the prior (200 ms).
        check(&[0], 0, 200.0, 0.0);
        check(&[0], 200, 200.0, LOG10_E);
        // Regular 200 ms heartbeats: phi 8 after 18.4 gaps (3,684 ms).
        let regular: Vec<u64> = (0..=20).map(|i| i * 200).collect();
        check(&regular, 4_000, 200.0, 0.0);
        check(&regular, 4_000 + 3_684, 200.0, 8.0);
        // Regular 400 ms: mean approaches 400 (20 samples + 4 prior at 200).
        let slow: Vec<u64> = (0..=20).map(|i| i * 400).collect();
        check(&slow, 8_000, (20.0 * 400.0 + 4.0 * 200.0) / 24.0, 0.0);
        // A 10 s gap (healed partition) is not a sample.
        check(&[0, 200, 10_200], 10_200, 200.0, 0.0);
        // A burst of 1 ms gaps cannot drive the mean under its floor.
        let burst: Vec<u64> = (0..100).collect();
        check(&burst, 99 + 100, 100.0, LOG10_E);
        // Time going backwards (a reordered report) counts as no silence.
        check(&[1_000], 500, 200.0, 0.0);
    }

    #[test]
    fn window_is_bounded() {
        let mut d = PhiAccrual::new(0);
        for i in 1..1_000u64 {
            d.heartbeat(i * 300, &CFG);
        }
        assert_eq!(d.samples(), PHI_WINDOW_SAMPLES);
        let expect = (64.0 * 300.0 + 4.0 * 200.0) / 68.0;
        assert!((d.mean_ms(&CFG) - expect).abs() < 0.01);
        let dead_after = d.silence_ms_for(PHI_DEAD, &CFG);
        assert!((d.phi(999 * 300 + dead_after as u64, &CFG) - PHI_DEAD).abs() < 0.01);
    }
}
