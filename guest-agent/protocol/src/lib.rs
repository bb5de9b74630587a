//! The protocol between `hk` on the host and `hk-agent`, PID 1 in the guest
//! (docs/agent-protocol.md is the specification; this crate is its one implementation, used
//! by both sides).
//!
//! # Shape
//! Byte streams over virtio-vsock. Each connection the host opens to the agent's port
//! ([`AGENT_PORT`]) starts with an [`Open`] frame saying what it is: a control connection
//! carrying [`Request`]s and [`Response`]s, one stdio stream of one process, or the tar
//! stream of a [`RequestBody::Diff`], after which it carries raw bytes. At boot the agent connects to the host's [`HOST_PORT`] and sends a
//! [`Hello`]; that connection then serves as a control connection too, so the host learns
//! the moment the agent is ready without polling.
//!
//! # Why framed JSON over one connection per stream, not ttrpc
//! Measured in BENCHMARKS.md ("Agent protocol"): see there for the numbers. In short, the
//! stdio bytes never pass through a codec (one vsock connection each, as Apple's vminitd
//! does, so each stream has its own flow control and a full stdout cannot stall a signal),
//! control messages are few and small, and a frame is a 4-byte length and a JSON object
//! that any language reads. Frames are capped at [`MAX_FRAME`] bytes, so a hostile guest
//! cannot make the host allocate more.

mod client;

pub use client::{Client, Connector, Diff, Process, ProcessStreams};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Protocol version; the host refuses an agent that speaks another. 2: `Setup.mounts` (an
/// agent of version 1 would ignore them and run the container without its volumes). 3: the
/// `diff` request and connection, which export the root's upper layer as a tar stream. A
/// version 2 agent would answer `diff` with `unsupported`, which a host could probe for,
/// but `hk build` would learn it only after running the step, with the step's work lost;
/// the bump makes an agent without it fail at [`Hello`] instead. 4: secret mounts
/// ([`MountSource::Secret`]), which an older agent would refuse only once the step runs.
/// 5: [`ProcessSpec::start`], and stream connections that may come before their
/// `create_process` ([`Client::run`]: an exec in one request round trip); an older agent
/// would answer `done` without starting the process and drop the early streams.
/// 6: a root whose lower layer is a virtio-fs share ([`Lower`]; `hk run --rootfs DIR
/// --rootfs-mode virtiofs`), which an older agent cannot parse.
pub const VERSION: u32 = 6;
/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// The host vsock port the agent dials at boot to say [`Hello`].
pub const HOST_PORT: u32 = 1024;
/// Largest frame either side accepts.
pub const MAX_FRAME: u32 = 1 << 20;
/// docker's default PATH, for a process whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The first frame of a connection the host opens to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "open", rename_all = "snake_case")]
pub enum Open {
    /// Requests follow.
    Control,
    /// Raw bytes of one stdio stream of `process` follow, in the direction `fd` says.
    Stream { process: String, fd: Fd },
    /// The agent writes the tar stream of a [`RequestBody::Diff`] on this connection, then
    /// closes it. Version 3.
    Diff,
}

/// Which stdio stream a stream connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fd {
    Stdin,
    Stdout,
    Stderr,
    /// A terminal: input host to guest, output guest to host.
    Pty,
}

/// What the agent says first on the connection it opens at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// "hk-agent 0.1.0".
    pub agent: String,
    /// The guest's CLOCK_BOOTTIME when the agent started, and when it was ready, in ns:
    /// how long the kernel took to boot and the agent to set up.
    pub started_ns: u64,
    pub ready_ns: u64,
}

/// A request on a control connection. Ids are the host's; responses carry them back, and
/// may come out of order (a `wait` answers when its process ends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub body: RequestBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RequestBody {
    /// Sets the container up: root filesystem, host name, /etc files. Once, before any
    /// process is created.
    Setup(Setup),
    /// Prepares a process; it starts with `start` once its streams are attached, or by
    /// itself with [`ProcessSpec::start`].
    CreateProcess(ProcessSpec),
    Start {
        process: String,
    },
    Signal {
        process: String,
        signal: i32,
    },
    Resize {
        process: String,
        rows: u16,
        cols: u16,
    },
    CloseStdin {
        process: String,
    },
    /// Answers when the process has ended and its output streams are drained.
    Wait {
        process: String,
    },
    /// Ends the VM: kills what runs, syncs, unmounts, and reports `status` to the VMM. No
    /// response comes; the VM ends.
    Shutdown {
        status: u32,
    },
    /// Exports the root's upper layer as an OCI layer tar on a [`Open::Diff`] connection
    /// (the host opens it next to the request; the agent waits for it as `start` waits for
    /// streams) and answers [`Reply::Diff`] once the whole stream is written and the
    /// connection closed. Only with a writable root and no process running; the root stays
    /// read-only afterwards. Version 3.
    Diff,
}

