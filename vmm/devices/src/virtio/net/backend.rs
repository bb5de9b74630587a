//! The qemu stream protocol on a Unix stream socket, as passt (and QEMU's `-netdev stream`)
//! speak it: each Ethernet frame preceded by its length, 4 bytes big-endian.

use super::{NetBackend, MAX_FRAME, MIN_FRAME};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

const LEN: usize = 4;
/// Bytes read from the socket at a time: a few large frames, or many small ones per call.
const RX_BUF: usize = 4 * (LEN + MAX_FRAME);
/// Queued outgoing bytes above which [`NetBackend::can_send`] says no; one more frame may
/// still come, so the send buffer never exceeds this plus one framed frame.
const TX_HIGH: usize = 2 * (LEN + MAX_FRAME);

/// A connected stream socket to passt (or anything speaking the same framing).
pub struct StreamBackend {
    stream: UnixStream,
    rx: Box<[u8]>,
    /// Unconsumed bytes are `rx[rx_start..rx_end]`.
    rx_start: usize,
    rx_end: usize,
    tx: Vec<u8>,
    /// Bytes of `tx` already written.
    tx_sent: usize,
}

impl StreamBackend {
    /// Takes `stream` (made non-blocking here).
    pub fn new(stream: UnixStream) -> io::Result<StreamBackend> {
        stream.set_nonblocking(true)?;
        Ok(StreamBackend {
            stream,
            rx: vec![0; RX_BUF].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(TX_HIGH + LEN + MAX_FRAME),
            tx_sent: 0,
        })
    }

    /// Length of the frame at the head of the receive buffer, once its prefix is there.
    fn head_len(&self) -> io::Result<Option<usize>> {
        let have = &self.rx[self.rx_start..self.rx_end];
        let Some(prefix) = have.get(..LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the backend sent a frame of {len} bytes (expected {MIN_FRAME} to {MAX_FRAME})"
                ),
            ));
        }
        Ok(Some(len))
    }

    fn whole_frame(&self) -> io::Result<Option<usize>> {
        Ok(self
            .head_len()?
            .filter(|len| self.rx_end - self.rx_start >= LEN + len))
    }
}

impl NetBackend for StreamBackend {
    fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn peek(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            if let Some(len) = self.whole_frame()? {
                let at = self.rx_start + LEN;
                return Ok(Some(&self.rx[at..at + len]));
            }
            // Make room at the end: a whole frame always fits once the partial one is moved
            // to the front.
            if self.rx_start > 0 && self.rx_end + LEN + MAX_FRAME > self.rx.len() {
                self.rx.copy_within(self.rx_start..self.rx_end, 0);
                self.rx_end -= self.rx_start;
                self.rx_start = 0;
            }
            // SAFETY: reads into the free tail of `rx`, which this backend owns.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    self.rx[self.rx_end..].as_mut_ptr().cast(),
                    self.rx.len() - self.rx_end,
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection",
                    ))
                }
                n if n > 0 => self.rx_end += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(None),
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    fn consume(&mut self) {
        if let Ok(Some(len)) = self.whole_frame() {
            self.rx_start += LEN + len;
            if self.rx_start == self.rx_end {
                self.rx_start = 0;
                self.rx_end = 0;
            }
        }
    }

    fn can_send(&self) -> bool {
        self.tx.len() - self.tx_sent < TX_HIGH
    }

    fn send(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame too long",
            ));
        }
        if self.tx_sent > 0 {
            self.tx.drain(..self.tx_sent);
            self.tx_sent = 0;
        }
        let at = self.tx.len();
        self.tx.extend_from_slice(&(len as u32).to_be_bytes());
        self.tx.resize(at + LEN + len, 0);
        if let Err(e) = fill(&mut self.tx[at + LEN..]) {
            self.tx.truncate(at);
            return Err(e);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<bool> {
        while self.tx_sent < self.tx.len() {
            let out = &self.tx[self.tx_sent..];
            // SAFETY: sends from `out`, a live slice; MSG_NOSIGNAL so a closed peer gives
            // EPIPE instead of killing the process.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    out.as_ptr().cast(),
                    out.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                self.tx_sent += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(false),
                io::ErrorKind::Interrupted => {}
                _ => return Err(e),
            }
        }
        self.tx.clear();
        self.tx_sent = 0;
        Ok(true)
    }
}
