//! Restart policies and healthchecks, docker's way, kept by the container's supervisor.
//!
//! Restart (`--restart`, compose's `restart:`): `no`, `always`, `unless-stopped`,
//! `on-failure[:N]`. A detached supervisor boots the VM again after the main process ends
//! when the policy says so, waiting 100 ms doubling up to 10 s in between, as docker does;
//! `hk stop`, `hk kill` and `hk rm -f` leave a `stop-requested` mark in the container's
//! directory first, so a container stopped by a person stays stopped. `always` and
//! `unless-stopped` differ in docker only when the daemon restarts; hk has no daemon, so
//! they are the same here.
//!
//! Health (`--health-cmd`, compose's `healthcheck:`): while the main process runs, a thread
//! of the supervisor runs the test through the agent every interval (a process in the
//! container, as `hk exec` runs one) and records the result in the container's state:
//! `starting` until the first success, `healthy`, or `unhealthy` after `retries` failures
//! in a row; failures within the start period do not count. `hk ps` shows it in STATUS and
//! `hk inspect` under `State.Health`, as docker does.

use super::{Container, State};
use anyhow::{bail, Context};
use hk_agent_protocol::{Client, ExitStatus, ProcessSpec};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A container's restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    No,
    Always,
    /// At most this many restarts (`None`: no limit).
    OnFailure(Option<u32>),
}

impl Restart {
    pub fn parse(text: &str) -> anyhow::Result<Restart> {
        Ok(match text.split_once(':') {
            None if text == "no" || text.is_empty() => Restart::No,
            None if text == "always" || text == "unless-stopped" => Restart::Always,
            None if text == "on-failure" => Restart::OnFailure(None),
            Some(("on-failure", n)) => Restart::OnFailure(Some(n.parse().map_err(|_| {
                anyhow::anyhow!("--restart {text}: the count after on-failure: is a number")
            })?)),
            _ => bail!(
                "invalid restart policy {text:?}: give no, always, unless-stopped or \
                 on-failure[:MAX-RETRIES]"
            ),
        })
    }

    /// Whether a process that ended with `code`, after `restarts` restarts, runs again.
    pub fn restarts(self, code: u8, restarts: u32) -> bool {
        match self {
            Restart::No => false,
            Restart::Always => true,
            Restart::OnFailure(max) => code != 0 && max.is_none_or(|m| restarts < m),
        }
    }

    /// docker's wait before restart number `n` (from 0): 100 ms, doubling, at most 10 s.
    pub fn delay(n: u32) -> Duration {
        Duration::from_millis(100u64.saturating_mul(1 << n.min(7))).min(Duration::from_secs(10))
    }
}

/// The healthcheck a container was made with (docker's `Config.Healthcheck`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// `["CMD", argv...]` or `["CMD-SHELL", line]`.
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub start_period_ms: u64,
    /// How often to test during the start period (compose's `start_interval`).
    pub start_interval_ms: u64,
    pub retries: u32,
}

impl HealthConfig {
    /// docker's defaults: every 30 s, 30 s timeout, 3 retries, no start period.
    pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
    pub const DEFAULT_RETRIES: u32 = 3;
    pub const DEFAULT_START_INTERVAL_MS: u64 = 5_000;

    /// The process to run, or an error for a test that runs nothing.
    fn argv(&self) -> Option<Vec<String>> {
        match self.test.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
            Some((kind, [line])) if kind == "CMD-SHELL" => {
                Some(vec!["/bin/sh".into(), "-c".into(), line.clone()])
            }
            _ => None,
        }
    }
}

pub const STARTING: &str = "starting";
pub const HEALTHY: &str = "healthy";
pub const UNHEALTHY: &str = "unhealthy";

/// docker's `State.Health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub failing_streak: u32,
    /// The last results, oldest first (docker keeps five).
    pub log: Vec<Probe>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub start: String,
    pub end: String,
    pub exit_code: i32,
    pub output: String,
}

const KEEP_PROBES: usize = 5;
const MAX_OUTPUT: usize = 4096;

