//! The Arm PL011 UART, the console of hk's aarch64 machine (QEMU virt's UART, at the same
//! address, so the device tree hk writes boots on QEMU too). Only what Linux's amba-pl011
//! driver and earlycon use: the data register with a receive FIFO, flags, the interrupt
//! mask, status and clear registers, the control register's enables and loopback, and the
//! PrimeCell ID registers the AMBA bus probes. Baud rate and line control are accepted and
//! ignored: bytes move at once. Transmission never waits, so the transmit FIFO is always
//! empty and its interrupt always pending.
//!
//! Console input follows the 16550's rule ([`crate::serial`]): it is taken only while the
//! guest's driver has the receiver and its interrupt on (a tty has the port open), one FIFO
//! at a time, and `ready` says when there is room again.

use crate::event::Event;
use crate::{BusDevice, Interrupt, Uart};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

const DR: u64 = 0x000;
const RSR_ECR: u64 = 0x004;
const FR: u64 = 0x018;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02c;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03c;
const MIS: u64 = 0x040;
const ICR: u64 = 0x044;
const DMACR: u64 = 0x048;

const FR_RXFE: u32 = 1 << 4;
const FR_TXFE: u32 = 1 << 7;

const CR_UARTEN: u32 = 1;
const CR_LBE: u32 = 1 << 7;
const CR_RXE: u32 = 1 << 9;

/// Receive, transmit and receive-timeout interrupts.
const INT_RX: u32 = 1 << 4;
const INT_TX: u32 = 1 << 5;
const INT_RT: u32 = 1 << 6;
const INT_ALL: u32 = 0x7ff;

/// The PL011's FIFO depth (revision r1p5).
const FIFO: usize = 32;

/// PeriphID0-3 (PL011, r1p5, Arm) and the PrimeCell's CellID0-3, at 0xfe0-0xffc.
const ID: [u8; 8] = [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

pub struct Pl011<W: Write + Send> {
    out: W,
    irq: Arc<dyn Interrupt>,
    ready: Option<Event>,
    rx: VecDeque<u8>,
    cr: u32,
    imsc: u32,
    ris: u32,
    lcr_h: u32,
    ibrd: u32,
    fbrd: u32,
    ifls: u32,
}

impl<W: Write + Send> Pl011<W> {
    /// `ready`, if given, is signalled whenever the guest may take more input.
    pub fn new(irq: Arc<dyn Interrupt>, out: W, ready: Option<Event>) -> Self {
        Pl011 {
            out,
            irq,
            ready,
            rx: VecDeque::with_capacity(FIFO),
            // Reset values: transmit and receive enabled, the UART itself off.
            cr: 0x300,
            imsc: 0,
            ris: INT_TX,
            lcr_h: 0,
            ibrd: 0,
            fbrd: 0,
            ifls: 0x12,
        }
    }

    /// Changes the raw status and raises the line when an enabled interrupt becomes
    /// pending (the device tree describes the line as edge-triggered).
    fn set_ris(&mut self, ris: u32) {
        let before = self.ris & self.imsc;
        self.ris = ris;
        self.raise_new(before);
    }

    fn raise_new(&mut self, before: u32) {
        let now = self.ris & self.imsc;
        if now & !before != 0 {
            // A lost interrupt is seen at the guest's next status read.
            let _ = self.irq.trigger();
        }
    }

    fn accepting(&self) -> bool {
        self.cr & (CR_UARTEN | CR_RXE) == CR_UARTEN | CR_RXE
            && self.imsc & (INT_RX | INT_RT) != 0
            && self.cr & CR_LBE == 0
    }

    fn signal_ready(&self) {
        if let Some(ready) = &self.ready {
            let _ = ready.signal();
        }
    }

    fn flags(&self) -> u32 {
        let mut fr = FR_TXFE;
        if self.rx.is_empty() {
            fr |= FR_RXFE;
        } else if self.rx.len() >= FIFO {
            fr |= 1 << 6; // RXFF
        }
        fr
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            DR => {
                let byte = self.rx.pop_front().unwrap_or(0);
                if self.rx.is_empty() {
                    self.ris &= !(INT_RX | INT_RT);
                    self.signal_ready();
                }
                u32::from(byte)
            }
            RSR_ECR => 0,
            FR => self.flags(),
            IBRD => self.ibrd,
            FBRD => self.fbrd,
            LCR_H => self.lcr_h,
            CR => self.cr,
            IFLS => self.ifls,
            IMSC => self.imsc,
            RIS => self.ris,
            MIS => self.ris & self.imsc,
            DMACR => 0,
            0xfe0..=0xffc => u32::from(ID[((offset - 0xfe0) / 4) as usize]),
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            DR => {
                let byte = value as u8;
                if self.cr & CR_LBE != 0 {
                    if self.rx.len() < FIFO {
                        self.rx.push_back(byte);
                    }
                    self.set_ris(self.ris | INT_RX | INT_TX);
                } else {
                    // A console that cannot be written (closed stdout) must not stop the
                    // guest.
                    let _ = self.out.write_all(&[byte]);
                    self.set_ris(self.ris | INT_TX);
                }
            }
            RSR_ECR => {}
            IBRD => self.ibrd = value & 0xffff,
            FBRD => self.fbrd = value & 0x3f,
            LCR_H => self.lcr_h = value & 0xff,
            CR => {
                self.cr = value & 0xff87;
                self.signal_ready();
            }
            IFLS => self.ifls = value & 0x3f,
            IMSC => {
                let before = self.ris & self.imsc;
                self.imsc = value & INT_ALL;
                self.raise_new(before);
                self.signal_ready();
            }
            // Transmission is instant: the transmit interrupt is pending again at once.
            ICR => {
                let mut ris = self.ris & !(value & INT_ALL);
                ris |= INT_TX;
                if !self.rx.is_empty() {
                    ris |= INT_RX;
                }
                let before = self.ris & self.imsc & !(value & INT_ALL);
                self.ris = ris;
                self.raise_new(before);
            }
            _ => {}
        }
    }
}

