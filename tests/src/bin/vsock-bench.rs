//! vsock-bench: the measuring tool of `scripts/bench-agent`. One static binary (built with
//! `-C target-feature=+crt-static`) for both ends of a running `hk run --name` VM:
//!
//! Inside the container (the guest):
//! - `echo PORT`: listen on vsock port PORT, accept one connection, echo it back until EOF.
//! - `accept PORT N`: listen on PORT, accept N connections one after the other, each read to
//!   EOF and closed.
//! - `send PORT BYTES [CHUNK]`: connect to the host (CID 2) port PORT, write BYTES zero bytes
//!   in CHUNK-byte writes (64 KiB), half-close, wait for the host to close.
//! - `serve PORT BYTES [CHUNK]`: the same over a connection the host opens: listen on PORT,
//!   accept one, write, half-close, wait for the host to close.
//! - `write BYTES [CHUNK]`: write BYTES zero bytes to stdout in CHUNK-byte writes (64 KiB),
//!   the same writes as `send`, for stdout through the agent.
//! - `timeline`: as the command of `hk run`, when things happened on the guest's clock (ms
//!   since the kernel started): now, this process's start, the start of each thread of PID 1
//!   (the agent), the mtime of /etc/hostname (written by the agent's `setup` once the
//!   container's root is mounted), and from the kernel log, when the kernel ran /init and
//!   when it mounted each ext4 filesystem.
//!
//! On the host, against the VM's hybrid vsock socket SOCKET (`<state>/vsock.sock`):
//! - `ping SOCKET PORT N`: `CONNECT PORT`, then N one-byte round trips (after 100 uncounted).
//! - `connect SOCKET PORT N`: N connections to guest port PORT one after the other (after 10
//!   uncounted), each timed from the Unix connect to the `OK` line, then closed.
//! - `sink SOCKET PORT`: take the guest's connection to host port PORT (the Unix socket
//!   `SOCKET_PORT`), read it to EOF.
//! - `recv SOCKET PORT`: `CONNECT PORT` (retried while the guest is not listening yet), read
//!   to EOF.
//! - `exec SOCKET N`: the exec round trip at the protocol level: one control connection to
//!   the agent (hk-agent-protocol's `Client`), then N times run (create and start in one
//!   request, with stdout and stderr streams, as `hk exec` opens them) and wait `true`,
//!   streams read to EOF.
//! - `exec-out SOCKET CMD...`: run CMD through the agent and read its stdout to EOF; the rate
//!   from the run request to the end of stdout.
//!
//! Anywhere:
//! - `repeat N [--expect STATUS] CMD...`: run CMD N times (stdin and stdout /dev/null),
//!   wall time of each.
//!
//! Results are one line, `MODE key=value ...`, on stdout; times in µs or ms as the key says.

use hk_agent_protocol::{Client, Connector, ProcessSpec, AGENT_PORT, DEFAULT_PATH};
use nix::sys::socket::{
    accept, bind, connect, listen, shutdown, socket, AddressFamily, Backlog, Shutdown, SockFlag,
    SockType, VsockAddr,
};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 << 10;
const HOST_CID: u32 = 2;
/// Round trips before the counted ones: page faults, caches, the first wakeups.
const PING_WARMUP: usize = 100;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "usage: vsock-bench echo PORT | accept PORT N \
    | send PORT BYTES [CHUNK] | serve PORT BYTES [CHUNK] | write BYTES [CHUNK] | timeline \
    | ping SOCKET PORT N | connect SOCKET PORT N | sink SOCKET PORT | recv SOCKET PORT \
    | exec SOCKET N | exec-out SOCKET CMD... | repeat N [--expect STATUS] CMD...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["echo", port] => echo(parse(port)),
        ["accept", port, n] => accept_n(parse(port), parse(n)),
        ["send", port, bytes] => send(parse(port), parse(bytes), CHUNK),
        ["send", port, bytes, chunk] => send(parse(port), parse(bytes), parse(chunk)),
        ["serve", port, bytes] => serve(parse(port), parse(bytes), CHUNK),
        ["serve", port, bytes, chunk] => serve(parse(port), parse(bytes), parse(chunk)),
        ["write", bytes] => write_stdout(parse(bytes), CHUNK),
        ["write", bytes, chunk] => write_stdout(parse(bytes), parse(chunk)),
        ["timeline"] => timeline(),
        ["ping", socket, port, n] => ping(Path::new(socket), parse(port), parse(n)),
        ["connect", socket, port, n] => connect_n(Path::new(socket), parse(port), parse(n)),
        ["sink", socket, port] => sink(Path::new(socket), parse(port)),
        ["recv", socket, port] => recv(Path::new(socket), parse(port)),
        ["exec", socket, n] => exec(Path::new(socket), parse(n)),
        ["exec-out", socket, ref cmd @ ..] if !cmd.is_empty() => exec_out(Path::new(socket), cmd),
        ["repeat", n, "--expect", status, ref cmd @ ..] if !cmd.is_empty() => {
            repeat(parse(n), parse(status), cmd)
        }
        ["repeat", n, ref cmd @ ..] if !cmd.is_empty() => repeat(parse(n), 0, cmd),
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vsock-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses a number argument; a bad one ends the program with the usage.
fn parse<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| {
        eprintln!("vsock-bench: bad number {s:?}\n{USAGE}");
        std::process::exit(2)
    })
}

