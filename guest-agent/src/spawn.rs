//! fork and exec by hand, because `std::process::Command` cannot serve here:
//! - it waits for a child whose exec failed, and panics if that wait finds no child, which
//!   is what happens when PID 1's reaper (`waitpid(-1)`) got there first;
//! - it applies uid and gid before `pre_exec`, so supplementary groups (unstable in std)
//!   cannot be set in the right order;
//! - a controlling terminal needs `setsid` then `TIOCSCTTY` between fork and exec.
//!
//! Everything the child needs is prepared before the fork; the child only makes system
//! calls (no allocation, no locks), as a fork from a threaded process requires, and reports
//! a failure before exec as an errno through a close-on-exec pipe.

use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// What a process is started with.
pub struct Launch {
    pub path: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: CString,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub umask: Option<libc::mode_t>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// Descriptors that become 0, 1, 2.
    pub stdio: [RawFd; 3],
    /// Make stdin the controlling terminal (it is a pty slave).
    pub ctty: bool,
}

/// Forks and execs `launch`; returns the pid, or the errno of the step that failed (the
/// child is then gone, reaped by whoever reaps).
pub fn spawn(launch: &Launch) -> Result<i32, (Option<i32>, Errno)> {
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| (None, e))?;
    let argv: Vec<*const libc::c_char> = launch
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = launch
        .env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: the child runs only async-signal-safe system calls on data prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err((None, Errno::last()));
    }
    if pid == 0 {
        // SAFETY: in the child, see `child`.
        unsafe { child(launch, &argv, &envp, err_w.as_raw_fd()) }
    }
    drop(err_w);
    let mut errno = [0u8; 4];
    match read_full(&err_r, &mut errno) {
        4 => Err((Some(pid), Errno::from_raw(i32::from_ne_bytes(errno)))),
        _ => Ok(pid),
    }
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    got
}

/// The child between fork and exec.
///
/// # Safety
/// Only after `fork`, in the child.
unsafe fn child(
    launch: &Launch,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    err: RawFd,
) -> ! {
    let fail = |err: RawFd| -> ! {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(err, bytes.as_ptr().cast(), 4);
        libc::_exit(127)
    };
    // The agent's signal state is not the process's: default dispositions (an ignored
    // signal would stay ignored across exec), nothing blocked.
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    if libc::setsid() < 0 {
        fail(err);
    }
    for (target, &fd) in launch.stdio.iter().enumerate() {
        if libc::dup2(fd, target as RawFd) < 0 {
            fail(err);
        }
    }
    if launch.ctty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
        fail(err);
    }
    for (resource, limit) in &launch.rlimits {
        if libc::setrlimit(*resource, limit) < 0 {
            fail(err);
        }
    }
    // PID 1 runs as root; an agent run unprivileged (in tests) can only stay who it is.
    if libc::geteuid() == 0 {
        if libc::setgroups(launch.groups.len(), launch.groups.as_ptr()) < 0
            || libc::setgid(launch.gid) < 0
            || libc::setuid(launch.uid) < 0
        {
            fail(err);
        }
    } else if launch.uid != libc::geteuid() || launch.gid != libc::getegid() {
        *libc::__errno_location() = libc::EPERM;
        fail(err);
    }
    if let Some(mask) = launch.umask {
        libc::umask(mask);
    }
    if libc::chdir(launch.cwd.as_ptr()) < 0 {
        fail(err);
    }
    libc::execve(launch.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(err)
}
