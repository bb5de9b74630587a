//! Several `-f` files merged by the Compose specification's rules (merge.md), on the trees
//! `model` has already normalised, so every short syntax is in its long form here:
//!
//! - mappings merge key by key, recursively; a scalar in a later file replaces the earlier;
//! - sequences append, dropping exact duplicates;
//! - except `command`, `entrypoint` and `healthcheck.test`, which a later file replaces;
//! - and `ports` (unique by host_ip, published, target and protocol) and `volumes`
//!   (unique by target), where a later entry replaces the earlier one with the same key;
//! - `!reset` removes what earlier files said, `!override` replaces it whole.
//!
//! `environment`, `labels`, `depends_on`, `networks` and `build.args` are mappings by now,
//! so they merge by key whichever syntax each file used.

use serde_norway::{Mapping, Value};

/// Merges the files' trees in order.
pub fn merge_files(trees: Vec<Value>) -> Value {
    let mut out = Value::Mapping(Mapping::new());
    for t in trees {
        out = merge(Some(out), t, &[]).unwrap_or(Value::Null);
    }
    out
}

/// `None`: the key is removed (`!reset`).
fn merge(base: Option<Value>, over: Value, path: &[String]) -> Option<Value> {
    let over = match over {
        Value::Tagged(t) if t.tag == "reset" => return None,
        Value::Tagged(t) if t.tag == "override" => return Some(strip_tags(t.value)),
        other => other,
    };
    let Some(base) = base else {
        return Some(strip_tags(over));
    };
    match (base, over) {
        (Value::Mapping(mut b), Value::Mapping(o)) => {
            for (k, v) in o {
                let mut p = path.to_vec();
                p.push(k.as_str().unwrap_or_default().to_string());
                let old = b.remove(&k);
                let had = old.is_some();
                match merge(old, v, &p) {
                    Some(v) => {
                        b.insert(k, v);
                    }
                    None if had => {}
                    None => {}
                }
            }
            Some(Value::Mapping(b))
        }
        (Value::Sequence(b), Value::Sequence(o)) => Some(Value::Sequence(merge_seq(b, o, path))),
        (_, o) => Some(strip_tags(o)),
    }
}

fn merge_seq(mut base: Vec<Value>, over: Vec<Value>, path: &[String]) -> Vec<Value> {
    let over: Vec<Value> = over.into_iter().map(strip_tags).collect();
    let field: Vec<&str> = path.iter().map(String::as_str).collect();
    match field[..] {
        ["services", _, "command" | "entrypoint"] | ["services", _, "healthcheck", "test"] => over,
        ["services", _, "ports"] => unique_by(base, over, port_key),
        ["services", _, "volumes"] => unique_by(base, over, |v| {
            v.get("target")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        }),
        _ => {
            for v in over {
                if !base.contains(&v) {
                    base.push(v);
                }
            }
            base
        }
    }
}

fn port_key(v: &Value) -> String {
    let f = |k: &str| {
        v.get(k)
            .map(|x| match x {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            })
            .unwrap_or_default()
    };
    format!(
        "{}|{}|{}|{}",
        f("host_ip"),
        f("published"),
        f("target"),
        f("protocol")
    )
}

fn unique_by(base: Vec<Value>, over: Vec<Value>, key: impl Fn(&Value) -> String) -> Vec<Value> {
    let mut out = base;
    for v in over {
        let k = key(&v);
        match out.iter().position(|b| key(b) == k) {
            Some(i) => out[i] = v,
            None => out.push(v),
        }
    }
    out
}

/// A tree with `!reset`/`!override` applied where nothing was underneath.
fn strip_tags(v: Value) -> Value {
    match v {
        Value::Tagged(t) => strip_tags(t.value),
        Value::Mapping(m) => Value::Mapping(
            m.into_iter()
                .filter(|(_, v)| !matches!(v, Value::Tagged(t) if t.tag == "reset"))
                .map(|(k, v)| (k, strip_tags(v)))
                .collect(),
        ),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(strip_tags).collect()),
        other => other,
    }
}
