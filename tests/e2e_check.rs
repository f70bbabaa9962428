//! `gatectl check` in a throwaway systemd host: all ok on a fresh host and
//! with a gate running, each fault it knows named with its fix (exit 1),
//! and nothing on the host changed by checking.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use common::gatectl::{
    detail, gatectl, gatectl_ok, gatectl_rules, host_state, install_unit, not_ok, setup, text, GATECTL,
};
use common::require_root;

/// Every subject a report covers, in its order.
const SUBJECTS: [&str; 14] = [
    "settings",
    "forwarder",
    "systemd",
    "gates",
    "gatectl@",
    "sandbox",
    "nftables",
    "ip_forward",
    "ipv6_forward",
    "accept_ra",
    "gate tables",
    "internal_pool",
    "egress_pool",
    "egress_pool6",
];

#[test]
fn check_reports_the_host_and_names_each_fault_with_its_fix() {
    if !require_root() {
        return;
    }
    let (host, _sshd) = setup("e2e-check");

    // A fresh host: every check passes, and checking changes nothing.
    let before = host_state(&host);
    let report = gatectl_ok(&host, &["check"]);
    assert_eq!(not_ok(&report), Vec::<&str>::new(), "{report}");
    for subject in SUBJECTS {
        detail(&report, subject);
    }
    assert!(report.contains("0 running"), "{report}");
    assert_eq!(host_state(&host), before, "check changed the host");

    // A running gate: forwarding is gatectl's, confined to gate traffic.
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);
    let before = host_state(&host);
    let report = gatectl_ok(&host, &["check"]);
    assert_eq!(not_ok(&report), Vec::<&str>::new(), "{report}");
    assert_eq!(detail(&report, "gates"), "1 running", "{report}");
    assert!(
        detail(&report, "ip_forward").starts_with("on, turned on by gatectl"),
        "{report}"
    );
    assert_eq!(host_state(&host), before, "check changed the host");

    // The firewall table is deleted (so the gate's traffic is dropped, and
    // only gatectl's routing rules still confine forwarding) and a foreign
    // route takes part of the egress pool: each is named with its fix, and
    // check exits 1.
    host.run_ok(&["nft", "delete", "table", "inet", "gatectl"]);
    host.run_ok(&["ip", "route", "add", "10.232.7.0/24", "dev", "lo"]);
    let before = host_state(&host);
    let out = gatectl(&host, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    let failed = not_ok(&report);
    assert_eq!(failed.len(), 3, "{report}");
    assert!(
        failed[0].starts_with("FAIL  nftables") && failed[0].contains("run `gatectl reconcile`"),
        "{report}"
    );
    assert!(
        failed[1].starts_with("warn  ip_forward")
            && failed[1].contains("its routing rules confine forwarding to gate traffic")
            && failed[1].contains("run `gatectl reconcile`"),
        "{report}"
    );
    assert!(
        failed[2].starts_with("FAIL  egress_pool") && failed[2].contains("10.232.7.0/24"),
        "{report}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 check(s) failed"),
        "{}",
        text(&out)
    );
    assert_eq!(host_state(&host), before, "check changed the host");

    // Its routing rules go as well: now nothing confines forwarding.
    assert_eq!(gatectl_rules(&host).len(), 5);
    for pref in ["1300", "1301", "1302", "1303", "1304"] {
        host.run_ok(&["ip", "rule", "del", "pref", pref]);
    }
    let out = gatectl(&host, &["check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        detail(&report, "ip_forward"),
        "on, turned on by gatectl, but neither its routing rules nor its rules in table inet \
         gatectl are in place, so the host forwards any traffic; run `gatectl reconcile`",
        "{report}"
    );

    // The fixes it names clear the failures.
    gatectl_ok(&host, &["reconcile"]);
    assert_eq!(gatectl_rules(&host).len(), 5, "reconcile restores the rules");
    host.run_ok(&["ip", "route", "del", "10.232.7.0/24", "dev", "lo"]);
    let report = gatectl_ok(&host, &["check"]);
    assert_eq!(not_ok(&report), Vec::<&str>::new(), "{report}");

    // The forward chain is flushed: the gate's allowlist and the drop of
    // other forwarding are gone, though the table and its sets remain.
    host.run_ok(&["nft", "flush", "chain", "inet", "gatectl", "forward"]);
    let out = gatectl(&host, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        detail(&report, "nftables")
            .starts_with("table inet gatectl lacks gatectl's rules in chain(s) forward (0 of ")
            && detail(&report, "nftables").ends_with("run `gatectl reconcile`"),
        "{report}"
    );
    assert!(
        detail(&report, "ip_forward").contains("the final drop of table inet gatectl is missing"),
        "{report}"
    );
    gatectl_ok(&host, &["reconcile"]);
    let report = gatectl_ok(&host, &["check"]);
    assert_eq!(not_ok(&report), Vec::<&str>::new(), "{report}");

    // The gate netns's own allowlist table is deleted, then changed.
    let gate_nft = |args: &[&str]| {
        let mut argv = vec!["ip", "netns", "exec", "gate-alice", "nft"];
        argv.extend_from_slice(args);
        host.run_ok(&argv)
    };
    gate_nft(&["delete", "table", "inet", "gatectl"]);
    let out = gatectl(&host, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        detail(&report, "gate tables"),
        "the allowlist table inet gatectl of gate-alice (missing) is not as gatectl set it; \
         run `gatectl reconcile`",
        "{report}"
    );
    gatectl_ok(&host, &["reconcile"]);
    gate_nft(&["flush", "chain", "inet", "gatectl", "output"]);
    let report = String::from_utf8_lossy(&gatectl(&host, &["check"]).stdout).into_owned();
    assert!(
        detail(&report, "gate tables").contains("gate-alice (changed)"),
        "{report}"
    );
    // The agent (its end in the host) tries a gate port that is no
    // listener: reconcile records that before it applies the table anew,
    // which zeroes its counters.
    let gate = gatectl_ok(&host, &["ssh-config", "alice"])
        .lines()
        .find_map(|l| l.trim().strip_prefix("HostName ").map(str::to_string))
        .expect("a HostName in the ssh config");
    for _ in 0..3 {
        let out = host.exec(&[
            "timeout",
            "2",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{gate}/31000"),
        ]);
        assert!(!out.status.success(), "port 31000 answered: {}", text(&out));
    }
    gatectl_ok(&host, &["reconcile"]);
    let log: serde_json::Value =
        serde_json::from_str(&gatectl_ok(&host, &["log", "alice", "--json"])).unwrap();
    let denied: Vec<&serde_json::Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1, "{log:#}");
    assert!(denied[0]["denied_agent"].as_u64().unwrap() >= 3, "{log:#}");
    assert_eq!(
        denied[0]["denied_agent_ports"],
        serde_json::json!([31000]),
        "{log:#}"
    );
    let report = gatectl_ok(&host, &["check"]);
    assert_eq!(not_ok(&report), Vec::<&str>::new(), "{report}");

    // JSON: one object per check, with its verdict.
    let json = gatectl_ok(&host, &["check", "--json"]);
    assert!(
        json.starts_with("{\n  \"schema\": \"gatectl.check/1\",\n  \"findings\": [\n"),
        "{json}"
    );
    assert_eq!(
        json.matches("\"verdict\": \"ok\"").count(),
        SUBJECTS.len(),
        "{json}"
    );

    // A forwarder binary that is not there fails before any gate would.
    host.write_file(
        "/etc/gatectl/gatectl.toml",
        b"forwarder_binary = \"/usr/local/bin/no-such-gatectl\"\n",
        0o644,
    );
    let out = gatectl(&host, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        not_ok(&report)
            .iter()
            .any(|l| l.starts_with("FAIL  forwarder") && l.contains("set forwarder_binary")),
        "{report}"
    );
    host.run_ok(&["rm", "/etc/gatectl/gatectl.toml"]);

    // gatectl@ units out of step with their gates: one enabled that never
    // ran, one failed (no manifest), one active over a gate stopped behind
    // its back. Each is named with its fix.
    install_unit(&host, "units/gatectl@.service");
    host.run_ok(&["systemctl", "daemon-reload"]);
    host.run_ok(&[
        "systemctl",
        "enable",
        "gatectl@alice.service",
        "gatectl@nobody.service",
    ]);
    let report = String::from_utf8_lossy(&gatectl(&host, &["check"]).stdout).into_owned();
    assert_eq!(
        detail(&report, "gatectl@"),
        "gatectl@nobody.service enabled, but neither it nor its gate runs: run `systemctl start \
         gatectl@nobody.service`",
        "{report}"
    );
    assert!(
        !host
            .exec(&["systemctl", "start", "gatectl@nobody.service"])
            .status
            .success(),
        "nobody has no manifest"
    );
    let report = String::from_utf8_lossy(&gatectl(&host, &["check"]).stdout).into_owned();
    assert_eq!(
        detail(&report, "gatectl@"),
        "gatectl@nobody.service failed: see `journalctl -u gatectl@nobody.service`, fix the cause, then \
         `systemctl restart` it",
        "{report}"
    );
    host.run_ok(&["systemctl", "disable", "gatectl@nobody.service"]);
    host.run_ok(&["systemctl", "reset-failed", "gatectl@nobody.service"]);
    // alice's gate runs by hand: her enabled unit, not started, is fine.
    let report = gatectl_ok(&host, &["check"]);
    assert!(
        detail(&report, "gatectl@").ends_with("each in step with its gate"),
        "{report}"
    );
    host.run_ok(&["systemctl", "start", "gatectl@alice.service"]);
    // (The forwarder service may never have run, and then systemd may have
    // unloaded it: stopping the socket unit is what takes the gate down.)
    host.run_ok(&["systemctl", "stop", "gate-alice.socket"]);
    host.exec(&["systemctl", "stop", "gate-alice.service"]);
    let report = String::from_utf8_lossy(&gatectl(&host, &["check"]).stdout).into_owned();
    assert_eq!(
        detail(&report, "gatectl@"),
        "gatectl@alice.service active, but its gate is not running: run `systemctl restart \
         gatectl@alice.service`",
        "{report}"
    );
    host.run_ok(&["systemctl", "restart", "gatectl@alice.service"]);
    let report = gatectl_ok(&host, &["check"]);
    assert_eq!(not_ok(&report), Vec::<&str>::new(), "{report}");

    // Output into a pipe whose reader is gone (`gatectl status | head`)
    // ends the command quietly, as SIGPIPE ends `cat`: no panic, no message.
    for command in ["status", "list", "check"] {
        let script = format!(
            "import os, subprocess\n\
             r, w = os.pipe()\n\
             os.close(r)\n\
             p = subprocess.run(['{GATECTL}', '{command}'], stdout=w, stderr=subprocess.PIPE)\n\
             print(p.returncode, repr(p.stderr.decode()))\n"
        );
        let out = host.run_ok(&["python3", "-c", &script]);
        assert_eq!(out, "-13 ''\n", "gatectl {command} into a closed pipe: {out}");
    }
    gatectl_ok(&host, &["stop", "alice"]);
}