/// How the container is set up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// The container's root; without one processes run in the agent's own initramfs.
    pub root: Option<Root>,
    pub hostname: Option<String>,
    /// Contents of /etc/hosts and /etc/resolv.conf, mounted over the image's as docker does.
    pub hosts: Option<String>,
    pub resolv_conf: Option<String>,
    /// Network interfaces to configure (loopback is always brought up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Filesystems mounted into the root after it is set up and before any process runs,
    /// in this order (the host puts parents before the mounts nested in them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

/// One filesystem mounted into the container (`-v`, `--mount`, `--tmpfs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path in the container; symlinks in it resolve inside the container's root.
    pub target: String,
    #[serde(flatten)]
    pub source: MountSource,
    /// Mounted read-only in the guest (the host enforces it too, for shares).
    #[serde(default)]
    pub read_only: bool,
    /// When the mounted filesystem is empty, fill it with what the root has at `target`
    /// first (docker's seeding of a new volume from the image), owners and modes kept.
    #[serde(default)]
    pub seed: bool,
}

/// What a [`Mount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MountSource {
    /// The virtio-fs device with this tag.
    Virtiofs { tag: String },
    /// A new tmpfs; `options` are mount(8)'s: flags (`ro`, `noexec`, `nosuid`, `nodev` and
    /// their opposites) and tmpfs's own (`size=`, `mode=`, `uid=`, `gid=`, `nr_inodes=`).
    Tmpfs { options: Vec<String> },
    /// A file with this content, bound onto `target` (a file): a build secret
    /// (`RUN --mount=type=secret`). It lives in guest memory only, on a tmpfs of its own,
    /// and the mount point the agent makes for it stays out of a diff.
    Secret {
        /// The content, base64 (standard alphabet, padded): secrets need not be UTF-8.
        data: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// One NIC, found by its MAC address, configured with a static IPv4 address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// `aa:bb:cc:dd:ee:ff`, as /sys/class/net/*/address shows it.
    pub mac: String,
    /// `10.0.2.15/24`.
    pub address: String,
    /// The default route's next hop, if this interface carries it.
    pub gateway: Option<String>,
    pub mtu: Option<u32>,
}

/// The container's root filesystem: a read-only lower layer under an overlay whose upper
/// layer is a writable ext4 disk. Disks are named by their virtio serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    pub lower: Lower,
    /// `None`: the root is read-only.
    pub upper: Option<String>,
}

/// Where a root's read-only lower layer is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Lower {
    /// An ext4 disk with this virtio serial (an image's root, converted by hk).
    Disk { serial: String },
    /// The virtio-fs share with this tag (a host directory served as it is; the host
    /// makes the share read-only).
    Virtiofs { tag: String },
}

/// A process to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// The host's name for it, unique in the VM (`process` on the wire, as in every
    /// request about it; `id` is the request's).
    #[serde(rename = "process")]
    pub id: String,
    pub argv: Vec<String>,
    /// `KEY=value`, exactly the environment the process gets.
    pub env: Vec<String>,
    /// Absolute working directory; "" means /.
    pub cwd: String,
    /// Created (with parents, owned by root, mode 0755) if missing, as docker does for
    /// WorkingDir.
    pub create_cwd: bool,
    /// `name`, `uid`, `name:group`, `uid:gid`: resolved in the container's own /etc/passwd
    /// and /etc/group. `None` is root.
    pub user: Option<String>,
    /// Supplementary groups on top of the user's own, by name or number.
    pub additional_groups: Vec<String>,
    pub umask: Option<u32>,
    pub rlimits: Vec<Rlimit>,
    /// A terminal of this size instead of pipes.
    pub tty: Option<WindowSize>,
    /// Whether a stdin stream will be attached (else stdin is /dev/null).
    pub stdin: bool,
    /// The container's main process: when it ends, every other process is killed.
    pub main: bool,
    /// Start it as soon as its streams are attached, as `start` would, and answer as
    /// `start` does (version 5): one request instead of two.
    #[serde(default)]
    pub start: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// One resource limit, by its ulimit name (`nofile`, `nproc`, `core`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: String,
    pub soft: u64,
    pub hard: u64,
}

