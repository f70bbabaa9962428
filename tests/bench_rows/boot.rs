//! The boot rows of the benchmark (issue #15): N gates enabled with
//! `systemctl enable gatectl@SLUG`, then a reboot of the throwaway host, and
//! when each `gatectl@` unit reached active.
//!
//! It cannot run inside `bench/inner.sh`'s host: the host itself is powered
//! off and booted again ([`TestHost::reboot_with`] on a [`HostDisk`]), so the
//! second boot sees the first one's /etc and /var (the packaged unit, the
//! manifests, the enablement links) and nothing else of it: /run, the
//! network namespaces, links and nftables are fresh, as after a real reboot.
//!
//! The manifests have no `agent_netns`: after a reboot an agent's netns would
//! not exist (nothing of the earlier boot's kernel state does), so each
//! gate's agent end stays in the host's root netns.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::gatectl::{knob, GATECTL};
use crate::common::{monotonic_usec, Boot, HostDisk, TestHost};

/// The upstream every gate declares (a socat in a netns made after the boot).
const UP: &str = "10.99.2.1";

/// Row labels of the boot section (checked beside `bench.rs`'s `ROWS`).
pub const ROWS: &[&str] = &[
    "| boot: `gatectl@` units active after the reboot |",
    "| boot: reached active after systemd started, p50 / p90 / p99 / max |",
    "| boot: reached active after power-on, max |",
    "| boot: each unit's own start (activating → active), p50 / p90 / max |",
    "| boot: systemd began the unit (activating) after it started, p50 / max |",
    "| boot: CPU time until the boot finished: whole host / systemd / dbus-daemon / journald |",
    "| boot: gates running (`gatectl list --json`) |",
    "| boot: a connection through a gate after the boot |",
    "| boot: peak `gatectl` processes at once |",
    "| boot: peak memory of the whole host |",
];

/// What the boot section measured.
pub struct Measured {
    /// The Markdown section.
    pub text: String,
    /// Problems that make the run a failure (after the section is printed).
    pub problems: Vec<String>,
}

