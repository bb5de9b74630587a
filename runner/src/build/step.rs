//! A RUN step: a throwaway microVM on the previous step's root (the image's ext4, shared
//! read-only) with a fresh writable layer, the command run by the agent with the stage's
//! environment, user, working directory and shell, and the writable layer handed back by
//! the agent as an OCI layer tar (overlay whiteouts already turned into OCI ones), which
//! goes into the store compressed, with its diff_id and digest.

use crate::container::mounts::Mount;
use crate::container::{spec, Config, Container, NETWORK_NONE, NETWORK_USER};
use crate::supervisor::{self, OutputSink};
use anyhow::Context;
use hk_image::{Image, LayerInfo, Store};
use std::path::PathBuf;

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

/// The diff_id of an empty tar (two zero blocks): a step that changed nothing.
const EMPTY_TAR_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

pub fn run(store: &Store, spec: RunSpec, sink: OutputSink) -> anyhow::Result<Outcome> {
    let id = crate::container::new_id();
    let dir = build_root().join("containers").join(&id);
    let config = Config {
        id: id.clone(),
        name: format!("hk-build-{}", &id[..12]),
        created: crate::container::now(),
        image: spec.parent.config.to_string(),
        image_id: spec.parent.config.to_string(),
        rootfs: None,
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
    let container = Container::scratch(config, dir.clone())?;
    let mut layer = None;
    let result = supervisor::run_build_step(&container, sink, &mut |client, code| {
        if code != 0 {
            return Ok(());
        }
        let mut diff = client
            .diff()
            .context("cannot take the step's changes out of the VM")?;
        let info = store
            .write_layer(&mut diff)
            .context("cannot store the step's changes")?;
        diff.finish()
            .context("the step's changes came out of the VM incomplete")?;
        layer = Some(info);
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    let code = result?;
    if code != 0 {
        return Ok(Outcome::Failed(code));
    }
    let layer = layer.context("the step's changes were not taken out of the VM")?;
    Ok(Outcome::Layer(
        (layer.diff_id.as_str() != EMPTY_TAR_DIFF_ID).then_some(layer),
    ))
}

/// Where builds keep what is theirs (step containers, cache mounts), beside the store.
pub fn build_root() -> PathBuf {
    Store::default_root().join("build")
}
