//! Proves the throwaway-host harness of `tests/common` itself: a real systemd boots as PID 1
//! of private namespaces, transient units run (with `DynamicUser=`), fixtures build
//! namespaced networks with a working `sshd`, dropping the host — also while a test
//! panics — leaves nothing behind on the real machine, and a host booted again on its disk
//! keeps its files and nothing else.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use common::{list_dir, pid_exists, require_root, ssh_args, HostDisk, TestHost, STATE_ROOT};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

#[test]
fn throwaway_host_runs_systemd_units_and_ssh() {
    if !require_root() {
        return;
    }
    let real_netns_before = list_dir("/run/netns");
    let host = TestHost::boot("harness-selftest");
    let pid = host.pid();
    let cgroups = host.cgroup_dirs().to_vec();
    let name = host.name().to_string();
    assert!(pid > 0);
    assert!(!cgroups.is_empty(), "the host should run in cgroups of its own");

    // systemd is PID 1 inside and the system came up
    let state = host.exec(&["systemctl", "is-system-running"]);
    let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
    assert!(state == "running" || state == "degraded", "system state: {state}");
    assert_eq!(host.run_ok(&["cat", "/proc/1/comm"]).trim(), "systemd");
    assert_eq!(host.run_ok(&["hostname"]).trim(), host.name());
    // ... and that PID 1 is the process we will kill
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "systemd"
    );
    // the masked units stay masked
    let masked = host.exec(&["systemctl", "is-enabled", "ssh.service"]);
    assert_eq!(String::from_utf8_lossy(&masked.stdout).trim(), "masked");

    // the system bus answers for systemd (gatectl talks to systemd over it, not over
    // systemctl's private socket)
    let version = host.run_ok(&[
        "busctl",
        "get-property",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "Version",
    ]);
    assert!(
        version.starts_with("s \""),
        "systemd version over D-Bus: {version}"
    );

    // nftables works in the host's own network namespace, and stays there
    let real_tables_before = real_nft_tables();
    host.run_ok(&["nft", "add", "table", "inet", "gatectl_selftest"]);
    assert!(host
        .run_ok(&["nft", "list", "tables"])
        .contains("gatectl_selftest"));
    assert_eq!(
        real_nft_tables(),
        real_tables_before,
        "the real machine's firewall must not change"
    );

    // transient units, with DynamicUser=yes, from a binary streamed into a system path
    host.run_ok(&[
        "systemd-run",
        "--wait",
        "--quiet",
        "-p",
        "DynamicUser=yes",
        "/bin/true",
    ]);
    host.install_binary(Path::new("/bin/echo"), "/usr/local/bin/gatectl-selftest-echo");
    assert!(
        !Path::new("/usr/local/bin/gatectl-selftest-echo").exists(),
        "a file written inside the host must not reach the real machine"
    );
    let out = host.run_ok(&[
        "systemd-run",
        "--wait",
        "--pipe",
        "--quiet",
        "-p",
        "DynamicUser=yes",
        "/usr/local/bin/gatectl-selftest-echo",
        "dynamic",
    ]);
    assert_eq!(out.trim(), "dynamic");
    let uid = host.run_ok(&[
        "systemd-run",
        "--wait",
        "--pipe",
        "--quiet",
        "-p",
        "DynamicUser=yes",
        "/usr/bin/id",
        "-u",
    ]);
    assert_ne!(uid.trim(), "0", "a DynamicUser unit must not run as root");

    // write_file: contents, mode, and a path that is not interpolated into the script
    let odd = "/root/gatectl-fixture/a file; touch /root/pwned";
    host.write_file(odd, b"x\ny\0z", 0o640);
    assert_eq!(host.run_ok(&["stat", "-c", "%a", odd]).trim(), "640");
    assert_eq!(host.exec(&["cat", odd]).stdout, b"x\ny\0z");
    assert!(!host.exec(&["test", "-e", "/root/pwned"]).status.success());

    // networks: an upstream netns with sshd, an agent netns routed through the host's root
    // namespace, and an isolated one
    host.add_netns_with_link("upstream", "up0", "10.99.2.0/31", "10.99.2.1/31");
    host.add_netns_with_link("agent", "ag0", "10.99.1.0/31", "10.99.1.1/31");
    host.add_netns("isolated");
    let netns = host.run_ok(&["ip", "netns", "list"]);
    for ns in ["upstream", "agent", "isolated"] {
        assert!(netns.contains(ns), "ip netns list: {netns}");
    }
    assert_eq!(
        list_dir("/run/netns"),
        real_netns_before,
        "the real machine's /run/netns must not change"
    );
    let sshd = host.start_sshd("upstream", "10.99.2.1", 2222);
    assert!(sshd.host_public_key.starts_with("ssh-ed25519 "));

    let dir = "/root/gatectl-fixture/client";
    host.write_file(
        &format!("{dir}/ssh_config"),
        sshd.client_config("upstream").as_bytes(),
        0o600,
    );
    sshd.write_known_hosts(&host, &format!("{dir}/known_hosts"), &[&sshd.known_hosts_name()]);
    let ssh = |netns: Option<&str>| {
        ssh_args(
            netns,
            Some(&format!("{dir}/ssh_config")),
            &sshd.identity,
            &format!("{dir}/known_hosts"),
            "upstream",
            "echo ok",
        )
    };

    // from the host's root namespace
    assert_eq!(host.run_ok(&ssh(None)).trim(), "ok");
    // from the agent namespace, routed through the host's root namespace
    host.enable_ip_forwarding();
    assert_eq!(host.run_ok(&ssh(Some("agent"))).trim(), "ok");
    // the isolated namespace has no route anywhere
    let refused = host.exec(&ssh(Some("isolated")));
    assert!(!refused.status.success(), "ssh from an isolated netns must fail");
    // a wrong host key is refused (StrictHostKeyChecking=yes)
    host.run_ok(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &format!("{dir}/other_key"),
    ]);
    let other = host.read_file(&format!("{dir}/other_key.pub"));
    let other: Vec<&str> = other.split_whitespace().take(2).collect();
    let line = format!("{} {}\n", sshd.known_hosts_name(), other.join(" "));
    host.write_file(&format!("{dir}/wrong_known_hosts"), line.as_bytes(), 0o600);
    let wrong = host.exec(&ssh_args(
        None,
        Some(&format!("{dir}/ssh_config")),
        &sshd.identity,
        &format!("{dir}/wrong_known_hosts"),
        "upstream",
        "echo ok",
    ));
    assert!(
        !wrong.status.success(),
        "ssh must refuse a host key it does not know"
    );
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("Host key verification failed"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(sshd.log_text(&host).contains("Accepted publickey for root"));

    drop(host);
    assert!(
        !pid_exists(pid),
        "the host's PID 1 ({pid}) must be gone after drop"
    );
    for dir in &cgroups {
        assert!(!dir.exists(), "cgroup {} must be removed", dir.display());
    }
    assert_eq!(list_dir("/run/netns"), real_netns_before);
    assert!(
        !list_dir(STATE_ROOT)
            .iter()
            .any(|f| f.starts_with(&format!("{name}."))),
        "the host's pid file, log and mount point must be removed"
    );
}

