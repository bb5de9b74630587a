//! virtio-vsock's packet paths: fuzzer-filled rx, tx and event queues, with an in-process
//! host listener on port 1024 (the agent protocol's) whose connections the target accepts,
//! sends the host data into and closes, so the device's credit, buffering and shutdown
//! paths run too.
#![no_main]

use hk_devices::virtio::vsock::{Vsock, VsockConfig};
use hk_devices::virtio::VirtioDevice;
use hk_fuzz::{run_device, Input};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let mut vsock = Vsock::new(&VsockConfig {
        guest_cid: 3,
        uds: None,
    })
    .expect("vsock");
    let host = vsock.host();
    let listener = host.listen(1024).expect("listen");
    let features = vsock.features();
    let mut streams = Vec::new();
    let mut sink = vec![0u8; 1 << 16];
    let data = input.host;
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
