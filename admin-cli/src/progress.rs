//! A progress bar for long copies (`weft lun import|export`): bytes done,
//! throughput and ETA on one line of stderr, redrawn in place, only when
//! stderr is a terminal. Elsewhere (a pipe, a log file, CI) it prints
//! nothing at all: no carriage returns in captured output.
//!
//! Hand-written rather than a crate: one line, one format, and the
//! formatting is a pure function with unit tests.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Redraws at most this often (a terminal need not see every 4 MiB).
const REDRAW_MS: u64 = 100;
/// Cells of the bar itself.
const BAR_CELLS: usize = 24;

pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    start: Instant,
    last_draw: Option<Instant>,
    enabled: bool,
}

impl Progress {
    /// A bar for `total` bytes (unknown: a stream), drawn only if stderr
    /// is a terminal.
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        Progress::with_terminal(label, total, std::io::stderr().is_terminal())
    }

    pub fn with_terminal(label: &str, total: Option<u64>, terminal: bool) -> Progress {
        Progress {
            label: label.to_string(),
            total,
            done: 0,
            start: Instant::now(),
            last_draw: None,
            enabled: terminal,
        }
    }

    pub fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(REDRAW_MS))
        {
            return;
        }
        self.last_draw = Some(now);
        let line = bar_line(&self.label, self.done, self.total, self.start.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }

    pub fn done(&self) -> u64 {
        self.done
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Clears the bar's line (the caller prints its summary next).
    pub fn finish(&mut self) {
        if self.enabled && self.last_draw.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
        self.enabled = false;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An error path must not leave half a bar before its message.
        self.finish();
    }
}

/// `12.5 MiB` style, one decimal: the bar's figures move, so they are
/// rounded (the summary gives exact sizes).
pub fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1u64 << 20) as f64;
    if m >= 1024.0 {
        format!("{:.2} GiB", m / 1024.0)
    } else {
        format!("{m:.1} MiB")
    }
}

/// Bytes per second as MiB/s.
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / (1u64 << 20) as f64 / secs
}

fn eta(seconds: f64) -> String {
    let s = seconds.ceil() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// One line of the bar:
/// `import demo [=========>       ]  40%  102.4 MiB / 256.0 MiB  51.2 MiB/s  ETA 3s`.
pub fn bar_line(label: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let rate = mib_per_s(done, elapsed);
    let speed = format!("{rate:.1} MiB/s");
    match total {
        Some(total) if total > 0 => {
            let frac = (done as f64 / total as f64).clamp(0.0, 1.0);
            let filled = (frac * BAR_CELLS as f64) as usize;
            let mut bar = "=".repeat(filled);
            if filled < BAR_CELLS {
                bar.push('>');
                bar.push_str(&" ".repeat(BAR_CELLS - filled - 1));
            }
            let left = if rate > 0.0 {
                let rest = total.saturating_sub(done) as f64 / (1u64 << 20) as f64;
                format!("ETA {}", eta(rest / rate))
            } else {
                "ETA -".to_string()
            };
            format!(
                "{label} [{bar}] {:>3}%  {} / {}  {speed}  {left}",
                (frac * 100.0) as u32,
                mib(done),
                mib(total)
            )
        }
        _ => format!("{label}  {}  {speed}", mib(done)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let s = Duration::from_secs;
        let table: &[(u64, Option<u64>, Duration, &str)] = &[
            (
                0,
                Some(256 << 20),
                s(0),
                "import demo [>                       ]   0%  0.0 MiB / 256.0 MiB  0.0 MiB/s  ETA -",
            ),
            (
                64 << 20,
                Some(256 << 20),
                s(2),
                "import demo [======>                 ]  25%  64.0 MiB / 256.0 MiB  32.0 MiB/s  ETA 6s",
            ),
            (
                256 << 20,
                Some(256 << 20),
                s(4),
                "import demo [========================] 100%  256.0 MiB / 256.0 MiB  64.0 MiB/s  ETA 0s",
            ),
            (
                1 << 20,
                Some(8 << 30),
                s(1),
                "import demo [>                       ]   0%  1.0 MiB / 8.00 GiB  1.0 MiB/s  ETA 2h16m",
            ),
            (3 << 20, None, s(3), "import demo  3.0 MiB  1.0 MiB/s"),
        ];
        for (done, total, elapsed, want) in table {
            assert_eq!(bar_line("import demo", *done, *total, *elapsed), *want);
        }
    }

    #[test]
    fn quiet_without_a_terminal() {
        // Nothing to observe on stderr here; the integration tests check
        // captured output has no '\r'. This checks the state machine.
        let mut p = Progress::with_terminal("x", Some(10), false);
        p.add(5);
        p.add(5);
        assert_eq!(p.done(), 10);
        assert!(p.last_draw.is_none());
    }
}
