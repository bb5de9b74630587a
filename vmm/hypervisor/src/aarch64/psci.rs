//! PSCI 1.0 (Arm DEN 0022), the firmware interface an arm64 Linux uses to start and stop
//! CPUs and to power off or reset the machine. hk has no firmware, so the VMM answers these
//! calls itself: [`decode`] reads a call from the guest's x0-x3, and [`Cpus`] keeps every
//! vCPU's power state and says what a call does ([`Action`]).
//!
//! SYSTEM_RESET2 (from PSCI 1.1, offered through PSCI_FEATURES as the specification allows)
//! is what lets a kernel panic be told from a reboot, as docs/guest-abi.md wants: Linux
//! resets with it when the reboot mode is warm, and hk's command line makes panics warm
//! (`reboot=c,panic_w`), ordinary reboots cold (SYSTEM_RESET).

use std::sync::{Condvar, Mutex, MutexGuard};

/// The version hk implements: 1.0.
pub const VERSION: u64 = 1 << 16;

pub const PSCI_VERSION: u32 = 0x8400_0000;
pub const CPU_SUSPEND: u32 = 0x8400_0001;
pub const CPU_OFF: u32 = 0x8400_0002;
pub const CPU_ON: u32 = 0x8400_0003;
pub const AFFINITY_INFO: u32 = 0x8400_0004;
pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
pub const SYSTEM_OFF: u32 = 0x8400_0008;
pub const SYSTEM_RESET: u32 = 0x8400_0009;
pub const PSCI_FEATURES: u32 = 0x8400_000a;
pub const SYSTEM_RESET2: u32 = 0x8400_0012;
/// The SMC64 calling convention's bit: the same functions with 64-bit arguments.
const SMC64: u32 = 0x4000_0000;

pub const SUCCESS: i64 = 0;
pub const NOT_SUPPORTED: i64 = -1;
pub const INVALID_PARAMETERS: i64 = -2;
pub const ALREADY_ON: i64 = -4;
pub const ON_PENDING: i64 = -5;

/// MIGRATE_INFO_TYPE's answer: no Trusted OS, nothing to migrate.
const NO_TRUSTED_OS: i64 = 2;
/// AFFINITY_INFO's answers.
const AFFINITY_ON: i64 = 0;
const AFFINITY_OFF: i64 = 1;
const AFFINITY_ON_PENDING: i64 = 2;

/// A PSCI call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Version,
    Features(u32),
    CpuSuspend,
    CpuOff,
    CpuOn {
        target: u64,
        entry: u64,
        context: u64,
    },
    AffinityInfo {
        target: u64,
        level: u64,
    },
    MigrateInfoType,
    SystemOff,
    SystemReset,
    SystemReset2 {
        reset_type: u32,
    },
    /// Any other function ID (SMCCC's own, a vendor's): answered NOT_SUPPORTED.
    Unknown(u32),
}

/// Reads a call from x0 (function ID) and x1-x3 (arguments). A call in the SMC32
/// convention has 32-bit arguments: their upper halves are ignored, as the convention says.
pub fn decode(x: [u64; 4]) -> Call {
    let fid = x[0] as u32;
    let wide = fid & SMC64 != 0;
    let arg = |i: usize| if wide { x[i] } else { x[i] & 0xffff_ffff };
    match fid & !SMC64 {
        PSCI_VERSION if !wide => Call::Version,
        PSCI_FEATURES if !wide => Call::Features(x[1] as u32),
        CPU_SUSPEND => Call::CpuSuspend,
        CPU_OFF if !wide => Call::CpuOff,
        CPU_ON => Call::CpuOn {
            target: arg(1),
            entry: arg(2),
            context: arg(3),
        },
        AFFINITY_INFO => Call::AffinityInfo {
            target: arg(1),
            level: arg(2),
        },
        MIGRATE_INFO_TYPE if !wide => Call::MigrateInfoType,
        SYSTEM_OFF if !wide => Call::SystemOff,
        SYSTEM_RESET if !wide => Call::SystemReset,
        SYSTEM_RESET2 => Call::SystemReset2 {
            reset_type: x[1] as u32,
        },
        _ => Call::Unknown(fid),
    }
}

/// What the VMM does about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Put this value in x0 and let the caller go on.
    Return(i64),
    /// The calling CPU is off: it waits ([`Cpus::wait_until_on`]) for a CPU_ON.
    PowerOff,
    /// The machine powers off.
    SystemOff,
    /// The machine resets: warm for SYSTEM_RESET2's warm reset (a panic), cold otherwise.
    SystemReset { warm: bool },
}

