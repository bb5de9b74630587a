//! The agent's protocol server and the host's client, both halves of the real code, over
//! Unix sockets on the host instead of vsock in a VM: processes, exit statuses, stdio,
//! terminals, signals, errors. (The same checks run in a VM in runner/tests/run_rootfs.rs.)

use hk_agent::server::{Agent, Host};
use hk_agent_protocol::{
    read_frame, write_frame, Client, Connector, DiffSummary, Error, ErrorKind, ExitStatus, Fd,
    Open, Outcome, ProcessSpec, Reply, Request, RequestBody, Response, Setup, WindowSize,
};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct PathConnector(PathBuf);

impl Connector for PathConnector {
    fn connect(&self) -> std::io::Result<UnixStream> {
        UnixStream::connect(&self.0)
    }
}

/// Records shutdowns instead of ending a VM; a diff is of a directory of the host's.
#[derive(Clone, Default)]
struct TestHost {
    shutdowns: Arc<Mutex<Vec<u32>>>,
    diff: Arc<Mutex<DiffOf>>,
}

#[derive(Default)]
enum DiffOf {
    /// The agent's default: no root to take a diff of.
    #[default]
    Nothing,
    /// This directory as an upper layer.
    Dir(PathBuf),
    /// This directory, but the reply claims a block more than was written.
    Short(PathBuf),
}

impl Host for TestHost {
    fn setup(&self, setup: &Setup) -> Result<(), String> {
        match setup.root {
            Some(_) => Err("no container roots outside a VM".into()),
            None => Ok(()),
        }
    }

    fn shutdown(&self, status: u32) {
        self.shutdowns.lock().unwrap().push(status);
    }

    fn diff(&self, out: &mut (dyn Write + Send)) -> Result<DiffSummary, String> {
        let layer = |dir: &PathBuf| {
            hk_agent::diff::write_layer(dir, &hk_agent::diff::Stubs::default(), out)
                .map_err(|e| e.to_string())
        };
        match &*self.diff.lock().unwrap() {
            DiffOf::Nothing => Err("this agent has no container root to take a diff of".into()),
            DiffOf::Dir(dir) => layer(dir),
            DiffOf::Short(dir) => layer(dir).map(|s| DiffSummary {
                bytes: s.bytes + 512,
                ..s
            }),
        }
    }
}

struct Harness {
    client: Client,
    host: TestHost,
    socket: PathBuf,
}

fn start() -> Harness {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hk-agent-proto-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let host = TestHost::default();
    let agent: Arc<Agent<UnixStream>> = Agent::new(Box::new(host.clone()));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let agent = agent.clone();
            std::thread::spawn(move || agent.serve(conn));
        }
    });
    let client = Client::open(Arc::new(PathConnector(socket.clone()))).unwrap();
    Harness {
        client,
        host,
        socket,
    }
}

/// Runs as whoever runs the tests (the agent can only switch users as root).
fn me() -> String {
    // SAFETY: getuid/getgid cannot fail.
    unsafe { format!("{}:{}", libc::getuid(), libc::getgid()) }
}

fn spec(id: &str, argv: &[&str]) -> ProcessSpec {
    ProcessSpec {
        id: id.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        user: Some(me()),
        ..ProcessSpec::default()
    }
}

fn read_all(stream: &mut Option<UnixStream>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(s) = stream {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.read_to_end(&mut out).unwrap();
    }
    out
}

