//! `hk push`: an image from the store to a registry, under the name given, which need not
//! be the one it came from (`hk tag` then `hk push`).
//!
//! Docker's order: every blob (layers, then config) first, the manifest last, so the name
//! never points at something the registry does not have. A blob is not sent when the
//! registry already has it in the target repository (HEAD), or can mount it from another
//! repository of the same registry that this image also has a name in (cross-repository
//! mount, one request); only then is it streamed from the store, one PUT per blob, as it is
//! on disk. The manifest is the stored one, byte for byte, so the image keeps its digest
//! (and a pull gets back the same image ID).

use crate::error::chain;
use crate::media;
use crate::progress::{Event, Progress};
use crate::registry::{client_with, registry_auth};
use crate::store::Store;
use crate::{Digest, Error, ImageRef, Result};
use futures_util::{StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::{Client, RegistryOperation};
use tokio::io::AsyncReadExt;

/// A blob's reason when the registry wants credentials: the push reports it once, for the
/// image, with what to do about it.
const UNAUTHORIZED: &str = "unauthorized";

/// docker's default `max-concurrent-uploads`.
const CONCURRENT_UPLOADS: usize = 5;

#[derive(Default)]
pub struct PushOptions {
    /// As [`crate::PullOptions::tls_verify`].
    pub tls_verify: Option<bool>,
}

/// What the registry now has under the name.
#[derive(Debug)]
pub struct Pushed {
    /// The manifest's digest, as docker prints it (`latest: digest: … size: …`).
    pub digest: Digest,
    pub size: usize,
}

/// Pushes the image stored under `name` to `name`'s registry and repository.
pub async fn push(
    store: &Store,
    name: &ImageRef,
    opts: &PushOptions,
    progress: &dyn Progress,
) -> Result<Pushed> {
    let shown = name.to_string();
    if name.digest().is_some() {
        return Err(Error::Image {
            image: shown,
            reason: "cannot push a digest reference: give a tag".into(),
        });
    }
    let _lock = store.writer_lock()?;
    let image = store
        .resolve(&name.canonical())
        .ok()
        .filter(|i| i.names.contains(&name.canonical()))
        .ok_or_else(|| Error::Image {
            image: shown.clone(),
            reason: "An image does not exist locally with the tag".into(),
        })?;
    let manifest = store.read_blob(&image.manifest)?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|m| m["mediaType"].as_str().map(String::from))
        .unwrap_or_else(|| media::OCI_MANIFEST.to_string());

    let client = client_with(name.api_registry(), opts.tls_verify, true);
    let auth = registry_auth(name.registry())?;
    let registry_err = |cause| Error::Registry {
        image: shown.clone(),
        cause,
    };
    let unauthorized = || Error::Image {
        image: shown.clone(),
        reason: format!(
            "unauthorized: authentication required (hk login {})",
            name.registry()
        ),
    };
    client
        .auth(name.oci(), &auth, RegistryOperation::Push)
        .await
        .map_err(|e| match e {
            OciDistributionError::AuthenticationFailure(_) => unauthorized(),
            e => registry_err(e),
        })?;
    // Other repositories of this registry that hold the image: blobs can be mounted.
    let mount_from: Vec<ImageRef> = image
        .names
        .iter()
        .filter_map(|n| ImageRef::parse(n).ok())
        .filter(|n| n.registry() == name.registry() && n.name() != name.name())
        .collect();

    let total = image.layers.len();
    // (what, digest, size, whether docker shows it: layers yes, the config no).
    let mut blobs: Vec<(String, Digest, u64, bool)> = image
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                format!("layer {} ({}/{total})", l.digest.short(), i + 1),
                l.digest.clone(),
                l.size,
                true,
            )
        })
        .collect();
    let config_size = std::fs::metadata(store.blob_path(&image.config))
        .map_err(Error::io(store.blob_path(&image.config)))?
        .len();
    blobs.push((
        format!("config {}", image.config.short()),
        image.config.clone(),
        config_size,
        false,
    ));
    let p = Pusher {
        store,
        client: &client,
        name,
        image: &shown,
        progress,
        mount_from: &mount_from,
    };
    for (_, digest, size, _) in blobs.iter().filter(|b| b.3) {
        progress.event(Event::Waiting {
            layer: digest,
            size: *size,
        });
    }
    futures_util::stream::iter(blobs.iter())
        .map(|(part, digest, size, shown)| p.blob(part, digest, *size, *shown))
        .buffer_unordered(CONCURRENT_UPLOADS)
        .try_collect::<Vec<()>>()
        .await
        .map_err(|e| match e {
            Error::Blob { reason, .. } if reason == UNAUTHORIZED => unauthorized(),
            e => e,
        })?;

    let content_type = media_type.parse().map_err(|_| Error::Image {
        image: shown.clone(),
        reason: format!("manifest media type {media_type:?} is not a header value"),
    })?;
    let size = manifest.len();
    client
        .push_manifest_raw(name.oci(), manifest, content_type)
        .await
        .map_err(registry_err)?;
    Ok(Pushed {
        digest: image.manifest,
        size,
    })
}

