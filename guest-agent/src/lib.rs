//! hk-agent as a library: the protocol server and what it needs (spawning, reaping, user
//! resolution, the container's layer as a tar: `diff`), so host-side tests run the very
//! code PID 1 runs in the guest. The binary
//! (`main.rs`) adds what only makes sense in a VM: mounts, vsock, the control page.

pub mod container;
pub mod diff;
mod mounts;
mod network;
mod pump;
mod reaper;
pub mod server;
mod spawn;
mod users;
