//! seccomp filters for the VMM's threads, as Firecracker confines its own: a guest that
//! finds a bug in exit handling or in a device model gets a thread that can make only the
//! few system calls that thread needs, not a process that can exec, ptrace or open the
//! network.
//!
//! Three filters, built with `seccompiler` (rust-vmm's BPF compiler):
//! - **process** ([`confine_process`]): a deny list over every thread of the process (it is
//!   installed with TSYNC before the VM's threads exist, and they inherit it): no exec, no
//!   ptrace or reading other processes' memory, no mounts, modules, kexec, BPF, keyrings,
//!   reboot or namespace changes. The supervisor (hk itself) keeps what a CLI needs: files,
//!   Unix sockets, threads.
//! - **vCPU** (allow list, on each vCPU thread once it is set up): KVM's ioctls, the writes
//!   of the serial console and the eventfds that notify device threads, memory management,
//!   futexes, signal return (the kick) and exit.
//! - **device** (allow list, on each device thread): reads and writes of disk images,
//!   epoll, eventfds, Unix stream sockets for vsock (connect, accept, send, receive), random
//!   bytes for virtio-rng, memory management, futexes and exit.
//!
//! A forbidden call traps: a SIGSYS handler writes which thread made which call and ends
//! the process with 128 + SIGSYS (159), so a missed syscall is a one-line diagnosis rather
//! than a silent death. Filters stack: a vCPU or device thread is bound by the process
//! filter and its own.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seccomp filter: {0}")]
    Build(String),
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

/// Exit status when a thread made a forbidden system call: 128 + SIGSYS.
pub const EXIT_FORBIDDEN_SYSCALL: i32 = 128 + libc::SIGSYS;

/// Calls no VMM thread ever makes: the process filter refuses them everywhere.
const DENIED: &[i64] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_keyctl,
    libc::SYS_reboot,
    libc::SYS_setns,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
];

/// What every confined thread needs to run Rust code at all.
const COMMON: &[i64] = &[
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
    libc::SYS_restart_syscall,
    // A panic's message (to stderr) and the VM's end through the stop eventfd.
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
];

/// A vCPU thread, after setup: exits are decoded here, and port and MMIO writes reach the
/// serial console (a file or stdout, rotated by reopening) and device notifications.
const VCPU: &[i64] = &[
    libc::SYS_read,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    // Console log rotation: rename the full file and open a new one.
    libc::SYS_openat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_tgkill,
];

/// A device thread: disk I/O, epoll, vsock's Unix sockets, random bytes.
const DEVICE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    // vsock's timer for connections the host side has not accepted yet.
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_fcntl,
    libc::SYS_getrandom,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_socketpair,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, Error> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| Error::Build(e.to_string()))?;
    SeccompFilter::new(rules, mismatch, matched, arch)
        .and_then(BpfProgram::try_from)
        .map_err(|e| Error::Build(e.to_string()))
}

fn allow_list(extra: &[i64], more: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    // The SIGSYS handler asks for the thread's name.
    rules.insert(libc::SYS_prctl, arg_in(0, &[libc::PR_GET_NAME as u64])?);
    rules.extend(more);
    compile(rules, SeccompAction::Trap, SeccompAction::Allow)
}

/// A rule list matching a call whose argument `arg` equals one of `values`.
fn arg_in(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, Error> {
    values
        .iter()
        .map(|&v| {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(|e| Error::Build(e.to_string()))
        })
        .collect()
}

/// ioctls of KVM's type (0xAE): a vCPU thread talks to KVM and to nothing else.
fn kvm_ioctls() -> Result<Vec<SeccompRule>, Error> {
    let cond = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(0xff00),
        0xae00,
    )
    .map_err(|e| Error::Build(e.to_string()))?;
    Ok(vec![
        SeccompRule::new(vec![cond]).map_err(|e| Error::Build(e.to_string()))?
    ])
}

pub fn vcpu_filter() -> Result<BpfProgram, Error> {
    let mut more = BTreeMap::new();
    more.insert(libc::SYS_ioctl, kvm_ioctls()?);
    // std checks, in builds with debug assertions, that a descriptor it closes is open
    // (fcntl F_GETFD): a vCPU thread closes its vCPU's descriptor when the VM ends, and a
    // driver's reset closes the stopped device thread's eventfds here.
    more.insert(libc::SYS_fcntl, arg_in(1, &[libc::F_GETFD as u64])?);
    allow_list(VCPU, more)
}

