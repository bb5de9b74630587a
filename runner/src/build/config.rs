//! The image config a build writes, kept as docker's JSON rather than oci-spec's types:
//! docker's config carries fields the OCI types drop (Healthcheck, OnBuild, Shell), and a
//! base image's unknown fields must pass through to the new image untouched.

use serde_json::{json, Map, Value};

/// The config of `FROM scratch`: this host's platform, nothing else.
pub fn scratch() -> Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    })
}

/// A base image's config, ready to build on: what describes the base itself (its
/// `created`, docker's container fields) goes, what a child inherits stays.
pub fn inherit(base: &[u8]) -> anyhow::Result<Value> {
    let mut v: Value = serde_json::from_slice(base)?;
    let Some(o) = v.as_object_mut() else {
        anyhow::bail!("the base image's config is not a JSON object");
    };
    for k in ["container", "container_config", "docker_version", "author"] {
        o.remove(k);
    }
    o.entry("config").or_insert_with(|| json!({}));
    o.entry("history").or_insert_with(|| json!([]));
    o.entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    Ok(v)
}

/// The `config` object (docker's "container config" of the image).
pub fn inner(v: &mut Value) -> &mut Map<String, Value> {
    let o = v.as_object_mut().expect("a config is an object");
    let c = o.entry("config").or_insert_with(|| json!({}));
    if !c.is_object() {
        *c = json!({});
    }
    c.as_object_mut().expect("just made an object")
}

pub fn get_str(v: &Value, key: &str) -> String {
    v.get("config")
        .and_then(|c| c.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

pub fn get_list(v: &Value, key: &str) -> Vec<String> {
    v.get("config")
        .and_then(|c| c.get(key))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn set_list(v: &mut Value, key: &str, list: Option<Vec<String>>) {
    match list {
        Some(l) => {
            inner(v).insert(key.into(), json!(l));
        }
        None => {
            inner(v).remove(key);
        }
    }
}

/// `Env` as `KEY=value` entries, in order.
pub fn env(v: &Value) -> Vec<String> {
    get_list(v, "Env")
}

/// Sets `key` in `Env`, in place when present (docker keeps the order of first
/// definition), else at the end.
pub fn set_env(v: &mut Value, key: &str, value: &str) {
    let mut list = env(v);
    let entry = format!("{key}={value}");
    match list
        .iter_mut()
        .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    {
        Some(e) => *e = entry,
        None => list.push(entry),
    }
    set_list(v, "Env", Some(list));
}

/// Adds keys to an object-valued field (`Labels`, `ExposedPorts`, `Volumes`).
pub fn add_to_map(v: &mut Value, key: &str, entries: impl IntoIterator<Item = (String, Value)>) {
    let c = inner(v);
    let m = c.entry(key).or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    let m = m.as_object_mut().expect("just made an object");
    for (k, val) in entries {
        m.insert(k, val);
    }
}

pub fn set_str(v: &mut Value, key: &str, value: &str) {
    inner(v).insert(key.into(), json!(value));
}

/// Appends a layer's diff_id to `rootfs.diff_ids`.
pub fn push_diff_id(v: &mut Value, diff_id: &str) {
    let o = v.as_object_mut().expect("a config is an object");
    let r = o
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    if let Some(ids) = r.get_mut("diff_ids").and_then(Value::as_array_mut) {
        ids.push(json!(diff_id));
    } else {
        r["diff_ids"] = json!([diff_id]);
    }
}

/// Appends a history entry and sets the image's `created` to its time, as docker does for
/// each instruction.
pub fn push_history(v: &mut Value, created: &str, created_by: &str, empty_layer: bool) {
    let mut h = json!({
        "created": created,
        "created_by": created_by,
        "comment": "hk build",
    });
    if empty_layer {
        h["empty_layer"] = json!(true);
    }
    let o = v.as_object_mut().expect("a config is an object");
    o.insert("created".into(), json!(created));
    match o.get_mut("history").and_then(Value::as_array_mut) {
        Some(list) => list.push(h),
        None => {
            o.insert("history".into(), json!([h]));
        }
    }
}

/// The working directory a relative path in WORKDIR, COPY or ADD is taken against.
pub fn resolve_workdir(current: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else if current.is_empty() {
        format!("/{path}")
    } else {
        format!("{}/{path}", current.trim_end_matches('/'))
    };
    clean(&joined)
}

/// A lexically cleaned absolute path (Go's path.Clean, as BuildKit uses).
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_replaced_in_place_and_appended_when_new() {
        let mut v = scratch();
        set_env(&mut v, "A", "1");
        set_env(&mut v, "B", "2");
        set_env(&mut v, "A", "3=4");
        assert_eq!(env(&v), vec!["A=3=4", "B=2"]);
    }

    #[test]
    fn inherit_drops_what_describes_the_base_only() {
        let base = br#"{"architecture":"amd64","os":"linux","container":"x","created":"c",
            "config":{"Env":["A=1"],"Healthcheck":{"Test":["NONE"]}},"rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#;
        let v = inherit(base).unwrap();
        assert!(v.get("container").is_none());
        assert_eq!(env(&v), vec!["A=1"]);
        assert_eq!(v["config"]["Healthcheck"]["Test"][0], "NONE");
        assert_eq!(v["history"], json!([]));
    }

    #[test]
    fn history_and_diff_ids_accumulate() {
        let mut v = scratch();
        push_diff_id(&mut v, "sha256:aa");
        push_history(&mut v, "t1", "RUN x", false);
        push_history(&mut v, "t2", "ENV a=b", true);
        assert_eq!(v["rootfs"]["diff_ids"], json!(["sha256:aa"]));
        assert_eq!(v["history"][1]["empty_layer"], json!(true));
        assert!(v["history"][0].get("empty_layer").is_none());
        assert_eq!(v["created"], "t2");
    }

    #[test]
    fn workdirs_resolve_like_buildkit() {
        assert_eq!(resolve_workdir("", "app"), "/app");
        assert_eq!(resolve_workdir("/a", "b/../c/"), "/a/c");
        assert_eq!(resolve_workdir("/a", "/x"), "/x");
        assert_eq!(resolve_workdir("/", ".."), "/");
    }
}
