//! Egress policy, proven with real connection attempts in a throwaway
//! systemd host: a gate reaches its declared upstreams and nothing else, in
//! every layer (routing, the host's nftables allowlist, the forwarder's
//! systemd IP sandbox), per gate, across `stop` and a firewall flush.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use common::gatectl::{
    allowlist, bash_in, connect, gatectl, gatectl_ok, ip_forward, journal_when, leftovers, serve, serve_echo,
    setup, ssh_via_gate, text,
};
use common::{require_root, TestHost};

const ALICE: &[u8] =
    b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\nUser = \"root\"\n";

/// `IPAddressAllow=` and `IPAddressDeny=` of `unit` as `systemctl show`
/// prints them, each list sorted (systemd keeps them in no fixed order).
fn ip_sandbox(host: &TestHost, unit: &str) -> String {
    let shown = host.run_ok(&[
        "systemctl",
        "show",
        "-p",
        "IPAddressDeny",
        "-p",
        "IPAddressAllow",
        unit,
    ]);
    let mut text = String::new();
    for line in shown.lines() {
        let (name, list) = line.split_once('=').unwrap_or((line, ""));
        let mut prefixes: Vec<&str> = list.split_whitespace().collect();
        prefixes.sort();
        text += &format!("{name}={}\n", prefixes.join(" "));
    }
    text
}

/// Changes properties of `gate-alice.service` through systemd's D-Bus API
/// (`systemctl set-property --runtime` calls `SetUnitProperties`), then stops
/// the forwarder: the next connection starts it with the changed properties.
fn set_forwarder_properties(host: &TestHost, assignments: &[&str]) {
    let mut argv = vec!["systemctl", "set-property", "--runtime", "gate-alice.service"];
    argv.extend_from_slice(assignments);
    host.run_ok(&argv);
    host.run_ok(&["systemctl", "stop", "gate-alice.service"]);
}

