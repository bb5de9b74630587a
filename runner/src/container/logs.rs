//! A container's output, kept as docker's `json-file` log driver keeps it: one JSON object
//! per line, `{"log": "...\n", "stream": "stdout", "time": "RFC 3339 ns"}`, so tools that
//! read docker's logs read hk's. The file rotates at [`MAX_BYTES`] keeping one older file,
//! so a chatty container cannot fill the disk.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const MAX_BYTES: u64 = 32 << 20;
/// A line longer than this is cut into several records, as docker cuts at 16 KiB.
const MAX_LINE: usize = 16 << 10;

/// One record of the log.
#[derive(Serialize, Deserialize)]
pub struct Record {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// Appends records to a container's log; shared by the stdout and stderr pumps.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Mutex<(File, u64)>>,
    path: PathBuf,
}

impl Log {
    pub fn open(path: &Path) -> anyhow::Result<Log> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the log {}", path.display()))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Log {
            inner: Arc::new(Mutex::new((file, len))),
            path: path.to_path_buf(),
        })
    }

    /// A writer for one stream that emits a record per line.
    pub fn stream(&self, name: &'static str) -> StreamLog {
        StreamLog {
            log: self.clone(),
            name,
            pending: Vec::new(),
        }
    }

    fn append(&self, stream: &str, bytes: &[u8]) {
        let record = Record {
            log: String::from_utf8_lossy(bytes).into_owned(),
            stream: stream.to_string(),
            time: super::now(),
        };
        let Ok(mut line) = serde_json::to_vec(&record) else {
            return;
        };
        line.push(b'\n');
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if guard.1 + line.len() as u64 > MAX_BYTES {
            let old = rotated(&self.path);
            if std::fs::rename(&self.path, &old).is_ok() {
                if let Ok(f) = File::options().create(true).append(true).open(&self.path) {
                    *guard = (f, 0);
                }
            }
        }
        // A full disk loses log lines, never the container.
        if guard.0.write_all(&line).is_ok() {
            guard.1 += line.len() as u64;
        }
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

pub struct StreamLog {
    log: Log,
    name: &'static str,
    pending: Vec<u8>,
}

impl StreamLog {
    pub fn write(&mut self, mut data: &[u8]) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&data[..=i]);
            self.log.append(self.name, &self.pending);
            self.pending.clear();
            data = &data[i + 1..];
        }
        self.pending.extend_from_slice(data);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            self.log.append(self.name, &self.pending);
            self.pending = rest;
        }
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.log.append(self.name, &self.pending);
        }
    }
}

pub struct ReadOptions {
    pub tail: Option<usize>,
    pub timestamps: bool,
}

/// Prints the log's records to stdout and stderr by stream. Returns where the current file
/// was read up to, for following.
pub fn print(path: &Path, opts: &ReadOptions) -> anyhow::Result<u64> {
    let (records, end) = read(path, opts.tail);
    for r in &records {
        emit(r, opts.timestamps);
    }
    Ok(end)
}

/// The log's records (the last `tail` of them), and where the current file was read up to.
pub fn read(path: &Path, tail: Option<usize>) -> (VecDeque<Record>, u64) {
    let mut records: VecDeque<Record> = VecDeque::new();
    let mut end = 0;
    for (p, current) in [(rotated(path), false), (path.to_path_buf(), true)] {
        let Ok(f) = File::open(&p) else { continue };
        let mut reader = BufReader::new(f);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).unwrap_or(0);
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            if current {
                end += n as u64;
            }
            if let Ok(r) = serde_json::from_str::<Record>(&line) {
                records.push_back(r);
                if tail.is_some_and(|t| records.len() > t) {
                    records.pop_front();
                }
            }
        }
    }
    (records, end)
}

/// Prints records appended after `from` until `running` says the container stopped.
pub fn follow(
    path: &Path,
    from: u64,
    timestamps: bool,
    running: impl Fn() -> bool,
) -> anyhow::Result<()> {
    follow_with(path, from, running, &mut |r| emit(r, timestamps))
}

/// [`follow`], handing each record to `out`.
pub fn follow_with(
    path: &Path,
    mut from: u64,
    running: impl Fn() -> bool,
    out: &mut dyn FnMut(&Record),
) -> anyhow::Result<()> {
    let mut line = String::new();
    loop {
        let alive = running();
        if let Ok(mut f) = File::open(path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < from {
                from = 0; // rotated
            }
            f.seek(SeekFrom::Start(from))?;
            let mut reader = BufReader::new(f);
            loop {
                line.clear();
                let n = reader.read_line(&mut line).unwrap_or(0);
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                from += n as u64;
                if let Ok(r) = serde_json::from_str::<Record>(&line) {
                    out(&r);
                }
            }
        }
        if !alive {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn emit(r: &Record, timestamps: bool) {
    let text = if timestamps {
        format!("{} {}", r.time, r.log)
    } else {
        r.log.clone()
    };
    // A closed stdout (`hk logs | head`) ends the output quietly.
    let _ = if r.stream == "stderr" {
        std::io::stderr().write_all(text.as_bytes())
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).and_then(|()| out.flush())
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_lines_and_partial_lines_are_kept() {
        let dir = std::env::temp_dir().join(format!("hk-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("container.log");
        let log = Log::open(&path).unwrap();
        {
            let mut out = log.stream("stdout");
            let mut err = log.stream("stderr");
            out.write(b"one\ntw");
            err.write(b"oops\n");
            out.write(b"o\nthree");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let got: Vec<(String, String)> = text
            .lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap())
            .map(|r| (r.stream, r.log))
            .collect();
        let want = [
            ("stdout", "one\n"),
            ("stderr", "oops\n"),
            ("stdout", "two\n"),
            ("stdout", "three"),
        ];
        assert_eq!(
            got,
            want.map(|(s, l)| (s.to_string(), l.to_string())).to_vec()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