/// Runs `argv` to the end as `hk exec` does (one request creates and starts it):
/// (status, stdout, stderr).
fn run(h: &Harness, id: &str, argv: &[&str]) -> (ExitStatus, String, String) {
    let mut p = h.client.run(spec(id, argv)).unwrap();
    let out = read_all(&mut p.streams.stdout);
    let err = read_all(&mut p.streams.stderr);
    let status = p.wait().unwrap();
    (
        status,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn exit_codes_and_signal_deaths_pass_through() {
    let h = start();
    assert_eq!(run(&h, "a", &["true"]).0, ExitStatus::Code(0));
    assert_eq!(run(&h, "b", &["false"]).0, ExitStatus::Code(1));
    assert_eq!(
        run(&h, "c", &["sh", "-c", "exit 42"]).0,
        ExitStatus::Code(42)
    );
    let (status, ..) = run(&h, "d", &["sh", "-c", "kill -9 $$"]);
    assert_eq!(status, ExitStatus::Signal(9));
    assert_eq!(status.shell_code(), 137);
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let h = start();
    let (status, out, err) = run(
        &h,
        "p",
        &["sh", "-c", "echo to-out; echo to-err >&2; echo more-out"],
    );
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(out, "to-out\nmore-out\n");
    assert_eq!(err, "to-err\n");
}

#[test]
fn stdin_streams_through_cat_unchanged() {
    let h = start();
    let mut s = spec("cat", &["cat"]);
    s.stdin = true;
    let mut p = h.client.create(s).unwrap();
    p.start().unwrap();
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 4099) as u8).collect();
    let mut stdin = p.streams.stdin.take().unwrap();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            stdin.write_all(&data).unwrap();
            // End of input: the host closes its side.
        })
    };
    let out = read_all(&mut p.streams.stdout);
    writer.join().unwrap();
    assert_eq!(out.len(), data.len());
    assert!(out == data, "bytes differ");
    assert_eq!(p.wait().unwrap(), ExitStatus::Code(0));
}

#[test]
fn env_cwd_and_user_are_honoured() {
    let h = start();
    let mut s = spec("env", &["sh", "-c", "echo $GREETING; pwd; id -u"]);
    s.env.push("GREETING=hello from the host".into());
    s.cwd = "/tmp".into();
    let mut p = h.client.create(s).unwrap();
    p.start().unwrap();
    let out = String::from_utf8(read_all(&mut p.streams.stdout)).unwrap();
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    assert_eq!(out, format!("hello from the host\n/tmp\n{uid}\n"));
}

