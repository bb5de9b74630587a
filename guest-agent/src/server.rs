//! The agent's half of the protocol: control connections, processes, their stdio streams.
//! Generic over the connection type, so the same code serves vsock in the guest and Unix
//! sockets in the host-side tests.
//!
//! Threads, not async, but few of them: a control connection has one, and a process has
//! one that starts it, answers `start`, forwards its output and notices its end
//! ([`crate::pump`]), plus one for its stdin when it has one. A `wait` takes no thread: it
//! is answered by the process's thread when the process ends. Thread starts are a good part
//! of an exec in an emulated guest, so an exec costs two (its stream connections' first
//! frames are read on threads of their own) where it cost seven. Stdout and stderr are
//! pipes, not the sockets themselves, so that programs which reopen /dev/stdout or check
//! for a pipe behave as under docker (the Kata agent does the same).

use crate::pump::{self, Output, PIPE_SIZE};
use crate::reaper::reaper;
use crate::spawn::{spawn, Launch};
use crate::users;
use hk_agent_protocol::{
    read_frame_value, write_frame, DiffSummary, ErrorKind, ErrorReply, ExitStatus, Fd, Open,
    Outcome, ProcessSpec, Reply, Request, RequestBody, Response, Setup, WindowSize, DEFAULT_PATH,
};
use nix::errno::Errno;
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long `start` waits for the host to attach a process's streams.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Processes the agent keeps track of at once (running, or ended and not yet waited for).
const MAX_PROCS: usize = 4096;
/// Stream connections kept for processes not created yet (the host opens them while its
/// `create_process` is on its way); past this, or [`ATTACH_TIMEOUT`], the oldest go.
const MAX_PENDING: usize = 256;

/// A byte stream to the host.
pub trait Conn: Read + Write + AsRawFd + Into<OwnedFd> + Send + Sync + Sized + 'static {
    fn try_clone(&self) -> io::Result<Self>;
    /// Tells the host no more bytes come (end of file on its side).
    fn shutdown_write(&self);
}

impl Conn for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }

    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// What the agent calls on for the parts that only make sense in a VM.
pub trait Host: Send + Sync + 'static {
    /// Sets the container up (root filesystem, host name, /etc files).
    fn setup(&self, setup: &Setup) -> Result<(), String>;
    /// Ends the VM with `status`. Does not return in a VM.
    fn shutdown(&self, status: u32);
    /// Writes the container's upper layer to `out` as an OCI layer tar (the `diff`
    /// request); the server has checked that none of its processes runs.
    fn diff(&self, out: &mut (dyn Write + Send)) -> Result<DiffSummary, String> {
        let _ = out;
        Err("this agent has no container root to take a diff of".into())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn error(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        kind,
        message: message.into(),
    }
}

enum State {
    Created,
    Running(i32),
    Exited(ExitStatus),
    /// It never ran; `wait` gives this error.
    Failed(ErrorReply),
}

impl State {
    /// What `wait` answers, once there is an answer.
    fn outcome(&self) -> Option<Result<Reply, ErrorReply>> {
        match self {
            State::Exited(status) => Some(Ok(Reply::Exited(*status))),
            State::Failed(e) => Some(Err(e.clone())),
            State::Created | State::Running(_) => None,
        }
    }
}

/// A `wait` to answer when the process ends: the control connection and the request's id.
type Waiter<C> = (Arc<Mutex<C>>, u64);

/// Where a process is, and who waits for its end (under one lock, so none is missed).
struct Life<C> {
    state: State,
    waiters: Vec<Waiter<C>>,
}

/// A stream connection that came before its process was created.
struct Pending<C> {
    process: String,
    fd: Fd,
    conn: C,
    since: Instant,
}

/// What `start` hands the process's thread.
struct Started {
    pid: i32,
    /// Readable once the process has ended.
    pidfd: OwnedFd,
    outputs: Vec<Output>,
}

/// The host ends of a process's streams, as they are attached.
struct Attached<C> {
    streams: HashMap<Fd, C>,
}

