//! macOS: kqueue for waiting and for timers, a pipe for events.

use super::Interest;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub(super) use super::pipe::Event;

fn kqueue() -> io::Result<OwnedFd> {
    // SAFETY: kqueue(2) takes no arguments; the result is checked and then owned.
    let fd = unsafe { libc::kqueue() };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn change(ident: usize, filter: i16, flags: u16, data: isize, token: u64) -> libc::kevent {
    libc::kevent {
        ident,
        filter,
        flags,
        fflags: 0,
        data,
        udata: token as usize as *mut libc::c_void,
    }
}

/// Applies `changes` to `kq`; with `ignore_missing`, deleting a filter that was never added
/// is not an error.
fn apply(kq: &OwnedFd, changes: &[libc::kevent], ignore_missing: bool) -> io::Result<()> {
    for c in changes {
        // SAFETY: one change from a live value, no events to receive.
        let rc = unsafe {
            libc::kevent(
                kq.as_raw_fd(),
                c,
                1,
                std::ptr::null_mut(),
                0,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if !(ignore_missing && e.raw_os_error() == Some(libc::ENOENT)) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A kqueue holding one timer filter: the kqueue's own descriptor is readable when the timer
/// fired, so it nests in a [`Poller`] as timerfd does in epoll.
pub(super) struct Timer(OwnedFd);

impl Timer {
    pub(super) fn new() -> io::Result<Timer> {
        kqueue().map(Timer)
    }

    pub(super) fn arm(&mut self, period: Duration) -> io::Result<()> {
        let ms = isize::try_from(period.as_millis().max(1)).unwrap_or(isize::MAX);
        apply(
            &self.0,
            &[change(
                0,
                libc::EVFILT_TIMER,
                libc::EV_ADD | libc::EV_ENABLE,
                ms,
                0,
            )],
            false,
        )
    }

    pub(super) fn disarm(&mut self) -> io::Result<()> {
        apply(
            &self.0,
            &[change(0, libc::EVFILT_TIMER, libc::EV_DELETE, 0, 0)],
            true,
        )
    }

    pub(super) fn consume(&mut self) {
        let mut out = [change(0, 0, 0, 0, 0)];
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: receives at most one event into a live array, without waiting.
        unsafe {
            libc::kevent(
                self.0.as_raw_fd(),
                std::ptr::null(),
                0,
                out.as_mut_ptr(),
                1,
                &zero,
            );
        }
    }

    pub(super) fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

pub(super) struct Poller(OwnedFd);

impl Poller {
    pub(super) fn new() -> io::Result<Poller> {
        kqueue().map(Poller)
    }

    fn set(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let ident = fd as usize;
        match interest {
            Interest::Read => {
                apply(
                    &self.0,
                    &[change(ident, libc::EVFILT_READ, libc::EV_ADD, 0, token)],
                    false,
                )?;
                apply(
                    &self.0,
                    &[change(ident, libc::EVFILT_WRITE, libc::EV_DELETE, 0, 0)],
                    true,
                )
            }
            // EV_CLEAR is kqueue's edge trigger; a hang-up arrives as EV_EOF on the read
            // filter.
            Interest::Stream => apply(
                &self.0,
                &[
                    change(
                        ident,
                        libc::EVFILT_READ,
                        libc::EV_ADD | libc::EV_CLEAR,
                        0,
                        token,
                    ),
                    change(
                        ident,
                        libc::EVFILT_WRITE,
                        libc::EV_ADD | libc::EV_CLEAR,
                        0,
                        token,
                    ),
                ],
                false,
            ),
        }
    }

    pub(super) fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.set(fd, token, interest)
    }

    pub(super) fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.set(fd, token, interest)
    }

    pub(super) fn remove(&self, fd: RawFd) -> io::Result<()> {
        apply(
            &self.0,
            &[
                change(fd as usize, libc::EVFILT_READ, libc::EV_DELETE, 0, 0),
                change(fd as usize, libc::EVFILT_WRITE, libc::EV_DELETE, 0, 0),
            ],
            true,
        )
    }

    pub(super) fn wait(&self, timeout: Option<Duration>, ready: &mut Vec<u64>) -> io::Result<()> {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
        });
        let mut out = [change(0, 0, 0, 0, 0); 64];
        // SAFETY: receives at most `out.len()` events into a live array; `ts` outlives the
        // call.
        let n = unsafe {
            libc::kevent(
                self.0.as_raw_fd(),
                std::ptr::null(),
                0,
                out.as_mut_ptr(),
                out.len() as libc::c_int,
                ts.as_ref()
                    .map_or(std::ptr::null(), |t| t as *const libc::timespec),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        ready.extend(out[..n as usize].iter().map(|e| e.udata as usize as u64));
        Ok(())
    }
}
