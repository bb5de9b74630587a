//! Which entry of a multi-platform image index fits this host, ranked the way containerd
//! (and so docker) ranks them.

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

    /// How well a platform fits this one: 0 for the best, `None` when it cannot run here.
    /// The order is containerd's (`platforms.Only`): the same variant first, then older
    /// variants of the same architecture, newest first (arm v8..v5, amd64 vN..v1, arm64
    /// v9.x..v9 then v8.(x+5)..v8). containerd also runs 386 on amd64 and 32-bit arm on
    /// arm64; hk leaves those out, its guest kernel has no 32-bit support.
    pub(crate) fn rank(&self, os: &str, arch: &str, variant: Option<&str>) -> Option<usize> {
        let got = normalize(os, arch, variant);
        self.candidates().iter().position(|c| *c == got)
    }

    fn candidates(&self) -> Vec<(String, String, Option<String>)> {
        let (os, arch, variant) = normalize(&self.os, &self.architecture, self.variant.as_deref());
        let with = |v: String| normalize(&os, &arch, Some(&v));
        let number = |v: &Option<String>| {
            v.as_deref()
                .and_then(|v| v.strip_prefix('v'))
                .and_then(|n| n.parse::<u32>().ok())
        };
        let mut out = vec![(os.clone(), arch.clone(), variant.clone())];
        match arch.as_str() {
            "arm" => {
                if let Some(n) = number(&variant) {
                    out.extend((5..n).rev().map(|n| with(format!("v{n}"))));
                }
            }
            "amd64" => {
                if let Some(n) = number(&variant) {
                    out.extend((1..n).rev().map(|n| with(format!("v{n}"))));
                }
            }
            "arm64" => {
                // arm64's variants are ARM architecture versions: v8 is none after
                // normalizing, v9.x implies v8.(x+5).
                let (major, minor) = match variant.as_deref().map(|v| v.trim_start_matches('v')) {
                    None => (8, 0),
                    Some(v) => match v.split_once('.') {
                        Some((major, minor)) => (
                            major.parse().unwrap_or(0),
                            minor.parse().unwrap_or(u32::MAX),
                        ),
                        None => (v.parse().unwrap_or(0), 0),
                    },
                };
                let version = |major: u32, minor: u32| match minor {
                    0 => with(format!("v{major}")),
                    _ => with(format!("v{major}.{minor}")),
                };
                if major == 9 && minor <= 9 {
                    out = (0..=minor).rev().map(|m| version(9, m)).collect();
                    out.extend((0..=(minor + 5).min(9)).rev().map(|m| version(8, m)));
                } else if major == 8 && minor <= 9 {
                    out = (0..=minor).rev().map(|m| version(8, m)).collect();
                }
            }
            _ => {}
        }
        out
    }
}