/// Runs the boot rows: `mode` is `smoke` (8 gates unless
/// `GATECTL_BENCH_BOOT_GATES` says otherwise) or `full` (2,000).
pub fn measure(mode: &str) -> Measured {
    let n = knob("GATECTL_BENCH_BOOT_GATES", if mode == "full" { 2000 } else { 8 });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    eprintln!("[bench boot] first boot: install gatectl, enable {n} gatectl@ units");
    let host = TestHost::boot_with_disk("bench-boot", HostDisk::new("bench-boot"));
    // The packaged unit runs /usr/bin/gatectl, a symlink to it.
    host.install_binary(Path::new(env!("CARGO_BIN_EXE_gatectl")), GATECTL);
    host.run_ok(&["ln", "-sfn", GATECTL, "/usr/bin/gatectl"]);
    for (repo, dest) in [
        (
            "units/gatectl@.service",
            "/usr/lib/systemd/system/gatectl@.service",
        ),
        ("units/gatectl.tmpfiles", "/usr/lib/tmpfiles.d/gatectl.conf"),
    ] {
        let text = fs::read(root.join(repo)).unwrap_or_else(|e| panic!("cannot read {repo}: {e}"));
        host.write_file(dest, &text, 0o644);
    }
    host.run_ok(&["systemctl", "daemon-reload"]);
    host.run_ok(&[
        "sh",
        "-c",
        r#"mkdir -p /etc/gatectl/bottles && i=0 && while [ $i -lt "$1" ]; do
             printf '[[ssh]]\nHost = "http"\nHostname = "%s"\nPort = 80\n' "$2" > /etc/gatectl/bottles/s$i.toml
             echo gatectl@s$i.service; i=$((i + 1)); done | xargs -n 500 systemctl enable --quiet"#,
        "sh",
        &n.to_string(),
        UP,
    ]);
    let enabled = host.run_ok(&[
        "sh",
        "-c",
        "ls /etc/systemd/system/multi-user.target.wants | grep -c '^gatectl@' || true",
    ]);
    assert_eq!(
        enabled.trim(),
        n.to_string(),
        "not every gatectl@ unit was enabled"
    );

    eprintln!("[bench boot] power off, boot again");
    let wait_limit = Duration::from_secs(if mode == "full" { 900 } else { 300 });
    let sampler = Sampler::start(&format!(
        "/gatectl-test-{}",
        host.name().rsplitn(3, '-').nth(2).unwrap()
    ));
    let host = host.reboot_with(Boot {
        until_answering: true,
        timeout: Some(Duration::from_secs(120)),
        ..Boot::default()
    });
    let state = wait_settled(&host, wait_limit);
    let settled = monotonic_usec();
    let peaks = sampler.stop(&host);
    eprintln!(
        "[bench boot] boot jobs done ({state}) {:.1} s after power-on",
        (settled - host.powered_on_usec()) as f64 / 1e6
    );

    let userspace: u64 = host
        .run_ok(&[
            "systemctl",
            "show",
            "-p",
            "UserspaceTimestampMonotonic",
            "--value",
        ])
        .trim()
        .parse()
        .expect("systemd's UserspaceTimestampMonotonic");
    let units = unit_times(&host, n);
    let active: Vec<&UnitTimes> = units.iter().filter(|u| u.state == "active").collect();
    let failed: Vec<&UnitTimes> = units.iter().filter(|u| u.state == "failed").collect();
    let since_systemd: Vec<u64> = active
        .iter()
        .map(|u| u.active_enter.saturating_sub(userspace))
        .collect();
    let began: Vec<u64> = units
        .iter()
        .filter(|u| u.inactive_exit > 0)
        .map(|u| u.inactive_exit.saturating_sub(userspace))
        .collect();
    let cpu = cpu_times(&host);
    let own: Vec<u64> = active
        .iter()
        .map(|u| u.active_enter.saturating_sub(u.inactive_exit))
        .collect();
    let last_active = active.iter().map(|u| u.active_enter).max().unwrap_or(0);
    let running = host
        .run_ok(&[
            "sh",
            "-c",
            "gatectl list --json | jq '[.gates[] | select(.state == \"running\")] | length'",
        ])
        .trim()
        .parse::<usize>()
        .unwrap_or(0);
    // the first gate whose unit came up
    let first = units.iter().position(|u| u.state == "active").unwrap_or(0);
    let forwarded = forward_through(&host, &format!("s{first}"));
    let reasons = failure_reasons(&host, &failed);

    let secs = |us: u64| format!("{:.2} s", us as f64 / 1e6);
    let ms = |us: u64| format!("{} ms", us / 1000);
    let stats = |v: &[u64], fmt: &dyn Fn(u64) -> String, ps: &[u32]| -> String {
        let mut v = v.to_vec();
        v.sort_unstable();
        ps.iter()
            .map(|&p| nearest_rank(&v, p).map_or("none".to_string(), fmt))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut text = format!(
        "### Boot ({n} enabled `gatectl@` units, then a reboot)\n\n\
         First boot: the packaged `gatectl@.service` (running /usr/bin/gatectl), {n} manifests \
         (one upstream each, no `agent_netns`: an agent netns would not exist after a reboot, so \
         each agent end stays in the host), `systemctl enable gatectl@sN` for each (not \
         `--now`). Then the host is powered off (SIGKILL to its systemd) and booted again on \
         the same disk (fresh /run, netns, links, nftables): every unit starts at once. Times \
         are CLOCK_MONOTONIC: systemd's `UserspaceTimestampMonotonic` and each unit's \
         `InactiveExitTimestampMonotonic` and `ActiveEnterTimestampMonotonic`. Target: all \
         active within 60 s.\n\n\
         | | value |\n| --- | ---: |\n"
    );
    text += &format!(
        "| boot: `gatectl@` units active after the reboot | {} of {n} ({} failed, {} other; system state {state}) |\n",
        active.len(),
        failed.len(),
        units.len() - active.len() - failed.len()
    );
    text += &format!(
        "| boot: reached active after systemd started, p50 / p90 / p99 / max | {} |\n",
        stats(&since_systemd, &secs, &[50, 90, 99, 100])
    );
    text += &format!(
        "| boot: reached active after power-on, max | {} (systemd started {} after power-on) |\n",
        if last_active > 0 {
            secs(last_active - host.powered_on_usec())
        } else {
            "none".to_string()
        },
        secs(userspace.saturating_sub(host.powered_on_usec()))
    );
    text += &format!(
        "| boot: each unit's own start (activating → active), p50 / p90 / max | {} |\n",
        stats(&own, &ms, &[50, 90, 100])
    );
    text += &format!(
        "| boot: systemd began the unit (activating) after it started, p50 / max | {} |\n",
        stats(&began, &secs, &[50, 100])
    );
    text += &format!(
        "| boot: CPU time until the boot finished: whole host / systemd / dbus-daemon / journald | {} (over {} of wall time on {} CPUs) |\n",
        cpu,
        secs(settled.saturating_sub(host.powered_on_usec())),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    text += &format!("| boot: gates running (`gatectl list --json`) | {running} of {n} |\n");
    text += &format!(
        "| boot: a connection through a gate after the boot | {} |\n",
        match &forwarded {
            Ok(took) => format!(
                "forwarded (gate s{first}, agent side in the host → socat upstream), reply after {} ms \
                 (its forwarder's cold start included)",
                took.as_millis()
            ),
            Err(_) => "no".to_string(),
        }
    );
    text += &format!(
        "| boot: peak `gatectl` processes at once | {} |\n",
        peaks.processes
    );
    text += &format!(
        "| boot: peak memory of the whole host | {} |\n",
        peaks
            .memory
            .map_or("unknown (no memory cgroup)".to_string(), |b| format!(
                "{} MiB",
                b >> 20
            ))
    );
    if !reasons.is_empty() {
        text += &format!("\nWhy units failed (first few):\n\n```\n{}```\n", reasons);
    }
    text += "\n";

    let mut problems = Vec::new();
    if active.len() != n {
        problems.push(format!(
            "{} of {n} gatectl@ units active after the boot",
            active.len()
        ));
    }
    if running != n {
        problems.push(format!("{running} of {n} gates running after the boot"));
    }
    if let Err(e) = forwarded {
        problems.push(format!("no connection through gate s{first} after the boot: {e}"));
    }
    Measured { text, problems }
}

/// Waits until systemd has no boot job left; returns its final state.
fn wait_settled(host: &TestHost, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let out = host.exec(&["systemctl", "is-system-running"]);
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if state == "running" || state == "degraded" {
            return state;
        }
        if Instant::now() >= deadline {
            let jobs = host.exec(&["sh", "-c", "systemctl list-jobs --no-pager | tail -5"]);
            panic!(
                "the boot did not finish within {} s (state {state}); jobs:\n{}",
                limit.as_secs(),
                String::from_utf8_lossy(&jobs.stdout)
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// One `gatectl@` unit's state and times after the boot.
struct UnitTimes {
    state: String,
    inactive_exit: u64,
    active_enter: u64,
}

/// The state and times of gatectl@s0 … gatectl@s{n-1}.
fn unit_times(host: &TestHost, n: usize) -> Vec<UnitTimes> {
    let mut units = Vec::with_capacity(n);
    let names: Vec<String> = (0..n).map(|i| format!("gatectl@s{i}.service")).collect();
    for chunk in names.chunks(500) {
        let mut argv = vec![
            "systemctl",
            "show",
            "-p",
            "Id,ActiveState,InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic",
        ];
        argv.extend(chunk.iter().map(String::as_str));
        let out = host.run_ok(&argv);
        for block in out.split("\n\n").filter(|b| !b.trim().is_empty()) {
            let props: BTreeMap<&str, &str> = block.lines().filter_map(|l| l.split_once('=')).collect();
            let num = |k: &str| props.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            units.push(UnitTimes {
                state: props.get("ActiveState").unwrap_or(&"?").to_string(),
                inactive_exit: num("InactiveExitTimestampMonotonic"),
                active_enter: num("ActiveEnterTimestampMonotonic"),
            });
        }
    }
    assert_eq!(units.len(), n, "systemctl show did not report every unit");
    units
}

/// The nearest-rank percentile `p` of sorted `v`.
fn nearest_rank(v: &[u64], p: u32) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let rank = (p as usize * v.len()).div_ceil(100).max(1);
    Some(v[rank - 1])
}

/// One connection from the host's root netns through gate `slug` to a socat
/// upstream made now (the earlier boot's upstream netns is gone).
fn forward_through(host: &TestHost, slug: &str) -> Result<Duration, String> {
    host.add_netns_with_link("bootup", "up0", "10.99.2.0/31", &format!("{UP}/31"));
    host.run_ok(&[
        "sh",
        "-c",
        "setsid ip netns exec bootup socat TCP-LISTEN:80,bind=$1,reuseaddr,fork SYSTEM:'echo boot-ok' \
         </dev/null >/dev/null 2>&1 &",
        "sh",
        UP,
    ]);
    let out = host.exec(&["gatectl", "ssh-config", slug]);
    let config = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let addr = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("HostName "))
        .ok_or_else(|| format!("no HostName in gatectl ssh-config {slug}: {config}"))?
        .trim()
        .to_string();
    // One connection: its forwarder starts now (socket activation), in a
    // sandbox whose mount namespace holds every gate's netns mount. socat's
    // stdin is empty: `-t` keeps it waiting for the reply after its EOF.
    let started = Instant::now();
    let out = host.exec(&[
        "socat",
        "-t",
        "120",
        "-T",
        "120",
        "-",
        &format!("TCP:{addr}:30000"),
    ]);
    let took = started.elapsed();
    if String::from_utf8_lossy(&out.stdout).contains("boot-ok") {
        return Ok(took);
    }
    let unit = format!("gate-{slug}.service");
    let why = host.exec(&[
        "sh",
        "-c",
        "systemctl status --no-pager \"$1\" | head -5; journalctl -u \"$1\" -o cat --no-pager | tail -5",
        "sh",
        &unit,
    ]);
    Err(format!(
        "after {:.1} s: {}; {}",
        took.as_secs_f64(),
        crate::common::gatectl::text(&out),
        String::from_utf8_lossy(&why.stdout)
    ))
}

/// Why units failed: gatectl's error lines in the `gatectl@` units'
/// journal, counted (numbers and slugs blanked so alike errors group), and
/// what dbus-daemon said about its limits.
fn failure_reasons(host: &TestHost, failed: &[&UnitTimes]) -> String {
    if failed.is_empty() {
        return String::new();
    }
    let out = host.exec(&[
        "sh",
        "-c",
        "journalctl -u 'gatectl@*' -o cat --no-pager | grep '^gatectl: error' | sed -E 's/[0-9]+/N/g' \
           | sort | uniq -c | sort -rn | head -8 | cut -c1-400; \
         journalctl -u dbus.service -o cat --no-pager | grep -iE 'limit|maximum|refus' | sed -E 's/[0-9]+/N/g' \
           | sort | uniq -c | sort -rn | head -4 | cut -c1-300; \
         for u in $(systemctl list-units --failed --plain --no-legend 'gatectl@*' | awk '{print $1}' | sed -n '1p;$p'); do \
           echo \"$u:\"; journalctl -u $u -o cat --no-pager | tail -4 | cut -c1-400; done",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// CPU time the host used since its power-on (its cpuacct cgroup, seen from
/// outside), and that of its systemd, dbus-daemon and journald (their
/// /proc stat inside): the rest is the `gatectl@` units and the kernel work
/// done for them.
fn cpu_times(host: &TestHost) -> String {
    let whole = host
        .cgroup_dirs()
        .iter()
        .find_map(|d| fs::read_to_string(d.join("cpuacct.usage")).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or("unknown".to_string(), |ns| format!("{:.1} s", ns as f64 / 1e9));
    let out = host.exec(&[
        "sh",
        "-c",
        r#"hz=$(getconf CLK_TCK); for p in 1 $(pidof dbus-daemon) $(pidof systemd-journald); do
             awk -v hz=$hz '{sub(/.*\) /, ""); printf "%.1f s\n", ($12 + $13) / hz}' /proc/$p/stat; done"#,
    ]);
    let parts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let part = |i: usize| parts.get(i).cloned().unwrap_or_else(|| "unknown".to_string());
    format!("{whole} / {} / {} / {}", part(0), part(1), part(2))
}

/// Peaks seen while the host booted.
struct Peaks {
    processes: usize,
    memory: Option<u64>,
}

/// Counts the host's `gatectl` processes while it boots (from outside, every
/// second: scanning /proc costs CPU the boot needs) and reads its memory cgroup's peak at the end.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<usize>,
}

impl Sampler {
    /// Starts counting the `gatectl` processes in cgroups whose path has
    /// `cgroup` (the hosts' cgroups are named after them).
    fn start(cgroup: &str) -> Sampler {
        let cgroup = cgroup.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                let count = fs::read_dir("/proc")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| {
                        let p = e.path();
                        fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "gatectl")
                            && fs::read_to_string(p.join("cgroup")).is_ok_and(|c| c.contains(&cgroup))
                    })
                    .count();
                peak = peak.max(count);
                thread::sleep(Duration::from_millis(1000));
            }
            peak
        });
        Sampler { stop, thread }
    }

    /// The peaks; the memory one from `host`'s memory cgroup.
    fn stop(self, host: &TestHost) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        let processes = self.thread.join().unwrap_or(0);
        let memory_cgroup = host
            .cgroup_dirs()
            .iter()
            .find(|d| d.join("memory.max_usage_in_bytes").exists() || d.join("memory.peak").exists())
            .cloned();
        let memory = memory_cgroup.and_then(|d| {
            ["memory.max_usage_in_bytes", "memory.peak"]
                .iter()
                .find_map(|f| fs::read_to_string(d.join(f)).ok())
                .and_then(|s| s.trim().parse().ok())
        });
        Peaks { processes, memory }
    }
}