/// The MPIDR_EL1 of vCPU `index`, which is also its `reg` in the device tree: sixteen CPUs
/// per Aff1 cluster, as QEMU's virt machine numbers them with GICv3 (a GICv3 SGI target list
/// reaches sixteen CPUs of one cluster).
pub fn mpidr(index: u32) -> u64 {
    (u64::from(index / 16) << 8) | u64::from(index % 16)
}

/// The affinity fields of an MPIDR (Aff3, Aff2, Aff1, Aff0), what CPU_ON names a CPU by.
const AFFINITY_MASK: u64 = 0xff_00ff_ffff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    Off,
    /// CPU_ON was accepted; the CPU starts at `entry` with `context` in x0.
    OnPending {
        entry: u64,
        context: u64,
    },
    On,
}

struct Cpu {
    power: Mutex<Power>,
    changed: Condvar,
}

/// The power state of every vCPU of a VM: the boot CPU starts on, the others off until the
/// guest starts them.
pub struct Cpus {
    cpus: Vec<Cpu>,
}

fn lock(m: &Mutex<Power>) -> MutexGuard<'_, Power> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cpus {
    pub fn new(count: u32) -> Cpus {
        Cpus {
            cpus: (0..count)
                .map(|i| Cpu {
                    power: Mutex::new(if i == 0 { Power::On } else { Power::Off }),
                    changed: Condvar::new(),
                })
                .collect(),
        }
    }

    fn by_mpidr(&self, target: u64) -> Option<&Cpu> {
        if target & !AFFINITY_MASK != 0 {
            return None;
        }
        (0..self.cpus.len() as u32)
            .position(|i| mpidr(i) == target)
            .map(|i| &self.cpus[i])
    }

    /// Answers `call` made by vCPU `caller`.
    pub fn handle(&self, caller: u32, call: Call) -> Action {
        match call {
            Call::Version => Action::Return(VERSION as i64),
            Call::Features(fid) => Action::Return(match decode([u64::from(fid), 0, 0, 0]) {
                Call::Unknown(_) => NOT_SUPPORTED,
                // CPU_SUSPEND's feature flags: the original StateID format, no OS-initiated
                // mode; every other function's: 0.
                _ => SUCCESS,
            }),
            // A suspend may return as if it were a standby, and one with no wake-up work to
            // wait for returns at once.
            Call::CpuSuspend => Action::Return(SUCCESS),
            Call::CpuOff => match self.cpus.get(caller as usize) {
                Some(cpu) => {
                    *lock(&cpu.power) = Power::Off;
                    cpu.changed.notify_all();
                    Action::PowerOff
                }
                None => Action::Return(INVALID_PARAMETERS),
            },
            Call::CpuOn {
                target,
                entry,
                context,
            } => {
                let Some(cpu) = self.by_mpidr(target) else {
                    return Action::Return(INVALID_PARAMETERS);
                };
                let mut power = lock(&cpu.power);
                Action::Return(match *power {
                    Power::On => ALREADY_ON,
                    Power::OnPending { .. } => ON_PENDING,
                    Power::Off => {
                        *power = Power::OnPending { entry, context };
                        cpu.changed.notify_all();
                        SUCCESS
                    }
                })
            }
            Call::AffinityInfo { target, level } => {
                // Only affinity level 0 (one CPU) is described; higher levels would need
                // clusters in the device tree.
                let cpu = match (level, self.by_mpidr(target)) {
                    (0, Some(cpu)) => cpu,
                    _ => return Action::Return(INVALID_PARAMETERS),
                };
                let answer = match *lock(&cpu.power) {
                    Power::On => AFFINITY_ON,
                    Power::Off => AFFINITY_OFF,
                    Power::OnPending { .. } => AFFINITY_ON_PENDING,
                };
                Action::Return(answer)
            }
            Call::MigrateInfoType => Action::Return(NO_TRUSTED_OS),
            Call::SystemOff => Action::SystemOff,
            Call::SystemReset => Action::SystemReset { warm: false },
            // Type 0 is SYSTEM_WARM_RESET; vendor types (bit 31) and the rest are not
            // offered.
            Call::SystemReset2 { reset_type: 0 } => Action::SystemReset { warm: true },
            Call::SystemReset2 { .. } => Action::Return(INVALID_PARAMETERS),
            Call::Unknown(_) => Action::Return(NOT_SUPPORTED),
        }
    }

    /// Blocks vCPU `index` while it is off; `(entry, context)` once a CPU_ON started it, or
    /// `None` as soon as `stopping` says the VM ends ([`Cpus::wake`] makes it look).
    pub fn wait_until_on(&self, index: u32, stopping: &dyn Fn() -> bool) -> Option<(u64, u64)> {
        let cpu = self.cpus.get(index as usize)?;
        let mut power = lock(&cpu.power);
        loop {
            if stopping() {
                return None;
            }
            match *power {
                Power::OnPending { entry, context } => {
                    *power = Power::On;
                    return Some((entry, context));
                }
                // The boot CPU, or a CPU started before it first waited.
                Power::On => return None,
                Power::Off => {}
            }
            power = cpu.changed.wait(power).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether vCPU `index` is off (not started yet, or after CPU_OFF).
    pub fn is_off(&self, index: u32) -> bool {
        self.cpus
            .get(index as usize)
            .is_some_and(|cpu| *lock(&cpu.power) == Power::Off)
    }

    /// Wakes vCPU `index` if it waits in [`Cpus::wait_until_on`], to check `stopping`.
    pub fn wake(&self, index: u32) {
        if let Some(cpu) = self.cpus.get(index as usize) {
            let _guard = lock(&cpu.power);
            cpu.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn call(fid: u32, a1: u64, a2: u64, a3: u64) -> Call {
        decode([u64::from(fid), a1, a2, a3])
    }

    #[test]
    fn version_is_1_0() {
        let cpus = Cpus::new(1);
        assert_eq!(call(PSCI_VERSION, 0, 0, 0), Call::Version);
        assert_eq!(cpus.handle(0, Call::Version), Action::Return(0x0001_0000));
    }

    #[test]
    fn features_lists_what_is_implemented_and_nothing_else() {
        let cpus = Cpus::new(1);
        for fid in [
            PSCI_VERSION,
            CPU_SUSPEND,
            CPU_SUSPEND | SMC64,
            CPU_OFF,
            CPU_ON,
            CPU_ON | SMC64,
            AFFINITY_INFO,
            AFFINITY_INFO | SMC64,
            MIGRATE_INFO_TYPE,
            SYSTEM_OFF,
            SYSTEM_RESET,
            PSCI_FEATURES,
            SYSTEM_RESET2,
            SYSTEM_RESET2 | SMC64,
        ] {
            let c = call(PSCI_FEATURES, u64::from(fid), 0, 0);
            assert_eq!(c, Call::Features(fid));
            assert_eq!(cpus.handle(0, c), Action::Return(SUCCESS), "{fid:#x}");
        }
        // SMCCC_VERSION, MIGRATE, a 64-bit SYSTEM_OFF (no such function), a vendor call.
        for fid in [0x8000_0000, 0x8400_0005, SYSTEM_OFF | SMC64, 0xc200_0001] {
            let c = call(PSCI_FEATURES, u64::from(fid), 0, 0);
            assert_eq!(cpus.handle(0, c), Action::Return(NOT_SUPPORTED), "{fid:#x}");
        }
    }

    #[test]
    fn unknown_calls_are_not_supported() {
        let cpus = Cpus::new(1);
        for fid in [0x8000_0000u32, 0x8400_0005, 0xc400_0008, 0x8400_00ff, 0] {
            let c = call(fid, 0, 0, 0);
            assert_eq!(c, Call::Unknown(fid));
            assert_eq!(cpus.handle(0, c), Action::Return(NOT_SUPPORTED));
        }
    }

    #[test]
    fn cpu_on_starts_an_off_cpu_once() {
        let cpus = Cpus::new(3);
        let on = call(CPU_ON | SMC64, mpidr(2), 0x4020_0000, 0xdead_beef_0000);
        assert_eq!(
            on,
            Call::CpuOn {
                target: 2,
                entry: 0x4020_0000,
                context: 0xdead_beef_0000
            }
        );
        assert!(cpus.is_off(2));
        assert_eq!(cpus.handle(0, on), Action::Return(SUCCESS));
        assert_eq!(cpus.handle(0, on), Action::Return(ON_PENDING));
        let info = call(AFFINITY_INFO | SMC64, mpidr(2), 0, 0);
        assert_eq!(cpus.handle(0, info), Action::Return(AFFINITY_ON_PENDING));
        assert_eq!(
            cpus.wait_until_on(2, &|| false),
            Some((0x4020_0000, 0xdead_beef_0000))
        );
        assert_eq!(cpus.handle(0, on), Action::Return(ALREADY_ON));
        assert_eq!(cpus.handle(0, info), Action::Return(AFFINITY_ON));
        // The boot CPU is on from the start.
        let boot = call(CPU_ON | SMC64, mpidr(0), 0x1000, 0);
        assert_eq!(cpus.handle(1, boot), Action::Return(ALREADY_ON));
    }

    #[test]
    fn cpu_on_refuses_cpus_that_do_not_exist() {
        let cpus = Cpus::new(2);
        for target in [2, 0x100, 1 << 40, u64::MAX, 1 | (1 << 31)] {
            let on = Call::CpuOn {
                target,
                entry: 0,
                context: 0,
            };
            assert_eq!(
                cpus.handle(0, on),
                Action::Return(INVALID_PARAMETERS),
                "{target:#x}"
            );
        }
        let info = Call::AffinityInfo {
            target: 5,
            level: 0,
        };
        assert_eq!(cpus.handle(0, info), Action::Return(INVALID_PARAMETERS));
        // Levels above 0 are not described.
        let info = Call::AffinityInfo {
            target: 0,
            level: 1,
        };
        assert_eq!(cpus.handle(0, info), Action::Return(INVALID_PARAMETERS));
    }

    #[test]
    fn the_32_bit_convention_ignores_upper_halves() {
        assert_eq!(
            call(
                CPU_ON,
                0xffff_ffff_0000_0001,
                0xffff_ffff_4000_0000,
                0x1_0000_0002
            ),
            Call::CpuOn {
                target: 1,
                entry: 0x4000_0000,
                context: 2
            }
        );
        // The function ID is the low 32 bits of x0.
        assert_eq!(
            decode([0xffff_ffff_0000_0000 | u64::from(PSCI_VERSION), 0, 0, 0]),
            Call::Version
        );
    }

    #[test]
    fn cpu_off_waits_for_the_next_cpu_on() {
        let cpus = Arc::new(Cpus::new(2));
        let on = Call::CpuOn {
            target: 1,
            entry: 0x8000,
            context: 7,
        };
        assert_eq!(cpus.handle(0, on), Action::Return(SUCCESS));
        assert_eq!(cpus.wait_until_on(1, &|| false), Some((0x8000, 7)));
        assert_eq!(cpus.handle(1, Call::CpuOff), Action::PowerOff);
        assert!(cpus.is_off(1));
        let waiter = {
            let cpus = cpus.clone();
            std::thread::spawn(move || cpus.wait_until_on(1, &|| false))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = Call::CpuOn {
            target: 1,
            entry: 0x9000,
            context: 8,
        };
        assert_eq!(cpus.handle(0, again), Action::Return(SUCCESS));
        assert_eq!(waiter.join().unwrap(), Some((0x9000, 8)));
    }

    #[test]
    fn a_waiting_cpu_leaves_when_the_vm_stops() {
        let cpus = Arc::new(Cpus::new(2));
        let stopping = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (cpus, stopping) = (cpus.clone(), stopping.clone());
            std::thread::spawn(move || cpus.wait_until_on(1, &|| stopping.load(Ordering::SeqCst)))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        stopping.store(true, Ordering::SeqCst);
        cpus.wake(1);
        assert_eq!(waiter.join().unwrap(), None);
    }

    #[test]
    fn system_calls_end_the_machine_with_their_kind() {
        let cpus = Cpus::new(1);
        assert_eq!(call(SYSTEM_OFF, 0, 0, 0), Call::SystemOff);
        assert_eq!(cpus.handle(0, Call::SystemOff), Action::SystemOff);
        assert_eq!(call(SYSTEM_RESET, 0, 0, 0), Call::SystemReset);
        assert_eq!(
            cpus.handle(0, Call::SystemReset),
            Action::SystemReset { warm: false }
        );
        // Linux's panic reset: SYSTEM_RESET2, type 0 (warm), cookie 0.
        let warm = call(SYSTEM_RESET2 | SMC64, 0, 0, 0);
        assert_eq!(warm, Call::SystemReset2 { reset_type: 0 });
        assert_eq!(cpus.handle(0, warm), Action::SystemReset { warm: true });
        for reset_type in [1, 0x8000_0000, 0x8000_0001] {
            assert_eq!(
                cpus.handle(0, Call::SystemReset2 { reset_type }),
                Action::Return(INVALID_PARAMETERS)
            );
        }
    }

    #[test]
    fn migrate_info_type_says_no_trusted_os_and_suspend_returns() {
        let cpus = Cpus::new(1);
        assert_eq!(call(MIGRATE_INFO_TYPE, 0, 0, 0), Call::MigrateInfoType);
        assert_eq!(cpus.handle(0, Call::MigrateInfoType), Action::Return(2));
        assert_eq!(call(CPU_SUSPEND | SMC64, 0, 0, 0), Call::CpuSuspend);
        assert_eq!(cpus.handle(0, Call::CpuSuspend), Action::Return(SUCCESS));
    }

    #[test]
    fn mpidrs_group_sixteen_cpus_per_cluster() {
        assert_eq!(mpidr(0), 0);
        assert_eq!(mpidr(15), 15);
        assert_eq!(mpidr(16), 0x100);
        assert_eq!(mpidr(33), 0x201);
        let cpus = Cpus::new(20);
        let on = Call::CpuOn {
            target: 0x103,
            entry: 1,
            context: 0,
        };
        assert_eq!(cpus.handle(0, on), Action::Return(SUCCESS));
        assert!(!cpus.is_off(19));
    }
}
