//! Which entry of a multi-platform image index fits this host, the way docker chooses.

use crate::{Digest, Error, Result};
use oci_spec::image::ImageIndex;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform hk runs containers for: the host's own, in OCI's spelling.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    /// Whether an index entry's platform fits this one. arm64's only variant is v8, so an
    /// entry without one fits an arm64/v8 host, as containerd's matcher has it.
    fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        if os != self.os || arch != self.architecture {
            return false;
        }
        match (self.variant.as_deref(), variant) {
            (None, _) => true,
            (Some(want), Some(got)) => want == got,
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        }
    }
}

impl FromStr for Platform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: Some(variant.to_string()),
                })
            }
            _ => Err(Error::InvalidPlatform(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the manifest for `want` from an index. Attestation manifests (BuildKit stores
/// provenance as index entries for `unknown/unknown`) are never images to run. On failure the
/// error lists what the index offers, which is what a person needs to pick `--platform`.
pub(crate) fn select(index: &ImageIndex, want: &Platform) -> std::result::Result<Digest, String> {
    let mut offered = Vec::new();
    for m in index.manifests() {
        let attestation = m
            .annotations()
            .as_ref()
            .and_then(|a| a.get("vnd.docker.reference.type"))
            .is_some_and(|t| t == "attestation-manifest");
        let Some(p) = m.platform() else { continue };
        let (os, arch) = (p.os().to_string(), p.architecture().to_string());
        if attestation || os == "unknown" {
            continue;
        }
        if want.matches(&os, &arch, p.variant().as_deref()) {
            return Digest::parse(m.digest().as_ref());
        }
        offered.push(match p.variant() {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
    }
    Err(format!(
        "no image for platform {want} in the image index (it offers: {})",
        if offered.is_empty() {
            "nothing runnable".to_string()
        } else {
            offered.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(&str, &str, Option<&str>, bool)]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant, attest))| {
                let mut platform = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    platform["variant"] = (*v).into();
                }
                let mut m = serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": Digest::of(&[i as u8]).to_string(),
                    "size": 10,
                    "platform": platform,
                });
                if *attest {
                    m["annotations"] =
                        serde_json::json!({"vnd.docker.reference.type": "attestation-manifest"});
                }
                m
            })
            .collect();
        let json = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        ImageIndex::from_reader(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn selects_host_platform_and_skips_attestations() {
        let idx = index(&[
            ("unknown", "unknown", None, true),
            ("linux", "arm64", Some("v8"), false),
            ("linux", "amd64", None, true),
            ("linux", "amd64", None, false),
        ]);
        let amd64: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(select(&idx, &amd64).unwrap(), Digest::of(&[3]));
        let arm64 = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(select(&idx, &arm64).unwrap(), Digest::of(&[1]));
        let err = select(&idx, &"linux/s390x".parse().unwrap()).unwrap_err();
        assert!(err.contains("linux/arm64/v8, linux/amd64"), "{err}");
        let bare_arm = index(&[("linux", "arm64", None, false)]);
        assert_eq!(select(&bare_arm, &arm64).unwrap(), Digest::of(&[0]));
        assert!("linux".parse::<Platform>().is_err());
    }
}
