//! virtio-rng (virtio 1.x §5.4): fills the guest's write-only buffers from the host's
//! getrandom(2), so a guest has entropy at boot without waiting for jitter.

use super::{serve_queue, DeviceWorker, Events, Served, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::GuestMemory;
use virtio_queue::Queue;
use vm_memory::Bytes;

const VIRTIO_ID_RNG: u32 = 4;
const QUEUE_SIZE: u16 = 64;
/// Upper bound per request: a guest asking for gigabytes gets this much and asks again.
const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
/// Requests served per pass before other work gets a turn.
const BUDGET: usize = 64;

pub struct Rng;

impl Rng {
    pub fn new() -> Rng {
        Rng
    }
}

/// Serves the request queue of an active device.
struct RngWorker {
    buffer: Vec<u8>,
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

/// Fills `buf` from the kernel's random source (getentropy(3): getrandom(2) on Linux, the
/// same call on macOS); false if the host has no entropy to give.
fn fill_random(buf: &mut [u8]) -> bool {
    // getentropy hands out at most 256 bytes a call.
    buf.chunks_mut(256).all(|chunk| {
        // SAFETY: the pointer and length describe `chunk`, which getentropy only writes to.
        unsafe { libc::getentropy(chunk.as_mut_ptr().cast(), chunk.len()) == 0 }
    })
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn name(&self) -> String {
        "rng".to_string()
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, _features: u64) -> std::io::Result<Box<dyn DeviceWorker>> {
        Ok(Box::new(RngWorker { buffer: Vec::new() }))
    }
}

impl DeviceWorker for RngWorker {
    fn process(&mut self, queues: &mut [Queue], mem: &GuestMemory, _events: &Events) -> Served {
        let Some(queue) = queues.first_mut() else {
            return Served::default();
        };
        serve_queue(queue, mem, BUDGET, |chain| {
            let mut written: u32 = 0;
            for desc in chain.writable() {
                let room = MAX_BYTES_PER_REQUEST - written as usize;
                let len = (desc.len() as usize).min(room);
                if len == 0 {
                    break;
                }
                self.buffer.resize(len, 0);
                if !fill_random(&mut self.buffer)
                    || mem.write_slice(&self.buffer, desc.addr()).is_err()
                {
                    break;
                }
                written += len as u32;
            }
            written
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    fn run(descs: &[RawDescriptor]) -> (GuestMemory, u32) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let queue: Queue = mock.create_queue().unwrap();
        let mut worker = Rng::new().activate(VIRTIO_F_VERSION_1).unwrap();
        worker.process(&mut [queue], &mem, &crate::virtio::worker::test_events());
        let used = mock.used().ring().ref_at(0).unwrap().load();
        assert_eq!(mock.used().idx().load(), 1);
        drop(mock);
        (mem, used.len())
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    #[test]
    fn fills_writable_buffers_and_skips_readable_ones() {
        let (mem, len) = run(&[desc(0x1_0000, 64, 1, 1), desc(0x2_0000, 256, 2, 0)]);
        assert_eq!(len, 256);
        let mut buf = [0u8; 256];
        mem.read_slice(&mut buf, GuestAddress(0x2_0000)).unwrap();
        assert!(buf.iter().any(|&b| b != 0));
        let mut untouched = [0u8; 64];
        mem.read_slice(&mut untouched, GuestAddress(0x1_0000))
            .unwrap();
        assert_eq!(untouched, [0; 64]);
    }

    #[test]
    fn buffers_outside_memory_or_huge_are_bounded() {
        let (_, len) = run(&[desc(0xffff_0000, 4096, 2, 0)]);
        assert_eq!(len, 0);
        // A 4 GiB buffer claim: only the bounded amount is written, inside memory.
        let (_, len) = run(&[desc(0x1_0000, u32::MAX, 2, 0)]);
        assert_eq!(len as usize, MAX_BYTES_PER_REQUEST);
        // Past the end of memory from the start of the buffer: nothing.
        let (_, len) = run(&[desc(0xf_ff00, 0x1000, 2, 0)]);
        assert_eq!(len, 0);
    }
}
