//! `RUN --mount=...` values, as BuildKit's `instructions/commands_runmount.go` reads them:
//! comma-separated `key=value` fields (CSV, so a field may be double-quoted), the same key
//! spellings and defaults, and the same refusals, so a Dockerfile hk accepts is one
//! `docker build` accepts.

use super::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMount {
    pub kind: MountType,
    /// Required for bind, cache and tmpfs. For a secret, `/run/secrets/<id>` when only
    /// the id is given; for ssh, None means BuildKit's `/run/buildkit/ssh_agent.<n>`.
    pub target: Option<String>,
    pub source: Option<String>,
    /// A stage name or image for bind and cache mounts.
    pub from: Option<String>,
    /// Bind and secret/ssh default to read-only, cache and tmpfs to read-write.
    pub read_only: bool,
    /// Cache id (defaults to the target in BuildKit, left None here), secret id (defaults to
    /// the target's file name), ssh id (defaults to `default`).
    pub id: Option<String>,
    pub sharing: Sharing,
    /// None means the type's default: 0755 cache, 0400 secret, 0600 ssh.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Secret and ssh only: fail the step when the secret or agent is missing.
    pub required: bool,
    /// Tmpfs only, in bytes.
    pub size: Option<u64>,
    /// Secret only: expose the secret as this environment variable instead of (or as well
    /// as, with a target) a file.
    pub env: Option<String>,
}

pub fn parse_mount(raw: &str) -> Result<RunMount, Error> {
    let err = |m: String| Error::Mount(m);
    let mut m = RunMount {
        kind: MountType::Bind,
        target: None,
        source: None,
        from: None,
        read_only: true,
        id: None,
        sharing: Sharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        required: false,
        size: None,
        env: None,
    };
    let mut read_only: Option<bool> = None;
    let mut sharing_set = false;
    for field in csv_fields(raw).map_err(err)? {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
            None => (field.to_ascii_lowercase(), None),
        };
        let value = match (key.as_str(), value) {
            ("ro" | "readonly" | "rw" | "readwrite" | "required", None) => "true".to_string(),
            (_, None) => {
                return Err(err(format!(
                    "invalid field '{field}' must be a key=value pair"
                )))
            }
            (_, Some(v)) => v,
        };
        let boolean =
            || parse_bool(&value).ok_or_else(|| err(format!("invalid value for {key}: {value}")));
        let number = |radix: u32| {
            u32::from_str_radix(&value, radix)
                .map_err(|_| err(format!("invalid value {value} for {key}")))
        };
        match key.as_str() {
            "type" => {
                m.kind = match value.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => {
                        return Err(err(format!(
                            "unsupported mount type {value:?} (bind, cache, tmpfs, secret or ssh)"
                        )))
                    }
                }
            }
            "target" | "dst" | "destination" => m.target = Some(value),
            "source" | "src" => m.source = Some(value),
            "from" => m.from = Some(value),
            "id" => m.id = Some(value),
            "ro" | "readonly" => read_only = Some(boolean()?),
            "rw" | "readwrite" => read_only = Some(!boolean()?),
            "required" => {
                if !matches!(m.kind, MountType::Secret | MountType::Ssh) {
                    return Err(err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        type_name(m.kind)
                    )));
                }
                m.required = boolean()?;
            }
            "sharing" => {
                sharing_set = true;
                m.sharing = match value.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => {
                        return Err(err(format!(
                            "unsupported sharing value {value:?} (shared, private or locked)"
                        )))
                    }
                }
            }
            "mode" => m.mode = Some(number(8)?),
            "uid" => m.uid = Some(number(10)?),
            "gid" => m.gid = Some(number(10)?),
            "env" => m.env = Some(value),
            "size" => {
                if m.kind != MountType::Tmpfs {
                    return Err(err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        type_name(m.kind)
                    )));
                }
                m.size = Some(
                    ram_in_bytes(&value)
                        .ok_or_else(|| err(format!("invalid value {value} for size")))?,
                );
            }
            _ => return Err(err(format!("unexpected key '{key}' in '{field}'"))),
        }
    }
    let kind = type_name(m.kind);
    m.read_only = read_only.unwrap_or(!matches!(m.kind, MountType::Cache | MountType::Tmpfs));
    if !matches!(
        m.kind,
        MountType::Secret | MountType::Ssh | MountType::Cache
    ) {
        for (set, what) in [
            (m.mode.is_some(), "mode"),
            (m.uid.is_some(), "uid"),
            (m.gid.is_some(), "gid"),
        ] {
            if set {
                return Err(err(format!("{what} not allowed for {kind:?} type mounts")));
            }
        }
    }
    if sharing_set && m.kind != MountType::Cache {
        return Err(err(format!("invalid cache sharing set for {kind} mount")));
    }
    if m.env.is_some() && m.kind != MountType::Secret {
        return Err(err(format!("env not allowed for {kind:?} type mounts")));
    }
    match m.kind {
        MountType::Secret | MountType::Ssh => {
            if m.from.is_some() {
                return Err(err(format!("{kind} mount should not have a from")));
            }
        }
        _ => {
            if m.target.is_none() {
                return Err(err(format!(
                    "type={kind} mount requires a target (target=/path)"
                )));
            }
        }
    }
    if m.kind == MountType::Secret {
        if m.id.is_none() {
            m.id = m
                .target
                .as_deref()
                .and_then(|t| t.rsplit('/').next())
                .filter(|s| !s.is_empty())
                .map(String::from);
        }
        if m.id.is_none() {
            return Err(err("secret mount requires an id or a target".into()));
        }
        if m.target.is_none() && m.env.is_none() {
            m.target = m.id.as_ref().map(|id| format!("/run/secrets/{id}"));
        }
    }
    if m.kind == MountType::Ssh && m.id.is_none() {
        m.id = Some("default".into());
    }
    Ok(m)
}

