//! Registry credentials, read and written where docker keeps them: `credHelpers` and
//! `credsStore` helpers (`docker-credential-<name>` speaking JSON on stdin/stdout), else the
//! base64 `auth` entries of `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`).
//!
//! Written here rather than taken from a crate: the small crates that read this file do not
//! write it, and `hk login`/`hk logout` must, keeping every key hk does not know untouched.

use crate::{Error, Result};
use base64::Engine as _;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

pub fn config_path() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("config.json"),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
            PathBuf::from(home).join(".docker/config.json")
        }
    }
}

/// The key docker files a registry under: Docker Hub keeps its historical v1 URL.
pub fn server_key(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".to_string()
        }
        other => other.to_string(),
    }
}

/// `https://host:5000/v2/` → `host:5000`, the way docker matches old-style `auths` keys.
fn normalize_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn read_config() -> Result<Map<String, Value>> {
    let path = config_path();
    match std::fs::read(&path) {
        Ok(data) => match serde_json::from_slice(&data) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(Error::Corrupt {
                path,
                reason: "not a JSON object".into(),
            }),
            Err(e) => Err(Error::Corrupt {
                path,
                reason: e.to_string(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(Error::Io { path, cause: e }),
    }
}

fn write_config(config: &Map<String, Value>) -> Result<()> {
    let path = config_path();
    let dir = path.parent().expect("config path has a parent");
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let temp = dir.join(format!(".config.json.hk-{}", std::process::id()));
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(Error::io(&temp))?
    };
    let json = serde_json::to_vec_pretty(&Value::Object(config.clone())).expect("JSON map");
    f.write_all(&json).map_err(Error::io(&temp))?;
    drop(f);
    std::fs::rename(&temp, &path).map_err(Error::io(&path))
}

/// Which helper docker would ask for this registry, if any.
fn helper_for(config: &Map<String, Value>, key: &str) -> Option<String> {
    config
        .get("credHelpers")
        .and_then(|h| h.get(key))
        .or_else(|| config.get("credsStore"))
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

fn run_helper(helper: &str, action: &str, input: &str, registry: &str) -> Result<Option<String>> {
    let program = format!("docker-credential-{helper}");
    let fail = |reason: String| Error::Credentials {
        registry: registry.to_string(),
        reason,
    };
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .map_err(|e| fail(format!("{program} {action}: {e}")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("{program} {action}: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        return Ok(Some(stdout));
    }
    // The helper protocol reports a missing entry as this exact message on stdout.
    if stdout.contains("credentials not found") {
        return Ok(None);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(fail(format!(
        "{program} {action} failed: {}",
        if stdout.is_empty() {
            stderr.trim()
        } else {
            &stdout
        }
    )))
}

/// The credentials docker would use for `registry`, if any are configured.
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    let config = read_config()?;
    let key = server_key(registry);
    if let Some(helper) = helper_for(&config, &key) {
        let Some(out) = run_helper(&helper, "get", &key, registry)? else {
            return Ok(None);
        };
        let v: Value = serde_json::from_str(&out).map_err(|e| Error::Credentials {
            registry: registry.into(),
            reason: format!("docker-credential-{helper} answered something that is not JSON: {e}"),
        })?;
        let username = v["Username"].as_str().unwrap_or_default().to_string();
        let password = v["Secret"].as_str().unwrap_or_default().to_string();
        if username == "<token>" {
            return Err(Error::Credentials {
                registry: registry.into(),
                reason: "identity tokens are not supported: log in with a username and password"
                    .into(),
            });
        }
        return Ok(Some(Credentials { username, password }));
    }
    let Some(auths) = config.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    let entry = auths
        .get(&key)
        .or_else(|| {
            auths
                .iter()
                .find(|(k, _)| normalize_key(k) == normalize_key(&key))
                .map(|(_, v)| v)
        })
        .and_then(Value::as_object);
    let Some(entry) = entry else { return Ok(None) };
    let bad = |reason: &str| Error::Credentials {
        registry: registry.into(),
        reason: format!("{}: {reason}", config_path().display()),
    };
    if let Some(auth) = entry
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("\"auth\" is not base64"))?;
        let text = String::from_utf8(raw).map_err(|_| bad("\"auth\" is not UTF-8"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| bad("\"auth\" is not user:password"))?;
        return Ok(Some(Credentials {
            username: u.into(),
            password: p.into(),
        }));
    }
    match (
        entry.get("username").and_then(Value::as_str),
        entry.get("password").and_then(Value::as_str),
    ) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.into(),
            password: p.into(),
        })),
        _ => Ok(None),
    }
}

/// Saves credentials the way `docker login` does: through the configured helper, else as a
/// base64 `auth` entry in config.json (mode 0600).
pub fn save(registry: &str, creds: &Credentials) -> Result<()> {
    let mut config = read_config()?;
    let key = server_key(registry);
    if let Some(helper) = helper_for(&config, &key) {
        let input = serde_json::json!({
            "ServerURL": key,
            "Username": creds.username,
            "Secret": creds.password,
        });
        run_helper(&helper, "store", &input.to_string(), registry)?;
        return Ok(());
    }
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    let auths = config
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    auths
        .as_object_mut()
        .expect("auths is an object")
        .insert(key, serde_json::json!({ "auth": auth }));
    write_config(&config)
}

/// Forgets credentials for `registry`; false if there were none.
pub fn erase(registry: &str) -> Result<bool> {
    let mut config = read_config()?;
    let key = server_key(registry);
    if let Some(helper) = helper_for(&config, &key) {
        return Ok(run_helper(&helper, "erase", &key, registry)?.is_some());
    }
    let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) else {
        return Ok(false);
    };
    let keys: Vec<String> = auths
        .keys()
        .filter(|k| normalize_key(k) == normalize_key(&key))
        .cloned()
        .collect();
    if keys.is_empty() {
        return Ok(false);
    }
    for k in keys {
        auths.remove(&k);
    }
    write_config(&config)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_style_keys_match_their_host() {
        assert_eq!(normalize_key("https://reg:5000/v2/"), "reg:5000");
        assert_eq!(normalize_key("reg:5000"), "reg:5000");
        assert_eq!(server_key("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(
            normalize_key(&server_key("docker.io")),
            normalize_key("index.docker.io")
        );
    }
}
