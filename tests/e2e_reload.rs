//! End to end, in a throwaway systemd host: `gatectl reload` (and
//! `systemctl reload gatectl@SLUG`) applies an edited manifest to a running
//! gate while real `ssh` sessions run through it. A session through an
//! unchanged or changed entry stays alive; an added entry works at once; a
//! changed entry takes new connections to its new upstream; a session
//! through a removed entry is cut and its port refuses; a manifest that
//! fails validation changes nothing.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use std::time::Duration;

use common::gatectl::{
    add_host_name, allowlist, connect, gatectl, gatectl_ok, host_state, install_unit, journal_when,
    leftovers, main_pid, setup, spawn_gatectl, text, wait_unit_state,
};
use common::session::Agent;
use common::{require_root, SshFixture, TestHost};

/// The agent's files: its known_hosts vouches for both upstream daemons.
const KNOWN_HOSTS: &str = "/root/agent/known_hosts";
const SSH_CONFIG: &str = "/root/agent/alice.ssh_config";
const GATE: &str = "10.231.0.1";

/// The manifest of alice with `entries` (`Host`, `Hostname`, `Port`).
fn manifest(entries: &[(&str, &str, u16)]) -> String {
    let mut text = String::from("agent_netns = \"agent\"\n");
    for (alias, hostname, port) in entries {
        text.push_str(&format!(
            "[[ssh]]\nHost = \"{alias}\"\nHostname = \"{hostname}\"\nPort = {port}\nUser = \"root\"\n"
        ));
    }
    text
}

fn write_manifest(host: &TestHost, entries: &[(&str, &str, u16)]) {
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        manifest(entries).as_bytes(),
        0o644,
    );
}

/// Writes the agent's ssh config as `gatectl ssh-config` prints it now.
fn refresh_ssh_config(host: &TestHost) {
    let config = gatectl_ok(host, &["ssh-config", "alice"]);
    host.write_file(SSH_CONFIG, config.as_bytes(), 0o600);
}

/// A second sshd on the upstream (10.99.2.1:2222, named `upstream2.test`),
/// known to the agent under that name.
fn second_upstream(host: &TestHost, first: &SshFixture) -> SshFixture {
    let second = host.start_sshd("upstream", "10.99.2.1", 2222);
    // One client key for both daemons.
    host.run_ok(&["cp", &format!("{}.pub", first.identity), &second.authorized_keys]);
    add_host_name(host, "10.99.2.1", "upstream2.test");
    let known = first.known_hosts_for("upstream.test") + &second.known_hosts_for("upstream2.test");
    host.write_file(KNOWN_HOSTS, known.as_bytes(), 0o600);
    second
}