/// What confines a device thread: an allow list, and under it a filter that makes opening
/// a file fail with EACCES instead of trapping.
///
/// A device thread opens nothing itself, but glibc's malloc does, once per process: the
/// first time it shrinks a thread arena's heap (a device thread freeing a burst of large
/// buffers, such as vsock's per-connection buffers when the guest resets the device), it
/// reads /proc/sys/vm/overcommit_memory. A trap there killed the VMM; refused, malloc
/// falls back to madvise. The allow list lets openat through only so that the second
/// filter's EACCES, which the kernel ranks below a trap and above an allow, is what the
/// thread gets.
pub struct DeviceFilters {
    allow: BpfProgram,
    /// None for a share's thread, whose work is opening files.
    refuse_open: Option<BpfProgram>,
}

pub fn device_filters() -> Result<DeviceFilters, Error> {
    let mut more = BTreeMap::new();
    // vsock's host side makes Unix stream sockets, nothing else.
    more.insert(libc::SYS_socket, arg_in(0, &[libc::AF_UNIX as u64])?);
    // FIONBIO and FIOCLEX, which std uses for non-blocking and close-on-exec sockets.
    more.insert(libc::SYS_ioctl, arg_in(1, &[libc::FIONBIO, libc::FIOCLEX])?);
    more.insert(libc::SYS_openat, Vec::new());
    let refuse_open = [(libc::SYS_openat, Vec::new()), (libc::SYS_open, Vec::new())]
        .into_iter()
        .collect();
    Ok(DeviceFilters {
        allow: allow_list(DEVICE, more)?,
        refuse_open: Some(compile(
            refuse_open,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
        )?),
    })
}

/// A share's device thread (virtio-fs): the device list, and the file system calls
/// `fuse-backend-rs`'s passthrough makes on the shared tree (relative to descriptors it
/// holds, never by absolute path), and `unshare(CLONE_FS)` once, to keep its umask apart.
const FS: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_readlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_fgetxattr,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_removexattr,
    libc::SYS_fremovexattr,
    libc::SYS_listxattr,
    libc::SYS_flistxattr,
    libc::SYS_copy_file_range,
    libc::SYS_umask,
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_geteuid,
    libc::SYS_getegid,
];

pub fn fs_filters() -> Result<DeviceFilters, Error> {
    let mut more = BTreeMap::new();
    more.insert(libc::SYS_socket, arg_in(0, &[libc::AF_UNIX as u64])?);
    more.insert(libc::SYS_ioctl, arg_in(1, &[libc::FIONBIO, libc::FIOCLEX])?);
    more.insert(libc::SYS_unshare, arg_in(0, &[libc::CLONE_FS as u64])?);
    let extra: Vec<i64> = DEVICE.iter().chain(FS).copied().collect();
    Ok(DeviceFilters {
        allow: allow_list(&extra, more)?,
        refuse_open: None,
    })
}

/// Installs the device filters on the calling thread.
pub fn confine_device_thread(filters: &DeviceFilters) -> Result<(), Error> {
    // The refusal first: once the allow list is in, installing another filter (prctl) is
    // no longer allowed.
    install_sigsys_handler();
    if let Some(refuse) = &filters.refuse_open {
        seccompiler::apply_filter(refuse).map_err(|e| Error::Install(e.to_string()))?;
    }
    confine_thread(&filters.allow)
}

pub fn process_filter() -> Result<BpfProgram, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    // unshare is refused except for CLONE_FS alone (a share's thread keeps its own umask).
    let other_than_fs = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::Ne,
        libc::CLONE_FS as u64,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(|e| Error::Build(e.to_string()))?;
    rules.insert(libc::SYS_unshare, vec![other_than_fs]);
    compile(rules, SeccompAction::Allow, SeccompAction::Trap)
}

/// Installs `filter` on the calling thread.
pub fn confine_thread(filter: &BpfProgram) -> Result<(), Error> {
    install_sigsys_handler();
    seccompiler::apply_filter(filter).map_err(|e| Error::Install(e.to_string()))
}

/// Installs the process filter on every thread of the process. Call it before the VM's
/// threads start (they then inherit it and stack their own).
pub fn confine_process() -> Result<(), Error> {
    install_sigsys_handler();
    seccompiler::apply_filter_all_threads(&process_filter()?)
        .map_err(|e| Error::Install(e.to_string()))
}

