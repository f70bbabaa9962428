//! A chaos soak in a throwaway systemd host: randomized start, stop, SIGKILL
//! of gatectl mid-start, SIGKILL of a forwarder, prune and daemon-reload
//! over 10 slugs. After each operation every gate reported running passes an
//! end-to-end ssh check, and every gate the soak started (and did not stop)
//! is reported running; at least half the operations are followed by an ssh
//! check. At the end, stop-all plus prune leaves nothing.
//!
//! `GATECTL_SOAK_OPS` sets the number of operations (default 20, as CI runs
//! it; the long soak is 300), `GATECTL_SOAK_SEED` the seed (default: from the
//! clock). The seed is printed, and a run is reproducible from it.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::gatectl::{gatectl, gatectl_ok, leftovers, setup, ssh_via_gate, text, GATECTL};
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
/// just killed gets a moment to be restarted by systemd. Returns the slugs
/// it checked.
fn check_running_gates(host: &TestHost, sshd: &SshFixture, step: &str) -> BTreeSet<String> {
    let list = gatectl_ok(host, &["list"]);
    let mut checked = BTreeSet::new();
    for (slug, state) in list_states(&list) {
        if state != "running" {
            continue;
        }
        let mut last = Err(String::new());
        for _ in 0..30 {
            last = ssh_via_gate(host, sshd, &slug, None, "true").map(|_| ());
            if last.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = last {
            panic!("after {step}: gate {slug} is reported running but ssh through it fails: {e}\n{list}");
        }
        checked.insert(slug);
    }
    checked
}

/// `(slug, state)` of every gate in the output of `gatectl list`.
fn list_states(list: &str) -> Vec<(String, String)> {
    list.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            Some((cols.next()?.to_string(), cols.next()?.to_string()))
        })
        .collect()
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
    // Gates the soak knows to be running: each must pass the ssh check
    // after every operation. (A killed start leaves its gate unknown.)
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut ssh_checks = 0;
    let mut checked_ops = 0;
    for n in 0..ops {
        let slug = format!("s{}", rng.below(SLUGS as u64));
        // The first operation is a start, so that the soak has a gate to
        // check from the beginning.
        let pick = if n == 0 { 0 } else { rng.below(100) };
        let step = match pick {
            0..=29 => {
                let out = gatectl(&host, &["start", &slug]);
                assert!(out.status.success(), "start {slug}: {}", text(&out));
                if String::from_utf8_lossy(&out.stdout).contains("already running, unchanged") {
                    let list = gatectl_ok(&host, &["list"]);
                    assert!(
                        list_states(&list).contains(&(slug.clone(), "running".to_string())),
                        "start {slug} says already running, but list does not: {list}"
                    );
                }
                running.insert(slug.clone());
                format!("start {slug}")
            }
            30..=49 => {
                gatectl_ok(&host, &["stop", &slug]);
                running.remove(&slug);
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
        let checked = check_running_gates(&host, &sshd, &step);
        let missing: Vec<&String> = running.difference(&checked).collect();
        assert!(
            missing.is_empty(),
            "after {step}: gates {missing:?} should run, but list does not report them running"
        );
        ssh_checks += checked.len();
        if !checked.is_empty() {
            checked_ops += 1;
        }
    }
    eprintln!("chaos soak: {ssh_checks} ssh checks after {checked_ops} of {ops} operations");
    assert!(
        checked_ops * 2 >= ops,
        "only {checked_ops} of {ops} operations were followed by an ssh check"
    );

    for i in 0..SLUGS {
        gatectl_ok(&host, &["stop", &format!("s{i}")]);
    }
    gatectl_ok(&host, &["prune"]);
    for i in 0..SLUGS {
        assert_eq!(leftovers(&host, &format!("s{i}")), Vec::<String>::new());
    }
}
