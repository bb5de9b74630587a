//! The device thread of virtio-net: moves frames between the guest's queues and the backend.
//!
//! Queues: 0 receive (device to guest), 1 transmit (guest to device). Each pass moves at
//! most [`BUDGET`] frames each way. Receive chains are checked once when taken from the ring
//! and kept as lists of guest segments until a frame fills them, so a frame that needs more
//! buffers than the guest has posted waits for more without putting any back.
//!
//! Notifications (see the module above): the device reads `used_event` (or the avail ring's
//! flags) itself rather than through `Queue::needs_notification`, which ignores the flags and
//! counts only what `Queue::add_used` adds, not the batches [`add_used_together`] publishes.

use super::{
    NetBackend, Shared, HDR_LEN, MAX_FRAME, MIN_FRAME, NUM_BUFFERS_AT, VIRTIO_NET_S_LINK_UP,
};
use crate::event::Interest;
use crate::virtio::{DeviceWorker, Events, Served};
use crate::GuestMemory;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _};

/// Frames moved per pass in each direction before other work gets a turn.
const BUDGET: usize = 64;
/// The avail ring's flag by which a driver without EVENT_IDX declines interrupts.
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
const TOKEN_BACKEND: u64 = 1;

/// A descriptor chain checked for one direction: its segments in guest memory.
struct Chain {
    head: u16,
    segs: Vec<(GuestAddress, usize)>,
    len: usize,
    descs: usize,
}

/// What became of the frame at the head of the backend.
enum Placed {
    /// In the guest's buffers.
    Done,
    /// Larger than every buffer the guest can give: dropped.
    Dropped,
    /// Waits for the guest to post more buffers.
    NoRoom,
}

pub(super) struct NetWorker {
    name: String,
    shared: Arc<Shared>,
    backend: Option<Box<dyn NetBackend>>,
    mrg: bool,
    /// Receive chains taken from the ring, not yet filled, and their total room.
    held: VecDeque<Chain>,
    held_len: usize,
    held_descs: usize,
    event_idx: bool,
    /// Each queue's used index when the driver was last considered for an interrupt.
    signalled: [u16; 2],
}

impl NetWorker {
    pub(super) fn new(name: String, shared: Arc<Shared>, mrg: bool, event_idx: bool) -> NetWorker {
        let backend = shared
            .backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        NetWorker {
            name,
            shared,
            backend,
            mrg,
            held: VecDeque::new(),
            held_len: 0,
            held_descs: 0,
            event_idx,
            signalled: [0; 2],
        }
    }

    /// Drops a failed backend: the link goes down and the guest is told.
    fn fail(&mut self, error: io::Error, events: &Events) -> Served {
        if let Some(backend) = self.backend.take() {
            let _ = events.remove(backend.raw_fd());
        }
        self.shared
            .status
            .fetch_and(!VIRTIO_NET_S_LINK_UP, Ordering::SeqCst);
        if let Some(sink) = &self.shared.on_error {
            sink(format!("{}: {error}; the link is down", self.name));
        }
        Served {
            config: true,
            ..Served::default()
        }
    }