/// The answer to the request with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    #[serde(flatten)]
    pub result: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Reply),
    Error(ErrorReply),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Started {
        pid: u32,
    },
    Exited(ExitStatus),
    /// A `diff` was written in full: `entries` tar entries (extension headers not counted)
    /// in `bytes` bytes, end-of-archive blocks included. The host checks it read exactly
    /// `bytes`, which tells a complete stream from one cut short.
    Diff(DiffSummary),
}

/// What [`Reply::Diff`] reports about a diff stream: `{"reply": "diff", "entries": N,
/// "bytes": B}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSummary {
    pub entries: u64,
    pub bytes: u64,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell reports: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The executable does not exist (docker's exit 127).
    NotFound,
    /// The executable cannot be run (docker's exit 126).
    PermissionDenied,
    InvalidArgument,
    /// A request this agent does not know.
    Unsupported,
    Other,
}

/// What can go wrong speaking the protocol.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("agent connection: {0}")]
    Io(#[from] io::Error),
    #[error("agent frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooBig(u32),
    #[error("malformed agent message: {0}")]
    Malformed(String),
    #[error("{}", .0.message)]
    Agent(ErrorReply),
    #[error("the agent speaks protocol version {0}; this hk speaks {VERSION}")]
    Version(u32),
    #[error("the agent connection closed")]
    Closed,
}

/// Writes one frame: a 4-byte big-endian length, then `value` as JSON.
pub fn write_frame(w: &mut impl Write, value: &impl Serialize) -> Result<(), Error> {
    let body = serde_json::to_vec(value).map_err(|e| Error::Malformed(e.to_string()))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_FRAME)
        .ok_or(Error::TooBig(u32::MAX))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    Ok(())
}

/// Reads one frame's JSON; `Ok(None)` at a clean end of stream between frames.
pub fn read_frame_value(r: &mut impl Read) -> Result<Option<serde_json::Value>, Error> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(Error::Closed),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(Error::TooBig(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Closed,
        _ => Error::Io(e),
    })?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| Error::Malformed(e.to_string()))
}

