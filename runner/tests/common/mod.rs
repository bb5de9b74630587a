//! Shared by the image tests: a real registry (Debian's `docker-registry`) on 127.0.0.1 with
//! temporary storage, images the tests build themselves (tar layers, configs, manifests,
//! indexes) pushed to it with oci-client, and a way to run `hk` against a private store.
#![allow(dead_code)] // each test binary uses its own part of this module

use hk_image::Digest;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const HK: &str = env!("CARGO_BIN_EXE_hk");

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A `docker-registry` process; killed and its storage removed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
    client: Client,
    auth: RegistryAuth,
    rt: tokio::runtime::Runtime,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

impl Registry {
    pub fn start() -> Registry {
        Registry::launch(None, false)
    }

    /// A registry that wants HTTP basic auth (htpasswd) from every client.
    pub fn start_with_htpasswd(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user, password)), false)
    }

    /// A registry that wants bearer tokens from a token server (distribution's token auth,
    /// as Docker Hub does); the token server wants `user`/`password` as basic auth.
    pub fn start_with_token_server(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user, password)), true)
    }

    fn launch(auth: Option<(&str, &str)>, token: bool) -> Registry {
        let bin = "/usr/bin/docker-registry";
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: apt-get install docker-registry (the image tests need a real registry)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        if let (Some((user, password)), true) = (auth, token) {
            let (realm, cert) = token_server(dir.path(), user, password);
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                cert.display()
            ));
        } else if let Some((user, password)) = auth {
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: hk-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
                panic!("docker-registry exited with {status}: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        });
        let auth = match auth {
            Some((u, p)) => RegistryAuth::Basic(u.into(), p.into()),
            None => RegistryAuth::Anonymous,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Registry {
            child,
            addr,
            dir,
            client,
            auth,
            rt,
        }
    }

    fn reference(&self, repo: &str, tag: &str) -> Reference {
        format!("{}/{repo}:{tag}", self.addr)
            .parse()
            .expect("reference")
    }

    /// Uploads a blob as is: the tests decide whether it matches what a manifest says.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        let r = self.reference(repo, "x");
        self.rt.block_on(async {
            self.client
                .store_auth_if_needed(r.resolve_registry(), &self.auth)
                .await;
            self.client
                .push_blob(&r, data.to_vec(), digest.as_str())
                .await
                .expect("push blob")
        });
        digest
    }

    /// Uploads a manifest (or index) under `tag`; returns its digest.
    pub fn push_manifest(&self, repo: &str, tag: &str, body: &[u8], media_type: &str) -> Digest {
        let r = self.reference(repo, tag);
        self.rt.block_on(async {
            self.client
                .store_auth_if_needed(r.resolve_registry(), &self.auth)
                .await;
            self.client
                .push_manifest_raw(&r, body.to_vec(), media_type.parse().expect("header"))
                .await
                .expect("push manifest")
        });
        Digest::of(body)
    }

    /// Builds and pushes a single-platform image; returns the manifest digest.
    pub fn push_image(&self, repo: &str, tag: &str, image: &TestImage) -> Digest {
        let (manifest, media_type) = image.manifest(self, repo);
        self.push_manifest(repo, tag, &manifest, media_type)
    }

    /// Pushes an index over already pushed manifests: (manifest digest, size, arch).
    pub fn push_index(&self, repo: &str, tag: &str, entries: &[(Digest, usize, &str)]) -> Digest {
        self.push_list(repo, tag, entries, OCI_INDEX, OCI_MANIFEST)
    }

    /// The same as Docker's manifest list over Docker schema2 manifests.
    pub fn push_docker_list(
        &self,
        repo: &str,
        tag: &str,
        entries: &[(Digest, usize, &str)],
    ) -> Digest {
        self.push_list(repo, tag, entries, DOCKER_LIST, DOCKER_MANIFEST)
    }

    fn push_list(
        &self,
        repo: &str,
        tag: &str,
        entries: &[(Digest, usize, &str)],
        list_type: &str,
        entry_type: &str,
    ) -> Digest {
        let mut manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(d, size, arch)| {
                serde_json::json!({
                    "mediaType": entry_type,
                    "digest": d.to_string(),
                    "size": size,
                    "platform": {"architecture": arch, "os": "linux"},
                })
            })
            .collect();
        // As BuildKit writes them: an attestation entry that must never be chosen.
        manifests.push(serde_json::json!({
            "mediaType": entry_type,
            "digest": entries[0].0.to_string(),
            "size": entries[0].1,
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
        }));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": list_type,
            "manifests": manifests,
        });
        self.push_manifest(repo, tag, index.to_string().as_bytes(), list_type)
    }

    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }

    /// Where the registry keeps a blob: tests that play a hostile registry rewrite it, and
    /// the registry then serves the new bytes under the old digest.
    pub fn blob_data(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

const TOKEN_SERVICE: &str = "hk-test-registry";
const TOKEN_ISSUER: &str = "hk-test-issuer";

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run openssl");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A minimal token server (distribution's token auth): checks basic auth and answers with an
/// ES256 JWT granting what the scope asks, signed by a throwaway key whose self-signed
/// certificate the registry trusts. Returns the realm URL and the certificate path.
fn token_server(dir: &Path, user: &str, password: &str) -> (String, PathBuf) {
    use base64::Engine as _;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let key = dir.join("token-key.der");
    let cert = dir.join("token-cert.pem");
    let cert_der = dir.join("token-cert.der");
    // ring generates the key: it reads only its own PKCS#8 layout, and openssl reads that.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    std::fs::write(&key, pkcs8.as_ref()).expect("write key");
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-new",
                "-keyform",
                "DER",
                "-subj",
                "/CN=hk-test-token",
                "-days",
                "2",
                "-key",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    run_ok(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .arg("-out")
            .arg(&cert_der),
    );
    let pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &std::fs::read(&key).unwrap(),
        &rng,
    )
    .expect("ES256 key");
    let x5c = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&cert_der).unwrap());
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for mut conn in listener.incoming().flatten() {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match std::io::Read::read(&mut conn, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req).into_owned();
            let authorized = req.lines().any(|l| {
                let Some((name, value)) = l.split_once(':') else {
                    return false;
                };
                let mut parts = value.split_whitespace();
                name.eq_ignore_ascii_case("authorization")
                    && parts
                        .next()
                        .is_some_and(|s| s.eq_ignore_ascii_case("basic"))
                    && parts.next() == Some(expected.as_str())
            });
            let target = req.split_whitespace().nth(1).unwrap_or("").to_string();
            let query = target.split_once('?').map(|x| x.1).unwrap_or("");
            let access: Vec<serde_json::Value> = query
                .split('&')
                .filter_map(|kv| kv.strip_prefix("scope="))
                .map(|s| s.replace("%3A", ":").replace("%3a", ":").replace("%2C", ",").replace("%2c", ",").replace("%2F", "/").replace("%2f", "/"))
                .filter_map(|s| {
                    let (kind, rest) = s.split_once(':')?;
                    let (name, actions) = rest.rsplit_once(':')?;
                    Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                })
                .collect();
            let response = if authorized {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
                let claims = serde_json::json!({
                    "iss": TOKEN_ISSUER, "sub": "hkuser", "aud": TOKEN_SERVICE,
                    "exp": now + 600, "nbf": now - 60, "iat": now, "jti": format!("{now}-{}", access.len()),
                    "access": access,
                });
                let signing_input = format!(
                    "{}.{}",
                    b64.encode(header.to_string()),
                    b64.encode(claims.to_string())
                );
                let sig = pair.sign(&rng, signing_input.as_bytes()).expect("sign");
                let token = format!("{signing_input}.{}", b64.encode(sig.as_ref()));
                let body =
                    serde_json::json!({"token": token, "access_token": token, "expires_in": 600})
                        .to_string();
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            } else {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = conn.write_all(response.as_bytes());
        }
    });
    (realm, cert)
}

