//! Docker-style image references: parsing and normalisation (`alpine` →
//! `docker.io/library/alpine:latest`), and the short "familiar" spelling docker prints back
//! to people.
//!
//! The grammar (distribution's `reference` package) is recognised by hand rather than with
//! oci-spec's `Reference::from_str`: that one compiles a regular expression of 16 MB on
//! first use and keeps 13 MB of it for the life of the process, which made every container
//! supervisor (a long-lived hk process) four times larger than the VMM needs and cost 70-90
//! ms per command (BENCHMARKS.md, "Containers"). The parsed parts still become oci-spec's
//! `Reference`, which the registry client takes.

use crate::{Digest, Error, Result};
use oci_client::Reference;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        let invalid = |reason: &str| Error::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (s, None),
        };
        let name_end = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[name_end..].rfind(':') {
            Some(i) => (&rest[..name_end + i], Some(&rest[name_end + i + 1..])),
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(invalid("repository name must have at least one component"));
        }
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(invalid("invalid tag format"));
            }
        }
        if let Some(digest) = digest {
            Digest::parse(digest).map_err(|reason| invalid(&reason))?;
        }
        let (registry, repository) = split_domain(name);
        let components: Vec<&str> = repository.split('/').collect();
        if !components.iter().all(|c| valid_path_component(c)) {
            return Err(invalid(
                if repository.chars().any(|c| c.is_ascii_uppercase()) {
                    "repository name must be lowercase"
                } else {
                    "expected [registry[:port]/]name[:tag][@sha256:digest], in lowercase"
                },
            ));
        }
        if registry != DOCKER_HUB && !valid_domain(&registry) {
            return Err(invalid("invalid registry name"));
        }
        if repository.len() > NAME_MAX {
            return Err(invalid(
                "repository name must not be more than 255 characters",
            ));
        }
        let inner = match (tag, digest) {
            (Some(t), Some(d)) => {
                Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
            }
            (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
            (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
        };
        Ok(ImageRef { inner })
    }

    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The host (and port) hk actually talks to: Docker Hub's API lives on another name.
    pub fn api_registry(&self) -> &str {
        self.inner.resolve_registry()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| Digest::parse(d).ok())
    }

    /// `registry/repository`, fully qualified: the key under which tags are stored.
    pub fn name(&self) -> String {
        format!("{}/{}", self.inner.registry(), self.inner.repository())
    }

    /// The repository as docker shows it: Docker Hub's `library/` and host are left out.
    pub fn familiar_name(&self) -> String {
        familiar(&self.name())
    }

    /// The stored form: `name:tag` when a tag was given, else `name@digest`.
    pub fn canonical(&self) -> String {
        match self.inner.digest() {
            Some(d) => format!("{}@{d}", self.name()),
            None => format!("{}:{}", self.name(), self.tag().unwrap_or("latest")),
        }
    }

    pub(crate) fn oci(&self) -> &Reference {
        &self.inner
    }

    pub(crate) fn with_digest(&self, digest: &Digest) -> Reference {
        self.inner.clone_with_digest(digest.to_string())
    }
}

const DOCKER_HUB: &str = "docker.io";
const NAME_MAX: usize = 255;

/// docker's `splitDockerDomain`: the first component is a registry when it looks like a
/// host (a dot, a port, `localhost`, or capitals); Docker Hub's official images live under
/// `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = DOCKER_HUB.to_string();
    }
    if domain == DOCKER_HUB && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
}

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or a run of "-", between alphanumerics.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !b.get(i).copied().is_some_and(alnum) {
            return false;
        }
    }
    true
}

/// Host labels of `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?` joined by dots, and an optional
/// numeric port.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()))
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// Shortens a fully qualified repository name the way docker prints it.
pub(crate) fn familiar(name: &str) -> String {
    let rest = name.strip_prefix("docker.io/").unwrap_or(name);
    rest.strip_prefix("library/")
        .filter(|r| !r.contains('/') && name.starts_with("docker.io/"))
        .unwrap_or(rest)
        .to_string()
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.familiar_name();
        match (self.tag(), self.inner.digest()) {
            (_, Some(d)) => write!(f, "{name}@{d}"),
            (Some(t), None) => write!(f, "{name}:{t}"),
            (None, None) => write!(f, "{name}:latest"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_normalisation() {
        let r = ImageRef::parse("alpine").unwrap();
        assert_eq!(r.canonical(), "docker.io/library/alpine:latest");
        assert_eq!(r.to_string(), "alpine:latest");
        assert_eq!(r.api_registry(), "index.docker.io");
        let r = ImageRef::parse("user/app:1.2").unwrap();
        assert_eq!(r.canonical(), "docker.io/user/app:1.2");
        assert_eq!(r.to_string(), "user/app:1.2");
        let r = ImageRef::parse("127.0.0.1:5000/x/y:t").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.to_string(), "127.0.0.1:5000/x/y:t");
        let d = Digest::of(b"x");
        let r = ImageRef::parse(&format!("localhost:5000/a@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.clone()));
        assert_eq!(r.canonical(), format!("localhost:5000/a@{d}"));
        assert!(ImageRef::parse("Upper/Case").is_err());
        assert!(ImageRef::parse("a@sha256:1234").is_err());
    }

    /// The grammar's corners, as docker (distribution/reference) decides them.
    #[test]
    fn the_reference_grammar() {
        let ok = |s: &str| ImageRef::parse(s).map(|r| r.canonical());
        assert_eq!(
            ok("a-b__c_d/f--g.h").unwrap(),
            "docker.io/a-b__c_d/f--g.h:latest"
        );
        assert_eq!(ok("localhost/app").unwrap(), "localhost/app:latest");
        assert_eq!(
            ok("index.docker.io/redis").unwrap(),
            "docker.io/library/redis:latest"
        );
        assert_eq!(
            ok("reg.example.com/team/app:v1.0-rc_1").unwrap(),
            "reg.example.com/team/app:v1.0-rc_1"
        );
        assert_eq!(ok("MyReg.io:443/app").unwrap(), "MyReg.io:443/app:latest");
        let d = Digest::of(b"y");
        let r = ImageRef::parse(&format!("app:1@{d}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (Some("1"), Some(d)));
        for bad in [
            "",
            ":tag",
            "app:",
            "app:-x",
            "a__-b",
            "a...b",
            "_a",
            "a_",
            "app/",
            "/app",
            "UPPER",
            "app:tag:more",
            "reg:port/app",
            "a///b",
            "ap p",
            &format!("app:{}", "t".repeat(129)),
            &format!("x/{}", "a".repeat(254)),
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(ImageRef::parse(&format!("x/{}", "a".repeat(253))).is_ok());
    }
}