/// Reads one frame as a `T`; `Ok(None)` at a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<Option<T>, Error> {
    match read_frame_value(r)? {
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| Error::Malformed(e.to_string())),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_written_as_documented_and_optional() {
        let share = Mount {
            target: "/data".into(),
            source: MountSource::Virtiofs {
                tag: "hk-m0".into(),
            },
            read_only: true,
            seed: false,
        };
        assert_eq!(
            serde_json::to_value(&share).unwrap(),
            serde_json::json!({"target": "/data", "type": "virtiofs", "tag": "hk-m0",
                               "read_only": true, "seed": false})
        );
        let tmpfs: Mount = serde_json::from_value(serde_json::json!(
            {"target": "/cache", "type": "tmpfs", "options": ["size=64m"]}
        ))
        .unwrap();
        assert_eq!(
            (tmpfs.source, tmpfs.read_only, tmpfs.seed),
            (
                MountSource::Tmpfs {
                    options: vec!["size=64m".into()]
                },
                false,
                false
            )
        );
        // A setup without mounts says nothing about them, and reads back without any.
        let json = serde_json::to_value(Setup::default()).unwrap();
        assert!(json.get("mounts").is_none(), "{json}");
        let back: Setup = serde_json::from_value(json).unwrap();
        assert!(back.mounts.is_empty());
        assert!(serde_json::from_value::<Mount>(
            serde_json::json!({"target": "/x", "type": "nfs", "server": "h"})
        )
        .is_err());
    }

    #[test]
    fn frames_round_trip_and_name_their_fields_as_documented() {
        let req = Request {
            id: 7,
            body: RequestBody::Signal {
                process: "main".into(),
                signal: 15,
            },
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&buf[4..]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 7, "op": "signal", "process": "main", "signal": 15})
        );
        assert_eq!(
            u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize,
            buf.len() - 4
        );
        let back: Request = read_frame(&mut &buf[..]).unwrap().unwrap();
        assert_eq!(back, req);

        let resp = Response {
            id: 7,
            result: Outcome::Ok(Reply::Exited(ExitStatus::Signal(9))),
        };
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 7, "ok": {"reply": "exited", "signal": 9}})
        );
        for resp in [
            resp,
            Response {
                id: 1,
                result: Outcome::Ok(Reply::Done),
            },
            Response {
                id: 2,
                result: Outcome::Error(ErrorReply {
                    kind: ErrorKind::NotFound,
                    message: "x".into(),
                }),
            },
        ] {
            let mut buf = Vec::new();
            write_frame(&mut buf, &resp).unwrap();
            assert_eq!(
                read_frame::<Response>(&mut &buf[..]).unwrap().unwrap(),
                resp
            );
        }
        let open = serde_json::to_value(Open::Stream {
            process: "p".into(),
            fd: Fd::Stdout,
        })
        .unwrap();
        assert_eq!(
            open,
            serde_json::json!({"open": "stream", "process": "p", "fd": "stdout"})
        );
    }

    #[test]
    fn diff_frames_round_trip_as_documented() {
        let cases = [
            (
                serde_json::to_value(Request {
                    id: 5,
                    body: RequestBody::Diff,
                })
                .unwrap(),
                serde_json::json!({"id": 5, "op": "diff"}),
            ),
            (
                serde_json::to_value(Response {
                    id: 5,
                    result: Outcome::Ok(Reply::Diff(DiffSummary {
                        entries: 12,
                        bytes: 10240,
                    })),
                })
                .unwrap(),
                serde_json::json!({"id": 5, "ok": {"reply": "diff", "entries": 12, "bytes": 10240}}),
            ),
            (
                serde_json::to_value(Open::Diff).unwrap(),
                serde_json::json!({"open": "diff"}),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
        let mut buf = Vec::new();
        write_frame(&mut buf, &Open::Diff).unwrap();
        assert_eq!(read_frame::<Open>(&mut &buf[..]).unwrap(), Some(Open::Diff));
        let req = Request {
            id: 9,
            body: RequestBody::Diff,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        assert_eq!(read_frame::<Request>(&mut &buf[..]).unwrap(), Some(req));
        let resp = Response {
            id: 9,
            result: Outcome::Ok(Reply::Diff(DiffSummary {
                entries: 0,
                bytes: 1024,
            })),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &resp).unwrap();
        assert_eq!(read_frame::<Response>(&mut &buf[..]).unwrap(), Some(resp));
        // A reply without its counts is malformed, not a zero-byte diff.
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &serde_json::json!({"id": 9, "ok": {"reply": "diff"}}),
        )
        .unwrap();
        assert!(matches!(
            read_frame::<Response>(&mut &buf[..]),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn oversized_cut_and_garbled_frames_are_errors() {
        let mut big = (MAX_FRAME + 1).to_be_bytes().to_vec();
        big.extend_from_slice(b"{}");
        assert!(matches!(
            read_frame_value(&mut &big[..]),
            Err(Error::TooBig(_))
        ));
        let cut = [0u8, 0, 0, 10, b'{'];
        assert!(matches!(
            read_frame_value(&mut &cut[..]),
            Err(Error::Closed)
        ));
        let garbled = [0u8, 0, 0, 2, b'{', b'{'];
        assert!(matches!(
            read_frame_value(&mut &garbled[..]),
            Err(Error::Malformed(_))
        ));
        assert!(read_frame_value(&mut &[][..]).unwrap().is_none());
        let half_len = [0u8, 0];
        assert!(matches!(
            read_frame_value(&mut &half_len[..]),
            Err(Error::Closed)
        ));
        // Valid JSON of the wrong shape.
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &serde_json::json!({"id": 1, "op": "launch_missiles"}),
        )
        .unwrap();
        assert!(matches!(
            read_frame::<Request>(&mut &buf[..]),
            Err(Error::Malformed(_))
        ));
    }
}
