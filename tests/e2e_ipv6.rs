//! IPv6 through gates, proven with real connections in throwaway systemd
//! hosts: ssh to an IPv6-only upstream (masqueraded, NAT66), the IPv6 twins
//! of the isolation tests of `e2e_egress` (root in the gate netns, a
//! tampered forwarder, each layer alone, other networks), the host's IPv6
//! forwarding and a SLAAC default route kept and restored, and dual-stack
//! upstreams: IPv6 first, IPv4 within a bounded time when the IPv6 path is
//! blackholed, and IPv4 at once on a host without IPv6; a routed
//! `egress_pool6`; and nftables.service events that let no IPv6 cross.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use std::time::{Duration, Instant};

use common::gatectl::{
    add_host_name, bash_in, connect, detail, gatectl, gatectl_ok, gatectl_rules6, host_table_exists,
    ipv6_forwarding, journal_when, knob, leftovers, not_ok, serve, serve_echo, setup, ssh_via_gate, text,
};
use common::probe::{Outcome, Probe, Tally};
use common::{require_root, TestHost};

/// The IPv6-only upstream (sshd on :22, a decoy on :8080).
const UP6: &str = "fd99:2::2";
/// Another address of the upstream's netns, never declared (a service on :22).
const UP6_OTHER: &str = "fd99:2::3";
/// The host's address on the upstream's link.
const HOST6: &str = "fd99:2::1";
/// The host's end of gate alice's IPv6 egress (index 0 of egress_pool6).
const HOST_END6: &str = "fd23:1:2::";

const ALICE6: &[u8] =
    b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"up\"\nHostname = \"upstream6.test\"\nUser = \"root\"\n";

/// A netns `isp` behind the host's `rt0` (fd99:9::1 ↔ fd99:9::2), whose
/// `eth0` has a usable link-local address at once (no duplicate address
/// detection): the host's router, and a network other than the gates'.
fn add_isp(host: &TestHost) {
    host.add_netns("isp");
    host.run_ok(&[
        "ip",
        "netns",
        "exec",
        "isp",
        "sysctl",
        "-q",
        "-w",
        "net.ipv6.conf.default.accept_dad=0",
    ]);
    host.run_ok(&[
        "ip", "link", "add", "rt0", "type", "veth", "peer", "name", "eth0", "netns", "isp",
    ]);
    host.run_ok(&["ip", "link", "set", "rt0", "up"]);
    host.run_ok(&["ip", "-n", "isp", "link", "set", "eth0", "up"]);
    host.add_ipv6_to_link("isp", "rt0", "fd99:9::1/64", "fd99:9::2/64");
}