#[test]
fn a_host_booted_again_on_its_disk_keeps_its_files_and_nothing_else() {
    if !require_root() {
        return;
    }
    let host = TestHost::boot_with_disk("selftest-reboot", HostDisk::new("selftest-reboot"));
    let disk = host.disk_path().unwrap().to_path_buf();
    let first_pid = host.pid();
    host.write_file("/etc/gatectl-selftest-kept", b"kept\n", 0o644);
    host.write_file("/var/lib/gatectl-selftest-kept", b"kept\n", 0o644);
    host.write_file("/run/gatectl-selftest-gone", b"gone\n", 0o644);
    host.add_netns("selftest-gone");
    host.run_ok(&["systemd-run", "--unit", "selftest-gone", "sleep", "infinity"]);

    let host = host.reboot();
    assert!(!pid_exists(first_pid), "the first boot's systemd still runs");
    assert_ne!(host.pid(), first_pid);
    assert_eq!(host.read_file("/etc/gatectl-selftest-kept"), "kept\n");
    assert_eq!(host.read_file("/var/lib/gatectl-selftest-kept"), "kept\n");
    for gone in ["/run/gatectl-selftest-gone", "/run/netns/selftest-gone"] {
        assert!(
            !host.exec(&["test", "-e", gone]).status.success(),
            "{gone} survived the reboot"
        );
    }
    let unit = host.exec(&["systemctl", "is-active", "selftest-gone.service"]);
    assert_eq!(String::from_utf8_lossy(&unit.stdout), "inactive\n");
    // Nothing of it on the real machine but the disk, which goes with the host.
    assert!(!Path::new("/etc/gatectl-selftest-kept").exists());
    assert!(disk.join("upper/etc/gatectl-selftest-kept").exists());
    drop(host);
    assert!(!disk.exists(), "the disk {} outlived its host", disk.display());
}

