//! Pulling from a registry into the store. oci-client speaks the distribution protocol
//! (token auth included); this module decides what to fetch, refuses what it cannot use
//! before downloading it, and streams every blob to disk through a size and digest check.

use crate::auth::{self, Credentials};
use crate::digest::Hasher;
use crate::error::chain;
use crate::media;
use crate::progress::{Event, Progress};
use crate::store::{Image, LayerInfo, Store};
use crate::{platform, Digest, Error, ImageRef, Platform, Result};
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// docker's default `max-concurrent-downloads`.
const CONCURRENT_DOWNLOADS: usize = 3;
/// Manifests and configs are a few KiB; anything beyond these is an attack, not an image.
pub(crate) const MAX_MANIFEST: usize = 4 << 20;
pub(crate) const MAX_CONFIG: u64 = 16 << 20;
/// No real layer comes near this; a descriptor that claims more is refused up front.
const MAX_LAYER: u64 = 64 << 30;

pub struct PullOptions {
    /// What `--platform` asked for. `None` picks the host's entry from an index and takes a
    /// single-platform image whatever its platform, as Docker does; `Some` also refuses a
    /// single-platform image for another platform.
    pub platform: Option<Platform>,
    /// `Some(false)` talks plain HTTP to this registry, like podman's `--tls-verify=false`.
    /// `None` uses plain HTTP only for localhost and `HK_INSECURE_REGISTRIES`.
    pub tls_verify: Option<bool>,
    /// Build the root filesystem before recording the name, as docker unpacks on pull: a
    /// layer that cannot be converted then fails the pull instead of a later run.
    pub convert: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            tls_verify: None,
            convert: true,
        }
    }
}

/// Whether to speak plain HTTP to `registry` (`host[:port]`): loopback (`localhost`,
/// 127.0.0.0/8, `::1`) by default, as docker does, plus what the user listed in
/// `HK_INSECURE_REGISTRIES` (comma-separated hosts, with or without port).
pub(crate) fn plain_http(registry: &str, tls_verify: Option<bool>) -> bool {
    let listed = std::env::var("HK_INSECURE_REGISTRIES").unwrap_or_default();
    plain_http_with(registry, tls_verify, &listed)
}

fn plain_http_with(registry: &str, tls_verify: Option<bool>, listed: &str) -> bool {
    if let Some(verify) = tls_verify {
        return !verify;
    }
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    let loopback = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback());
    if host == "localhost" || loopback {
        return true;
    }
    listed
        .split(',')
        .map(str::trim)
        .any(|r| !r.is_empty() && (r == registry || r == host))
}

fn client(registry: &str, tls_verify: Option<bool>) -> Client {
    client_with(registry, tls_verify, false)
}

/// `monolithic`: push each blob in one request (POST, then PUT with the whole body) rather
/// than in chunks.
pub(crate) fn client_with(registry: &str, tls_verify: Option<bool>, monolithic: bool) -> Client {
    // rustls needs a process-wide crypto provider; a second install fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: if plain_http(registry, tls_verify) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        use_monolithic_push: monolithic,
        ..Default::default()
    })
}

/// A plain HTTP client for what oci-client cannot bound (manifests) and for `login`. It keeps
/// no idle connection: it makes one or two requests per pull, and an idle connection would
/// stay open beside the layer downloads for the whole pull.
fn http_client() -> reqwest::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .build()
}

pub(crate) fn registry_auth(registry: &str) -> Result<RegistryAuth> {
    Ok(match auth::lookup(registry)? {
        Some(Credentials { username, password }) => RegistryAuth::Basic(username, password),
        None => RegistryAuth::Anonymous,
    })
}

/// Removes a temp file unless it was committed to the store.
struct TempFile {
    path: PathBuf,
    committed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct Puller<'a> {
    store: &'a Store,
    client: Client,
    /// For manifests, which oci-client would read whole before hk could check their size.
    http: reqwest::Client,
    scheme: &'static str,
    reference: &'a ImageRef,
    auth: RegistryAuth,
    /// The registry's bearer token for pulling, when it uses token auth.
    token: Option<String>,
    image: String,
    progress: &'a dyn Progress,
}

