//! A RUN step: a throwaway microVM on the previous step's root (the image's ext4, shared
//! read-only) with a fresh writable layer, the command run by the agent with the stage's
//! environment, user, working directory and shell, and the writable layer handed back by
//! the agent as an OCI layer tar (overlay whiteouts already turned into OCI ones), which
//! goes into the store compressed, with its diff_id and digest.
//!
//! Each step's VM lives in a process of its own (`hk builder step DIR`), as a container's
//! lives in its supervisor: the VMM confines its whole process with seccomp once the VM
//! runs (no exec, so no passt for a next step), and a VM that dies takes only its process.
//! The child passes the command's output through on its stdout and stderr, the layer tar
//! on a pipe (fd 3), and how it ended in `result.json`, opened before the VM starts.

use crate::container::mounts::Mount;
use crate::container::{spec, Config, Container, NETWORK_NONE, NETWORK_USER};
use crate::supervisor::{self, OutputSink};
use anyhow::{bail, Context};
use hk_image::{Image, LayerInfo, Store};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;

pub struct RunSpec {
    pub parent: Image,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: Option<String>,
    /// `RUN --network=none` leaves only loopback; the default is user-mode networking.
    pub network: bool,
    pub mounts: Vec<Mount>,
    pub memory_mib: u64,
    pub cpus: u32,
}

pub enum Outcome {
    /// The command succeeded; its changes, or `None` when it changed nothing.
    Layer(Option<LayerInfo>),
    /// The command failed with this exit code (docker's 126/127 when it could not start).
    Failed(u8),
}

/// How a step's child ended, in its `result.json`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StepResult {
    /// The command's exit code; 0 means the layer tar was sent whole.
    Code(u8),
    Error(String),
}

/// The diff_id of an empty tar (two zero blocks): a step that changed nothing.
const EMPTY_TAR_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
/// The descriptor the step's child writes the layer tar to.
const DIFF_FD: i32 = 3;

pub fn run(store: &Store, spec: RunSpec, sink: OutputSink) -> anyhow::Result<Outcome> {
    // Held (share-locked) while the VM runs, so collection cannot take it; a step's parent
    // is a cache record, not an image record, so the child gets the file itself.
    let root = store.rootfs(&spec.parent)?;
    let id = crate::container::new_id();
    let dir = build_root().join("containers").join(&id);
    let config = Config {
        id: id.clone(),
        name: format!("hk-build-{}", &id[..12]),
        created: crate::container::now(),
        image: spec.parent.config.to_string(),
        image_id: String::new(),
        rootfs: Some(root.path.clone()),
        process: spec::Process {
            argv: spec.argv,
            env: spec.env,
            cwd: spec.cwd,
            user: spec.user,
            tty: false,
            open_stdin: false,
        },
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        // BuildKit's sandbox host name.
        hostname: "buildkitsandbox".into(),
        labels: Default::default(),
        stop_signal: String::new(),
        exposed_ports: Vec::new(),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        read_only: false,
        auto_remove: false,
        seccomp: true,
        network: if spec.network {
            NETWORK_USER
        } else {
            NETWORK_NONE
        }
        .into(),
        ports: Vec::new(),
        add_hosts: Vec::new(),
        dns: Vec::new(),
        networks: Vec::new(),
        mounts: spec.mounts,
        restart: None,
        healthcheck: None,
        stop_timeout: None,
    };
    Container::scratch(config, dir.clone())?;
    let result = run_child(store, &dir, sink);
    let _ = std::fs::remove_dir_all(&dir);
    drop(root);
    let (result, layer) = result?;
    match result {
        StepResult::Error(e) => bail!("{e}"),
        StepResult::Code(0) => {
            let layer = layer.context("the step's changes did not reach the store")?;
            Ok(Outcome::Layer(
                (layer.diff_id.as_str() != EMPTY_TAR_DIFF_ID).then_some(layer),
            ))
        }
        StepResult::Code(code) => Ok(Outcome::Failed(code)),
    }
}

