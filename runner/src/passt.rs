//! passt as a VM's network backend (docs/networking.md): a separate process, started here
//! with one end of a socketpair (`passt --fd`), so no socket path exists for anything else
//! to connect to. passt exits by itself once hk's end closes (`--fd` implies `--one-off`),
//! so it does not outlive a VMM that was killed; a [`Passt`] that is dropped kills it too.

use anyhow::{bail, Context};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// The descriptor number passt finds its socket under.
const CHILD_FD: i32 = 3;

/// A running passt and hk's end of its socket.
pub struct Passt {
    child: Child,
    stream: Option<UnixStream>,
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
        let mut passt = Passt {
            child,
            stream: Some(mine),
        };
        // A bad option makes passt exit at once; catch that here rather than as a dead link.
        std::thread::sleep(std::time::Duration::from_millis(50));
        if let Some(status) = passt.child.try_wait()? {
            bail!("passt exited at start ({status}); its options: {extra:?}");
        }
        Ok(passt)
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
