//! Egress policy, proven with real connection attempts in a throwaway
//! systemd host: a gate reaches its declared upstreams and nothing else, in
//! every layer (routing, the host's nftables allowlist, the forwarder's
//! systemd IP sandbox), per gate, across `stop` and a firewall flush.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use common::gatectl::{
    allowlist, bash_in, connect, gatectl, gatectl_ok, ip_forward, leftovers, serve, setup, ssh_via_gate, text,
};
use common::require_root;

const ALICE: &[u8] =
    b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\nUser = \"root\"\n";

#[test]
fn a_gate_reaches_its_upstream_and_nothing_else() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-egress");
    // A decoy service on the upstream, and a service of the host itself.
    serve(&host, Some("upstream"), "10.99.2.1", 8080, "decoy");
    serve(&host, None, "0.0.0.0", 9999, "host-service");
    // A third network behind the host, with a service.
    host.add_netns_with_link("other", "ot0", "10.99.4.0/31", "10.99.4.1/31");
    serve(&host, Some("other"), "10.99.4.1", 7070, "other");
    assert_eq!(ip_forward(&host, None), "0");
    host.write_file("/etc/gatectl/bottles/alice.toml", ALICE, 0o644);
    gatectl_ok(&host, &["start", "alice"]);

    // From the agent netns: ssh through the gate works...
    let out = ssh_via_gate(&host, &sshd, "alice", Some("agent"), "echo through-the-gate").unwrap();
    assert!(out.contains("through-the-gate"));
    // ...a direct connect to the upstream has no route...
    let direct = connect(&host, Some("agent"), "10.99.2.1", 22).unwrap_err();
    assert!(direct.contains("unreachable"), "{direct}");
    // ...and the gate's address answers only on its listen ports.
    let other_port = connect(&host, Some("agent"), "10.231.0.1", 22).unwrap_err();
    assert!(other_port.contains("refused"), "{other_port}");
    assert_eq!(connect(&host, Some("agent"), "10.231.0.1", 30000), Ok(()));

    // From inside the gate netns, as root (stronger than the forwarder):
    let gate = Some("gate-alice");
    assert_eq!(
        connect(&host, gate, "10.99.2.1", 22),
        Ok(()),
        "the declared upstream"
    );
    assert!(connect(&host, gate, "10.99.2.1", 8080).is_err(), "the decoy port");
    assert!(
        connect(&host, gate, "10.232.0.0", 9999).is_err(),
        "host services via the egress link"
    );
    assert!(
        connect(&host, gate, "10.99.2.0", 9999).is_err(),
        "host services on another address"
    );
    assert!(
        connect(&host, gate, "10.99.4.1", 7070).is_err(),
        "another network"
    );
    // The gate netns's own table dropped them, before the host saw them.
    let gate_drops = host.run_ok(&[
        "ip",
        "netns",
        "exec",
        "gate-alice",
        "nft",
        "list",
        "chain",
        "inet",
        "gatectl",
        "output",
    ]);
    assert!(
        !gate_drops.contains("counter packets 0 "),
        "drops are counted in the gate netns: {gate_drops}"
    );
    // Each layer alone: without the gate netns's table (root there may
    // delete it), the host's allowlist still stops them.
    host.run_ok(&[
        "ip",
        "netns",
        "exec",
        "gate-alice",
        "nft",
        "delete",
        "table",
        "inet",
        "gatectl",
    ]);
    assert!(
        connect(&host, gate, "10.99.2.1", 8080).is_err(),
        "the decoy port, host layer only"
    );
    assert!(
        connect(&host, gate, "10.232.0.0", 9999).is_err(),
        "host services, host layer only"
    );
    assert!(
        connect(&host, gate, "10.99.4.1", 7070).is_err(),
        "another network, host layer only"
    );
    let dropped = host.run_ok(&["nft", "list", "chain", "inet", "gatectl", "forward"]);
    assert!(dropped.contains("iifgroup 232 counter packets"), "{dropped}");
    assert!(
        !dropped.contains("iifgroup 232 counter packets 0 "),
        "drops are counted: {dropped}"
    );
    let reconciled = gatectl_ok(&host, &["reconcile"]);
    assert!(reconciled.contains("1 running gate(s): alice"), "{reconciled}");
    assert_eq!(
        connect(&host, gate, "10.99.2.1", 22),
        Ok(()),
        "the declared upstream after reconcile"
    );

    // gatectl turned forwarding on, but the host still forwards nothing but
    // gate traffic between its other networks.
    assert_eq!(ip_forward(&host, None), "1");
    assert!(
        connect(&host, Some("upstream"), "10.99.4.1", 7070).is_err(),
        "upstream -> other"
    );
    assert!(
        connect(&host, Some("other"), "10.99.2.1", 8080).is_err(),
        "other -> upstream"
    );

    // The gate netns itself never forwards.
    let fwd = ip_forward(&host, Some("gate-alice"));
    assert_eq!(fwd.trim(), "0");

    // The forwarder's own sandbox: a forwarder in the same gate, told to
    // reach the (firewall-allowed) upstream but with an IPAddressAllow= that
    // lacks it, is refused by systemd's BPF filter.
    host.run_ok(&[
        "systemd-run",
        "--quiet",
        "--unit=tampered-forwarder",
        "-p",
        "NetworkNamespacePath=/run/netns/gate-alice",
        "-p",
        "Type=notify",
        "-p",
        "DynamicUser=yes",
        "-p",
        "IPAddressDeny=any",
        "-p",
        "IPAddressAllow=10.231.0.0/31",
        "/usr/local/bin/gatectl",
        "forward",
        "--slug",
        "alice",
        "--listen",
        "10.231.0.1",
        "--connect-timeout",
        "1",
        "--route",
        "31000,tampered,10.99.2.1:22",
    ]);
    let tampered = bash_in(
        &host,
        "agent",
        5,
        "exec 3<>/dev/tcp/10.231.0.1/31000; read -t 3 line <&3; echo \"got:$line\"",
    );
    let got = String::from_utf8_lossy(&tampered.stdout);
    assert!(
        !got.contains("SSH-"),
        "the tampered forwarder reached the upstream: {}",
        text(&tampered)
    );
    let mut journal = String::new();
    for _ in 0..50 {
        journal = host.run_ok(&[
            "journalctl",
            "-u",
            "tampered-forwarder",
            "-o",
            "cat",
            "--no-pager",
        ]);
        if journal.contains("connect failed") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(journal.contains("connect failed"), "{journal}");
    host.run_ok(&["systemctl", "stop", "tampered-forwarder"]);

    // nft flush ruleset, then reconcile: the gate works and is still restricted.
    host.run_ok(&["nft", "flush", "ruleset"]);
    let out = gatectl_ok(&host, &["reconcile"]);
    assert!(out.contains("1 running gate(s): alice"), "{out}");
    assert!(
        ssh_via_gate(&host, &sshd, "alice", Some("agent"), "echo after-reconcile")
            .unwrap()
            .contains("after-reconcile")
    );
    assert!(
        connect(&host, gate, "10.99.2.1", 8080).is_err(),
        "decoy after reconcile"
    );
    assert!(
        connect(&host, Some("upstream"), "10.99.4.1", 7070).is_err(),
        "forwarding after reconcile"
    );

    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
    let ruleset = host.run_ok(&["nft", "list", "ruleset"]);
    assert!(!ruleset.contains("gte0 "), "{ruleset}");
}