/// containerd's normal form of a platform: aliases resolved, amd64/v1 and arm64/v8 without
/// a variant, arm without one as arm/v7.
fn normalize(os: &str, arch: &str, variant: Option<&str>) -> (String, String, Option<String>) {
    let variant = variant
        .filter(|v| !v.is_empty())
        .map(str::to_ascii_lowercase);
    let (arch, variant) = match (arch.to_ascii_lowercase().as_str(), variant.as_deref()) {
        ("i386", _) => ("386".to_string(), None),
        ("x86_64" | "x86-64" | "amd64", Some("v1")) => ("amd64".to_string(), None),
        ("x86_64" | "x86-64", _) => ("amd64".to_string(), variant),
        ("aarch64" | "arm64", Some("8" | "v8" | "v8.0")) => ("arm64".to_string(), None),
        ("aarch64" | "arm64", Some("9" | "9.0" | "v9.0")) => {
            ("arm64".to_string(), Some("v9".into()))
        }
        ("aarch64", _) => ("arm64".to_string(), variant),
        ("armhf", _) => ("arm".to_string(), Some("v7".into())),
        ("armel", _) => ("arm".to_string(), Some("v6".into())),
        ("arm", None | Some("7")) => ("arm".to_string(), Some("v7".into())),
        ("arm", Some(n @ ("5" | "6" | "8"))) => ("arm".to_string(), Some(format!("v{n}"))),
        (arch, _) => (arch.to_string(), variant),
    };
    (os.to_ascii_lowercase(), arch, variant)
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

/// Picks the manifest that fits `want` best from an index (see [`Platform::rank`]); among
/// equals, the first. Attestation manifests (BuildKit stores
/// provenance as index entries for `unknown/unknown`) are never images to run. On failure the
/// error lists what the index offers, which is what a person needs to pick `--platform`.
pub(crate) fn select(index: &ImageIndex, want: &Platform) -> std::result::Result<Digest, String> {
    let mut offered = Vec::new();
    let mut best = None;
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
        if let Some(rank) = want.rank(&os, &arch, p.variant().as_deref()) {
            if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                best = Some((rank, m.digest()));
            }
        }
        offered.push(match p.variant() {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
    }
    if let Some((_, digest)) = best {
        return Digest::parse(digest.as_ref());
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

    /// containerd's ordering (`platforms.Only`): the exact variant first, then older ones of
    /// the same architecture, newest first, wherever they stand in the index.
    #[test]
    fn ranks_variants_as_containerd_does() {
        let p = |s: &str| s.parse::<Platform>().unwrap();
        let pick = |idx: &ImageIndex, want: &str| select(idx, &p(want)).ok();
        let d = |i: u8| Some(Digest::of(&[i]));

        let arm = index(&[
            ("linux", "arm", Some("v5"), false),
            ("linux", "arm", Some("v7"), false),
            ("linux", "arm", Some("v6"), false),
        ]);
        assert_eq!(pick(&arm, "linux/arm/v7"), d(1));
        assert_eq!(pick(&arm, "linux/arm"), d(1), "arm means arm/v7");
        assert_eq!(pick(&arm, "linux/arm/v8"), d(1), "the newest older variant");
        assert_eq!(pick(&arm, "linux/arm/v6"), d(2));
        let old_arm = index(&[("linux", "arm", Some("v5"), false)]);
        assert_eq!(pick(&old_arm, "linux/arm/v7"), d(0));

        let amd = index(&[
            ("linux", "amd64", Some("v3"), false),
            ("linux", "amd64", Some("v2"), false),
            ("linux", "amd64", None, false),
        ]);
        assert_eq!(
            pick(&amd, "linux/amd64"),
            d(2),
            "a v1 CPU cannot run v2 code"
        );
        assert_eq!(pick(&amd, "linux/amd64/v1"), d(2));
        assert_eq!(pick(&amd, "linux/amd64/v2"), d(1));
        assert_eq!(pick(&amd, "linux/amd64/v4"), d(0));
        let v3_only = index(&[("linux", "amd64", Some("v3"), false)]);
        assert_eq!(pick(&v3_only, "linux/amd64"), None);

        let arm64 = index(&[
            ("linux", "arm64", Some("v8"), false),
            ("linux", "arm64", Some("v8.2"), false),
            ("linux", "arm64", Some("v9"), false),
        ]);
        assert_eq!(pick(&arm64, "linux/arm64"), d(0));
        assert_eq!(pick(&arm64, "linux/arm64/v8.4"), d(1));
        assert_eq!(pick(&arm64, "linux/arm64/v9.1"), d(2));
        let v8_only = index(&[("linux", "arm64", Some("v8.2"), false)]);
        assert_eq!(
            pick(&v8_only, "linux/arm64/v9"),
            d(0),
            "v9.0 runs v8.5 code"
        );

        // Other spellings of the same platforms.
        let aliases = index(&[
            ("linux", "aarch64", None, false),
            ("linux", "x86_64", None, false),
            ("linux", "arm", Some("7"), false),
        ]);
        assert_eq!(pick(&aliases, "linux/arm64/v8"), d(0));
        assert_eq!(pick(&aliases, "linux/amd64"), d(1));
        assert_eq!(pick(&aliases, "linux/arm/v7"), d(2));

        // containerd also runs 386 on amd64 and 32-bit arm on arm64; hk's guest kernel has no
        // 32-bit support, so neither is offered.
        let thirty_two = index(&[
            ("linux", "386", None, false),
            ("linux", "arm", Some("v7"), false),
        ]);
        assert_eq!(pick(&thirty_two, "linux/amd64"), None);
        assert_eq!(pick(&thirty_two, "linux/arm64"), None);
    }
}