/// Runs the container's healthcheck until dropped.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    /// Starts probing; records `starting` in the state at once.
    pub fn start(container: &Container, client: &Client) -> Option<Monitor> {
        let config = container.config.healthcheck.clone()?;
        let argv = config.argv()?;
        record(container, |s| {
            s.health = Some(Health {
                status: STARTING.into(),
                ..Health::default()
            })
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (c, client, flag) = (container.clone(), client.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("health".into())
            .spawn(move || probe_loop(&c, &client, &config, argv, &flag))
            .ok()?;
        Some(Monitor {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Monitor {
    /// Waits for a probe in flight, so no state is written after the supervisor's last.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn record(container: &Container, f: impl FnOnce(&mut State)) {
    let mut state = container.state();
    f(&mut state);
    let _ = container.set_state(&state);
}

/// Sleeps up to `d`, waking early when stopped; returns whether to go on.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    !stop.load(Ordering::Relaxed)
}

fn probe_loop(
    c: &Container,
    client: &Client,
    config: &HealthConfig,
    argv: Vec<String>,
    stop: &AtomicBool,
) {
    let started = Instant::now();
    let start_period = Duration::from_millis(config.start_period_ms);
    let mut healthy_once = false;
    let mut streak = 0u32;
    for n in 0.. {
        let in_start = started.elapsed() < start_period && !healthy_once;
        let wait = if in_start && config.start_interval_ms > 0 {
            config.start_interval_ms
        } else {
            config.interval_ms
        };
        if !nap(Duration::from_millis(wait), stop) {
            return;
        }
        let p = &c.config.process;
        let spec = ProcessSpec {
            id: format!("health-{n}"),
            argv: argv.clone(),
            env: p.env.clone(),
            cwd: p.cwd.clone(),
            user: p.user.clone(),
            ..ProcessSpec::default()
        };
        let begin = super::now();
        let (code, output) = probe(client, spec, Duration::from_millis(config.timeout_ms));
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let in_start = started.elapsed() < start_period && !healthy_once;
        if code == 0 {
            healthy_once = true;
            streak = 0;
        } else if !in_start {
            streak += 1;
        }
        let status = if code == 0 {
            HEALTHY
        } else if streak >= config.retries.max(1) {
            UNHEALTHY
        } else if healthy_once {
            HEALTHY
        } else {
            STARTING
        };
        record(c, |s| {
            let h = s.health.get_or_insert_with(Health::default);
            h.status = status.into();
            h.failing_streak = streak;
            h.log.push(Probe {
                start: begin,
                end: super::now(),
                exit_code: code,
                output,
            });
            let extra = h.log.len().saturating_sub(KEEP_PROBES);
            h.log.drain(..extra);
        });
    }
}

/// Runs one test; its exit code (-1 when it could not run or timed out) and output.
fn probe(client: &Client, spec: ProcessSpec, timeout: Duration) -> (i32, String) {
    let mut process = match client.run(spec) {
        Ok(p) => p,
        Err(e) => return (-1, e.to_string()),
    };
    let streams = std::mem::take(&mut process.streams);
    let readers: Vec<_> = [streams.stdout, streams.stderr]
        .into_iter()
        .flatten()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = (&mut s).take(MAX_OUTPUT as u64).read_to_end(&mut buf);
                // Drain the rest so the process never blocks on a full pipe.
                let _ = std::io::copy(&mut s, &mut std::io::sink());
                buf
            })
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = client.process(process.id());
    std::thread::spawn(move || {
        let _ = tx.send(process.wait());
    });
    let code = match rx.recv_timeout(timeout) {
        Ok(Ok(ExitStatus::Code(c))) => c,
        Ok(Ok(status)) => status.shell_code(),
        Ok(Err(e)) => return (-1, e.to_string()),
        Err(_) => {
            let _ = waiter.signal(nix::sys::signal::Signal::SIGKILL as i32);
            return (
                -1,
                format!("Health check exceeded timeout ({}ms)", timeout.as_millis()),
            );
        }
    };
    let mut output = Vec::new();
    for r in readers {
        output.extend(r.join().unwrap_or_default());
    }
    output.truncate(MAX_OUTPUT);
    (code, String::from_utf8_lossy(&output).into_owned())
}

/// A Go duration (`1m30s`, `500ms`, `1.5h`) as compose reads durations.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let bad = || format!("{text:?} is not a duration (such as 30s, 1m30s, 500ms)");
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        bail!("{}", bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .with_context(bad)?;
        let value: f64 = rest[..n].parse().ok().with_context(bad)?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => bail!("{}", bad()),
        };
        total += value * unit;
        rest = &rest[u..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// A duration as Go prints one (`1m30s`, `2h0m0s`, `500ms`), which `config` shows.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        let (div, unit) = if ns < 1_000 {
            (1, "ns")
        } else if ns < 1_000_000 {
            (1_000, "µs")
        } else {
            (1_000_000, "ms")
        };
        return format!("{}{unit}", trim_frac(ns as f64 / div as f64));
    }
    let secs = ns as f64 / 1e9;
    let h = (secs / 3600.0).floor();
    let m = ((secs - h * 3600.0) / 60.0).floor();
    let s = secs - h * 3600.0 - m * 60.0;
    if h > 0.0 {
        format!("{h}h{m}m{}s", trim_frac(s))
    } else if m > 0.0 {
        format!("{m}m{}s", trim_frac(s))
    } else {
        format!("{}s", trim_frac(s))
    }
}

fn trim_frac(x: f64) -> String {
    let s = format!("{x:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        assert_eq!(Restart::parse("no").unwrap(), Restart::No);
        assert_eq!(Restart::parse("unless-stopped").unwrap(), Restart::Always);
        assert_eq!(
            Restart::parse("on-failure:3").unwrap(),
            Restart::OnFailure(Some(3))
        );
        assert!(Restart::parse("sometimes").is_err());
        assert!(Restart::parse("on-failure:x").is_err());
        let p = Restart::OnFailure(Some(2));
        assert!(p.restarts(1, 0) && p.restarts(1, 1) && !p.restarts(1, 2));
        assert!(!p.restarts(0, 0));
        assert!(Restart::Always.restarts(0, 100));
        assert!(Restart::OnFailure(None).restarts(3, 1000));
        assert!(!Restart::No.restarts(1, 0));
        assert_eq!(Restart::delay(0), Duration::from_millis(100));
        assert_eq!(Restart::delay(3), Duration::from_millis(800));
        assert_eq!(Restart::delay(30), Duration::from_secs(10));
    }

    #[test]
    fn test_commands() {
        let h = |t: &[&str]| HealthConfig {
            test: t.iter().map(|s| s.to_string()).collect(),
            interval_ms: 1,
            timeout_ms: 1,
            start_period_ms: 0,
            start_interval_ms: 0,
            retries: 1,
        };
        assert_eq!(h(&["CMD", "true", "x"]).argv().unwrap(), ["true", "x"]);
        assert_eq!(
            h(&["CMD-SHELL", "nc -z db 6379"]).argv().unwrap(),
            ["/bin/sh", "-c", "nc -z db 6379"]
        );
        assert!(h(&["NONE"]).argv().is_none());
        assert!(h(&["CMD"]).argv().is_none());
    }
}
