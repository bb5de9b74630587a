//! Wake-ups, timers and waiting for readiness: the one place the device threads and the VMM's
//! loop meet the host OS. Linux has eventfd, timerfd and epoll; macOS (Hypervisor.framework)
//! has none of them, so there a pipe, a kqueue timer and kqueue stand in. Everything above
//! this module sees [`Event`], [`Timer`] and [`Poller`] only.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as sys;

#[cfg(target_os = "macos")]
mod kqueue;
#[cfg(target_os = "macos")]
use kqueue as sys;

// The pipe-based event is macOS's; it is built on Linux too for its unit tests, since it
// uses nothing Linux lacks.
#[cfg(any(target_os = "macos", test))]
mod pipe;

/// A wake-up one thread sends another: any number of signals before the waiter looks count
/// as one. Readable (in a [`Poller`]) while signalled.
pub struct Event(sys::Event);

impl Event {
    pub fn new() -> io::Result<Event> {
        sys::Event::new().map(Event)
    }

    /// Makes the event readable. Never blocks: an event already signalled stays so.
    pub fn signal(&self) -> io::Result<()> {
        self.0.signal()
    }

    /// Takes the pending signal, if any, so the event is no longer readable; whether there
    /// was one. Never blocks.
    pub fn consume(&self) -> bool {
        self.0.consume()
    }

    /// Another handle on the same event (the signaller's end, or the waiter's).
    pub fn try_clone(&self) -> io::Result<Event> {
        self.0.try_clone().map(Event)
    }
}

impl AsRawFd for Event {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl AsFd for Event {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A periodic timer, readable in a [`Poller`] once a period has passed.
pub struct Timer(sys::Timer);

impl Timer {
    /// A timer that is not armed.
    pub fn new() -> io::Result<Timer> {
        sys::Timer::new().map(Timer)
    }

    /// Fires every `period` from now on.
    pub fn arm(&mut self, period: Duration) -> io::Result<()> {
        self.0.arm(period)
    }

    pub fn disarm(&mut self) -> io::Result<()> {
        self.0.disarm()
    }

    /// Takes the expirations so far, so the timer is no longer readable. Never blocks.
    pub fn consume(&mut self) {
        self.0.consume()
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// What a [`Poller`] waits for on a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Readable (or at its end), reported for as long as it is.
    Read,
    /// A stream: readable, writable or hung up, reported once per change (edge-triggered),
    /// so a socket that stays writable does not spin the loop.
    Stream,
}

/// Waits until one of its descriptors is ready and says which, by the token each was added
/// with.
pub struct Poller(sys::Poller);

impl Poller {
    pub fn new() -> io::Result<Poller> {
        sys::Poller::new().map(Poller)
    }

    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.0.add(fd, token, interest)
    }

    /// Changes what `fd` is waited for and the token it is reported as.
    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.0.modify(fd, token, interest)
    }

    /// Stops waiting for `fd` (closing it does that too).
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.0.remove(fd)
    }

    /// Waits at most `timeout` (`None`: as long as it takes) and puts the tokens of the
    /// ready descriptors in `ready`, each once. An interrupted wait returns with none.
    pub fn wait(&self, timeout: Option<Duration>, ready: &mut Vec<u64>) -> io::Result<()> {
        ready.clear();
        match self.0.wait(timeout, ready) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => other?,
        }
        // kqueue reports reading and writing as two events.
        let mut seen = std::collections::HashSet::with_capacity(ready.len());
        ready.retain(|t| seen.insert(*t));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn tokens(poller: &Poller, timeout_ms: u64) -> Vec<u64> {
        let mut ready = Vec::new();
        poller
            .wait(Some(Duration::from_millis(timeout_ms)), &mut ready)
            .unwrap();
        ready.sort();
        ready
    }

    #[test]
    fn an_event_is_readable_from_its_signal_until_it_is_consumed() {
        let poller = Poller::new().unwrap();
        let event = Event::new().unwrap();
        let signaller = event.try_clone().unwrap();
        poller.add(event.as_raw_fd(), 7, Interest::Read).unwrap();
        assert!(tokens(&poller, 0).is_empty());
        signaller.signal().unwrap();
        signaller.signal().unwrap();
        assert_eq!(tokens(&poller, 1000), [7]);
        // Level-triggered: still there until consumed, and one consume takes every signal.
        assert_eq!(tokens(&poller, 0), [7]);
        assert!(event.consume());
        assert!(tokens(&poller, 0).is_empty());
        assert!(!event.consume());
        assert!(tokens(&poller, 0).is_empty());
    }

    #[test]
    fn a_removed_descriptor_is_no_longer_reported() {
        let poller = Poller::new().unwrap();
        let (a, b) = (Event::new().unwrap(), Event::new().unwrap());
        poller.add(a.as_raw_fd(), 1, Interest::Read).unwrap();
        poller.add(b.as_raw_fd(), 2, Interest::Read).unwrap();
        a.signal().unwrap();
        b.signal().unwrap();
        assert_eq!(tokens(&poller, 1000), [1, 2]);
        poller.remove(a.as_raw_fd()).unwrap();
        assert_eq!(tokens(&poller, 0), [2]);
        poller.modify(b.as_raw_fd(), 3, Interest::Read).unwrap();
        assert_eq!(tokens(&poller, 0), [3]);
    }

    #[test]
    fn a_stream_is_reported_once_per_change() {
        let poller = Poller::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        poller.add(b.as_raw_fd(), 5, Interest::Stream).unwrap();
        // Writable once, then quiet although it stays writable.
        assert_eq!(tokens(&poller, 1000), [5]);
        assert!(tokens(&poller, 0).is_empty());
        a.write_all(b"x").unwrap();
        assert_eq!(tokens(&poller, 1000), [5]);
        assert!(tokens(&poller, 0).is_empty());
        drop(a);
        assert_eq!(tokens(&poller, 1000), [5]);
    }

    #[test]
    fn a_timer_fires_each_period_until_disarmed() {
        let poller = Poller::new().unwrap();
        let mut timer = Timer::new().unwrap();
        poller.add(timer.as_raw_fd(), 9, Interest::Read).unwrap();
        assert!(tokens(&poller, 50).is_empty());
        timer.arm(Duration::from_millis(10)).unwrap();
        assert_eq!(tokens(&poller, 1000), [9]);
        timer.consume();
        assert_eq!(tokens(&poller, 1000), [9]);
        timer.disarm().unwrap();
        timer.consume();
        assert!(tokens(&poller, 50).is_empty());
    }

    #[test]
    fn the_pipe_event_signals_and_consumes_as_the_eventfd_does() {
        let event = pipe::Event::new().unwrap();
        let waiter = event.try_clone().unwrap();
        let poller = Poller::new().unwrap();
        poller
            .add(waiter.as_fd().as_raw_fd(), 4, Interest::Read)
            .unwrap();
        assert!(tokens(&poller, 0).is_empty());
        // More signals than a pipe buffer holds never block the signaller.
        for _ in 0..100_000 {
            event.signal().unwrap();
        }
        assert_eq!(tokens(&poller, 1000), [4]);
        assert!(waiter.consume());
        assert!(tokens(&poller, 0).is_empty());
        assert!(!waiter.consume());
        event.signal().unwrap();
        assert_eq!(tokens(&poller, 1000), [4]);
    }
}
