//! The device thread of virtio-vsock: moves packets between the guest's queues and the
//! host ends of its connections (Unix stream sockets), and keeps each connection's state.
//!
//! Queues: 0 receive (device to guest), 1 transmit (guest to device), 2 events.
//! A connection is keyed by (host port, guest port). What the device owes the guest (a
//! response, a reset, data, a credit update, a shutdown) is flagged on the connection, and
//! connections with something to send take turns for receive buffers, so one busy
//! connection cannot starve the others.

use super::packet::*;
use super::{HostRequest, Shared, UdsListener, BUF_ALLOC, HOST_CID, MAX_CONNECTIONS, MAX_PKT};
use crate::event::Interest;
use crate::event::Timer;
use crate::virtio::{DeviceWorker, Events, Served};
use crate::GuestMemory;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::{Queue, QueueT};

/// Packets handled per pass in each direction before other work gets a turn.
const BUDGET: usize = 64;
/// Resets owed to the guest for packets that match no connection; more are dropped.
pub(super) const MAX_PENDING_RESETS: usize = 1024;
/// Host clients of the hybrid socket that have not finished their `CONNECT` line.
const MAX_PENDING_CLIENTS: usize = 64;
const CONNECT_LINE_MAX: usize = 32;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const TIMER_TICK: Duration = Duration::from_millis(100);
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const EVENT_TRANSPORT_RESET: u32 = 0;

const TOKEN_WAKE: u64 = 1;
const TOKEN_UDS: u64 = 2;
const TOKEN_TIMER: u64 = 3;
const FIRST_TOKEN: u64 = 16;

/// (host port, guest port).
type Key = (u32, u32);

/// Who waits for a host-initiated connection to be accepted.
enum Waiter {
    InProcess(Sender<io::Result<()>>),
    /// A hybrid-socket client, told with `OK <port>\n`.
    Client,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting { deadline: Instant },
    Established,
}

struct Conn {
    stream: UnixStream,
    token: u64,
    state: State,
    waiter: Waiter,
    /// In the `ready` list.
    queued: bool,
    /// Guest bytes the host socket has not taken yet; bounded by the advertised credit.
    to_host: VecDeque<u8>,
    /// Guest bytes handed to the host socket (virtio's fwd_cnt), and what the guest last
    /// heard of it.
    fwd_cnt: u32,
    fwd_cnt_told: u32,
    /// Host bytes read but not yet sent to the guest.
    from_host: Vec<u8>,
    from_host_at: usize,
    /// Bytes sent to the guest, and the guest's receive buffer and progress.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    send_request: bool,
    send_response: bool,
    send_credit: bool,
    /// Reset the connection: after the packet goes out, it is forgotten.
    send_rst: bool,
    /// SHUTDOWN flags owed to the guest (sent once the data before them is out).
    send_shutdown: u32,
    /// The host will send no more (its socket read end-of-file).
    host_eof: bool,
    /// The host end is closed: nothing can be written to it.
    host_gone: bool,
    /// SHUTDOWN flags the guest sent.
    guest_shut: u32,
    /// The host socket's write side was shut after the guest's SHUTDOWN(SEND).
    host_write_shut: bool,
}

impl Conn {
    fn new(stream: UnixStream, token: u64, state: State, waiter: Waiter) -> Conn {
        Conn {
            stream,
            token,
            state,
            waiter,
            queued: false,
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            from_host: Vec::new(),
            from_host_at: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            send_request: false,
            send_response: false,
            send_credit: false,
            send_rst: false,
            send_shutdown: 0,
            host_eof: false,
            host_gone: false,
            guest_shut: 0,
            host_write_shut: false,
        }
    }