#[test]
fn reload_adds_changes_and_removes_entries_while_sessions_run() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-reload");
    second_upstream(&host, &sshd);
    let v1 = [
        ("up", "upstream.test", 22),
        ("chg", "upstream.test", 22),
        ("gone", "upstream.test", 22),
    ];
    write_manifest(&host, &v1);
    gatectl_ok(&host, &["start", "alice"]);
    refresh_ssh_config(&host);
    assert_eq!(
        Agent::of_fixture(&host, &sshd).server_of("chg"),
        Ok("10.99.2.1:22".into())
    );
    let mut kept = Agent::of_fixture(&host, &sshd).session("up");
    let mut changed = Agent::of_fixture(&host, &sshd).session("chg");
    let mut revoked = Agent::of_fixture(&host, &sshd).session("gone");

    // A manifest that fails validation changes nothing, and says why.
    let before = host_state(&host);
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        (manifest(&v1) + "[[ssh]]\nHost = \"bad\"\nHostname = \"upstream.test\"\nPort = 0\n").as_bytes(),
        0o644,
    );
    let out = gatectl(&host, &["reload", "alice"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "gatectl: error: manifest /etc/gatectl/bottles/alice.toml: ssh entry 4 (Port): port 0 is not a number \
         from 1 to 65535"
    );
    assert_eq!(host_state(&host), before, "a refused reload changed the host");

    // Add one entry and change another.
    let v2 = [
        ("up", "upstream.test", 22),
        ("chg", "upstream2.test", 2222),
        ("gone", "upstream.test", 22),
        ("new", "upstream2.test", 2222),
    ];
    write_manifest(&host, &v2);
    let out = gatectl_ok(&host, &["reload", "alice"]);
    assert_eq!(
        out,
        "gate alice reloaded: 2 change(s)\n  \
         changed chg on port 30001: upstream upstream.test:22 (10.99.2.1) -> upstream2.test:2222 (10.99.2.1)\n  \
         added new on port 30003, forwarding to upstream2.test:2222 (10.99.2.1)\n"
    );
    refresh_ssh_config(&host);
    assert_eq!(
        Agent::of_fixture(&host, &sshd).server_of("new"),
        Ok("10.99.2.1:2222".into())
    );
    assert_eq!(
        Agent::of_fixture(&host, &sshd).server_of("chg"),
        Ok("10.99.2.1:2222".into())
    );
    assert_eq!(
        Agent::of_fixture(&host, &sshd).server_of("up"),
        Ok("10.99.2.1:22".into())
    );
    for (what, session) in [
        ("unchanged", &mut kept),
        ("changed", &mut changed),
        ("kept", &mut revoked),
    ] {
        session
            .echo("after the first reload")
            .unwrap_or_else(|e| panic!("the session through the {what} entry died: {e}"));
    }
    // The same manifest again: nothing to do.
    assert_eq!(
        gatectl_ok(&host, &["reload", "alice"]),
        "gate alice unchanged: it already runs this manifest\n"
    );

    // Remove two entries: their sessions are cut, their ports refuse, the
    // others go on.
    let v3 = [("up", "upstream.test", 22), ("chg", "upstream2.test", 2222)];
    write_manifest(&host, &v3);
    let out = gatectl_ok(&host, &["reload", "alice"]);
    assert_eq!(
        out,
        "gate alice reloaded: 2 change(s)\n  \
         removed gone: port 30002 no longer listens and its sessions are cut\n  \
         removed new: port 30003 no longer listens and its sessions are cut\n"
    );
    assert!(
        revoked.ends_within(Duration::from_secs(5)),
        "the session through the removed entry was not cut"
    );
    for port in [30002, 30003] {
        let refused = connect(&host, Some("agent"), GATE, port).unwrap_err();
        assert!(refused.contains("refused"), "port {port}: {refused}");
    }
    kept.echo("after the second reload").unwrap();
    changed.echo("after the second reload").unwrap();
    let revoked_record =
        |j: &str| j.contains("gone: 10.231.0.0:") && j.contains("revoked (a reload removed its entry");
    let journal = journal_when(&host, "gate-alice.service", revoked_record);
    assert!(revoked_record(&journal), "{journal}");

    // An entry that comes back at a removed port is served again.
    write_manifest(&host, &v2);
    gatectl_ok(&host, &["reload", "alice"]);
    refresh_ssh_config(&host);
    assert_eq!(
        Agent::of_fixture(&host, &sshd).server_of("gone"),
        Ok("10.99.2.1:22".into())
    );
    assert_eq!(
        Agent::of_fixture(&host, &sshd).server_of("new"),
        Ok("10.99.2.1:2222".into())
    );
    // The file `ssh-config --include` names follows the reloads.
    let include = gatectl_ok(&host, &["ssh-config", "alice", "--include"]);
    assert_eq!(
        host.read_file(include.trim_end()),
        format!(
            "# kept current by gatectl while gate \"alice\" runs; edits are lost\n{}",
            gatectl_ok(&host, &["ssh-config", "alice"])
        )
    );

    drop((kept, changed, revoked));

    // Host events after reloads: a prune at the same time as a reload that
    // removes an entry, an nftables flush and its reconcile, a
    // daemon-reload, and a forwarder killed and restarted by systemd. The
    // reloaded routes hold: the removed port stays refused, and the port a
    // reload added (which the forwarder binds itself) serves again.
    let v4 = [
        ("up", "upstream.test", 22),
        ("chg", "upstream2.test", 2222),
        ("gone", "upstream.test", 22),
    ];
    write_manifest(&host, &v4);
    let prune = common::gatectl::spawn_gatectl(&host, &["prune"]);
    gatectl_ok(&host, &["reload", "alice"]);
    let prune = common::finish(prune, "gatectl prune");
    assert!(prune.status.success(), "{}", text(&prune));
    write_manifest(&host, &v2);
    gatectl_ok(&host, &["reload", "alice"]);
    write_manifest(&host, &v4);
    gatectl_ok(&host, &["reload", "alice"]);
    host.run_ok(&["nft", "flush", "ruleset"]);
    gatectl_ok(&host, &["reconcile"]);
    host.run_ok(&["systemctl", "daemon-reload"]);
    write_manifest(&host, &v2);
    gatectl_ok(&host, &["reload", "alice"]);
    host.run_ok(&["systemctl", "kill", "--signal=KILL", "gate-alice.service"]);
    let agent = Agent::of_fixture(&host, &sshd);
    let mut new = agent.server_of("new");
    for _ in 0..30 {
        if new.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        new = agent.server_of("new");
    }
    assert_eq!(
        new,
        Ok("10.99.2.1:2222".into()),
        "the added port after a forwarder restart"
    );
    assert_eq!(agent.server_of("gone"), Ok("10.99.2.1:22".into()));
    write_manifest(&host, &v3);
    gatectl_ok(&host, &["reload", "alice"]);
    host.run_ok(&["nft", "flush", "ruleset"]);
    gatectl_ok(&host, &["reconcile"]);
    for port in [30002, 30003] {
        let refused = connect(&host, Some("agent"), GATE, port).unwrap_err();
        assert!(
            refused.contains("refused"),
            "port {port} after reconcile: {refused}"
        );
    }
    assert_eq!(agent.server_of("chg"), Ok("10.99.2.1:2222".into()));

    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
}

