//! The virtio-mmio transport, version 2 (virtio 1.x §4.2.2). Register accesses come from
//! vCPU threads and only ever touch register state; when the driver sets DRIVER_OK the
//! device's worker starts on a thread of its own with copies of the queues
//! ([`super::worker`]), and a reset stops it before the queues are forgotten.
//! The guest programs queue addresses freely: nothing is trusted until the driver says
//! DRIVER_OK, and then a ready queue whose rings lie outside guest memory fails the
//! activation (DEVICE_NEEDS_RESET) instead of being served.
//!
//! Activating a device opens files and starts a thread, which a vCPU thread confined by its
//! seccomp filter may not do (and a thread it started would inherit that filter). So a VMM
//! that confines its vCPUs gives the transport an activation event
//! ([`MmioTransport::defer_activation`]): DRIVER_OK then only records the request and
//! signals it, and the VMM's own thread calls [`MmioTransport::activate_pending`]. A reset
//! before that cancels the request.

use super::worker::{self, Activated, Confine, Fatal, WorkerHandle};
use super::{VirtioDevice, VirtioInterrupt, INT_CONFIG, VIRTIO_F_VERSION_1};
use crate::event::Event;
use crate::{BusDevice, GuestMemory};
use virtio_queue::{Queue, QueueT};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b48_0000; // "\0\0HK"

/// Register offsets.
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// Offset of QueueNotify; the VMM turns it into an ioeventfd where the hypervisor can.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

/// Device status bits.
const STATUS_FEATURES_OK: u32 = 0x08;
const STATUS_DRIVER_OK: u32 = 0x04;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// Size of the MMIO window of one device.
pub const MMIO_SIZE: u64 = 0x1000;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: VirtioInterrupt,
    /// Signalled on QueueNotify writes that reach the vCPU (no ioeventfd); the device thread
    /// polls it either way.
    notify: Event,
    fatal: Fatal,
    confine: Option<Confine>,
    queues: Vec<Queue>,
    worker: Option<WorkerHandle>,
    /// With deferred activation: signalled when the driver set DRIVER_OK.
    activation: Option<Event>,
    /// DRIVER_OK was set and the device waits for [`MmioTransport::activate_pending`].
    pending: bool,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: VirtioInterrupt,
        notify: Event,
        fatal: Fatal,
        confine: Option<Confine>,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt,
            notify,
            fatal,
            confine,
            queues,
            worker: None,
            activation: None,
            pending: false,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
        }
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// From now on, DRIVER_OK does not start the device on the writing (vCPU) thread: it
    /// signals `event`, and the VMM starts the device with [`Self::activate_pending`].
    pub fn defer_activation(&mut self, event: Event) {
        self.activation = Some(event);
    }

    /// Starts the device if the driver set DRIVER_OK and has not reset it since. Called by
    /// the VMM's thread when the activation event fires.
    pub fn activate_pending(&mut self) {
        let live = self.status & STATUS_DRIVER_OK != 0
            && self.status & (STATUS_FAILED | STATUS_NEEDS_RESET) == 0;
        if std::mem::take(&mut self.pending) && live && self.worker.is_none() {
            self.start();
        }
    }

    fn start(&mut self) {
        match self.activate() {
            Ok(worker) => self.worker = Some(worker),
            Err(_) => {
                // The driver learns through the status and a configuration interrupt
                // (§2.1.2); it must reset the device before using it again.
                self.status |= STATUS_NEEDS_RESET;
                let _ = self.interrupt.signal(INT_CONFIG);
            }
        }
    }

    fn active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_FAILED == 0
    }

    /// Starts the device's worker with copies of the queues the driver set up.
    fn activate(&mut self) -> Result<WorkerHandle, String> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            // A queue whose rings lie outside guest memory is never touched.
            if queue.ready() && !rings_in_memory(queue, &self.mem) {
                return Err(format!("queue {index} has rings outside guest memory"));
            }
            queues.push(Queue::try_from(queue.state()).map_err(|e| e.to_string())?);
        }
        let worker = self
            .device
            .activate(self.driver_features)
            .map_err(|e| e.to_string())?;
        let notify = self.notify.try_clone().map_err(|e| e.to_string())?;
        worker::spawn(
            self.device.name(),
            Activated {
                worker,
                queues,
                mem: self.mem.clone(),
                interrupt: self.interrupt.clone(),
                notify,
            },
            self.fatal.clone(),
            self.confine.clone(),
        )
        .map_err(|e| e.to_string())
    }

    fn reset(&mut self) {
        // Joins the device thread: once the driver reads status 0 back, the device no longer
        // touches the rings (§2.4).
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
        self.pending = false;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn set_status(&mut self, status: u32) {
        if status == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (§3.1.1); NEEDS_RESET is the device's to set.
        let mut status =
            (status | self.status) & !STATUS_NEEDS_RESET | self.status & STATUS_NEEDS_RESET;
        if status & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let offered = self.device.features();
            // A driver that accepts what was not offered, or refuses VERSION_1 (legacy),
            // cannot use this device: FEATURES_OK stays clear and the driver gives up.
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                status &= !STATUS_FEATURES_OK;
            }
        }
        if status & STATUS_DRIVER_OK != 0 && status & STATUS_FEATURES_OK == 0 {
            status = (status & !STATUS_DRIVER_OK) | STATUS_FAILED;
        }
        let starting = status & STATUS_DRIVER_OK != 0
            && status & (STATUS_FAILED | STATUS_NEEDS_RESET) == 0
            && self.worker.is_none()
            && !self.pending;
        self.status = status;
        if starting {
            match &self.activation {
                Some(event) => {
                    self.pending = true;
                    let _ = event.signal();
                }
                None => self.start(),
            }
        }
    }

    fn read_u32(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_u32(&mut self, offset: u64, value: u32) {
        // Queue layout may only change while the driver sets the device up.
        let configuring = !self.active();
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.driver_features = (self.driver_features & !(0xffff_ffffu64 << shift))
                    | (u64::from(value) << shift);
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM if configuring => {
                if let Some(q) = self.selected_queue() {
                    // virtio-queue rejects sizes that are zero, too large or not a power
                    // of two: the queue then stays invalid and is never used.
                    q.set_size(value.min(u32::from(u16::MAX)) as u16);
                }
            }
            REG_QUEUE_READY if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_NOTIFY => {
                let _ = self.notify.signal();
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.set_status(value),
            REG_QUEUE_DESC_LOW if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(Some(value), None)
                }
            }
            REG_QUEUE_DESC_HIGH if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(None, Some(value))
                }
            }
            REG_QUEUE_DRIVER_LOW if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(Some(value), None)
                }
            }
            REG_QUEUE_DRIVER_HIGH if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(None, Some(value))
                }
            }
            REG_QUEUE_DEVICE_LOW if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(Some(value), None)
                }
            }
            REG_QUEUE_DEVICE_HIGH if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(None, Some(value))
                }
            }
            _ => {}
        }
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        // The device thread goes first, so whatever the device model and its worker share
        // (vsock's Unix socket, removed from the filesystem with its last owner) is released
        // here, on the VMM's thread, not on the device thread, whose seccomp filter has no
        // unlink.
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