    /// Bytes the guest can still take (virtio 1.2 §5.10.6.3). A guest claiming a huge
    /// buffer changes nothing: reads ahead are bounded by MAX_PKT.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn pending_from_host(&self) -> usize {
        self.from_host.len() - self.from_host_at
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.pending_from_host() > 0
            && self.peer_credit() > 0
            && self.guest_shut & SHUTDOWN_RCV == 0
    }

    fn has_packet(&self) -> bool {
        self.send_rst
            || self.send_request
            || self.send_response
            || self.can_send_data()
            || (self.send_shutdown != 0 && self.pending_from_host() == 0)
            || self.send_credit
    }

    fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.send_rst
            && !self.host_eof
            && !self.host_gone
            && self.pending_from_host() == 0
            && self.peer_credit() > 0
            && self.guest_shut & SHUTDOWN_RCV == 0
    }

    fn wants_write(&self) -> bool {
        !self.host_gone && !self.send_rst && !self.to_host.is_empty()
    }

    /// Tells the guest about freed buffer space once it is worth a packet: a quarter of the
    /// window. A guest out of credit always hears of it: it has a whole window in flight,
    /// so by the time the host took a quarter of that an update is on its way.
    fn note_forwarded(&mut self) {
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= BUF_ALLOC / 4 {
            self.send_credit = true;
        }
    }

    /// Writes what the host socket takes; `Err` when the host end is closed.
    fn flush_to_host(&mut self) -> Result<(), ()> {
        while !self.to_host.is_empty() {
            let (chunk, _) = self.to_host.as_slices();
            match send_nosignal(self.stream.as_raw_fd(), chunk) {
                Ok(0) => return Err(()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        if self.to_host.is_empty() {
            self.to_host.shrink_to(BUF_ALLOC as usize / 4);
        }
        Ok(())
    }

    /// After the guest shut its sending side and its data reached the host: pass the
    /// end-of-file on, and when neither side has more to say, close with a reset (the
    /// spec's way to end a connection).
    fn settle(&mut self) {
        if self.send_rst || !self.to_host.is_empty() {
            return;
        }
        if self.guest_shut & SHUTDOWN_SEND != 0 && !self.host_write_shut && !self.host_gone {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.host_write_shut = true;
        }
        let guest_closed = self.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND;
        let both_done = self.guest_shut & SHUTDOWN_SEND != 0
            && (self.host_eof || self.host_gone)
            && self.pending_from_host() == 0
            && self.send_shutdown == 0;
        if guest_closed || both_done {
            self.send_rst = true;
        }
    }

    /// The host end can take no more data: tell the guest neither side will send.
    fn host_closed(&mut self) {
        self.host_gone = true;
        self.host_eof = true;
        self.to_host.clear();
        self.send_shutdown |= SHUTDOWN_RCV | SHUTDOWN_SEND;
    }

    fn answer(&mut self, result: io::Result<()>) {
        match std::mem::replace(&mut self.waiter, Waiter::None) {
            Waiter::InProcess(reply) => {
                let _ = reply.send(result);
            }
            Waiter::Client | Waiter::None => {}
        }
    }
}

/// A hybrid-socket client that has not finished its `CONNECT <port>\n` line.
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

enum Source {
    Conn(Key),
    Client,
}

/// What goes into the next receive buffer.
enum Next {
    Reset,
    Conn(Key),
}

pub struct VsockWorker {
    cid: u64,
    shared: Arc<Shared>,
    uds: Option<Arc<UdsListener>>,
    conns: HashMap<Key, Conn>,
    sources: HashMap<u64, Source>,
    clients: HashMap<u64, Client>,
    next_token: u64,
    /// Host ports of host-initiated connections.
    local_ports: HashSet<u32>,
    next_port: u32,
    resets: VecDeque<Header>,
    ready: VecDeque<Key>,
    timer: Option<Timer>,
    timer_armed: bool,
    send_transport_reset: bool,
    buf: Vec<u8>,
}

impl VsockWorker {
    pub(super) fn new(cid: u64, shared: Arc<Shared>, uds: Option<Arc<UdsListener>>) -> Self {
        VsockWorker {
            cid,
            shared,
            uds,
            conns: HashMap::new(),
            sources: HashMap::new(),
            clients: HashMap::new(),
            next_token: FIRST_TOKEN,
            local_ports: HashSet::new(),
            // Firecracker's convention: host-side ports of host-initiated connections start
            // at 2^30, away from the well-known ones guests listen on.
            next_port: 1 << 30,
            resets: VecDeque::new(),
            ready: VecDeque::new(),
            timer: None,
            timer_armed: false,
            send_transport_reset: false,
            buf: vec![0; MAX_PKT],
        }
    }

    fn token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    fn header(&self, key: Key, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            kind: TYPE_STREAM,
            op,
            ..Header::default()
        }
    }

    /// A reset for a guest packet that matches no connection.
    fn queue_reset(&mut self, to: &Header) {
        if to.op == OP_RST || self.resets.len() >= MAX_PENDING_RESETS {
            return;
        }
        self.resets.push_back(Header {
            src_cid: to.dst_cid,
            dst_cid: self.cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            kind: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        });
    }

    fn schedule(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.queued && conn.has_packet() {
                conn.queued = true;
                self.ready.push_back(key);
            }
        }
    }

    /// Moves what can move between the connection and its host socket, then queues what the
    /// guest is owed. Sockets are watched edge-triggered, so this runs after every change
    /// that may let data flow (new credit, a delivered packet), not only on socket events.
    fn pump(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let State::Connecting { .. } = conn.state {
            // The host gave up before the guest answered (its end closed).
            if at_eof(conn.stream.as_raw_fd()) {
                conn.answer(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the host end closed",
                )));
                conn.send_rst = true;
                conn.host_gone = true;
            }
            self.schedule(key);
            return;
        }
        if conn.wants_write() && conn.flush_to_host().is_err() {
            conn.host_closed();
        }
        conn.note_forwarded();
        if conn.wants_read() {
            let want = (conn.peer_credit() as usize).min(MAX_PKT);
            conn.from_host.resize(want, 0);
            conn.from_host_at = 0;
            match conn.stream.read(&mut conn.from_host) {
                Ok(0) => {
                    conn.from_host.clear();
                    conn.host_eof = true;
                    conn.send_shutdown |= SHUTDOWN_SEND;
                }
                Ok(n) => conn.from_host.truncate(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    conn.from_host.clear()
                }
                Err(_) => {
                    conn.from_host.clear();
                    conn.host_closed();
                }
            }
        }
        conn.settle();
        self.schedule(key);
    }

    /// Adds a connection; on failure hands back who waits for it.
    fn insert(&mut self, key: Key, conn: Conn, events: &Events) -> Result<(), Waiter> {
        let watch = Interest::Stream;
        if events
            .add(conn.stream.as_raw_fd(), conn.token, watch)
            .is_err()
        {
            return Err(conn.waiter);
        }
        self.sources.insert(conn.token, Source::Conn(key));
        self.conns.insert(key, conn);
        self.pump(key);
        Ok(())
    }

    fn remove(&mut self, key: Key, events: &Events) {
        if let Some(mut conn) = self.conns.remove(&key) {
            let _ = events.remove(conn.stream.as_raw_fd());
            self.sources.remove(&conn.token);
            self.local_ports.remove(&key.0);
            conn.answer(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the vsock connection was reset",
            )));
        }
    }

    fn arm_timer(&mut self) {
        if self.timer_armed {
            return;
        }
        if let Some(timer) = self.timer.as_mut() {
            if timer.arm(TIMER_TICK).is_ok() {
                self.timer_armed = true;
            }
        }
    }

    fn local_port(&mut self) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(1 << 30);
            if !self.local_ports.contains(&port) {
                self.local_ports.insert(port);
                return port;
            }
        }
    }

    /// A host-initiated connection to guest `port`, over `stream`.
    fn connect(
        &mut self,
        port: u32,
        stream: UnixStream,
        waiter: Waiter,
        deadline: Instant,
        events: &Events,
    ) -> Result<Key, Waiter> {
        if self.conns.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
            return Err(waiter);
        }
        let key = (self.local_port(), port);
        let token = self.token();
        let mut conn = Conn::new(stream, token, State::Connecting { deadline }, waiter);
        conn.send_request = true;
        if let Err(waiter) = self.insert(key, conn, events) {
            self.local_ports.remove(&key.0);
            return Err(waiter);
        }
        self.arm_timer();
        Ok(key)
    }

    fn host_requests(&mut self, events: &Events) {
        self.shared.wake.consume();
        let requests = std::mem::take(
            &mut *self
                .shared
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for request in requests {
            match request {
                HostRequest::Connect {
                    port,
                    stream,
                    reply,
                    deadline,
                } => {
                    if let Err(Waiter::InProcess(reply)) =
                        self.connect(port, stream, Waiter::InProcess(reply), deadline, events)
                    {
                        let _ = reply.send(Err(io::Error::other(format!(
                            "vsock: {MAX_CONNECTIONS} connections are open"
                        ))));
                    }
                }
                HostRequest::ResetAll => {
                    let keys: Vec<Key> = self.conns.keys().copied().collect();
                    for key in keys {
                        self.remove(key, events);
                    }
                    self.resets.clear();
                    self.ready.clear();
                    self.send_transport_reset = true;
                }
            }
        }
    }

    fn accept_clients(&mut self, events: &Events) {
        let Some(uds) = self.uds.clone() else {
            return;
        };
        loop {
            let stream = match uds.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.clients.len() >= MAX_PENDING_CLIENTS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.token();
            if events
                .add(stream.as_raw_fd(), token, Interest::Read)
                .is_err()
            {
                continue;
            }
            self.sources.insert(token, Source::Client);
            self.clients.insert(
                token,
                Client {
                    stream,
                    line: Vec::new(),
                    deadline: Instant::now() + CLIENT_TIMEOUT,
                },
            );
            self.arm_timer();
        }
    }

    fn drop_client(&mut self, token: u64, events: &Events) -> Option<Client> {
        self.sources.remove(&token);
        let client = self.clients.remove(&token)?;
        let _ = events.remove(client.stream.as_raw_fd());
        Some(client)
    }

    /// Reads a client's `CONNECT <port>\n`; then it becomes a connection.
    fn client_readable(&mut self, token: u64, events: &Events) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let mut chunk = [0u8; CONNECT_LINE_MAX];
        let n = match client.stream.read(&mut chunk) {
            Ok(0) => {
                self.drop_client(token, events);
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(_) => {
                self.drop_client(token, events);
                return;
            }
        };
        client.line.extend_from_slice(&chunk[..n]);
        let Some(end) = client.line.iter().position(|&b| b == b'\n') else {
            if client.line.len() > CONNECT_LINE_MAX {
                self.drop_client(token, events);
            }
            return;
        };
        let Some(client) = self.drop_client(token, events) else {
            return;
        };
        let port = std::str::from_utf8(&client.line[..end])
            .ok()
            .and_then(|line| line.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|port| port.trim().parse::<u32>().ok());
        let Some(port) = port else {
            return;
        };
        // Bytes the client sent after its line go to the guest once it accepts.
        let early = client.line[end + 1..].to_vec();
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        if let Ok(key) = self.connect(port, client.stream, Waiter::Client, deadline, events) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.from_host = early;
            }
        }
    }

    fn tick(&mut self, events: &Events) {
        if let Some(timer) = self.timer.as_mut() {
            timer.consume();
        }
        let now = Instant::now();
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Connecting { deadline } if deadline <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.answer(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("vsock port {}: the guest did not answer", key.1),
                )));
            }
            self.remove(key, events);
        }
        let stale: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in stale {
            self.drop_client(token, events);
        }
        let waiting = !self.clients.is_empty()
            || self
                .conns
                .values()
                .any(|c| matches!(c.state, State::Connecting { .. }));
        if !waiting {
            if let Some(timer) = self.timer.as_mut() {
                if timer.disarm().is_ok() {
                    self.timer_armed = false;
                }
            }
        }
    }

    /// A guest REQUEST to a host port with no connection yet.
    fn accept_guest(&mut self, hdr: &Header, events: &Events) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.queue_reset(hdr);
            return;
        }
        let port = hdr.dst_port;
        let stream = {
            let mut listeners = self
                .shared
                .listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match listeners.get(&port) {
                Some(tx) => match UnixStream::pair() {
                    Ok((ours, theirs)) => {
                        if tx.send(theirs).is_ok() {
                            Some(ours)
                        } else {
                            listeners.remove(&port);
                            None
                        }
                    }
                    Err(_) => None,
                },
                None => None,
            }
        };
        let stream = stream.or_else(|| {
            let uds = self.uds.as_ref()?;
            let mut path = uds.path.clone().into_os_string();
            path.push(format!("_{port}"));
            connect_nonblocking(Path::new(&path)).ok()
        });
        let Some(stream) = stream.filter(|s| s.set_nonblocking(true).is_ok()) else {
            self.queue_reset(hdr);
            return;
        };
        let token = self.token();
        let mut conn = Conn::new(stream, token, State::Established, Waiter::None);
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        conn.send_response = true;
        if self.insert((port, hdr.src_port), conn, events).is_err() {
            self.queue_reset(hdr);
        }
    }

    /// One packet from the guest, its payload in `payload`.
    fn guest_packet(&mut self, hdr: &Header, payload: &[u8], events: &Events) {
        if hdr.src_cid != self.cid {
            // Spoofed: nothing to answer to.
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.kind != TYPE_STREAM {
            self.queue_reset(hdr);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                OP_REQUEST => self.accept_guest(hdr, events),
                _ => self.queue_reset(hdr),
            }
            return;
        };
        if conn.send_rst {
            // Already being reset: the guest will hear of it.
            return;
        }
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        match (conn.state, hdr.op) {
            (_, OP_RST) => {
                conn.answer(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("vsock port {}: refused by the guest", key.1),
                )));
                self.remove(key, events);
                return;
            }
            (State::Connecting { .. }, OP_RESPONSE) => {
                conn.state = State::Established;
                if let Waiter::Client = conn.waiter {
                    let line = format!("OK {}\n", key.0);
                    if send_nosignal(conn.stream.as_raw_fd(), line.as_bytes()).ok()
                        != Some(line.len())
                    {
                        conn.send_rst = true;
                    }
                }
                conn.answer(Ok(()));
            }
            (State::Established, OP_RW) => {
                let fits = conn.to_host.len() + payload.len() <= BUF_ALLOC as usize;
                if conn.guest_shut & SHUTDOWN_SEND != 0 || !fits || conn.host_gone {
                    // Data after its own shutdown, past its credit, or to a closed host end.
                    conn.send_rst = true;
                } else {
                    let mut sent = 0;
                    if conn.to_host.is_empty() {
                        match send_nosignal(conn.stream.as_raw_fd(), payload) {
                            Ok(n) => sent = n,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                                ) => {}
                            Err(_) => conn.send_rst = true,
                        }
                        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(sent as u32);
                    }
                    if !conn.send_rst {
                        conn.to_host.extend(&payload[sent..]);
                        conn.note_forwarded();
                    }
                }
            }
            (State::Established, OP_CREDIT_UPDATE) => {}
            (State::Established, OP_CREDIT_REQUEST) => conn.send_credit = true,
            (State::Established, OP_SHUTDOWN) => {
                conn.guest_shut |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if conn.guest_shut & SHUTDOWN_RCV != 0 {
                    conn.from_host.clear();
                    conn.from_host_at = 0;
                }
                conn.settle();
            }
            // A second REQUEST, a stray RESPONSE, an unknown op, or anything but an answer
            // while connecting: the connection cannot be trusted any more.
            _ => {
                conn.answer(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("vsock port {}: protocol error from the guest", key.1),
                )));
                conn.send_rst = true;
            }
        }
        self.pump(key);
    }

    /// Drains the transmit queue: each chain is one packet, header then payload.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemory, events: &Events) -> Served {
        let mut used = false;
        let mut budget = BUDGET;
        let mut buf = std::mem::take(&mut self.buf);
        while budget > 0 {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let packet = read_packet(chain, mem, &mut buf);
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
            budget -= 1;
            match packet {
                Ok((hdr, len)) => self.guest_packet(&hdr, &buf[..len], events),
                // A header whose payload is missing or too big: reset what it names.
                Err(Some(hdr)) => {
                    let key = (hdr.dst_port, hdr.src_port);
                    if hdr.src_cid == self.cid && self.conns.contains_key(&key) {
                        if let Some(conn) = self.conns.get_mut(&key) {
                            conn.send_rst = true;
                        }
                        self.schedule(key);
                    } else {
                        self.queue_reset(&hdr);
                    }
                }
                Err(None) => {}
            }
        }
        self.buf = buf;
        Served {
            notify: used && queue.needs_notification(mem).unwrap_or(true),
            more: budget == 0,
            config: false,
        }
    }

    /// Picks what the next receive buffer carries, without taking it yet.
    fn next(&mut self) -> Option<Next> {
        if !self.resets.is_empty() {
            return Some(Next::Reset);
        }
        while let Some(key) = self.ready.pop_front() {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.queued = false;
                if conn.has_packet() {
                    return Some(Next::Conn(key));
                }
            }
        }
        None
    }

    /// Fills receive buffers with what the guest is owed, round-robin over connections.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemory, events: &Events) -> Served {
        let mut used = false;
        let mut budget = BUDGET;
        while budget > 0 {
            let Some(next) = self.next() else {
                break;
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // No buffer: the guest notifies when it adds some.
                if let Next::Conn(key) = next {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        conn.queued = true;
                        self.ready.push_front(key);
                    }
                }
                break;
            };
            let head = chain.head_index();
            budget -= 1;
            used = true;
            let mut writer = match chain.writer(mem) {
                Ok(w) if w.available_bytes() >= HEADER_LEN => w,
                // A buffer that cannot hold a header is returned unused; the packet waits.
                _ => {
                    if queue.add_used(mem, head, 0).is_err() {
                        break;
                    }
                    if let Next::Conn(key) = next {
                        self.schedule(key);
                    }
                    continue;
                }
            };
            let room = writer.available_bytes() - HEADER_LEN;
            let len = match next {
                Next::Reset => {
                    let hdr = self.resets.pop_front().expect("a reset is queued");
                    writer.write_all(&hdr.bytes()).map(|()| 0)
                }
                Next::Conn(key) => self.write_packet(key, &mut writer, room, events),
            };
            let len = match len {
                Ok(payload) => (HEADER_LEN + payload) as u32,
                Err(_) => 0,
            };
            if queue.add_used(mem, head, len).is_err() {
                break;
            }
        }
        Served {
            notify: used && queue.needs_notification(mem).unwrap_or(true),
            more: budget == 0,
            config: false,
        }
    }

    /// Writes connection `key`'s most urgent packet; returns its payload length.
    fn write_packet(
        &mut self,
        key: Key,
        writer: &mut virtio_queue::Writer<'_>,
        room: usize,
        events: &Events,
    ) -> io::Result<usize> {
        let mut hdr = self.header(key, 0);
        let conn = self
            .conns
            .get_mut(&key)
            .expect("scheduled connections exist");
        let mut payload = 0;
        let mut forget = false;
        if conn.send_rst {
            hdr.op = OP_RST;
            forget = true;
        } else if conn.send_request {
            hdr.op = OP_REQUEST;
            conn.send_request = false;
        } else if conn.send_response {
            hdr.op = OP_RESPONSE;
            conn.send_response = false;
        } else if conn.can_send_data() {
            hdr.op = OP_RW;
            payload = conn
                .pending_from_host()
                .min(room)
                .min(conn.peer_credit() as usize);
            hdr.len = payload as u32;
        } else if conn.send_shutdown != 0 && conn.pending_from_host() == 0 {
            hdr.op = OP_SHUTDOWN;
            hdr.flags = conn.send_shutdown;
            conn.send_shutdown = 0;
        } else {
            hdr.op = OP_CREDIT_UPDATE;
        }
        // Every packet tells the guest the device's buffer space.
        hdr.buf_alloc = BUF_ALLOC;
        hdr.fwd_cnt = conn.fwd_cnt;
        conn.fwd_cnt_told = conn.fwd_cnt;
        conn.send_credit = false;
        let result = writer.write_all(&hdr.bytes()).and_then(|()| {
            let at = conn.from_host_at;
            writer.write_all(&conn.from_host[at..at + payload])
        });
        if result.is_ok() && payload > 0 {
            conn.from_host_at += payload;
            conn.tx_cnt = conn.tx_cnt.wrapping_add(payload as u32);
            if conn.pending_from_host() == 0 {
                conn.from_host.clear();
                conn.from_host_at = 0;
            }
        }
        if hdr.op == OP_SHUTDOWN {
            conn.settle();
        }
        if forget {
            self.remove(key, events);
        } else {
            self.pump(key);
        }
        result.map(|()| payload)
    }

    /// Tells the guest its transport was reset, once, if it gave an event buffer.
    fn event_queue(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Served {
        if !self.send_transport_reset {
            return Served::default();
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return Served::default();
        };
        let head = chain.head_index();
        let len = match chain.writer(mem) {
            Ok(mut w) if w.available_bytes() >= 4 => w
                .write_all(&EVENT_TRANSPORT_RESET.to_le_bytes())
                .map_or(0, |()| 4),
            _ => 0,
        };
        self.send_transport_reset = false;
        if queue.add_used(mem, head, len).is_err() {
            return Served::default();
        }
        Served {
            notify: queue.needs_notification(mem).unwrap_or(true),
            more: false,
            config: false,
        }
    }

    fn all_queues(&mut self, queues: &mut [Queue], mem: &GuestMemory, events: &Events) -> Served {
        let mut served = Served::default();
        let [rx, tx, evt] = queues else {
            return served;
        };
        served |= self.transmit(tx, mem, events);
        served |= self.receive(rx, mem, events);
        served |= self.event_queue(evt, mem);
        served
    }
}

