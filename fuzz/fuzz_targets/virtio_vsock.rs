//! virtio-vsock's packet paths: fuzzer-filled rx, tx and event queues, with an in-process
//! host listener on port 1024 (the agent protocol's) whose connections the target accepts,
//! sends the host data into and closes, so the device's credit, buffering and shutdown
//! paths run too. With flag bit 2 the host data comes instead from a client of the hybrid
//! Unix socket (Firecracker's convention), so its `CONNECT <port>\n` line, whatever bytes
//! it holds, and the data that follows it go through the device's parser and on to the
//! guest.
#![no_main]

use hk_devices::virtio::vsock::{Vsock, VsockConfig};
use hk_devices::virtio::VirtioDevice;
use hk_fuzz::{run_device, Input};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// One socket path per fuzzing process; the device removes it when it is dropped.
fn hybrid_socket() -> PathBuf {
    std::env::temp_dir().join(format!("hk-fuzz-vsock-{}.sock", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let hybrid = input.flag(0, 2);
    let uds = hybrid.then(hybrid_socket);
    if let Some(path) = &uds {
        // Left behind only if an earlier input crashed this process's predecessor.
        let _ = std::fs::remove_file(path);
    }
    let mut vsock = Vsock::new(&VsockConfig {
        guest_cid: 3,
        uds: uds.clone(),
    })
    .expect("vsock");
    let host = vsock.host();
    let listener = host.listen(1024).expect("listen");
    let features = vsock.features();
    let mut streams = Vec::new();
    let mut sink = vec![0u8; 1 << 16];
    let mut data = input.host;
    if let Some(path) = &uds {
        let mut client = UnixStream::connect(path).expect("hybrid socket");
        client.set_nonblocking(true).expect("nonblocking");
        // The client's line and what follows it, sent before the device runs.
        let _ = client.write(data);
        data = &[];
        streams.push(client);
    }
    let (reset, close) = (input.flag(0, 0), input.flag(0, 1));
    run_device(
        &mut vsock,
        features,
        &input,
        input.rounds() + 2,
        &mut |round| {
            while let Ok(s) = listener.accept(Duration::ZERO) {
                s.set_nonblocking(true).expect("nonblocking");
                streams.push(s);
            }
            for s in &mut streams {
                let _ = s.write(data);
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            }
            if round == 1 {
                if close {
                    streams.clear();
                }
                if reset {
                    let _ = host.reset_all();
                }
            }
        },
    );
});
