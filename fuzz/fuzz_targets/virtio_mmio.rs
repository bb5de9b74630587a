//! The virtio-mmio transport's registers: a sequence of register reads and writes of every
//! width at any offset (status changes, features, queue layout anywhere in or out of guest
//! memory, notifies, resets) against a virtio-rng device, its deferred activation run
//! (which starts the device's thread) when the sequence says so.
//!
//! Input: the first 0x800 bytes are the guest memory image (rings and buffers), then
//! operations of 8 bytes: `[0]` kind (`% 4`: read, write, activate pending, notify), `[1]`
//! width (1, 2, 4 or 8), `[2..4]` register offset (`% 0x200`), `[4..8]` value.
#![no_main]

use hk_devices::event::Event;
use hk_devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use hk_devices::virtio::rng::Rng;
use hk_devices::virtio::VirtioInterrupt;
use hk_devices::{BusDevice, Interrupt};
use hk_fuzz::guest_memory;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

struct Line;

impl Interrupt for Line {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

const IMAGE: usize = 0x800;

fuzz_target!(|data: &[u8]| {
    let (image, ops) = data.split_at(data.len().min(IMAGE));
    let mem = guest_memory(image);
    let mut transport = MmioTransport::new(
        Box::new(Rng::new()),
        mem,
        VirtioInterrupt::new(Arc::new(Line)),
        Event::new().expect("event"),
        Arc::new(|why| panic!("the device stopped the VM: {why}")),
        None,
    );
    transport.defer_activation(Event::new().expect("event"));
    for op in ops.chunks_exact(8) {
        let width = 1 << (op[1] % 4);
        let offset = u64::from(u16::from_le_bytes([op[2], op[3]]) % 0x200);
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&op[4..8]);
        value[4..].copy_from_slice(&op[4..8]);
        match op[0] % 4 {
            0 => transport.read(offset, &mut value[..width]),
            1 => transport.write(offset, &value[..width]),
            2 => transport.activate_pending(),
            _ => transport.write(REG_QUEUE_NOTIFY, &1u32.to_le_bytes()),
        }
    }
});
