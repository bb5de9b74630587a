//! One FUSE request, taken from a descriptor chain the guest wrote.
//!
//! The request is the chain's device-readable bytes (`fuse_in_header`, then the opcode's
//! arguments), the reply goes into its device-writable bytes, in any descriptor layout.
//! Before the library's parser sees a request its header is read and its opcode checked
//! against the ones a Linux guest sends; anything else is answered ENOSYS here. Whatever
//! goes wrong afterwards (a malformed body, a reply that does not fit, a descriptor outside
//! guest memory, a panic in the library) the guest gets an error reply when its chain has
//! room for one, and used length 0 when it has not: never a hang, never a stopped VM.

use super::share::ShareFs;
use crate::GuestMemory;
use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes};

/// The opcodes served; the rest are answered ENOSYS without being parsed.
const SERVED: &[Opcode] = &[
    Opcode::Lookup,
    Opcode::Forget,
    Opcode::Getattr,
    Opcode::Setattr,
    Opcode::Readlink,
    Opcode::Symlink,
    Opcode::Mknod,
    Opcode::Mkdir,
    Opcode::Unlink,
    Opcode::Rmdir,
    Opcode::Rename,
    Opcode::Link,
    Opcode::Open,
    Opcode::Read,
    Opcode::Write,
    Opcode::Statfs,
    Opcode::Release,
    Opcode::Fsync,
    Opcode::Setxattr,
    Opcode::Getxattr,
    Opcode::Listxattr,
    Opcode::Removexattr,
    Opcode::Flush,
    Opcode::Init,
    Opcode::Opendir,
    Opcode::Readdir,
    Opcode::Releasedir,
    Opcode::Fsyncdir,
    Opcode::Access,
    Opcode::Create,
    Opcode::Interrupt,
    Opcode::Destroy,
    Opcode::BatchForget,
    Opcode::Fallocate,
    Opcode::Readdirplus,
    Opcode::Rename2,
    Opcode::Lseek,
];

/// Requests the guest expects no reply to.
const UNANSWERED: &[Opcode] = &[Opcode::Forget, Opcode::BatchForget, Opcode::Interrupt];

fn is(opcode: u32, set: &[Opcode]) -> bool {
    set.iter().any(|&op| op as u32 == opcode)
}

/// Serves the request in `chain`; returns the used length (bytes of reply written).
pub(super) fn handle(
    server: &Server<ShareFs>,
    chain: DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
) -> u32 {
    let header = Reader::from_descriptor_chain(mem, chain.clone())
        .ok()
        .and_then(|mut r| r.read_obj::<InHeader>().ok());
    let Some(header) = header else {
        return reply_error(mem, &chain, 0, libc::EINVAL);
    };
    let answer = |errno| {
        if is(header.opcode, UNANSWERED) {
            0
        } else {
            reply_error(mem, &chain, header.unique, errno)
        }
    };
    if !is(header.opcode, SERVED) {
        return answer(libc::ENOSYS);
    }
    let (Ok(reader), Ok(writer)) = (
        Reader::from_descriptor_chain(mem, chain.clone()),
        VirtioFsWriter::new(mem, chain.clone()),
    ) else {
        return answer(libc::EFAULT);
    };
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        server.handle_message(reader, Writer::VirtioFs(writer), None, None)
    }));
    match served {
        Ok(Ok(len)) => u32::try_from(len).unwrap_or(0),
        Ok(Err(e)) => answer(errno_of(&e)),
        Err(_) => answer(libc::EIO),
    }
}

fn errno_of(e: &fuse_backend_rs::Error) -> i32 {
    use fuse_backend_rs::Error::*;
    match e {
        InvalidMessage(e) | DecodeMessage(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
        EncodeMessage(_) | FailedToWrite(_) | FailedToSplitWriter(_) => libc::EIO,
        _ => libc::EINVAL,
    }
}

/// Writes a `fuse_out_header` carrying `-errno` at the start of the chain's writable bytes;
/// returns its length, or 0 when the chain has no room for it inside guest memory.
fn reply_error(
    mem: &GuestMemory,
    chain: &DescriptorChain<&GuestMemory>,
    unique: u64,
    errno: i32,
) -> u32 {
    let out = OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    };
    let bytes = out.as_slice();
    let mut at = 0;
    for desc in chain.clone().writable() {
        if at == bytes.len() {
            break;
        }
        let n = (desc.len() as usize).min(bytes.len() - at);
        if mem.write_slice(&bytes[at..at + n], desc.addr()).is_err() {
            return 0;
        }
        at += n;
    }
    if at == bytes.len() {
        out.len
    } else {
        0
    }
}
