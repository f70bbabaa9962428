//! A chaos soak in a throwaway systemd host: randomized start, stop, SIGKILL
//! of gatectl mid-start, SIGKILL of a forwarder, prune and daemon-reload
//! over 10 slugs. After each operation every gate reported running passes an
//! end-to-end ssh check; at the end, stop-all plus prune leaves nothing.
//!
//! `GATECTL_SOAK_OPS` sets the number of operations (default 20, as CI runs
//! it; the long soak is 300), `GATECTL_SOAK_SEED` the seed (default: from the
//! clock). The seed is printed, and a run is reproducible from it.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::gatectl::{allowlist, gatectl, gatectl_ok, setup, ssh_via_gate, text, GATECTL, LIST_GATE_UNITS};
use common::{require_root, SshFixture, TestHost};

const SLUGS: usize = 10;

/// splitmix64: a small, well-known generator, enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Every gate `list` reports running must carry ssh; a forwarder that was
/// just killed gets a moment to be restarted by systemd.
fn check_running_gates(host: &TestHost, sshd: &SshFixture, step: &str) {
    let list = gatectl_ok(host, &["list"]);
    for line in list.lines().skip(1) {
        let mut cols = line.split_whitespace();
        let (Some(slug), Some(state)) = (cols.next(), cols.next()) else {
            continue;
        };
        if state != "running" {
            continue;
        }
        let mut last = Err(String::new());
        for _ in 0..30 {
            last = ssh_via_gate(host, sshd, slug, None, "true").map(|_| ());
            if last.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = last {
            panic!("after {step}: gate {slug} is reported running but ssh through it fails: {e}\n{list}");
        }
    }
}

#[test]
fn chaos_soak() {
    if !require_root() {
        return;
    }
    let ops = env_u64("GATECTL_SOAK_OPS").unwrap_or(20);
    let seed = env_u64("GATECTL_SOAK_SEED")
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("chaos soak: {ops} operations, seed {seed} (rerun with GATECTL_SOAK_SEED={seed})");
    let mut rng = Rng(seed);
    let (host, sshd) = setup("chaos");
    for i in 0..SLUGS {
        host.write_file(
            &format!("/etc/gatectl/bottles/s{i}.toml"),
            b"[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\nUser = \"root\"\n",
            0o644,
        );
    }
    for n in 0..ops {
        let slug = format!("s{}", rng.below(SLUGS as u64));
        let step = match rng.below(100) {
            0..=29 => {
                let out = gatectl(&host, &["start", &slug]);
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.success() || err.contains("already running"),
                    "start {slug}: {}",
                    text(&out)
                );
                format!("start {slug}")
            }
            30..=49 => {
                gatectl_ok(&host, &["stop", &slug]);
                format!("stop {slug}")
            }
            50..=64 => {
                let delay = format!("{:.3}", (5 + rng.below(150)) as f64 / 1000.0);
                host.exec(&["timeout", "-s", "KILL", &delay, GATECTL, "start", &slug]);
                format!("start {slug} killed after {delay}s")
            }
            65..=79 => {
                host.exec(&[
                    "systemctl",
                    "kill",
                    "--signal=KILL",
                    &format!("gate-{slug}.service"),
                ]);
                format!("SIGKILL of the forwarder of {slug}")
            }
            80..=89 => {
                gatectl_ok(&host, &["prune"]);
                "prune".to_string()
            }
            _ => {
                host.run_ok(&["systemctl", "daemon-reload"]);
                "daemon-reload".to_string()
            }
        };
        eprintln!("op {n}: {step}");
        check_running_gates(&host, &sshd, &step);
    }

    for i in 0..SLUGS {
        gatectl_ok(&host, &["stop", &format!("s{i}")]);
    }
    gatectl_ok(&host, &["prune"]);
    assert_eq!(
        host.run_ok(&["ip", "netns", "list"]).matches("gate-").count(),
        0,
        "netns left"
    );
    let links = host.run_ok(&["ip", "-o", "link", "show"]);
    assert!(
        !links.contains(": gte") && !links.contains(": gti"),
        "links left: {links}"
    );
    let units = host.run_ok(&LIST_GATE_UNITS);
    assert_eq!(units.trim(), "", "units left");
    assert_eq!(allowlist(&host), "", "firewall elements left");
    let records = host.run_ok(&["sh", "-c", "ls /run/gatectl/gates 2>/dev/null || true"]);
    assert_eq!(records.trim(), "", "records left");
}
