//! `hk compose` on a real KVM (the host's, or the nested lab's), run by an unprivileged
//! user in one session, with a fleet made offline from `scripts/demo-image`'s busybox image
//! (no registry, no Debian packages: busybox's `httpd` and `wget` stand in for redis and
//! its client). The fleet, project `shop` from `.env`:
//!
//! - `db`: httpd serving a named volume on port 6379; it writes `$GREETING` (from `.env`,
//!   required with `${GREETING:?...}`, passed through `$$`) into the volume when empty;
//!   a healthcheck that fetches the value;
//! - `web`: httpd with a CGI script (a bind mount) that fetches the value from `db` by
//!   service name, published on the host as `${WEB_PORT}`, started only once db is healthy;
//! - `node`: three replicas, each serving its host name;
//! - `crasher` (profile `crash`): exits 3, `restart: on-failure:2`.
//!
//! The cases: config and interpolation errors; `up -d --wait` and the data through the
//! published port; the replicas all resolve by service name and answer; a second `up` with
//! one service changed recreates only it; the volume outlives `down` and `down -v` removes
//! it; the restart policy; Ctrl-C in a foreground `up` stops the fleet. A test without a VM
//! checks `config`'s output for a tricky pair of files. `up --wait` returns once the
//! processes have started, as docker's does, which may be before a server in them listens:
//! the published port is fetched until it answers (`fetch`).

use hk_tests::{scratch_dir, Case, UnprivilegedSession};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const UID: u32 = 4244;

const COMPOSE: &str = r#"
x-small: &small
  image: hk-demo
  deploy: {resources: {limits: {memory: 128M}}}
services:
  db:
    <<: *small
    environment:
      GREETING: ${GREETING:?set GREETING in .env}
    command: ["sh", "-c", "[ -s /data/value ] || echo \"$$GREETING\" >/data/value; exec httpd -f -p 6379 -h /data"]
    volumes: [dbdata:/data]
    healthcheck:
      test: wget -qO- http://127.0.0.1:6379/value
      interval: 2s
      start_period: 120s
      start_interval: 1s
      retries: 3
  web:
    <<: *small
    command: httpd -f -p 80 -h /www
    environment:
      TAG: ${WEB_TAG:-v1}
    ports: ["${WEB_PORT:-8080}:80"]
    volumes: ["./www:/www:ro"]
    depends_on:
      db: {condition: service_healthy}
    restart: unless-stopped
  node:
    image: hk-demo
    command: sh -c 'mkdir -p /w && hostname >/w/index.html && exec httpd -f -p 80 -h /w'
    deploy: {replicas: 3, resources: {limits: {memory: 128M}}}
  crasher:
    <<: *small
    profiles: [crash]
    command: sh -c 'echo crash-run; exit 3'
    restart: on-failure:2
volumes:
  dbdata:
"#;

const DOTENV: &str = "COMPOSE_PROJECT_NAME=shop\nGREETING=hello-from-env\nWEB_PORT=18080\n";

const CGI: &str =
    "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nwget -qO- http://db:6379/value\n";

const BAD: &str =
    "services:\n  a:\n    image: ${MISSING_IMAGE:?say which image in MISSING_IMAGE}\n";

const FOREGROUND: &str = r#"
services:
  ticker:
    image: hk-demo
    command: ["sh", "-c", "trap 'echo got-term; exit 0' TERM; while true; do echo tick; sleep 1; done"]
    deploy: {resources: {limits: {memory: 96M}}}
"#;

