//! Linux: eventfd, timerfd and epoll.

use super::Interest;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

pub(super) struct Event(EventFd);

impl Event {
    pub(super) fn new() -> io::Result<Event> {
        EventFd::new(EFD_NONBLOCK).map(Event)
    }

    pub(super) fn signal(&self) -> io::Result<()> {
        match self.0.write(1) {
            // A counter at its maximum is still signalled.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    pub(super) fn consume(&self) -> bool {
        self.0.read().is_ok()
    }

    pub(super) fn try_clone(&self) -> io::Result<Event> {
        self.0.try_clone().map(Event)
    }

    pub(super) fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd's descriptor stays open as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) }
    }
}

pub(super) struct Timer(TimerFd);

impl Timer {
    pub(super) fn new() -> io::Result<Timer> {
        TimerFd::new().map(Timer).map_err(io::Error::from)
    }

    pub(super) fn arm(&mut self, period: Duration) -> io::Result<()> {
        self.0.reset(period, Some(period)).map_err(io::Error::from)
    }

    pub(super) fn disarm(&mut self) -> io::Result<()> {
        self.0.clear().map_err(io::Error::from)
    }

    pub(super) fn consume(&mut self) {
        // A read of a timerfd with no expiration would block; only read a ready one.
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        if unsafe { libc::poll(&mut pfd, 1, 0) } == 1 {
            let _ = self.0.wait();
        }
    }

    pub(super) fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the timerfd's descriptor stays open as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) }
    }
}

pub(super) struct Poller(Epoll);

fn events(interest: Interest) -> EventSet {
    match interest {
        Interest::Read => EventSet::IN,
        Interest::Stream => {
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
        }
    }
}

impl Poller {
    pub(super) fn new() -> io::Result<Poller> {
        Epoll::new().map(Poller)
    }

    pub(super) fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.0.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events(interest), token),
        )
    }

    pub(super) fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.0.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events(interest), token),
        )
    }

    pub(super) fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    pub(super) fn wait(&self, timeout: Option<Duration>, ready: &mut Vec<u64>) -> io::Result<()> {
        let ms = match timeout {
            None => -1,
            Some(t) => i32::try_from(t.as_millis()).unwrap_or(i32::MAX),
        };
        let mut events = [EpollEvent::default(); 64];
        let n = self.0.wait(ms, &mut events)?;
        ready.extend(events[..n].iter().map(|e| e.data()));
        Ok(())
    }
}
