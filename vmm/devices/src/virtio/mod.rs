//! Virtio devices and their MMIO transport (virtio 1.x, "modern" MMIO version 2).
//!
//! A device is split in two, as Cloud Hypervisor and Firecracker split theirs:
//! - the [`VirtioDevice`] model, which the transport keeps: identity, features, queue sizes,
//!   configuration space. vCPU threads read it through the MMIO registers, so it never does
//!   I/O.
//! - a [`DeviceWorker`], made when the driver sets DRIVER_OK, which owns the queues and runs
//!   on a thread of its own ([`worker`]). Disk reads, fsyncs and socket I/O happen there, so a
//!   vCPU reading InterruptStatus never waits behind them, and one device's slow I/O never
//!   stalls another's.

pub mod block;
#[cfg(target_os = "linux")]
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;
pub mod worker;

use crate::{GuestMemory, Interrupt};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue, QueueT};
pub use worker::{Events, Served};

/// What a virtio-fs guest sees when the host changes a file (docs/virtio-fs.md). Here, not
/// in the Linux-only `fs`, so that a VM's configuration names it on every platform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cache {
    /// Close-to-open: data cached while a file is open, dropped when its mtime or size
    /// changes (FUSE_AUTO_INVAL_DATA) or at the next open; names and attributes cached 1 s.
    #[default]
    Auto,
    /// The guest keeps data, names and attributes (1 day): only for a directory nothing else
    /// changes while the VM runs.
    Always,
    /// Nothing cached: every read and stat goes to the host.
    Never,
}

/// Feature bit every modern device offers and every modern driver must accept.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// A virtio device model, independent of its transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 = block, 4 = entropy, 19 = socket).
    fn device_type(&self) -> u32;
    /// Short name for the device's thread and for errors ("blk0", "vsock").
    fn name(&self) -> String;
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Maximum size of each queue; its length is the number of queues. Each a power of two.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver accepted `features` and set DRIVER_OK: returns what serves the queues
    /// until the driver resets the device. Called again after each reset.
    fn activate(&mut self, features: u64) -> std::io::Result<Box<dyn DeviceWorker>>;
}

/// What serves an active device's queues, on the device's own thread.
///
/// Each call does a bounded amount of work and says so through [`Served::more`], so a
/// guest that keeps a queue full cannot starve the device's other queues and event sources.
pub trait DeviceWorker: Send {
    /// Registers the worker's own event sources (host sockets, host-side requests); called
    /// once on the device thread, before anything else.
    fn init(&mut self, _events: &Events) -> std::io::Result<()> {
        Ok(())
    }

    /// The driver notified a queue (the transport does not say which), or the last call ran
    /// out of budget.
    fn process(&mut self, queues: &mut [Queue], mem: &GuestMemory, events: &Events) -> Served;

    /// One of the sources registered through [`Events`] is ready.
    fn event(
        &mut self,
        _token: u64,
        _queues: &mut [Queue],
        _mem: &GuestMemory,
        _events: &Events,
    ) -> Served {
        Served::default()
    }
}

/// The interrupt of a virtio-mmio device with its InterruptStatus register, which the
/// driver reads to learn why it was interrupted.
#[derive(Clone)]
pub struct VirtioInterrupt {
    status: Arc<AtomicU32>,
    line: Arc<dyn Interrupt>,
}

/// InterruptStatus bit: a queue's used ring changed.
pub const INT_USED_RING: u32 = 0x1;
/// InterruptStatus bit: the configuration (or the device status) changed.
pub const INT_CONFIG: u32 = 0x2;

impl VirtioInterrupt {
    pub fn new(line: Arc<dyn Interrupt>) -> Self {
        VirtioInterrupt {
            status: Arc::new(AtomicU32::new(0)),
            line,
        }
    }

    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.signal(INT_USED_RING)
    }

    fn signal(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.line.trigger()
    }

    fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// Serves up to `budget` chains of a request queue: `handle` answers each with its used
/// length. A used ring outside guest memory means the queue is broken: serving stops
/// rather than spins on it.
pub(crate) fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemory,
    budget: usize,
    mut handle: impl FnMut(DescriptorChain<&GuestMemory>) -> u32,
) -> Served {
    let mut used = false;
    let mut left = budget;
    while left > 0 {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let len = handle(chain);
        if queue.add_used(mem, head, len).is_err() {
            break;
        }
        used = true;
        left -= 1;
    }
    Served {
        notify: used && queue.needs_notification(mem).unwrap_or(true),
        more: left == 0,
        config: false,
    }
}

/// Copies `src` (a device's config structure) into `data` from `offset`, zero past the end.
pub(crate) fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| src.get(o))
            .copied()
            .unwrap_or(0);
    }
}
