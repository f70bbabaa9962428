//! The bot-bottle backend in `contrib/bot-bottle/` against the real
//! gatectl: its pytest suite runs inside a throwaway systemd host with
//! gatectl installed, an sshd in an upstream netns and an agent netns, and
//! does prepare, start, real ssh through the gate from the agent netns,
//! stop, and a second stop.
//!
//! Needs root and python3-pytest (scripts/install-deps); skipped without
//! root (fails under `CI`).

mod common;

use common::gatectl::{setup, text, GATECTL};
use common::require_root;

/// The pytest suite of the contrib backend, with its end-to-end tests
/// enabled: every test passes, none is skipped.
#[test]
fn the_bot_bottle_backend_passes_its_pytest_suite_with_real_ssh() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-contrib");
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/bot-bottle");
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