const CASES: &[(&str, &str)] = &[
    (
        "config",
        r#"$hk compose config --services
$hk compose config | grep -E 'GREETING|published|name: shop'
$hk compose -f bad.yaml config; echo status=$?
$hk compose --profile crash config --services | grep -c crasher"#,
    ),
    (
        "up",
        r#"$hk compose up -d --wait; echo up=$?
$hk compose ps --services
$hk compose ps | grep -c ' Up '
$hk inspect shop-db-1 | grep -o '"Status": "\(healthy\|starting\|unhealthy\)"'
$hk ps | grep shop-db-1 | grep -o '(healthy)'
$hk inspect shop-web-1 | grep -o '"com.docker.compose.service": "web"'
echo data=$(fetch http://127.0.0.1:18080/cgi-bin/get)"#,
    ),
    (
        "replicas",
        r#"addrs=$($hk compose exec web nslookup node | sed -n '/^Name:/,$ s/^Address[ 0-9]*:[[:space:]]*\([0-9.]*\).*/\1/p' | sort -u)
echo count=$(echo "$addrs" | grep -c .)
for a in $addrs; do $hk compose exec web wget -qO- http://$a/; done | sort -u | wc -l
$hk compose exec web wget -qO- http://shop-node-2/ >/dev/null && echo by-container-name=ok"#,
    ),
    (
        "recreate",
        r#"$hk ps -a --format json | grep -o '"ID":"[0-9a-f]*","Image":"[^"]*","Labels":"[^"]*","Names":"[^"]*"' | sed 's/"Labels":"[^"]*",//' | sort >before.txt
WEB_TAG=v2 $hk compose up -d 2>up.log; echo up=$?
grep -E 'Recreated|Running' up.log | sed 's/^ *//' | sort
$hk ps -a --format json | grep -o '"ID":"[0-9a-f]*","Image":"[^"]*","Labels":"[^"]*","Names":"[^"]*"' | sed 's/"Labels":"[^"]*",//' | sort >after.txt
echo changed: $(diff before.txt after.txt | grep '^>' | grep -o 'shop-[a-z]*-[0-9]*')
$hk compose exec web sh -c 'echo TAG=$TAG'"#,
    ),
    (
        "volume",
        r#"$hk compose exec db sh -c 'echo persisted-42 >/data/value'
$hk compose down 2>/dev/null; echo down=$?
echo containers=$($hk ps -aq | wc -l) volume=$($hk volume ls -q | grep -c shop_dbdata) network=$($hk network ls | grep -c shop_default)
$hk compose up -d --wait web 2>/dev/null; echo up=$?
$hk compose ps --services | tr '\n' ' '; echo
echo data=$(fetch http://127.0.0.1:18080/cgi-bin/get)
$hk compose down -v 2>/dev/null; echo down=$?
echo containers=$($hk ps -aq | wc -l) volume=$($hk volume ls -q | grep -c shop_dbdata) network=$($hk network ls | grep -c shop_default)"#,
    ),
    (
        "restart",
        r#"$hk compose --profile crash up -d crasher; echo up=$?
i=0
until [ $i -ge 600 ]; do
    $hk inspect shop-crasher-1 | grep -q '"RestartCount": 2' && ! $hk inspect shop-crasher-1 | grep -q '"Running": true' && break
    sleep 0.5; i=$((i + 1))
done
$hk inspect shop-crasher-1 | grep -E '"(RestartCount|ExitCode)"' | tr -d ' ,' | sort -u
$hk inspect shop-crasher-1 | grep -A2 '"RestartPolicy"' | grep '"Name"' | tr -d ' ,'
$hk compose --profile crash logs crasher | grep -c '^shop-crasher-1 | crash-run$'
$hk compose --profile crash down 2>/dev/null; echo down=$?"#,
    ),
    (
        "ctrl-c",
        r#"$hk compose -p fg -f fg.yaml up >fg.out 2>fg.err &
pid=$!
i=0
until grep -q tick fg.out || [ $i -ge 600 ]; do sleep 0.5; i=$((i + 1)); done
kill -INT $pid
wait $pid; echo status=$?
grep -c '^fg-ticker-1 | tick$' fg.out | sed 's/^[1-9][0-9]*$/ticks/'
grep -o '^fg-ticker-1 | got-term' fg.out
grep -o 'Gracefully stopping' fg.err
$hk compose -p fg -f fg.yaml ps -a | grep -o 'Exited (0)'
$hk compose -p fg -f fg.yaml down 2>/dev/null; echo down=$?"#,
    ),
];

/// Nothing may be left: no container, no volume, no network, no hk process.
const LEFTOVER: (&str, &str) = (
    "leftover",
    "i=0; while pgrep -u $(id -u) -x hk >/dev/null && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
     ls -A $HK_DATA_DIR/containers | grep -v '^names$'; $hk volume ls -q; $hk network ls -q; pgrep -u $(id -u) -x hk; echo end",
);

fn lab() -> &'static HashMap<String, Case> {
    static LAB: OnceLock<HashMap<String, Case>> = OnceLock::new();
    LAB.get_or_init(|| {
        let dir = scratch_dir("compose");
        let demo = dir.join("demo.tar");
        hk_tests::demo_image(&demo);
        // Loaded and converted on the host: no VM needed for that.
        for args in [
            &["load", "-q", "-i", demo.to_str().unwrap()][..],
            &["image", "rootfs", "hk-demo"],
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_hk"))
                .args(args)
                .env("HK_DATA_DIR", dir.join("data"))
                .output()
                .expect("run hk");
            assert!(out.status.success(), "hk {args:?}: {out:?}");
        }
        let project = dir.join("project");
        std::fs::create_dir_all(project.join("www/cgi-bin")).unwrap();
        std::fs::write(project.join("compose.yaml"), COMPOSE).unwrap();
        std::fs::write(project.join(".env"), DOTENV).unwrap();
        std::fs::write(project.join("bad.yaml"), BAD).unwrap();
        std::fs::write(project.join("fg.yaml"), FOREGROUND).unwrap();
        let cgi = project.join("www/cgi-bin/get");
        std::fs::write(&cgi, CGI).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut tar = tar::Builder::new(std::fs::File::create(dir.join("project.tar")).unwrap());
        tar.append_dir_all(".", &project).unwrap();
        tar.finish().unwrap();
        let mut session = UnprivilegedSession::new(dir.clone(), UID);
        // Volumes live where user xattrs are kept (hk keeps the guest's owners in them; the
        // lab's tmpfs, Linux 6.1, has none): the scratch dir, bind-mounted into the private
        // dir as runner/tests/volumes.rs does.
        let x = dir.join("xattrs");
        std::fs::create_dir_all(&x).unwrap();
        session.root_setup = format!(
            "ip link set lo up\nmkdir -p $T/xattrs && chown {UID}:{UID} {x} && mount --bind {x} $T/xattrs",
            x = x.display()
        );
        session.prelude = "tar xf project.tar\n\
            if mountpoint -q $T/xattrs; then mkdir -p $T/xattrs/volumes && ln -s $T/xattrs/volumes $HK_DATA_DIR/volumes; fi\n\
            fetch() { i=0; until out=$(busybox wget -qO- \"$1\" 2>/dev/null) && [ -n \"$out\" ] || [ $i -ge 60 ]; do sleep 1; i=$((i + 1)); done; echo \"$out\"; }\n"
            .into();
        session.run(
            Path::new(env!("CARGO_BIN_EXE_hk")),
            CASES,
            LEFTOVER,
            Duration::from_secs(2400),
        )
    })
}

fn case(name: &str) -> &'static Case {
    let c = &lab()[name];
    eprintln!(
        "--- {name}: status {}\n{}\n--- stderr\n{}",
        c.status, c.out, c.err
    );
    c
}

