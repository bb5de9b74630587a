//! Process creation by hand, because `std::process::Command` cannot serve here:
//! - it waits for a child whose exec failed, and panics if that wait finds no child, which
//!   is what happens when PID 1's reaper (`waitpid(-1)`) got there first;
//! - it applies uid and gid before `pre_exec`, so supplementary groups (unstable in std)
//!   cannot be set in the right order;
//! - a controlling terminal needs `setsid` then `TIOCSCTTY` between fork and exec.
//!
//! The child is a `clone(CLONE_VM | CLONE_VFORK)`, as glibc's `posix_spawn` makes it, not a
//! `fork`: it borrows the agent's memory until it execs, so no page table is copied and no
//! page of the agent is copied on write afterwards, and the agent resumes only once the
//! child has exec'd or failed, so the answer to `start` is known without a pipe. Sharing
//! memory means the child may only make system calls on data prepared before the clone (no
//! allocation, no locks), and set its ids with raw system calls: glibc's `setuid` would
//! signal the agent's threads, which it believes are its own. `CLONE_PIDFD` gives a
//! descriptor that becomes readable when the process ends, however soon that is.

use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

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

/// The child's stack: it only makes system calls.
const CHILD_STACK: usize = 64 << 10;

/// What the child reads, and the errno it leaves when a step before exec fails.
struct Child<'a> {
    launch: &'a Launch,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    errno: AtomicI32,
}

/// Starts `launch` and returns its pid and a pidfd (readable once it has ended), or the
/// errno of the step that failed (the child is then gone, reaped by whoever reaps).
pub fn spawn(launch: &Launch) -> Result<(i32, OwnedFd), Errno> {
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
    let child = Child {
        launch,
        argv: &argv,
        envp: &envp,
        errno: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down from its 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let mut pidfd: libc::c_int = -1;
    // No signal handler may run in the child while it shares the agent's memory: block
    // them all around the clone (the child unblocks them after resetting dispositions).
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the child runs `entry` on its own stack with the agent's memory, which stays
    // untouched until it has exec'd or exited (CLONE_VFORK), and only makes system calls
    // on data prepared above; `pidfd` is where CLONE_PIDFD stores the descriptor.
    let pid = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            entry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            &child as *const Child as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        );
        let errno = Errno::last();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(errno);
        }
        pid
    };
    // SAFETY: CLONE_PIDFD stored a new descriptor this process owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    match child.errno.load(Ordering::SeqCst) {
        0 => Ok((pid, pidfd)),
        errno => Err(Errno::from_raw(errno)),
    }
}

extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Child` that `spawn` keeps alive until this child has exec'd or
    // exited; this runs only in the clone.
    unsafe {
        let child = &*(arg as *const Child);
        self::child(child)
    }
}

/// The child between clone and exec.
///
/// # Safety
/// Only in the clone made by `spawn`.
unsafe fn child(c: &Child) -> ! {
    let launch = c.launch;
    let fail = || -> ! {
        c.errno.store(*libc::__errno_location(), Ordering::SeqCst);
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
        fail();
    }
    for (target, &fd) in launch.stdio.iter().enumerate() {
        if libc::dup2(fd, target as RawFd) < 0 {
            fail();
        }
    }
    if launch.ctty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
        fail();
    }
    for (resource, limit) in &launch.rlimits {
        if libc::setrlimit(*resource, limit) < 0 {
            fail();
        }
    }
    // PID 1 runs as root; an agent run unprivileged (in tests) can only stay who it is.
    // Raw system calls: they change this task's credentials only (see the module doc).
    if libc::geteuid() == 0 {
        if libc::syscall(
            libc::SYS_setgroups,
            launch.groups.len(),
            launch.groups.as_ptr(),
        ) < 0
            || libc::syscall(libc::SYS_setgid, launch.gid) < 0
            || libc::syscall(libc::SYS_setuid, launch.uid) < 0
        {
            fail();
        }
    } else if launch.uid != libc::geteuid() || launch.gid != libc::getegid() {
        *libc::__errno_location() = libc::EPERM;
        fail();
    }
    if let Some(mask) = launch.umask {
        libc::umask(mask);
    }
    if libc::chdir(launch.cwd.as_ptr()) < 0 {
        fail();
    }
    libc::execve(launch.path.as_ptr(), c.argv.as_ptr(), c.envp.as_ptr());
    fail()
}
