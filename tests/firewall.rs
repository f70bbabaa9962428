//! Privileged tests of gatectl's nftables table (`gatectl::net::firewall`).
//!
//! Each test re-executes its own test binary under `unshare --net`, so its body runs
//! in a private network namespace with an empty ruleset: the real host's firewall is
//! never touched, and everything the test created vanishes with the namespace.
//!
//! Needs root, and `nft` for the tests' own inspection; skipped otherwise (fails
//! under `CI`).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use gatectl::net::firewall::{Firewall, GateRules, ALLOW4_SET, ALLOW6_SET, TABLE};
use gatectl::Error;
use serde_json::Value;

/// Set in the re-executed test binary running inside the private netns.
const IN_NETNS: &str = "GATECTL_IN_PRIVATE_NETNS";
/// The network namespace the test was started from (`dev:inode`), which the
/// re-executed body must not be in.
const PARENT_NETNS: &str = "GATECTL_TEST_PARENT_NETNS";

/// A table of another tool, which gatectl must leave exactly as it is.
const OTHER_TABLE: &str = r#"
table inet other {
    set keep {
        type ifname . ipv4_addr . inet_service
        elements = { "gte1" . 192.0.2.10 . 22 }
    }
    chain forward {
        type filter hook forward priority 10; policy accept;
        iifname "gte*" counter accept
    }
}
"#;

/// True when the test body should run: this process is inside the private netns.
/// Otherwise runs test `name` there (or skips it) and returns false.
fn in_private_netns(name: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        assert_private_netns();
        return true;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("CI").is_some() {
            panic!("privileged test cannot run: not root; CI requires it");
        }
        eprintln!("skipping privileged test {name}: not root (run the tests as root to include it)");
        return false;
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .env(PARENT_NETNS, own_netns())
        .output()
        .expect("run the test under `unshare --net` (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} failed in its private netns: {}\n{stdout}{stderr}",
        out.status
    );
    // A test renamed without its literal here would run nothing, and pass.
    assert!(
        stdout.contains("test result: ok. 1 passed;"),
        "the re-executed binary did not run {name} exactly once:\n{stdout}{stderr}"
    );
    false
}

/// This process's network namespace as `dev:inode`.
fn own_netns() -> String {
    let ns = std::fs::metadata("/proc/self/ns/net").expect("stat own netns");
    format!("{}:{}", ns.dev(), ns.ino())
}

/// Refuses to run a body that would touch the real host's firewall.
fn assert_private_netns() {
    let parent = std::env::var(PARENT_NETNS).unwrap_or_default();
    assert!(
        !parent.is_empty() && parent != own_netns(),
        "{IN_NETNS} is set but this process is not in a private netns of the test's own; \
         refusing to touch the host firewall"
    );
    assert!(
        nft(&["list", "tables"]).trim().is_empty(),
        "the private netns should start with an empty ruleset"
    );
}

/// Runs nft; panics with its stderr when it fails.
fn nft(args: &[&str]) -> String {
    nft_with_input(args, None)
}

fn nft_with_input(args: &[&str], input: Option<&str>) -> String {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft (package nftables)");
    let mut stdin = child.stdin.take().expect("nft stdin");
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).expect("feed nft");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("nft output is UTF-8")
}

fn nft_json(args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&nft(&full)).expect("nft -j prints JSON")
}

/// The elements of one of gatectl's sets as (ifname, address, port).
fn elements(set: &str) -> BTreeSet<(String, String, u64)> {
    let listing = nft_json(&["list", "table", "inet", TABLE]);
    let set = listing["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o.get("set"))
        .find(|s| s["name"] == set)
        .unwrap_or_else(|| panic!("set {set} missing from table inet {TABLE}"));
    set.get("elem")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let c = &e["concat"];
            (
                c[0].as_str().expect("ifname").to_string(),
                c[1].as_str().expect("address").to_string(),
                c[2].as_u64().expect("port"),
            )
        })
        .collect()
}

fn triples(list: &[(&str, &str, u64)]) -> BTreeSet<(String, String, u64)> {
    list.iter()
        .map(|(i, a, p)| (i.to_string(), a.to_string(), *p))
        .collect()
}

