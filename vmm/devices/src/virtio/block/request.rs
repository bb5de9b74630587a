//! One virtio-blk request: parsed from a descriptor chain the guest wrote, so every field is
//! checked before use. A chain that has no usable status byte is dropped (used length 0);
//! anything else wrong gets VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP in the status byte.

use super::{Block, ID_BYTES, SECTOR_SIZE};
use crate::GuestMemory;
use std::io::{Seek, SeekFrom};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory as _};

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// `struct virtio_blk_outhdr`.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Header {
    kind: u32,
    _reserved: u32,
    sector: u64,
}

// SAFETY: plain integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for Header {}

pub(super) struct Request<'a> {
    header: Header,
    data: &'a [Descriptor],
    status: GuestAddress,
}

impl<'a> Request<'a> {
    /// Splits a chain into header, data and status. `None` when there is no place to
    /// put a status: too short, cut short (a loop or an index past the queue), or header
    /// and status descriptors of the wrong direction or size.
    pub(super) fn parse(chain: &'a [Descriptor], mem: &GuestMemory) -> Option<Request<'a>> {
        let (first, rest) = chain.split_first()?;
        let (last, data) = rest.split_last()?;
        // A chain the iterator stopped early ends on a descriptor that still says "next".
        if last.has_next() {
            return None;
        }
        if first.is_write_only() || (first.len() as usize) < size_of::<Header>() {
            return None;
        }
        if !last.is_write_only() || last.len() < 1 {
            return None;
        }
        let header: Header = mem.read_obj(first.addr()).ok()?;
        // The status must be writable before anything else is done on the guest's behalf.
        if !mem.address_in_range(last.addr()) {
            return None;
        }
        Some(Request {
            header: Header {
                kind: u32::from_le(header.kind),
                _reserved: 0,
                sector: u64::from_le(header.sector),
            },
            data,
            status: last.addr(),
        })
    }

    /// Runs the request and writes its status; returns the used length (bytes written
    /// into the guest's buffers, status included), or 0 when even the status could not
    /// be written.
    pub(super) fn execute(&self, disk: &mut Block, mem: &GuestMemory) -> u32 {
        let (status, written) = match self.header.kind {
            VIRTIO_BLK_T_IN => self.read(disk, mem),
            VIRTIO_BLK_T_OUT => self.write(disk, mem),
            VIRTIO_BLK_T_FLUSH => (flush(disk), 0),
            VIRTIO_BLK_T_GET_ID => self.get_id(disk, mem),
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        };
        match mem.write_obj(status, self.status) {
            Ok(()) => written.saturating_add(1),
            Err(_) => 0,
        }
    }

    /// Byte offset of the transfer on the disk, when all of it lies within the disk and the
    /// data descriptors all go the expected way.
    fn span(&self, disk: &Block, write_only: bool) -> Option<u64> {
        let mut total: u64 = 0;
        for desc in self.data {
            if desc.is_write_only() != write_only {
                return None;
            }
            total = total.checked_add(u64::from(desc.len()))?;
        }
        if !total.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let start = self.header.sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(total)?;
        (end <= disk.capacity_sectors.checked_mul(SECTOR_SIZE)?).then_some(start)
    }

    fn read(&self, disk: &mut Block, mem: &GuestMemory) -> (u8, u32) {
        let Some(start) = self.span(disk, true) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        if disk.file.seek(SeekFrom::Start(start)).is_err() {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let mut done: u32 = 0;
        for desc in self.data {
            let len = desc.len() as usize;
            if mem
                .read_exact_volatile_from(desc.addr(), &mut disk.file, len)
                .is_err()
            {
                return (VIRTIO_BLK_S_IOERR, done);
            }
            done = done.saturating_add(desc.len());
        }
        (VIRTIO_BLK_S_OK, done)
    }

    fn write(&self, disk: &mut Block, mem: &GuestMemory) -> (u8, u32) {
        if disk.read_only {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let Some(start) = self.span(disk, false) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        if disk.file.seek(SeekFrom::Start(start)).is_err() {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        for desc in self.data {
            if mem
                .write_all_volatile_to(desc.addr(), &mut disk.file, desc.len() as usize)
                .is_err()
            {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
        }
        (VIRTIO_BLK_S_OK, 0)
    }

    fn get_id(&self, disk: &Block, mem: &GuestMemory) -> (u8, u32) {
        let Some(desc) = self.data.first() else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        if !desc.is_write_only() {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let len = (desc.len() as usize).min(ID_BYTES);
        match mem.write_slice(&disk.id[..len], desc.addr()) {
            Ok(()) => (VIRTIO_BLK_S_OK, len as u32),
            Err(_) => (VIRTIO_BLK_S_IOERR, 0),
        }
    }
}

fn flush(disk: &Block) -> u8 {
    if disk.read_only || disk.file.sync_data().is_ok() {
        VIRTIO_BLK_S_OK
    } else {
        VIRTIO_BLK_S_IOERR
    }
}
