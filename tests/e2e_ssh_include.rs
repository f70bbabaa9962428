//! End to end, in a throwaway systemd host: the agent's ssh config holds
//! only `Include <path>`, with the path from `gatectl ssh-config --include`;
//! a real `ssh` in the agent's netns reaches a real `sshd` through the gate
//! with the blocks gatectl keeps there; `stop` removes them, `reconcile`
//! writes them again.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use common::gatectl::{gatectl, gatectl_ok, setup, text};
use common::{require_root, ssh_args};

const INCLUDE: &str = "/run/gatectl/ssh_config/alice.conf";

#[test]
fn ssh_through_an_included_config_that_start_writes_and_stop_removes() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-ssh-include");
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\nUser = \"root\"\n",
        0o644,
    );
    // The path is known before the gate starts: the config is written once;
    // a note says the file comes with the gate.
    let out = gatectl(&host, &["ssh-config", "alice", "--include"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{INCLUDE}\n"));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "gatectl: note: gate alice is not running, so {INCLUDE} does not exist yet: ssh skips the \
             Include until `gatectl start alice` writes it\n"
        )
    );
    host.write_file(
        "/root/agent/ssh_config",
        format!("Include {INCLUDE}\n").as_bytes(),
        0o600,
    );
    let ssh = |cmd: &str| {
        host.exec(&ssh_args(
            Some("agent"),
            Some("/root/agent/ssh_config"),
            &sshd.identity,
            "/root/agent/known_hosts",
            "up",
            cmd,
        ))
    };
    let no_block = |out: &std::process::Output| {
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("Could not resolve hostname up")
    };
    let out = ssh("true");
    assert!(no_block(&out), "ssh before the start: {}", text(&out));

    gatectl_ok(&host, &["start", "alice"]);
    let out = ssh("echo through-the-include; hostname -I");
    assert!(
        out.status.success(),
        "ssh through the included config failed: {}\nsshd log:\n{}",
        text(&out),
        sshd.log_text(&host)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("through-the-include") && stdout.contains("10.99.2.1"),
        "{stdout}"
    );
    // The blocks are those of `ssh-config`, in a file the agent's user can
    // read.
    let blocks = gatectl_ok(&host, &["ssh-config", "alice"]);
    let kept = host.read_file(INCLUDE);
    assert!(kept.ends_with(&blocks), "{kept}");
    assert_eq!(host.run_ok(&["stat", "-c", "%a", INCLUDE]).trim(), "644");

    // Stop removes the file, so the alias no longer resolves.
    gatectl_ok(&host, &["stop", "alice"]);
    assert!(!host.exec(&["test", "-e", INCLUDE]).status.success());
    let out = ssh("true");
    assert!(no_block(&out), "ssh after the stop: {}", text(&out));

    // Reconcile writes it again for a running gate.
    gatectl_ok(&host, &["start", "alice"]);
    host.run_ok(&["rm", INCLUDE]);
    gatectl_ok(&host, &["reconcile"]);
    assert_eq!(host.read_file(INCLUDE), kept);
    gatectl_ok(&host, &["stop", "alice"]);
    assert!(!host.exec(&["test", "-e", INCLUDE]).status.success());
}
