//! A process's output to the host: every output stream of one process forwarded by one
//! thread, which also notices the process's end.
//!
//! One thread per process instead of one per stream and another to wait: in the lab a
//! thread start is a good part of an exec round trip (BENCHMARKS.md). Sockets are
//! non-blocking and each stream waits in `poll` on whichever side holds it up, so a host that
//! stops reading stdout stalls only stdout, as with a thread each.
//!
//! Not `splice(2)`: the guest's kernel (6.1) hands a spliced pipe to a vsock socket one
//! page at a time, and every 4 KiB becomes a vsock packet of its own, which costs more than
//! the copy it saves (raw vsock with 4 KiB writes runs at 0.44x of 64 KiB writes,
//! BENCHMARKS.md). Large reads and sends make 64 KiB packets.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Bytes one read moves at most.
const CHUNK: usize = 256 << 10;
/// The capacity given to a process's output pipes (Linux's default is 64 KiB). A writer
/// then blocks, and the agent wakes, once per MiB instead of once per 64 KiB; on the
/// guest's vCPU the two take turns, so each turn costs. At most this much kernel memory
/// per stream waits for a host that does not read.
pub const PIPE_SIZE: usize = 1 << 20;

/// One output: where it comes from (a pipe's or a terminal's read end) and the host's
/// stream it goes to.
pub struct Output {
    src: File,
    dst: OwnedFd,
    /// Allocated at the first read.
    buf: Vec<u8>,
    /// `buf[sent..filled]` is still to be sent.
    sent: usize,
    filled: usize,
    /// The host's side is full: wait until it can take more.
    blocked: bool,
    /// The host stopped listening: the rest is read and dropped, so the process is not
    /// blocked writing.
    discard: bool,
    done: bool,
}

impl Output {
    /// `dst` is made non-blocking, and so is every descriptor that shares its open file.
    pub fn new(src: File, dst: OwnedFd) -> io::Result<Output> {
        set_nonblocking(&dst)?;
        Ok(Output {
            src,
            dst,
            buf: Vec::new(),
            sent: 0,
            filled: 0,
            blocked: false,
            discard: false,
            done: false,
        })
    }

    /// Moves what is ready; an error on the host's side turns it to discarding.
    fn step(&mut self) {
        if self.discard {
            self.drain()
        } else if self.blocked {
            self.blocked = false;
            self.send()
        } else {
            self.read_and_send()
        }
    }

    fn read_and_send(&mut self) {
        self.buf.resize(CHUNK, 0);
        match read(&self.src, &mut self.buf) {
            Ok(0) => self.finish(),
            Ok(n) => {
                self.filled = n;
                self.sent = 0;
                self.send();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A terminal whose every slave is closed reads EIO: its end of file.
            Err(_) => self.finish(),
        }
    }

    /// Sends the rest of `buf`, as much as the host's side takes now.
    fn send(&mut self) {
        while self.sent < self.filled {
            let rest = &self.buf[self.sent..self.filled];
            // SAFETY: send from a live buffer on a descriptor this owns.
            let n = unsafe {
                libc::send(
                    self.dst.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                self.sent += n as usize;
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => {
                    self.blocked = true;
                    return;
                }
                _ => {
                    self.discard = true;
                    return;
                }
            }
        }
    }

    /// Reads and drops what the process writes (its host stopped listening).
    fn drain(&mut self) {
        self.buf.resize(CHUNK, 0);
        match read(&self.src, &mut self.buf) {
            Ok(0) => self.finish(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.finish(),
        }
    }

    /// The process's side has ended: so does the host's.
    fn finish(&mut self) {
        // SAFETY: shutdown of a socket this owns.
        unsafe { libc::shutdown(self.dst.as_raw_fd(), libc::SHUT_WR) };
        self.done = true;
    }

    /// What to wait for: the host's side while it is full, else the process's.
    fn waits_on(&self) -> (RawFd, libc::c_short) {
        if self.blocked && !self.discard {
            (self.dst.as_raw_fd(), libc::POLLOUT)
        } else {
            (self.src.as_raw_fd(), libc::POLLIN)
        }
    }
}

/// Forwards every output until each has ended (every writer of its pipe gone). `ended`, a
/// pidfd, is watched too: `on_end` runs once when the process ends, even while its outputs
/// go on (a child it left may hold them). Returns whether `on_end` ran.
pub fn forward(
    mut outputs: Vec<Output>,
    ended: Option<&OwnedFd>,
    mut on_end: impl FnMut(),
) -> bool {
    yield_to_writers();
    let mut watch_end = ended.map(AsRawFd::as_raw_fd);
    let mut ran = false;
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(outputs.len() + 1);
    loop {
        outputs.retain(|o| !o.done);
        if outputs.is_empty() {
            return ran;
        }
        fds.clear();
        fds.extend(outputs.iter().map(|o| {
            let (fd, events) = o.waits_on();
            libc::pollfd {
                fd,
                events,
                revents: 0,
            }
        }));
        if let Some(fd) = watch_end {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: poll on a live array of pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                // Cannot happen with valid descriptors; end rather than spin.
                _ => return ran,
            }
        }
        if watch_end.is_some() && fds.last().is_some_and(|f| f.revents != 0) {
            watch_end = None;
            ran = true;
            on_end();
        }
        for (o, fd) in outputs.iter_mut().zip(&fds) {
            if fd.revents != 0 {
                o.step();
            }
        }
    }
}

/// Makes the calling thread SCHED_BATCH, which Linux never lets preempt the task that wakes
/// it. Otherwise, on a VM's one vCPU, each write of the process into its output pipe wakes
/// this thread, which takes the CPU from the writer and forwards that one write: a context
/// switch and a vsock packet burst per 64 KiB. Now the writer runs on until the pipe is full
/// ([`PIPE_SIZE`]) or it blocks or sleeps, as an interactive program does at once, so its
/// output still leaves without delay. Best effort: a refusal changes nothing but speed.
fn yield_to_writers() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is this thread; `param` is a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

fn read(src: &File, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: read into a live buffer from a descriptor the caller owns.
    let n = unsafe { libc::read(src.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}