    /// Takes transmit chains while the backend has room and sends their frames.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemory, events: &Events) -> Served {
        let mut served = Served::default();
        let mut budget = BUDGET;
        let mut error = None;
        // No kicks while the ring is being drained; a full backend resumes the queue when
        // its socket turns writable, so it needs none either.
        let _ = queue.disable_notification(mem);
        let mut rechecked = false;
        while budget > 0 {
            if let Some(backend) = &self.backend {
                if !backend.can_send() {
                    break;
                }
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // Empty: kicks wanted again, and one more look for a chain the driver added
                // before it could see that (once: a ring whose index lies stays empty).
                if !rechecked && queue.enable_notification(mem).unwrap_or(false) {
                    rechecked = true;
                    let _ = queue.disable_notification(mem);
                    continue;
                }
                let _ = queue.enable_notification(mem);
                break;
            };
            let head = chain.head_index();
            budget -= 1;
            if let (Some(chain), Some(backend)) = (walk(chain, mem, false), &mut self.backend) {
                let len = chain.len.saturating_sub(HDR_LEN);
                if chain.len >= HDR_LEN + MIN_FRAME && len <= MAX_FRAME {
                    // The header carries nothing without offloads: skip it.
                    let _ = backend.send(len, &mut |buf| {
                        copy_from_guest(mem, &chain.segs, HDR_LEN, buf)
                    });
                    self.shared.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.shared.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                self.shared.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
            }
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
        }
        if let Some(backend) = &mut self.backend {
            if let Err(e) = backend.flush() {
                error = Some(e);
            }
        }
        served.notify = self.wants_interrupt(queue, mem, 1);
        served.more = budget == 0;
        if let Some(e) = error {
            served |= self.fail(e, events);
        }
        served
    }

    /// Fills receive buffers with the backend's frames until either runs out.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemory, events: &Events) -> Served {
        let mut served = Served::default();
        let mut budget = BUDGET;
        let mut error = None;
        let Some(backend) = self.backend.as_mut() else {
            return served;
        };
        // Kicks are wanted only while a frame waits for buffers (`Rx::place` asks for them).
        let _ = queue.disable_notification(mem);
        while budget > 0 {
            let frame = match backend.peek() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            };
            let mut rx = Rx {
                queue: &mut *queue,
                mem,
                mrg: self.mrg,
                held: &mut self.held,
                held_len: &mut self.held_len,
                held_descs: &mut self.held_descs,
            };
            match rx.place(frame) {
                Ok(Placed::Done) => {
                    self.shared.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Placed::Dropped) => {
                    self.shared.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Placed::NoRoom) | Err(()) => break,
            }
            backend.consume();
            budget -= 1;
        }
        served.notify = self.wants_interrupt(queue, mem, 0);
        served.more = budget == 0;
        if let Some(e) = error {
            served |= self.fail(e, events);
        }
        served
    }

    /// Whether the driver wants an interrupt for what queue `index` used since the last
    /// time this was asked (virtio 1.2 §2.7.7.2, §2.7.10). A ring outside guest memory gets
    /// one rather than none.
    fn wants_interrupt(&mut self, queue: &Queue, mem: &GuestMemory, index: usize) -> bool {
        let now = queue.next_used();
        let old = std::mem::replace(&mut self.signalled[index], now);
        if now == old {
            return false;
        }
        // The used index is published before the driver's wish is read, and the driver
        // writes its wish before it reads the index: one of the two sees the other.
        fence(Ordering::SeqCst);
        let avail = GuestAddress(queue.avail_ring());
        if self.event_idx {
            // used_event follows the avail ring's flags, idx and ring.
            let Some(at) = avail.checked_add(4 + 2 * u64::from(queue.size())) else {
                return true;
            };
            match mem.load::<u16>(at, Ordering::Relaxed) {
                // Whether used_event lies in (old, now]: the driver asked to hear when the
                // used index passes it.
                Ok(event) => {
                    now.wrapping_sub(u16::from_le(event)).wrapping_sub(1) < now.wrapping_sub(old)
                }
                Err(_) => true,
            }
        } else {
            mem.load::<u16>(avail, Ordering::Relaxed)
                .map_or(true, |flags| {
                    u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0
                })
        }
    }

    fn both(&mut self, queues: &mut [Queue], mem: &GuestMemory, events: &Events) -> Served {
        let mut served = Served::default();
        let [rx, tx] = queues else {
            return served;
        };
        // The transport hands the queues over without the ring features; a plain store.
        rx.set_event_idx(self.event_idx);
        tx.set_event_idx(self.event_idx);
        served |= self.transmit(tx, mem, events);
        served |= self.receive(rx, mem, events);
        served
    }
}

impl Drop for NetWorker {
    /// A driver reset ends this worker; the connection outlives it for the next one.
    fn drop(&mut self) {
        *self
            .shared
            .backend
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.backend.take();
    }
}