/// Whether each ring of `queue` lies wholly in guest memory, within one region (the device
/// reads and writes ring entries through single slices). virtio-queue's `is_valid` checks
/// only that the byte *after* each ring is in memory, so it refuses a ring that ends at the
/// very end of RAM, a legal placement, and accepts one that starts outside memory and ends
/// inside it.
fn rings_in_memory(queue: &Queue, mem: &GuestMemory) -> bool {
    use vm_memory::{GuestAddress, GuestMemory as _};
    let n = u64::from(queue.size());
    [
        (queue.desc_table(), 16 * n),
        (queue.avail_ring(), 6 + 2 * n),
        (queue.used_ring(), 6 + 8 * n),
    ]
    .into_iter()
    .all(|(addr, len)| mem.get_slice(GuestAddress(addr), len as usize).is_ok())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset.is_multiple_of(4) => *word = self.read_u32(offset).to_le_bytes(),
            // Registers are 32-bit only (§4.2.2.2); anything else reads as 0.
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            // No device here has writable configuration.
            return;
        }
        if let (Ok(word), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_u32(offset, u32::from_le_bytes(word));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::rng::Rng;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use crate::CountingInterrupt as Count;

    struct Harness {
        t: MmioTransport,
        mem: GuestMemory,
        irq: Arc<Count>,
        fatal: Arc<Mutex<Vec<String>>>,
    }

    fn transport() -> Harness {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = Arc::new(Count::default());
        let fatal = Arc::new(Mutex::new(Vec::new()));
        let sink = fatal.clone();
        let t = MmioTransport::new(
            Box::new(Rng::new()),
            mem.clone(),
            VirtioInterrupt::new(irq.clone()),
            Event::new().unwrap(),
            Arc::new(move |why| sink.lock().unwrap().push(why)),
            None,
        );
        Harness { t, mem, irq, fatal }
    }

    fn w(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn r(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Negotiates VERSION_1 and sets queue 0 up at the given ring addresses.
    fn setup(t: &mut MmioTransport, desc: u64, avail: u64, used: u64) {
        w(t, REG_STATUS, 1 | 2);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, 1);
        w(t, REG_STATUS, 1 | 2 | STATUS_FEATURES_OK);
        w(t, REG_QUEUE_SEL, 0);
        w(t, REG_QUEUE_NUM, 16);
        w(t, REG_QUEUE_DESC_LOW, desc as u32);
        w(t, REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        w(t, REG_QUEUE_DRIVER_LOW, avail as u32);
        w(t, REG_QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        w(t, REG_QUEUE_DEVICE_LOW, used as u32);
        w(t, REG_QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        w(t, REG_QUEUE_READY, 1);
        w(t, REG_STATUS, 1 | 2 | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    /// Waits for the device thread to reach `cond` (it runs on its own thread).
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A queue at 0 with one 32-byte write-only chain available.
    fn queue_with_a_chain(mem: &GuestMemory) -> MockSplitQueue<'_, GuestMemory> {
        let mock = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let d = RawDescriptor::from(Descriptor::new(0x2_0000, 32, 2, 0));
        mock.add_desc_chains(&[d], 0).unwrap();
        mock
    }

    fn setup_mock(t: &mut MmioTransport, mock: &MockSplitQueue<'_, GuestMemory>) {
        setup(
            t,
            mock.desc_table_addr().0,
            mock.avail_addr().0,
            mock.used_addr().0,
        );
    }

    #[test]
    fn identifies_as_a_modern_device() {
        let Harness { mut t, .. } = transport();
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 4);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1, "VERSION_1");
    }

    #[test]
    fn a_working_queue_is_served_on_the_device_thread_and_interrupts() {
        let Harness {
            mut t, mem, irq, ..
        } = transport();
        let mock = queue_with_a_chain(&mem);
        setup_mock(&mut t, &mock);
        eventually("the chain is used", || mock.used().idx().load() == 1);
        eventually("the interrupt", || irq.0.load(Ordering::SeqCst) == 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 1);
        w(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn rings_outside_guest_memory_fail_the_activation() {
        for (desc, avail, used) in [
            (0x20_0000, 0x1000, 0x2000),
            (0x0, 0xffff_ffff_ffff_f000, 0x2000),
            (0x0, 0x1000, 0x10_0000 - 8),
        ] {
            let Harness {
                mut t, mem, irq, ..
            } = transport();
            // A chain is available where the (valid) avail ring of the control case points,
            // so a device that served the broken queue anyway would be seen using it.
            let mock = queue_with_a_chain(&mem);
            setup(&mut t, desc, avail, used);
            let what = format!("{desc:#x} {avail:#x} {used:#x}");
            assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0, "{what}");
            assert!(t.worker.is_none(), "{what}");
            assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG, "{what}");
            assert_eq!(irq.0.load(Ordering::SeqCst), 1, "{what}: config interrupt");
            w(&mut t, REG_QUEUE_NOTIFY, 0);
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(mock.used().idx().load(), 0, "{what}");
        }
        // The control case: the same chain at valid addresses is served.
        let Harness { mut t, mem, .. } = transport();
        let mock = queue_with_a_chain(&mem);
        setup_mock(&mut t, &mock);
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        eventually("control chain used", || mock.used().idx().load() == 1);
    }

    #[test]
    fn a_driver_reset_stops_the_device_and_a_new_setup_works() {
        let Harness { mut t, mem, .. } = transport();
        let mock = queue_with_a_chain(&mem);
        setup_mock(&mut t, &mock);
        eventually("first chain used", || mock.used().idx().load() == 1);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert!(
            t.worker.is_none(),
            "the device thread is gone after a reset"
        );
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
        // After the reset nothing serves the old rings, even when notified.
        let d = RawDescriptor::from(Descriptor::new(0x2_0000, 32, 2, 0));
        mock.add_desc_chains(&[d], 1).unwrap();
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(mock.used().idx().load(), 1);
        // A driver loaded again sets the device up afresh, on new rings.
        let mem2 = mem.clone();
        let fresh = MockSplitQueue::create(&mem2, GuestAddress(0x4_0000), 16);
        fresh
            .add_desc_chains(
                &[RawDescriptor::from(Descriptor::new(0x5_0000, 16, 2, 0))],
                0,
            )
            .unwrap();
        setup_mock(&mut t, &fresh);
        eventually("chain on the new rings used", || {
            fresh.used().idx().load() == 1
        });
    }

    #[test]
    fn a_driver_refusing_version_1_or_accepting_unoffered_features_fails() {
        for (sel, bits) in [(0, 0), (1, 0x3)] {
            let Harness { mut t, .. } = transport();
            w(&mut t, REG_DRIVER_FEATURES_SEL, sel);
            w(&mut t, REG_DRIVER_FEATURES, bits);
            w(&mut t, REG_STATUS, 1 | 2 | STATUS_FEATURES_OK);
            assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
            w(
                &mut t,
                REG_STATUS,
                1 | 2 | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
            );
            assert_ne!(r(&mut t, REG_STATUS) & STATUS_FAILED, 0);
            assert!(t.worker.is_none());
        }
    }

    #[test]
    fn a_deferred_activation_waits_for_the_vmm_and_a_reset_cancels_it() {
        let Harness { mut t, mem, .. } = transport();
        let event = Event::new().unwrap();
        t.defer_activation(event.try_clone().unwrap());
        let mock = queue_with_a_chain(&mem);
        setup_mock(&mut t, &mock);
        assert!(t.worker.is_none(), "started on the driver's thread");
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_DRIVER_OK, 0);
        assert!(event.consume());
        // Reset before the VMM got to it: nothing starts.
        w(&mut t, REG_STATUS, 0);
        t.activate_pending();
        assert!(t.worker.is_none());
        // FAILED after DRIVER_OK: nothing starts either.
        setup_mock(&mut t, &mock);
        w(&mut t, REG_STATUS, STATUS_FAILED);
        t.activate_pending();
        assert!(t.worker.is_none());
        w(&mut t, REG_STATUS, 0);
        setup_mock(&mut t, &mock);
        t.activate_pending();
        assert!(t.worker.is_some());
        eventually("the chain is used", || mock.used().idx().load() == 1);
    }

    #[test]
    fn rings_that_end_exactly_at_the_end_of_guest_memory_are_served() {
        // A descriptor table filling the last 256 bytes of RAM, or an avail ring its last 38:
        // legal placements (a driver may get the top page of memory for a ring), which the
        // device must serve rather than refuse as lying outside guest memory.
        const END: u64 = 0x10_0000;
        for (desc, avail) in [(END - 16 * 16, 0x1000), (0x3000, END - (6 + 2 * 16))] {
            let Harness { mut t, mem, .. } = transport();
            let d = RawDescriptor::from(Descriptor::new(0x2_0000, 32, 2, 0));
            mem.write_obj(d, GuestAddress(desc)).unwrap();
            // flags 0, idx 1, ring[0] = head 0.
            mem.write_obj([0u16, 1, 0], GuestAddress(avail)).unwrap();
            setup(&mut t, desc, avail, 0x2000);
            let what = format!("desc {desc:#x} avail {avail:#x}");
            assert_eq!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0, "{what}");
            eventually("the chain is used", || {
                mem.read_obj::<u16>(GuestAddress(0x2002)).unwrap() == 1
            });
        }
        // 16 bytes further, the descriptor table's end is outside memory: refused.
        let Harness { mut t, .. } = transport();
        setup(&mut t, END - 16 * 16 + 16, 0x1000, 0x2000);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn register_writes_of_every_width_at_every_offset_are_harmless() {
        let Harness { mut t, fatal, .. } = transport();
        for offset in 0..0x200u64 {
            for width in [1usize, 2, 4, 8] {
                t.write(offset, &vec![0xff; width]);
                let mut b = vec![0u8; width];
                t.read(offset, &mut b);
            }
        }
        let mut b = [0xffu8; 2];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        w(&mut t, REG_QUEUE_SEL, 1000);
        w(&mut t, REG_QUEUE_NUM, 3);
        w(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
        let mut cfg = [0xffu8; 8];
        t.read(u64::MAX - 3, &mut cfg);
        t.write(u64::MAX, &[1]);
        assert!(fatal.lock().unwrap().is_empty());
    }
}