/// A TCP proxy in front of a registry that can slow replies down to `rate` bytes per second
/// (0: full speed), so that a test can catch a pull in the middle of a layer.
pub struct Throttle {
    pub addr: String,
    pub rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The most client connections that were open at the same time.
    pub max_open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Throttle {
    pub fn start(upstream: &str, rate: u64) -> Throttle {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let rate = Arc::new(AtomicU64::new(rate));
        let upstream = upstream.to_string();
        let r = rate.clone();
        let max_open = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let max = max_open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                let open = open.clone();
                let (mut c_in, mut s_out) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                let rate = r.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 << 10];
                    loop {
                        let n = match std::io::Read::read(&mut s_in, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        let bps = rate.load(Ordering::Relaxed);
                        if bps > 0 {
                            std::thread::sleep(Duration::from_secs_f64(n as f64 / bps as f64));
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Throttle {
            addr,
            rate,
            max_open,
        }
    }
}

/// Bytes that do not compress: layers big enough to take measurable time to move.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
    }
}

/// One layer of a test image: the uncompressed tar and how it travels.
pub struct TestLayer {
    pub tar: Vec<u8>,
    pub compression: Compression,
}

pub struct TestImage {
    pub layers: Vec<TestLayer>,
    pub architecture: String,
    /// Docker schema2 media types instead of OCI's.
    pub docker: bool,
    /// The config's `config` object (Entrypoint, Cmd, Env, ...); a shell by default.
    pub container_config: serde_json::Value,
}

impl TestImage {
    pub fn new(layers: Vec<TestLayer>) -> TestImage {
        TestImage {
            layers,
            architecture: "amd64".into(),
            docker: false,
            container_config: serde_json::json!({
                "Cmd": ["/bin/sh"],
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            }),
        }
    }