struct Pusher<'a> {
    store: &'a Store,
    client: &'a Client,
    name: &'a ImageRef,
    image: &'a str,
    progress: &'a dyn Progress,
    mount_from: &'a [ImageRef],
}

impl Pusher<'_> {
    /// One blob to the registry unless it is there already or can be mounted.
    async fn blob(&self, part: &str, digest: &Digest, size: u64, shown: bool) -> Result<()> {
        let silent = crate::progress::Silent;
        let progress: &dyn Progress = if shown { self.progress } else { &silent };
        let fail = |reason: String| Error::Blob {
            image: self.image.to_string(),
            part: part.to_string(),
            reason,
        };
        let target = self.name.oci();
        let exists = self
            .client
            .blob_exists(target, digest.as_str())
            .await
            .map_err(|e| match e {
                OciDistributionError::RequestError(r)
                    if r.status() == Some(reqwest::StatusCode::UNAUTHORIZED) =>
                {
                    fail(UNAUTHORIZED.into())
                }
                e => fail(format!("cannot ask the registry for it: {}", chain(&e))),
            })?;
        if exists {
            progress.event(Event::Exists { layer: digest });
            return Ok(());
        }
        for source in self.mount_from {
            // A registry that cannot mount answers 202 and an upload session: that is an
            // error here, and the blob is uploaded below.
            if self
                .client
                .mount_blob(target, source.oci(), digest.as_str())
                .await
                .is_ok()
            {
                progress.event(Event::Exists { layer: digest });
                return Ok(());
            }
        }
        let path = self.store.blob_path(digest);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(Error::io(&path))?;
        // The stream must be 'static, so it tells how far it got through a channel that
        // this task reads while the upload runs.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let stream =
            futures_util::stream::try_unfold((file, tx, 0u64), |(mut file, tx, sent)| async move {
                let mut buf = bytes::BytesMut::with_capacity(1 << 20);
                let n = file.read_buf(&mut buf).await.map_err(|e| {
                    OciDistributionError::GenericError(Some(format!(
                        "reading the stored blob: {e}"
                    )))
                })?;
                if n == 0 {
                    return Ok(None);
                }
                let sent = sent + n as u64;
                let _ = tx.send(sent);
                Ok(Some((buf.freeze(), (file, tx, sent))))
            });
        let upload = self
            .client
            .push_blob_stream(target, stream, digest.as_str(), Some(size));
        let report = async {
            let mut reported = 0;
            while let Some(sent) = rx.recv().await {
                if sent - reported >= 256 << 10 || sent == size {
                    reported = sent;
                    progress.event(Event::Downloading {
                        layer: digest,
                        done: sent,
                    });
                }
            }
        };
        let (uploaded, ()) = tokio::join!(upload, report);
        uploaded.map_err(|e| fail(format!("upload failed: {}", chain(&e))))?;
        progress.event(Event::Complete { layer: digest });
        Ok(())
    }
}