#[test]
fn config_interpolates_from_dotenv_and_refuses_a_missing_required_variable() {
    let c = case("config");
    let lines: Vec<&str> = c.out.lines().collect();
    assert_eq!(lines[..3], ["db", "node", "web"], "{}", c.out);
    assert!(c.out.contains("GREETING: hello-from-env"), "{}", c.out);
    assert!(c.out.contains("published: '18080'"), "{}", c.out);
    assert!(c.out.contains("name: shop"), "{}", c.out);
    assert!(c.out.contains("status=125"), "{}", c.out);
    assert!(
        c.err.contains(
            "required variable MISSING_IMAGE is missing a value: say which image in MISSING_IMAGE"
        ),
        "{}",
        c.err
    );
    assert_eq!(lines.last(), Some(&"1"), "{}", c.out);
}

#[test]
fn up_waits_for_a_healthy_db_and_web_answers_with_its_data() {
    let c = case("up");
    assert!(c.out.contains("up=0"), "{}\n{}", c.out, c.err);
    assert!(c.out.contains("db\nnode\nweb\n"), "{}", c.out);
    assert!(c.out.contains("\n5\n"), "five containers up: {}", c.out);
    assert!(c.out.contains("\"Status\": \"healthy\""), "{}", c.out);
    assert!(c.out.contains("(healthy)"), "{}", c.out);
    assert!(
        c.out.contains("\"com.docker.compose.service\": \"web\""),
        "{}",
        c.out
    );
    assert!(
        c.out.contains("data=hello-from-env"),
        "{}\n{}",
        c.out,
        c.err
    );
    // web waited for db's health.
    let healthy = c.err.find("Container shop-db-1  Healthy");
    let web = c.err.find("Container shop-web-1  Created");
    assert!(
        healthy.is_some() && web.is_some() && healthy < web,
        "{}",
        c.err
    );
}

