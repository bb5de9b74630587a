//! What `up` and `down` decide before touching a VM: which services take part, in which
//! order they start (dependencies first; services in one level are independent and start
//! together), what each container is called and labelled, and the config hash that tells
//! a changed service from an unchanged one.

use super::model::{Project, Service};
use anyhow::bail;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// docker compose's labels, so tools that read them find hk's fleets.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
pub const LABEL_NUMBER: &str = "com.docker.compose.container-number";
pub const LABEL_HASH: &str = "com.docker.compose.config-hash";
pub const LABEL_ONEOFF: &str = "com.docker.compose.oneoff";
pub const LABEL_WORKING_DIR: &str = "com.docker.compose.project.working_dir";
pub const LABEL_NETWORK: &str = "com.docker.compose.network";
pub const LABEL_VOLUME: &str = "com.docker.compose.volume";

/// The services named (all when none), with everything they depend on.
pub fn select(project: &Project, named: &[String]) -> anyhow::Result<BTreeSet<String>> {
    if named.is_empty() {
        return Ok(project.services.keys().cloned().collect());
    }
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = named.to_vec();
    while let Some(s) = todo.pop() {
        let Some(svc) = project.services.get(&s) else {
            bail!("no such service: {s}");
        };
        if out.insert(s) {
            todo.extend(svc.depends_on.keys().cloned());
        }
    }
    Ok(out)
}

/// The services in start order, as levels: every service's dependencies are in earlier
/// levels. A cycle is an error naming the services on it.
pub fn levels(project: &Project, services: &BTreeSet<String>) -> anyhow::Result<Vec<Vec<String>>> {
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    while placed.len() < services.len() {
        let level: Vec<String> = services
            .iter()
            .filter(|s| !placed.contains(*s))
            .filter(|s| {
                project.services[*s]
                    .depends_on
                    .keys()
                    .all(|d| placed.contains(d) || !services.contains(d))
            })
            .cloned()
            .collect();
        if level.is_empty() {
            let left: Vec<&String> = services.iter().filter(|s| !placed.contains(*s)).collect();
            bail!(
                "the services' depends_on form a cycle: {}",
                left.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        placed.extend(level.iter().cloned());
        out.push(level);
    }
    Ok(out)
}

/// `<project>-<service>-<n>`, docker compose v2's container names.
pub fn container_name(project: &str, service: &str, n: u32) -> String {
    format!("{project}-{service}-{n}")
}

/// A digest of what the service's containers are made from: its normalised config (less
/// the replica count, so scaling recreates nothing) and the image it runs. Two `up`s give
/// the same hash exactly when the containers would be the same.
pub fn config_hash(service: &Service, image_id: &str) -> String {
    let mut s = service.clone();
    s.scale = None;
    if let Some(d) = &mut s.deploy {
        d.replicas = None;
    }
    // Serialised through serde_json: maps are BTreeMaps, so the bytes are stable.
    let json = serde_json::to_vec(&s).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(&json);
    h.update(b"\n");
    h.update(image_id.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The labels of container `n` of a service.
pub fn labels(
    project: &Project,
    dir: &str,
    service: &str,
    n: u32,
    hash: &str,
    oneoff: bool,
) -> BTreeMap<String, String> {
    let mut l = project.services[service].labels.clone();
    l.insert(LABEL_PROJECT.into(), project.name.clone());
    l.insert(LABEL_SERVICE.into(), service.into());
    l.insert(LABEL_NUMBER.into(), n.to_string());
    l.insert(LABEL_HASH.into(), hash.into());
    l.insert(
        LABEL_ONEOFF.into(),
        if oneoff { "True" } else { "False" }.into(),
    );
    l.insert(LABEL_WORKING_DIR.into(), dir.into());
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::model::Dependency;

    fn project(deps: &[(&str, &[&str])]) -> Project {
        let mut p = Project {
            name: "p".into(),
            ..Project::default()
        };
        for (s, d) in deps {
            let mut svc = Service {
                image: Some("img".into()),
                ..Service::default()
            };
            for dep in *d {
                svc.depends_on.insert(
                    dep.to_string(),
                    Dependency {
                        condition: "service_started".into(),
                        restart: false,
                        required: true,
                    },
                );
            }
            p.services.insert(s.to_string(), svc);
        }
        p
    }

    #[test]
    fn levels_put_dependencies_first_and_independent_services_together() {
        let p = project(&[
            ("web", &["api", "cache"]),
            ("api", &["db"]),
            ("db", &[]),
            ("cache", &[]),
            ("tool", &[]),
        ]);
        let all = select(&p, &[]).unwrap();
        let l = levels(&p, &all).unwrap();
        assert_eq!(
            l,
            vec![
                vec!["cache".to_string(), "db".into(), "tool".into()],
                vec!["api".into()],
                vec!["web".into()],
            ]
        );
    }

    #[test]
    fn selecting_a_service_brings_its_dependencies() {
        let p = project(&[("web", &["api"]), ("api", &["db"]), ("db", &[]), ("x", &[])]);
        let s = select(&p, &["web".into()]).unwrap();
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            ["api", "db", "web"].map(String::from)
        );
        assert!(select(&p, &["nope".into()]).is_err());
    }

    #[test]
    fn cycles_are_named() {
        let p = project(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &[])]);
        let e = levels(&p, &select(&p, &[]).unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the services' depends_on form a cycle: a, b, c"
        );
    }

    #[test]
    fn config_hash_ignores_scale_and_sees_everything_else() {
        let p = project(&[("web", &[])]);
        let base = &p.services["web"];
        let h = config_hash(base, "sha256:1");
        assert_eq!(h.len(), 64);
        assert_eq!(h, config_hash(base, "sha256:1"));
        let mut scaled = base.clone();
        scaled.scale = Some(3);
        assert_eq!(h, config_hash(&scaled, "sha256:1"));
        let mut changed = base.clone();
        changed.environment.insert("A".into(), Some("1".into()));
        assert_ne!(h, config_hash(&changed, "sha256:1"));
        assert_ne!(h, config_hash(base, "sha256:2"));
    }

    #[test]
    fn names_and_labels() {
        let p = project(&[("web", &[])]);
        assert_eq!(container_name("shop", "web", 2), "shop-web-2");
        let l = labels(&p, "/src", "web", 2, "abc", false);
        assert_eq!(l[LABEL_PROJECT], "p");
        assert_eq!(l[LABEL_SERVICE], "web");
        assert_eq!(l[LABEL_NUMBER], "2");
        assert_eq!(l[LABEL_HASH], "abc");
        assert_eq!(l[LABEL_ONEOFF], "False");
    }
}