impl DeviceWorker for NetWorker {
    fn init(&mut self, events: &Events) -> io::Result<()> {
        if let Some(backend) = &self.backend {
            events.add(backend.raw_fd(), TOKEN_BACKEND, Interest::Stream)?;
        }
        Ok(())
    }

    fn process(&mut self, queues: &mut [Queue], mem: &GuestMemory, events: &Events) -> Served {
        self.both(queues, mem, events)
    }

    fn event(
        &mut self,
        _token: u64,
        queues: &mut [Queue],
        mem: &GuestMemory,
        events: &Events,
    ) -> Served {
        self.both(queues, mem, events)
    }
}

/// The receive queue and the chains held from it, while one frame is placed.
struct Rx<'a> {
    queue: &'a mut Queue,
    mem: &'a GuestMemory,
    mrg: bool,
    held: &'a mut VecDeque<Chain>,
    held_len: &'a mut usize,
    held_descs: &'a mut usize,
}

impl<'a> Rx<'a> {
    /// Room for a frame of `need` bytes with its header: in one chain, or with mergeable
    /// buffers in as many as it takes.
    fn room(&self) -> usize {
        if self.mrg {
            *self.held_len
        } else {
            self.held.front().map_or(0, |c| c.len)
        }
    }

    /// Places `frame`, header first; `Err` when the used ring is broken.
    fn place(&mut self, frame: &[u8]) -> Result<Placed, ()> {
        let need = HDR_LEN + frame.len();
        while self.room() < need {
            if !self.mrg && !self.held.is_empty() {
                // Without mergeable buffers a frame must fit one buffer; this one stays
                // for the next frame.
                return Ok(Placed::Dropped);
            }
            let Some(chain) = self.next_chain() else {
                // Everything the guest can post is held and still too small.
                if *self.held_descs >= usize::from(self.queue.size()) {
                    return Ok(Placed::Dropped);
                }
                return Ok(Placed::NoRoom);
            };
            let head = chain.head_index();
            match walk(chain, self.mem, true).filter(|c| c.len >= HDR_LEN) {
                Some(chain) => {
                    *self.held_len += chain.len;
                    *self.held_descs += chain.descs;
                    self.held.push_back(chain);
                }
                // A broken chain goes back empty, before this frame's buffers, so a driver
                // sees it as a runt and drops it.
                None => {
                    self.queue.add_used(self.mem, head, 0).map_err(|_| ())?;
                }
            }
        }
        // How many chains the frame takes.
        let mut count = 0;
        let mut room = 0;
        for chain in self.held.iter() {
            count += 1;
            room += chain.len;
            if room >= need {
                break;
            }
        }
        let mut header = [0u8; HDR_LEN];
        header[NUM_BUFFERS_AT..].copy_from_slice(&(count as u16).to_le_bytes());
        let mut rest = frame;
        let mut used = Vec::with_capacity(count);
        for i in 0..count {
            let chain = self.held.pop_front().expect("counted above");
            *self.held_len -= chain.len;
            *self.held_descs -= chain.descs;
            let mut written = 0;
            if i == 0 {
                let _ = copy_to_guest(self.mem, &chain.segs, 0, &header);
                written = HDR_LEN;
            }
            let n = rest.len().min(chain.len - written);
            let _ = copy_to_guest(self.mem, &chain.segs, written, &rest[..n]);
            rest = &rest[n..];
            written += n;
            used.push((chain.head, written as u32));
        }
        add_used_together(self.queue, self.mem, &used)?;
        Ok(Placed::Done)
    }

