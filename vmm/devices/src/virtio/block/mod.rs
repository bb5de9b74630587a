//! virtio-blk backed by a raw image file (virtio 1.x §5.2): read, write, flush, get-id.
//!
//! Requests run on the device's own thread with plain positioned file I/O: the image is a
//! host file, so the page cache already does what a user-space cache would.

mod request;

use super::{
    read_config_bytes, serve_queue, DeviceWorker, Events, Served, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::GuestMemory;
use std::fs::File;
use std::path::Path;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;

const VIRTIO_ID_BLOCK: u32 = 2;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Data segments per request; two more descriptors carry the header and the status.
const SEG_MAX: u32 = 126;
/// Length of the answer to GET_ID (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;
/// Requests served per pass before the device's other work gets a turn.
const BUDGET: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("disk serial {0:?} is longer than {ID_BYTES} bytes")]
    Serial(String),
}

/// The disk as the transport sees it: identity and configuration.
pub struct Block {
    file: File,
    read_only: bool,
    /// Whole sectors only: a trailing partial sector of the image is not addressable.
    capacity_sectors: u64,
    id: [u8; ID_BYTES],
    config: [u8; 16],
    name: String,
}

impl Block {
    /// Opens `path` as a disk whose serial number (GET_ID, `/sys/block/vdX/serial` in a
    /// Linux guest) is `serial`: chosen by the VMM's caller, so the guest can find its disks
    /// by name and learns nothing about the host file.
    pub fn open(path: &Path, read_only: bool, serial: &str) -> Result<Block, Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.display().to_string(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?;
        if serial.len() > ID_BYTES {
            return Err(Error::Serial(serial.to_string()));
        }
        let mut id = [0u8; ID_BYTES];
        id[..serial.len()].copy_from_slice(serial.as_bytes());
        Ok(Block::new(
            file,
            meta.len() / SECTOR_SIZE,
            read_only,
            id,
            format!("blk-{serial}"),
        ))
    }

    fn new(
        file: File,
        capacity_sectors: u64,
        read_only: bool,
        id: [u8; ID_BYTES],
        name: String,
    ) -> Block {
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Block {
            file,
            read_only,
            capacity_sectors,
            id,
            config,
            name,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, _features: u64) -> std::io::Result<Box<dyn DeviceWorker>> {
        Ok(Box::new(BlockWorker {
            file: self.file.try_clone()?,
            read_only: self.read_only,
            capacity_sectors: self.capacity_sectors,
            id: self.id,
            descriptors: Vec::with_capacity(usize::from(QUEUE_SIZE)),
        }))
    }
}

/// Serves the request queue of an active disk.
struct BlockWorker {
    file: File,
    read_only: bool,
    capacity_sectors: u64,
    id: [u8; ID_BYTES],
    /// Reused between requests so a request costs no allocation.
    descriptors: Vec<Descriptor>,
}

impl DeviceWorker for BlockWorker {
    fn process(&mut self, queues: &mut [Queue], mem: &GuestMemory, _events: &Events) -> Served {
        let Some(queue) = queues.first_mut() else {
            return Served::default();
        };
        serve_queue(queue, mem, BUDGET, |chain| {
            let mut descriptors = std::mem::take(&mut self.descriptors);
            descriptors.clear();
            descriptors.extend(chain);
            let len = request::handle(&descriptors, self, mem);
            self.descriptors = descriptors;
            len
        })
    }
}

#[cfg(test)]
mod tests;
