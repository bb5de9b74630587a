//! The 16550 UART at COM1, from vm-superio. Console output goes to any `Write`: the VMM
//! passes a line-buffered stdout or log file, so a boot log costs one write per line, not
//! one per byte. (A partial last line, a prompt, waits for its newline or the VM's end.)
//! Console input is pushed in by the VMM's event loop with [`Serial::receive`]. It flows
//! under hardware flow control: only while the guest raises RTS with its receive interrupt
//! on, which the Linux 8250 driver does once a tty has the port open (its probe and
//! startup read and discard whatever the FIFO holds before that), and 64 bytes at a time
//! (the FIFO). An [`Event`] says when the guest can take more, so the event loop holds input
//! back instead of dropping it.

use crate::event::Event;
use crate::{BusDevice, Interrupt, Uart};
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

/// vm-superio flushes its writer after every byte it transmits, which would turn the
/// line buffering into a write syscall per byte; this leaves flushing to the buffer and to
/// [`Serial::flush`].
struct NoByteFlush<W>(W);

impl<W: Write> Write for NoByteFlush<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Tells the event loop that the guest can take more input.
struct InputReady(Option<Event>);

impl InputReady {
    fn signal(&self) {
        if let Some(event) = &self.0 {
            let _ = event.signal();
        }
    }
}

impl vm_superio::serial::SerialEvents for InputReady {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        self.signal();
    }
}

const IER: u8 = 1;
const IER_RECEIVED_DATA: u8 = 1;
const LCR_DLAB: u8 = 0x80;
const MCR: u8 = 4;
const MCR_RTS: u8 = 0x02;
const MCR_LOOP: u8 = 0x10;

pub struct Serial<W: Write + Send> {
    uart: vm_superio::Serial<SerialIrq, InputReady, NoByteFlush<W>>,
}

impl<W: Write + Send> Serial<W> {
    /// `ready`, if given, is written whenever the guest may take more input: it read the
    /// last received byte, or wrote its interrupt-enable or modem-control register.
    pub fn new(irq: Arc<dyn Interrupt>, out: W, ready: Option<Event>) -> Self {
        Serial {
            uart: vm_superio::Serial::with_events(
                SerialIrq(irq),
                InputReady(ready),
                NoByteFlush(out),
            ),
        }
    }
}

/// Input is taken while the guest holds RTS high with its receive interrupt on, and never in
/// loopback mode or while the FIFO is full.
impl<W: Write + Send> Uart for Serial<W> {
    fn receive(&mut self, bytes: &[u8]) -> usize {
        let state = self.uart.state();
        let rts = state.modem_control & (MCR_RTS | MCR_LOOP) == MCR_RTS;
        if !rts || state.interrupt_enable & IER_RECEIVED_DATA == 0 {
            return 0;
        }
        let space = self.uart.fifo_capacity();
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            // The bytes are queued; only their interrupt failed, and the guest's next
            // status poll still sees them.
            Err(_) => space.min(bytes.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.uart.writer_mut().0.flush()
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
            let dlab = self.uart.state().line_control & LCR_DLAB != 0;
            // A console that cannot be written (closed stdout) must not stop the guest.
            let _ = self.uart.write(offset, *byte);
            if offset == MCR || (offset == IER && !dlab) {
                self.uart.events().signal();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Serial;
    use crate::event::Event;
    use crate::{BusDevice, Interrupt, Uart};
    use std::io::{LineWriter, Write};
    use std::sync::{Arc, Mutex};

    struct NoIrq;
    impl Interrupt for NoIrq {
        fn trigger(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Records each write that reaches the "terminal".
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);
    impl Writes {
        fn count(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().concat()).unwrap()
        }
    }
    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn console_output_reaches_the_writer_a_line_at_a_time() {
        let writes = Writes::default();
        let mut serial = Serial::new(Arc::new(NoIrq), LineWriter::new(writes.clone()), None);
        for &b in b"hello\nwor" {
            // Offset 0 with DLAB clear is the transmit holding register.
            serial.write(0, &[b]);
        }
        // Two writes at most (what was buffered, then the newline), none per byte.
        assert!(writes.count() <= 2);
        assert_eq!(writes.text(), "hello\n");
        serial.flush().unwrap();
        assert_eq!(writes.text(), "hello\nwor");
    }

    /// Offsets and bits of the 16550 registers the guest driver uses for input.
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IER_RECEIVED_DATA: u8 = 1;
    const MCR: u64 = 4;
    const MCR_RTS: u8 = 0x02;
    const MCR_LOOP: u8 = 0x10;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;

    fn read_reg(serial: &mut Serial<Writes>, offset: u64) -> u8 {
        let mut b = [0u8];
        serial.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn input_waits_for_rts_the_receive_interrupt_and_room_in_the_fifo() {
        let ready = Event::new().unwrap();
        let mut serial = Serial::new(
            Arc::new(NoIrq),
            Writes::default(),
            Some(ready.try_clone().unwrap()),
        );
        let input: Vec<u8> = (0..100u8).collect();
        serial.write(IER, &[IER_RECEIVED_DATA]);
        assert_eq!(serial.receive(&input), 0, "no input while RTS is low");
        serial.write(MCR, &[MCR_RTS | MCR_LOOP]);
        assert_eq!(serial.receive(&input), 0, "no input in loopback mode");
        serial.write(IER, &[0]);
        serial.write(MCR, &[MCR_RTS]);
        assert_eq!(serial.receive(&input), 0, "no input with the interrupt off");
        ready.consume();
        serial.write(IER, &[IER_RECEIVED_DATA]);
        assert!(ready.consume(), "turning it on says ready");
        let taken = serial.receive(&input);
        assert_eq!(taken, 64, "a 16550A FIFO holds 64 bytes here");
        assert_eq!(serial.receive(&input[taken..]), 0);
        assert!(!ready.consume(), "nothing read yet, no room yet");

        let mut got = Vec::new();
        while read_reg(&mut serial, LSR) & LSR_DATA_READY != 0 {
            got.push(read_reg(&mut serial, RBR));
        }
        assert_eq!(got, input[..64]);
        assert!(ready.consume(), "the guest read it all");
        assert_eq!(serial.receive(&input[taken..]), 36);
    }
}