    /// The next receive chain; when there is none, kicks are wanted again, and the ring is
    /// looked at once more for a chain the driver added before it could see that.
    fn next_chain(&mut self) -> Option<DescriptorChain<&'a GuestMemory>> {
        if let Some(chain) = self.queue.pop_descriptor_chain(self.mem) {
            return Some(chain);
        }
        if !self.queue.enable_notification(self.mem).unwrap_or(false) {
            return None;
        }
        let _ = self.queue.disable_notification(self.mem);
        self.queue.pop_descriptor_chain(self.mem).or_else(|| {
            // A ring whose index lies: stay ready for kicks, never spin on it.
            let _ = self.queue.enable_notification(self.mem);
            None
        })
    }
}

/// Puts a frame's chains in the used ring and then moves the ring's index past all of them
/// at once. `Queue::add_used` moves the index per chain, and a driver polling the ring at
/// that moment (Linux's NAPI does, on another vCPU) would find a frame's first buffers
/// without the rest and drop it; virtio 1.2 §5.1.6.4 asks for the buffers of one packet to
/// be used together. `Err` when the ring lies outside guest memory or a head is out of
/// range. (`Queue::add_used` also counts what it adds for `Queue::needs_notification`,
/// which this device does not use: [`NetWorker::wants_interrupt`] keeps its own mark.)
fn add_used_together(queue: &mut Queue, mem: &GuestMemory, used: &[(u16, u32)]) -> Result<(), ()> {
    let size = queue.size();
    let ring = GuestAddress(queue.used_ring());
    let mut next = queue.next_used();
    for &(head, len) in used {
        if head >= size {
            return Err(());
        }
        // struct virtq_used_elem { le32 id; le32 len; } after the 4-byte flags and idx.
        let at = ring.checked_add(4 + 8 * u64::from(next % size)).ok_or(())?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, at).map_err(|_| ())?;
        next = next.wrapping_add(1);
    }
    queue.set_next_used(next);
    // Release: the frame's bytes and the ring entries are visible before the index.
    mem.store(
        next.to_le(),
        ring.checked_add(2).ok_or(())?,
        Ordering::Release,
    )
    .map_err(|_| ())
}

/// Checks a chain for one direction: every descriptor device-writable (`write`) or every
/// one device-readable, inside guest memory, and the chain ending where it says it ends (a
/// loop, a next index past the table or an unreadable descriptor cuts it short). `None`
/// for a chain that fails, which the caller returns unused.
fn walk(chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory, write: bool) -> Option<Chain> {
    let head = chain.head_index();
    let mut segs = Vec::new();
    let mut len = 0usize;
    let mut descs = 0;
    let mut ended = false;
    for desc in chain {
        descs += 1;
        ended = !desc.has_next();
        if desc.is_write_only() != write {
            return None;
        }
        let n = desc.len() as usize;
        if n == 0 {
            continue;
        }
        if !mem.check_range(desc.addr(), n) {
            return None;
        }
        len = len.checked_add(n)?;
        segs.push((desc.addr(), n));
    }
    if !ended {
        return None;
    }
    Some(Chain {
        head,
        segs,
        len,
        descs,
    })
}

/// Copies `data` into the segments, from byte `skip` of the chain.
fn copy_to_guest(
    mem: &GuestMemory,
    segs: &[(GuestAddress, usize)],
    mut skip: usize,
    mut data: &[u8],
) -> io::Result<()> {
    for &(addr, len) in segs {
        if data.is_empty() {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(data.len());
        mem.write_slice(&data[..n], addr.unchecked_add(skip as u64))
            .map_err(io::Error::other)?;
        data = &data[n..];
        skip = 0;
    }
    Ok(())
}

/// Fills `out` from the segments, from byte `skip` of the chain.
fn copy_from_guest(
    mem: &GuestMemory,
    segs: &[(GuestAddress, usize)],
    mut skip: usize,
    mut out: &mut [u8],
) -> io::Result<()> {
    for &(addr, len) in segs {
        if out.is_empty() {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len());
        let (now, later) = out.split_at_mut(n);
        mem.read_slice(now, addr.unchecked_add(skip as u64))
            .map_err(io::Error::other)?;
        out = later;
        skip = 0;
    }
    Ok(())
}
