//! virtio-net (virtio 1.2 §5.1): one receive and one transmit queue, the MAC address and MTU
//! in configuration space, link status, mergeable receive buffers. Frames go to and come
//! from a [`NetBackend`]: today passt, a separate process speaking the qemu stream protocol
//! on a Unix socket ([`StreamBackend`]); later hk's own user-space switch for networks of VMs.
//!
//! # Features offered
//! VERSION_1, MAC, MTU, STATUS, MRG_RXBUF and EVENT_IDX. Every buffer starts with the 12-byte
//! `virtio_net_hdr_v1`; the device ignores what the guest puts in it on transmit (no offload
//! was negotiated, so it carries none) and writes zeros and `num_buffers` on receive.
//!
//! # Notifications
//! Each interrupt costs a Linux guest two trapped MMIO accesses (InterruptStatus and
//! InterruptACK) besides the injection, and each kick an exit, so the device asks for as few
//! of both as the driver allows, as QEMU's virtio-net does: it interrupts only when the driver
//! asked (`used_event` with EVENT_IDX, else the avail ring's NO_INTERRUPT flag, which Linux
//! sets while its NAPI poll runs), it wants transmit kicks only once its transmit ring is
//! empty, and receive kicks only while a frame waits for buffers.
//!
//! # Why no offloads
//! passt's stream carries plain Ethernet frames: complete, with valid checksums, no GSO.
//! Offering CSUM/HOST_TSO would oblige the device to complete checksums and cut 64 KiB TCP
//! segments into MTU-sized frames itself (and GUEST_CSUM/GUEST_TSO to merge them back for the
//! guest); that work would only move from the guest's vCPU to the device thread, on the same
//! two cores. Instead the NIC's MTU is large (passt's default is 65520, which hk passes in
//! the MTU field): a Linux guest then sends and receives 64 KiB frames as it would TSO
//! segments, and the remaining cost is the guest's own checksumming. BENCHMARKS.md measures
//! what that costs against QEMU with the same backend (which offers no offloads either on a
//! stream netdev).
//!
//! # Memory and back-pressure
//! The device never buffers more than the backend's bounded buffers ([`StreamBackend`]: one
//! receive buffer and one send buffer, each a few frames of at most [`MAX_FRAME`] bytes).
//! When the guest posts no receive buffers, the device stops reading the socket and passt
//! sees a full socket; when passt does not read, the device stops taking transmit buffers
//! and the guest's queue fills. A backend that closes, or sends a frame length above
//! [`MAX_FRAME`], is dropped: the link goes down (a configuration interrupt tells the
//! guest), later transmit buffers are consumed and discarded so the guest never wedges, and
//! the error is reported once through the device's error callback.

mod backend;
mod worker;

pub use backend::StreamBackend;

use super::{read_config_bytes, DeviceWorker, VirtioDevice, VIRTIO_F_VERSION_1};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const VIRTIO_ID_NET: u32 = 1;
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// `used_event`/`avail_event` in the rings instead of their flags (virtio 1.2 §2.7.10).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Link status bit of the configuration's `status` field.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers.
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_AT: usize = 10;
/// The largest Ethernet frame either way (passt's 65520 MTU plus the Ethernet header fits).
pub const MAX_FRAME: usize = 65535;
/// A frame shorter than an Ethernet header is not a frame.
pub const MIN_FRAME: usize = 14;
const QUEUE_SIZE: u16 = 256;
/// The MTU Linux accepts at most on a virtio-net device (and passt's default).
pub const MAX_MTU: u16 = 65520;

/// Where a NIC's frames go: a byte stream to passt today, an in-process switch later.
///
/// Every method is called on the device thread and must not block: the backend's
/// descriptor is non-blocking and the device waits on it (readable or writable,
/// edge-triggered) between calls, so a method must keep going until it would block or
/// report what it left undone.
pub trait NetBackend: Send {
    /// What the device thread waits on; readiness in either direction wakes it.
    fn raw_fd(&self) -> RawFd;
    /// The next frame from the network, without taking it: `None` when no whole frame is
    /// ready (the backend then read until it would block). The same frame comes back until
    /// [`NetBackend::consume`]. An error (end of stream, malformed framing) ends the backend.
    fn peek(&mut self) -> io::Result<Option<&[u8]>>;
    /// Forgets the frame [`NetBackend::peek`] returned.
    fn consume(&mut self);
    /// Whether [`NetBackend::send`] can take a frame of up to [`MAX_FRAME`] bytes now.
    fn can_send(&self) -> bool;
    /// Queues one frame of `len` bytes, which `fill` writes into the buffer it is given.
    /// If `fill` fails, nothing is queued.
    fn send(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<()>;
    /// Pushes queued frames out; `Ok(true)` when none is left.
    fn flush(&mut self) -> io::Result<bool>;
}

/// Told once when a NIC's backend fails and the link goes down.
pub type ErrorSink = Arc<dyn Fn(String) + Send + Sync>;

/// Frames moved and dropped, for tests and debugging.
#[derive(Debug, Default)]
pub struct Stats {
    pub rx_frames: AtomicU64,
    /// Frames from the backend larger than every buffer the guest posted.
    pub rx_dropped: AtomicU64,
    pub tx_frames: AtomicU64,
    /// Transmit chains that were malformed, too short or too long, or found the backend gone.
    pub tx_dropped: AtomicU64,
}

/// What the device model and its worker share.
struct Shared {
    status: AtomicU16,
    backend: Mutex<Option<Box<dyn NetBackend>>>,
    on_error: Option<ErrorSink>,
    stats: Arc<Stats>,
}

/// The virtio-net device model.
pub struct Net {
    name: String,
    mac: [u8; 6],
    mtu: u16,
    shared: Arc<Shared>,
}

impl Net {
    /// A NIC named `name` ("net0") with address `mac` and `mtu` (68..=65520), connected to
    /// `backend`. `on_error` hears once why the backend was dropped.
    pub fn new(
        name: &str,
        backend: Box<dyn NetBackend>,
        mac: [u8; 6],
        mtu: u16,
        on_error: Option<ErrorSink>,
    ) -> io::Result<Net> {
        if !(68..=MAX_MTU).contains(&mtu) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: MTU {mtu} is outside 68..={MAX_MTU}"),
            ));
        }
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: {mac:02x?} is not a unicast MAC address"),
            ));
        }
        Ok(Net {
            name: name.to_string(),
            mac,
            mtu,
            shared: Arc::new(Shared {
                status: AtomicU16::new(VIRTIO_NET_S_LINK_UP),
                backend: Mutex::new(Some(backend)),
                on_error,
                stats: Arc::default(),
            }),
        })
    }

    /// The NIC's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    fn config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&self.shared.status.load(Ordering::SeqCst).to_le_bytes());
        // max_virtqueue_pairs: one (VIRTIO_NET_F_MQ is not offered, so the driver ignores it).
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_MTU
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_RING_F_EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data)
    }

    fn activate(&mut self, features: u64) -> io::Result<Box<dyn DeviceWorker>> {
        Ok(Box::new(worker::NetWorker::new(
            self.name.clone(),
            self.shared.clone(),
            features & VIRTIO_NET_F_MRG_RXBUF != 0,
            features & VIRTIO_RING_F_EVENT_IDX != 0,
        )))
    }
}

#[cfg(test)]
mod tests;
