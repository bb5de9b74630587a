//! Paths as Dockerfiles spell them: `/`-separated text, cleaned lexically like Go's
//! `path.Clean`, so that `..` can never climb above the root it is relative to.

/// Go's `path.Clean`: no `.` components, `..` resolved lexically (and dropped at the root
/// of an absolute path), no doubled or trailing `/`; `""` becomes `"."`.
pub(crate) fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            x => out.push(x),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

/// The components of `p` taken inside a root: cleaned as an absolute path, so `..` stops
/// at the root and a leading `/` means the root itself.
pub(crate) fn components_in_root(p: &str) -> Vec<String> {
    clean(&format!("/{p}"))
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// Components joined back into a relative path; `""` for the root.
pub(crate) fn join(components: &[String]) -> String {
    components.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_is_go_path_clean() {
        for (input, want) in [
            ("", "."),
            ("abc", "abc"),
            ("abc/", "abc"),
            ("a//b", "a/b"),
            ("./a/./b/", "a/b"),
            ("a/../b", "b"),
            ("../a", "../a"),
            ("a/../..", ".."),
            ("/../a", "/a"),
            ("/", "/"),
            ("/a/b/../../..", "/"),
        ] {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }

    #[test]
    fn dotdot_never_leaves_the_root() {
        assert_eq!(components_in_root("../../etc/passwd"), ["etc", "passwd"]);
        assert_eq!(components_in_root("/a/../../b"), ["b"]);
        assert!(components_in_root("..").is_empty());
    }
}
