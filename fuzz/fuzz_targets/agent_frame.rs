//! The agent protocol's frame decoder on a hostile byte stream: the guest agent decodes
//! the host's requests, and hk decodes what the (untrusted) guest sends back. Frames are
//! read until the stream ends or is refused, as each message type.
#![no_main]

use hk_agent_protocol::{read_frame, read_frame_value, Hello, Request, Response};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fn drain<T: for<'de> serde::Deserialize<'de>>(data: &[u8]) {
    let mut r = Cursor::new(data);
    while let Ok(Some(_)) = read_frame::<T>(&mut r) {}
}

fuzz_target!(|data: &[u8]| {
    drain::<Request>(data);
    drain::<Response>(data);
    drain::<Hello>(data);
    let mut r = Cursor::new(data);
    while let Ok(Some(_)) = read_frame_value(&mut r) {}
});