#[test]
fn throwaway_host_is_cleaned_up_when_a_test_panics() {
    if !require_root() {
        return;
    }
    static PID: AtomicI32 = AtomicI32::new(0);
    static DOOMED: AtomicU64 = AtomicU64::new(0);
    let cgroups = std::sync::Mutex::new(Vec::new());
    let name = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let host = TestHost::boot("harness-panic");
        PID.store(host.pid(), Ordering::SeqCst);
        *name.lock().unwrap() = host.name().to_string();
        *cgroups.lock().unwrap() = host.cgroup_dirs().to_vec();
        // A network namespace, held by a process of the host: the real
        // machine sees that process in it until the host is gone.
        host.add_netns("doomed");
        host.run_ok(&["sh", "-c", "ip netns exec doomed sleep 1000 >/dev/null 2>&1 &"]);
        let inode: u64 = host
            .run_ok(&["stat", "-L", "-c", "%i", "/run/netns/doomed"])
            .trim()
            .parse()
            .expect("the inode of netns doomed");
        DOOMED.store(inode, Ordering::SeqCst);
        assert!(
            !processes_in_netns(inode).is_empty(),
            "no process of the real machine is in netns doomed"
        );
        // a failing command panics with its argv, status and output ...
        host.run_ok(&["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"]);
        unreachable!("run_ok must panic on a non-zero exit");
    });
    let message = result.expect_err("the closure must panic");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("exit status: 3"), "panic message: {message}");
    assert!(
        message.contains("to-stdout") && message.contains("to-stderr"),
        "{message}"
    );
    // ... and the host was torn down while unwinding
    let pid = PID.load(Ordering::SeqCst);
    assert!(pid > 0);
    assert!(!pid_exists(pid), "the host's PID 1 ({pid}) must be gone");
    for dir in cgroups.lock().unwrap().iter() {
        assert!(!dir.exists(), "cgroup {} must be removed", dir.display());
    }
    let name = name.lock().unwrap().clone();
    assert!(!name.is_empty());
    assert!(!list_dir(STATE_ROOT)
        .iter()
        .any(|f| f.starts_with(&format!("{name}."))));
    let doomed = DOOMED.load(Ordering::SeqCst);
    assert!(doomed > 0);
    assert_eq!(
        processes_in_netns(doomed),
        Vec::<i32>::new(),
        "processes still in the host's netns doomed"
    );
}

/// The processes of the real machine whose network namespace has `inode`.
fn processes_in_netns(inode: u64) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == inode))
        .collect();
    pids.sort();
    pids
}

/// The real machine's nftables tables (read only). Fails the test when nft
/// cannot list them: a firewall nobody can read has not been shown unchanged.
fn real_nft_tables() -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("run nft (package nftables) to read the real machine's tables");
    assert!(
        out.status.success(),
        "nft list tables failed on the real machine: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
