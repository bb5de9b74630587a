//! virtio-rng (virtio 1.x §5.4): fills the guest's write-only buffers from the host's
//! getrandom(2), so a guest has entropy at boot without waiting for jitter.

use super::{VirtioDevice, VIRTIO_F_VERSION_1};
use crate::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

const VIRTIO_ID_RNG: u32 = 4;
const QUEUE_SIZE: u16 = 64;
/// Upper bound per request: a guest asking for gigabytes gets this much and asks again.
const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

pub struct Rng {
    buffer: Vec<u8>,
}

impl Rng {
    pub fn new() -> Rng {
        Rng { buffer: Vec::new() }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

/// Fills `buf` from getrandom(2); false if the host has no entropy to give.
fn fill_random(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, which getrandom only writes to.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        done += n as usize;
    }
    true
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

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
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
            if queue.add_used(mem, head, written).is_err() {
                break;
            }
            used = true;
        }
        used && queue.needs_notification(mem).unwrap_or(true)
    }
}
