//! The thread an active virtio device runs on: a [`Poller`] loop over the transport's queue
//! notification event, a stop event and whatever the [`DeviceWorker`] registers.
//!
//! A panic or an error in a worker must not leave the VMM waiting on a device that is gone:
//! both are caught here and handed to the VMM's `fatal` callback, which stops the VM.

use super::{DeviceWorker, VirtioInterrupt};
use crate::event::{Event, Interest, Poller};
use crate::GuestMemory;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use virtio_queue::Queue;

/// Called when a device cannot go on (its worker failed or panicked); the VMM stops the VM.
pub type Fatal = Arc<dyn Fn(String) + Send + Sync>;

/// Run first on every device thread: the VMM's policy for it (a seccomp filter), which the
/// device models know nothing about. An error stops the device before it touches a queue.
pub type Confine = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Tokens at or above this are the loop's own.
const RESERVED: u64 = u64::MAX - 16;
const STOP: u64 = u64::MAX;
const NOTIFY: u64 = u64::MAX - 1;

/// What one call into a worker did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Buffers were used and the driver asked to be told: raise the interrupt.
    pub notify: bool,
    /// The call stopped at its budget with work left: call `process` again soon, after the
    /// other ready sources had their turn.
    pub more: bool,
    /// The device's configuration changed (a NIC's link went down): raise the
    /// configuration interrupt.
    pub config: bool,
}

impl std::ops::BitOrAssign for Served {
    fn bitor_assign(&mut self, other: Served) {
        self.notify |= other.notify;
        self.more |= other.more;
        self.config |= other.config;
    }
}

/// The worker's side of the device thread's poller.
pub struct Events {
    poller: Poller,
}

fn unreserved(token: u64) -> std::io::Result<()> {
    if token >= RESERVED {
        return Err(std::io::Error::other(
            "event token reserved by the device loop",
        ));
    }
    Ok(())
}

impl Events {
    fn new() -> std::io::Result<Events> {
        Ok(Events {
            poller: Poller::new()?,
        })
    }

    /// Waits for `interest` on `fd`, reported to [`DeviceWorker::event`] as `token`.
    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> std::io::Result<()> {
        unreserved(token)?;
        self.poller.add(fd, token, interest)
    }

    /// Changes what `fd` is waited for.
    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> std::io::Result<()> {
        unreserved(token)?;
        self.poller.modify(fd, token, interest)
    }

    /// Stops waiting for `fd` (closing it does that too).
    pub fn remove(&self, fd: RawFd) -> std::io::Result<()> {
        self.poller.remove(fd)
    }
}

/// A running device thread; stopping it (or dropping the handle) waits until it is gone, so
/// the queues are no longer touched once the transport resets.
pub struct WorkerHandle {
    stop: Event,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop.signal();
            let _ = thread.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a device thread works with.
pub struct Activated {
    pub worker: Box<dyn DeviceWorker>,
    pub queues: Vec<Queue>,
    pub mem: GuestMemory,
    pub interrupt: VirtioInterrupt,
    /// The transport's queue notification event.
    pub notify: Event,
}

/// Starts the thread `name` serving `work` until the handle stops it.
pub fn spawn(
    name: String,
    work: Activated,
    fatal: Fatal,
    confine: Option<Confine>,
) -> std::io::Result<WorkerHandle> {
    let stop = Event::new()?;
    let stop_rx = stop.try_clone()?;
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Some(confine) = confine {
                if let Err(e) = confine() {
                    fatal(format!("device {name}: {e}"));
                    return;
                }
            }
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(work, &stop_rx)));
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => fatal(format!("device {name}: {e}")),
                Err(panic) => fatal(format!("device {name} panicked: {}", panic_text(&*panic))),
            }
        })?;
    Ok(WorkerHandle {
        stop,
        thread: Some(thread),
    })
}

/// The message of a caught panic.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

fn serve(work: Activated, stop: &Event) -> std::io::Result<()> {
    let Activated {
        mut worker,
        mut queues,
        mem,
        interrupt,
        notify,
    } = work;
    let events = Events::new()?;
    events.poller.add(stop.as_raw_fd(), STOP, Interest::Read)?;
    events
        .poller
        .add(notify.as_raw_fd(), NOTIFY, Interest::Read)?;
    worker.init(&events)?;
    let mut ready = Vec::with_capacity(64);
    // The driver may have made buffers available before it set DRIVER_OK.
    let mut process = true;
    loop {
        let mut served = Served::default();
        if process {
            served |= worker.process(&mut queues, &mem, &events);
        }
        let timeout = if served.more {
            Some(Duration::ZERO)
        } else {
            None
        };
        if served.notify {
            interrupt.signal_used_queue()?;
        }
        if served.config {
            interrupt.signal(super::INT_CONFIG)?;
        }
        process = served.more;
        events.poller.wait(timeout, &mut ready)?;
        let mut served = Served::default();
        for &token in &ready {
            match token {
                STOP => return Ok(()),
                NOTIFY => {
                    notify.consume();
                    process = true;
                }
                token => served |= worker.event(token, &mut queues, &mem, &events),
            }
        }
        if served.notify {
            interrupt.signal_used_queue()?;
        }
        if served.config {
            interrupt.signal(super::INT_CONFIG)?;
        }
        process |= served.more;
    }
}

/// Runs `worker` on the calling thread as the device thread's loop would, for fuzz targets
/// (`fuzz/`), which need a device's request paths without a thread or a transport: `init`,
/// then `rounds` passes, each a call to `between` (the target plays the host side there),
/// to `process` and to `event` for every source that is ready (never waiting for one).
/// Only built with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
pub fn drive_for_fuzzing(
    worker: &mut dyn DeviceWorker,
    queues: &mut [Queue],
    mem: &GuestMemory,
    rounds: usize,
    between: &mut dyn FnMut(usize),
) -> std::io::Result<Served> {
    let events = Events::new()?;
    worker.init(&events)?;
    let mut ready = Vec::with_capacity(64);
    let mut all = Served::default();
    for round in 0..rounds {
        between(round);
        all |= worker.process(queues, mem, &events);
        events.poller.wait(Some(Duration::ZERO), &mut ready)?;
        for &token in &ready {
            all |= worker.event(token, queues, mem, &events);
        }
    }
    Ok(all)
}

/// A poller for calling workers directly in unit tests.
#[cfg(test)]
pub(crate) fn test_events() -> Events {
    Events::new().expect("poller")
}