/// What the agent reads through gate alice's listen port within 5 s: the
/// upstream sshd's banner when the forwarder reaches it.
fn banner_via_gate(host: &TestHost) -> String {
    let out = bash_in(
        host,
        "agent",
        8,
        "exec 3<>/dev/tcp/10.231.0.1/30000; read -t 5 line <&3; echo \"got:$line\"",
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

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
    // Positive control: with forwarding on and no gatectl, the host routes
    // between the upstream network and the third one.
    host.enable_ip_forwarding();
    assert_eq!(connect(&host, Some("upstream"), "10.99.4.1", 7070), Ok(()));
    assert_eq!(connect(&host, Some("other"), "10.99.2.1", 8080), Ok(()));
    host.run_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
    assert_eq!(ip_forward(&host, None), "0");
    // A forwarder denied its upstream gives up after 2 s, not 10.
    host.write_file("/etc/gatectl/gatectl.toml", b"connect_timeout_secs = 2\n", 0o644);
    host.write_file("/etc/gatectl/bottles/alice.toml", ALICE, 0o644);
    gatectl_ok(&host, &["start", "alice"]);

    // From the agent netns: ssh through the gate works...
    let out = ssh_via_gate(&host, &sshd, "alice", Some("agent"), "echo through-the-gate").unwrap();
    assert!(out.contains("through-the-gate"));
    // ...a direct connect to the upstream has no route...
    let direct = connect(&host, Some("agent"), "10.99.2.1", 22).unwrap_err();
    assert!(direct.contains("Network is unreachable"), "{direct}");
    // ...and the gate's address answers only on its listen ports.
    let other_port = connect(&host, Some("agent"), "10.231.0.1", 22).unwrap_err();
    assert!(other_port.contains("Connection refused"), "{other_port}");
    assert_eq!(connect(&host, Some("agent"), "10.231.0.1", 30000), Ok(()));

    // From inside the gate netns, as root (stronger than the forwarder):
    // the declared upstream answers, everything else is dropped (a drop is
    // a timeout, not a refusal from the other end).
    let gate = Some("gate-alice");
    let dropped = |address: &str, port: u16, what: &str| {
        assert_eq!(
            connect(&host, gate, address, port),
            Err("timed out".to_string()),
            "{what}"
        );
    };
    assert_eq!(
        connect(&host, gate, "10.99.2.1", 22),
        Ok(()),
        "the declared upstream"
    );
    dropped("10.99.2.1", 8080, "the decoy port");
    dropped("10.232.0.0", 9999, "host services via the egress link");
    dropped("10.99.2.0", 9999, "host services on another address");
    dropped("10.99.4.1", 7070, "another network");
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
    assert!(gate_drops.contains("counter packets"), "{gate_drops}");
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
    dropped("10.99.2.1", 8080, "the decoy port, host layer only");
    dropped("10.232.0.0", 9999, "host services, host layer only");
    dropped("10.99.4.1", 7070, "another network, host layer only");
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

    // gatectl turned forwarding on, but the host no longer routes between
    // its other networks (which it did above, before `start`).
    assert_eq!(ip_forward(&host, None), "1");
    let refused = connect(&host, Some("upstream"), "10.99.4.1", 7070).unwrap_err();
    assert!(refused.contains("unreachable"), "upstream -> other: {refused}");
    let refused = connect(&host, Some("other"), "10.99.2.1", 8080).unwrap_err();
    assert!(refused.contains("unreachable"), "other -> upstream: {refused}");

    // The gate netns itself never forwards.
    let fwd = ip_forward(&host, Some("gate-alice"));
    assert_eq!(fwd.trim(), "0");

    // The forwarder's own sandbox, as gatectl set it on the real units: the
    // service may talk to the internal /31 and the upstream only, the socket
    // unit (which owns accepted connections) to the internal /31 only.
    let service_sandbox = "IPAddressAllow=10.231.0.0/31 10.99.2.1/32\nIPAddressDeny=0.0.0.0/0 ::/0\n";
    assert_eq!(ip_sandbox(&host, "gate-alice.service"), service_sandbox);
    assert_eq!(
        ip_sandbox(&host, "gate-alice.socket"),
        "IPAddressAllow=10.231.0.0/31\nIPAddressDeny=0.0.0.0/0 ::/0\n"
    );
    assert!(banner_via_gate(&host).starts_with("got:SSH-2.0-OpenSSH"));
    // Tamper with the real unit through D-Bus: take the upstream out of its
    // IPAddressAllow= and keep gatectl's deny. Both firewalls still let the
    // gate reach its upstream, so only the deny can stop the forwarder now.
    set_forwarder_properties(&host, &["IPAddressAllow=", "IPAddressAllow=10.231.0.0/31"]);
    assert_eq!(
        ip_sandbox(&host, "gate-alice.service"),
        "IPAddressAllow=10.231.0.0/31\nIPAddressDeny=0.0.0.0/0 ::/0\n"
    );
    // The agent gets the gate's own refusal (see e2e_refusals): the
    // sandbox drops the forwarder's SYNs, so the upstream "did not answer";
    // and no byte of the upstream.
    let out = bash_in(
        &host,
        "agent",
        8,
        "exec 3<>/dev/tcp/10.231.0.1/30000; timeout 5 cat <&3 | tr -c '[:print:]' ' '",
    );
    let got = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        got.starts_with("SSH-2.0-gatectl") && !got.contains("OpenSSH"),
        "the forwarder reached an address its IPAddressAllow= lacks: {got}"
    );
    assert!(
        got.contains("gatectl gate alice: upstream up (10.99.2.1:22) did not answer"),
        "{got}"
    );
    let journal = journal_when(&host, "gate-alice.service", |j| j.contains("connect failed"));
    assert!(
        journal.contains("-> none connect failed (upstream 10.99.2.1:22"),
        "{journal}"
    );
    // What an attacker would need: with the deny reset as well, the same
    // unit reaches the upstream. So the deny, not the restart, stopped it.
    set_forwarder_properties(&host, &["IPAddressDeny="]);
    assert!(banner_via_gate(&host).starts_with("got:SSH-2.0-OpenSSH"));
    // Put gatectl's sandbox back and ssh works as before.
    set_forwarder_properties(&host, &["IPAddressDeny=any", "IPAddressAllow=10.99.2.1/32"]);
    assert_eq!(ip_sandbox(&host, "gate-alice.service"), service_sandbox);
    assert!(
        ssh_via_gate(&host, &sshd, "alice", Some("agent"), "echo sandbox-restored")
            .unwrap()
            .contains("sandbox-restored")
    );

    // nft flush ruleset, then reconcile: the gate works and is still restricted.
    host.run_ok(&["nft", "flush", "ruleset"]);
    let out = gatectl_ok(&host, &["reconcile"]);
    assert!(out.contains("1 running gate(s): alice"), "{out}");
    assert!(
        ssh_via_gate(&host, &sshd, "alice", Some("agent"), "echo after-reconcile")
            .unwrap()
            .contains("after-reconcile")
    );
    dropped_after_flush(&host);

    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
}

