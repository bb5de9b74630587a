//! virtio-net's transmit and receive paths: fuzzer-filled queues, and the host data as what
//! passt sends (qemu stream framing, parsed by the device's StreamBackend), with or without
//! mergeable receive buffers (control flag 0).
#![no_main]

use hk_devices::virtio::net::{Net, StreamBackend, VIRTIO_NET_F_MRG_RXBUF};
use hk_devices::virtio::VirtioDevice;
use hk_fuzz::{run_device, Input};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let (device_end, mut passt) = UnixStream::pair().expect("socketpair");
    passt.set_nonblocking(true).expect("nonblocking");
    let backend = StreamBackend::new(device_end).expect("backend");
    let mut net =
        Net::new("net0", Box::new(backend), [2, 0, 0, 0, 0, 1], 65520, None).expect("net device");
    let mut features = net.features();
    if !input.flag(0, 0) {
        features &= !VIRTIO_NET_F_MRG_RXBUF;
    }
    let host = input.host;
    let close = input.flag(0, 1);
    let mut sent = 0;
    let mut sink = vec![0u8; 1 << 16];
    run_device(
        &mut net,
        features,
        &input,
        input.rounds() + 1,
        &mut |round| {
            // passt: sends the host data a piece per round and reads what the guest sent.
            let piece = &host[sent..(sent + host.len().div_ceil(4)).min(host.len())];
            if let Ok(n) = passt.write(piece) {
                sent += n;
            }
            while matches!(passt.read(&mut sink), Ok(n) if n > 0) {}
            if close && round == 1 {
                let _ = passt.shutdown(std::net::Shutdown::Both);
            }
        },
    );
});
