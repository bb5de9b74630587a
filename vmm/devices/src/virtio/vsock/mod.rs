//! virtio-vsock (virtio 1.2 §5.10): stream sockets between the guest and the host, the
//! channel hk's agent protocol runs on.
//!
//! # Why hand-written
//! rust-vmm has no crate for this: `vhost-device-vsock` is a separate vhost-user daemon (a
//! process per VM and a socket hop on every packet), and Firecracker's and Cloud Hypervisor's
//! muxers live inside their VMMs, tied to their event managers. hk wants the host end
//! in-process, so that `hk run` speaks to its agent with no daemon and no extra copy.
//!
//! # The host side
//! Every connection's host end is a Unix stream socket, which makes all host users alike:
//! - In-process ([`VsockHost`]): `connect(port)` hands back one end of a socketpair once the
//!   guest accepted; `listen(port)` receives guest connections to that host port.
//! - Other host programs, through Firecracker's hybrid convention on the Unix socket given in
//!   [`VsockConfig::uds`]: a client connects and writes `CONNECT <port>\n`; once the guest
//!   accepts it reads `OK <host port>\n` and then has a byte stream. A guest connection to
//!   host port P with no in-process listener goes to the Unix socket `<uds>_P`. So
//!   `socat - UNIX-CONNECT:vm.vsock` works against a running VM.
//!
//! # Flow control and memory
//! Both directions follow the spec's credit scheme. Guest to host: the device advertises
//! [`BUF_ALLOC`] bytes per connection and counts as forwarded what the host socket took; what
//! it could not take waits in a per-connection buffer that the advertised credit bounds, so a
//! slow host reader makes the guest wait, and a guest that sends past its credit has its
//! connection reset instead of growing the buffer. Host to guest: the device reads a host
//! socket only while the guest has credit and never holds more than [`MAX_PKT`] bytes read
//! ahead per connection. Connections, pending resets and half-open host clients are counted
//! and capped. Worst case per VM: `MAX_CONNECTIONS * (BUF_ALLOC + MAX_PKT)` bytes, reached
//! only if the host accepts that many connections and stops reading all of them.

mod packet;
mod worker;

use super::{read_config_bytes, DeviceWorker, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::event::Event;
use std::collections::HashMap;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VIRTIO_ID_VSOCK: u32 = 19;
/// The host's context ID; the guest's is the VMM caller's choice (3 or more).
pub const HOST_CID: u64 = 2;
const QUEUE_SIZE: u16 = 256;
/// Receive buffer space the device advertises per connection (the guest's send window).
pub const BUF_ALLOC: u32 = 256 << 10;
/// Largest payload of one packet either way; also the host-to-guest read-ahead.
pub const MAX_PKT: usize = 64 << 10;
/// Connections open at once; more are refused with a reset.
pub const MAX_CONNECTIONS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vsock guest CID {0} is reserved (use 3 or more)")]
    Cid(u64),
    #[error("vsock socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How the VM's vsock device is set up.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context ID, 3 or more.
    pub guest_cid: u64,
    /// A Unix socket path for other host programs (Firecracker's hybrid convention).
    pub uds: Option<PathBuf>,
}

/// A request from the host API to the device thread.
enum HostRequest {
    Connect {
        port: u32,
        stream: UnixStream,
        reply: Sender<io::Result<()>>,
        deadline: Instant,
    },
    ResetAll,
}

/// What the host API and the device thread share.
struct Shared {
    requests: Mutex<Vec<HostRequest>>,
    wake: Event,
    listeners: Mutex<HashMap<u32, Sender<UnixStream>>>,
}

impl Shared {
    fn send(&self, request: HostRequest) -> io::Result<()> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request);
        self.wake.signal()
    }
}

/// The host's end of the VM's vsock, for the program that runs the VM. Cheap to clone.
#[derive(Clone)]
pub struct VsockHost {
    shared: Arc<Shared>,
}