    pub fn config(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self
            .layers
            .iter()
            .map(|l| Digest::of(&l.tar).to_string())
            .collect();
        serde_json::json!({
            "architecture": self.architecture,
            "os": "linux",
            "created": "2024-05-01T12:00:00Z",
            "config": self.container_config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        .to_string()
        .into_bytes()
    }

    /// Pushes config and layers; returns the manifest body and its media type.
    pub fn manifest(&self, reg: &Registry, repo: &str) -> (Vec<u8>, &'static str) {
        let config = self.config();
        let config_digest = reg.push_blob(repo, &config);
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| {
                let blob = compress(&l.tar, l.compression);
                let digest = reg.push_blob(repo, &blob);
                let media_type = match (self.docker, l.compression) {
                    (true, Compression::Gzip) => DOCKER_TAR_GZIP,
                    (true, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
                    (_, Compression::Gzip) => TAR_GZIP,
                    (_, Compression::Zstd) => TAR_ZSTD,
                    (_, Compression::None) => TAR,
                };
                serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": blob.len()})
            })
            .collect();
        let (mt, config_mt) = if self.docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": config_mt, "digest": config_digest.to_string(), "size": config.len()},
            "layers": layers,
        });
        (manifest.to_string().into_bytes(), mt)
    }
}

/// Builds an uncompressed tar from (path, kind) entries.
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("tar dir");
        self
    }

    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.b.append_data(&mut h, path, data).expect("tar file");
        self
    }

    /// A directory or regular file (`data: None` for a directory) owned by `uid:gid`.
    pub fn owned(
        mut self,
        path: &str,
        mode: u32,
        (uid, gid): (u64, u64),
        data: Option<&[u8]>,
    ) -> Self {
        let kind = if data.is_some() {
            tar::EntryType::Regular
        } else {
            tar::EntryType::Directory
        };
        let body = data.unwrap_or_default();
        let mut h = Self::header(kind, mode, body.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b.append_data(&mut h, path, body).expect("tar entry");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("tar symlink");
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("tar hardlink");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("tar")
    }
}

/// A busybox-static root: the binary and the applet links a shell needs.
pub fn busybox_tar() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (Debian's busybox-static) is needed by the image tests");
    let mut t = TarBuilder::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .dir("tmp", 0o1777)
        .file("bin/busybox", 0o755, &busybox)
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    for applet in ["sh", "ls", "cat", "echo", "mount"] {
        t = t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.finish()
}

/// `hk` with a private store and docker config, so tests never see the user's.
pub struct Hk {
    pub data: tempfile::TempDir,
    pub home: tempfile::TempDir,
    pub path_prefix: Option<PathBuf>,
}

impl Default for Hk {
    fn default() -> Self {
        Self::new()
    }
}

impl Hk {
    pub fn new() -> Hk {
        Hk {
            data: tempfile::tempdir().expect("tempdir"),
            home: tempfile::tempdir().expect("tempdir"),
            path_prefix: None,
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(HK);
        c.args(args)
            .env("HK_DATA_DIR", self.data.path())
            .env("HOME", self.home.path())
            .env("DOCKER_CONFIG", self.home.path().join(".docker"))
            .env_remove("HK_INSECURE_REGISTRIES")
            .stdin(Stdio::null());
        if let Some(prefix) = &self.path_prefix {
            let path = std::env::var("PATH").unwrap_or_default();
            c.env("PATH", format!("{}:{path}", prefix.display()));
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run hk")
    }

    /// Runs hk and insists it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "hk {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs hk and insists it fails with exit code `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "hk {args:?}: expected exit {code}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).expect("utf-8 output")
    }

    /// Every file under a store directory, relative to it.
    pub fn store_files(&self, sub: &str) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.data.path().join(sub);
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        out
    }

    /// Checks that every blob in the store has the content its name says.
    pub fn assert_store_consistent(&self) {
        let blobs = self.data.path().join("blobs/sha256");
        for e in std::fs::read_dir(&blobs).expect("blobs dir").flatten() {
            let data = std::fs::read(e.path()).expect("read blob");
            assert_eq!(
                Digest::of(&data).hex(),
                e.file_name().to_string_lossy(),
                "blob {} does not match its name",
                e.path().display()
            );
        }
    }
}

/// What a path should look like in the root filesystem, from the tar headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// File type and permission bits, as `stat`'s st_mode.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Regular files' size and symlinks' target length.
    pub size: Option<u64>,
    /// Paths that share this inode (hardlinks) carry the same group number.
    pub link_group: Option<usize>,
}

