//! The host terminal while a guest owns it: raw mode (the guest's tty does line editing,
//! echo and signal keys), restored to exactly its old settings on every way out: a normal
//! return, an error, a panic (a hook), and the signals hk forwards (which do not kill hk).

use anyhow::Context;
use hk_agent_protocol::WindowSize;
use nix::sys::termios::{self, SetArg, Termios};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, Once};

/// The settings to restore if hk panics while a terminal is raw.
static SAVED: Mutex<Option<(i32, Termios)>> = Mutex::new(None);

fn restore_saved() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((fd, settings)) = saved {
        // SAFETY: the descriptor is held open by the RawTerminal that saved it.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = termios::tcsetattr(fd, SetArg::TCSANOW, &settings);
    }
}

/// A terminal in raw mode, restored when dropped.
pub struct RawTerminal {
    fd: OwnedFd,
    saved: Termios,
}

impl RawTerminal {
    /// `None` when `fd` is not a terminal (a pipe or a file needs no mode).
    pub fn enter(fd: &OwnedFd) -> anyhow::Result<Option<RawTerminal>> {
        let Ok(saved) = termios::tcgetattr(fd) else {
            return Ok(None);
        };
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_saved();
                previous(info);
            }));
        });
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let fd = fd.try_clone().context("cannot keep the terminal")?;
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd.as_raw_fd(), saved.clone()));
        termios::tcsetattr(&fd, SetArg::TCSANOW, &raw)
            .context("cannot put the terminal in raw mode")?;
        Ok(Some(RawTerminal { fd, saved }))
    }

    /// Raw mode on hk's stdin, which the caller knows to be a terminal.
    pub fn enter_stdin() -> anyhow::Result<RawTerminal> {
        let stdin = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("cannot use stdin")?;
        RawTerminal::enter(&stdin)?.context("stdin is not a terminal")
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = termios::tcsetattr(&self.fd, SetArg::TCSANOW, &self.saved);
    }
}

/// The size of hk's terminal (stdout's, else stdin's).
pub fn window_size() -> Option<WindowSize> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some(WindowSize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            });
        }
    }
    None
}
