//! Virtio devices and their MMIO transport (virtio 1.x, "modern" MMIO version 2).

pub mod block;
pub mod mmio;
pub mod rng;

use crate::{GuestMemory, Interrupt};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::Queue;

/// Feature bit every modern device offers and every modern driver must accept.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// A virtio device model, independent of its transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 = block, 4 = entropy).
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Handles what the driver made available on queue `index`; returns whether anything
    /// was added to the used ring (so the driver may need an interrupt). Runs on the device
    /// thread, never on a vCPU.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool;
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

impl VirtioInterrupt {
    pub fn new(line: Arc<dyn Interrupt>) -> Self {
        VirtioInterrupt {
            status: Arc::new(AtomicU32::new(0)),
            line,
        }
    }

    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        self.line.trigger()
    }

    fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
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
