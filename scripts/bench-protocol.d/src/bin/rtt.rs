//! Measures the exec round trip of each protocol: hk's `CreateProcess` of `true` (argv,
//! PATH) sent by a client thread, answered "done" by a server thread, in this one process
//! over a Unix socket. No VM and no vsock in between, so what differs between the rows is
//! the protocols alone: encoding, framing, and the threads and copies of each library.
//!
//! Rows: hk's framed JSON written and read on the calling thread; ttrpc's sync client and
//! server; and, for context, hk's own host `Client`, which like ttrpc's client hands each
//! response over from a reader thread (it has no public call that sends `CreateProcess`
//! without also opening stdio connections, so that row sends `Signal`, a request of the same
//! shape with a smaller body).
//!
//! Everything runs twice: first with all threads on one CPU, where a hand-over between
//! threads is a plain context switch, so the numbers are steady and are the protocols' own
//! cost; then free on all CPUs, where a hand-over may also wake an idle CPU, which on a VM
//! like this one's costs tens of µs and varies with the machine's load.
//! Each time, each row: 1,000 round trips of warm-up, then 20,000 timed, in 5 runs
//! interleaved across the rows; median and p99 of all timed round trips, and the range of
//! the runs' medians.
//!
//! Usage: rtt [SERVER_NONE SERVER_JSON SERVER_TTRPC]: given the server binaries, adds their
//! sizes, and a row for the baseline that speaks no protocol.

use bench_protocol::{agent_ttrpc::AgentClient, spec, ttrpc_request};
use hk_agent_protocol::{
    read_frame, write_frame, Client, Connector, Open, Outcome, Reply, Request, RequestBody,
    Response,
};
use protobuf::Message;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const WARMUP: usize = 1_000;
const ROUND_TRIPS: usize = 20_000;
const RUNS: usize = 5;

struct Row {
    name: &'static str,
    /// Bytes on the wire for one request and its response.
    wire: (usize, usize),
    /// Which server binary's size goes with it: 1 JSON, 2 ttrpc (0 is the baseline).
    server: usize,
    round_trip: Box<dyn FnMut()>,
}

/// What one row measured: median and p99 of all round trips, lowest and highest median of
/// a run; in µs.
struct Stats {
    median: f64,
    p99: f64,
    runs: (f64, f64),
}

struct PathConnector(PathBuf);

impl Connector for PathConnector {
    fn connect(&self) -> io::Result<UnixStream> {
        UnixStream::connect(&self.0)
    }
}

fn create_request(id: u64) -> Request {
    Request {
        id,
        body: RequestBody::CreateProcess(spec()),
    }
}

fn frame_len(value: &impl serde::Serialize) -> usize {
    let mut buf = Vec::new();
    write_frame(&mut buf, value).expect("encode");
    buf.len()
}

fn ttrpc_wire() -> (usize, usize) {
    let header = ttrpc::proto::MESSAGE_HEADER_LENGTH;
    let mut req = ttrpc::Request::new();
    req.service = "hkbench.Agent".into();
    req.method = "CreateProcess".into();
    req.payload = ttrpc_request().write_to_bytes().expect("encode");
    let mut resp = ttrpc::Response::new();
    resp.status = Some(ttrpc::get_status(ttrpc::Code::OK, String::new())).into();
    (
        header + req.compute_size() as usize,
        header + resp.compute_size() as usize,
    )
}

fn json_row(sock: &Path) -> Row {
    let mut conn = UnixStream::connect(sock).expect("connect to the JSON server");
    write_frame(&mut conn, &Open::Control).expect("open");
    let mut id = 0;
    let done = Response {
        id: 1,
        result: Outcome::Ok(Reply::Done),
    };
    Row {
        name: "hk framed JSON",
        wire: (frame_len(&create_request(1)), frame_len(&done)),
        server: 1,
        round_trip: Box::new(move || {
            id += 1;
            write_frame(&mut conn, &create_request(id)).expect("send");
            let resp: Response = read_frame(&mut conn).expect("receive").expect("response");
            assert!(resp.id == id && resp.result == Outcome::Ok(Reply::Done));
        }),
    }
}

fn ttrpc_row(sock: &str) -> Row {
    let client = ttrpc::Client::connect(&format!("unix://{sock}")).expect("connect to ttrpc");
    let client = AgentClient::new(client);
    Row {
        name: "ttrpc (sync client and server)",
        wire: ttrpc_wire(),
        server: 2,
        round_trip: Box::new(move || {
            client
                .create_process(ttrpc::context::with_timeout(0), &ttrpc_request())
                .expect("CreateProcess");
        }),
    }
}

fn hk_client_row(sock: &Path) -> Row {
    let client = Client::open(Arc::new(PathConnector(sock.to_path_buf()))).expect("hk Client");
    let process = client.process("main");
    let signal = Request {
        id: 1,
        body: RequestBody::Signal {
            process: "main".into(),
            signal: 15,
        },
    };
    let done = Response {
        id: 1,
        result: Outcome::Ok(Reply::Done),
    };
    Row {
        name: "hk framed JSON via hk's Client (Signal)",
        wire: (frame_len(&signal), frame_len(&done)),
        server: 1,
        round_trip: Box::new(move || process.signal(15).expect("signal")),
    }
}