impl<W: Write + Send> Uart for Pl011<W> {
    fn receive(&mut self, bytes: &[u8]) -> usize {
        if !self.accepting() {
            return 0;
        }
        let n = bytes.len().min(FIFO - self.rx.len());
        self.rx.extend(&bytes[..n]);
        if n > 0 {
            self.set_ris(self.ris | INT_RX | INT_RT);
        }
        n
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write + Send> BusDevice for Pl011<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are 32 bits wide; Linux reads them with 8-, 16- and 32-bit accesses at
        // their base address.
        let value = if offset & 3 == 0 {
            self.read_reg(offset)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset & 3 != 0 || data.is_empty() {
            return;
        }
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    use crate::CountingInterrupt as Count;

    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);
    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn r(u: &mut Pl011<Out>, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        u.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(u: &mut Pl011<Out>, offset: u64, value: u32) {
        u.write(offset, &value.to_le_bytes());
    }

    fn uart() -> (Pl011<Out>, Out, Arc<Count>, Event) {
        let out = Out::default();
        let irq = Arc::new(Count::default());
        let ready = Event::new().unwrap();
        let u = Pl011::new(irq.clone(), out.clone(), Some(ready.try_clone().unwrap()));
        (u, out, irq, ready)
    }

    #[test]
    fn the_amba_bus_finds_a_pl011() {
        let (mut u, ..) = uart();
        let ids: Vec<u32> = (0..8).map(|i| r(&mut u, 0xfe0 + i * 4)).collect();
        assert_eq!(ids, [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
    }

    #[test]
    fn bytes_written_go_out_and_the_transmitter_is_always_ready() {
        let (mut u, out, irq, _) = uart();
        assert_eq!(r(&mut u, FR) & (FR_TXFE | FR_RXFE), FR_TXFE | FR_RXFE);
        for &b in b"hi\n" {
            u.write(DR, &[b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        assert_eq!(irq.0.load(Ordering::SeqCst), 0, "TX interrupt masked");
        // Unmasking a pending TX interrupt raises the line, once.
        w(&mut u, IMSC, INT_TX);
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
        assert_eq!(r(&mut u, MIS), INT_TX);
        u.write(DR, b"x");
        assert_eq!(
            irq.0.load(Ordering::SeqCst),
            1,
            "still pending, no new edge"
        );
        // Cleared, it is pending again at once: a new edge.
        w(&mut u, ICR, INT_TX);
        assert_eq!(irq.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn input_waits_for_the_receiver_and_its_interrupt_and_fills_one_fifo() {
        let (mut u, _, irq, ready) = uart();
        let input: Vec<u8> = (0..100u8).collect();
        assert_eq!(u.receive(&input), 0, "UART off");
        w(&mut u, CR, CR_UARTEN | CR_RXE | (1 << 8));
        assert_eq!(u.receive(&input), 0, "receive interrupt masked");
        assert!(ready.consume(), "enabling says ready");
        w(&mut u, IMSC, INT_RX | INT_RT);
        assert_eq!(u.receive(&input), FIFO);
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
        assert_eq!(u.receive(&input[FIFO..]), 0, "FIFO full");
        ready.consume();
        let got: Vec<u8> = (0..FIFO).map(|_| r(&mut u, DR) as u8).collect();
        assert_eq!(got, &input[..FIFO]);
        assert_ne!(r(&mut u, FR) & FR_RXFE, 0);
        assert_eq!(r(&mut u, RIS) & (INT_RX | INT_RT), 0);
        assert!(ready.consume(), "emptied: ready for more");
    }

    #[test]
    fn loopback_turns_output_into_input() {
        let (mut u, out, ..) = uart();
        w(&mut u, CR, CR_UARTEN | CR_RXE | (1 << 8) | CR_LBE);
        u.write(DR, b"z");
        assert!(out.0.lock().unwrap().is_empty());
        assert_eq!(r(&mut u, FR) & FR_RXFE, 0);
        assert_eq!(r(&mut u, DR), u32::from(b'z'));
        assert_eq!(u.receive(b"abc"), 0, "no console input in loopback");
    }

    #[test]
    fn unaligned_and_unknown_accesses_are_harmless() {
        let (mut u, out, ..) = uart();
        u.write(DR + 1, b"a");
        u.write(0x800, &[1, 2, 3, 4]);
        u.write(DR, &[]);
        let mut b = [0xaau8; 8];
        u.read(0x3, &mut b);
        assert_eq!(b, [0; 8]);
        u.read(0x1000, &mut b[..4]);
        assert!(out.0.lock().unwrap().is_empty());
    }
}
