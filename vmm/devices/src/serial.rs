//! The 16550 UART at COM1, from vm-superio. Console output goes to any `Write`: the VMM
//! passes a line-buffered stdout or a log file, so a boot log costs one write per line,
//! not one per byte.

use crate::{BusDevice, Interrupt};
use std::io::Write;
use std::sync::Arc;

/// vm-superio raises interrupts through its own trait; this adapts ours to it.
pub struct SerialIrq(pub Arc<dyn Interrupt>);

impl vm_superio::Trigger for SerialIrq {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

pub struct Serial<W: Write + Send> {
    uart: vm_superio::Serial<SerialIrq, vm_superio::serial::NoEvents, W>,
}

impl<W: Write + Send> Serial<W> {
    pub fn new(irq: Arc<dyn Interrupt>, out: W) -> Self {
        Serial {
            uart: vm_superio::Serial::new(SerialIrq(irq), out),
        }
    }

    /// Flushes console output (the VMM calls it when the VM stops).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.uart.writer_mut().flush()
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            // A console that cannot be written (closed stdout) must not stop the guest.
            let _ = self.uart.write(offset, *byte);
        }
    }
}
