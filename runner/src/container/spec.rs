//! What a container runs: the image's config combined with `hk run`'s flags exactly as
//! docker combines them (the ENTRYPOINT/CMD table of the Dockerfile reference, env
//! precedence, `--entrypoint ""`), kept apart from the CLI so it can be tested without a VM.

use anyhow::{bail, Context};
use hk_agent_protocol::DEFAULT_PATH;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The parts of an image's config that decide how its containers run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: String,
    pub exposed_ports: Vec<String>,
}

impl ImageDefaults {
    pub fn from_oci(config: &oci_spec::image::ImageConfiguration) -> ImageDefaults {
        let Some(c) = config.config() else {
            return ImageDefaults::default();
        };
        ImageDefaults {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
            labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
            stop_signal: c.stop_signal().clone().unwrap_or_default(),
            exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
        }
    }
}

/// The container's main process, as the agent will be asked to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: Option<String>,
    pub tty: bool,
    pub open_stdin: bool,
}

/// What `hk run` was told about the process.
#[derive(Debug, Clone, Default)]
pub struct Overrides<'a> {
    /// `--entrypoint` (one word) or compose's `entrypoint:` (a list): `Some(&[])` clears
    /// the image's.
    pub entrypoint: Option<&'a [String]>,
    /// The arguments after the image.
    pub cmd: &'a [String],
    /// `--env-file` entries, then `-e` entries, in order (later wins).
    pub env: Vec<String>,
    pub workdir: Option<&'a str>,
    pub user: Option<&'a str>,
    pub hostname: &'a str,
    pub tty: bool,
    pub open_stdin: bool,
}

/// The Dockerfile reference's table: ENTRYPOINT then CMD, where a new `--entrypoint`
/// drops the image's CMD and arguments on the command line replace it.
pub fn command(image: &ImageDefaults, o: &Overrides) -> (Vec<String>, Vec<String>) {
    let entrypoint = match o.entrypoint {
        Some(e) => e.to_vec(),
        None => image.entrypoint.clone(),
    };
    let cmd = if !o.cmd.is_empty() {
        o.cmd.to_vec()
    } else if o.entrypoint.is_some() {
        Vec::new()
    } else {
        image.cmd.clone()
    };
    (entrypoint, cmd)
}

pub fn process(image: &ImageDefaults, o: &Overrides) -> anyhow::Result<Process> {
    let (entrypoint, cmd) = command(image, o);
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        bail!(
            "no command specified: the image has no ENTRYPOINT or CMD; give the command \
             after the image name"
        );
    }
    // docker: a default PATH and HOSTNAME, then the image's env, then the user's.
    let mut env = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={}", o.hostname),
    ];
    if o.tty {
        env.push("TERM=xterm".into());
    }
    for e in image.env.iter().chain(&o.env) {
        set_env(&mut env, e);
    }
    let cwd = match o.workdir {
        Some(w) => w.to_string(),
        None if !image.working_dir.is_empty() => image.working_dir.clone(),
        None => "/".into(),
    };
    if !cwd.starts_with('/') {
        bail!("the working directory {cwd:?} is not absolute: give -w an absolute path");
    }
    let user = match o.user {
        Some(u) => Some(u.to_string()),
        None if !image.user.is_empty() => Some(image.user.clone()),
        None => None,
    };
    Ok(Process {
        argv,
        env,
        cwd,
        user,
        tty: o.tty,
        open_stdin: o.open_stdin,
    })
}

/// Sets `KEY=VALUE` in `env`, replacing an earlier KEY.
pub fn set_env(env: &mut Vec<String>, pair: &str) {
    let key = pair.split('=').next().unwrap_or_default();
    env.retain(|old| old.split('=').next() != Some(key));
    env.push(pair.to_string());
}

/// `-e KEY=VALUE` as given; `-e KEY` takes KEY from hk's own environment, or is dropped
/// when unset, as docker does.
pub fn env_flag(e: &str) -> Option<String> {
    if e.contains('=') {
        return Some(e.to_string());
    }
    std::env::var(e).ok().map(|v| format!("{e}={v}"))
}

