//! Containers on disk: what each one is (its config), what it is doing (its state), and
//! the files it owns. Podman keeps this in a database; hk keeps one directory per container
//! and lets the kernel's locks tell the truth, so that nothing needs repairing after a
//! crash:
//!
//! - `$HK_DATA_DIR/containers/<id>/` (`$XDG_DATA_HOME/hk/...`): `config.json` (written
//!   once), `state.json` (rewritten atomically), the writable layer `upper.ext4`, the
//!   container's output `container.log` and the kernel's `console.log`. Kept across stop
//!   and start; removed by `rm`.
//! - `$HK_DATA_DIR/containers/<id>/lock`: the process that runs the container's VM (its
//!   supervisor) holds an exclusive flock on it for its whole life. The VM lives inside
//!   that process, so "lock held" is exactly "VM running": a supervisor killed with -9
//!   takes its VM with it and drops the lock, and `hk ps` then reports the container as
//!   exited whatever `state.json` last said.
//! - `$HK_DATA_DIR/containers/names/<name>`: a symlink to the ID, created with the
//!   container (symlink creation is atomic, so two `--name x` cannot both win).
//! - `<runtime dir>/run/<id12>/vsock.sock`: the VM's hybrid vsock socket, through which
//!   other hk processes reach its agent (`exec`, `stop`, `kill`). Short, because a Unix
//!   socket path has 108 bytes.

pub mod health;
pub mod logs;
pub mod mounts;
pub mod ports;
pub mod spec;

use crate::host;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a container is: fixed when it is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub id: String,
    pub name: String,
    /// RFC 3339.
    pub created: String,
    /// The image as the user named it, or the `--rootfs` path.
    pub image: String,
    /// The image's ID (`sha256:` of its config), or "" for a `--rootfs` container.
    pub image_id: String,
    /// The read-only root filesystem (ext4) the VM boots on, when not an image's: the
    /// `--rootfs` conversion. An image's is looked up (and locked) at each start.
    pub rootfs: Option<PathBuf>,
    pub process: spec::Process,
    /// The image's Entrypoint and Cmd as combined, for `inspect`'s Path/Args and Config.
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub hostname: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub stop_signal: String,
    pub exposed_ports: Vec<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub read_only: bool,
    pub auto_remove: bool,
    /// The VMM's seccomp filters (`--seccomp off` to debug).
    #[serde(default = "yes")]
    pub seccomp: bool,
    /// `--network`: [`NETWORK_USER`] or [`NETWORK_NONE`].
    #[serde(default = "user_network")]
    pub network: String,
    /// `-p` and `-P`, as given (host port 0: any).
    #[serde(default)]
    pub ports: Vec<ports::Port>,
    /// `--add-host NAME:IP` entries for /etc/hosts.
    #[serde(default)]
    pub add_hosts: Vec<(String, String)>,
    /// `--dns`: name servers instead of the host's.
    #[serde(default)]
    pub dns: Vec<String>,
    /// User-defined networks the container joins at each start (`hk network connect`
    /// edits this while it is stopped; docs/networking.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachment>,
    /// `-v`, `--mount`, `--tmpfs`, checked and in the order they are mounted.
    #[serde(default)]
    pub mounts: Vec<mounts::Mount>,
    /// `--restart` as given (`health::Restart` reads it); the detached supervisor restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// `--health-cmd` and friends; the supervisor probes (see `health`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<health::HealthConfig>,
    /// `--stop-timeout`: seconds `hk stop` waits before SIGKILL when not told `-t`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u64>,
}

/// A container's place on a user-defined network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The network's name.
    pub name: String,
    /// `--network-alias`es: more names the network's DNS answers with its address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// The default network: user-mode networking through passt (docs/networking.md), the
/// host's own sockets, no root.
pub const NETWORK_USER: &str = "passt";
/// Loopback only.
pub const NETWORK_NONE: &str = "none";

fn user_network() -> String {
    NETWORK_USER.into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        }
    }
}

/// What a container is doing, as last written by its supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    /// The supervisor's PID while running.
    pub pid: u32,
    pub exit_code: i32,
    pub error: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The published ports with the host ports chosen at start.
    #[serde(default)]
    pub ports: Vec<ports::Port>,
    /// Restarts made by the restart policy since the container was last started by hand.
    #[serde(default)]
    pub restart_count: u32,
    /// The healthcheck's findings while the container runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<health::Health>,
}

impl Default for State {
    fn default() -> State {
        State {
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: None,
            finished_at: None,
            ports: Vec::new(),
            restart_count: 0,
            health: None,
        }
    }
}

/// Exit code reported for a container whose supervisor died without saying how the
/// container ended (a host crash, kill -9), as docker reports one whose shim died.
pub const EXIT_SUPERVISOR_LOST: i32 = 255;