fn clean(path: &[u8]) -> String {
    let s = String::from_utf8_lossy(path).into_owned();
    let s = s.trim_start_matches("./").trim_end_matches('/');
    s.trim_start_matches('/').to_string()
}

/// Applies layers (uncompressed tars, bottom first) as OCI says: later entries replace
/// earlier ones, `.wh.NAME` deletes NAME of lower layers, `.wh..wh..opq` hides a directory's
/// lower content. Implicit parent directories are not listed.
pub fn expected_tree(layers: &[&[u8]]) -> std::collections::BTreeMap<String, Expected> {
    use std::collections::BTreeMap;
    let mut tree: BTreeMap<String, Expected> = BTreeMap::new();
    let mut groups = 0usize;
    let remove_under = |tree: &mut BTreeMap<String, Expected>, dir: &str, include_self: bool| {
        let prefix = format!("{dir}/");
        tree.retain(|k, _| !(k.starts_with(&prefix) || (include_self && k == dir)));
    };
    for layer in layers {
        let mut archive = tar::Archive::new(*layer);
        let mut entries = Vec::new();
        for e in archive.entries().expect("tar") {
            let e = e.expect("tar entry");
            let h = e.header().clone();
            let path = clean(&e.path_bytes());
            let link = e.link_name_bytes().map(|l| clean(&l));
            let raw_link = e.link_name_bytes().map(|l| l.len() as u64);
            entries.push((path, h, link, raw_link));
        }
        // Whiteouts apply to the layers below, before this layer's own entries land.
        for (path, _, _, _) in &entries {
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (d.to_string(), b),
                None => (String::new(), path.as_str()),
            };
            if base == ".wh..wh..opq" {
                if dir.is_empty() {
                    tree.clear();
                } else {
                    remove_under(&mut tree, &dir, false);
                }
            } else if let Some(name) = base.strip_prefix(".wh.") {
                let victim = if dir.is_empty() {
                    name.to_string()
                } else {
                    format!("{dir}/{name}")
                };
                remove_under(&mut tree, &victim, true);
            }
        }
        for (path, h, link, raw_link) in entries {
            let base = path.rsplit('/').next().unwrap_or("");
            if path.is_empty() || base.starts_with(".wh.") {
                continue;
            }
            let perm = h.mode().expect("mode") & 0o7777;
            let kind = h.entry_type();
            let exp = match kind {
                tar::EntryType::Link => {
                    let target = link.expect("hardlink target");
                    let t = tree
                        .get_mut(&target)
                        .unwrap_or_else(|| panic!("hardlink {path} to missing {target}"));
                    let group = *t.link_group.get_or_insert_with(|| {
                        groups += 1;
                        groups
                    });
                    let mut e = t.clone();
                    e.link_group = Some(group);
                    e
                }
                _ => {
                    let (fmt, size) = match kind {
                        tar::EntryType::Regular | tar::EntryType::Continuous => {
                            (0o100000, Some(h.size().expect("size")))
                        }
                        tar::EntryType::Directory => (0o040000, None),
                        tar::EntryType::Symlink => (0o120000, raw_link),
                        tar::EntryType::Char => (0o020000, None),
                        tar::EntryType::Block => (0o060000, None),
                        tar::EntryType::Fifo => (0o010000, None),
                        other => panic!("unexpected tar entry type {other:?} for {path}"),
                    };
                    Expected {
                        mode: fmt | if fmt == 0o120000 { 0o777 } else { perm },
                        uid: h.uid().expect("uid"),
                        gid: h.gid().expect("gid"),
                        size,
                        link_group: None,
                    }
                }
            };
            if exp.mode & 0o170000 != 0o040000 {
                remove_under(&mut tree, &path, false);
            }
            tree.insert(path, exp);
        }
    }
    tree
}