struct Proc<C> {
    spec: ProcessSpec,
    attached: Mutex<Attached<C>>,
    attach_changed: Condvar,
    /// Set by the first `start`: a process starts once.
    claimed: AtomicBool,
    life: Mutex<Life<C>>,
    /// The terminal's master side, for resizes.
    master: Mutex<Option<Arc<OwnedFd>>>,
    /// Where host input goes: the stdin pipe or the terminal. `None` once closed.
    input: Arc<Mutex<Option<File>>>,
}

impl<C> Proc<C> {
    fn expected(&self) -> Vec<Fd> {
        match (self.spec.tty.is_some(), self.spec.stdin) {
            (true, _) => vec![Fd::Pty],
            (false, true) => vec![Fd::Stdin, Fd::Stdout, Fd::Stderr],
            (false, false) => vec![Fd::Stdout, Fd::Stderr],
        }
    }

    fn pid(&self) -> Option<i32> {
        match lock(&self.life).state {
            State::Running(pid) => Some(pid),
            _ => None,
        }
    }

    /// Takes a stream connection the host opened for this process, if it expects one.
    fn take_stream(&self, fd: Fd, conn: C) {
        if !self.expected().contains(&fd) || !matches!(lock(&self.life).state, State::Created) {
            return;
        }
        lock(&self.attached).streams.insert(fd, conn);
        self.attach_changed.notify_all();
    }
}

/// The agent: its processes, and the host-side hooks.
pub struct Agent<C: Conn> {
    procs: Mutex<HashMap<String, Arc<Proc<C>>>>,
    /// Lock after `procs`, never before.
    pending: Mutex<VecDeque<Pending<C>>>,
    host: Box<dyn Host>,
    /// The host's `diff` connection, until the `diff` request takes it.
    diff_conn: Mutex<Option<C>>,
    diff_attached: Condvar,
    /// Held while a diff is written: one at a time.
    diffing: Mutex<()>,
}

impl<C: Conn> Agent<C> {
    pub fn new(host: Box<dyn Host>) -> Arc<Agent<C>> {
        Arc::new(Agent {
            procs: Mutex::new(HashMap::new()),
            pending: Mutex::new(VecDeque::new()),
            host,
            diff_conn: Mutex::new(None),
            diff_attached: Condvar::new(),
            diffing: Mutex::new(()),
        })
    }

    /// Serves a connection the host opened: its first frame says what it is.
    pub fn serve(self: &Arc<Self>, mut conn: C) {
        let open = match read_frame_value(&mut conn) {
            Ok(Some(v)) => serde_json::from_value::<Open>(v).ok(),
            _ => None,
        };
        match open {
            Some(Open::Control) => self.serve_control(conn),
            Some(Open::Stream { process, fd }) => self.attach(&process, fd, conn),
            Some(Open::Diff) => {
                // A newer connection replaces one no request took (its request failed
                // before it came), so a stale one is never written to.
                *lock(&self.diff_conn) = Some(conn);
                self.diff_attached.notify_all();
            }
            None => {}
        }
    }

