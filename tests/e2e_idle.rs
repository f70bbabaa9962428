//! End to end, in a throwaway systemd host: `gatectl start` starts the
//! gate's forwarder at once, without a connection (`forwarder_prestart`);
//! a forwarder idle for `forwarder_idle_secs` exits and the socket unit
//! starts it again at the next connection; an open connection keeps it, and
//! so does a port added by `gatectl reload`, which only the forwarder
//! listens on.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::gatectl::{
    bash_in, gatectl_ok, main_pid, setup, ssh_via_gate, text, unit_state, wait_unit_state,
};
use common::require_root;

const FORWARDER: &str = "gate-alice.service";
const GATE: &str = "10.231.0.1";
/// The idle period the tests set.
const IDLE_SECS: u64 = 5; // the least gatectl accepts

/// The first line an agent reads from `port` of the gate: sshd's
/// identification string when the gate relays.
fn banner(host: &common::TestHost, port: u16) -> String {
    let script = format!("exec 3<>/dev/tcp/{GATE}/{port} && head -n 1 <&3");
    let out = bash_in(host, "agent", 10, &script);
    assert!(out.status.success(), "no banner on port {port}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn manifest(entries: &[&str]) -> String {
    let mut text = String::from("agent_netns = \"agent\"\n");
    for alias in entries {
        text.push_str(&format!(
            "[[ssh]]\nHost = \"{alias}\"\nHostname = \"upstream.test\"\nUser = \"root\"\n"
        ));
    }
    text
}

/// A host with the short idle period and gate alice started, with entry `up`.
fn alice_started(name: &str) -> (common::TestHost, common::SshFixture) {
    let (host, sshd) = setup(name);
    settings(&host);
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        manifest(&["up"]).as_bytes(),
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);
    (host, sshd)
}

fn settings(host: &common::TestHost) {
    host.write_file(
        "/etc/gatectl/gatectl.toml",
        format!("forwarder_prestart = true\nforwarder_idle_secs = {IDLE_SECS}\n").as_bytes(),
        0o644,
    );
}

#[test]
fn start_runs_the_forwarder_which_exits_when_idle_and_comes_back_at_the_next_connection() {
    if !require_root() {
        return;
    }
    let (host, sshd) = alice_started("e2e-idle");
    let started = Instant::now();
    // Running without any connection: start queued it.
    assert_eq!(
        wait_unit_state(&host, FORWARDER, "active", Duration::from_secs(5)),
        "active",
        "start did not start the forwarder"
    );
    let pid = main_pid(&host, FORWARDER);
    let journal = host.run_ok(&["journalctl", "-u", FORWARDER, "-o", "cat"]);
    assert!(!journal.contains(" -> "), "a connection was made: {journal}");

    // It stays for the idle period, then exits cleanly; the socket listens.
    thread::sleep(
        Duration::from_secs(IDLE_SECS).saturating_sub(started.elapsed() + Duration::from_millis(500)),
    );
    assert_eq!(main_pid(&host, FORWARDER), pid, "exited before the idle period");
    assert_eq!(
        wait_unit_state(&host, FORWARDER, "inactive", Duration::from_secs(IDLE_SECS + 5)),
        "inactive",
        "the idle forwarder did not exit"
    );
    let result = host.run_ok(&["systemctl", "show", "-p", "Result", "--value", FORWARDER]);
    assert_eq!(result.trim(), "success");
    let status = gatectl_ok(&host, &["status", "alice"]);
    for want in [
        "gate alice: running",
        "gate-alice.socket (active/listening)",
        "gate-alice.service (inactive/dead, starts at the first connection)",
    ] {
        assert!(status.contains(want), "status lacks {want:?}:\n{status}");
    }

    // The next connection starts it again: the banner, then a real session.
    assert!(banner(&host, 30000).starts_with("SSH-2.0-"));
    assert_eq!(unit_state(&host, FORWARDER), "active");
    let out = ssh_via_gate(&host, &sshd, "alice", Some("agent"), "echo through-again");
    assert!(
        out.as_deref().is_ok_and(|o| o.contains("through-again")),
        "{out:?}"
    );
    // And it exits again once idle.
    assert_eq!(
        wait_unit_state(&host, FORWARDER, "inactive", Duration::from_secs(IDLE_SECS + 5)),
        "inactive"
    );
    gatectl_ok(&host, &["stop", "alice"]);
}

#[test]
fn an_open_connection_and_a_port_added_by_reload_keep_the_forwarder() {
    if !require_root() {
        return;
    }
    let (host, _sshd) = alice_started("e2e-idle-kept");
    assert_eq!(
        wait_unit_state(&host, FORWARDER, "active", Duration::from_secs(5)),
        "active"
    );
    let pid = main_pid(&host, FORWARDER);

    // A connection held open (sshd waits for the client's identification)
    // past the idle period keeps the forwarder running and accepting.
    let holder = host
        .command(&[
            "ip",
            "netns",
            "exec",
            "agent",
            "bash",
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{GATE}/30000 && head -n 1 <&3 && sleep {}",
                IDLE_SECS + 4
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the holder");
    thread::sleep(Duration::from_secs(IDLE_SECS + 2));
    assert_eq!(
        unit_state(&host, FORWARDER),
        "active",
        "the forwarder is leaving with a connection open"
    );
    assert_eq!(
        main_pid(&host, FORWARDER),
        pid,
        "the forwarder exited with a connection open"
    );
    assert!(
        banner(&host, 30000).starts_with("SSH-2.0-"),
        "a new connection meanwhile"
    );
    let held = common::finish_within(holder, "the held connection", Duration::from_secs(30));
    assert!(held.status.success(), "{}", text(&held));
    assert!(String::from_utf8_lossy(&held.stdout).starts_with("SSH-2.0-"));
    // Closed: it exits once idle.
    assert_eq!(
        wait_unit_state(&host, FORWARDER, "inactive", Duration::from_secs(IDLE_SECS + 5)),
        "inactive"
    );

    // The next connection starts it again; a reload meanwhile adds an
    // entry: its port (30001) is the running forwarder's own socket, so the
    // forwarder stays past the idle period.
    assert!(banner(&host, 30000).starts_with("SSH-2.0-"));
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        manifest(&["up", "added"]).as_bytes(),
        0o644,
    );
    gatectl_ok(&host, &["reload", "alice"]);
    assert_eq!(unit_state(&host, FORWARDER), "active");
    let pid = main_pid(&host, FORWARDER);
    thread::sleep(Duration::from_secs(IDLE_SECS + 3));
    assert_eq!(
        main_pid(&host, FORWARDER),
        pid,
        "the forwarder exited while it alone listened on port 30001"
    );
    assert!(banner(&host, 30001).starts_with("SSH-2.0-"));
    assert!(banner(&host, 30000).starts_with("SSH-2.0-"));
    gatectl_ok(&host, &["stop", "alice"]);
}