fn install_sigsys_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a plain sigaction with an async-signal-safe handler.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut());
        }
    });
}

/// Says which thread made which forbidden call, with nothing but write(2) (the handler runs
/// in a confined thread, in a signal), and ends the process.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGSYS from
    // seccomp, the syscall number sits after the signal's address field (si_call_addr).
    let nr = unsafe {
        let base = (info as *const u8).add(16);
        std::ptr::read_unaligned(base.add(std::mem::size_of::<usize>()) as *const i32)
    };
    let mut buf = [0u8; 128];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        for &b in bytes {
            if len < buf.len() {
                buf[len] = b;
                len += 1;
            }
        }
    };
    put(b"hk: seccomp: thread \"");
    let mut name = [0u8; 16];
    // SAFETY: prctl(PR_GET_NAME) writes at most 16 bytes into `name`.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    put(&name[..end]);
    put(b"\" made forbidden system call ");
    let mut digits = [0u8; 12];
    let mut n = nr.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(&digits[i..]);
    put(b"; the VM is stopped\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(EXIT_FORBIDDEN_SYSCALL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The test binary re-runs itself with this variable set to the name of a check, which
    /// then runs under a filter in a child process (a trap ends the whole process).
    const CHILD: &str = "HK_SECCOMP_TEST_CHILD";

    fn child(check: &str) -> std::process::Output {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "seccomp::tests::child_entry", "--nocapture"])
            .env(CHILD, check)
            .output()
            .unwrap()
    }

    #[test]
    fn child_entry() {
        let Ok(check) = std::env::var(CHILD) else {
            return;
        };
        match check.as_str() {
            "device-exec" => {
                std::thread::Builder::new()
                    .name("dev-test".into())
                    .spawn(|| {
                        confine_device_thread(&device_filters().unwrap()).unwrap();
                        // An ordinary read works...
                        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
                        std::io::Write::write_all(&mut &a, b"x").unwrap();
                        println!("allowed-ok");
                        // ...a process-spawning call does not.
                        // SAFETY: fork in a test child that ends right after.
                        unsafe { libc::fork() };
                        println!("not-reached");
                    })
                    .unwrap()
                    .join()
                    .unwrap();
            }
            "vcpu-socket" => {
                std::thread::Builder::new()
                    .name("vcpu-test".into())
                    .spawn(|| {
                        confine_thread(&vcpu_filter().unwrap()).unwrap();
                        let _ = std::net::TcpStream::connect("127.0.0.1:9");
                        println!("not-reached");
                    })
                    .unwrap()
                    .join()
                    .unwrap();
            }
            "process-unshare" => {
                confine_process().unwrap();
                // SAFETY: unshare on this test thread only.
                let fs = unsafe { libc::unshare(libc::CLONE_FS) };
                println!("clone-fs={fs}");
                // SAFETY: as above; the filter traps it.
                unsafe { libc::unshare(libc::CLONE_NEWUSER) };
                println!("not-reached");
            }
            "process-exec" => {
                confine_process().unwrap();
                // The forked child inherits the filter; its exec traps and ends it.
                let worker = std::thread::spawn(|| Command::new("/bin/true").status());
                let status = worker.join().unwrap().unwrap();
                use std::os::unix::process::ExitStatusExt;
                // posix_spawn's child runs with default signal actions: SIGSYS kills it.
                println!("child-status={:?}/{:?}", status.code(), status.signal());
            }
            "vcpu-activates-a-disk" => vcpu_activates_a_disk(),
            "vcpu-activates-vsock" => vcpu_activates_vsock(),
            "device-frees-a-burst" => {
                std::thread::Builder::new()
                    .name("dev-test".into())
                    .spawn(|| {
                        confine_device_thread(&device_filters().unwrap()).unwrap();
                        // Below the mmap threshold, so from this thread's malloc arena,
                        // whose heap shrinks when they are freed.
                        let bufs: Vec<Vec<u8>> = (0..2000).map(|_| vec![1u8; 100 << 10]).collect();
                        drop(bufs);
                        println!("freed");
                        // What a device thread must still not do: open a file.
                        let open = std::fs::File::open("/proc/self/status");
                        println!("open: {:?}", open.map_err(|e| e.raw_os_error()).err());
                    })
                    .unwrap()
                    .join()
                    .unwrap();
            }
            _ => {}
        }
    }

    /// A driver on a vCPU thread, under the vCPU filter, sets a device up and sets
    /// DRIVER_OK, as every Linux guest does at boot; the VMM's thread then starts the
    /// device, whose thread runs under the device filter. Returns the guest memory once the
    /// device thread has run for a while.
    fn drive_from_a_vcpu(
        device: Box<dyn hk_devices::virtio::VirtioDevice>,
        queues: u64,
        setup_memory: impl FnOnce(&vm_memory::GuestMemoryMmap),
        done: impl Fn(&vm_memory::GuestMemoryMmap) -> bool,
    ) -> vm_memory::GuestMemoryMmap {
        use hk_devices::event::Event;
        use hk_devices::virtio::VirtioInterrupt;
        use hk_devices::{BusDevice, Interrupt};
        use std::sync::{Arc, Mutex};
        use vm_memory::{GuestAddress, GuestMemoryMmap};

        struct NoIrq;
        impl Interrupt for NoIrq {
            fn trigger(&self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_memory(&mem);
        let device_filters = Arc::new(device_filters().unwrap());
        let activation = Event::new().unwrap();
        let transport = crate::machine::transport(
            device,
            mem.clone(),
            VirtioInterrupt::new(Arc::new(NoIrq)),
            Event::new().unwrap(),
            (
                Arc::new(|why| println!("fatal: {why}")),
                Some(Arc::new(move || {
                    confine_device_thread(&device_filters).map_err(|e| e.to_string())
                })),
            ),
            &activation,
        )
        .unwrap();
        let transport = Arc::new(Mutex::new(transport));
        let vcpu = transport.clone();
        std::thread::Builder::new()
            .name("vcpu-test".into())
            .spawn(move || {
                confine_thread(&vcpu_filter().unwrap()).unwrap();
                let mut t = vcpu.lock().unwrap();
                let mut w = |offset: u64, value: u32| t.write(offset, &value.to_le_bytes());
                w(0x70, 3);
                w(0x24, 1);
                w(0x20, 1);
                w(0x70, 3 | 8);
                // Queue q: descriptors at 0x1000 + 0x10000 q, avail and used rings after.
                for q in 0..queues {
                    let base = 0x1000 + 0x1_0000 * q as u32;
                    w(0x30, q as u32);
                    w(0x38, 16);
                    w(0x80, base);
                    w(0x90, base + 0x1000);
                    w(0xa0, base + 0x2000);
                    w(0x44, 1);
                }
                w(0x70, 3 | 8 | 4);
                w(0x50, 0);
                println!("driver-ok-written");
            })
            .unwrap()
            .join()
            .unwrap();
        if activation.consume() {
            transport.lock().unwrap().activate_pending();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done(&mem) {
            assert!(
                std::time::Instant::now() < deadline,
                "the device never did it"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The device thread lives on a little, under its filter.
        std::thread::sleep(std::time::Duration::from_millis(200));
        // The driver resets the device from the vCPU: its thread is stopped and joined, its
        // eventfds closed (which a debug build of std checks with fcntl(F_GETFD)).
        let vcpu = transport.clone();
        std::thread::Builder::new()
            .name("vcpu-test".into())
            .spawn(move || {
                confine_thread(&vcpu_filter().unwrap()).unwrap();
                vcpu.lock().unwrap().write(0x70, &0u32.to_le_bytes());
                println!("reset");
            })
            .unwrap()
            .join()
            .unwrap();
        mem
    }

    fn vcpu_activates_a_disk() {
        use hk_devices::virtio::block::Block;
        use vm_memory::{Bytes, GuestAddress};

        let image = std::env::temp_dir().join(format!("hk-seccomp-disk-{}", std::process::id()));
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let disk = Block::open(&image, false, "disk0").unwrap();
        std::fs::remove_file(&image).unwrap();
        // One GET_ID request: header at 0x4000, 20 bytes of answer at 0x5000, status at
        // 0x6000.
        let mem = drive_from_a_vcpu(
            Box::new(disk),
            1,
            |mem| {
                mem.write_obj(8u32, GuestAddress(0x4000)).unwrap();
                for (i, (addr, len, flags)) in
                    [(0x4000u64, 16u32, 1u16), (0x5000, 20, 3), (0x6000, 1, 2)]
                        .into_iter()
                        .enumerate()
                {
                    let at = 0x1000 + 16 * i as u64;
                    mem.write_obj(addr, GuestAddress(at)).unwrap();
                    mem.write_obj(len, GuestAddress(at + 8)).unwrap();
                    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
                    mem.write_obj(i as u16 + 1, GuestAddress(at + 14)).unwrap();
                }
                mem.write_obj([0u16, 1, 0], GuestAddress(0x2000)).unwrap();
            },
            |mem| mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap() == 1,
        );
        let id: [u8; 5] = mem.read_obj(GuestAddress(0x5000)).unwrap();
        println!("served: {}", String::from_utf8_lossy(&id));
    }

    fn vcpu_activates_vsock() {
        use hk_devices::virtio::vsock::{Vsock, VsockConfig};
        let dir = std::env::temp_dir().join(format!("hk-seccomp-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let device = Vsock::new(&VsockConfig {
            guest_cid: 3,
            uds: Some(dir.join("v.sock")),
        })
        .unwrap();
        let _ = drive_from_a_vcpu(Box::new(device), 3, |_| {}, |_| true);
        let _ = std::fs::remove_dir_all(&dir);
        println!("served: vsock");
    }

    #[test]
    fn a_forbidden_call_in_a_device_thread_ends_the_process_naming_it() {
        let out = child("device-exec");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(EXIT_FORBIDDEN_SYSCALL), "{stderr}");
        assert!(stdout.contains("allowed-ok"), "{stdout}");
        assert!(!stdout.contains("not-reached"), "{stdout}");
        assert!(
            stderr.contains(&format!(
                "thread \"dev-test\" made forbidden system call {}",
                libc::SYS_fork
            )) || stderr.contains(&format!("system call {}", libc::SYS_clone)),
            "{stderr}"
        );
    }

    #[test]
    fn a_vcpu_thread_cannot_open_a_network_socket() {
        let out = child("vcpu-socket");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_FORBIDDEN_SYSCALL), "{stderr}");
        assert!(
            stderr.contains(&format!("system call {}", libc::SYS_socket)),
            "{stderr}"
        );
    }

    #[test]
    fn no_thread_of_a_confined_process_can_exec() {
        let out = child("process-exec");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("child-status=Some({EXIT_FORBIDDEN_SYSCALL})/None"))
                || stdout.contains(&format!("child-status=None/Some({})", libc::SIGSYS)),
            "{stdout}{stderr}"
        );
    }

    #[test]
    fn a_vcpu_thread_setting_driver_ok_does_not_trip_its_filter() {
        let out = child("vcpu-activates-a-disk");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{:?}\n{stdout}{stderr}", out.status);
        assert!(stdout.contains("driver-ok-written"), "{stdout}");
        assert!(stdout.contains("served: disk0"), "{stdout}{stderr}");
        assert!(stdout.contains("reset"), "{stdout}{stderr}");
    }

    #[test]
    fn a_vsock_device_thread_runs_under_its_filter() {
        let out = child("vcpu-activates-vsock");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{:?}\n{stdout}{stderr}", out.status);
        assert!(stdout.contains("served: vsock"), "{stdout}{stderr}");
    }

    #[test]
    fn a_device_thread_freeing_a_burst_of_buffers_survives_mallocs_open() {
        let out = child("device-frees-a-burst");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{:?}\n{stdout}{stderr}", out.status);
        assert!(stdout.contains("freed"), "{stdout}");
        assert!(
            stdout.contains(&format!("open: Some(Some({}))", libc::EACCES)),
            "{stdout}"
        );
    }

    #[test]
    fn the_process_filter_lets_a_thread_keep_its_umask_but_makes_no_namespace() {
        let out = child("process-unshare");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(EXIT_FORBIDDEN_SYSCALL), "{stderr}");
        assert!(stdout.contains("clone-fs=0"), "{stdout}");
        assert!(!stdout.contains("not-reached"), "{stdout}");
    }

    #[test]
    fn the_filters_compile() {
        assert!(fs_filters().is_ok());
        assert!(!vcpu_filter().unwrap().is_empty());
        assert!(!device_filters().unwrap().allow.is_empty());
        assert!(!process_filter().unwrap().is_empty());
    }
}