#[test]
fn three_replicas_all_resolve_by_service_name_and_answer() {
    let c = case("replicas");
    assert!(c.out.contains("count=3\n3\n"), "{}\n{}", c.out, c.err);
    assert!(c.out.contains("by-container-name=ok"), "{}", c.out);
}

#[test]
fn a_second_up_recreates_only_the_changed_service() {
    let c = case("recreate");
    assert!(c.out.contains("up=0"), "{}\n{}", c.out, c.err);
    assert!(c.out.contains("changed: shop-web-1\n"), "{}", c.out);
    assert!(
        c.out.contains("Container shop-web-1  Recreated"),
        "{}",
        c.out
    );
    for kept in ["shop-db-1", "shop-node-1", "shop-node-2", "shop-node-3"] {
        assert!(
            c.out.contains(&format!("Container {kept}  Running")),
            "{}",
            c.out
        );
    }
    assert!(c.out.contains("TAG=v2"), "{}", c.out);
}

#[test]
fn a_named_volume_outlives_down_and_down_v_removes_it() {
    let c = case("volume");
    let want = "down=0\ncontainers=0 volume=1 network=0\nup=0\ndb web \ndata=persisted-42\n\
                down=0\ncontainers=0 volume=0 network=0\n";
    assert_eq!(c.out, want, "{}", c.err);
}

#[test]
fn on_failure_restarts_a_crashing_service_as_many_times_as_allowed() {
    let c = case("restart");
    assert_eq!(
        c.out, "up=0\n\"ExitCode\":3\n\"RestartCount\":2\n\"Name\":\"on-failure\"\n3\ndown=0\n",
        "{}",
        c.err
    );
}

#[test]
fn ctrl_c_stops_a_foreground_fleet_gracefully() {
    let c = case("ctrl-c");
    assert_eq!(
        c.out, "status=0\nticks\nfg-ticker-1 | got-term\nGracefully stopping\nExited (0)\ndown=0\n",
        "{}",
        c.err
    );
}

#[test]
fn nothing_is_left_behind() {
    assert_eq!(case("leftover").out, "end\n");
}

/// `config` through the command line, without a VM: two files merged, `.env`, profiles.
#[test]
fn config_prints_the_normalised_merged_model() {
    let dir = scratch_dir("compose-config");
    std::fs::write(
        dir.join("compose.yaml"),
        r#"
x-env: &env
  LOG: ${LOG_LEVEL:-info}
services:
  web:
    image: "web:${TAG}"
    environment:
      <<: *env
      PRICE: "$$5"
    ports: ["${PORT}:80"]
    volumes: ["./site:/site:ro"]
    depends_on:
      db: {condition: service_healthy}
    command: httpd -f -p 80
  db:
    image: db
    healthcheck: {test: [CMD, "true"], interval: 90s}
  debug:
    image: busybox
    profiles: [debug]
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("override.yaml"),
        "services:\n  web:\n    environment: [LOG=debug]\n    ports: !override ['9000:80']\n    deploy: {replicas: 2}\n",
    )
    .unwrap();
    std::fs::write(dir.join(".env"), "TAG=1.0\nPORT=8080\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hk"))
        .args([
            "compose",
            "-p",
            "demo",
            "-f",
            "compose.yaml",
            "-f",
            "override.yaml",
            "config",
        ])
        .current_dir(&dir)
        .env_remove("COMPOSE_PROFILES")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let site = dir.join("site");
    let want = format!(
        r#"name: demo
services:
  db:
    healthcheck:
      test:
      - CMD
      - 'true'
      interval: 1m30s
    image: db
    networks:
      default: null
  web:
    command:
    - httpd
    - -f
    - -p
    - '80'
    depends_on:
      db:
        condition: service_healthy
        restart: false
        required: true
    deploy:
      replicas: 2
    environment:
      LOG: debug
      PRICE: $5
    image: web:1.0
    networks:
      default: null
    ports:
    - mode: ingress
      target: 80
      published: '9000'
      protocol: tcp
    volumes:
    - type: bind
      source: {}
      target: /site
      read_only: true
      bind:
        create_host_path: true
networks:
  default:
    name: demo_default
"#,
        site.display()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}
