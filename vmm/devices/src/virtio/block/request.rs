//! One virtio-blk request, read from a descriptor chain the guest wrote, so every field is
//! checked before use.
//!
//! No descriptor layout is assumed (virtio 1.x §2.7.4 forbids it): the request is the
//! device-readable bytes of the chain (a 16-byte header, then for a write its data) followed
//! by the device-writable bytes (for a read its data, then one status byte). A header may be
//! split over descriptors, data may share the header's descriptor, and the status is the
//! last writable byte wherever that falls. A chain with no room for a status is dropped (used
//! length 0); anything else wrong gets VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP.

use super::{BlockWorker, ID_BYTES, SECTOR_SIZE};
use crate::GuestMemory;
use std::io::{Seek, SeekFrom};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _};

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// `struct virtio_blk_outhdr`: type, reserved, sector.
const HEADER_LEN: u64 = 16;

/// A run of bytes in guest memory: part of one descriptor's buffer.
type Piece = (GuestAddress, usize);

/// The pieces covering bytes `[skip, skip + len)` of the area the descriptors describe, or
/// `None` if an address would wrap.
fn pieces(descs: &[Descriptor], skip: u64, len: u64) -> Option<Vec<Piece>> {
    let mut out = Vec::new();
    let (mut skip, mut len) = (skip, len);
    for desc in descs {
        if len == 0 {
            break;
        }
        let dlen = u64::from(desc.len());
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        let take = (dlen - skip).min(len);
        out.push((desc.addr().checked_add(skip)?, take as usize));
        len -= take;
        skip = 0;
    }
    (len == 0).then_some(out)
}

fn total(descs: &[Descriptor]) -> u64 {
    descs.iter().map(|d| u64::from(d.len())).sum()
}

/// Runs the request in `chain` and returns the used length: bytes written into the guest's
/// buffers, status included, or 0 when the chain was dropped.
pub(super) fn handle(chain: &[Descriptor], disk: &mut BlockWorker, mem: &GuestMemory) -> u32 {
    // A chain the iterator stopped early (a loop, an index past the queue) ends on a
    // descriptor that still says "next".
    match chain.last() {
        Some(last) if !last.has_next() => {}
        _ => return 0,
    }
    // Device-readable descriptors come first, then device-writable ones (§2.7.4.2).
    let split = chain
        .iter()
        .position(|d| d.is_write_only())
        .unwrap_or(chain.len());
    let (readable, writable) = chain.split_at(split);
    if writable.iter().any(|d| !d.is_write_only()) {
        return 0;
    }
    let writable_len = total(writable);
    if writable_len == 0 || total(readable) < HEADER_LEN {
        return 0;
    }
    // The status must be writable before anything is done on the guest's behalf.
    let Some(status) = pieces(writable, writable_len - 1, 1)
        .and_then(|p| p.first().copied())
        .map(|(addr, _)| addr)
        .filter(|&addr| mem.address_in_range(addr))
    else {
        return 0;
    };
    let mut header = [0u8; HEADER_LEN as usize];
    if gather(mem, readable, 0, &mut header).is_err() {
        return 0;
    }
    let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let request = Request {
        sector,
        readable,
        writable,
        data_in_len: writable_len - 1,
    };
    let (code, written) = match kind {
        VIRTIO_BLK_T_IN => request.read(disk, mem),
        VIRTIO_BLK_T_OUT => request.write(disk, mem),
        VIRTIO_BLK_T_FLUSH => (flush(disk), 0),
        VIRTIO_BLK_T_GET_ID => request.get_id(disk, mem),
        _ => (VIRTIO_BLK_S_UNSUPP, 0),
    };
    match mem.write_obj(code, status) {
        Ok(()) => written.saturating_add(1),
        Err(_) => 0,
    }
}

/// Copies bytes `[skip, skip + out.len())` of the area into `out`.
fn gather(mem: &GuestMemory, descs: &[Descriptor], skip: u64, out: &mut [u8]) -> Result<(), ()> {
    let mut at = 0;
    for (addr, len) in pieces(descs, skip, out.len() as u64).ok_or(())? {
        mem.read_slice(&mut out[at..at + len], addr)
            .map_err(|_| ())?;
        at += len;
    }
    Ok(())
}

struct Request<'a> {
    sector: u64,
    readable: &'a [Descriptor],
    writable: &'a [Descriptor],
    /// Writable bytes before the status: room for a read's data.
    data_in_len: u64,
}

impl Request<'_> {
    /// Byte offset of a transfer of `len` bytes on the disk, when all of it lies within the
    /// disk and is made of whole sectors.
    fn span(&self, disk: &BlockWorker, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let start = self.sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= disk.capacity_sectors.checked_mul(SECTOR_SIZE)?).then_some(start)
    }

    fn read(&self, disk: &mut BlockWorker, mem: &GuestMemory) -> (u8, u32) {
        // Data the driver offers to the device has no place in a read.
        if total(self.readable) != HEADER_LEN {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let Some(start) = self.span(disk, self.data_in_len) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        let Some(pieces) = pieces(self.writable, 0, self.data_in_len) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        if disk.file.seek(SeekFrom::Start(start)).is_err() {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let mut done: u32 = 0;
        for (addr, len) in pieces {
            if mem
                .read_exact_volatile_from(addr, &mut disk.file, len)
                .is_err()
            {
                return (VIRTIO_BLK_S_IOERR, done);
            }
            done = done.saturating_add(len as u32);
        }
        (VIRTIO_BLK_S_OK, done)
    }

    fn write(&self, disk: &mut BlockWorker, mem: &GuestMemory) -> (u8, u32) {
        // A write gives the device no buffers to fill but the status.
        if disk.read_only || self.data_in_len != 0 {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let len = total(self.readable) - HEADER_LEN;
        let Some(start) = self.span(disk, len) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        // Check every piece lies in guest memory before the first byte reaches the disk, so
        // a request the device refuses leaves the disk as it was.
        let Some(pieces) = pieces(self.readable, HEADER_LEN, len) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        if pieces
            .iter()
            .any(|&(addr, len)| mem.get_slice(addr, len).is_err())
        {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        if disk.file.seek(SeekFrom::Start(start)).is_err() {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        for (addr, len) in pieces {
            if mem
                .write_all_volatile_to(addr, &mut disk.file, len)
                .is_err()
            {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
        }
        (VIRTIO_BLK_S_OK, 0)
    }

    fn get_id(&self, disk: &BlockWorker, mem: &GuestMemory) -> (u8, u32) {
        let len = self.data_in_len.min(ID_BYTES as u64) as usize;
        if len == 0 {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let mut at = 0;
        for (addr, n) in pieces(self.writable, 0, len as u64).unwrap_or_default() {
            if mem.write_slice(&disk.id[at..at + n], addr).is_err() {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            at += n;
        }
        if at != len {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        (VIRTIO_BLK_S_OK, len as u32)
    }
}

fn flush(disk: &BlockWorker) -> u8 {
    if disk.read_only || disk.file.sync_data().is_ok() {
        VIRTIO_BLK_S_OK
    } else {
        VIRTIO_BLK_S_IOERR
    }
}
