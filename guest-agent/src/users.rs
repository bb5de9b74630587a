//! `-u user[:group]` as docker (runc) resolves it, from the container's own /etc/passwd and
//! /etc/group: a name must exist there, a number need not; without a group the user's
//! primary group applies (0 for an unknown uid) and the user's supplementary groups from
//! /etc/group are added; an explicit group replaces both.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn passwd(root: &Path) -> Vec<PasswdEntry> {
    read_lines(&root.join("etc/passwd"))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"/").to_string(),
            })
        })
        .collect()
}

fn groups(root: &Path) -> Vec<GroupEntry> {
    read_lines(&root.join("etc/group"))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn read_lines(path: &Path) -> impl Iterator<Item = String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect::<Vec<_>>()
        .into_iter()
}

/// Resolves `spec` (`None`: root) plus `additional` groups against the files under `root`.
/// Errors read as docker's.
pub fn resolve(root: &Path, spec: Option<&str>, additional: &[String]) -> Result<User, String> {
    let spec = spec.filter(|s| !s.is_empty()).unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = passwd(root);
    let all_groups = groups(root);
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => users.iter().find(|u| u.uid == uid),
        Err(_) => Some(users.iter().find(|u| u.name == user_part).ok_or_else(|| {
            format!("unable to find user {user_part}: no matching entries in passwd file")
        })?),
    };
    let uid = match entry {
        Some(e) => e.uid,
        None => user_part
            .parse::<u32>()
            .map_err(|_| format!("invalid user {user_part:?}"))?,
    };
    let find_group = |g: &str| -> Result<u32, String> {
        match g.parse::<u32>() {
            Ok(gid) => Ok(gid),
            Err(_) => all_groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                }),
        }
    };
    let (gid, mut supplementary) = match group_part {
        Some(g) => (find_group(g)?, Vec::new()),
        None => {
            let gid = entry.map_or(0, |e| e.gid);
            let name = entry.map(|e| e.name.as_str());
            let member_of: Vec<u32> = all_groups
                .iter()
                .filter(|g| name.is_some_and(|n| g.members.iter().any(|m| m == n)))
                .map(|g| g.gid)
                .collect();
            (gid, member_of)
        }
    };
    for g in additional {
        supplementary.push(find_group(g)?);
    }
    let mut groups = vec![gid];
    for g in supplementary {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(User {
        uid,
        gid,
        groups,
        home: entry.map_or_else(|| "/".to_string(), |e| e.home.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hk-users-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:100::/home/bob:/bin/sh\n# comment\nbroken\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/group"),
            "root:x:0:\nusers:x:100:alice\nalice:x:1000:\nwheel:x:10:alice,bob\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn users_and_groups_resolve_as_runc_does() {
        let r = root();
        let alice = resolve(&r, Some("alice"), &[]).unwrap();
        assert_eq!((alice.uid, alice.gid), (1000, 1000));
        assert_eq!(alice.groups, [1000, 100, 10]);
        assert_eq!(alice.home, "/home/alice");
        let explicit = resolve(&r, Some("alice:wheel"), &[]).unwrap();
        assert_eq!((explicit.gid, explicit.groups.clone()), (10, vec![10]));
        let numeric = resolve(&r, Some("4242:77"), &[]).unwrap();
        assert_eq!(
            (numeric.uid, numeric.gid, numeric.home.as_str()),
            (4242, 77, "/")
        );
        let by_uid = resolve(&r, Some("1001"), &[]).unwrap();
        assert_eq!((by_uid.gid, by_uid.groups.clone()), (100, vec![100, 10]));
        let root_user = resolve(&r, None, &["users".into()]).unwrap();
        assert_eq!(root_user.groups, [0, 100]);
        assert_eq!(
            resolve(&r, Some("mallory"), &[]).unwrap_err(),
            "unable to find user mallory: no matching entries in passwd file"
        );
        assert!(resolve(&r, Some("alice:nogroup"), &[]).is_err());
        std::fs::remove_dir_all(r).unwrap();
    }
}