/// Has `isp` send Router Advertisements (router lifetime 1800 s) to the
/// host until the host's `rt0` holds a default route learned from one, as
/// on a host that configures itself by SLAAC. Returns that route.
fn advertise_router(host: &TestHost) -> String {
    let script = "import socket, struct\n\
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)\n\
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)\n\
        i = socket.if_nametoindex('eth0')\n\
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, i)\n\
        s.sendto(struct.pack('!BBHBBHII', 134, 0, 0, 64, 0, 1800, 0, 0), ('ff02::1', 0, 0, i))\n";
    for _ in 0..50 {
        host.run_ok(&["ip", "netns", "exec", "isp", "python3", "-c", script]);
        let route = slaac_route(host);
        if !route.is_empty() {
            return route;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the host learned no default route from the router advertisements");
}

/// The host's default route learned by SLAAC on `rt0` (empty: none).
fn slaac_route(host: &TestHost) -> String {
    host.run_ok(&[
        "ip", "-6", "route", "show", "default", "dev", "rt0", "proto", "ra",
    ])
    .trim()
    .to_string()
}

/// `net.ipv6.conf.<link>.accept_ra` on the host.
fn accept_ra(host: &TestHost, link: &str) -> String {
    host.run_ok(&["sysctl", "-n", &format!("net.ipv6.conf.{link}.accept_ra")])
        .trim()
        .to_string()
}

/// What the agent reads through gate alice's listen port within 5 s, and
/// how long that took.
fn read_via_gate(host: &TestHost) -> (String, Duration) {
    let started = Instant::now();
    let out = bash_in(
        host,
        "agent",
        12,
        "exec 3<>/dev/tcp/10.231.0.1/30000; read -t 11 line <&3; echo \"got:$line\"",
    );
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        started.elapsed(),
    )
}

/// Changes properties of `gate-alice.service` over D-Bus, then stops the
/// forwarder: the next connection starts it with the changed properties
/// (and reads its routes file again).
fn set_forwarder_properties(host: &TestHost, assignments: &[&str]) {
    let mut argv = vec!["systemctl", "set-property", "--runtime", "gate-alice.service"];
    argv.extend_from_slice(assignments);
    host.run_ok(&argv);
    host.run_ok(&["systemctl", "stop", "gate-alice.service"]);
}

/// Points the forwarder of gate alice at `upstream` by rewriting its routes
/// file, as a compromised forwarder could choose any address.
fn tamper_routes(host: &TestHost, upstream: &str) {
    let routes = format!(
        "{{\"generation\": 99, \"routes\": [{{\"listen_port\": 30000, \"alias\": \"up\", \"upstreams\": [\"{upstream}\"]}}]}}\n"
    );
    host.write_file("/run/gatectl/forward/alice/routes.json", routes.as_bytes(), 0o644);
    host.run_ok(&["systemctl", "stop", "gate-alice.service"]);
}

#[test]
fn an_ipv6_only_upstream_is_reached_through_the_gate_and_nothing_else() {
    if !require_root() {
        return;
    }
    let (host, _sshd4) = setup("e2e-ipv6");
    host.add_netns_with_link6("upstream6", "up6", "fd99:2::1/64", "fd99:2::2/64");
    host.run_ok(&[
        "ip",
        "-n",
        "upstream6",
        "-6",
        "addr",
        "add",
        "fd99:2::3/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let sshd = host.start_sshd("upstream6", UP6, 22);
    sshd.write_known_hosts(&host, "/root/agent/known_hosts", &["upstream6.test"]);
    add_host_name(&host, UP6, "upstream6.test");
    serve(&host, Some("upstream6"), UP6, 8080, "decoy");
    serve(&host, Some("upstream6"), UP6_OTHER, 22, "undeclared-address");
    serve(&host, None, "::", 9999, "host-service");
    add_isp(&host);
    serve(&host, Some("isp"), "fd99:9::2", 7070, "isp");
    // Positive control: with IPv6 forwarding on and no gatectl, the host
    // routes between the upstream's network and the isp's.
    host.run_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    assert_eq!(connect(&host, Some("isp"), UP6, 8080), Ok(()));
    assert_eq!(connect(&host, Some("upstream6"), "fd99:9::2", 7070), Ok(()));
    host.run_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=0"]);
    // The host learns its IPv6 default route by SLAAC, with accept_ra=1.
    let slaac = advertise_router(&host);
    assert_eq!(accept_ra(&host, "rt0"), "1");
    // The upstream has no route back to the gates' egress pool: only NAT66
    // lets replies come back.
    host.run_ok(&["ip", "-n", "upstream6", "-6", "route", "del", "default"]);
    host.write_file("/etc/gatectl/gatectl.toml", b"connect_timeout_secs = 2\n", 0o644);
    host.write_file("/etc/gatectl/bottles/alice.toml", ALICE6, 0o644);
    gatectl_ok(&host, &["start", "alice"]);

    // ssh from the agent netns (IPv4 to the gate) to the IPv6-only upstream.
    let out = ssh_via_gate(&host, &sshd, "alice", Some("agent"), "echo through-the-gate-v6").unwrap();
    assert!(out.contains("through-the-gate-v6"), "{out}");
    let journal = journal_when(&host, "gate-alice.service", |j| j.contains("-> [fd99:2::2]:22"));
    assert!(journal.contains("-> [fd99:2::2]:22 closed"), "{journal}");
    // It came masqueraded, from the host's address on that link.
    let log = sshd.log_text(&host);
    assert!(log.contains(&format!("Connection from {HOST6} port")), "{log}");

    // The host forwards IPv6 now (gatectl turned it on), keeps the SLAAC
    // default route (accept_ra=2 while it forwards), and confines
    // forwarding to the gates with its IPv6 routing rules.
    assert_eq!(ipv6_forwarding(&host), "1");
    assert!(!slaac_route(&host).is_empty(), "the SLAAC default route went");
    assert_eq!(accept_ra(&host, "rt0"), "2");
    let rules6 = host.run_ok(&["ip", "-6", "rule", "show"]);
    assert_eq!(
        rules6.lines().filter(|l| l.contains("proto 231")).count(),
        5,
        "{rules6}"
    );
    let refused = connect(&host, Some("isp"), UP6, 8080).unwrap_err();
    assert!(refused.contains("unreachable"), "isp -> upstream6: {refused}");
    // gatectl check says so.
    let report = gatectl_ok(&host, &["check"]);
    assert!(
        detail(&report, "ipv6_forward").starts_with("on, turned on by gatectl, confined"),
        "{report}"
    );
    let slaac_line = report
        .lines()
        .find(|l| l.contains(" accept_ra "))
        .unwrap_or_default();
    assert!(slaac_line.starts_with("ok "), "{report}");
    // Everything else holds too: the gate's tables with their IPv6 pairs,
    // the forwarder's sandbox, the host table.
    assert_eq!(not_ok(&report), Vec::<&str>::new(), "{report}");

    // The gate netns: IPv6 on ext0 only, its static address and its
    // link-local one, no router advertisements accepted.
    let addrs = host.run_ok(&["ip", "-n", "gate-alice", "-6", "-o", "addr", "show"]);
    let scopes: Vec<&str> = addrs
        .lines()
        .map(|l| l.split_whitespace().nth(3).unwrap_or(""))
        .collect();
    assert_eq!(scopes.len(), 2, "{addrs}");
    assert!(addrs.contains("ext0    inet6 fd23:1:2::1/127"), "{addrs}");
    assert!(addrs.lines().all(|l| l.contains(" ext0 ")), "{addrs}");
    for setting in ["accept_ra", "autoconf", "forwarding"] {
        let value = host.run_ok(&[
            "ip",
            "netns",
            "exec",
            "gate-alice",
            "sysctl",
            "-n",
            &format!("net.ipv6.conf.ext0.{setting}"),
        ]);
        assert_eq!(value.trim(), "0", "{setting} in the gate netns");
    }

    // From inside the gate netns, as root: the declared pair answers,
    // everything else over IPv6 is dropped.
    let gate = Some("gate-alice");
    let link_local = host.run_ok(&["ip", "-6", "-o", "addr", "show", "dev", "gte0", "scope", "link"]);
    let link_local = link_local
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .expect("gte0 has a link-local address")
        .to_string();
    let host_link_local = format!("{link_local}%ext0");
    let undeclared = [
        (UP6, 8080, "an undeclared port of the upstream"),
        (UP6_OTHER, 22, "an undeclared address"),
        (HOST6, 9999, "a host service on another address"),
        (HOST_END6, 9999, "a host service via the egress link"),
        (
            host_link_local.as_str(),
            9999,
            "a host service at its link-local address",
        ),
        ("fd99:9::2", 7070, "another network"),
    ];
    let all_dropped = |layer: &str| {
        for (address, port, what) in undeclared {
            assert_eq!(
                connect(&host, gate, address, port),
                Err("timed out".to_string()),
                "{what}, {layer}"
            );
        }
    };
    assert_eq!(connect(&host, gate, UP6, 22), Ok(()), "the declared upstream");
    all_dropped("both tables");
    // Each layer alone: without the gate netns's table, the host's.
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
    all_dropped("host table only");
    let forward = host.run_ok(&["nft", "list", "chain", "inet", "gatectl", "forward"]);
    assert!(!forward.contains("iifgroup 232 counter packets 0 "), "{forward}");
    gatectl_ok(&host, &["reconcile"]);
    assert_eq!(connect(&host, gate, UP6, 22), Ok(()), "after reconcile");
    // ...and without the host's table, the gate netns's.
    host.run_ok(&["nft", "delete", "table", "inet", "gatectl"]);
    all_dropped("gate netns table only");
    gatectl_ok(&host, &["reconcile"]);

    // The forwarder's sandbox allows the IPv6 upstream, and stops it once
    // tampered with.
    let allow = host.run_ok(&["systemctl", "show", "-p", "IPAddressAllow", "gate-alice.service"]);
    assert!(allow.contains("fd99:2::2/128"), "{allow}");
    set_forwarder_properties(&host, &["IPAddressAllow=", "IPAddressAllow=10.231.0.0/31"]);
    // The gate tells the agent it could not connect (SSH disconnect) instead
    // of the upstream's banner.
    let (got, _) = read_via_gate(&host);
    assert_eq!(
        got, "got:SSH-2.0-gatectl",
        "reached an address IPAddressAllow= lacks: {got}"
    );
    let journal = journal_when(&host, "gate-alice.service", |j| {
        j.contains("connect failed (upstream [fd99:2::2]:22")
    });
    assert!(
        journal.contains("connect failed (upstream [fd99:2::2]:22"),
        "{journal}"
    );
    // With the deny gone too, it gets through: the deny stopped it.
    set_forwarder_properties(&host, &["IPAddressDeny="]);
    assert!(read_via_gate(&host).0.starts_with("got:SSH-2.0-OpenSSH"));
    // A forwarder without its sandbox that connects elsewhere is stopped
    // by the tables: an undeclared address, an undeclared port.
    for target in [format!("[{UP6_OTHER}]:22"), format!("[{UP6}]:8080")] {
        tamper_routes(&host, &target);
        let (got, _) = read_via_gate(&host);
        assert!(
            !got.contains("OpenSSH"),
            "a tampered forwarder reached {target}: {got}"
        );
    }
    tamper_routes(&host, &format!("[{UP6}]:22"));
    assert!(read_via_gate(&host).0.starts_with("got:SSH-2.0-OpenSSH"));

    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
    // IPv6 forwarding is off again, rt0 accepts RAs as a host again, and
    // the SLAAC default route is still there.
    assert_eq!(accept_ra(&host, "rt0"), "1");
    let after = slaac_route(&host);
    assert_eq!(
        after.split(" expires").next(),
        slaac.split(" expires").next(),
        "the SLAAC default route"
    );
}

#[test]
fn dual_stack_upstreams_prefer_ipv6_and_fall_back_to_ipv4() {
    if !require_root() {
        return;
    }
    let (host, _sshd) = setup("e2e-ipv6-dual");
    host.add_ipv6_to_link("upstream", "up0", "fd99:2::1/64", "fd99:2::2/64");
    serve(&host, Some("upstream"), "10.99.2.1", 2200, "via-ipv4");
    serve(&host, Some("upstream"), UP6, 2200, "via-ipv6");
    add_host_name(&host, "10.99.2.1", "dual.test");
    add_host_name(&host, UP6, "dual.test");
    add_host_name(&host, UP6, "six.test");
    let six = b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"six\"\nHostname = \"six.test\"\nPort = 2200\n";
    let dual = b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"dual\"\nHostname = \"dual.test\"\nPort = 2200\n";
    host.write_file("/etc/gatectl/bottles/six.toml", six, 0o644);
    host.write_file("/etc/gatectl/bottles/alice.toml", dual, 0o644);

    // A host without an IPv6 default route: the IPv6-only upstream is
    // refused, naming it; the dual-stack one is reached over IPv4 at once,
    // and the host's IPv6 is left alone.
    let refused = gatectl(&host, &["start", "six"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains(
            "ssh entry 1 (six): upstream six.test has IPv6 addresses only, but this host has no IPv6 \
             default route"
        ),
        "{}",
        text(&refused)
    );
    assert_eq!(leftovers(&host, "six"), Vec::<String>::new());
    gatectl_ok(&host, &["start", "alice"]);
    let status: serde_json::Value =
        serde_json::from_str(&gatectl_ok(&host, &["status", "alice", "--json"])).unwrap();
    assert_eq!(status["plan"]["egress6"], serde_json::Value::Null, "{status}");
    let (got, took) = read_via_gate(&host);
    assert_eq!(got, "got:via-ipv4");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let allow = host.run_ok(&["systemctl", "show", "-p", "IPAddressAllow", "gate-alice.service"]);
    assert!(!allow.contains("fd99"), "{allow}");
    assert_eq!(ipv6_forwarding(&host), "0");
    // No IPv6 at all on either end of an IPv4-only gate's egress link.
    for netns in [None, Some("gate-alice")] {
        let mut argv = vec!["ip"];
        if let Some(ns) = netns {
            argv.extend(["-n", ns]);
        }
        argv.extend(["-6", "-o", "addr", "show"]);
        let addrs = host.run_ok(&argv);
        assert!(
            !addrs.contains(" gte0 ") && !addrs.contains(" ext0 "),
            "{netns:?}: {addrs}"
        );
    }
    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());

    // With an IPv6 default route, a gate started with IPv4 upstreams only
    // has no IPv6; a reload cannot give it an IPv6-only upstream.
    host.run_ok(&["ip", "-6", "route", "add", "default", "via", UP6, "dev", "up0"]);
    let v4 = b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"v4\"\nHostname = \"10.99.2.1\"\nPort = 2200\n";
    host.write_file("/etc/gatectl/bottles/alice.toml", v4, 0o644);
    gatectl_ok(&host, &["start", "alice"]);
    let dual_and_six = [
        &dual[..],
        b"[[ssh]]\nHost = \"six\"\nHostname = \"six.test\"\nPort = 2200\n",
    ]
    .concat();
    host.write_file("/etc/gatectl/bottles/alice.toml", &dual_and_six, 0o644);
    let refused = gatectl(&host, &["reload", "alice"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains(
            "ssh entry 2 (six): upstream six.test has IPv6 addresses only, but gate alice runs without IPv6"
        ) && text(&refused).contains("gatectl stop alice && gatectl start alice"),
        "{}",
        text(&refused)
    );
    gatectl_ok(&host, &["stop", "alice"]);

    // Started with a dual-stack upstream: IPv6, tried first.
    host.write_file("/etc/gatectl/bottles/alice.toml", dual, 0o644);
    gatectl_ok(&host, &["start", "alice"]);
    let status: serde_json::Value =
        serde_json::from_str(&gatectl_ok(&host, &["status", "alice", "--json"])).unwrap();
    let gate6 = status["plan"]["egress6"]["gate"].as_str().unwrap_or_default();
    assert!(gate6.starts_with("fd23:1:2::"), "{status}");
    assert_eq!(read_via_gate(&host).0, "got:via-ipv6");
    let journal = journal_when(&host, "gate-alice.service", |j| j.contains("-> [fd99:2::2]:2200"));
    assert!(journal.contains("-> [fd99:2::2]:2200 closed"), "{journal}");
    // The IPv6 path blackholed: IPv4 after the attempt delay, long before
    // the IPv6 attempt's 10 s timeout; the audit record names IPv4.
    host.run_ok(&["ip", "-6", "route", "add", "blackhole", "fd99:2::2/128"]);
    let (got, took) = read_via_gate(&host);
    assert_eq!(got, "got:via-ipv4");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let journal = journal_when(&host, "gate-alice.service", |j| j.contains("-> 10.99.2.1:2200"));
    assert!(journal.contains("-> 10.99.2.1:2200 closed"), "{journal}");
    host.run_ok(&["ip", "-6", "route", "del", "blackhole", "fd99:2::2/128"]);
    // A reload adds an IPv6-only entry to this gate: both tables and the
    // forwarder's sandbox take its pair, and it answers over IPv6.
    host.write_file("/etc/gatectl/bottles/alice.toml", &dual_and_six, 0o644);
    gatectl_ok(&host, &["reload", "alice"]);
    let out = bash_in(
        &host,
        "agent",
        8,
        "exec 3<>/dev/tcp/10.231.0.1/30001; read -t 5 line <&3; echo \"got:$line\"",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "got:via-ipv6");
    let journal = journal_when(&host, "gate-alice.service", |j| j.contains("six: "));
    assert!(
        journal
            .lines()
            .any(|l| l.starts_with("six: ") && l.contains("-> [fd99:2::2]:2200 closed")),
        "{journal}"
    );
    let report = gatectl_ok(&host, &["check"]);
    assert_eq!(not_ok(&report), Vec::<&str>::new(), "{report}");
    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
}

/// The peers of the connections the upstream's netns holds on `port`.
fn upstream_peers(host: &TestHost, port: u16) -> String {
    host.run_ok(&[
        "ip",
        "netns",
        "exec",
        "upstream",
        "ss",
        "-Htn",
        "state",
        "established",
        &format!("( sport = :{port} )"),
    ])
}

#[test]
fn a_routed_egress_pool6_reaches_upstreams_from_the_gates_own_address() {
    if !require_root() {
        return;
    }
    let (host, _sshd) = setup("e2e-ipv6-routed");
    host.add_ipv6_to_link("upstream", "up0", "fd99:2::1/64", "fd99:2::2/64");
    host.run_ok(&["ip", "-6", "route", "add", "default", "via", UP6, "dev", "up0"]);
    serve_echo(&host, Some("upstream"), UP6, 2200);
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"six\"\nHostname = \"fd99:2::2\"\nPort = 2200\n",
        0o644,
    );
    host.write_file("/etc/gatectl/gatectl.toml", b"nat66 = false\n", 0o644);
    gatectl_ok(&host, &["start", "alice"]);
    let postrouting = host.run_ok(&["nft", "list", "chain", "inet", "gatectl", "postrouting"]);
    assert!(!postrouting.contains("fd23:1:2::/48"), "{postrouting}");
    // The upstream routes the pool back to the host (its default route):
    // it sees the gate's own address, not the host's.
    let mut held = host
        .command(&[
            "ip",
            "netns",
            "exec",
            "agent",
            "timeout",
            "20",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.231.0.1/30000; echo ping >&3; read -t 5 line <&3; echo \"$line\"; sleep 15",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut echoed = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(held.stdout.take().unwrap()),
        &mut echoed,
    )
    .unwrap();
    assert_eq!(echoed.trim(), "ping");
    let peers = upstream_peers(&host, 2200);
    assert!(peers.contains("[fd23:1:2::1]:"), "{peers}");
    held.kill().unwrap();
    held.wait().unwrap();
    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
}

/// Debian's default /etc/nftables.conf: it begins with `flush ruleset`.
const NFTABLES_CONF: &[u8] = b"#!/usr/sbin/nft -f\n\nflush ruleset\n\n\
table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter;\n\t}\n\
\tchain forward {\n\t\ttype filter hook forward priority filter;\n\t}\n\
\tchain output {\n\t\ttype filter hook output priority filter;\n\t}\n}\n";

/// Installs nftables.service as Debian ships it (the harness masks it) with
/// Debian's default /etc/nftables.conf, and gatectl-reconcile.service from
/// this tree, enabled; then starts nftables.service and waits for its jobs.
fn install_nftables_service(host: &TestHost) {
    host.write_file("/etc/nftables.conf", NFTABLES_CONF, 0o755);
    host.run_ok(&["rm", "-f", "/etc/systemd/system/nftables.service"]);
    host.run_ok(&["cp", common::gatectl::GATECTL, "/usr/bin/gatectl"]);
    host.write_file(
        "/etc/systemd/system/gatectl-reconcile.service",
        include_bytes!("../units/gatectl-reconcile.service"),
        0o644,
    );
    host.run_ok(&["systemctl", "daemon-reload"]);
    host.run_ok(&["systemctl", "enable", "--quiet", "gatectl-reconcile.service"]);
    nftables_event(host, "start");
}

/// `systemctl <event> nftables.service`, then waits until systemd has no
/// job queued (gatectl-reconcile.service's included).
fn nftables_event(host: &TestHost, event: &str) {
    host.run_ok(&["systemctl", event, "nftables.service"]);
    for _ in 0..200 {
        if host
            .run_ok(&["systemctl", "list-jobs", "--no-legend"])
            .trim()
            .is_empty()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("systemd jobs still queued after 5 s");
}

#[test]
fn nftables_reload_restart_stop_start_let_no_ipv6_cross() {
    if !require_root() {
        return;
    }
    let (host, _sshd) = setup("e2e-ipv6-nft");
    host.add_ipv6_to_link("upstream", "up0", "fd99:2::1/64", "fd99:2::2/64");
    host.run_ok(&["ip", "-6", "route", "add", "default", "via", UP6, "dev", "up0"]);
    serve(&host, Some("upstream"), UP6, 2200, "declared");
    serve(&host, Some("upstream"), UP6, 8080, "decoy");
    // A third network neta6 -> netb6 behind the host, routed by it when it
    // forwards IPv6 (the positive control).
    host.add_netns_with_link6("neta6", "na6", "fd99:6::1/64", "fd99:6::2/64");
    host.add_netns_with_link6("netb6", "nb6", "fd99:7::1/64", "fd99:7::2/64");
    serve(&host, Some("netb6"), "fd99:7::2", 7070, "netb6");
    host.run_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    assert_eq!(connect(&host, Some("neta6"), "fd99:7::2", 7070), Ok(()));
    host.run_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=0"]);
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"six\"\nHostname = \"fd99:2::2\"\nPort = 2200\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);
    install_nftables_service(&host);
    assert_eq!(read_via_gate(&host).0, "got:declared");

    let third = Probe::start(&host, "third6", "neta6", "fd99:7::2", 7070);
    let gate = Probe::start(&host, "gate6", "gate-alice", UP6, 8080);
    for event in ["reload", "restart", "stop", "start"] {
        nftables_event(&host, event);
        if event == "stop" {
            // No host table now: the IPv6 routing rules still confine
            // forwarding, the gate netns's table still holds the gate.
            let rules6 = host.run_ok(&["ip", "-6", "rule", "show"]);
            assert_eq!(
                rules6.lines().filter(|l| l.contains("proto 231")).count(),
                5,
                "{rules6}"
            );
        } else {
            assert_eq!(read_via_gate(&host).0, "got:declared", "after {event}");
        }
        // Let the probes see the state after the event for a while.
        std::thread::sleep(Duration::from_secs(1));
    }
    let (third, gate) = (Tally::of(&third.stop(&host)), Tally::of(&gate.stop(&host)));
    eprintln!("third network {third}; gate netns -> decoy {gate}");
    assert_eq!(third.crossings(), 0, "third network crossed: {third}");
    assert_eq!(gate.crossings(), 0, "gate netns reached the decoy: {gate}");
    assert!(third.total() >= 10 && gate.total() >= 10, "{third}; {gate}");
    assert_eq!(
        third.count(Outcome::Unreachable) + third.count(Outcome::TimedOut),
        third.total(),
        "{third}"
    );
    assert_eq!(gate.count(Outcome::TimedOut), gate.total(), "{gate}");
    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
}

#[test]
fn two_gates_with_ipv6_upstreams_are_isolated_from_each_other() {
    if !require_root() {
        return;
    }
    let (host, _sshd) = setup("e2e-ipv6-two-gates");
    host.add_ipv6_to_link("upstream", "up0", "fd99:2::1/64", "fd99:2::2/64");
    host.run_ok(&["ip", "-6", "route", "add", "default", "via", UP6, "dev", "up0"]);
    host.add_netns_with_link6("upstream2", "up2", "fd99:3::1/64", "fd99:3::2/64");
    serve(&host, Some("upstream"), UP6, 2200, "alice-upstream");
    serve(&host, Some("upstream2"), "fd99:3::2", 2222, "bob-upstream");
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"a\"\nHostname = \"fd99:2::2\"\nPort = 2200\n",
        0o644,
    );
    host.write_file(
        "/etc/gatectl/bottles/bob.toml",
        b"[[ssh]]\nHost = \"b\"\nHostname = \"fd99:3::2\"\nPort = 2222\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);
    gatectl_ok(&host, &["start", "bob"]);
    let elements = common::gatectl::allowlist(&host);
    assert_eq!(
        elements, "\"gte0\" . fd99:2::2 . 2200\n\"gte1\" . fd99:3::2 . 2222\n",
        "{elements}"
    );
    // Each gate reaches its own IPv6 upstream, and the other's is dropped.
    assert_eq!(connect(&host, Some("gate-alice"), UP6, 2200), Ok(()));
    assert_eq!(connect(&host, Some("gate-bob"), "fd99:3::2", 2222), Ok(()));
    let dropped = |gate: &str, address: &str, port: u16| {
        assert_eq!(
            connect(&host, Some(gate), address, port),
            Err("timed out".to_string()),
            "{gate} -> [{address}]:{port}"
        );
    };
    dropped("gate-alice", "fd99:3::2", 2222);
    dropped("gate-bob", UP6, 2200);
    // Nor can one gate reach the other gate's egress address.
    dropped("gate-alice", "fd23:1:2::3", 22);
    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(connect(&host, Some("gate-bob"), "fd99:3::2", 2222), Ok(()));
    assert_eq!(ipv6_forwarding(&host), "1", "bob still needs IPv6 forwarding");
    gatectl_ok(&host, &["stop", "bob"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
    assert_eq!(leftovers(&host, "bob"), Vec::<String>::new());
}

/// The IPv6 twin of `e2e_failclosed::prune_racing_start_never_leaves_the_host_unconfined`:
/// each round, carol's IPv6 gate goes stale, `prune` removes it (and, with
/// no gate left, would close the host's IPv6 path) while bob's IPv6 gate
/// starts after a random delay. IPv6 forwarding is never on without
/// gatectl's five `ip -6 rule`s and its table, bob always reaches its IPv6
/// upstream, and after bob's stop and a prune the host is as it was.
/// `GATECTL_RACE_ITERATIONS` (default 15) sets the rounds.
#[test]
fn prune_racing_an_ipv6_start_never_leaves_ipv6_forwarding_unconfined() {
    if !require_root() {
        return;
    }
    let (host, _sshd) = setup("e2e-ipv6-race");
    host.add_ipv6_to_link("upstream", "up0", "fd99:2::1/64", "fd99:2::2/64");
    host.run_ok(&["ip", "-6", "route", "add", "default", "via", UP6, "dev", "up0"]);
    serve(&host, Some("upstream"), UP6, 2200, "up6");
    for slug in ["carol", "bob"] {
        host.write_file(
            &format!("/etc/gatectl/bottles/{slug}.toml"),
            format!("[[ssh]]\nHost = \"u\"\nHostname = \"{UP6}\"\nPort = 2200\n").as_bytes(),
            0o644,
        );
    }
    assert_eq!(
        ipv6_forwarding(&host),
        "0",
        "the race needs a host that does not forward IPv6"
    );
    let marker6 = "/run/gatectl/ipv6-forwarding-enabled-by-gatectl";
    let unconfined = |host: &TestHost| {
        ipv6_forwarding(host) == "1" && (gatectl_rules6(host).len() < 5 || !host_table_exists(host))
    };
    let iterations = knob("GATECTL_RACE_ITERATIONS", 15);
    let mut problems = Vec::new();
    for i in 0..iterations {
        gatectl_ok(&host, &["start", "carol"]);
        host.exec(&["systemctl", "stop", "gate-carol.socket", "gate-carol.service"]);
        let delay = Duration::from_millis((i as u64 * 7) % 41);
        let prune = common::gatectl::spawn_gatectl(&host, &["prune"]);
        std::thread::sleep(delay);
        let start = gatectl(&host, &["start", "bob"]);
        let prune = common::finish(prune, "gatectl prune");
        assert!(
            prune.status.success(),
            "round {i}: prune failed: {}",
            text(&prune)
        );
        if unconfined(&host) {
            problems.push(format!(
                "round {i} ({delay:?}): IPv6 forwarding on with rules {:?}, table {}",
                gatectl_rules6(&host),
                host_table_exists(&host)
            ));
        }
        if !start.status.success() {
            problems.push(format!(
                "round {i} ({delay:?}): bob's start failed: {}",
                text(&start)
            ));
        } else if let Err(e) = connect(&host, Some("gate-bob"), UP6, 2200) {
            problems.push(format!(
                "round {i} ({delay:?}): bob cannot reach its IPv6 upstream: {e}"
            ));
        }
        gatectl_ok(&host, &["stop", "bob"]);
        gatectl_ok(&host, &["prune"]);
        let marker_left = host.exec(&["test", "-e", marker6]).status.success();
        if ipv6_forwarding(&host) != "0" || !gatectl_rules6(&host).is_empty() || marker_left {
            problems.push(format!(
                "round {i}: after stop and prune: forwarding {}, rules {:?}, marker {marker_left}",
                ipv6_forwarding(&host),
                gatectl_rules6(&host)
            ));
        }
    }
    assert_eq!(problems, Vec::<String>::new());
}