/// After a flush and a reconcile, gate alice still reaches only its
/// upstream, and the host still forwards nothing else.
fn dropped_after_flush(host: &TestHost) {
    assert_eq!(
        connect(host, Some("gate-alice"), "10.99.2.1", 8080),
        Err("timed out".to_string()),
        "decoy after reconcile"
    );
    let refused = connect(host, Some("upstream"), "10.99.4.1", 7070).unwrap_err();
    assert!(
        refused.contains("unreachable"),
        "forwarding after reconcile: {refused}"
    );
}

#[test]
fn two_gates_are_isolated_from_each_other() {
    if !require_root() {
        return;
    }
    let (host, _sshd) = setup("e2e-two-gates");
    host.add_netns_with_link("upstream2", "up2", "10.99.3.0/31", "10.99.3.1/31");
    serve_echo(&host, Some("upstream2"), "10.99.3.1", 2222);
    host.write_file("/etc/gatectl/bottles/alice.toml", ALICE, 0o644);
    host.write_file(
        "/etc/gatectl/bottles/bob.toml",
        b"[[ssh]]\nHost = \"b\"\nHostname = \"10.99.3.1\"\nPort = 2222\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);
    gatectl_ok(&host, &["start", "bob"]);
    assert_eq!(
        allowlist(&host),
        "\"gte0\" . 10.99.2.1 . 22\n\"gte1\" . 10.99.3.1 . 2222\n"
    );

    // Each gate reaches its own upstream, and the other's is dropped.
    assert_eq!(connect(&host, Some("gate-alice"), "10.99.2.1", 22), Ok(()));
    assert_eq!(connect(&host, Some("gate-bob"), "10.99.3.1", 2222), Ok(()));
    assert_eq!(
        connect(&host, Some("gate-alice"), "10.99.3.1", 2222),
        Err("timed out".to_string()),
        "alice -> bob's upstream"
    );
    assert_eq!(
        connect(&host, Some("gate-bob"), "10.99.2.1", 22),
        Err("timed out".to_string()),
        "bob -> alice's upstream"
    );

    // A session through bob (its agent end is in the host namespace) stays
    // up while alice stops: one round trip before, one after.
    let mut held = host
        .command(&[
            "timeout",
            "60",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.231.0.3/30000
             echo before-stop >&3; read -t 10 line <&3; echo \"1:$line\"
             read -t 50 go
             echo after-stop >&3; read -t 10 line <&3; echo \"2:$line\"",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = held.stdin.take().unwrap();
    let mut lines = BufReader::new(held.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the held session prints a line").unwrap();
    assert_eq!(first, "1:before-stop", "the echo through bob");
    gatectl_ok(&host, &["stop", "alice"]);
    writeln!(stdin, "go").unwrap();
    drop(stdin);
    let second = lines
        .next()
        .expect("the held session prints a second line")
        .unwrap();
    assert_eq!(second, "2:after-stop", "the same session after alice stopped");
    let status = held.wait().unwrap();
    assert!(status.success(), "the held session: {status}");

    assert_eq!(allowlist(&host), "\"gte1\" . 10.99.3.1 . 2222\n");
    assert_eq!(connect(&host, Some("gate-bob"), "10.99.3.1", 2222), Ok(()));
    let status = gatectl(&host, &["status", "alice"]);
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));

    gatectl_ok(&host, &["stop", "bob"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
    assert_eq!(leftovers(&host, "bob"), Vec::<String>::new());
    let status = gatectl(&host, &["status", "bob"]);
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));
}
