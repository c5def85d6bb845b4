//! The command window a session grants (MaxCmdSN - ExpCmdSN + 1): it grows
//! while commands complete quickly and halves when they slow down, so a
//! slow backend pushes back on initiators instead of queueing without bound.

use crate::limits::{CMD_LATENCY_TARGET_MS, CMD_WINDOW_INITIAL, CMD_WINDOW_MAX, CMD_WINDOW_MIN};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct CommandWindow {
    size: u32,
    /// Fast completions since the last change; the window grows by one per
    /// window's worth of them (additive increase, once per "round trip").
    fast_since_change: u32,
    /// Slow completions since the last change: a lone slow command does not
    /// shrink the window, a window's worth of slow ones does.
    slow_since_change: u32,
}

impl Default for CommandWindow {
    fn default() -> Self {
        CommandWindow {
            size: CMD_WINDOW_INITIAL,
            fast_since_change: 0,
            slow_since_change: 0,
        }
    }
}

impl CommandWindow {
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Records one command's completion latency.
    pub fn completed(&mut self, latency: Duration) {
        if latency <= Duration::from_millis(CMD_LATENCY_TARGET_MS) {
            self.fast_since_change += 1;
            if self.fast_since_change >= self.size {
                self.size = (self.size + 1).min(CMD_WINDOW_MAX);
                self.fast_since_change = 0;
                self.slow_since_change = 0;
            }
        } else {
            self.slow_since_change += 1;
            if self.slow_since_change > self.size / 4 {
                self.size = (self.size / 2).max(CMD_WINDOW_MIN);
                self.fast_since_change = 0;
                self.slow_since_change = 0;
            }
        }
    }
}

/// Serial number arithmetic (RFC 1982) on 32-bit sequence numbers.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_when_fast_and_shrinks_when_slow() {
        let mut w = CommandWindow::default();
        for _ in 0..10_000 {
            w.completed(Duration::from_micros(100));
        }
        assert_eq!(w.size(), CMD_WINDOW_MAX);
        for _ in 0..1000 {
            w.completed(Duration::from_secs(1));
        }
        assert_eq!(w.size(), CMD_WINDOW_MIN);
        // One slow command in a fast stream changes nothing.
        let mut w = CommandWindow::default();
        w.completed(Duration::from_secs(1));
        assert_eq!(w.size(), CMD_WINDOW_INITIAL);
    }

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(u32::MAX, 0));
        assert!(!sn_lt(0, u32::MAX));
        assert!(sn_le(5, 5));
    }
}