impl Puller<'_> {
    fn image_err(&self, reason: impl Into<String>) -> Error {
        Error::Image {
            image: self.image.clone(),
            reason: reason.into(),
        }
    }

    /// Fetches a manifest or index, at most [`MAX_MANIFEST`] bytes of it: a size announced
    /// beyond that fails before the body is read, and a body that grows beyond it fails as
    /// it streams in.
    async fn manifest(
        &self,
        reference: &oci_client::Reference,
        accept: &[&str],
    ) -> Result<(Vec<u8>, Digest)> {
        let registry_err = |cause| Error::Registry {
            image: self.image.clone(),
            cause,
        };
        let url = format!(
            "{}://{}/v2/{}/manifests/{}{}",
            self.scheme,
            reference.resolve_registry(),
            reference.repository(),
            reference
                .digest()
                .unwrap_or_else(|| reference.tag().unwrap_or("latest")),
            reference
                .namespace()
                .map(|ns| format!("?ns={ns}"))
                .unwrap_or_default(),
        );
        let mut request = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, accept.join(", "));
        request = match (&self.token, &self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        };
        let mut response = request
            .send()
            .await
            .map_err(|e| registry_err(OciDistributionError::RequestError(e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(registry_err(self.refusal(response, url).await));
        }
        if let Some(announced) = response
            .content_length()
            .filter(|&n| n > MAX_MANIFEST as u64)
        {
            return Err(self.image_err(format!("manifest of {announced} bytes is too large")));
        }
        let header_digest = response
            .headers()
            .get("Docker-Content-Digest")
            .map(|v| v.to_str().unwrap_or_default().to_string());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| registry_err(OciDistributionError::RequestError(e)))?
        {
            if body.len() + chunk.len() > MAX_MANIFEST {
                return Err(self.image_err(format!("manifest is larger than {MAX_MANIFEST} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let actual = Digest::of(&body);
        if let Some(digest) =
            header_digest.filter(|d| Digest::parse(d).ok() != Some(actual.clone()))
        {
            return Err(self.image_err(format!(
                "manifest digest mismatch: registry says {digest}, content is {actual}"
            )));
        }
        Ok((body, actual))
    }

    /// The registry's answer to a failed request, read no further than an error needs.
    async fn refusal(&self, mut response: reqwest::Response, url: String) -> OciDistributionError {
        let code = response.status().as_u16();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= 64 << 10 {
                break;
            }
        }
        if code == 401 {
            return OciDistributionError::UnauthorizedError { url };
        }
        match serde_json::from_slice::<OciEnvelope>(&body) {
            Ok(envelope) => OciDistributionError::RegistryError { envelope, url },
            Err(_) => OciDistributionError::ServerError {
                code,
                url,
                message: String::from_utf8_lossy(&body).into_owned(),
            },
        }
    }

    /// Streams one blob into the store, checking size as it comes and digest at the end.
    async fn blob(&self, what: &str, digest: &Digest, size: u64, media_type: &str) -> Result<()> {
        if self.store.has_blob_sized(digest, size) {
            return Ok(());
        }
        let fail = |reason: String| Error::Blob {
            image: self.image.clone(),
            part: what.to_string(),
            reason,
        };
        let desc = OciDescriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size: size as i64,
            ..Default::default()
        };
        let stream = self
            .client
            .pull_blob_stream(self.reference.oci(), &desc)
            .await
            .map_err(|e| fail(format!("download failed: {}", chain(&e))))?;
        if let Some(announced) = stream.content_length.filter(|&n| n != size) {
            return Err(fail(format!(
                "size mismatch: registry announces {announced} bytes, manifest declares {size}"
            )));
        }
        let mut temp = TempFile {
            path: self.store.temp_path("blob"),
            committed: false,
        };
        let path = temp.path.clone();
        let mut file = std::io::BufWriter::with_capacity(
            1 << 20,
            File::create(&path).map_err(Error::io(&path))?,
        );
        let mut hasher = Hasher::default();
        let mut stream = stream.stream;
        let mut reported = 0;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| fail(format!("download failed: {}", chain(&e))))?
        {
            if hasher.len + chunk.len() as u64 > size {
                return Err(fail(format!(
                    "size mismatch: registry sends more than the {size} bytes the manifest declares"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(Error::io(&path))?;
            if hasher.len - reported >= 256 << 10 || hasher.len == size {
                reported = hasher.len;
                self.progress.event(Event::Downloading {
                    layer: digest,
                    done: hasher.len,
                });
            }
        }
        file.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(Error::io(&path))?;
        if hasher.len != size {
            return Err(fail(format!(
                "size mismatch: registry sent {} bytes, manifest declares {size}",
                hasher.len
            )));
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(fail(format!("digest mismatch: content is {actual}")));
        }
        self.store.commit_blob(&path, digest)?;
        temp.committed = true;
        Ok(())
    }
}

/// Pulls `reference` for `opts.platform` into `store` and records its name. Everything is
/// verified (sizes, digests, media types, diff_id count) before the name points at it.
pub async fn pull(
    store: &Store,
    reference: &ImageRef,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<Image> {
    let _lock = store.writer_lock()?;
    let client = client(reference.api_registry(), opts.tls_verify);
    let auth = registry_auth(reference.registry())?;
    let image = reference.to_string();
    let token = client
        .auth(reference.oci(), &auth, RegistryOperation::Pull)
        .await
        .map_err(|cause| Error::Registry {
            image: image.clone(),
            cause,
        })?;
    let http = http_client().map_err(|e| Error::Registry {
        image: image.clone(),
        cause: OciDistributionError::RequestError(e),
    })?;
    let p = Puller {
        store,
        client,
        http,
        scheme: if plain_http(reference.api_registry(), opts.tls_verify) {
            "http"
        } else {
            "https"
        },
        reference,
        auth,
        token,
        image,
        progress,
    };

    let (top, resolved) = p.manifest(reference.oci(), media::MANIFESTS).await?;
    if let Some(want) = reference.digest().filter(|d| *d != resolved) {
        return Err(p.image_err(format!("registry served {resolved} for digest {want}")));
    }
    progress.event(Event::Resolved { digest: &resolved });
    let top_index = parse_top(&top).map_err(|r| p.image_err(r))?;
    let is_index = top_index.is_some();
    let (manifest_bytes, manifest_digest) = if let Some(index) = top_index {
        let want = opts.platform.clone().unwrap_or_else(Platform::host);
        let digest = platform::select(&index, &want).map_err(|r| p.image_err(r))?;
        let (bytes, got) = p
            .manifest(
                &reference.with_digest(&digest),
                &[media::OCI_MANIFEST, media::DOCKER_MANIFEST],
            )
            .await?;
        if got != digest {
            return Err(p.image_err(format!("registry served {got} for manifest {digest}")));
        }
        (bytes, digest)
    } else {
        (top.clone(), resolved.clone())
    };
    let Checked {
        config_digest,
        config_type,
        config_size,
        layers,
    } = check_manifest(&manifest_bytes, &manifest_digest).map_err(|e| match e {
        ManifestError::Image(reason) => p.image_err(reason),
        ManifestError::Layer { part, reason } => Error::Blob {
            image: p.image.clone(),
            part,
            reason,
        },
    })?;
    let total = layers.len();
    let layer_name = |i: usize, d: &Digest| format!("layer {} ({}/{total})", d.short(), i + 1);

    p.blob(
        &format!("config {}", config_digest.short()),
        &config_digest,
        config_size,
        &config_type,
    )
    .await?;
    let config_bytes = store.read_blob(&config_digest).map_err(|e| Error::Blob {
        image: p.image.clone(),
        part: format!("config {}", config_digest.short()),
        reason: e.to_string(),
    })?;
    let config = parse_config(&config_bytes, &config_digest).map_err(|r| p.image_err(r))?;
    if let Some(want) = opts.platform.as_ref().filter(|_| !is_index) {
        let variant = config.variant().as_deref();
        let (os, arch) = (config.os().to_string(), config.architecture().to_string());
        if want.rank(&os, &arch, variant).is_none() {
            return Err(Error::PlatformMismatch {
                image: reference.to_string(),
                wanted: want.to_string(),
                actual: Platform {
                    os,
                    architecture: arch,
                    variant: variant.map(Into::into),
                }
                .to_string(),
            });
        }
    }
    let diff_ids = diff_ids_of(&config, layers.len()).map_err(|r| p.image_err(r))?;

    for (digest, _, size) in &layers {
        if store.has_blob_sized(digest, *size) {
            progress.event(Event::Exists { layer: digest });
        } else {
            progress.event(Event::Waiting {
                layer: digest,
                size: *size,
            });
        }
    }
    futures_util::stream::iter(layers.iter().enumerate())
        .map(|(i, (digest, media_type, size))| {
            let p = &p;
            let name = layer_name(i, digest);
            async move {
                if p.store.has_blob_sized(digest, *size) {
                    return Ok(());
                }
                p.blob(&name, digest, *size, media_type).await?;
                p.progress.event(Event::Complete { layer: digest });
                Ok::<_, Error>(())
            }
        })
        .buffer_unordered(CONCURRENT_DOWNLOADS)
        .try_collect::<Vec<()>>()
        .await?;

    let mut image = Image::new(
        manifest_digest,
        config_digest,
        layer_infos(layers, diff_ids),
        &config,
    );
    image.names = vec![reference.canonical()];
    image.repo_digests = vec![format!("{}@{resolved}", reference.name())];
    store.put_blob(&top)?;
    store.put_blob(&manifest_bytes)?;
    if opts.convert {
        if !image
            .chain_id()
            .is_some_and(|c| store.rootfs_path(&c).exists())
        {
            progress.event(Event::Converting);
        }
        store.rootfs(&image)?;
    }
    store.record(&image, reference, &resolved)?;
    Ok(image)
}

/// A registry's answer to the image's reference: `Some` index for a multi-platform image,
/// `None` for a single manifest (read by [`check_manifest`]). Refuses what is not JSON and
/// Docker schema 1.
fn parse_top(top: &[u8]) -> std::result::Result<Option<ImageIndex>, String> {
    let head: serde_json::Value =
        serde_json::from_slice(top).map_err(|e| format!("manifest is not JSON: {e}"))?;
    if head["schemaVersion"] == 1 {
        return Err(
            "Docker schema 1 manifests are not supported: push the image again with a current tool"
                .into(),
        );
    }
    let is_index = head.get("manifests").is_some()
        || matches!(
            head["mediaType"].as_str(),
            Some(media::OCI_INDEX | media::DOCKER_LIST)
        );
    if !is_index {
        return Ok(None);
    }
    ImageIndex::from_reader(top)
        .map(Some)
        .map_err(|e| format!("malformed image index: {e}"))
}

/// What a single-platform manifest asks to download, checked.
struct Checked {
    config_digest: Digest,
    config_type: String,
    config_size: u64,
    /// Digest, media type and size of each layer, bottom first.
    layers: Vec<(Digest, String, u64)>,
}

enum ManifestError {
    /// Wrong as a whole.
    Image(String),
    /// One layer's descriptor is refused; `part` names it.
    Layer { part: String, reason: String },
}

/// Reads the image manifest `bytes` (whose digest is `digest`) and refuses what hk cannot
/// use before anything is downloaded: a config that is not an image's or too large, layer
/// media types it cannot unpack, absurd sizes, no layers.
fn check_manifest(bytes: &[u8], digest: &Digest) -> std::result::Result<Checked, ManifestError> {
    let image = ManifestError::Image;
    let manifest = ImageManifest::from_reader(bytes)
        .map_err(|e| image(format!("malformed image manifest {digest}: {e}")))?;
    let config_desc = manifest.config();
    let config_type = config_desc.media_type().to_string();
    if !media::is_config(&config_type) {
        return Err(image(format!(
            "not a container image: config media type {config_type:?}"
        )));
    }
    let config_digest = Digest::parse(config_desc.digest().as_ref()).map_err(image)?;
    if config_desc.size() > MAX_CONFIG {
        return Err(image(format!(
            "config of {} bytes is too large",
            config_desc.size()
        )));
    }
    let total = manifest.layers().len();
    let mut layers = Vec::with_capacity(total);
    for (i, l) in manifest.layers().iter().enumerate() {
        let digest = Digest::parse(l.digest().as_ref()).map_err(image)?;
        let media_type = l.media_type().to_string();
        let fail = |reason: String| ManifestError::Layer {
            part: format!("layer {} ({}/{total})", digest.short(), i + 1),
            reason,
        };
        if media::layer_compression(&media_type).is_none() {
            return Err(fail(format!("unsupported layer media type {media_type:?}")));
        }
        if l.size() > MAX_LAYER {
            return Err(fail(format!(
                "declared size of {} bytes is absurd",
                l.size()
            )));
        }
        layers.push((digest, media_type, l.size()));
    }
    if layers.is_empty() {
        return Err(image("the image has no layers".into()));
    }
    Ok(Checked {
        config_digest,
        config_type,
        config_size: config_desc.size(),
        layers,
    })
}

/// Reads the image configuration `bytes`, whose digest is `digest`.
fn parse_config(bytes: &[u8], digest: &Digest) -> std::result::Result<ImageConfiguration, String> {
    ImageConfiguration::from_reader(bytes).map_err(|e| format!("malformed config {digest}: {e}"))
}

/// The config's diff_ids, one for each of the manifest's `layers`.
fn diff_ids_of(
    config: &ImageConfiguration,
    layers: usize,
) -> std::result::Result<Vec<Digest>, String> {
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Digest::parse(d).map_err(|r| format!("config: {r}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if diff_ids.len() != layers {
        return Err(format!(
            "config lists {} diff_ids for {} layers",
            diff_ids.len(),
            layers
        ));
    }
    Ok(diff_ids)
}

/// Runs a registry's answers through what [`pull`] does with them, short of the network,
/// for the fuzz target `registry_manifest` (`fuzz/`): `top` as the reference's manifest or
/// index (with the platform chosen from an index for each of a few `--platform`s),
/// `manifest` as an image manifest and `config` as its configuration, made into the store's
/// record. Errors are what a pull reports. Only built with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
pub fn fuzz_manifests(top: &[u8], manifest: &[u8], config: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    match parse_top(top) {
        Ok(Some(index)) => {
            for want in [
                "linux/amd64",
                "linux/arm64/v8",
                "linux/arm/v6",
                "windows/amd64",
            ] {
                let want: Platform = want.parse().expect("valid platform");
                match platform::select(&index, &want) {
                    Ok(d) => out.push(d.to_string()),
                    Err(e) => out.push(e),
                }
            }
        }
        Ok(None) => {}
        Err(e) => out.push(e),
    }
    let digest = Digest::of(manifest);
    let checked = match check_manifest(manifest, &digest) {
        Ok(c) => c,
        Err(ManifestError::Image(r) | ManifestError::Layer { reason: r, .. }) => {
            out.push(r);
            return out;
        }
    };
    let config_digest = Digest::of(config);
    let parsed = parse_config(config, &config_digest).and_then(|c| {
        let diff_ids = diff_ids_of(&c, checked.layers.len())?;
        Ok((c, diff_ids))
    });
    match parsed {
        Ok((c, diff_ids)) => {
            let image = Image::new(
                digest,
                config_digest,
                layer_infos(checked.layers, diff_ids),
                &c,
            );
            out.push(format!("{:?}", image.chain_id()));
        }
        Err(e) => out.push(e),
    }
    out
}

/// Checks credentials against a registry the way `docker login` does: `/v2/` with basic
/// auth, following a bearer challenge to the token server when the registry uses one.
pub async fn login(registry: &str, creds: &Credentials, tls_verify: Option<bool>) -> Result<()> {
    let host = match registry {
        "docker.io" => "index.docker.io",
        r => r,
    };
    let scheme = if plain_http(host, tls_verify) {
        "http"
    } else {
        "https"
    };
    let fail = |reason: String| Error::Login {
        registry: registry.to_string(),
        reason,
    };
    let http = http_client().map_err(|e| fail(e.to_string()))?;
    let resp = http
        .get(format!("{scheme}://{host}/v2/"))
        .basic_auth(&creds.username, Some(&creds.password))
        .send()
        .await
        .map_err(|e| fail(format!("cannot reach the registry: {e}")))?;
    if resp.status().is_success() {
        return Ok(());
    }
    if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Err(fail(format!("unexpected answer {}", resp.status())));
    }
    let challenge = resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bearer = http_auth::parse_challenges(&challenge).ok().and_then(|cs| {
        cs.into_iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
    });
    let Some(bearer) = bearer else {
        return Err(fail("unauthorized: incorrect username or password".into()));
    };
    let param = |name: &str| {
        bearer
            .params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_unescaped())
    };
    let realm = param("realm").ok_or_else(|| fail("bearer challenge without realm".into()))?;
    let mut query = vec![("account", creds.username.clone())];
    if let Some(service) = param("service") {
        query.push(("service", service));
    }
    let token = http
        .get(&realm)
        .query(&query)
        .basic_auth(&creds.username, Some(&creds.password))
        .send()
        .await
        .map_err(|e| fail(format!("cannot reach the token server {realm}: {e}")))?;
    if token.status().is_success() {
        Ok(())
    } else {
        Err(fail("unauthorized: incorrect username or password".into()))
    }
}

/// The store's layer records: a manifest's (digest, media type, size) with the config's
/// diff_id of each, in order.
fn layer_infos(layers: Vec<(Digest, String, u64)>, diff_ids: Vec<Digest>) -> Vec<LayerInfo> {
    layers
        .into_iter()
        .zip(diff_ids)
        .map(|((digest, media_type, size), diff_id)| LayerInfo {
            digest,
            media_type,
            size,
            diff_id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::plain_http_with;

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.0.0.2",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(plain_http_with(r, None, ""), "{r}");
        }
        for r in [
            "docker.io",
            "index.docker.io",
            "registry.local:5000",
            "10.0.0.1:5000",
        ] {
            assert!(!plain_http_with(r, None, ""), "{r}");
        }
        let listed = "registry.local, 10.0.0.1:5000";
        assert!(plain_http_with("registry.local:5000", None, listed));
        assert!(plain_http_with("10.0.0.1:5000", None, listed));
        assert!(!plain_http_with("10.0.0.1:6000", None, listed));
        assert!(plain_http_with("example.com", Some(false), ""));
        assert!(!plain_http_with("localhost:5000", Some(true), ""));
    }
}
