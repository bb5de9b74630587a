//! BuildKit's plain progress format (`docker build --progress=plain`), which CI logs and
//! people already read: `#N NAME` when a step starts, its output as `#N SECONDS LINE`, and
//! `#N DONE 1.2s`, `#N CACHED` or `#N ERROR: ...` when it ends. It goes to stderr, as
//! docker's does, so that stdout carries only what `-q` asks for.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How many lines of a failing step's output the error summary repeats.
const TAIL_LINES: usize = 10;
/// A line longer than this is printed in pieces rather than buffered whole.
const MAX_LINE: usize = 16 << 10;

pub struct Progress {
    next: AtomicUsize,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress {
            next: AtomicUsize::new(1),
            quiet,
        }
    }

    fn print(&self, line: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }

    /// Starts a step and prints its name.
    pub fn vertex(self: &Arc<Self>, name: &str) -> Vertex {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.print(&format!("#{n} {name}"));
        Vertex {
            n,
            name: name.to_string(),
            started: Instant::now(),
            progress: self.clone(),
            out: Arc::new(Mutex::new(Lines::default())),
        }
    }

    /// A warning between steps (unconsumed build args, deprecated instructions).
    pub fn warn(&self, message: &str) {
        self.print(&format!("WARNING: {message}"));
    }
}

#[derive(Default)]
struct Lines {
    partial: [Vec<u8>; 2],
    tail: VecDeque<String>,
}

pub struct Vertex {
    n: usize,
    name: String,
    started: Instant,
    progress: Arc<Progress>,
    out: Arc<Mutex<Lines>>,
}

impl Vertex {
    /// A sink for the step's output (`stderr` tells the two streams apart, so that a
    /// partial line of one never merges with the other's).
    pub fn sink(&self) -> impl Fn(bool, &[u8]) + Send + Sync + 'static {
        let out = self.out.clone();
        let progress = self.progress.clone();
        let n = self.n;
        let started = self.started;
        move |stderr: bool, data: &[u8]| {
            let mut lines = out.lock().unwrap_or_else(|e| e.into_inner());
            let emit = |lines: &mut Lines, bytes: &[u8]| {
                let text = String::from_utf8_lossy(bytes)
                    .trim_end_matches('\r')
                    .to_string();
                progress.print(&format!(
                    "#{n} {:.3} {text}",
                    started.elapsed().as_secs_f64()
                ));
                if lines.tail.len() == TAIL_LINES {
                    lines.tail.pop_front();
                }
                lines.tail.push_back(text);
            };
            let i = usize::from(stderr);
            let mut rest = data;
            while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
                let mut line = std::mem::take(&mut lines.partial[i]);
                line.extend_from_slice(&rest[..pos]);
                emit(&mut lines, &line);
                rest = &rest[pos + 1..];
            }
            lines.partial[i].extend_from_slice(rest);
            if lines.partial[i].len() > MAX_LINE {
                let line = std::mem::take(&mut lines.partial[i]);
                emit(&mut lines, &line);
            }
        }
    }

    fn flush(&self) {
        let mut lines = self.out.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..2 {
            let line = std::mem::take(&mut lines.partial[i]);
            if !line.is_empty() {
                self.progress.print(&format!(
                    "#{} {:.3} {}",
                    self.n,
                    self.started.elapsed().as_secs_f64(),
                    String::from_utf8_lossy(&line)
                ));
                lines
                    .tail
                    .push_back(String::from_utf8_lossy(&line).into_owned());
            }
        }
    }

    /// A line of the step's own (`writing image ...`).
    pub fn note(&self, text: &str) {
        self.progress.print(&format!("#{} {text}", self.n));
    }

    pub fn done(self) {
        self.flush();
        self.progress.print(&format!(
            "#{} DONE {:.1}s",
            self.n,
            self.started.elapsed().as_secs_f64()
        ));
    }

    pub fn cached(self) {
        self.progress.print(&format!("#{} CACHED", self.n));
    }

    /// Ends the step with an error and prints BuildKit's summary: the step's name and the
    /// last lines of its output between rules. Always printed, even with `-q`.
    pub fn error(self, message: &str) {
        self.flush();
        let lines = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = format!("#{} ERROR: {message}\n------\n > {}:\n", self.n, self.name);
        for l in &lines.tail {
            text += &format!("{l}\n");
        }
        text += "------";
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }
}
