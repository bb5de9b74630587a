//! hk's control page (docs/guest-abi.md): the guest's way to report "booted" and "done,
//! with this status" without a driver, from a shell with `devmem`.

use crate::BusDevice;

/// Offset and value of the boot-complete marker (Firecracker's boot-timer value, so guest
/// images written for it work unchanged).
const BOOT_MARKER_OFFSET: u64 = 0x0;
pub const BOOT_MARKER: u8 = 123;
const EXIT_STATUS_OFFSET: u64 = 0x4;
const POWER_OFF_OFFSET: u64 = 0x8;
/// The value a guest writes at `POWER_OFF_OFFSET`.
const POWER_OFF: u32 = 1;

/// What the guest reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlEvent {
    BootComplete,
    Exit(u32),
    /// The guest kernel powered off (hk's kernel patch, there being no ACPI).
    PowerOff,
}

/// The control page. The VMM decides what an event means (timing, stopping the VM).
pub struct ControlPage {
    on_event: Box<dyn FnMut(ControlEvent) + Send>,
}

impl ControlPage {
    pub fn new(on_event: impl FnMut(ControlEvent) + Send + 'static) -> Self {
        ControlPage {
            on_event: Box::new(on_event),
        }
    }
}

impl BusDevice for ControlPage {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (BOOT_MARKER_OFFSET, [BOOT_MARKER]) => (self.on_event)(ControlEvent::BootComplete),
            (EXIT_STATUS_OFFSET, &[a, b, c, d]) => {
                (self.on_event)(ControlEvent::Exit(u32::from_le_bytes([a, b, c, d])))
            }
            (POWER_OFF_OFFSET, &[a, b, c, d]) if u32::from_le_bytes([a, b, c, d]) == POWER_OFF => {
                (self.on_event)(ControlEvent::PowerOff)
            }
            // Other widths and offsets are ignored, as on a real register page.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn page() -> (ControlPage, Arc<Mutex<Vec<ControlEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (
            ControlPage::new(move |e| sink.lock().unwrap().push(e)),
            seen,
        )
    }

    #[test]
    fn marker_and_exit_status() {
        let (mut page, seen) = page();
        page.write(0, &[123]);
        page.write(4, &7u32.to_le_bytes());
        page.write(8, &1u32.to_le_bytes());
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ControlEvent::BootComplete,
                ControlEvent::Exit(7),
                ControlEvent::PowerOff
            ]
        );
    }

    #[test]
    fn other_writes_are_ignored() {
        let (mut page, seen) = page();
        page.write(0, &[1]);
        page.write(0, &[123, 0]);
        page.write(4, &[1, 2]);
        page.write(8, &2u32.to_le_bytes());
        page.write(8, &[1]);
        page.write(12, &1u32.to_le_bytes());
        page.write(u64::MAX, &[123]);
        let mut buf = [0xffu8; 4];
        page.read(4, &mut buf);
        assert_eq!(buf, [0; 4]);
        assert!(seen.lock().unwrap().is_empty());
    }
}
