//! Docker-style image references. Parsing and normalisation (`alpine` →
//! `docker.io/library/alpine:latest`) come from oci-spec; this wrapper adds the short
//! "familiar" spelling docker prints back to people.

use crate::{Digest, Error, Result};
use oci_client::Reference;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        let inner: Reference = s.parse().map_err(|e: oci_client::ParseError| {
            let reason = match e.to_string() {
                generic if generic == "invalid reference format" => {
                    "expected [registry[:port]/]name[:tag][@sha256:digest], in lowercase".into()
                }
                specific => specific,
            };
            Error::InvalidReference {
                reference: s.to_string(),
                reason,
            }
        })?;
        if let Some(d) = inner.digest() {
            Digest::parse(d).map_err(|reason| Error::InvalidReference {
                reference: s.to_string(),
                reason,
            })?;
        }
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
}
