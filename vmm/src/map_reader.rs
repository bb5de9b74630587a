//! Loading a file into guest memory by mapping it copy-on-write instead of copying it.
//!
//! Why: the guest kernel is ~12 MiB and a boot touches well under all of it. Copying it costs
//! a host page fault, a zeroed page and a copy per 4 KiB before the guest starts, and keeps
//! every page resident for the VM's life. A private file mapping costs nothing up front: the
//! guest pays only for the pages it touches, and every VM booted from the same kernel shares
//! the page-cache pages it only reads. linux-loader still parses and checks the ELF; it just
//! hands its segment reads to [`MapReader`], which maps where it can and reads where it
//! cannot (unaligned offsets, the partial last page, which must be followed by zeros).
//!
//! The catch, shared with Firecracker's snapshot memory files: the file must not be changed
//! in place while a VM runs. Replacing it by rename (what kernel/build.sh, `make` and `cp`
//! to a new name then `mv` do) is safe; truncating it makes the guest's next access to a
//! page it has not touched yet fail, which stops that VM with an error.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

/// A file whose reads into guest memory become private mappings of it.
pub(crate) struct MapReader {
    file: File,
    len: u64,
    page: u64,
}

impl MapReader {
    /// # Safety
    /// Every [`VolatileSlice`] this reader fills must lie in a private anonymous mapping that
    /// its owner unmaps as a whole (guest RAM of a `GuestMemoryMmap`): the reader replaces
    /// whole pages of it with a private mapping of the file (`MAP_FIXED`), which would break
    /// heap memory or memory shared with another process.
    pub(crate) unsafe fn new(file: File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Ok(MapReader {
            file,
            len,
            page: u64::try_from(page).unwrap_or(4096),
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Maps as many whole pages of the file at the current position onto `dst` as fit in
    /// `count` bytes, or returns 0 when the two are not both page-aligned.
    fn map(&mut self, dst: *mut u8, count: usize) -> std::io::Result<usize> {
        let pos = self.file.stream_position()?;
        let mask = self.page - 1;
        if pos & mask != 0 || dst as u64 & mask != 0 {
            return Ok(0);
        }
        // Only pages wholly inside the file: the rest of a partial last page must read as
        // zeros, which a mapping of it would not give (and past the end it would fault).
        let pages = (count as u64).min(self.len.saturating_sub(pos)) & !mask;
        if pages == 0 {
            return Ok(0);
        }
        let offset = libc::off_t::try_from(pos).map_err(std::io::Error::other)?;
        // SAFETY: `dst..dst + pages` lies inside a writable private anonymous mapping owned
        // by guest memory (the contract of `new`); MAP_FIXED replaces those pages in place,
        // so the range stays mapped, writable and owned by the same region.
        let mapped = unsafe {
            libc::mmap(
                dst.cast(),
                pages as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                self.file.as_raw_fd(),
                offset,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        self.file.seek(SeekFrom::Current(pages as i64))?;
        Ok(pages as usize)
    }
}

impl Read for MapReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for MapReader {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ReadVolatile for MapReader {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard_mut();
        let mapped = self
            .map(guard.as_ptr(), buf.len())
            .map_err(VolatileMemoryError::IOError)?;
        buf.bitmap().mark_dirty(0, mapped);
        // vm-memory asks once per region and takes a short count as a short file, so the
        // tail after the mapped pages is read here, to the end of the buffer or the file.
        let mut done = mapped;
        while done < buf.len() {
            match self.file.read_volatile(&mut buf.offset(done)?)? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }
}

/// Reads the initrd at `path` into `mem` as high as it fits below `top`, page-aligned, and
/// not below `floor` (the kernel's end); its guest address and size.
pub(crate) fn load_initrd(
    mem: &vm_memory::GuestMemoryMmap,
    path: &std::path::Path,
    top: u64,
    floor: u64,
) -> Result<(u64, u64), crate::Error> {
    use vm_memory::{Bytes, GuestAddress};
    let err = |msg: String| crate::Error::Initrd(path.into(), msg);
    let file = File::open(path).map_err(|e| err(e.to_string()))?;
    // SAFETY: the initrd is read into `mem`, private anonymous guest RAM.
    let mut file = unsafe { MapReader::new(file) }.map_err(|e| err(e.to_string()))?;
    let size = file.len();
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= floor)
        .ok_or_else(|| {
            err(format!(
                "{size} bytes do not fit in guest memory above the kernel; give the VM more memory"
            ))
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| err(e.to_string()))?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::MapReader;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn file_with(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        f
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn a_mapped_file_reads_like_a_copied_one_and_the_rest_of_its_last_page_is_zero() {
        let data = pattern(3 * 4096 + 100);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(&[0xaa; 4096], GuestAddress(0x5000))
            .unwrap();
        // SAFETY: the slices come from `mem`, private anonymous guest RAM.
        let mut r = unsafe { MapReader::new(file_with(&data)) }.unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x1000), &mut r, data.len())
            .unwrap();
        let mut back = vec![0u8; data.len() + 200];
        mem.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
        assert_eq!(&back[..data.len()], &data[..]);
        // The guest's page beyond the file's last byte: zeros from the guest RAM, then the
        // next page still holds what was there.
        assert!(back[data.len()..].iter().all(|&b| b == 0));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x5000)).unwrap(), 0xaa);
    }

    #[test]
    fn guest_writes_stay_private_to_the_guest() {
        let data = pattern(2 * 4096);
        let file = file_with(&data);
        let mut check = file.try_clone().unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // SAFETY: as above.
        let mut r = unsafe { MapReader::new(file) }.unwrap();
        mem.read_exact_volatile_from(GuestAddress(0), &mut r, data.len())
            .unwrap();
        mem.write_slice(&[0x55; 16], GuestAddress(0x10)).unwrap();
        let mut on_disk = Vec::new();
        std::io::Seek::rewind(&mut check).unwrap();
        std::io::Read::read_to_end(&mut check, &mut on_disk).unwrap();
        assert_eq!(on_disk, data);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10)).unwrap(), 0x55);
    }

    #[test]
    fn unaligned_offsets_and_destinations_fall_back_to_reading() {
        let data = pattern(5 * 4096);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // SAFETY: as above.
        let mut r = unsafe { MapReader::new(file_with(&data)) }.unwrap();
        std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(10)).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x2000), &mut r, 4 * 4096)
            .unwrap();
        let mut back = vec![0u8; 4 * 4096];
        mem.read_slice(&mut back, GuestAddress(0x2000)).unwrap();
        assert_eq!(&back[..], &data[10..10 + 4 * 4096]);

        std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(4096)).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x10003), &mut r, 4096)
            .unwrap();
        let mut back = vec![0u8; 4096];
        mem.read_slice(&mut back, GuestAddress(0x10003)).unwrap();
        assert_eq!(&back[..], &data[4096..8192]);
    }

    #[test]
    fn a_file_shorter_than_asked_is_an_error_not_a_fault() {
        let data = pattern(4096);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // SAFETY: as above.
        let mut r = unsafe { MapReader::new(file_with(&data)) }.unwrap();
        assert!(mem
            .read_exact_volatile_from(GuestAddress(0), &mut r, 3 * 4096)
            .is_err());
    }
}
