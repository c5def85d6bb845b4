//! The processes `weft up` runs: started with their output in a log file,
//! in a process group of their own (a Ctrl-C in the terminal reaches
//! `weft up` only, which stops them in order), and told to stop if `weft
//! up` itself dies (Linux: `PR_SET_PDEATHSIG`), so none is left behind.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

/// How often a stopping child is looked at.
const STOP_POLL_MS: u64 = 50;
/// Log filter of the children unless `RUST_LOG` says otherwise.
const RUST_LOG_DEFAULT: &str = "info,openraft=warn";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chunkserver,
    Gateway,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Chunkserver => "chunkserver",
            Kind::Gateway => "gateway",
        }
    }
}

pub struct Child {
    pub kind: Kind,
    pub id: String,
    pub log: PathBuf,
    /// The chunkserver's data, or the gateway's directory.
    pub data_dir: PathBuf,
    pub pid: u32,
    proc: std::process::Child,
    /// Set once it exited (and was reaped).
    pub exited: Option<ExitStatus>,
}

impl Child {
    pub fn spawn(
        kind: Kind,
        id: &str,
        bin: &Path,
        args: &[&std::ffi::OsStr],
        log: &Path,
        data_dir: &Path,
    ) -> Result<Child> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", RUST_LOG_DEFAULT);
        }
        // The logs are files: no colour codes in them.
        if std::env::var_os("NO_COLOR").is_none() {
            cmd.env("NO_COLOR", "1");
        }
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: runs in the child between fork and exec, and calls
            // only async-signal-safe functions (prctl, getppid, _exit).
            // `weft up` forks from the thread that lives as long as it
            // does (its runtime is single-threaded, on the main thread),
            // which is what PR_SET_PDEATHSIG follows.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent died before prctl: nobody would stop us.
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
        let proc = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Child {
            kind,
            id: id.to_string(),
            log: log.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            pid: proc.id(),
            proc,
            exited: None,
        })
    }

    /// Whether it has exited: newly (`Some`) — reaped and recorded.
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return None;
        }
        match self.proc.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                Some(status)
            }
            _ => None,
        }
    }

    pub fn running(&self) -> bool {
        self.exited.is_none()
    }

    fn signal(&self, sig: libc::c_int) {
        if self.running() {
            // SAFETY: kill(2) with the pid of a child not yet reaped, so
            // the pid cannot have been reused.
            unsafe {
                libc::kill(self.pid as libc::pid_t, sig);
            }
        }
    }

    /// The last non-empty line of its log, for a one-line error.
    pub fn last_log_line(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| strip_ansi(l).trim().to_string())
            .unwrap_or_else(|| "(its log is empty)".into())
    }
}

/// Text without ANSI colour codes (tracing colours its output on a
/// terminal; the logs are files, but a user may have forced colour).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How an exit reads: `exit code 1` or `killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// SIGTERM to each of `children`, then waits for them all for `grace`;
/// those still running are killed (SIGKILL). Returns how many had to be.
pub async fn stop(children: &mut [&mut Child], grace: Duration) -> usize {
    for c in children.iter_mut() {
        c.poll();
        c.signal(libc::SIGTERM);
    }
    let until = tokio::time::Instant::now() + grace;
    loop {
        let mut all = true;
        for c in children.iter_mut() {
            c.poll();
            all &= !c.running();
        }
        if all || tokio::time::Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(STOP_POLL_MS)).await;
    }
    let mut killed = 0;
    for c in children.iter_mut() {
        if c.running() {
            killed += 1;
            let _ = c.proc.kill();
            if let Ok(s) = c.proc.wait() {
                c.exited = Some(s);
            }
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_lose_colour() {
        assert_eq!(
            strip_ansi("\x1b[2m2026\x1b[0m \x1b[31mERROR\x1b[0m bind failed"),
            "2026 ERROR bind failed"
        );
    }

    #[tokio::test]
    async fn stops_with_sigterm_then_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let sh = Path::new("/bin/sh");
        // One stops on SIGTERM; the other ignores it and is killed.
        let mut polite = Child::spawn(
            Kind::Gateway,
            "a",
            sh,
            &["-c".as_ref(), "echo started; exec sleep 30".as_ref()],
            &log,
            dir.path(),
        )
        .unwrap();
        let mut stubborn = Child::spawn(
            Kind::Gateway,
            "b",
            sh,
            &["-c".as_ref(), "trap '' TERM; exec sleep 30".as_ref()],
            &log,
            dir.path(),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(polite.running() && stubborn.running());
        let killed = stop(
            &mut [&mut polite, &mut stubborn],
            Duration::from_millis(500),
        )
        .await;
        assert_eq!(killed, 1);
        assert!(!polite.running() && !stubborn.running());
        assert_eq!(polite.last_log_line(), "started");
    }
}
