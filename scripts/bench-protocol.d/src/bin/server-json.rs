//! The smallest faithful stand-in for an agent speaking hk's framed JSON: it serves
//! `CreateProcess` and `Wait` forever on the Unix socket path given as its argument. Built
//! static and stripped, its size is what the protocol costs an agent binary.

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).expect("usage: server-json SOCKET");
    bench_protocol::serve_json_forever(std::os::unix::net::UnixListener::bind(path)?)
}