impl DeviceWorker for VsockWorker {
    fn init(&mut self, events: &Events) -> io::Result<()> {
        events.add(self.shared.wake.as_raw_fd(), TOKEN_WAKE, Interest::Read)?;
        if let Some(uds) = &self.uds {
            events.add(uds.listener.as_raw_fd(), TOKEN_UDS, Interest::Read)?;
        }
        let timer = Timer::new()?;
        events.add(timer.as_raw_fd(), TOKEN_TIMER, Interest::Read)?;
        self.timer = Some(timer);
        // Requests made before the driver was up are served now.
        let _ = self.shared.wake.signal();
        Ok(())
    }

    fn process(&mut self, queues: &mut [Queue], mem: &GuestMemory, events: &Events) -> Served {
        self.all_queues(queues, mem, events)
    }

    fn event(
        &mut self,
        token: u64,
        queues: &mut [Queue],
        mem: &GuestMemory,
        events: &Events,
    ) -> Served {
        match token {
            TOKEN_WAKE => self.host_requests(events),
            TOKEN_UDS => self.accept_clients(events),
            TOKEN_TIMER => self.tick(events),
            token => match self.sources.get(&token) {
                Some(Source::Conn(key)) => {
                    let key = *key;
                    self.pump(key)
                }
                Some(Source::Client) => self.client_readable(token, events),
                None => {}
            },
        }
        let mut served = Served::default();
        if let [rx, _, evt] = queues {
            served |= self.receive(rx, mem, events);
            served |= self.event_queue(evt, mem);
        }
        served
    }
}