impl VsockHost {
    /// Connects to `port` in the guest. Returns once the guest accepted (a stream ready for
    /// use), refused (`ConnectionRefused`), or did not answer within `timeout` (`TimedOut`;
    /// also when the guest's driver is not up yet).
    pub fn connect(&self, port: u32, timeout: Duration) -> io::Result<UnixStream> {
        let (mine, device) = UnixStream::pair()?;
        let (reply, answer) = mpsc::channel();
        self.shared.send(HostRequest::Connect {
            port,
            stream: device,
            reply,
            deadline: Instant::now() + timeout,
        })?;
        match answer.recv_timeout(timeout + Duration::from_millis(500)) {
            Ok(Ok(())) => Ok(mine),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("vsock port {port}: the guest did not answer"),
            )),
        }
    }

    /// Accepts guest connections to host `port` until the [`Listener`] is dropped. Fails if
    /// something in this process already listens there.
    pub fn listen(&self, port: u32) -> io::Result<Listener> {
        let (tx, rx) = mpsc::channel();
        let mut listeners = self
            .shared
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if listeners.contains_key(&port) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("vsock host port {port} already has a listener"),
            ));
        }
        listeners.insert(port, tx);
        Ok(Listener {
            port,
            shared: self.shared.clone(),
            incoming: rx,
        })
    }

    /// Drops every connection and tells the guest its transport was reset
    /// (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET), as a host side that lost its state must.
    pub fn reset_all(&self) -> io::Result<()> {
        self.shared.send(HostRequest::ResetAll)
    }
}

/// Guest connections to one host port.
pub struct Listener {
    port: u32,
    shared: Arc<Shared>,
    incoming: Receiver<UnixStream>,
}

impl Listener {
    /// The next guest connection, waiting at most `timeout`.
    pub fn accept(&self, timeout: Duration) -> io::Result<UnixStream> {
        self.incoming.recv_timeout(timeout).map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no guest connection to vsock port {} in {timeout:?}",
                    self.port
                ),
            )
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.port);
    }
}

/// The hybrid Unix socket; its path is removed with the device.
struct UdsListener {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for UdsListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The virtio-vsock device model.
pub struct Vsock {
    guest_cid: u64,
    config: [u8; 8],
    shared: Arc<Shared>,
    uds: Option<Arc<UdsListener>>,
}

impl Vsock {
    /// A vsock device for `config`. Binds the hybrid Unix socket now, so it exists (and a
    /// clash is reported) before the VM starts.
    pub fn new(config: &VsockConfig) -> Result<Vsock, Error> {
        if config.guest_cid < 3 || config.guest_cid > u64::from(u32::MAX) {
            return Err(Error::Cid(config.guest_cid));
        }
        let socket_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Socket { path, source }
        };
        let uds = match &config.uds {
            Some(path) => {
                let listener = UnixListener::bind(path).map_err(socket_err(path))?;
                listener.set_nonblocking(true).map_err(socket_err(path))?;
                Some(Arc::new(UdsListener {
                    listener,
                    path: path.clone(),
                }))
            }
            None => None,
        };
        let wake = Event::new().map_err(|source| Error::Socket {
            path: PathBuf::from("eventfd"),
            source,
        })?;
        Ok(Vsock {
            guest_cid: config.guest_cid,
            config: config.guest_cid.to_le_bytes(),
            shared: Arc::new(Shared {
                requests: Mutex::new(Vec::new()),
                wake,
                listeners: Mutex::new(HashMap::new()),
            }),
            uds,
        })
    }

    /// The host API of this device.
    pub fn host(&self) -> VsockHost {
        VsockHost {
            shared: self.shared.clone(),
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn name(&self) -> String {
        "vsock".to_string()
    }

    fn features(&self) -> u64 {
        // VIRTIO_VSOCK_F_STREAM is what a driver gets when it negotiates no feature bit
        // (§5.10.3); seqpacket is not offered.
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, _features: u64) -> io::Result<Box<dyn DeviceWorker>> {
        Ok(Box::new(worker::VsockWorker::new(
            self.guest_cid,
            self.shared.clone(),
            self.uds.clone(),
        )))
    }
}

#[cfg(test)]
mod tests;
