//! The bot-bottle backend in `contrib/bot-bottle/` against the real
//! gatectl: its pytest suite runs inside a throwaway systemd host with
//! gatectl installed, an sshd in an upstream netns and an agent netns, and
//! does prepare, start, real ssh through the gate from the agent netns,
//! stop, and a second stop.
//!
//! Needs root and python3-pytest (scripts/install-deps); skipped without
//! root (fails under `CI`).

mod common;

use std::path::Path;

use common::gatectl::{setup, text, GATECTL};
use common::{require_root, TestHost};

/// Copies the files under `from` (but Python's caches) to `to` inside `host`.
fn copy_into(host: &TestHost, from: &Path, to: &str) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let target = format!("{to}/{name}");
        if entry.file_type().unwrap().is_dir() {
            if name != "__pycache__" {
                copy_into(host, &entry.path(), &target);
            }
        } else {
            host.write_file(&target, &std::fs::read(entry.path()).unwrap(), 0o644);
        }
    }
}

/// The pytest suite of the contrib backend, with its end-to-end tests
/// enabled: every test passes, none is skipped.
#[test]
fn the_bot_bottle_backend_passes_its_pytest_suite_with_real_ssh() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-contrib");
    // The suite is copied in: the checkout may be where the host's private
    // /tmp hides it (CI clones into /tmp).
    let suite = "/root/contrib/bot-bottle";
    copy_into(
        &host,
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/bot-bottle")),
        suite,
    );
    let identity = format!("GATECTL_E2E_IDENTITY={}", sshd.identity);
    let out = host.exec(&[
        "env",
        "GATECTL_E2E=1",
        &format!("GATECTL_E2E_GATECTL={GATECTL}"),
        "GATECTL_E2E_AGENT_NETNS=agent",
        &identity,
        "GATECTL_E2E_KNOWN_HOSTS=/root/agent/known_hosts",
        "GATECTL_E2E_UPSTREAM=upstream.test",
        "PYTHONDONTWRITEBYTECODE=1",
        "/usr/bin/python3",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-rA",
        suite,
    ]);
    let report = text(&out);
    assert!(
        out.status.success(),
        "the contrib suite failed: {report}\nsshd log:\n{}",
        sshd.log_text(&host)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(" 4 passed"), "{report}");
    assert!(!summary.contains("skipped"), "{report}");
    // Both stops left nothing of the gate.
    let netns = host.run_ok(&["ip", "netns", "list"]);
    assert!(!netns.contains("gate-"), "{netns}");
}