/// Reads one packet: `Ok((header, payload length))` with the payload in `buf`;
/// `Err(Some(header))` when the header is readable but the payload is not (too long, or
/// cut short); `Err(None)` when not even a header is there.
fn read_packet(
    chain: virtio_queue::DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
    buf: &mut [u8],
) -> Result<(Header, usize), Option<Header>> {
    let mut reader = chain.reader(mem).map_err(|_| None)?;
    let mut raw = [0u8; HEADER_LEN];
    reader.read_exact(&mut raw).map_err(|_| None)?;
    let hdr = Header::parse(&raw);
    let len = hdr.len as usize;
    if len > buf.len() || reader.available_bytes() < len {
        return Err(Some(hdr));
    }
    reader.read_exact(&mut buf[..len]).map_err(|_| Some(hdr))?;
    Ok((hdr, len))
}

/// Whether the socket's peer has shut its sending side and everything it sent was read.
fn at_eof(fd: RawFd) -> bool {
    let mut probe = 0u8;
    // SAFETY: a one-byte peek into `probe`; nothing is consumed.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut probe as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

/// send(2) with MSG_NOSIGNAL: a host end that closed must give EPIPE, not kill the VMM
/// with SIGPIPE (an embedding program may not ignore it).
fn send_nosignal(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which send only reads.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking, close-on-exec Unix stream socket.
#[cfg(target_os = "linux")]
fn stream_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket this function owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking, close-on-exec Unix stream socket (macOS has no SOCK_NONBLOCK, and no
/// MSG_NOSIGNAL: SO_NOSIGPIPE keeps a write to a closed peer from raising SIGPIPE).
#[cfg(not(target_os = "linux"))]
fn stream_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: fcntl and setsockopt on a descriptor this function owns, with a live value of
    // the size given.
    let ok = unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) == 0
            && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) == 0
            && libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NOSIGPIPE,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
    };
    if !ok {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Connects to a Unix stream socket without blocking: a listener whose backlog is full
/// refuses instead of stalling the device thread.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is a valid value to fill in.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let fd = stream_socket()?;
    // SAFETY: `addr` is a valid sockaddr_un and the length is its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}
