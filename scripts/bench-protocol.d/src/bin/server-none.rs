//! The size baseline: a static Rust program that accepts connections on the Unix socket path
//! given as its argument and closes them, speaking no protocol. What the JSON and ttrpc
//! servers weigh beyond it is what their protocol costs an agent binary.

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).expect("usage: server-none SOCKET");
    for conn in std::os::unix::net::UnixListener::bind(path)?.incoming() {
        drop(conn?);
    }
    Ok(())
}