fn type_name(kind: MountType) -> &'static str {
    match kind {
        MountType::Bind => "bind",
        MountType::Cache => "cache",
        MountType::Tmpfs => "tmpfs",
        MountType::Secret => "secret",
        MountType::Ssh => "ssh",
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// docker/go-units `RAMInBytes`: `64m`, `1g`, `512k`, `1.5GiB`, plain bytes; binary units.
fn ram_in_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let num_len = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(num_len);
    let num: f64 = num.parse().ok()?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return None,
    };
    let bytes = num * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// One CSV record (Go's `encoding/csv`, which BuildKit uses): a field that starts with `"`
/// is quoted and `""` inside it is a quote.
fn csv_fields(raw: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = raw.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted field in {raw:?}")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field in {raw:?}")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err(format!("bare \" in non-quoted field in {raw:?}")),
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> RunMount {
        parse_mount(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    fn bad(raw: &str) -> String {
        parse_mount(raw).unwrap_err().to_string()
    }

    #[test]
    fn bind_is_the_default_type_and_read_only() {
        let m = ok("target=/src,source=.,from=builder");
        assert_eq!(m.kind, MountType::Bind);
        assert_eq!(m.target.as_deref(), Some("/src"));
        assert_eq!(m.source.as_deref(), Some("."));
        assert_eq!(m.from.as_deref(), Some("builder"));
        assert!(m.read_only);
        assert!(!ok("dst=/x,rw").read_only);
        assert!(!ok("destination=/x,readwrite=true").read_only);
        assert!(!ok("type=bind,target=/x,readonly=false").read_only);
    }

    #[test]
    fn cache_defaults_and_options() {
        let m =
            ok("type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0700,uid=1000,gid=1000");
        assert_eq!(m.kind, MountType::Cache);
        assert!(!m.read_only);
        assert_eq!(m.sharing, Sharing::Locked);
        assert_eq!(
            (m.mode, m.uid, m.gid),
            (Some(0o700), Some(1000), Some(1000))
        );
        assert_eq!(ok("type=cache,target=/c").sharing, Sharing::Shared);
        assert!(ok("type=cache,target=/c,ro").read_only);
        assert_eq!(ok("Type=Cache,Target=/c").kind, MountType::Cache);
    }

    #[test]
    fn tmpfs_size() {
        let m = ok("type=tmpfs,target=/tmp,size=64m");
        assert_eq!(m.size, Some(64 << 20));
        assert!(!m.read_only);
        assert_eq!(ok("type=tmpfs,target=/t,size=1024").size, Some(1024));
        assert_eq!(ok("type=tmpfs,target=/t,size=1.5GiB").size, Some(3 << 29));
        assert!(bad("type=tmpfs,target=/t,size=lots").contains("invalid value lots for size"));
        assert!(bad("type=cache,target=/t,size=1m")
            .contains("unexpected key 'size' for mount type 'cache'"));
    }

    #[test]
    fn secrets_and_ssh() {
        let m = ok("type=secret,id=npmrc");
        assert_eq!(m.target.as_deref(), Some("/run/secrets/npmrc"));
        assert!(m.read_only && !m.required);
        let m = ok("type=secret,target=/root/.npmrc,required");
        assert_eq!(m.id.as_deref(), Some(".npmrc"));
        assert!(m.required);
        let m = ok("type=secret,id=token,env=TOKEN");
        assert_eq!((m.target, m.env.as_deref()), (None, Some("TOKEN")));
        let m = ok("type=ssh");
        assert_eq!((m.id.as_deref(), m.target), (Some("default"), None));
        assert!(ok("type=ssh,required=true,mode=0600").required);
        assert!(bad("type=secret").contains("requires an id or a target"));
        assert!(bad("type=secret,id=a,from=x").contains("should not have a from"));
        assert!(bad("type=bind,target=/x,required").contains("unexpected key 'required'"));
    }

    #[test]
    fn refusals() {
        assert!(bad("type=bind").contains("requires a target"));
        assert!(bad("type=cache").contains("requires a target"));
        assert!(bad("type=volume,target=/x").contains("unsupported mount type"));
        assert!(bad("target=/x,foo=bar").contains("unexpected key 'foo'"));
        assert!(bad("target=/x,foo").contains("must be a key=value pair"));
        assert!(bad("target=/x,mode=0644").contains("mode not allowed"));
        assert!(bad("type=cache,target=/x,mode=999").contains("invalid value 999 for mode"));
        assert!(bad("target=/x,sharing=private").contains("invalid cache sharing"));
        assert!(bad("type=cache,target=/x,sharing=weird").contains("unsupported sharing"));
        assert!(bad("target=/x,ro=maybe").contains("invalid value for ro"));
        assert!(bad("target=/x,env=A").contains("env not allowed"));
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(
            ok("\"target=/a,b\",source=x").target.as_deref(),
            Some("/a,b")
        );
        assert_eq!(
            ok("target=/x,\"source=say \"\"hi\"\"\"").source.as_deref(),
            Some("say \"hi\"")
        );
        assert!(bad("target=/x,source=a\"b").contains("bare"));
        assert!(bad("\"target=/x").contains("unterminated"));
    }
}
