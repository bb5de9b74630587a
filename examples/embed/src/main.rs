//! Embedding hk's VMM: boot a kernel and an initramfs inside your own program, keep the
//! guest's console in memory, and act on how the guest ended. This is the "hypervisor as a
//! library" use that HyperKit made popular; `hk vm boot` is the same call with the console
//! on stdout.
//!
//!     cargo run --release -p hk-example-embed -- VMLINUX INITRAMFS [KERNEL ARGS...]
//!
//! It needs a KVM that boots a stock kernel (on a kvm-pvm host, run it through
//! `scripts/lab -- target/release/hk-example-embed ...`), or on Apple silicon
//! Hypervisor.framework, with an arm64 `Image` as the kernel (docs/hvf.md).

use hk_vmm::{GuestExit, VmConfig};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[cfg(target_arch = "x86_64")]
const CONSOLE: &str = "console=ttyS0 ";
#[cfg(not(target_arch = "x86_64"))]
const CONSOLE: &str = "";

/// A console sink the program can read back after the VM stopped. It keeps the last
/// `KEEP` bytes: a guest can print without end, and this program's memory must not follow.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

const KEEP: usize = 64 << 10;

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut kept = self.0.lock().expect("console lock");
        kept.extend_from_slice(&buf[buf.len().saturating_sub(KEEP)..]);
        let excess = kept.len().saturating_sub(KEEP);
        kept.drain(..excess);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kernel, initrd, rest @ ..] = args.as_slice() else {
        eprintln!("usage: hk-example-embed VMLINUX INITRAMFS [KERNEL ARGS...]");
        return std::process::ExitCode::from(2);
    };
    let console = Captured::default();
    let outcome = hk_vmm::run(VmConfig {
        kernel: kernel.into(),
        initrd: Some(initrd.into()),
        // On aarch64 the device tree names the console (its PL011) itself.
        cmdline: format!("{CONSOLE}quiet {}", rest.join(" ")),
        cpus: 1,
        memory_mib: 128,
        disks: Vec::new(),
        shares: Vec::new(),
        rng: true,
        vsock: None,
        net: Vec::new(),
        console: Box::new(console.clone()),
        console_input: None,
        start: Instant::now(),
        // seccomp filters are Linux's.
        seccomp: cfg!(target_os = "linux"),
    });
    let text = String::from_utf8_lossy(&console.0.lock().expect("console lock")).into_owned();
    match outcome {
        Ok(outcome) => {
            println!("the guest printed {} lines:", text.lines().count());
            for line in text.lines() {
                println!("  | {line}");
            }
            println!("and ended with {:?}", outcome.exit);
            match outcome.exit {
                GuestExit::Status(0)
                | GuestExit::Reboot
                | GuestExit::PowerOff
                | GuestExit::Stopped => std::process::ExitCode::SUCCESS,
                _ => std::process::ExitCode::FAILURE,
            }
        }
        Err(err) => {
            eprintln!("the VM did not run: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