/// Restricts the calling thread, and so every thread it starts after, to `cpus`.
fn set_cpus(cpus: &libc::cpu_set_t) {
    // SAFETY: 0 is the calling thread; `cpus` is a valid, fully sized set.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), cpus) };
    assert_eq!(rc, 0, "sched_setaffinity: {}", io::Error::last_os_error());
}

/// Starts both servers on sockets in `dir` and connects every row's client: all their
/// threads start here, and so run on the CPUs the calling thread may use.
fn start(dir: &Path) -> (Vec<Row>, ttrpc::Server) {
    std::fs::create_dir_all(dir).expect("temp dir");
    let json_sock = dir.join("json.sock");
    let ttrpc_sock = dir.join("ttrpc.sock").to_string_lossy().into_owned();
    let listener = UnixListener::bind(&json_sock).expect("bind the JSON socket");
    std::thread::spawn(move || bench_protocol::serve_json_forever(listener));
    let server = bench_protocol::start_ttrpc(&ttrpc_sock).expect("start ttrpc");
    let rows = vec![
        json_row(&json_sock),
        ttrpc_row(&ttrpc_sock),
        hk_client_row(&json_sock),
    ];
    (rows, server)
}

fn measure(rows: &mut [Row]) -> Vec<Stats> {
    let mut samples = vec![Vec::with_capacity(RUNS * ROUND_TRIPS); rows.len()];
    let mut run_medians = vec![Vec::new(); rows.len()];
    for _ in 0..RUNS {
        for (i, row) in rows.iter_mut().enumerate() {
            for _ in 0..WARMUP {
                (row.round_trip)();
            }
            let mut run = Vec::with_capacity(ROUND_TRIPS);
            for _ in 0..ROUND_TRIPS {
                let start = Instant::now();
                (row.round_trip)();
                run.push(start.elapsed().as_nanos() as u64);
            }
            samples[i].extend_from_slice(&run);
            run.sort_unstable();
            run_medians[i].push(us(run[run.len() / 2]));
        }
    }
    samples
        .iter_mut()
        .zip(run_medians)
        .map(|(all, runs)| {
            all.sort_unstable();
            Stats {
                median: us(all[all.len() / 2]),
                p99: us(all[all.len() * 99 / 100]),
                runs: (
                    runs.iter().copied().fold(f64::MAX, f64::min),
                    runs.iter().copied().fold(0.0, f64::max),
                ),
            }
        })
        .collect()
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn kib(path: &str) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!("{:.0}", m.len() as f64 / 1024.0),
        Err(e) => format!("({path}: {e})"),
    }
}

fn main() {
    let servers: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::env::temp_dir().join(format!("hk-bench-protocol-{}", std::process::id()));

    // SAFETY: a cpu_set_t is plain bits; all zero is the empty set, filled in by the call.
    let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: 0 is the calling thread; `all` is a valid, fully sized set.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut all) };
    assert_eq!(rc, 0, "sched_getaffinity: {}", io::Error::last_os_error());
    let first = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &all) })
        .expect("some CPU");
    // SAFETY: as for `all`.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `first` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(first, &mut one) };
    // SAFETY: `all` is a valid set.
    let cpus = unsafe { libc::CPU_COUNT(&all) };

    set_cpus(&one);
    let (mut rows, one_server) = start(&dir.join("one-cpu"));
    let on_one = measure(&mut rows);
    // Their idle threads would stay on that one CPU: ttrpc's wake every 10 ms.
    drop(rows);
    one_server.shutdown();

    set_cpus(&all);
    let (mut rows, _server) = start(&dir.join("all-cpus"));
    let on_all = measure(&mut rows);
    let _ = std::fs::remove_dir_all(&dir);

    let sizes = servers.len() == 3;
    let size = |i: usize| match sizes {
        true => format!(" {} |", kib(&servers[i])),
        false => String::new(),
    };
    println!(
        "| protocol | round trip median, 1 CPU (µs) | p99, 1 CPU (µs) | run medians, 1 CPU (µs) \
         | median, p99 on {cpus} CPUs (µs) | run medians on {cpus} CPUs (µs) \
         | request + response bytes |{}",
        if sizes {
            " static server binary (KiB) |"
        } else {
            ""
        }
    );
    println!(
        "|---|---|---|---|---|---|---|{}",
        if sizes { "---|" } else { "" }
    );
    if sizes {
        println!(
            "| none (baseline: accepts, closes) | | | | | | |{}",
            size(0)
        );
    }
    for ((row, one), all) in rows.iter().zip(on_one).zip(on_all) {
        println!(
            "| {} | {:.1} | {:.1} | {:.1}–{:.1} | {:.1}, {:.1} | {:.1}–{:.1} | {} + {} |{}",
            row.name,
            one.median,
            one.p99,
            one.runs.0,
            one.runs.1,
            all.median,
            all.p99,
            all.runs.0,
            all.runs.1,
            row.wire.0,
            row.wire.1,
            size(row.server)
        );
    }
}
