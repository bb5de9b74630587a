//! PID 1 must reap every process that ends in the VM, its own children and the orphans the
//! kernel hands it, or they stay zombies. One thread does all the waiting (`waitpid(-1)`);
//! processes the agent started are registered first, so their statuses reach whoever waits
//! for them and everything else is simply reaped.
//!
//! Registration and spawning happen under the same lock the reaper takes to record a
//! status, so a child that dies before it is registered is still recognised.

use hk_agent_protocol::ExitStatus;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

#[derive(Default)]
pub struct Watched {
    statuses: HashMap<i32, Option<ExitStatus>>,
    /// Counts spawns, so an idle reaper knows when there may be children again.
    spawns: u64,
}

impl Watched {
    /// Registers `pid`, spawned while this guard was held.
    pub fn watch(&mut self, pid: i32) {
        self.statuses.insert(pid, None);
        self.spawns += 1;
    }
}

pub struct Reaper {
    watched: Mutex<Watched>,
    changed: Condvar,
}

/// The process-wide reaper (a process has one set of children).
pub fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(|| reaper().run())
            .expect("spawn the reaper thread");
        Reaper {
            watched: Mutex::new(Watched::default()),
            changed: Condvar::new(),
        }
    })
}

impl Reaper {
    /// Hold this while spawning, then [`Watched::watch`] the new pid.
    pub fn lock(&self) -> MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until watched process `pid` has ended.
    pub fn wait(&self, pid: i32) -> ExitStatus {
        let mut watched = self.lock();
        loop {
            if let Some(Some(status)) = watched.statuses.get(&pid) {
                let status = *status;
                watched.statuses.remove(&pid);
                return status;
            }
            watched = self
                .changed
                .wait(watched)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn run(&self) {
        loop {
            let spawns = self.lock().spawns;
            let (pid, status) = match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, ExitStatus::Signal(signal as i32))
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => {
                    // No children at all: wait until something is spawned. (Orphans only
                    // come from children, so none can appear meanwhile.)
                    let mut watched = self.lock();
                    while watched.spawns == spawns {
                        watched = self
                            .changed
                            .wait_timeout(watched, Duration::from_secs(1))
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    continue;
                }
            };
            let mut watched = self.lock();
            if let Some(slot) = watched.statuses.get_mut(&pid.as_raw()) {
                *slot = Some(status);
                self.changed.notify_all();
            }
        }
    }

    /// Wakes the reaper after a spawn (call with the guard dropped), in case it was idle.
    pub fn spawned(&self) {
        self.changed.notify_all();
    }
}