    /// Gives a stream connection to its process, or keeps it until the process is
    /// created: the host opens streams without waiting for `create_process`'s answer.
    fn attach(&self, process: &str, fd: Fd, conn: C) {
        let procs = lock(&self.procs);
        if let Some(proc) = procs.get(process).cloned() {
            drop(procs);
            return proc.take_stream(fd, conn);
        }
        let mut pending = lock(&self.pending);
        pending.retain(|p| p.since.elapsed() < ATTACH_TIMEOUT);
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
        }
        pending.push_back(Pending {
            process: process.to_string(),
            fd,
            conn,
            since: Instant::now(),
        });
    }

    /// Serves requests on a control connection until the host closes it.
    pub fn serve_control(self: &Arc<Self>, conn: C) {
        let Ok(writer) = conn.try_clone() else {
            return;
        };
        let writer = Arc::new(Mutex::new(writer));
        let mut reader = conn;
        loop {
            let value = match read_frame_value(&mut reader) {
                Ok(Some(v)) => v,
                Ok(None) | Err(_) => return,
            };
            let id = value.get("id").and_then(|v| v.as_u64());
            let request: Request = match serde_json::from_value(value.clone()) {
                Ok(r) => r,
                Err(e) => {
                    let Some(id) = id else { return };
                    let op = value.get("op").and_then(|v| v.as_str()).unwrap_or("?");
                    respond(
                        &writer,
                        id,
                        Err(error(
                            ErrorKind::Unsupported,
                            format!("this agent does not understand request {op:?}: {e}"),
                        )),
                    );
                    continue;
                }
            };
            let id = request.id;
            match request.body {
                RequestBody::Wait { process } => self.wait(&process, &writer, id),
                RequestBody::Start { process } => match self.proc(&process) {
                    Ok(proc) => self.start_on_thread(proc, writer.clone(), id),
                    Err(e) => respond(&writer, id, Err(e)),
                },
                RequestBody::CreateProcess(spec) if spec.start => match self.create(spec) {
                    Ok(proc) => self.start_on_thread(proc, writer.clone(), id),
                    Err(e) => respond(&writer, id, Err(e)),
                },
                // It may wait for its connection; a thread keeps the connection serving.
                RequestBody::Diff => {
                    let agent = self.clone();
                    let writer = writer.clone();
                    let spawned = std::thread::Builder::new()
                        .name("agent-diff".into())
                        .spawn(move || respond(&writer, id, agent.diff().map(Reply::Diff)));
                    if spawned.is_err() {
                        return;
                    }
                }
                body => respond(&writer, id, self.handle(body)),
            }
        }
    }

    /// Answers a `wait` now if the process has ended, or else when it does.
    fn wait(&self, process: &str, writer: &Arc<Mutex<C>>, id: u64) {
        let proc = match self.proc(process) {
            Ok(proc) => proc,
            Err(e) => return respond(writer, id, Err(e)),
        };
        let outcome = {
            let mut life = lock(&proc.life);
            let outcome = life.state.outcome();
            if outcome.is_none() {
                life.waiters.push((writer.clone(), id));
            }
            outcome
        };
        if let Some(outcome) = outcome {
            // Forgotten before the answer, so the host may reuse the name at once.
            self.told(&proc);
            respond(writer, id, outcome);
        }
    }

    /// An exec'd process is forgotten once its end is told, so a container that lives long
    /// and execs often does not grow the agent. The main process stays: `hk stop` and `hk
    /// wait` may ask about it again.
    fn told(&self, proc: &Arc<Proc<C>>) {
        if proc.spec.main {
            return;
        }
        let mut procs = lock(&self.procs);
        if procs
            .get(&proc.spec.id)
            .is_some_and(|p| Arc::ptr_eq(p, proc))
        {
            procs.remove(&proc.spec.id);
        }
    }

    /// Records how the process ended and answers every `wait` for it.
    fn end(&self, proc: &Arc<Proc<C>>, state: State) {
        let outcome = state.outcome();
        let waiters = {
            let mut life = lock(&proc.life);
            life.state = state;
            std::mem::take(&mut life.waiters)
        };
        let Some(outcome) = outcome else { return };
        if waiters.is_empty() {
            return;
        }
        self.told(proc);
        for (writer, id) in waiters {
            respond(&writer, id, outcome.clone());
        }
    }

    /// The process's thread: starts it, answers the request, forwards its output and
    /// records its end.
    fn start_on_thread(self: &Arc<Self>, proc: Arc<Proc<C>>, writer: Arc<Mutex<C>>, id: u64) {
        if proc.claimed.swap(true, Ordering::SeqCst) {
            let e = error(
                ErrorKind::InvalidArgument,
                "the process was started already",
            );
            return respond(&writer, id, Err(e));
        }
        let agent = self.clone();
        let (on_thread, writer_on_thread) = (proc.clone(), writer.clone());
        let spawned = std::thread::Builder::new()
            .name("agent-process".into())
            .spawn(move || {
                let (proc, writer) = (on_thread, writer_on_thread);
                match agent.start(&proc) {
                    Ok(started) => {
                        respond(
                            &writer,
                            id,
                            Ok(Reply::Started {
                                pid: started.pid as u32,
                            }),
                        );
                        agent.supervise(&proc, started);
                    }
                    Err(e) => agent.fail(&proc, &writer, id, e),
                }
            });
        if let Err(e) = spawned {
            self.fail(
                &proc,
                &writer,
                id,
                error(ErrorKind::Other, format!("thread for the process: {e}")),
            );
        }
    }

    /// The process could not start: the request and every `wait` get `e`.
    fn fail(&self, proc: &Arc<Proc<C>>, writer: &Mutex<C>, id: u64, e: ErrorReply) {
        // The host reading the streams learns the process is gone.
        lock(&proc.attached).streams.clear();
        self.end(proc, State::Failed(e.clone()));
        respond(writer, id, Err(e));
    }

    /// Forwards a started process's output until it ends, then records its status.
    fn supervise(&self, proc: &Arc<Proc<C>>, started: Started) {
        let Started {
            pid,
            pidfd,
            outputs,
        } = started;
        let main = proc.spec.main;
        // Docker's rule: the container ends with its main process, and what else runs
        // (holding the output pipes, perhaps) goes with it.
        let killed = pump::forward(outputs, main.then_some(&pidfd), || self.kill_all());
        let status = reaper().wait(pid);
        if main && !killed {
            self.kill_all();
        }
        lock(&proc.input).take();
        self.end(proc, State::Exited(status));
    }

    fn proc(&self, id: &str) -> Result<Arc<Proc<C>>, ErrorReply> {
        lock(&self.procs)
            .get(id)
            .cloned()
            .ok_or_else(|| error(ErrorKind::InvalidArgument, format!("no process {id:?}")))
    }

    fn handle(self: &Arc<Self>, body: RequestBody) -> Result<Reply, ErrorReply> {
        match body {
            RequestBody::Setup(setup) => {
                self.host
                    .setup(&setup)
                    .map_err(|e| error(ErrorKind::Other, e))?;
                Ok(Reply::Done)
            }
            RequestBody::CreateProcess(spec) => self.create(spec).map(|_| Reply::Done),
            RequestBody::Signal { process, signal } => {
                let proc = self.proc(&process)?;
                let pid = proc.pid().ok_or_else(|| {
                    error(ErrorKind::InvalidArgument, "the process is not running")
                })?;
                let signal = nix::sys::signal::Signal::try_from(signal).map_err(|_| {
                    error(ErrorKind::InvalidArgument, format!("no signal {signal}"))
                })?;
                // It may have just ended; that is no error.
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
                Ok(Reply::Done)
            }
            RequestBody::Resize {
                process,
                rows,
                cols,
            } => {
                let proc = self.proc(&process)?;
                if let Some(master) = lock(&proc.master).as_ref() {
                    set_window_size(master, WindowSize { rows, cols })
                        .map_err(|e| error(ErrorKind::Other, format!("resize: {e}")))?;
                }
                Ok(Reply::Done)
            }
            RequestBody::CloseStdin { process } => {
                let proc = self.proc(&process)?;
                if proc.spec.tty.is_none() {
                    lock(&proc.input).take();
                }
                Ok(Reply::Done)
            }
            RequestBody::Shutdown { status } => {
                self.kill_all();
                self.host.shutdown(status);
                Ok(Reply::Done)
            }
            // Served by `serve_control` itself.
            RequestBody::Start { .. } | RequestBody::Wait { .. } | RequestBody::Diff => {
                Err(error(ErrorKind::Other, "this request is not served here"))
            }
        }
    }

    /// Creates a process (not started yet) and gives it the streams that came before it.
    fn create(&self, spec: ProcessSpec) -> Result<Arc<Proc<C>>, ErrorReply> {
        if spec.argv.is_empty() {
            return Err(error(ErrorKind::InvalidArgument, "no command given"));
        }
        let mut procs = lock(&self.procs);
        // Processes nobody waits for (`hk exec -d`) are forgotten once ended, when
        // there are many.
        if procs.len() >= MAX_PROCS {
            procs.retain(|_, p| p.spec.main || lock(&p.life).state.outcome().is_none());
            if procs.len() >= MAX_PROCS {
                return Err(error(
                    ErrorKind::Other,
                    format!("{MAX_PROCS} processes run in this container already"),
                ));
            }
        }
        if procs.contains_key(&spec.id) {
            return Err(error(
                ErrorKind::InvalidArgument,
                format!("process {:?} exists", spec.id),
            ));
        }
        let proc = Arc::new(Proc {
            spec,
            attached: Mutex::new(Attached {
                streams: HashMap::new(),
            }),
            attach_changed: Condvar::new(),
            claimed: AtomicBool::new(false),
            life: Mutex::new(Life {
                state: State::Created,
                waiters: Vec::new(),
            }),
            master: Mutex::new(None),
            input: Arc::new(Mutex::new(None)),
        });
        procs.insert(proc.spec.id.clone(), proc.clone());
        let mut pending = lock(&self.pending);
        let mut i = 0;
        while i < pending.len() {
            if pending[i].process == proc.spec.id {
                if let Some(p) = pending.remove(i) {
                    proc.take_stream(p.fd, p.conn);
                }
            } else {
                i += 1;
            }
        }
        Ok(proc)
    }

    /// Takes the `diff` connection, checks nothing runs, and has the host write the layer
    /// on it; the connection is closed before the reply, so the host has every byte by
    /// the time it learns how many there are.
    fn diff(&self) -> Result<DiffSummary, ErrorReply> {
        let Ok(_one) = self.diffing.try_lock() else {
            return Err(error(ErrorKind::InvalidArgument, "a diff is being written"));
        };
        let mut conn = {
            let deadline = Instant::now() + ATTACH_TIMEOUT;
            let mut slot = lock(&self.diff_conn);
            loop {
                if let Some(conn) = slot.take() {
                    break conn;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(error(
                        ErrorKind::InvalidArgument,
                        "the diff connection was not opened",
                    ));
                }
                slot = self
                    .diff_attached
                    .wait_timeout(slot, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        let running: Vec<String> = lock(&self.procs)
            .iter()
            .filter(|(_, p)| p.pid().is_some())
            .map(|(id, _)| format!("{id:?}"))
            .collect();
        if !running.is_empty() {
            conn.shutdown_write();
            return Err(error(
                ErrorKind::InvalidArgument,
                format!(
                    "process {} still runs; a diff needs every process ended",
                    running.join(", ")
                ),
            ));
        }
        let result = self.host.diff(&mut conn);
        conn.shutdown_write();
        drop(conn);
        result.map_err(|e| error(ErrorKind::Other, e))
    }

    /// Kills every process this agent started (their whole sessions).
    fn kill_all(&self) {
        for proc in lock(&self.procs).values() {
            if let Some(pid) = proc.pid() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(-pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // As PID 1, everything else in the VM too (kill(-1) spares the caller).
        if std::process::id() == 1 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(-1),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Waits for the process's streams, then runs it; returns once it has exec'd.
    fn start(&self, proc: &Arc<Proc<C>>) -> Result<Started, ErrorReply> {
        let expected = proc.expected();
        let mut streams = {
            let deadline = Instant::now() + ATTACH_TIMEOUT;
            let mut attached = lock(&proc.attached);
            while !expected.iter().all(|fd| attached.streams.contains_key(fd)) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(error(
                        ErrorKind::InvalidArgument,
                        "the process's streams were not attached",
                    ));
                }
                attached = proc
                    .attach_changed
                    .wait_timeout(attached, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::take(&mut attached.streams)
        };
        let spec = &proc.spec;
        let user = users::resolve(
            Path::new("/"),
            spec.user.as_deref(),
            &spec.additional_groups,
        )
        .map_err(|e| error(ErrorKind::InvalidArgument, e))?;
        let mut env = spec.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", user.home));
        }
        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .to_string();
        let program = resolve_executable(&spec.argv[0], &path_var)?;
        let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
        if spec.create_cwd {
            std::fs::create_dir_all(cwd).map_err(|e| {
                error(
                    ErrorKind::Other,
                    format!("create working directory {cwd}: {e}"),
                )
            })?;
        }
        let cstr = |s: &str| {
            CString::new(s)
                .map_err(|_| error(ErrorKind::InvalidArgument, "NUL byte in the request"))
        };
        let rlimits = spec
            .rlimits
            .iter()
            .map(|r| {
                Ok((
                    rlimit_resource(&r.resource)?,
                    libc::rlimit {
                        rlim_cur: r.soft,
                        rlim_max: r.hard,
                    },
                ))
            })
            .collect::<Result<Vec<_>, ErrorReply>>()?;

        // Stdio: a terminal, or pipes (and /dev/null for an unattached stdin).
        let mut keep: Vec<OwnedFd> = Vec::new();
        let stdio: [i32; 3];
        let mut outputs: Vec<Output> = Vec::new();
        let mut input_from: Option<(C, File)> = None;
        if let Some(size) = spec.tty {
            let pty = nix::pty::openpty(Some(&winsize(size)), None)
                .map_err(|e| error(ErrorKind::Other, format!("openpty: {e}")))?;
            let master = Arc::new(cloexec(pty.master)?);
            let slave = cloexec(pty.slave)?;
            stdio = [slave.as_raw_fd(); 3];
            keep.push(slave);
            let conn = streams.remove(&Fd::Pty).expect("attached");
            let out = File::from(master.try_clone().map_err(io_error)?);
            let input = File::from(master.try_clone().map_err(io_error)?);
            // The stdin thread reads a duplicate of the connection, which the output
            // makes non-blocking too: `copy_in` waits for input in poll.
            input_from = Some((conn.try_clone().map_err(io_error)?, input));
            outputs.push(Output::new(out, conn.into()).map_err(io_error)?);
            *lock(&proc.master) = Some(master);
        } else {
            let stdin = match streams.remove(&Fd::Stdin) {
                Some(conn) => {
                    let (r, w) = pipe()?;
                    input_from = Some((conn, File::from(w)));
                    r
                }
                None => OwnedFd::from(
                    File::open("/dev/null")
                        .map_err(|e| error(ErrorKind::Other, format!("/dev/null: {e}")))?,
                ),
            };
            let (out_r, out_w) = output_pipe()?;
            let (err_r, err_w) = output_pipe()?;
            stdio = [stdin.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
            keep.extend([stdin, out_w, err_w]);
            for (src, fd) in [(out_r, Fd::Stdout), (err_r, Fd::Stderr)] {
                let conn = streams.remove(&fd).expect("attached");
                outputs.push(Output::new(File::from(src), conn.into()).map_err(io_error)?);
            }
        }
        let launch = Launch {
            path: cstr(&program)?,
            argv: spec
                .argv
                .iter()
                .map(|a| cstr(a))
                .collect::<Result<_, _>>()?,
            env: env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
            cwd: cstr(cwd)?,
            uid: user.uid,
            gid: user.gid,
            groups: user.groups.clone(),
            umask: spec.umask,
            rlimits,
            stdio,
            ctty: spec.tty.is_some(),
        };
        let (pid, pidfd) = {
            let mut watched = reaper().lock();
            match spawn(&launch) {
                Ok((pid, pidfd)) => {
                    watched.watch(pid);
                    (pid, pidfd)
                }
                Err(errno) => {
                    drop(watched);
                    return Err(exec_error(&spec.argv[0], errno));
                }
            }
        };
        reaper().spawned();
        // The child has its copies; the agent's would keep pipes open past its exit.
        drop(keep);
        lock(&proc.life).state = State::Running(pid);

        if let Some((conn, dst)) = input_from {
            *lock(&proc.input) = Some(dst);
            let input = proc.input.clone();
            let _ = std::thread::Builder::new()
                .name("agent-stdin".into())
                .spawn(move || copy_in(conn, &input));
        }
        Ok(Started {
            pid,
            pidfd,
            outputs,
        })
    }
}

fn respond<C: Conn>(writer: &Mutex<C>, id: u64, result: Result<Reply, ErrorReply>) {
    let response = Response {
        id,
        result: match result {
            Ok(reply) => Outcome::Ok(reply),
            Err(e) => Outcome::Error(e),
        },
    };
    let _ = write_frame(&mut *lock(writer), &response);
}

fn io_error(e: impl std::fmt::Display) -> ErrorReply {
    error(ErrorKind::Other, e.to_string())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ErrorReply> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io_error)
}

/// A pipe for a process's output, of [`PIPE_SIZE`] (best effort: the default size works).
fn output_pipe() -> Result<(OwnedFd, OwnedFd), ErrorReply> {
    let (r, w) = pipe()?;
    let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
    Ok((r, w))
}

/// Blocks until `fd` has something to read (or its end).
fn wait_readable(fd: RawFd) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll on one live pollfd.
        if unsafe { libc::poll(&mut pfd, 1, -1) } >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn cloexec(fd: OwnedFd) -> Result<OwnedFd, ErrorReply> {
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(io_error)?;
    Ok(fd)
}

fn winsize(size: WindowSize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_window_size(master: &OwnedFd, size: WindowSize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Host input to the process, until the host closes its side or `close_stdin`.
fn copy_in<C: Conn>(mut src: C, dst: &Mutex<Option<File>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // A terminal's connection is non-blocking for its output's sake.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if wait_readable(src.as_raw_fd()).is_err() {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        let mut dst = lock(dst);
        let written = dst.as_mut().map(|f| f.write_all(&buf[..n]).is_ok());
        if written != Some(true) {
            break;
        }
    }
    lock(dst).take();
}

/// Finds the program as execvp would, telling docker's two failures apart: nothing there
/// (exit 127) and something there that cannot run (exit 126).
fn resolve_executable(name: &str, path_var: &str) -> Result<String, ErrorReply> {
    let runnable = |p: &Path| -> Result<(), ErrorKind> {
        let meta = std::fs::metadata(p).map_err(|_| ErrorKind::NotFound)?;
        if meta.is_dir() {
            return Err(ErrorKind::PermissionDenied);
        }
        let c = CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| ErrorKind::NotFound)?;
        // SAFETY: access(2) on a NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
            return Err(ErrorKind::PermissionDenied);
        }
        Ok(())
    };
    if name.contains('/') {
        return match runnable(Path::new(name)) {
            Ok(()) => Ok(name.to_string()),
            Err(ErrorKind::NotFound) => Err(error(
                ErrorKind::NotFound,
                format!("exec: \"{name}\": stat {name}: no such file or directory"),
            )),
            Err(kind) => Err(error(kind, format!("exec: \"{name}\": permission denied"))),
        };
    }
    let mut denied = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        match runnable(&candidate) {
            Ok(()) => return Ok(candidate.to_string_lossy().into_owned()),
            Err(ErrorKind::PermissionDenied) => denied = Some(candidate),
            Err(_) => {}
        }
    }
    match denied {
        Some(_) => Err(error(
            ErrorKind::PermissionDenied,
            format!("exec: \"{name}\": permission denied"),
        )),
        None => Err(error(
            ErrorKind::NotFound,
            format!("exec: \"{name}\": executable file not found in $PATH"),
        )),
    }
}

/// An exec that failed after the checks (a missing interpreter or loader, a bad format).
fn exec_error(name: &str, errno: Errno) -> ErrorReply {
    let kind = match errno {
        Errno::ENOENT => ErrorKind::NotFound,
        Errno::EACCES | Errno::ENOEXEC | Errno::EPERM => ErrorKind::PermissionDenied,
        _ => ErrorKind::Other,
    };
    error(
        kind,
        format!("exec {name}: {}", errno.desc().to_lowercase()),
    )
}

fn rlimit_resource(name: &str) -> Result<libc::__rlimit_resource_t, ErrorReply> {
    Ok(match name {
        "as" => libc::RLIMIT_AS,
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        other => {
            return Err(error(
                ErrorKind::InvalidArgument,
                format!("unknown ulimit {other:?}"),
            ))
        }
    })
}

/// Wraps a raw stream socket (vsock in the guest) as a [`Conn`].
pub struct Socket(OwnedFd);

impl Socket {
    /// # Safety
    /// `fd` must be an open stream socket this call takes ownership of.
    pub unsafe fn from_raw(fd: i32) -> Socket {
        Socket(OwnedFd::from_raw_fd(fd))
    }
}

impl From<OwnedFd> for Socket {
    fn from(fd: OwnedFd) -> Socket {
        Socket(fd)
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::read(&self.0, buf) {
                Err(Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match nix::sys::socket::send(
                self.0.as_raw_fd(),
                buf,
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            ) {
                Err(Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl From<Socket> for OwnedFd {
    fn from(socket: Socket) -> OwnedFd {
        socket.0
    }
}

impl Conn for Socket {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(Socket(self.0.try_clone()?))
    }

    fn shutdown_write(&self) {
        let _ = nix::sys::socket::shutdown(self.0.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    }
}