/// docker's `--env-file`: one `KEY=VALUE` or `KEY` per line, `#` comments and blank lines
/// skipped, no quoting (quotes are part of the value).
pub fn env_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the env file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split('=').next().unwrap_or_default();
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!(
                "{}:{}: {key:?} is not a variable name (lines are KEY=VALUE)",
                path.display(),
                n + 1
            );
        }
        out.extend(env_flag(line));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn argv(entrypoint: &[&str], cmd: &[&str], flag: Option<&str>, args: &[&str]) -> Vec<String> {
        let image = ImageDefaults {
            entrypoint: v(entrypoint),
            cmd: v(cmd),
            ..ImageDefaults::default()
        };
        let args = v(args);
        let flag: Option<Vec<String>> = flag.map(|f| {
            if f.is_empty() {
                Vec::new()
            } else {
                vec![f.to_string()]
            }
        });
        let o = Overrides {
            entrypoint: flag.as_deref(),
            cmd: &args,
            ..Overrides::default()
        };
        process(&image, &o).map(|p| p.argv).unwrap_or_default()
    }

    /// The Dockerfile reference's table, with shell forms as a builder stores them.
    #[test]
    fn entrypoint_cmd_table() {
        let sh_cmd = ["/bin/sh", "-c", "exec_cmd p1_cmd"];
        let exec_cmd = ["exec_cmd", "p1_cmd"];
        let sh_entry = ["/bin/sh", "-c", "exec_entry p1_entry"];
        let exec_entry = ["exec_entry", "p1_entry"];
        // No ENTRYPOINT.
        assert!(argv(&[], &[], None, &[]).is_empty());
        assert_eq!(argv(&[], &exec_cmd, None, &[]), v(&exec_cmd));
        assert_eq!(argv(&[], &sh_cmd, None, &[]), v(&sh_cmd));
        // ENTRYPOINT exec_entry p1_entry (shell form): CMD follows as $0.., unused by sh -c.
        assert_eq!(argv(&sh_entry, &[], None, &[]), v(&sh_entry));
        assert_eq!(
            argv(&sh_entry, &exec_cmd, None, &[]),
            v(&["/bin/sh", "-c", "exec_entry p1_entry", "exec_cmd", "p1_cmd"])
        );
        // ENTRYPOINT ["exec_entry", "p1_entry"].
        assert_eq!(argv(&exec_entry, &[], None, &[]), v(&exec_entry));
        assert_eq!(
            argv(&exec_entry, &exec_cmd, None, &[]),
            v(&["exec_entry", "p1_entry", "exec_cmd", "p1_cmd"])
        );
        assert_eq!(
            argv(&exec_entry, &sh_cmd, None, &[]),
            v(&["exec_entry", "p1_entry", "/bin/sh", "-c", "exec_cmd p1_cmd"])
        );
        // Arguments replace CMD, never ENTRYPOINT.
        assert_eq!(
            argv(&exec_entry, &exec_cmd, None, &["a", "b"]),
            v(&["exec_entry", "p1_entry", "a", "b"])
        );
        // --entrypoint replaces ENTRYPOINT and drops the image's CMD.
        assert_eq!(
            argv(&exec_entry, &exec_cmd, Some("/bin/x"), &[]),
            v(&["/bin/x"])
        );
        assert_eq!(
            argv(&exec_entry, &exec_cmd, Some("/bin/x"), &["y"]),
            v(&["/bin/x", "y"])
        );
        // --entrypoint "" clears it: the arguments alone, or nothing to run.
        assert_eq!(argv(&exec_entry, &exec_cmd, Some(""), &["ls"]), v(&["ls"]));
        assert!(argv(&exec_entry, &exec_cmd, Some(""), &[]).is_empty());
    }

    #[test]
    fn env_precedence_image_then_file_then_flag() {
        let image = ImageDefaults {
            env: v(&["PATH=/image/bin", "A=image", "B=image", "C=image"]),
            working_dir: "/srv".into(),
            user: "daemon".into(),
            cmd: v(&["run"]),
            ..ImageDefaults::default()
        };
        let o = Overrides {
            env: v(&["B=file", "C=file", "C=flag"]),
            hostname: "box",
            ..Overrides::default()
        };
        let p = process(&image, &o).unwrap();
        assert_eq!(
            p.env,
            v(&[
                "HOSTNAME=box",
                "PATH=/image/bin",
                "A=image",
                "B=file",
                "C=flag"
            ])
        );
        assert_eq!(p.cwd, "/srv");
        assert_eq!(p.user.as_deref(), Some("daemon"));
        let o = Overrides {
            workdir: Some("/w"),
            user: Some("1000:1000"),
            ..o
        };
        let p = process(&image, &o).unwrap();
        assert_eq!(
            (p.cwd.as_str(), p.user.as_deref()),
            ("/w", Some("1000:1000"))
        );
        let o = Overrides {
            workdir: Some("rel"),
            ..o
        };
        assert!(process(&image, &o).is_err());
    }

    #[test]
    fn env_files_read_like_dockers() {
        let dir = std::env::temp_dir().join(format!("hk-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("env");
        std::fs::write(
            &f,
            "# comment\n\nA=1\n  B=two words\nC=\"q\"\nHK_SURELY_UNSET_VAR\n",
        )
        .unwrap();
        assert_eq!(env_file(&f).unwrap(), v(&["A=1", "B=two words", "C=\"q\""]));
        std::fs::write(&f, "BAD KEY=1\n").unwrap();
        assert!(env_file(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