/// One container's directory.
#[derive(Debug, Clone)]
pub struct Container {
    pub config: Config,
    pub dir: PathBuf,
}

pub fn root() -> PathBuf {
    hk_image::Store::default_root().join("containers")
}

fn names_dir() -> PathBuf {
    root().join("names")
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A random 64-hex-digit ID, as docker's container IDs.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Without entropy, time and pid still make a unique name on this host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..16].copy_from_slice(&t.to_le_bytes());
        bytes[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Container names as docker allows them; they name a file, so nothing else.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 128;
    if !ok {
        bail!("invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
    }
    Ok(())
}

/// docker's generated names are adjective_scientist; hk's are shorter and just as unique
/// in practice: a word and the ID's first hex digits.
fn generated_name(id: &str) -> String {
    const WORDS: &[&str] = &[
        "brave", "calm", "eager", "fond", "keen", "merry", "quiet", "swift", "bold", "wise",
        "jolly", "lucid", "vivid", "witty", "zen", "noble",
    ];
    let i = usize::from_str_radix(&id[..2], 16).unwrap_or(0) % WORDS.len();
    format!("{}_{}", WORDS[i], &id[..8])
}

impl Container {
    /// Creates the container's directory, name and writable layer. The name is claimed
    /// first, so a clash leaves nothing behind.
    pub fn create(mut config: Config) -> anyhow::Result<Container> {
        if config.name.is_empty() {
            config.name = generated_name(&config.id);
        }
        check_name(&config.name)?;
        let names = names_dir();
        fs::create_dir_all(&names).with_context(|| format!("cannot create {}", names.display()))?;
        let link = names.join(&config.name);
        if let Err(e) = std::os::unix::fs::symlink(&config.id, &link) {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                // A name whose container directory is gone (a crash between the two steps
                // of rm) is free again.
                match fs::read_link(&link) {
                    Ok(id) if !root().join(&id).join("config.json").exists() => {
                        let _ = fs::remove_file(&link);
                        return Container::create(config);
                    }
                    _ => {}
                }
                let id = fs::read_link(&link).unwrap_or_default();
                let id = id.to_string_lossy();
                bail!(
                    "the container name \"/{}\" is already in use by container {}: remove it \
                     (hk rm {}) or choose another --name",
                    config.name,
                    &id[..id.len().min(12)],
                    config.name
                );
            }
            return Err(e).with_context(|| format!("cannot create {}", link.display()));
        }
        let dir = root().join(&config.id);
        let made = (|| -> anyhow::Result<()> {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            if !config.read_only {
                empty_ext4(&dir.join("upper.ext4"))?;
            }
            write_json(&dir.join("state.json"), &State::default())?;
            // config.json last: its presence is what makes the directory a container.
            write_json(&dir.join("config.json"), &config)
        })();
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&dir);
            let _ = fs::remove_file(&link);
            return Err(e);
        }
        Ok(Container { config, dir })
    }

    /// A container outside the container list, in `dir` (a build step's): no name, not in
    /// `hk ps`; its owner removes the directory.
    pub fn scratch(config: Config, dir: PathBuf) -> anyhow::Result<Container> {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if !config.read_only {
            empty_ext4(&dir.join("upper.ext4"))?;
        }
        write_json(&dir.join("config.json"), &config)?;
        Ok(Container { config, dir })
    }

    /// A container made with [`Container::scratch`], by its directory.
    pub fn open(dir: PathBuf) -> anyhow::Result<Container> {
        Container::load(dir)
    }

    fn load(dir: PathBuf) -> anyhow::Result<Container> {
        let path = dir.join("config.json");
        let data = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let config = serde_json::from_slice(&data)
            .with_context(|| format!("{} is damaged", path.display()))?;
        Ok(Container { config, dir })
    }

    /// Every container, oldest first.
    pub fn all() -> anyhow::Result<Vec<Container>> {
        let root = root();
        let entries = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
        };
        let mut all = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.len() != 64 || !entry.path().join("config.json").exists() {
                continue;
            }
            match Container::load(entry.path()) {
                Ok(c) => all.push(c),
                Err(e) => eprintln!("WARNING: skipping container {name}: {e:#}"),
            }
        }
        all.sort_by(|a, b| a.config.created.cmp(&b.config.created));
        Ok(all)
    }

    /// By name, full ID or unique ID prefix, as docker finds containers.
    pub fn find(spec: &str) -> anyhow::Result<Container> {
        if check_name(spec).is_ok() {
            if let Ok(id) = fs::read_link(names_dir().join(spec)) {
                if let Ok(c) = Container::load(root().join(id)) {
                    return Ok(c);
                }
            }
        }
        if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found: Vec<Container> = Container::all()?
                .into_iter()
                .filter(|c| c.config.id.starts_with(spec))
                .collect();
            match found.len() {
                1 => return Ok(found.remove(0)),
                0 => {}
                _ => bail!("multiple containers match ID prefix {spec}: give more digits"),
            }
        }
        bail!("no such container: {spec} (hk ps -a lists them)")
    }

    /// Rewrites config.json: only `hk network connect`/`disconnect` change a container's
    /// config after create, and only while it is not running.
    pub fn save_config(&self) -> anyhow::Result<()> {
        write_json(&self.dir.join("config.json"), &self.config)
    }

    pub fn short_id(&self) -> &str {
        &self.config.id[..12]
    }

    pub fn upper(&self) -> Option<PathBuf> {
        (!self.config.read_only).then(|| self.dir.join("upper.ext4"))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("container.log")
    }

    /// Left by `hk stop`, `kill` and `rm -f` so the supervisor does not restart the
    /// container; removed when it is started again.
    pub fn stop_mark(&self) -> PathBuf {
        self.dir.join("stop-requested")
    }

    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Where the VM's hybrid vsock socket is while it runs.
    pub fn runtime_dir(&self) -> PathBuf {
        host::runtime_dir().join("run").join(self.short_id())
    }

    pub fn vsock_socket(&self) -> PathBuf {
        self.runtime_dir().join("vsock.sock")
    }

    fn lock_file(&self) -> anyhow::Result<File> {
        let path = self.dir.join("lock");
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// Becomes this container's supervisor: the returned lock is held until dropped (or
    /// until this process dies).
    pub fn take(&self) -> anyhow::Result<File> {
        let f = self.lock_file()?;
        // `hk ps` and `hk wait` hold the lock shared for a moment to look; retry past them.
        for _ in 0..50 {
            match f.try_lock() {
                Ok(()) => return Ok(f),
                Err(std::fs::TryLockError::WouldBlock) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).context("cannot lock the container")
                }
            }
        }
        bail!("container {} is already running", self.config.name)
    }

    /// Whether a supervisor runs this container now.
    pub fn is_running(&self) -> bool {
        match self.lock_file() {
            Ok(f) => matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }

    /// Blocks until no supervisor runs this container.
    pub fn wait_stopped(&self) -> anyhow::Result<()> {
        let f = self.lock_file()?;
        f.lock_shared().context("cannot wait for the container")?;
        Ok(())
    }

    /// The container's state as it is: a "running" that no supervisor holds is a
    /// supervisor that died.
    pub fn state(&self) -> State {
        let path = self.dir.join("state.json");
        let mut state: State = fs::read(&path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default();
        if state.status == Status::Running && !self.is_running() {
            // Read again: the supervisor may have finished between the two reads.
            state = fs::read(&path)
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok())
                .unwrap_or(state);
            if state.status == Status::Running {
                state.status = Status::Exited;
                state.exit_code = EXIT_SUPERVISOR_LOST;
                state.error = "the container's supervisor died".into();
            }
        }
        state
    }

    pub fn set_state(&self, state: &State) -> anyhow::Result<()> {
        write_json(&self.dir.join("state.json"), state)
    }

    /// Deletes everything the container owns. The caller has made sure it is not running.
    pub fn remove(&self) -> anyhow::Result<()> {
        let _ = fs::remove_dir_all(self.runtime_dir());
        fs::remove_dir_all(&self.dir)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .with_context(|| format!("cannot remove {}", self.dir.display()))?;
        // After the directory: a lease whose container is gone is free anyway, so a
        // failure here loses no address.
        if let Err(e) = crate::network::release_everywhere(&self.config.id) {
            eprintln!("WARNING: {e:#}");
        }
        let link = names_dir().join(&self.config.name);
        if fs::read_link(&link).is_ok_and(|id| id.as_os_str() == self.config.id.as_str()) {
            let _ = fs::remove_file(&link);
        }
        Ok(())
    }
}

/// Size of a container's writable layer: a sparse file, so it costs what is written.
const UPPER_BYTES: u64 = 16 << 30;
const UPPER_INODES: u32 = 1 << 20;

/// An empty ext4 filesystem for the container's writable layer, sparse.
fn empty_ext4(path: &Path) -> anyhow::Result<()> {
    use hk_image::ext4::{convert, Inodes, Layer, Options, Size};
    let opts = Options {
        size: Size::Fixed { bytes: UPPER_BYTES },
        inodes: Inodes::Fixed {
            count: UPPER_INODES,
        },
        label: "hk-upper".into(),
        sync: false,
        ..Options::default()
    };
    convert(std::iter::empty::<Layer<std::io::Empty>>(), path, &opts)
        .with_context(|| format!("cannot create the writable layer {}", path.display()))?;
    Ok(())
}

/// Writes JSON through a temporary file and a rename, so a reader never sees half of it.
fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("web-1").is_ok());
        assert!(check_name("a.b_c").is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
        let id = new_id();
        assert_eq!(id.len(), 64);
        assert!(check_name(&generated_name(&id)).is_ok());
    }
}