/// Runs `e2fsck -fn` on an image and insists on zero errors.
pub fn assert_e2fsck_clean(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("run e2fsck (e2fsprogs)");
    assert!(
        out.status.success(),
        "e2fsck -fn {} found problems:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lists every directory of `expected` in the ext4 image with debugfs and checks that each
/// directory holds exactly the expected names with the expected type, mode, owner and size,
/// and that hardlinked names share one inode. Returns how many entries were checked.
pub fn assert_tree_matches(
    image: &Path,
    expected: &std::collections::BTreeMap<String, Expected>,
) -> usize {
    use std::collections::{BTreeMap, BTreeSet};
    let mut dirs: BTreeSet<String> = BTreeSet::from([String::new()]);
    for path in expected.keys() {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            dirs.insert(parent.to_string());
            p = parent;
        }
        if expected[path].mode & 0o170000 == 0o040000 {
            dirs.insert(path.clone());
        }
    }
    let cmds: String = dirs.iter().map(|d| format!("ls -p \"/{d}\"\n")).collect();
    let cmd_file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(cmd_file.path(), cmds).expect("write debugfs commands");
    let out = Command::new("debugfs")
        .arg("-f")
        .arg(cmd_file.path())
        .arg(image)
        .output()
        .expect("run debugfs");
    assert!(
        out.status.success(),
        "debugfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found: BTreeMap<String, (u64, u32, u64, u64, String)> = BTreeMap::new();
    let mut seen_dirs = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(cmd) = line.strip_prefix("debugfs: ls -p \"/") {
            let d = cmd.trim_end_matches('"').to_string();
            seen_dirs.insert(d.clone());
            current = Some(d);
            continue;
        }
        let Some(dir) = &current else { continue };
        let fields: Vec<&str> = line.split('/').collect();
        if fields.len() < 8 {
            continue;
        }
        let name = fields[5..fields.len() - 2].join("/");
        if name == "." || name == ".." || (dir.is_empty() && name == "lost+found") {
            continue;
        }
        let path = if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        };
        found.insert(
            path,
            (
                fields[1].parse().expect("inode"),
                u32::from_str_radix(fields[2], 8).expect("mode"),
                fields[3].parse().expect("uid"),
                fields[4].parse().expect("gid"),
                fields[fields.len() - 2].to_string(),
            ),
        );
    }
    assert_eq!(seen_dirs, dirs, "debugfs did not list every directory");
    let mut problems = Vec::new();
    let mut inode_of_group: BTreeMap<usize, u64> = BTreeMap::new();
    for (path, want) in expected {
        let Some((ino, mode, uid, gid, size)) = found.get(path) else {
            problems.push(format!("{path}: missing"));
            continue;
        };
        if *mode != want.mode {
            problems.push(format!("{path}: mode {mode:o}, tar says {:o}", want.mode));
        }
        if (*uid, *gid) != (want.uid, want.gid) {
            problems.push(format!(
                "{path}: owner {uid}:{gid}, tar says {}:{}",
                want.uid, want.gid
            ));
        }
        if let Some(s) = want.size {
            if size.parse::<u64>().ok() != Some(s) {
                problems.push(format!("{path}: size {size}, tar says {s}"));
            }
        }
        if let Some(g) = want.link_group {
            let first = *inode_of_group.entry(g).or_insert(*ino);
            if first != *ino {
                problems.push(format!(
                    "{path}: inode {ino} is not its hardlink group's {first}"
                ));
            }
        }
    }
    let implicit: BTreeSet<&String> = dirs.iter().collect();
    for path in found.keys() {
        if !expected.contains_key(path) && !implicit.contains(path) {
            problems.push(format!("{path}: in the image but not in the layers"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} differs from the tar metadata:\n{}",
        image.display(),
        problems.join("\n")
    );
    expected.len()
}

/// busybox with every applet, two programs that print their arguments, a user and groups.
pub fn base_layers() -> Vec<TestLayer> {
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    let mut extra = TarBuilder::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .dir("root", 0o700)
        .dir("home", 0o755)
        .dir("home/alice", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .file(
            "etc/group",
            0o644,
            b"root:x:0:\nalice:x:1000:\nwheel:x:10:alice\n",
        )
        .file("bin/show-entry", 0o755, b"#!/bin/sh\necho \"entry: $*\"\n")
        .file("bin/show-cmd", 0o755, b"#!/bin/sh\necho \"cmd: $*\"\n");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !["busybox", "sh", "ls", "cat", "echo", "mount"].contains(&applet) {
            extra = extra.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    vec![
        TestLayer {
            tar: busybox_tar(),
            compression: Compression::Gzip,
        },
        TestLayer {
            tar: extra.finish(),
            compression: Compression::Gzip,
        },
    ]
}