// The guest's side.

fn vsock_socket() -> Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn vsock_listener(port: u32, backlog: i32) -> Result<OwnedFd> {
    let listener = vsock_socket()?;
    bind(
        listener.as_raw_fd(),
        &VsockAddr::new(nix::libc::VMADDR_CID_ANY, port),
    )?;
    listen(&listener, Backlog::new(backlog)?)?;
    Ok(listener)
}

fn accept_next(listener: &OwnedFd) -> Result<File> {
    // SAFETY: accept returned a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(accept(listener.as_raw_fd())?) })
}

/// Listens on vsock `port` and returns the first connection.
fn accept_one(port: u32) -> Result<File> {
    accept_next(&vsock_listener(port, 1)?)
}

fn echo(port: u32) -> Result<()> {
    let mut conn = accept_one(port)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => conn.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn accept_n(port: u32, n: usize) -> Result<()> {
    let listener = vsock_listener(port, 16)?;
    let mut rest = [0u8; 64];
    for _ in 0..n {
        let mut conn = accept_next(&listener)?;
        while matches!(conn.read(&mut rest), Ok(k) if k > 0) {}
    }
    Ok(())
}

fn send(port: u32, bytes: u64, chunk: usize) -> Result<()> {
    let fd = vsock_socket()?;
    connect(fd.as_raw_fd(), &VsockAddr::new(HOST_CID, port))?;
    send_on(File::from(fd), "send", bytes, chunk)
}

fn serve(port: u32, bytes: u64, chunk: usize) -> Result<()> {
    send_on(accept_one(port)?, "serve", bytes, chunk)
}

fn send_on(mut conn: File, mode: &str, bytes: u64, chunk: usize) -> Result<()> {
    let start = Instant::now();
    write_zeros(&mut conn, bytes, chunk)?;
    let written = start.elapsed();
    // Half-close, then wait for the host to close: every byte has arrived by then.
    shutdown(conn.as_raw_fd(), Shutdown::Write)?;
    let mut rest = [0u8; 64];
    while matches!(conn.read(&mut rest), Ok(n) if n > 0) {}
    eprintln!(
        "{mode} bytes={bytes} chunk={chunk} guest_write_s={:.3} guest_total_s={:.3}",
        written.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write_stdout(bytes: u64, chunk: usize) -> Result<()> {
    // Unbuffered: each chunk is one write(2) to the pipe, as `send` does to the socket.
    // SAFETY: fd 1 is open for the life of the process; ManuallyDrop keeps it open after.
    let mut out = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    Ok(write_zeros(&mut *out, bytes, chunk)?)
}

fn write_zeros(to: &mut impl Write, bytes: u64, chunk: usize) -> io::Result<()> {
    let buf = vec![0u8; chunk.max(1)];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        to.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Milliseconds of CLOCK_BOOTTIME (the clock of /proc/uptime and of process start times).
fn boottime_ms() -> Result<f64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)?;
    Ok(t.tv_sec() as f64 * 1e3 + t.tv_nsec() as f64 / 1e6)
}

/// A task's name and start (ms since boot) from its `stat` file.
fn task_start(stat: &str, tick_ms: f64) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    // After the name: state is field 3, starttime field 22.
    let start: f64 = stat.get(close + 2..)?.split(' ').nth(19)?.parse().ok()?;
    Some((name, start * tick_ms))
}

fn timeline() -> Result<()> {
    let now = boottime_ms()?;
    let real_now = std::time::SystemTime::now();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    let tick_ms = 1000.0 / ticks.max(1) as f64;
    let start = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| task_start(&s, tick_ms))
    };
    let mut tasks = Vec::new();
    for entry in std::fs::read_dir("/proc/1/task")?.flatten() {
        if let Some((name, ms)) = start(&entry.path().join("stat")) {
            tasks.push((ms, name));
        }
    }
    tasks.sort_by(|a, b| a.0.total_cmp(&b.0));
    let tasks: Vec<String> = tasks
        .iter()
        .map(|(ms, name)| format!("{name}@{ms:.0}"))
        .collect();
    let me = start(Path::new("/proc/self/stat")).map_or(f64::NAN, |(_, ms)| ms);
    // The file's mtime is wall-clock time: moved onto the boot clock by the two clocks' offset.
    let etc = std::fs::metadata("/etc/hostname")
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| real_now.duration_since(t).ok())
        .map_or(f64::NAN, |ago| now - ago.as_secs_f64() * 1e3);
    let (init, ext4) = kernel_log_marks();
    println!(
        "timeline now_ms={now:.0} self_ms={me:.0} etc_ms={etc:.0} init_ms={init:.0} ext4_ms={} \
         tasks={}",
        ext4.iter()
            .map(|ms| format!("{ms:.0}"))
            .collect::<Vec<_>>()
            .join(","),
        tasks.join(",")
    );
    Ok(())
}