#[test]
fn a_missing_or_unrunnable_command_says_why_as_docker_does() {
    let h = start();
    let p = h.client.create(spec("nf", &["no-such-command"])).unwrap();
    match p.start() {
        Err(Error::Agent(e)) => {
            assert_eq!(e.kind, ErrorKind::NotFound);
            assert_eq!(
                e.message,
                "exec: \"no-such-command\": executable file not found in $PATH"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(p.wait(), Err(Error::Agent(e)) if e.kind == ErrorKind::NotFound));
    let p = h.client.create(spec("nx", &["/etc/hostname"])).unwrap();
    match p.start() {
        Err(Error::Agent(e)) => assert_eq!(e.kind, ErrorKind::PermissionDenied),
        other => panic!("{other:?}"),
    }
    let p = h.client.create(spec("dir", &["/tmp"])).unwrap();
    assert!(matches!(p.start(), Err(Error::Agent(e)) if e.kind == ErrorKind::PermissionDenied));
}

#[test]
fn a_run_fails_as_start_would_and_wait_says_why() {
    let h = start();
    match h.client.run(spec("rnf", &["no-such-command"])) {
        Err(Error::Agent(e)) => assert_eq!(e.kind, ErrorKind::NotFound),
        other => panic!("{:?}", other.map(|p| p.id().to_string())),
    }
    let err = h.client.process("rnf").wait().unwrap_err();
    assert!(
        matches!(&err, Error::Agent(e) if e.kind == ErrorKind::NotFound),
        "{err}"
    );
    // A second start of a running process is refused; the process goes on.
    let p = h
        .client
        .run(spec("once", &["sh", "-c", "echo ran"]))
        .unwrap();
    let again = p.start().unwrap_err();
    assert!(again.to_string().contains("started already"), "{again}");
    assert_eq!(p.wait().unwrap(), ExitStatus::Code(0));
}

#[test]
fn streams_opened_before_their_process_is_created_are_kept() {
    let h = start();
    let open = |fd: Fd| {
        let mut s = UnixStream::connect(&h.socket).unwrap();
        write_frame(
            &mut s,
            &Open::Stream {
                process: "early".into(),
                fd,
            },
        )
        .unwrap();
        s
    };
    let (mut out, mut err) = (Some(open(Fd::Stdout)), Some(open(Fd::Stderr)));
    // Written before the control connection even opens, the streams' frames are almost
    // always read first; either way the process must get them.
    let mut control = UnixStream::connect(&h.socket).unwrap();
    write_frame(&mut control, &Open::Control).unwrap();
    let mut s = spec("early", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    s.start = true;
    write_frame(
        &mut control,
        &Request {
            id: 1,
            body: RequestBody::CreateProcess(s),
        },
    )
    .unwrap();
    let resp: Response = read_frame(&mut control).unwrap().unwrap();
    assert_eq!(resp.id, 1);
    assert!(
        matches!(resp.result, Outcome::Ok(Reply::Started { .. })),
        "{resp:?}"
    );
    assert_eq!(read_all(&mut out), b"out\n");
    assert_eq!(read_all(&mut err), b"err\n");
    assert_eq!(
        h.client.process("early").wait().unwrap(),
        ExitStatus::Code(3)
    );
}

#[test]
fn a_host_that_stops_reading_stdout_stalls_only_stdout() {
    let h = start();
    // stdout gets far more than the pipe and the socket hold, and nobody reads it yet;
    // stderr must still arrive in full meanwhile.
    let mut p = h
        .client
        .run(spec(
            "flood",
            &[
                "sh",
                "-c",
                "head -c 64000000 /dev/zero & head -c 4000000 /dev/zero >&2; wait",
            ],
        ))
        .unwrap();
    let mut err = vec![0u8; 4_000_000];
    let stderr = p.streams.stderr.as_mut().unwrap();
    stderr
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stderr.read_exact(&mut err).unwrap();
    assert_eq!(read_all(&mut p.streams.stdout).len(), 64_000_000);
    assert!(read_all(&mut p.streams.stderr).is_empty());
    assert_eq!(p.wait().unwrap(), ExitStatus::Code(0));
}

#[test]
fn signals_reach_the_process() {
    let h = start();
    let p = h.client.create(spec("sleep", &["sleep", "100"])).unwrap();
    p.start().unwrap();
    p.signal(15).unwrap();
    assert_eq!(p.wait().unwrap(), ExitStatus::Signal(15));
}

#[test]
fn a_terminal_has_a_pty_a_size_that_follows_resizes_and_ctrl_c() {
    let h = start();
    let mut s = spec(
        "tty",
        &[
            "sh",
            "-c",
            "tty; stty size; echo ready; read line; stty size; sleep 100; echo not-interrupted",
        ],
    );
    s.tty = Some(WindowSize { rows: 24, cols: 80 });
    let mut p = h.client.create(s).unwrap();
    p.start().unwrap();
    let mut pty = p.streams.pty.take().unwrap();
    pty.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    let mut until = |pty: &mut UnixStream, what: &str, seen: &mut String| {
        while !seen.contains(what) {
            let n = pty.read(&mut buf).unwrap();
            assert!(n > 0, "pty closed; saw {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    until(&mut pty, "ready", &mut seen);
    assert!(seen.starts_with("/dev/pts/"), "{seen:?}");
    assert!(seen.contains("24 80"), "{seen:?}");
    p.resize(50, 132).unwrap();
    pty.write_all(b"go\n").unwrap();
    until(&mut pty, "50 132", &mut seen);
    // Ctrl-C through the terminal interrupts the foreground process group.
    std::thread::sleep(Duration::from_millis(200));
    pty.write_all(&[3]).unwrap();
    let status = p.wait().unwrap();
    assert_eq!(status, ExitStatus::Signal(2), "{seen:?}");
    assert!(!seen.contains("not-interrupted"));
}

#[test]
fn when_the_main_process_ends_the_rest_is_killed() {
    let h = start();
    let bg = h.client.create(spec("bg", &["sleep", "100"])).unwrap();
    bg.start().unwrap();
    let mut main = spec("main", &["sh", "-c", "sleep 100 & echo started"]);
    main.main = true;
    let mut p = h.client.create(main).unwrap();
    p.start().unwrap();
    // The background sleep holds the output pipe; the wait still ends.
    assert_eq!(read_all(&mut p.streams.stdout), b"started\n");
    assert_eq!(p.wait().unwrap(), ExitStatus::Code(0));
    assert_eq!(bg.wait().unwrap(), ExitStatus::Signal(9));
}

#[test]
fn many_processes_at_once_keep_their_own_output() {
    let h = start();
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let client = h.client.clone();
            std::thread::spawn(move || {
                let mut p = client
                    .create(spec(
                        &format!("p{i}"),
                        &["sh", "-c", &format!("echo out-{i}; exit {i}")],
                    ))
                    .unwrap();
                p.start().unwrap();
                let out = read_all(&mut p.streams.stdout);
                (out, p.wait().unwrap())
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let (out, status) = t.join().unwrap();
        assert_eq!(out, format!("out-{i}\n").as_bytes());
        assert_eq!(status, ExitStatus::Code(i as i32));
    }
}

#[test]
fn unknown_requests_get_an_error_and_the_connection_goes_on() {
    let h = start();
    let mut raw = UnixStream::connect(&h.socket).unwrap();
    write_frame(&mut raw, &Open::Control).unwrap();
    write_frame(
        &mut raw,
        &serde_json::json!({"id": 5, "op": "mount_share", "tag": "x"}),
    )
    .unwrap();
    let resp: Response = read_frame(&mut raw).unwrap().unwrap();
    assert_eq!(resp.id, 5);
    let text = serde_json::to_string(&resp).unwrap();
    assert!(text.contains("unsupported"), "{text}");
    // Still serving: a real request works on the same connection.
    write_frame(
        &mut raw,
        &serde_json::json!({"id": 6, "op": "wait", "process": "nope"}),
    )
    .unwrap();
    let resp: Response = read_frame(&mut raw).unwrap().unwrap();
    assert_eq!(resp.id, 6);
    h.client.shutdown(3).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(*h.host.shutdowns.lock().unwrap(), [3]);
}

#[test]
fn an_exec_is_forgotten_once_its_end_is_told_so_its_id_is_free_again() {
    let h = start();
    assert_eq!(run(&h, "x", &["true"]).0, ExitStatus::Code(0));
    let err = h.client.process("x").wait().unwrap_err();
    assert!(err.to_string().contains("no process"), "{err}");
    assert_eq!(run(&h, "x", &["false"]).0, ExitStatus::Code(1));
}

/// A small upper directory: a file in a directory.
fn upper_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/motd"), b"built\n").unwrap();
    dir
}

#[test]
fn a_diff_streams_the_layer_and_the_reply_confirms_all_of_it_came() {
    let h = start();
    let upper = upper_dir();
    *h.host.diff.lock().unwrap() = DiffOf::Dir(upper.path().to_path_buf());
    let mut diff = h.client.diff().unwrap();
    let mut names = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut diff);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            names.push((
                String::from_utf8(entry.path_bytes().into_owned()).unwrap(),
                body,
            ));
        }
    }
    assert_eq!(
        names,
        [
            ("etc/".to_string(), String::new()),
            ("etc/motd".into(), "built\n".into())
        ]
    );
    // The parser stopped at the first end-of-archive block; finish reads the rest.
    let summary = diff.finish().unwrap();
    assert_eq!(summary.entries, 2);
    assert_eq!(summary.bytes % 512, 0);

    // Read whole, the stream ends cleanly with exactly the reported bytes.
    let mut diff = h.client.diff().unwrap();
    let mut all = Vec::new();
    diff.read_to_end(&mut all).unwrap();
    assert_eq!(all.len() as u64, diff.bytes_read());
    assert_eq!(diff.finish().unwrap(), summary);
}

#[test]
fn a_diff_stream_shorter_than_the_agent_says_fails_the_read() {
    let h = start();
    let upper = upper_dir();
    *h.host.diff.lock().unwrap() = DiffOf::Short(upper.path().to_path_buf());
    let mut diff = h.client.diff().unwrap();
    let mut all = Vec::new();
    let err = diff.read_to_end(&mut all).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("the agent wrote"), "{err}");
    assert!(matches!(diff.finish(), Err(Error::Malformed(_))));
}

#[test]
fn a_diff_is_refused_while_a_process_runs_or_without_a_root() {
    let h = start();
    let mut diff = h.client.diff().unwrap();
    let err = diff.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("no container root"), "{err}");
    assert!(matches!(diff.finish(), Err(Error::Agent(e)) if e.kind == ErrorKind::Other));

    let upper = upper_dir();
    *h.host.diff.lock().unwrap() = DiffOf::Dir(upper.path().to_path_buf());
    let p = h.client.create(spec("sleeper", &["sleep", "30"])).unwrap();
    p.start().unwrap();
    let diff = h.client.diff().unwrap();
    match diff.finish() {
        Err(Error::Agent(e)) => {
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
            assert!(
                e.message.contains("\"sleeper\" still runs"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    p.signal(9).unwrap();
    assert_eq!(p.wait().unwrap(), ExitStatus::Signal(9));
    assert_eq!(h.client.diff().unwrap().finish().unwrap().entries, 2);
}