/// Runs `hk builder step DIR` and takes in its output, its layer and its result.
fn run_child(
    store: &Store,
    dir: &Path,
    sink: OutputSink,
) -> anyhow::Result<(StepResult, Option<LayerInfo>)> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locate the hk binary")?;
    let (diff_reader, diff_writer) = std::io::pipe().context("cannot make a pipe")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["builder", "step"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fd = diff_writer.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; it puts the pipe's write end at DIFF_FD in the
    // child (without close-on-exec), where the child expects it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, DIFF_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the step's VM process")?;
    drop(cmd);
    drop(diff_writer);
    let pump = |from: Option<Box<dyn Read + Send>>, stderr: bool, sink: OutputSink| {
        std::thread::spawn(move || {
            let Some(mut from) = from else { return };
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink(stderr, &buf[..n]);
            }
        })
    };
    let out = pump(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        false,
        sink.clone(),
    );
    let err = pump(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        true,
        sink,
    );
    // The layer is read as it comes (the child blocks on a full pipe), on this thread.
    let layer = store.write_layer(diff_reader);
    let status = child
        .wait()
        .context("cannot wait for the step's VM process")?;
    let _ = out.join();
    let _ = err.join();
    let result_path = dir.join("result.json");
    let result = std::fs::read(&result_path)
        .ok()
        .and_then(|d| serde_json::from_slice::<StepResult>(&d).ok())
        .unwrap_or_else(|| {
            StepResult::Error(format!(
                "the step's VM process ended without a result ({status})"
            ))
        });
    let layer = match (&result, layer) {
        (StepResult::Code(0), Ok(l)) => Some(l),
        (StepResult::Code(0), Err(e)) => {
            return Err(anyhow::Error::new(e).context("cannot store the step's changes"))
        }
        _ => None,
    };
    Ok((result, layer))
}

/// `hk builder step DIR`: the child side. Runs the step's container in this process and
/// sends the layer on fd 3 when the command succeeds.
pub fn child(dir: &Path) -> anyhow::Result<ExitCode> {
    let result_path = dir.join("result.json");
    let mut result_file = std::fs::File::create(&result_path)
        .with_context(|| format!("cannot create {}", result_path.display()))?;
    // SAFETY: the parent put the pipe's write end at DIFF_FD and nothing else owns it.
    let mut diff_out = Some(unsafe { std::fs::File::from_raw_fd(DIFF_FD) });
    // Not for passt or any other child of this one: the parent reads until the last
    // writer is gone.
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe { libc::fcntl(DIFF_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let container = Container::open(dir.to_path_buf())?;
    let sink: OutputSink = Arc::new(|stderr: bool, data: &[u8]| {
        let _ = if stderr {
            std::io::stderr().write_all(data)
        } else {
            std::io::stdout().lock().write_all(data)
        };
    });
    let result = supervisor::run_build_step(&container, sink, &mut |client, code| {
        let Some(mut out) = diff_out.take() else {
            return Ok(());
        };
        if code != 0 {
            return Ok(());
        }
        let mut diff = client
            .diff()
            .context("cannot take the step's changes out of the VM")?;
        std::io::copy(&mut diff, &mut out).context("cannot send the step's changes")?;
        diff.finish()
            .context("the step's changes came out of the VM incomplete")?;
        drop(out);
        Ok(())
    });
    drop(diff_out);
    let result = match result {
        Ok(code) => StepResult::Code(code),
        Err(e) => StepResult::Error(format!("{e:#}")),
    };
    let data = serde_json::to_vec(&result)?;
    result_file.write_all(&data)?;
    Ok(ExitCode::SUCCESS)
}

/// Where builds keep what is theirs (step containers, cache mounts), beside the store.
pub fn build_root() -> PathBuf {
    Store::default_root().join("build")
}
