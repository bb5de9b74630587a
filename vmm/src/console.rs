//! A console log that cannot fill the disk: the guest writes as much as it likes to its
//! serial port, and a VM that runs for weeks must not turn that into an unbounded file.
//! [`RotatingLog`] keeps the current file under a size cap and the previous one as
//! `<path>.1`, the way logrotate's `size` rule with `rotate 1` would.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Appends to `path`; once it holds `max_bytes`, it becomes `<path>.1` and a new file
/// starts. Wrap it in a `LineWriter` for one write per console line.
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
}

impl RotatingLog {
    /// Opens (creating or appending to) `path`, rotating at `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<RotatingLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            written,
            max_bytes: max_bytes.max(1),
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, previous(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

fn previous(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written >= self.max_bytes {
            self.rotate()?;
        }
        // A single huge write still lands whole in one file, then rotates next time.
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The last `n` lines of the log at `path`, reaching into `<path>.1` when the current file
/// has fewer.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let read = |p: &Path| -> Vec<String> {
        File::open(p)
            .map(|f| {
                BufReader::new(f)
                    .split(b'\n')
                    .map_while(Result::ok)
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut lines = read(path);
    if lines.len() < n {
        let mut older = read(&previous(path));
        older.append(&mut lines);
        lines = older;
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_at_its_cap_and_keeps_one_old_file() {
        let dir = std::env::temp_dir().join(format!("hk-console-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let mut log = io::LineWriter::new(RotatingLog::open(&path, 1000).unwrap());
        for i in 0..10_000 {
            writeln!(log, "line {i:05} of guest output").unwrap();
        }
        log.flush().unwrap();
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(previous(&path)).unwrap().len();
        assert!(cur <= 1000 + 64 && old <= 1000 + 64, "{cur} {old}");
        let entries = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(entries, 2, "only the log and one rotated file");
        let last = tail(&path, 3);
        assert_eq!(
            last,
            [
                "line 09997 of guest output",
                "line 09998 of guest output",
                "line 09999 of guest output"
            ]
        );
        // More lines than the current file holds come from the rotated one, in order.
        let many = tail(&path, 40);
        assert_eq!(many.last().unwrap(), "line 09999 of guest output");
        assert_eq!(many.len(), 40);
        assert!(many.windows(2).all(|w| w[0] < w[1]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
