//! Link measurements: recent probe outcomes to one peer and the summary
//! published for it.

use std::collections::VecDeque;

use super::state::LinkState;

/// Probe outcomes kept per peer: at the default 2 s probe interval, the
/// last 32 s.
pub const LINK_SAMPLES_MAX: usize = 16;
/// A new summary is published when the median RTT moved by this much...
pub const LINK_RTT_CHANGE_PERCENT: u64 = 25;
/// ...and by at least this many microseconds (loopback noise is tens).
pub const LINK_RTT_CHANGE_US_MIN: u64 = 500;
/// ...or the loss moved by this many per mille (2 of 16 probes = 125).
pub const LINK_LOSS_CHANGE_PERMILLE: u16 = 50;
/// ...or the throughput moved by this much.
pub const LINK_THROUGHPUT_CHANGE_PERCENT: u64 = 50;

/// What one probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Answered: round trip and payload bytes carried each way.
    Answered { rtt_us: u32, payload_bytes: u32 },
    /// Not answered within the probe timeout (or the call failed).
    Lost,
}

/// The recent probes to one peer.
#[derive(Clone, Debug, Default)]
pub struct LinkSamples {
    samples: VecDeque<ProbeOutcome>,
}

impl LinkSamples {
    pub fn push(&mut self, o: ProbeOutcome) {
        if self.samples.len() >= LINK_SAMPLES_MAX {
            self.samples.pop_front();
        }
        self.samples.push_back(o);
    }

    /// The summary of the samples held; `None` without any.
    pub fn summary(&self) -> Option<LinkState> {
        if self.samples.is_empty() {
            return None;
        }
        let mut rtts: Vec<u32> = Vec::new();
        let mut throughput_sum = 0u64;
        for s in &self.samples {
            if let ProbeOutcome::Answered {
                rtt_us,
                payload_bytes,
            } = *s
            {
                rtts.push(rtt_us);
                throughput_sum +=
                    2 * u64::from(payload_bytes) * 1_000_000 / u64::from(rtt_us.max(1));
            }
        }
        let total = self.samples.len();
        let lost = total - rtts.len();
        rtts.sort_unstable();
        let pct = |p: usize| -> u32 {
            if rtts.is_empty() {
                return 0;
            }
            // Nearest rank.
            let rank = (p * rtts.len()).div_ceil(100).max(1) - 1;
            rtts.get(rank.min(rtts.len() - 1)).copied().unwrap_or(0)
        };
        Some(LinkState {
            rtt_us_p50: pct(50),
            rtt_us_p99: pct(99),
            loss_permille: u16::try_from(lost * 1000 / total).unwrap_or(1000),
            throughput_bytes_per_s: throughput_sum / (rtts.len().max(1) as u64),
            samples: u16::try_from(total).unwrap_or(u16::MAX),
        })
    }
}

fn moved(old: u64, new: u64, percent: u64, abs_min: u64) -> bool {
    let diff = old.abs_diff(new);
    diff >= abs_min && diff * 100 > old.max(1) * percent
}

/// Whether `new` differs from the published `old` enough to publish.
pub fn changed_enough(old: &LinkState, new: &LinkState) -> bool {
    moved(
        old.rtt_us_p50.into(),
        new.rtt_us_p50.into(),
        LINK_RTT_CHANGE_PERCENT,
        LINK_RTT_CHANGE_US_MIN,
    ) || moved(
        old.rtt_us_p99.into(),
        new.rtt_us_p99.into(),
        LINK_RTT_CHANGE_PERCENT,
        LINK_RTT_CHANGE_US_MIN,
    ) || old.loss_permille.abs_diff(new.loss_permille) >= LINK_LOSS_CHANGE_PERMILLE
        || moved(
            old.throughput_bytes_per_s,
            new.throughput_bytes_per_s,
            LINK_THROUGHPUT_CHANGE_PERCENT,
            1,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples as `"100 200 x 300"` (µs; `x` = lost), expected summary as
    /// `(p50, p99, loss‰)`.
    fn check(samples: &str, expect: (u32, u32, u16)) {
        let mut l = LinkSamples::default();
        for s in samples.split_whitespace() {
            l.push(match s {
                "x" => ProbeOutcome::Lost,
                n => ProbeOutcome::Answered {
                    rtt_us: n.parse().unwrap(),
                    payload_bytes: 1000,
                },
            });
        }
        let s = l.summary().unwrap();
        assert_eq!(
            (s.rtt_us_p50, s.rtt_us_p99, s.loss_permille),
            expect,
            "{samples}"
        );
    }

    #[test]
    fn summaries() {
        check("100", (100, 100, 0));
        check("100 200 300 400", (200, 400, 0));
        check("100 x x x", (100, 100, 750));
        check("x", (0, 0, 1000));
        // Only the last 16 count.
        check("x x x x 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", (1, 1, 0));
    }

    #[test]
    fn hysteresis() {
        let base = LinkState {
            rtt_us_p50: 1_000,
            rtt_us_p99: 2_000,
            loss_permille: 0,
            throughput_bytes_per_s: 1_000_000,
            samples: 16,
        };
        let with = |f: fn(&mut LinkState)| {
            let mut s = base;
            f(&mut s);
            changed_enough(&base, &s)
        };
        assert!(!with(|s| s.rtt_us_p50 = 1_200));
        assert!(with(|s| s.rtt_us_p50 = 1_600));
        assert!(!with(|s| s.loss_permille = 40));
        assert!(with(|s| s.loss_permille = 60));
        assert!(with(|s| s.throughput_bytes_per_s = 400_000));
    }
}
