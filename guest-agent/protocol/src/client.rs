//! The host's half: a control connection with requests in flight from any thread, and the
//! stream connections of each process.

use crate::{
    read_frame, write_frame, DiffSummary, Error, ExitStatus, Fd, Hello, Open, Outcome, ProcessSpec,
    Reply, Request, RequestBody, Response, Setup, VERSION,
};
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Opens new connections to the agent's port: through the VMM's vsock in-process, through
/// its hybrid Unix socket from another process, or a plain Unix socket in tests.
pub trait Connector: Send + Sync {
    fn connect(&self) -> io::Result<UnixStream>;
}

type Waiters = HashMap<u64, Sender<Result<Reply, Error>>>;

struct Inner {
    writer: Mutex<UnixStream>,
    /// Requests waiting for their response; `None` once the connection is gone.
    waiting: Mutex<Option<Waiters>>,
    next_id: AtomicU64,
    connector: Arc<dyn Connector>,
}

/// A control connection to the agent. Cheap to clone; requests may be made from several
/// threads at once (a `wait` in one, `signal`s from another).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Opens a control connection to the agent.
    pub fn open(connector: Arc<dyn Connector>) -> Result<Client, Error> {
        let mut stream = connector.connect()?;
        write_frame(&mut stream, &Open::Control)?;
        Client::start(stream, connector)
    }

    /// Takes over the connection the agent opened at boot: reads its [`Hello`], checks the
    /// version, and uses the connection for requests.
    pub fn from_hello(
        mut stream: UnixStream,
        connector: Arc<dyn Connector>,
    ) -> Result<(Client, Hello), Error> {
        let hello: Hello = read_frame(&mut stream)?.ok_or(Error::Closed)?;
        if hello.version != VERSION {
            return Err(Error::Version(hello.version));
        }
        Ok((Client::start(stream, connector)?, hello))
    }

    fn start(stream: UnixStream, connector: Arc<dyn Connector>) -> Result<Client, Error> {
        let mut reader = stream.try_clone()?;
        let inner = Arc::new(Inner {
            writer: Mutex::new(stream),
            waiting: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
            connector,
        });
        let shared = inner.clone();
        std::thread::Builder::new()
            .name("agent-responses".into())
            .spawn(move || {
                let end = loop {
                    match read_frame::<Response>(&mut reader) {
                        Ok(Some(resp)) => {
                            let waiter = lock(&shared.waiting)
                                .as_mut()
                                .and_then(|w| w.remove(&resp.id));
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(match resp.result {
                                    Outcome::Ok(reply) => Ok(reply),
                                    Outcome::Error(e) => Err(Error::Agent(e)),
                                });
                            }
                        }
                        Ok(None) => break Error::Closed,
                        Err(e) => break e,
                    }
                };
                // Everyone still waiting learns the connection is gone.
                let waiting = lock(&shared.waiting).take().unwrap_or_default();
                let text = end.to_string();
                for (_, waiter) in waiting {
                    let _ = waiter.send(Err(match &end {
                        Error::Closed => Error::Closed,
                        _ => Error::Malformed(text.clone()),
                    }));
                }
            })?;
        Ok(Client { inner })
    }

    /// Sends a request and waits for its response.
    fn request(&self, body: RequestBody) -> Result<Reply, Error> {
        self.submit(body)?.recv().unwrap_or(Err(Error::Closed))
    }

    /// Sends a request; its response arrives on the receiver.
    fn submit(&self, body: RequestBody) -> Result<Receiver<Result<Reply, Error>>, Error> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        match lock(&self.inner.waiting).as_mut() {
            Some(w) => w.insert(id, tx),
            None => return Err(Error::Closed),
        };
        write_frame(&mut *lock(&self.inner.writer), &Request { id, body })?;
        Ok(rx)
    }

    /// Sends a request that gets no response.
    fn send(&self, body: RequestBody) -> Result<(), Error> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        write_frame(&mut *lock(&self.inner.writer), &Request { id, body })
    }

    pub fn setup(&self, setup: Setup) -> Result<(), Error> {
        expect_done(self.request(RequestBody::Setup(setup))?)
    }

    /// Creates a process and attaches its streams; it runs once [`Process::start`] is called.
    pub fn create(&self, spec: ProcessSpec) -> Result<Process, Error> {
        let id = spec.id.clone();
        let fds = stream_fds(&spec);
        expect_done(self.request(RequestBody::CreateProcess(spec))?)?;
        let streams = self.open_streams(&id, &fds)?;
        Ok(Process {
            client: self.clone(),
            id,
            streams,
        })
    }

    /// Creates a process, attaches its streams and starts it: one request, sent before the
    /// streams connect (the agent keeps a stream that arrives first), answered once the
    /// process runs. What [`Client::create`] and [`Process::start`] do, a round trip
    /// sooner. Fails as either would.
    pub fn run(&self, mut spec: ProcessSpec) -> Result<Process, Error> {
        spec.start = true;
        let id = spec.id.clone();
        let fds = stream_fds(&spec);
        let started = self.submit(RequestBody::CreateProcess(spec))?;
        let streams = self.open_streams(&id, &fds)?;
        match started.recv().unwrap_or(Err(Error::Closed))? {
            Reply::Started { .. } => Ok(Process {
                client: self.clone(),
                id,
                streams,
            }),
            other => Err(Error::Malformed(format!("unexpected reply {other:?}"))),
        }
    }

    /// Opens a process's stream connections, in parallel: each is a round trip to the guest.
    fn open_streams(&self, id: &str, fds: &[Fd]) -> Result<ProcessStreams, Error> {
        let opened: Vec<Result<(Fd, UnixStream), Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = fds
                .iter()
                .map(|&fd| {
                    let id = id.to_string();
                    let connector = self.inner.connector.clone();
                    s.spawn(move || -> Result<(Fd, UnixStream), Error> {
                        let mut stream = connector.connect()?;
                        write_frame(&mut stream, &Open::Stream { process: id, fd })?;
                        Ok((fd, stream))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(Error::Closed)))
                .collect()
        });
        let mut streams = ProcessStreams::default();
        for result in opened {
            let (fd, stream) = result?;
            match fd {
                Fd::Stdin => streams.stdin = Some(stream),
                Fd::Stdout => streams.stdout = Some(stream),
                Fd::Stderr => streams.stderr = Some(stream),
                Fd::Pty => streams.pty = Some(stream),
            }
        }
        Ok(streams)
    }

    /// A handle on a process created earlier (by this or another connection).
    pub fn process(&self, id: &str) -> Process {
        Process {
            client: self.clone(),
            id: id.to_string(),
            streams: ProcessStreams::default(),
        }
    }

    /// Asks for the root's upper layer as an OCI layer tar: sends the `diff` request and
    /// opens the `diff` connection the agent writes it on. Read the [`Diff`] to its end
    /// (or parse it and call [`Diff::finish`]): only then is it known to be complete.
    pub fn diff(&self) -> Result<Diff, Error> {
        let reply = self.submit(RequestBody::Diff)?;
        let mut stream = self.inner.connector.connect()?;
        write_frame(&mut stream, &Open::Diff)?;
        Ok(Diff {
            stream,
            reply,
            read: 0,
            end: None,
        })
    }

    /// Ends the VM with `status` (the agent kills, syncs and unmounts first).
    pub fn shutdown(&self, status: u32) -> Result<(), Error> {
        self.send(RequestBody::Shutdown { status })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The stream connections a process has.
fn stream_fds(spec: &ProcessSpec) -> Vec<Fd> {
    match (spec.tty.is_some(), spec.stdin) {
        (true, _) => vec![Fd::Pty],
        (false, true) => vec![Fd::Stdin, Fd::Stdout, Fd::Stderr],
        (false, false) => vec![Fd::Stdout, Fd::Stderr],
    }
}

fn expect_done(reply: Reply) -> Result<(), Error> {
    match reply {
        Reply::Done => Ok(()),
        other => Err(Error::Malformed(format!("unexpected reply {other:?}"))),
    }
}

/// The host ends of a process's stdio: raw byte streams.
#[derive(Debug, Default)]
pub struct ProcessStreams {
    pub stdin: Option<UnixStream>,
    pub stdout: Option<UnixStream>,
    pub stderr: Option<UnixStream>,
    /// With a terminal: input and output in one.
    pub pty: Option<UnixStream>,
}

/// A process in the guest.
pub struct Process {
    client: Client,
    id: String,
    pub streams: ProcessStreams,
}

impl Process {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts it; returns its pid in the guest.
    pub fn start(&self) -> Result<u32, Error> {
        match self.client.request(RequestBody::Start {
            process: self.id.clone(),
        })? {
            Reply::Started { pid } => Ok(pid),
            other => Err(Error::Malformed(format!("unexpected reply {other:?}"))),
        }
    }

    /// Waits until it has ended and its output streams are drained.
    pub fn wait(&self) -> Result<ExitStatus, Error> {
        match self.client.request(RequestBody::Wait {
            process: self.id.clone(),
        })? {
            Reply::Exited(status) => Ok(status),
            other => Err(Error::Malformed(format!("unexpected reply {other:?}"))),
        }
    }

    pub fn signal(&self, signal: i32) -> Result<(), Error> {
        expect_done(self.client.request(RequestBody::Signal {
            process: self.id.clone(),
            signal,
        })?)
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), Error> {
        expect_done(self.client.request(RequestBody::Resize {
            process: self.id.clone(),
            rows,
            cols,
        })?)
    }

    pub fn close_stdin(&self) -> Result<(), Error> {
        expect_done(self.client.request(RequestBody::CloseStdin {
            process: self.id.clone(),
        })?)
    }
}

/// Bytes [`Diff::finish`] reads past the point where its caller stopped: the rest of the
/// end-of-archive blocks, which a tar parser need not read, and a tar writer's padding to
/// a whole record (10 KiB for GNU tar). More than this is a guest that does not stop.
const DIFF_TRAILER_MAX: u64 = 64 << 10;

/// The tar stream of a `diff`, as the agent writes it. It is the guest's and so untrusted:
/// nothing here parses or buffers it, it only counts the bytes. At the end of the stream
/// the agent's [`Reply::Diff`] says how many bytes it wrote; a stream that ended short
/// (or the agent's error) makes the last `read` fail instead of returning 0, so a reader
/// that reaches a clean end of file has the whole archive.
pub struct Diff {
    stream: UnixStream,
    reply: Receiver<Result<Reply, Error>>,
    read: u64,
    /// How it ended, once it has.
    end: Option<Result<DiffSummary, Error>>,
}

impl Diff {
    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Bounds each read's wait for the guest (`None`: wait as long as it takes); a read
    /// that times out ends the diff with an error.
    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// Reads what is left (at most a trailer's worth: a parser stops at the first
    /// end-of-archive block) and returns what the agent reports, or why the stream is not
    /// complete.
    pub fn finish(mut self) -> Result<DiffSummary, Error> {
        if self.end.is_none() {
            let start = self.read;
            let mut buf = [0u8; 8192];
            loop {
                match self.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) if self.read - start > DIFF_TRAILER_MAX => {
                        return Err(Error::Malformed(format!(
                            "the diff stream goes on for over {DIFF_TRAILER_MAX} bytes \
                             after its reader stopped"
                        )))
                    }
                    Ok(_) => {}
                    Err(_) if self.end.is_some() => break,
                    Err(e) => return Err(Error::Io(e)),
                }
            }
        }
        self.end.take().unwrap_or(Err(Error::Closed))
    }

    /// The stream has ended: the agent's reply says whether all of it came.
    fn conclude(&mut self) -> Result<DiffSummary, Error> {
        match self.reply.recv() {
            Ok(Ok(Reply::Diff(summary))) if summary.bytes == self.read => Ok(summary),
            Ok(Ok(Reply::Diff(summary))) => Err(Error::Malformed(format!(
                "the diff stream has {} bytes; the agent wrote {}",
                self.read, summary.bytes
            ))),
            Ok(Ok(other)) => Err(Error::Malformed(format!("unexpected reply {other:?}"))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }
}

impl Read for Diff {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(end) = &self.end {
            return match end {
                Ok(_) => Ok(0),
                Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            };
        }
        let n = loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.end = Some(Err(Error::Malformed(format!("diff stream: {e}"))));
                    return Err(e);
                }
                Ok(n) => break n,
            }
        };
        if n > 0 || buf.is_empty() {
            self.read += n as u64;
            return Ok(n);
        }
        let end = self.conclude();
        let result = match &end {
            Ok(_) => Ok(0),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        };
        self.end = Some(end);
        result
    }
}