/// From the kernel log (`/dev/kmsg`, every record with its time even under `quiet`): when
/// the kernel ran /init, and when each ext4 filesystem was mounted, in ms since boot.
fn kernel_log_marks() -> (f64, Vec<f64>) {
    use std::os::unix::fs::OpenOptionsExt;
    let (mut init, mut ext4) = (f64::NAN, Vec::new());
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return (init, ext4);
    };
    let mut buf = vec![0u8; 8192];
    loop {
        // One record per read: "PRIO,SEQ,MICROSECONDS,FLAGS;MESSAGE\n"; EAGAIN at the end.
        let n = match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
            Err(_) => break,
        };
        let record = String::from_utf8_lossy(&buf[..n]);
        let Some((head, message)) = record.split_once(';') else {
            continue;
        };
        let Some(us) = head.split(',').nth(2).and_then(|t| t.parse::<f64>().ok()) else {
            continue;
        };
        if message.starts_with("Run /init as init process") {
            init = us / 1e3;
        } else if message.starts_with("EXT4-fs (") && message.contains("mounted filesystem") {
            ext4.push(us / 1e3);
        }
    }
    (init, ext4)
}

// The host's side.

/// A connection to guest `port` through the VM's hybrid socket (`CONNECT`/`OK`).
fn hybrid_connect(socket: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket)?;
    writeln!(stream, "CONNECT {port}")?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        if stream.read(&mut byte)? == 0 || line.len() > 32 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("the VM refused the connection to port {port}"),
            ));
        }
        line.push(byte[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(io::Error::other(format!(
            "unexpected answer from the VM's vsock socket: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(stream)
}

/// As [`hybrid_connect`], retried for up to 30 s while the guest is not listening yet.
fn hybrid_connect_retry(socket: &Path, port: u32) -> io::Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match hybrid_connect(socket, port) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Median and 99th percentile of `samples` (sorted in place).
fn median_p99(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ping(socket: &Path, port: u32, n: usize) -> Result<()> {
    if n == 0 {
        return Err("ping: N must be at least 1".into());
    }
    let mut conn = hybrid_connect_retry(socket, port)?;
    let mut rtts = Vec::with_capacity(n);
    let mut byte = [0u8; 1];
    for i in 0..PING_WARMUP + n {
        let t = Instant::now();
        conn.write_all(&[i as u8])?;
        conn.read_exact(&mut byte)?;
        let rtt = t.elapsed();
        if byte[0] != i as u8 {
            return Err(format!("ping {i}: got {} back", byte[0]).into());
        }
        if i >= PING_WARMUP {
            rtts.push(us(rtt));
        }
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    let (median, p99) = median_p99(&mut rtts);
    println!("ping n={n} median_us={median:.1} p99_us={p99:.1}");
    Ok(())
}

fn connect_n(socket: &Path, port: u32, n: usize) -> Result<()> {
    if n == 0 {
        return Err("connect: N must be at least 1".into());
    }
    // The first waits for the guest's listener.
    drop(hybrid_connect_retry(socket, port)?);
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 9 {
        let t = Instant::now();
        let conn = hybrid_connect(socket, port)?;
        if i >= 9 {
            times.push(us(t.elapsed()));
        }
        drop(conn);
    }
    let (median, p99) = median_p99(&mut times);
    println!("connect n={n} median_us={median:.1} p99_us={p99:.1}");
    Ok(())
}

fn sink(socket: &Path, port: u32) -> Result<()> {
    let mut path = socket.as_os_str().to_owned();
    path.push(format!("_{port}"));
    let path = PathBuf::from(path);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let (conn, _) = listener.accept()?;
    let start = Instant::now();
    let bytes = drain(Some(conn))?;
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    print_rate("sink", bytes, secs);
    Ok(())
}

fn recv(socket: &Path, port: u32) -> Result<()> {
    let conn = hybrid_connect_retry(socket, port)?;
    let start = Instant::now();
    let bytes = drain(Some(conn))?;
    print_rate("recv", bytes, start.elapsed().as_secs_f64());
    Ok(())
}

fn print_rate(mode: &str, bytes: u64, secs: f64) {
    println!(
        "{mode} bytes={bytes} secs={secs:.3} mib_s={:.1}",
        bytes as f64 / secs / (1 << 20) as f64
    );
}

/// Opens agent connections as `hk exec` does.
struct Hybrid(PathBuf);

impl Connector for Hybrid {
    fn connect(&self) -> io::Result<UnixStream> {
        hybrid_connect(&self.0, AGENT_PORT)
    }
}

/// The process `hk exec CMD` asks for: docker's PATH, cwd /, no stdin, no terminal.
fn exec_spec(id: String, argv: Vec<String>) -> ProcessSpec {
    ProcessSpec {
        id,
        argv,
        env: vec![format!("PATH={DEFAULT_PATH}")],
        cwd: "/".into(),
        create_cwd: true,
        ..ProcessSpec::default()
    }
}

/// Reads a stream to EOF (then closes it) in 64 KiB reads, as `hk exec` pumps output.
fn drain(stream: Option<UnixStream>) -> io::Result<u64> {
    let Some(mut stream) = stream else {
        return Ok(0);
    };
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn exec(socket: &Path, n: usize) -> Result<()> {
    if n == 0 {
        return Err("exec: N must be at least 1".into());
    }
    let client = Client::open(Arc::new(Hybrid(socket.to_path_buf())))?;
    let (mut total, mut run, mut wait) = (vec![], vec![], vec![]);
    // One uncounted warm-up exec.
    for i in 0..=n {
        let id = format!("bench-{}-{i}", std::process::id());
        let t0 = Instant::now();
        let mut process = client.run(exec_spec(id, vec!["true".into()]))?;
        let t2 = Instant::now();
        let status = process.wait()?;
        drain(process.streams.stdout.take())?;
        drain(process.streams.stderr.take())?;
        let t3 = Instant::now();
        if status.shell_code() != 0 {
            return Err(format!("exec {i}: true exited {status:?}").into());
        }
        if i > 0 {
            total.push(us(t3 - t0));
            run.push(us(t2 - t0));
            wait.push(us(t3 - t2));
        }
    }
    let (median, p99) = median_p99(&mut total);
    println!(
        "exec n={n} median_us={median:.1} p99_us={p99:.1} run_us={:.1} wait_us={:.1}",
        median_p99(&mut run).0,
        median_p99(&mut wait).0
    );
    Ok(())
}

fn exec_out(socket: &Path, cmd: &[&str]) -> Result<()> {
    let client = Client::open(Arc::new(Hybrid(socket.to_path_buf())))?;
    let id = format!("bench-out-{}", std::process::id());
    let start = Instant::now();
    let mut process = client.run(exec_spec(id, cmd.iter().map(|s| s.to_string()).collect()))?;
    let stdout = process.streams.stdout.take();
    let stderr = process.streams.stderr.take();
    let errors = std::thread::spawn(move || drain(stderr));
    let bytes = drain(stdout)?;
    let secs = start.elapsed().as_secs_f64();
    let status = process.wait()?;
    let _ = errors.join();
    if status.shell_code() != 0 {
        return Err(format!("exec-out: {cmd:?} exited {status:?}").into());
    }
    print_rate("exec-out", bytes, secs);
    Ok(())
}

fn repeat(n: usize, expect: i32, cmd: &[&str]) -> Result<()> {
    if n == 0 {
        return Err("repeat: N must be at least 1".into());
    }
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let status = Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        if status.code() != Some(expect) {
            return Err(format!("{cmd:?}: {status}, expected {expect}").into());
        }
    }
    let all = ms
        .iter()
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(",");
    let (median, p99) = median_p99(&mut ms);
    println!("repeat n={n} median_ms={median:.1} p99_ms={p99:.1} all_ms={all}");
    Ok(())
}
