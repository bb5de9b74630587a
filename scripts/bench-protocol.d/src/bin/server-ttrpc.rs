//! The smallest faithful stand-in for an agent speaking ttrpc (sync server, rust-protobuf
//! messages): it serves `CreateProcess` and `Wait` forever on the Unix socket path given as
//! its argument. Built static and stripped, its size is what the protocol costs an agent
//! binary.

fn main() {
    let path = std::env::args().nth(1).expect("usage: server-ttrpc SOCKET");
    let _server = bench_protocol::start_ttrpc(&path).expect("start the ttrpc server");
    loop {
        std::thread::park();
    }
}
