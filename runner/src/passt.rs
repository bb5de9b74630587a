//! passt as a VM's network backend (docs/networking.md): a separate process, started here
//! with one end of a socketpair (`passt --fd`), so no socket path exists for anything else
//! to connect to. passt exits by itself once hk's end closes (`--fd` implies `--one-off`),
//! so it does not outlive a VMM that was killed; a [`Passt`] that is dropped kills it too.

use anyhow::{bail, Context};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// A container's address on its user-mode network, as slirp4netns numbers it (podman's
/// rootless default before pasta): passt translates it to the host's own address on the
/// way out, so it is the same in every container and clashes with nothing on the host.
pub const GUEST_IP: &str = "10.0.2.100";
pub const PREFIX_LEN: u8 = 24;
/// The gateway; connections to it reach the host's loopback (passt's gateway mapping), so
/// it is what `host.hk.internal` names.
pub const GATEWAY: &str = "10.0.2.2";
/// DNS queries to this address go to the host's first resolver (`--dns-forward`).
pub const DNS: &str = "10.0.2.3";
/// The names for the host that every container's /etc/hosts carries: hk's own, and the
/// ones podman and Docker Desktop use, so that existing setups find the host.
pub const HOST_NAMES: &str = "host.hk.internal host.containers.internal host.docker.internal";

/// passt's options for a container's user-mode network with these published ports.
pub fn user_mode_args(ports: &[crate::container::ports::Port]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-a",
        GUEST_IP,
        "-n",
        &PREFIX_LEN.to_string(),
        "-g",
        GATEWAY,
        "--dns-forward",
        DNS,
        // IPv6 would need router advertisements the agent does not configure yet.
        "-4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(crate::container::ports::passt_args(ports));
    args
}

/// Whether the host has a default IPv4 route: Debian 12's passt copies its settings from
/// that route's interface and will not start without one (newer passt will).
fn host_has_default_route() -> bool {
    std::fs::read_to_string("/proc/net/route").is_ok_and(|table| {
        table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
    })
}

/// The descriptor number passt finds its socket under.
const CHILD_FD: i32 = 3;

/// A running passt and hk's end of its socket.
pub struct Passt {
    child: Child,
    stream: Option<UnixStream>,
    args: Vec<String>,
}

impl Passt {
    /// Starts `passt --foreground --quiet --fd 3 EXTRA...`. `extra` carries addresses
    /// (`-a -n -g`), port forwards (`-t`, `-u`) and anything else passt takes.
    pub fn start(extra: &[String]) -> anyhow::Result<Passt> {
        let (mine, theirs) = UnixStream::pair().context("socketpair for passt")?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new("passt");
        cmd.args(["--foreground", "--quiet", "--fd", &CHILD_FD.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl).
        unsafe {
            cmd.pre_exec(move || {
                if fd == CHILD_FD {
                    // dup2 onto itself would keep close-on-exec.
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, CHILD_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("passt is not installed (apt-get install passt)")
            } else {
                anyhow::anyhow!("cannot start passt: {e}")
            }
        })?;
        drop(theirs);
        Ok(Passt {
            child,
            stream: Some(mine),
            args: extra.to_vec(),
        })
    }

    /// Fails when passt has exited: a bad option or a port it could not bind ends it at
    /// once. Asked once the guest is up rather than waited for at start, which would add
    /// its wait to every boot.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let hint = if host_has_default_route() {
                ""
            } else {
                "; this host has no default route, which passt before 2024 needs: \
                 install a newer passt or use --network none"
            };
            bail!(
                "passt exited ({status}){hint}; its options: {:?}",
                self.args
            );
        }
        Ok(())
    }

    /// hk's end of the socket, for the VM's NIC; taken once.
    pub fn take_stream(&mut self) -> Option<UnixStream> {
        self.stream.take()
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