/// The statement lists of the rules of one of gatectl's chains.
fn chain_rules(chain: &str) -> Vec<Value> {
    nft_json(&["list", "chain", "inet", TABLE, chain])["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o.get("rule"))
        .map(|r| r["expr"].clone())
        .collect()
}

fn gate(egress_if: &str, allowed: &[&str]) -> GateRules {
    GateRules {
        egress_if: egress_if.to_string(),
        allowed: allowed
            .iter()
            .map(|a| a.parse::<SocketAddr>().expect("socket address"))
            .collect(),
    }
}

fn firewall(block_other_forwarding: bool) -> Firewall {
    Firewall {
        egress_pool: "10.232.0.0/16".parse().expect("pool"),
        masquerade6: Some("fd23:1:2::/48".parse().expect("pool6")),
        block_other_forwarding,
        block_other_forwarding6: block_other_forwarding,
    }
}

#[test]
fn two_gates_come_and_go_and_other_tables_stay_untouched() {
    if !in_private_netns("two_gates_come_and_go_and_other_tables_stay_untouched") {
        return;
    }
    nft_with_input(&["-f", "-"], Some(OTHER_TABLE));
    let other = || nft(&["list", "table", "inet", "other"]);
    let other_before = other();
    let fw = firewall(false);

    // No table yet: nothing to list, nothing to remove.
    assert!(fw.survey().expect("list without table").interfaces.is_empty());
    fw.remove_gate("gte1").expect("remove without table");
    assert!(!nft(&["list", "tables"]).contains(TABLE));

    // ensure_base is idempotent.
    fw.ensure_base().expect("first ensure_base");
    let first = nft(&["list", "ruleset"]);
    fw.ensure_base().expect("second ensure_base");
    assert_eq!(nft(&["list", "ruleset"]), first);
    assert!(
        first.contains("iifgroup 232 counter packets 0 bytes 0 drop"),
        "{first}"
    );
    assert!(
        first.contains("ip saddr 10.232.0.0/16 oifgroup != 232 masquerade"),
        "{first}"
    );
    // (The other tool's table matches "gte*"; gatectl's own must not.)
    let ours = nft(&["list", "table", "inet", TABLE]);
    assert!(
        ours.contains("iifgroup 232") && !ours.contains("gte"),
        "gate traffic is matched by group, not by name: {ours}"
    );
    assert!(first.contains("ct state established,related accept"));

    let gte1 = gate("gte1", &["192.0.2.10:22", "[2001:db8::10]:22", "192.0.2.11:2222"]);
    let gte2 = gate("gte2", &["192.0.2.10:22", "192.0.2.20:443"]);
    fw.add_gate(&gte1).expect("add gte1");
    fw.add_gate(&gte2).expect("add gte2");
    let both4 = triples(&[
        ("gte1", "192.0.2.10", 22),
        ("gte1", "192.0.2.11", 2222),
        ("gte2", "192.0.2.10", 22),
        ("gte2", "192.0.2.20", 443),
    ]);
    let gte1_6 = triples(&[("gte1", "2001:db8::10", 22)]);
    assert_eq!(elements(ALLOW4_SET), both4);
    assert_eq!(elements(ALLOW6_SET), gte1_6);
    assert_eq!(fw.survey().expect("list").interfaces, ["gte1", "gte2"]);

    // Adding a gate again, and refreshing the base, keep every gate's elements.
    fw.add_gate(&gte1).expect("add gte1 again");
    fw.ensure_base().expect("ensure_base with gates");
    assert_eq!(elements(ALLOW4_SET), both4);
    assert_eq!(elements(ALLOW6_SET), gte1_6);

    fw.remove_gate("gte1").expect("remove gte1");
    assert_eq!(
        elements(ALLOW4_SET),
        triples(&[("gte2", "192.0.2.10", 22), ("gte2", "192.0.2.20", 443)])
    );
    assert!(elements(ALLOW6_SET).is_empty());
    assert_eq!(fw.survey().expect("list").interfaces, ["gte2"]);

    fw.remove_gate("gte1").expect("remove gte1 again");
    fw.remove_gate("gte2").expect("remove gte2");
    assert!(elements(ALLOW4_SET).is_empty());
    assert!(elements(ALLOW6_SET).is_empty());
    assert!(fw.survey().expect("list").interfaces.is_empty());

    assert_eq!(other(), other_before, "table inet other was changed");
}

#[test]
fn removing_a_gates_pairs_takes_exactly_them_and_needs_neither_them_nor_the_table() {
    if !in_private_netns("removing_a_gates_pairs_takes_exactly_them_and_needs_neither_them_nor_the_table") {
        return;
    }
    let fw = firewall(false);
    // No table: nothing to remove is success, and no table appears.
    let gte1 = gate("gte1", &["192.0.2.10:22", "[2001:db8::10]:22"]);
    fw.remove_pairs(&gte1).expect("remove without table");
    assert!(!nft(&["list", "tables"]).contains(TABLE));

    let gte2 = gate("gte2", &["192.0.2.10:22", "192.0.2.20:443"]);
    fw.add_gate(&gte1).expect("add gte1");
    fw.add_gate(&gte2).expect("add gte2");
    // One of gte1's pairs went already (a reload that took it out): the
    // others still go, and nothing of gte2's. Exactly them: without a
    // listing, an element root added for gte1 by hand stays.
    fw.replace_gate(&gate("gte1", &["[2001:db8::10]:22"]))
        .expect("replace gte1");
    nft(&[
        "add",
        "element",
        "inet",
        TABLE,
        ALLOW4_SET,
        r#"{ "gte1" . 203.0.113.9 . 22 }"#,
    ]);
    fw.remove_pairs(&gte1).expect("remove gte1's pairs");
    assert_eq!(
        elements(ALLOW4_SET),
        triples(&[
            ("gte1", "203.0.113.9", 22),
            ("gte2", "192.0.2.10", 22),
            ("gte2", "192.0.2.20", 443)
        ])
    );
    fw.remove_gate("gte1").expect("remove root's element");
    assert!(elements(ALLOW6_SET).is_empty());
    // Again, with none of them left: still success, still nothing else gone.
    fw.remove_pairs(&gte1).expect("remove gte1's pairs again");
    assert_eq!(elements(ALLOW4_SET).len(), 2);
    fw.remove_pairs(&gte2).expect("remove gte2's pairs");
    assert!(elements(ALLOW4_SET).is_empty());
    // After a host `nft flush ruleset`, with gte1's pairs added back.
    fw.add_gate(&gte1).expect("add gte1 again");
    nft(&["flush", "ruleset"]);
    fw.remove_pairs(&gte1).expect("remove after a flush");
    assert!(!nft(&["list", "tables"]).contains(TABLE));
}

#[test]
fn block_other_forwarding_adds_a_final_drop_and_refresh_removes_it() {
    if !in_private_netns("block_other_forwarding_adds_a_final_drop_and_refresh_removes_it") {
        return;
    }
    let final_drop: Value = serde_json::json!([
        {"counter": {"packets": 0, "bytes": 0}},
        {"drop": null}
    ]);

    firewall(false).ensure_base().expect("ensure_base");
    let rules = chain_rules("forward");
    assert_eq!(rules.len(), 4, "forward chain: {rules:?}");
    assert_ne!(rules[3], final_drop);

    firewall(true).ensure_base().expect("ensure_base blocking");
    let rules = chain_rules("forward");
    assert_eq!(rules.len(), 5, "forward chain: {rules:?}");
    assert_eq!(rules[4], final_drop);
    assert_eq!(
        rules[3][0]["match"],
        serde_json::json!({"op": "==", "left": {"meta": {"key": "iifgroup"}}, "right": 232}),
        "the gate drop comes before the final one"
    );

    // IPv4 only: the final drop names its family.
    let ipv4_only = Firewall {
        block_other_forwarding6: false,
        ..firewall(true)
    };
    ipv4_only.ensure_base().expect("ensure_base blocking IPv4 only");
    let rules = chain_rules("forward");
    assert_eq!(rules.len(), 5, "forward chain: {rules:?}");
    assert_eq!(
        rules[4][0]["match"],
        serde_json::json!({"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"})
    );

    // The kernel took the IPv6 rules: neighbour discovery from gates, NAT66.
    let input = chain_rules("input");
    assert_eq!(input.len(), 5, "input chain: {input:?}");
    assert_eq!(
        input[1][1]["match"]["right"],
        serde_json::json!({"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]})
    );
    let postrouting = chain_rules("postrouting");
    assert_eq!(postrouting.len(), 2, "postrouting chain: {postrouting:?}");
    assert_eq!(
        postrouting[1][0]["match"]["right"],
        serde_json::json!({"prefix": {"addr": "fd23:1:2::", "len": 48}})
    );

    // The chains are rebuilt on every refresh: turning the option off drops the rule.
    firewall(false).ensure_base().expect("ensure_base again");
    assert_eq!(chain_rules("forward").len(), 4);
}

#[test]
fn a_refused_batch_changes_nothing_and_says_what_nft_said() {
    if !in_private_netns("a_refused_batch_changes_nothing_and_says_what_nft_said") {
        return;
    }
    // A forward chain at another priority cannot be turned into gatectl's: the
    // batch fails, and being atomic, adds none of the gate's elements either.
    nft_with_input(
        &["-f", "-"],
        Some(
            "table inet gatectl {\n\
               set allow4 { type ifname . ipv4_addr . inet_service; }\n\
               chain forward { type filter hook forward priority 5; policy accept; }\n\
             }\n",
        ),
    );
    let before = nft(&["list", "ruleset"]);
    let err = firewall(false)
        .add_gate(&gate("gte1", &["192.0.2.10:22"]))
        .expect_err("a conflicting chain must fail the batch");
    match &err {
        Error::Firewall { context, message } => {
            assert!(context.contains("gte1"), "context: {context}");
            assert!(message.contains("`nft` said:"), "message: {message}");
        }
        other => panic!("expected a firewall error, got {other:?}"),
    }
    eprintln!("refused as expected: {err}");
    assert_eq!(nft(&["list", "ruleset"]), before);
}

#[test]
fn the_firewall_runs_no_nft_command() {
    if !in_private_netns("the_firewall_runs_no_nft_command") {
        return;
    }
    // libnftables in process: with no `nft` to be found, every operation
    // still works (this body runs alone in its re-executed test binary, so
    // changing PATH affects no other test).
    let path = std::env::var_os("PATH").expect("PATH");
    std::env::set_var("PATH", "/nonexistent");
    let fw = firewall(true);
    fw.ensure_base().expect("ensure_base");
    fw.add_gate(&gate("gte1", &["192.0.2.10:22"])).expect("add gte1");
    assert!(fw.survey().expect("survey").present);
    assert_eq!(fw.survey().expect("list").interfaces, ["gte1"]);
    fw.remove_gate("gte1").expect("remove gte1");
    assert!(fw.survey().expect("list").interfaces.is_empty());
    fw.remove_table().expect("remove_table");
    assert!(!fw.survey().expect("survey").present);
    std::env::set_var("PATH", path);
    assert!(nft(&["list", "tables"]).trim().is_empty());
}

#[test]
fn a_gate_table_seal_holds_until_anything_commits_in_its_netns() {
    if !in_private_netns("a_gate_table_seal_holds_until_anything_commits_in_its_netns") {
        return;
    }
    use gatectl::net::firewall::gate::{GateTable, TableState};
    let table = |port: u16| GateTable {
        agent: "10.231.0.0".parse().unwrap(),
        listen_ports: [30000].into(),
        allowed: [
            "192.0.2.10:22".parse().unwrap(),
            SocketAddr::from(([192, 0, 2, 11], port)),
        ]
        .into(),
    };
    let seal = table(22).apply().expect("apply the gate table");
    assert!(table(22).sealed(Some(&seal)).unwrap(), "right after apply");
    assert_eq!(table(22).survey_sealed(Some(&seal)).unwrap(), TableState::Intact);
    // Another table (another gatectl's batch) does not take this seal for its own.
    assert!(!table(2222).sealed(Some(&seal)).unwrap());
    assert!(!table(22).sealed(None).unwrap());
    let elsewhere = gatectl::net::firewall::gate::TableSeal {
        netns: seal.netns + 1,
        ..seal
    };
    assert!(
        !table(22).sealed(Some(&elsewhere)).unwrap(),
        "a seal of another netns"
    );

    // Any commit in the netns breaks the seal, even one that leaves the table
    // as it was; the listing then tells.
    nft(&["add", "table", "inet", "unrelated"]);
    assert!(
        !table(22).sealed(Some(&seal)).unwrap(),
        "after another table was added"
    );
    assert_eq!(table(22).survey_sealed(Some(&seal)).unwrap(), TableState::Intact);
    nft(&["add", "element", "inet", TABLE, "listen", "{ 31000 }"]);
    assert_eq!(table(22).survey_sealed(Some(&seal)).unwrap(), TableState::Differs);

    // Applying again gives a seal that holds.
    let again = table(22).apply().expect("apply again");
    assert_ne!(again.generation, seal.generation);
    assert!(table(22).sealed(Some(&again)).unwrap());
}

#[test]
fn a_created_gate_table_is_the_applied_one_and_is_never_created_over_another() {
    if !in_private_netns("a_created_gate_table_is_the_applied_one_and_is_never_created_over_another") {
        return;
    }
    use gatectl::net::firewall::gate::{GateTable, TableState};
    let table = GateTable {
        agent: "10.231.0.0".parse().unwrap(),
        listen_ports: [30000, 30001].into(),
        allowed: [
            "192.0.2.10:22".parse().unwrap(),
            "[2001:db8::1]:2222".parse().unwrap(),
        ]
        .into(),
    };
    let applied = {
        let seal = table.apply().expect("apply the gate table");
        assert!(table.sealed(Some(&seal)).unwrap());
        nft(&["list", "ruleset"])
    };
    nft(&["flush", "ruleset"]);
    let seal = table.create().expect("create the gate table");
    assert_eq!(
        nft(&["list", "ruleset"]),
        applied,
        "create and apply give different tables"
    );
    assert!(table.sealed(Some(&seal)).unwrap(), "right after create");
    assert_eq!(table.survey_sealed(Some(&seal)).unwrap(), TableState::Intact);
    // Over an existing table, create fails and changes nothing (its rules
    // would otherwise be added a second time).
    let err = table.create().expect_err("create over the table");
    assert!(
        err.to_string().contains("could not create the nftables table"),
        "{err}"
    );
    assert_eq!(nft(&["list", "ruleset"]), applied);
}

/// Runs `ip` with `args`; panics with its stderr when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_gate_table_names_what_it_denied_and_counts_what_its_tried_sets_cannot_hold() {
    if !in_private_netns("a_gate_table_names_what_it_denied_and_counts_what_its_tried_sets_cannot_hold") {
        return;
    }
    use gatectl::net::firewall::gate::{GateTable, TRIED_SIZE};
    use std::time::Duration;
    let table = GateTable {
        agent: "10.231.0.0".parse().unwrap(),
        listen_ports: [30000].into(),
        allowed: ["192.0.2.10:22".parse().unwrap()].into(),
    };
    let seal = table.apply().expect("apply the gate table");
    // The gate's egress link, with a default route each way (its peer
    // answers nothing: a SYN that leaves is simply lost).
    ip(&["link", "add", "ext0", "type", "veth", "peer", "name", "ext0peer"]);
    ip(&["link", "set", "ext0", "up"]);
    ip(&["link", "set", "ext0peer", "up"]);
    ip(&["addr", "add", "10.232.0.1/31", "dev", "ext0"]);
    ip(&["route", "add", "default", "via", "10.232.0.0"]);
    ip(&["-6", "addr", "add", "fd00:1::1/64", "dev", "ext0", "nodad"]);
    ip(&["-6", "route", "add", "default", "via", "fd00:1::2"]);
    let attempt = |to: SocketAddr| {
        let _ = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(20));
    };

    // More undeclared destinations than a tried set holds, one IPv6 pair,
    // and the declared pair (not denied).
    let extra = 6;
    let ports = 1000..1000 + (TRIED_SIZE + extra) as u16;
    for port in ports.clone() {
        attempt(SocketAddr::from(([192, 0, 2, 99], port)));
    }
    attempt("[2001:db8::5]:22".parse().unwrap());
    attempt("192.0.2.10:22".parse().unwrap());

    let (denied, tried) = GateTable::denied().unwrap().expect("the table is there");
    // Every denied SYN is counted (a retransmitted one more than once).
    assert!(denied.egress >= (TRIED_SIZE + extra + 1) as u64, "{denied:?}");
    let v4: Vec<&SocketAddr> = tried.egress.iter().filter(|p| p.is_ipv4()).collect();
    assert_eq!(v4.len(), TRIED_SIZE, "a full set holds its size: {tried:?}");
    assert!(
        v4.iter()
            .all(|p| p.ip().to_string() == "192.0.2.99" && ports.contains(&p.port())),
        "{tried:?}"
    );
    assert!(
        tried.egress.contains(&"[2001:db8::5]:22".parse().unwrap()),
        "{tried:?}"
    );
    assert!(tried.agent_ports.is_empty(), "{tried:?}");
    // The packet path's adds are no commit: the table's seal still holds.
    assert!(table.sealed(Some(&seal)).unwrap());
}
