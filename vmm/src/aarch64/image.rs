//! Loading an arm64 `Image` (Documentation/arm64/booting.rst): a 64-byte header, then the
//! kernel, placed at a 2 MiB-aligned base plus the header's `text_offset`, with
//! `image_size` bytes (its BSS included) free from there.

use std::io::Read;

/// "ARM\x64", at byte 56 of the header.
const MAGIC: u32 = 0x644d_5241;
const HEADER_SIZE: usize = 64;
/// The base the kernel's offset counts from must be 2 MiB aligned.
pub const ALIGN: u64 = 2 << 20;

/// What the header says about placing the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub text_offset: u64,
    /// Bytes the kernel needs from its load address, BSS included.
    pub image_size: u64,
}

/// Reads the header. A kernel older than 3.17 gives no `image_size` (0); then its text
/// offset is 0x80000, as the boot protocol says, and the file's size stands in for it.
pub fn parse(header: &[u8], file_size: u64) -> Result<Header, String> {
    if header.len() < HEADER_SIZE {
        return Err(format!(
            "too short for an arm64 Image header ({} bytes)",
            header.len()
        ));
    }
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
    let magic = u32::from_le_bytes(header[56..60].try_into().expect("4 bytes"));
    if magic != MAGIC {
        return Err("not an arm64 Image (no ARM\\x64 magic at byte 56)".into());
    }
    let (text_offset, image_size) = match u64_at(16) {
        0 => (0x8_0000, file_size),
        size => (u64_at(8), size),
    };
    if text_offset >= ALIGN || text_offset % 4096 != 0 {
        return Err(format!(
            "text_offset {text_offset:#x} is not a page inside 2 MiB"
        ));
    }
    if image_size < file_size {
        return Err(format!(
            "image_size {image_size} is smaller than the file ({file_size} bytes)"
        ));
    }
    Ok(Header {
        text_offset,
        image_size,
    })
}

/// Reads an Image's header from `file` (which is left past it).
pub fn read_header(file: &mut impl Read, file_size: u64) -> Result<Header, String> {
    let mut header = [0u8; HEADER_SIZE];
    file.read_exact(&mut header)
        .map_err(|e| format!("reading its header: {e}"))?;
    parse(&header, file_size)
}

/// Where the kernel goes in RAM starting at `ram_base` (2 MiB aligned): as low as the
/// protocol allows, which is where a kernel without the "anywhere" flag must be.
pub fn load_address(ram_base: u64, header: &Header) -> u64 {
    ram_base.next_multiple_of(ALIGN) + header.text_offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64, magic: u32) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_SIZE];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[56..60].copy_from_slice(&magic.to_le_bytes());
        h
    }

    #[test]
    fn a_modern_header_gives_its_offset_and_size() {
        let h = parse(&header(0, 0x100_0000, MAGIC), 0x80_0000).unwrap();
        assert_eq!(
            h,
            Header {
                text_offset: 0,
                image_size: 0x100_0000
            }
        );
        assert_eq!(load_address(0x4000_0000, &h), 0x4000_0000);
        let h = parse(&header(0x8_0000, 0x100_0000, MAGIC), 0x80_0000).unwrap();
        assert_eq!(load_address(0x4000_0000, &h), 0x4008_0000);
        // A base that is not 2 MiB aligned moves up to the next boundary.
        assert_eq!(load_address(0x4000_1000, &h), 0x4028_0000);
    }

    #[test]
    fn an_old_header_without_a_size_uses_the_protocols_offset() {
        let h = parse(&header(0x1234_5000, 0, MAGIC), 0x50_0000).unwrap();
        assert_eq!(
            h,
            Header {
                text_offset: 0x8_0000,
                image_size: 0x50_0000
            }
        );
    }

    #[test]
    fn what_is_not_an_image_is_refused() {
        assert!(parse(&header(0, 0x1000, 0x464c_457f), 0x1000)
            .unwrap_err()
            .contains("magic"));
        assert!(parse(&[0; 10], 10).unwrap_err().contains("too short"));
        assert!(parse(&header(0x20_0000, 0x1000, MAGIC), 0x1000).is_err());
        assert!(parse(&header(0x100, 0x1000, MAGIC), 0x1000).is_err());
        assert!(parse(&header(0, 0x1000, MAGIC), 0x2000)
            .unwrap_err()
            .contains("smaller"));
    }
}