#[test]
fn systemctl_reload_applies_the_manifest_to_an_idle_gate_and_refuses_what_it_cannot() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-reload-unit");
    second_upstream(&host, &sshd);
    install_unit(&host, "units/gatectl@.service");
    host.run_ok(&["systemctl", "daemon-reload"]);
    write_manifest(&host, &[("up", "upstream.test", 22)]);
    // A gate whose forwarder is not running: started only at the first
    // connection (as after it exited for being idle).
    host.write_file(
        "/etc/gatectl/gatectl.toml",
        b"forwarder_prestart = false\n",
        0o644,
    );

    // Not running: nothing to reload.
    let out = gatectl(&host, &["reload", "alice"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "gatectl: error: gate alice is not running, so there is nothing to reload; start it with \
         `gatectl start alice`"
    );

    host.run_ok(&["systemctl", "start", "gatectl@alice.service"]);
    let forwarder = || {
        host.exec(&["systemctl", "is-active", "gate-alice.service"])
            .stdout
    };
    assert_eq!(forwarder(), b"inactive\n", "no connection yet, no forwarder");

    // Changing an idle gate's entry starts nothing: the forwarder reads the
    // new routes when the first connection starts it.
    write_manifest(&host, &[("up", "upstream2.test", 2222)]);
    host.run_ok(&["systemctl", "reload", "gatectl@alice.service"]);
    assert_eq!(forwarder(), b"inactive\n", "a reload started the idle forwarder");
    refresh_ssh_config(&host);
    assert_eq!(
        Agent::of_fixture(&host, &sshd).server_of("up"),
        Ok("10.99.2.1:2222".into())
    );

    // Another agent netns is refused: the agent's end would move.
    host.add_netns("agent2");
    let out = gatectl(&host, &["reload", "alice", "--agent-netns", "agent2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "the agent netns of alice changed (from /run/netns/agent to /run/netns/agent2), which a reload \
             cannot apply"
        ),
        "{}",
        text(&out)
    );

    // A start with the changed manifest names reload.
    write_manifest(
        &host,
        &[("up", "upstream.test", 22), ("two", "upstream2.test", 2222)],
    );
    let out = gatectl(&host, &["start", "alice"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run `gatectl reload alice`"),
        "{}",
        text(&out)
    );
    host.run_ok(&["systemctl", "reload", "gatectl@alice.service"]);
    refresh_ssh_config(&host);
    assert_eq!(
        Agent::of_fixture(&host, &sshd).server_of("two"),
        Ok("10.99.2.1:2222".into())
    );
    assert_eq!(
        Agent::of_fixture(&host, &sshd).server_of("up"),
        Ok("10.99.2.1:22".into())
    );
    let state = host.run_ok(&["systemctl", "is-active", "gatectl@alice.service"]);
    assert_eq!(state, "active\n");

    host.run_ok(&["systemctl", "stop", "gatectl@alice.service"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
}

#[test]
fn a_reload_killed_midway_leaves_none_of_its_allowlist_pairs_after_stop() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-reload-killed");
    second_upstream(&host, &sshd);
    write_manifest(&host, &[("up", "upstream.test", 22)]);
    gatectl_ok(&host, &["start", "alice"]);
    // A second gate (gte1) keeps the host table: the last stop deletes it.
    host.add_netns("agent-bob");
    host.write_file(
        "/etc/gatectl/bottles/bob.toml",
        b"agent_netns = \"agent-bob\"\n[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "bob"]);
    let alice_egress = |list: &str| -> Vec<String> {
        list.lines()
            .filter(|l| l.starts_with("\"gte0\""))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(alice_egress(&allowlist(&host)), ["\"gte0\" . 10.99.2.1 . 22"]);

    // The forwarder cannot confirm the new routes while it is stopped: the
    // reload waits for it with the new pair already in the host table.
    // A first connection starts the forwarder.
    connect(&host, Some("agent"), GATE, 30000).expect("connect through alice's gate");
    let started = wait_unit_state(&host, "gate-alice.service", "active", Duration::from_secs(10));
    assert_eq!(started, "active", "the first connection starts the forwarder");
    let forwarder = main_pid(&host, "gate-alice.service");
    assert_ne!(forwarder, "0", "the forwarder runs from the start");
    host.run_ok(&["kill", "-STOP", &forwarder]);
    write_manifest(
        &host,
        &[("up", "upstream.test", 22), ("two", "upstream2.test", 2222)],
    );
    let mut reload = spawn_gatectl(&host, &["reload", "alice"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while !allowlist(&host).contains("\"gte0\" . 10.99.2.1 . 2222") {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never added its pair"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let record = host.read_file("/run/gatectl/gates/alice.json");
    // Killed as a crash would end it, then the forwarder goes on.
    host.run_ok(&["pkill", "-KILL", "-f", "^/usr/local/bin/gatectl reload alice"]);
    let _ = reload.wait();
    host.run_ok(&["kill", "-CONT", &forwarder]);
    let record: serde_json::Value = serde_json::from_str(&record).expect("the record is JSON");
    assert!(
        record["pending_pairs"]
            .as_array()
            .is_some_and(|pairs| pairs.contains(&serde_json::json!("10.99.2.1:2222"))),
        "the record does not name the pair the reload adds: {record}"
    );

    gatectl_ok(&host, &["stop", "alice"]);
    let after = allowlist(&host);
    assert_eq!(alice_egress(&after), Vec::<String>::new(), "{after}");
    assert!(
        after.contains("\"gte1\" . 10.99.2.1 . 22"),
        "bob's pair went too: {after}"
    );
    gatectl_ok(&host, &["stop", "bob"]);
    assert!(leftovers(&host, "alice").is_empty() && leftovers(&host, "bob").is_empty());
}
