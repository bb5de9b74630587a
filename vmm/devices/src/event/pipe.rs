//! An event made of a non-blocking pipe, for hosts without eventfd (macOS): a signal writes a
//! byte, consuming drains them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

pub(super) struct Event(Arc<Ends>);

struct Ends {
    read: OwnedFd,
    write: OwnedFd,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Makes `fd` non-blocking and close-on-exec (macOS has no pipe2).
fn configure(fd: &OwnedFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor this module owns, with integer arguments.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
        cvt(libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC))?;
    }
    Ok(())
}

impl Event {
    pub(super) fn new() -> io::Result<Event> {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two descriptors, which are owned right after.
        cvt(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
        // SAFETY: both descriptors are fresh and owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        configure(&read)?;
        configure(&write)?;
        Ok(Event(Arc::new(Ends { read, write })))
    }

    pub(super) fn signal(&self) -> io::Result<()> {
        // SAFETY: a one-byte write from a live buffer to a descriptor this event owns.
        let n = unsafe { libc::write(self.0.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            // A full pipe is still signalled.
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }

    pub(super) fn consume(&self) -> bool {
        let mut buf = [0u8; 256];
        let mut any = false;
        loop {
            // SAFETY: a read into a live buffer of its length from a descriptor we own.
            let n =
                unsafe { libc::read(self.0.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            any |= n > 0;
            if n < buf.len() as isize {
                return any;
            }
        }
    }

    pub(super) fn try_clone(&self) -> io::Result<Event> {
        Ok(Event(self.0.clone()))
    }

    pub(super) fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.read.as_fd()
    }
}
