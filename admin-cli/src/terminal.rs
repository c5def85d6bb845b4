//! Just enough terminal handling for `weft top`: keys without Enter (so
//! `q` quits), no echo, the screen redrawn in place, and the terminal put
//! back as it was however the command ends (q, Ctrl-C, SIGTERM, an
//! error), since a shell left without echo is broken for its user.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;

use tokio::sync::mpsc;

/// Moves to the top left; every line then ends with "clear to end of
/// line" and the frame with "clear to end of screen", so a redraw does
/// not flicker the way a full clear does.
const HOME: &str = "\x1b[H";
const CLEAR_LINE: &str = "\x1b[K";
const CLEAR_BELOW: &str = "\x1b[J";
const HIDE_CURSOR: &str = "\x1b[?25l";
const SHOW_CURSOR: &str = "\x1b[?25h";

/// The terminal in "keys as they are typed" mode while this lives.
pub struct Screen {
    saved: Option<libc::termios>,
    fd: i32,
}

impl Screen {
    /// Takes over the terminal: stdin without line buffering or echo (if
    /// it is a terminal; Ctrl-C still sends SIGINT), the cursor hidden.
    /// Keys typed arrive on the returned channel.
    pub fn open() -> (Screen, mpsc::UnboundedReceiver<u8>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stdin = std::io::stdin();
        let fd = stdin.as_raw_fd();
        let mut saved = None;
        if stdin.is_terminal() {
            // SAFETY: tcgetattr/tcsetattr on our own stdin with a termios we
            // own; failures leave the terminal as it was.
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(fd, &mut t) == 0 {
                    let old = t;
                    t.c_lflag &= !(libc::ICANON | libc::ECHO);
                    t.c_cc[libc::VMIN] = 1;
                    t.c_cc[libc::VTIME] = 0;
                    if libc::tcsetattr(fd, libc::TCSANOW, &t) == 0 {
                        saved = Some(old);
                    }
                }
            }
            // A thread blocked on read(2): it ends with the process.
            std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                let mut stdin = std::io::stdin();
                while let Ok(1) = stdin.read(&mut byte) {
                    if tx.send(byte[0]).is_err() {
                        break;
                    }
                }
            });
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(HIDE_CURSOR.as_bytes());
        let _ = out.flush();
        (Screen { saved, fd }, rx)
    }

    /// Replaces what is on the screen with `text`.
    pub fn draw(&self, text: &str) {
        let mut frame = String::with_capacity(text.len() + 256);
        frame.push_str(HOME);
        for line in text.lines() {
            frame.push_str(line);
            frame.push_str(CLEAR_LINE);
            frame.push('\n');
        }
        frame.push_str(CLEAR_BELOW);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(frame.as_bytes());
        let _ = out.flush();
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if let Some(t) = self.saved.take() {
            // SAFETY: restores the attributes read in `open`.
            unsafe {
                libc::tcsetattr(self.fd, libc::TCSANOW, &t);
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(SHOW_CURSOR.as_bytes());
        let _ = out.flush();
    }
}
