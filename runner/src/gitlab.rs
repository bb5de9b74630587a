//! `hk gitlab config|prepare|run|cleanup`: a driver for GitLab Runner's custom executor
//! (docs/gitlab.md), one microVM per job. Each stage is a separate hk process that the
//! runner starts with the job's variables as `CUSTOM_ENV_*`; they agree on the job's VM by
//! its name, made from those variables, so no stage needs state from another and `cleanup`
//! finds the VM whatever happened before it (a crashed `prepare`, a killed `run`).
//!
//! The VM is an ordinary detached container (`hk run -d`), kept running by an idle main
//! process; each stage's script is a process started in it through the agent, fed the
//! runner's script on stdin, as the runner's docker executor feeds its containers.
//! Failures follow the contract: the job's own failure exits with `BUILD_FAILURE_EXIT_CODE`,
//! hk's or the VM's with `SYSTEM_FAILURE_EXIT_CODE` (which the runner retries for prepare).

use crate::container::{self, Container};
use crate::supervisor::{self, ProcessIo};
use anyhow::{bail, Context};
use hk_agent_protocol::ProcessSpec;
use nix::sys::signal::{SigSet, Signal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum GitlabCommand {
    /// config_exec: print the settings the runner reads (JSON)
    Config,
    /// prepare_exec: pull the job's image and start the job's microVM
    Prepare(PrepareArgs),
    /// run_exec: run one stage's script (from the runner) in the job's microVM
    Run(RunArgs),
    /// cleanup_exec: remove the job's microVM and its state; safe to repeat
    Cleanup,
}

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// The image for jobs that name none (`image:` in .gitlab-ci.yml)
    #[arg(long, env = "HK_GITLAB_DEFAULT_IMAGE", value_name = "IMAGE")]
    default_image: Option<String>,
    /// The gitlab-runner binary to share read-only with each job's VM, where the runner's
    /// cache and artifact stages look for it (`gitlab-runner` on the job's PATH)
    #[arg(long, env = "HK_GITLAB_HELPER", value_name = "PATH")]
    helper: Option<PathBuf>,
    /// vCPUs of each job's VM (hk run's default when not given)
    #[arg(long, env = "HK_GITLAB_CPUS")]
    cpus: Option<u32>,
    /// Memory of each job's VM, as hk run --memory (hk run's default when not given)
    #[arg(long, env = "HK_GITLAB_MEMORY")]
    memory: Option<String>,
    /// When to pull the job's image: missing, always or never
    #[arg(long, env = "HK_GITLAB_PULL", default_value = "missing",
          value_parser = ["missing", "always", "never"])]
    pull: String,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The script the runner generated for this stage
    script: PathBuf,
    /// The stage's name (prepare_script, get_sources, build_script, step_script, ...)
    stage: String,
}

/// Where the runner's scripts put the job's sources and its local cache, inside the VM.
/// Builds live in the VM's own writable layer, which goes with the VM; the cache is a volume
/// per project, mounted at each of the project's jobs.
const BUILDS_DIR: &str = "/builds";
const CACHE_DIR: &str = "/cache";
/// Where the shared gitlab-runner binary appears in the VM (added to the stages' PATH).
const HELPER_DIR: &str = "/opt/hk-gitlab/bin";
/// The job VM's main process: it only keeps the VM up between stages. A shell loop,
/// because every CI image has a shell and not every `sleep` takes `infinity`; SIGTERM (hk
/// stop) ends it at once, and with it the VM.
const IDLE: &str = "while :; do sleep 3600; done";
/// Runs the stage's script, read from stdin, with bash when the image has it, else sh: the
/// runner's docker executor detects the shell the same way.
const SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash; fi; exec sh";
/// After SIGTERM, how long a stage's script may take to end before its VM is stopped.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// The runner's defaults when its variables are missing (documented values).
const DEFAULT_BUILD_FAILURE: u8 = 1;
const DEFAULT_SYSTEM_FAILURE: u8 = 2;

pub fn run(cmd: GitlabCommand) -> anyhow::Result<ExitCode> {
    let result = match cmd {
        GitlabCommand::Config => config(),
        GitlabCommand::Prepare(args) => prepare(args),
        GitlabCommand::Run(args) => run_stage(args),
        GitlabCommand::Cleanup => cleanup(),
    };
    // hk's own failures are system failures for the runner, never docker's 125.
    Ok(result.unwrap_or_else(|e| {
        eprintln!("hk: {e:#}");
        ExitCode::from(system_failure())
    }))
}

