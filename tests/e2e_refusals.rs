//! End to end, in a throwaway systemd host: when the gate accepts an ssh
//! connection it cannot serve, a real OpenSSH client prints why
//! (`Received disconnect from …: CODE: gatectl gate alice: …`) instead of a
//! bare "Connection closed": an upstream that refuses, one that does not
//! answer, the connection limit, and an entry a reload removed while the
//! connection waited for its upstream.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::gatectl::{gatectl_ok, setup, text};
use common::{finish, require_root, ssh_args, SshFixture, TestHost};

const KNOWN_HOSTS: &str = "/root/agent/known_hosts";
const SSH_CONFIG: &str = "/root/agent/alice.ssh_config";
const MANIFEST: &str = "/etc/gatectl/bottles/alice.toml";
/// Where the held session's remote shell writes its pid.
const HELD_PID: &str = "/root/held.pid";

/// alice's manifest: `up` reaches sshd; `down` a closed port; `silent` and
/// `slow` ports whose SYNs the upstream drops (`slow` last, so removing it
/// moves no other entry).
fn manifest(with_slow: bool) -> String {
    let mut text = String::from("agent_netns = \"agent\"\n");
    let mut entries = vec![("up", 22), ("down", 2222), ("silent", 2223)];
    if with_slow {
        entries.push(("slow", 2224));
    }
    for (alias, port) in entries {
        text.push_str(&format!(
            "[[ssh]]\nHost = \"{alias}\"\nHostname = \"upstream.test\"\nPort = {port}\nUser = \"root\"\n"
        ));
    }
    text
}

/// The agent's ssh to `alias` running `command`, waiting up to 30 s for the
/// server's identification (longer than the gate's connect timeout).
fn ssh_argv(sshd: &SshFixture, alias: &str, command: &str) -> Vec<String> {
    ssh_args(
        Some("agent"),
        Some(SSH_CONFIG),
        &sshd.identity,
        KNOWN_HOSTS,
        alias,
        command,
    )
    .into_iter()
    .map(|arg| {
        if arg == "ConnectTimeout=5" {
            "ConnectTimeout=30".to_string()
        } else {
            arg
        }
    })
    .collect()
}

fn spawn_ssh(host: &TestHost, sshd: &SshFixture, alias: &str, command: &str) -> Child {
    host.command(&ssh_argv(sshd, alias, command))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run ssh")
}

/// Asserts that ssh failed and printed the disconnect `code` from the gate's
/// port `port` with `description`.
fn assert_refused(out: &Output, port: u16, code: u32, description: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("Received disconnect from 10.231.0.1 port {port}:{code}: {description}");
    assert!(
        !out.status.success() && stderr.contains(&expected),
        "ssh should print {expected:?}: {}",
        text(out)
    );
}

/// An ssh session through `up` that stays open (its remote shell's pid in
/// [`HELD_PID`]), retried while the gate refuses it.
fn hold_a_session(host: &TestHost, sshd: &SshFixture) -> Child {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut held = spawn_ssh(host, sshd, "up", &format!("echo $$ > {HELD_PID}; exec sleep 120"));
        loop {
            if host.exec(&["test", "-s", HELD_PID]).status.success() {
                return held;
            }
            if held.try_wait().unwrap().is_some() {
                let out = finish(held, "ssh");
                assert!(
                    Instant::now() < deadline,
                    "no session could be held: {}",
                    text(&out)
                );
                break;
            }
            assert!(Instant::now() < deadline, "the held session did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn ssh_prints_why_the_gate_refused_each_connection() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("refusals");
    host.write_file("/etc/gatectl/gatectl.toml", b"max_connections = 1\n", 0o644);
    host.run_ok(&[
        "ip",
        "netns",
        "exec",
        "upstream",
        "nft",
        "add table inet blackhole; \
         add chain inet blackhole input { type filter hook input priority 0; }; \
         add rule inet blackhole input tcp dport { 2223, 2224 } drop",
    ]);
    host.write_file(MANIFEST, manifest(true).as_bytes(), 0o644);
    gatectl_ok(&host, &["start", "alice"]);
    let config = gatectl_ok(&host, &["ssh-config", "alice"]);
    host.write_file(SSH_CONFIG, config.as_bytes(), 0o600);

    // An upstream that refuses.
    let out = host.exec(&ssh_argv(&sshd, "down", "true"));
    assert_refused(
        &out,
        30001,
        10,
        "gatectl gate alice: upstream down (10.99.2.1:2222) refused the connection",
    );

    // An upstream that does not answer within the connect timeout (10 s).
    let started = Instant::now();
    let out = host.exec(&ssh_argv(&sshd, "silent", "true"));
    assert_refused(
        &out,
        30002,
        10,
        "gatectl gate alice: upstream silent (10.99.2.1:2223) did not answer (timed out after 10s)",
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );

    // The connection limit (1) while a session is open; the held session
    // is untouched by the refusal. (The slot of the last refusal comes back
    // once its client has read it and closed: retry until the session holds.)
    let mut held = hold_a_session(&host, &sshd);
    let out = host.exec(&ssh_argv(&sshd, "up", "true"));
    assert_refused(
        &out,
        30000,
        12,
        "gatectl gate alice: too many connections (the limit is 1); try again later",
    );
    assert!(held.try_wait().unwrap().is_none(), "the held session survived");
    let pid = host.read_file(HELD_PID);
    host.run_ok(&["kill", pid.trim()]);
    let held = finish(held, "the held ssh session");
    assert!(
        held.stderr.is_empty(),
        "nothing added to a session: {}",
        text(&held)
    );

    // An entry a reload removes while its connection waits for the upstream.
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.exec(&ssh_argv(&sshd, "up", "true")).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the limit's slot did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let waiting = spawn_ssh(&host, &sshd, "slow", "true");
    std::thread::sleep(Duration::from_secs(1));
    host.write_file(MANIFEST, manifest(false).as_bytes(), 0o644);
    gatectl_ok(&host, &["reload", "alice"]);
    let out = finish(waiting, "ssh to the removed entry");
    assert_refused(
        &out,
        30003,
        1,
        "gatectl gate alice: slow is no longer declared for this agent (a reload removed it)",
    );

    gatectl_ok(&host, &["stop", "alice"]);
}
