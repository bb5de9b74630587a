//! Registry credentials: `hk login`/`hk logout` against a registry with htpasswd auth,
//! credentials read from docker's config.json, and a docker credential helper.

mod common;

use common::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

const USER: &str = "hkuser";
const PASSWORD: &str = "s3cret:with colon";

fn login(hk: &Hk, server: &str, password: &str) -> std::process::Output {
    let mut child = hk
        .cmd(&["login", "-u", USER, "--password-stdin", server])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hk login");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn protected_registry() -> (Registry, String) {
    let reg = Registry::start_with_htpasswd(USER, PASSWORD);
    reg.push_image(
        "private/app",
        "1",
        &TestImage::new(vec![TestLayer {
            tar: TarBuilder::new().file("secret", 0o600, b"42\n").finish(),
            compression: Compression::Gzip,
        }]),
    );
    let name = reg.image_ref("private/app", "1");
    (reg, name)
}

#[test]
fn login_pull_logout_with_htpasswd() {
    let (reg, name) = protected_registry();
    let hk = Hk::new();

    let err = hk.fails(&["pull", "-q", &name], 125);
    assert!(
        err.contains("private/app:1"),
        "the error names the image: {err}"
    );
    assert!(hk.store_files("images").is_empty());

    let out = login(&hk, &reg.addr, "wrong");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("incorrect username or password"), "{err}");
    assert!(!hk.home.path().join(".docker/config.json").exists());

    let out = login(&hk, &reg.addr, PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Login Succeeded"));
    let config_path = hk.home.path().join(".docker/config.json");
    let mode = std::fs::metadata(&config_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "config.json holds secrets: mode {mode:o}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    use base64::Engine as _;
    let auth = config["auths"][&reg.addr]["auth"].as_str().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .unwrap();
    assert_eq!(decoded, format!("{USER}:{PASSWORD}").as_bytes());

    hk.ok(&["pull", "-q", &name]);
    assert_eq!(hk.store_files("images").len(), 1);

    let out = hk.ok(&["logout", &reg.addr]);
    assert!(out.contains("Removing login credentials"), "{out}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    assert!(config["auths"].get(&reg.addr).is_none(), "{config}");
    hk.fails(&["pull", "-q", &name], 125);
}

/// A credential helper as docker runs them: `get`/`store`/`erase`, server URL on stdin.
/// This one keeps a single entry in a file next to itself.
fn install_helper(hk: &mut Hk) -> std::path::PathBuf {
    let bin = hk.home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-hktest");
    std::fs::write(
        &helper,
        r#"#!/bin/sh
store="$(dirname "$0")/store.json"
read -r url
case "$1" in
get)
    if [ -f "$store" ] && grep -q "\"ServerURL\":\"$url\"" "$store"; then cat "$store"
    else echo "credentials not found in native keychain"; exit 1; fi ;;
store) printf '%s' "$url" > "$store" ;;
erase) rm -f "$store" ;;
*) exit 2 ;;
esac
"#,
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    hk.path_prefix = Some(bin.clone());
    bin.join("store.json")
}

#[test]
fn credential_helper_from_cred_helpers_and_creds_store() {
    let (reg, name) = protected_registry();
    let mut hk = Hk::new();
    let store = install_helper(&mut hk);
    let docker = hk.home.path().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();

    // credHelpers: the helper answers `get` for this registry.
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({"credHelpers": {reg.addr.clone(): "hktest"}}).to_string(),
    )
    .unwrap();
    let err = hk.fails(&["pull", "-q", &name], 125);
    assert!(err.contains("private/app:1"), "{err}");
    std::fs::write(
        &store,
        serde_json::json!({"ServerURL": reg.addr, "Username": USER, "Secret": PASSWORD})
            .to_string(),
    )
    .unwrap();
    hk.ok(&["pull", "-q", &name]);

    // credsStore: `hk login` stores through the helper, and config.json gets no secret.
    std::fs::remove_file(&store).unwrap();
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({"credsStore": "hktest"}).to_string(),
    )
    .unwrap();
    let out = login(&hk, &reg.addr, PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    assert_eq!(saved["ServerURL"], reg.addr);
    assert_eq!(saved["Username"], USER);
    assert_eq!(saved["Secret"], PASSWORD);
    let config = std::fs::read_to_string(docker.join("config.json")).unwrap();
    assert!(!config.contains(PASSWORD), "{config}");
    hk.ok(&["rmi", &name]);
    hk.ok(&["pull", "-q", &name]);

    hk.ok(&["logout", &reg.addr]);
    assert!(!store.exists(), "logout erases through the helper");
}

#[test]
fn token_auth_through_a_token_server() {
    let reg = Registry::start_with_token_server(USER, PASSWORD);
    reg.push_image(
        "private/tok",
        "1",
        &TestImage::new(vec![TestLayer {
            tar: TarBuilder::new().file("t", 0o644, b"token\n").finish(),
            compression: Compression::Zstd,
        }]),
    );
    let name = reg.image_ref("private/tok", "1");
    let hk = Hk::new();
    let err = hk.fails(&["pull", "-q", &name], 125);
    assert!(err.contains("private/tok:1"), "{err}");

    let out = login(&hk, &reg.addr, "wrong");
    assert_eq!(
        out.status.code(),
        Some(125),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = login(&hk, &reg.addr, PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hk.ok(&["pull", "-q", &name]);
    assert_eq!(hk.store_files("images").len(), 1);
}