/// The exit code the runner passes in `var`, or its documented default.
fn exit_code(var: &str, default: u8) -> u8 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn system_failure() -> u8 {
    exit_code("SYSTEM_FAILURE_EXIT_CODE", DEFAULT_SYSTEM_FAILURE)
}

fn build_failure() -> u8 {
    exit_code("BUILD_FAILURE_EXIT_CODE", DEFAULT_BUILD_FAILURE)
}

/// A job variable as the runner passes it to a custom executor driver (`CUSTOM_ENV_NAME`);
/// empty counts as unset.
fn job_var(name: &str) -> Option<String> {
    std::env::var(format!("CUSTOM_ENV_{name}"))
        .ok()
        .filter(|v| !v.is_empty())
}

/// The job as every stage sees it: the names of its VM and of its project's cache volume.
#[derive(Debug, PartialEq, Eq)]
struct Job {
    id: String,
    vm: String,
    cache_volume: String,
}

impl Job {
    fn from_env() -> anyhow::Result<Job> {
        Job::from_vars(job_var)
    }

    /// The VM is named after the runner, project, concurrency slot and job, so two jobs
    /// running at once (even of one project, on one runner) never share a name, and a
    /// person reading `hk ps` sees whose VM it is. The cache volume is named after the
    /// GitLab server and the project, so every job of the project finds it.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Job> {
        let id = var("CI_JOB_ID").context(
            "CUSTOM_ENV_CI_JOB_ID is not set: hk gitlab runs as GitLab Runner's custom \
             executor driver, which passes the job's variables (docs/gitlab.md)",
        )?;
        let part = |name: &str, fallback: &str| clean(&var(name).unwrap_or(fallback.into()));
        let runner = var("CI_RUNNER_SHORT_TOKEN")
            .or_else(|| var("CI_RUNNER_ID"))
            .unwrap_or("0".into());
        let vm = format!(
            "gitlab-{}-p{}-c{}-j{}",
            clean(&runner),
            part("CI_PROJECT_ID", "0"),
            part("CI_CONCURRENT_PROJECT_ID", "0"),
            clean(&id)
        );
        let cache_volume = format!(
            "gitlab-cache-{}-{}",
            part("CI_SERVER_HOST", "local"),
            part("CI_PROJECT_ID", "0")
        );
        Ok(Job {
            id,
            vm,
            cache_volume,
        })
    }
}

