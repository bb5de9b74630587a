//! What hk's device fuzz targets share: guest memory and queues that the fuzzer fills, as a
//! hostile guest driver would.
//!
//! An input is
//! - 16 control bytes: `[0]` passes over the queues (1 to 4), `[1]` the queue size
//!   (`1 << (v % 5)`, 1 to 16), `[2]` and `[3]` flags of the target, `[4..6]` the length of
//!   the host data (little-endian), the rest unused;
//! - the host data: bytes the host side of the device sends into the VM (a vsock peer,
//!   passt for a NIC), for targets that have one;
//! - the guest memory image, copied to guest physical address 0.
//!
//! Guest memory is two adjacent regions, `[0, 0x10000)` and `[0x10000, 0x11000)`, so a
//! buffer may straddle them; everything above is outside RAM. Queue `q` has its descriptor
//! table at `0x100 + 0x300 q`, its available ring 0x100 bytes later and its used ring 0x100
//! after that, so a short input reaches every ring; descriptors point wherever the fuzzer
//! likes.

use hk_devices::virtio::worker::drive_for_fuzzing;
use hk_devices::virtio::VirtioDevice;
use hk_devices::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

pub const CONTROL: usize = 16;
pub const REGION_A: usize = 0x10000;
pub const REGION_B: usize = 0x1000;

/// One parsed input.
pub struct Input<'a> {
    pub control: [u8; CONTROL],
    pub host: &'a [u8],
    pub memory: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Input<'a>> {
        let control: [u8; CONTROL] = data.get(..CONTROL)?.try_into().ok()?;
        let rest = &data[CONTROL..];
        let host_len = usize::from(u16::from_le_bytes([control[4], control[5]])).min(rest.len());
        let (host, memory) = rest.split_at(host_len);
        Some(Input {
            control,
            host,
            memory,
        })
    }

    pub fn rounds(&self) -> usize {
        1 + usize::from(self.control[0] % 4)
    }

    pub fn queue_size(&self) -> u16 {
        1 << (self.control[1] % 5)
    }

    pub fn flag(&self, byte: usize, bit: u8) -> bool {
        self.control[2 + byte] & (1 << bit) != 0
    }
}

/// Guest memory holding `image` from address 0 (what does not fit is ignored).
pub fn guest_memory(image: &[u8]) -> GuestMemory {
    let mem = GuestMemory::from_ranges(&[
        (GuestAddress(0), REGION_A),
        (GuestAddress(REGION_A as u64), REGION_B),
    ])
    .expect("guest memory");
    let n = image.len().min(REGION_A + REGION_B);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("image fits");
    mem
}

/// Where queue `q`'s rings are.
pub fn ring_addresses(q: usize) -> (u64, u64, u64) {
    let desc = 0x100 + 0x300 * q as u64;
    (desc, desc + 0x100, desc + 0x200)
}

/// `count` ready queues of `size` entries at their fixed places.
pub fn queues(count: usize, size: u16) -> Vec<Queue> {
    (0..count)
        .map(|q| {
            let (desc, avail, used) = ring_addresses(q);
            let mut queue = Queue::new(256).expect("queue");
            queue.set_size(size);
            queue.set_desc_table_address(Some(desc as u32), Some(0));
            queue.set_avail_ring_address(Some(avail as u32), Some(0));
            queue.set_used_ring_address(Some(used as u32), Some(0));
            queue.set_ready(true);
            queue
        })
        .collect()
}

/// Activates `device` with `features` and serves its queues as the device thread would,
/// `rounds` passes, calling `between` before each (the host side's turn).
pub fn run_device(
    device: &mut dyn VirtioDevice,
    features: u64,
    input: &Input,
    rounds: usize,
    between: &mut dyn FnMut(usize),
) {
    let mem = guest_memory(input.memory);
    let mut queues = queues(device.queue_max_sizes().len(), input.queue_size());
    let mut worker = device.activate(features).expect("activate");
    let _ = drive_for_fuzzing(&mut *worker, &mut queues, &mem, rounds, between);
}