#[test]
fn two_gates_are_isolated_from_each_other() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-two-gates");
    host.add_netns_with_link("upstream2", "up2", "10.99.3.0/31", "10.99.3.1/31");
    serve(&host, Some("upstream2"), "10.99.3.1", 2222, "bob-upstream");
    host.write_file("/etc/gatectl/bottles/alice.toml", ALICE, 0o644);
    host.write_file(
        "/etc/gatectl/bottles/bob.toml",
        b"[[ssh]]\nHost = \"b\"\nHostname = \"10.99.3.1\"\nPort = 2222\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);
    gatectl_ok(&host, &["start", "bob"]);
    let elements = allowlist(&host);
    assert!(elements.contains("\"gte0\" . 10.99.2.1 . 22"), "{elements}");
    assert!(elements.contains("\"gte1\" . 10.99.3.1 . 2222"), "{elements}");

    // Each gate reaches its own upstream only.
    assert_eq!(connect(&host, Some("gate-bob"), "10.99.3.1", 2222), Ok(()));
    assert!(
        connect(&host, Some("gate-alice"), "10.99.3.1", 2222).is_err(),
        "alice -> bob's upstream"
    );
    assert!(
        connect(&host, Some("gate-bob"), "10.99.2.1", 22).is_err(),
        "bob -> alice's upstream"
    );

    // A connection through bob stays up while alice stops.
    let held = host
        .command(&["bash", "-c", "exec 3<>/dev/tcp/10.231.0.3/30000; read -t 10 line <&3; echo \"$line\"; sleep 2; echo still-open >&3; echo done"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    gatectl_ok(&host, &["stop", "alice"]);
    let held_out = common::finish(held, "a connection held through bob");
    let held_text = String::from_utf8_lossy(&held_out.stdout);
    assert!(
        held_text.contains("bob-upstream") && held_text.contains("done"),
        "{held_text}"
    );
    let elements = allowlist(&host);
    assert!(!elements.contains("\"gte0\""), "{elements}");
    assert!(elements.contains("\"gte1\" . 10.99.3.1 . 2222"), "{elements}");
    assert_eq!(connect(&host, Some("gate-bob"), "10.99.3.1", 2222), Ok(()));
    let _ = sshd;

    gatectl_ok(&host, &["stop", "bob"]);
    assert_eq!(allowlist(&host), "", "the table holds nothing of any gate");
    let status = gatectl(&host, &["status", "bob"]);
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));
}