/// Keeps what may appear in a container or volume name; anything else becomes `_`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `config_exec`: the runner reads this JSON from stdout. Builds are never shared between
/// jobs (each has its own VM), so the runner need not add its concurrency ids to the path.
fn config() -> anyhow::Result<ExitCode> {
    let job = Job::from_env()?;
    let out = serde_json::json!({
        "builds_dir": BUILDS_DIR,
        "cache_dir": CACHE_DIR,
        "builds_dir_is_shared": false,
        "hostname": job.vm,
        "driver": { "name": "hk", "version": env!("CARGO_PKG_VERSION") },
        // For the driver's later stages and whoever debugs them: the VM's name in hk ps.
        "job_env": { "HK_GITLAB_VM": job.vm },
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// `prepare_exec`: removes what an earlier attempt left (the runner retries a prepare that
/// failed), pulls the image with the job's credentials, starts the VM and waits until its
/// main process runs.
fn prepare(args: PrepareArgs) -> anyhow::Result<ExitCode> {
    let job = Job::from_env()?;
    if crate::lab::needed() {
        bail!(
            "hk gitlab needs a host with hardware KVM: a job's microVM outlives prepare, and \
             on this kvm-pvm host VMs run in the nested lab, which ends with each hk command"
        );
    }
    let image = job_var("CI_JOB_IMAGE").or(args.default_image).context(
        "the job names no image and hk has no default: set image: in .gitlab-ci.yml, \
             or give prepare_args = [\"--default-image\", \"IMAGE\"] in the runner's config",
    )?;
    // A cancelled or timed-out prepare takes its VM with it (cleanup would, too, but the
    // runner may be slow to call it). Blocked before any thread starts, so one thread
    // takes it; the supervisor blocks and forwards these signals itself.
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    term.thread_block()
        .context("cannot block SIGTERM to handle it")?;
    let vm = job.vm.clone();
    std::thread::spawn(move || {
        if term.wait().is_ok() {
            eprintln!("hk: prepare was cancelled: removing the job's microVM {vm}");
            let _ = remove_vm(&vm);
            std::process::exit(i32::from(system_failure()));
        }
    });
    remove_vm(&job.vm)?;

    let mut argv: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        job.vm.clone(),
        "--hostname".into(),
        job.vm.clone(),
        "--label".into(),
        format!("com.gitlab.job-id={}", job.id),
        "--pull".into(),
        args.pull,
        "--mount".into(),
        format!(
            "type=volume,source={},target={CACHE_DIR},volume-nocopy",
            job.cache_volume
        ),
    ];
    if let Some(helper) = &args.helper {
        argv.push("--mount".into());
        argv.push(format!(
            "type=bind,source={},target={HELPER_DIR},readonly",
            helper_share(helper)?.display()
        ));
    }
    if let Some(cpus) = args.cpus {
        argv.extend(["--cpus".into(), cpus.to_string()]);
    }
    if let Some(memory) = args.memory {
        argv.extend(["--memory".into(), memory]);
    }
    argv.extend([
        "--entrypoint=".into(),
        image.clone(),
        "sh".into(),
        "-c".into(),
        IDLE.into(),
    ]);
    let run_args: crate::run::RunArgs = crate::run::parse_args(&argv)?;
    println!("Starting microVM {} with image {image} (hk)", job.vm);
    let auth = RegistryAuth::for_job(&image)?;
    let started = crate::run::run(run_args);
    drop(auth);
    if started? != ExitCode::SUCCESS {
        bail!("the job's microVM {} did not start (see above)", job.vm);
    }
    let c = Container::find(&job.vm)?;
    make_builds_dir(&c)?;
    Ok(ExitCode::SUCCESS)
}

/// The runner's scripts create their directories under [`BUILDS_DIR`] as the image's user;
/// for an image with a non-root USER, / is not theirs, so the directory is made beforehand,
/// writable by all (the VM is the job's alone).
fn make_builds_dir(c: &Container) -> anyhow::Result<()> {
    let root = |u: &str| matches!(u.split(':').next(), Some("" | "0" | "root"));
    if c.config.process.user.as_deref().is_none_or(root) {
        return Ok(());
    }
    let client = supervisor::connect(c)?;
    let spec = ProcessSpec {
        id: format!("gitlab-builds-{}", &container::new_id()[..12]),
        argv: vec![
            "sh".into(),
            "-c".into(),
            format!("mkdir -p {BUILDS_DIR} && chmod 1777 {BUILDS_DIR}"),
        ],
        env: c.config.process.env.clone(),
        ..ProcessSpec::default()
    };
    let p = client.create(spec)?;
    p.start()?;
    match p.wait()? {
        hk_agent_protocol::ExitStatus::Code(0) => Ok(()),
        other => bail!("cannot create {BUILDS_DIR} in the job's microVM: {other:?}"),
    }
}

/// The registry credentials of the job's image, made visible to hk's pull through a docker
/// config of the job's own (`DOCKER_CONFIG`) for as long as this lives. The docker
/// executor's order: the job's `DOCKER_AUTH_CONFIG`, then the runner host's own docker
/// credentials (`hk login` as the user running the runner), then the job token for the
/// project's GitLab registry (`CI_REGISTRY_USER`/`CI_REGISTRY_PASSWORD` on `CI_REGISTRY`).
struct RegistryAuth {
    dir: Option<PathBuf>,
}

impl RegistryAuth {
    fn for_job(image: &str) -> anyhow::Result<RegistryAuth> {
        let registry = hk_image::ImageRef::parse(image)?.registry().to_string();
        let dir = crate::host::runtime_dir().join(format!("gitlab-auth-{}", std::process::id()));
        let mut auth = RegistryAuth { dir: None };
        if let Some(text) = job_var("DOCKER_AUTH_CONFIG") {
            let config: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
                .context(
                    "the job's DOCKER_AUTH_CONFIG is not a JSON object as in docker's \
                     config.json",
                )?;
            auth.write(&dir, &serde_json::Value::Object(config))?;
            if hk_image::auth::lookup(&registry)?.is_some() {
                return Ok(auth);
            }
            auth.release();
        }
        if hk_image::auth::lookup(&registry)?.is_some() {
            return Ok(auth);
        }
        let ours = job_var("CI_REGISTRY").is_some_and(|r| r == registry);
        if let (true, Some(username), Some(password)) = (
            ours,
            job_var("CI_REGISTRY_USER"),
            job_var("CI_REGISTRY_PASSWORD"),
        ) {
            let config = serde_json::json!({
                "auths": { registry: { "username": username, "password": password } }
            });
            auth.write(&dir, &config)?;
        }
        Ok(auth)
    }

    /// Writes `config` as `dir/config.json` (private) and points docker's lookup there.
    fn write(&mut self, dir: &Path, config: &serde_json::Value) -> anyhow::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        self.dir = Some(dir.to_path_buf());
        let path = dir.join("config.json");
        let mut f = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::io::Write::write_all(&mut f, config.to_string().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        // Rust's own environment calls are serialized, and no other thread is in libc's
        // getenv now: the pull that reads this has not started.
        std::env::set_var("DOCKER_CONFIG", dir);
        Ok(())
    }

    fn release(&mut self) {
        if let Some(dir) = self.dir.take() {
            std::env::remove_var("DOCKER_CONFIG");
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for RegistryAuth {
    fn drop(&mut self) {
        self.release();
    }
}

/// A directory holding only a copy of the gitlab-runner binary, to share with job VMs:
/// sharing the binary's own directory (often /usr/bin) would show the job everything
/// beside it. One copy per version of the binary (its inode, size and mtime), made once
/// and renamed into place whole, so concurrent prepares never see half of it.
fn helper_share(helper: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(helper).with_context(|| {
        format!(
            "the gitlab-runner helper {} cannot be read: fix --helper (HK_GITLAB_HELPER)",
            helper.display()
        )
    })?;
    if !meta.is_file() {
        bail!(
            "the gitlab-runner helper {} is not a file: give the gitlab-runner binary",
            helper.display()
        );
    }
    let root = hk_image::Store::default_root()
        .join("gitlab")
        .join("helper");
    let key = format!(
        "{:x}-{:x}-{:x}.{:x}",
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let dir = root.join(key);
    if dir.join("gitlab-runner").is_file() {
        return Ok(dir);
    }
    let tmp = root.join(format!(".tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let copy = tmp.join("gitlab-runner");
    std::fs::copy(helper, &copy)
        .and_then(|_| std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)))
        .with_context(|| format!("cannot copy {} to {}", helper.display(), copy.display()))?;
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another prepare put the same copy there first.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("gitlab-runner").is_file() {
            bail!("cannot put the gitlab-runner helper in {}", dir.display());
        }
    }
    Ok(dir)
}

/// `run_exec SCRIPT STAGE`: the stage's script in the job's VM, its output streamed to the
/// job log. The script's own failure is the build's; anything else is the system's.
fn run_stage(args: RunArgs) -> anyhow::Result<ExitCode> {
    use std::os::fd::AsRawFd;
    let job = Job::from_env()?;
    let c = Container::find(&job.vm)
        .with_context(|| format!("the job's microVM {} is gone (did prepare fail?)", job.vm))?;
    if !c.is_running() {
        bail!(
            "the job's microVM {} is not running any more (its kernel log: {})",
            job.vm,
            c.console_path().display()
        );
    }
    let script = std::fs::File::open(&args.script)
        .with_context(|| format!("cannot open the runner's script {}", args.script.display()))?;
    // The script becomes hk's stdin, which run_process streams to the shell's.
    // SAFETY: dup2 onto fd 0; both descriptors are valid.
    if unsafe { libc::dup2(script.as_raw_fd(), 0) } < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot read the script");
    }
    drop(script);
    // Blocked before any thread starts; SIGTERM (the runner's cancel or timeout) is this
    // module's to handle, the others go to the script as with hk exec.
    let all = supervisor::forwarded_signals();
    all.thread_block()
        .context("cannot block signals to forward them")?;
    let mut forwarded = all;
    forwarded.remove(Signal::SIGTERM);

    let client = supervisor::connect(&c)?;
    let p = &c.config.process;
    let mut env = p.env.clone();
    if c.config.mounts.iter().any(|m| m.target == HELPER_DIR) {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let path = format!("PATH={path}:{HELPER_DIR}");
        crate::container::spec::set_env(&mut env, &path);
    }
    let id = format!(
        "gitlab-{}-{}",
        clean(&args.stage),
        &container::new_id()[..12]
    );
    let spec = ProcessSpec {
        id: id.clone(),
        argv: vec!["sh".into(), "-c".into(), SHELL.into()],
        env,
        cwd: "/".into(),
        user: p.user.clone(),
        stdin: true,
        ..ProcessSpec::default()
    };
    let done = Arc::new(AtomicBool::new(false));
    let terminated = Arc::new(AtomicBool::new(false));
    {
        let (process, done, terminated) = (client.process(&id), done.clone(), terminated.clone());
        let mut term = SigSet::empty();
        term.add(Signal::SIGTERM);
        std::thread::spawn(move || {
            if term.wait().is_err() {
                return;
            }
            terminated.store(true, Ordering::SeqCst);
            eprintln!("hk: the job was cancelled or timed out: stopping its microVM");
            let _ = process.signal(Signal::SIGTERM as i32);
            let deadline = Instant::now() + TERM_GRACE;
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Err(e) = crate::lifecycle::stop_one(&c, TERM_GRACE) {
                eprintln!("hk: {e:#}");
                std::process::exit(i32::from(system_failure()));
            }
            std::process::exit(i32::from(build_failure()));
        });
    }
    let io = ProcessIo {
        interactive: true,
        tty: false,
        log: None,
        to_terminal: true,
        sink: None,
        started: Default::default(),
    };
    let code = supervisor::run_process(&client, spec, &io, forwarded, None);
    done.store(true, Ordering::SeqCst);
    if terminated.load(Ordering::SeqCst) {
        // The signal thread stops the VM and ends the process.
        loop {
            std::thread::park();
        }
    }
    let code = code?;
    if code == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    // Runners since 16.x read the script's own code from this file (allow_failure:exit_codes).
    if let Ok(file) = std::env::var("BUILD_EXIT_CODE_FILE") {
        if !file.is_empty() {
            let _ = std::fs::write(&file, code.to_string());
        }
    }
    Ok(ExitCode::from(build_failure()))
}

/// `cleanup_exec`: the job's VM and everything it owns go, whether prepare finished, failed
/// half-way or was killed, and whether a stage's hk was killed under it. Nothing to remove
/// is success: the runner may call cleanup after a prepare that never made the VM.
fn cleanup() -> anyhow::Result<ExitCode> {
    let job = Job::from_env()?;
    remove_vm(&job.vm)?;
    Ok(ExitCode::SUCCESS)
}

/// Removes the job's VM if it exists, killing it if it runs: whatever the job left in it
/// is deleted with it, and its cache is on the host already (see `lifecycle::remove_killed`).
fn remove_vm(name: &str) -> anyhow::Result<()> {
    match Container::find(name) {
        Ok(c) => crate::lifecycle::remove_killed(&c)
            .with_context(|| format!("cannot remove the job's microVM {name}")),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn job(vars: &[(&str, &str)]) -> anyhow::Result<Job> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Job::from_vars(|k| vars.get(k).cloned().filter(|v| !v.is_empty()))
    }

    #[test]
    fn names_come_from_the_runner_project_slot_and_job() {
        let j = job(&[
            ("CI_JOB_ID", "1234"),
            ("CI_RUNNER_SHORT_TOKEN", "aB3xYz"),
            ("CI_PROJECT_ID", "42"),
            ("CI_CONCURRENT_PROJECT_ID", "1"),
            ("CI_SERVER_HOST", "gitlab.example.com"),
        ])
        .unwrap();
        assert_eq!(j.vm, "gitlab-aB3xYz-p42-c1-j1234");
        assert_eq!(j.cache_volume, "gitlab-cache-gitlab.example.com-42");
        container::check_name(&j.vm).unwrap();
        crate::container::mounts::check_volume_name(&j.cache_volume).unwrap();
    }

    #[test]
    fn two_concurrent_jobs_of_one_project_get_different_vms_and_one_cache() {
        let a = job(&[("CI_JOB_ID", "1"), ("CI_PROJECT_ID", "7")]).unwrap();
        let b = job(&[
            ("CI_JOB_ID", "2"),
            ("CI_PROJECT_ID", "7"),
            ("CI_CONCURRENT_PROJECT_ID", "1"),
        ])
        .unwrap();
        assert_ne!(a.vm, b.vm);
        assert_eq!(a.cache_volume, b.cache_volume);
    }

    #[test]
    fn odd_characters_cannot_escape_a_name() {
        let j = job(&[
            ("CI_JOB_ID", "9"),
            ("CI_RUNNER_ID", "../x y"),
            ("CI_SERVER_HOST", "h/../../etc"),
        ])
        .unwrap();
        container::check_name(&j.vm).unwrap();
        crate::container::mounts::check_volume_name(&j.cache_volume).unwrap();
        assert!(!j.cache_volume.contains('/'));
    }

    #[test]
    fn a_job_id_is_required() {
        let e = job(&[("CI_PROJECT_ID", "7")]).unwrap_err();
        assert!(format!("{e}").contains("CUSTOM_ENV_CI_JOB_ID"));
    }
}
