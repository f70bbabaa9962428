//! Reliability, in throwaway systemd hosts: faults at runtime, races,
//! interrupted starts and `prune`. Whatever happens, a gate is either
//! working or entirely gone, and nothing leaks.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::gatectl::{
    bash_in, connect, gatectl, gatectl_ok, ip_forward, journal_when, leftovers, serve, setup, ssh_via_gate,
    text,
};
use common::{finish, require_root};

const ALICE: &[u8] =
    b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\nUser = \"root\"\n";

/// Polls `check` every 50 ms for up to `limit`; returns how long it took.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn forwarder_crash_netns_loss_reloads_and_wiped_state() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-faults");
    host.write_file("/etc/gatectl/bottles/alice.toml", ALICE, 0o644);
    gatectl_ok(&host, &["start", "alice"]);
    ssh_via_gate(&host, &sshd, "alice", Some("agent"), "true").unwrap();

    // The forwarder is SIGKILLed: systemd restarts it by itself
    // (Restart=on-failure). Nothing connects meanwhile: a connection would
    // start the service again through the socket unit, restart or not.
    let show = |property: &str| {
        host.run_ok(&[
            "systemctl",
            "show",
            "-p",
            property,
            "--value",
            "gate-alice.service",
        ])
        .trim()
        .to_string()
    };
    let killed_pid = show("MainPID");
    assert_ne!(killed_pid, "0", "the forwarder runs after an ssh session");
    assert_eq!(show("NRestarts"), "0");
    host.run_ok(&["systemctl", "kill", "--signal=KILL", "gate-alice.service"]);
    let back = within(Duration::from_secs(5), || {
        let pid = show("MainPID");
        show("NRestarts") == "1" && pid != "0" && pid != killed_pid && show("ActiveState") == "active"
    });
    let back = back.unwrap_or_else(|| {
        panic!(
            "systemd did not restart the forwarder within 5 s: NRestarts={} MainPID={} ActiveState={}",
            show("NRestarts"),
            show("MainPID"),
            show("ActiveState")
        )
    });
    assert!(back < Duration::from_millis(1500), "restart took {back:?}");
    // The restarted forwarder relays: the upstream's banner, promptly.
    let asked = Instant::now();
    let banner = bash_in(
        &host,
        "agent",
        5,
        "exec 3<>/dev/tcp/10.231.0.1/30000; read -t 3 line <&3; echo \"$line\"",
    );
    let took = asked.elapsed();
    assert!(
        String::from_utf8_lossy(&banner.stdout).starts_with("SSH-2.0-"),
        "{}",
        text(&banner)
    );
    assert!(took < Duration::from_millis(1500), "the banner took {took:?}");
    assert_eq!(show("NRestarts"), "1", "the connection needed no second start");
    ssh_via_gate(&host, &sshd, "alice", Some("agent"), "true").unwrap();

    // daemon-reload and daemon-reexec: the gate keeps running and stays manageable.
    host.run_ok(&["systemctl", "daemon-reload"]);
    host.run_ok(&["systemctl", "daemon-reexec"]);
    within(Duration::from_secs(5), || {
        gatectl(&host, &["status", "alice"]).status.success()
    })
    .expect("status after daemon-reexec");
    ssh_via_gate(&host, &sshd, "alice", Some("agent"), "true").unwrap();

    // /run/gatectl is wiped: status and stop work from systemd and the kernel.
    host.run_ok(&["rm", "-rf", "/run/gatectl"]);
    let status = gatectl(&host, &["status", "alice"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("gate-alice.service (active/running)"),
        "{}",
        text(&status)
    );
    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());

    // The gate netns is deleted behind gatectl's back: status names the
    // cause, stop cleans up the rest.
    gatectl_ok(&host, &["start", "alice"]);
    host.run_ok(&["ip", "netns", "del", "gate-alice"]);
    let status = gatectl(&host, &["status", "alice"]);
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(
        out.contains("broken") && out.contains("network namespace gate-alice is missing"),
        "{out}"
    );
    gatectl_ok(&host, &["stop", "alice"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
}

#[test]
fn upstream_down_and_connection_flood() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-upstream-down");
    // Two entries: the sshd, and a service that we take down.
    serve(&host, Some("upstream"), "10.99.2.1", 8080, "second");
    host.write_file("/etc/gatectl/gatectl.toml", b"max_connections = 4\n", 0o644);
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\nUser = \"root\"\n\
          [[ssh]]\nHost = \"gone\"\nHostname = \"10.99.2.1\"\nPort = 8081\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);

    // Nothing listens on the second upstream: the agent's connection is
    // closed promptly, the journal says why, the first entry still works.
    let start = Instant::now();
    let out = bash_in(
        &host,
        "agent",
        5,
        "exec 3<>/dev/tcp/10.231.0.1/30001; cat <&3; echo closed",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("closed"),
        "{}",
        text(&out)
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    let journal = journal_when(&host, "gate-alice.service", |j| {
        j.contains("connect failed") && j.contains("refused")
    });
    assert!(
        journal.contains("connect failed") && journal.contains("refused"),
        "{journal}"
    );
    ssh_via_gate(&host, &sshd, "alice", Some("agent"), "true").unwrap();

    // A flood past max_connections: the excess is refused at once (as an
    // SSH server would: see e2e_refusals), the held
    // connections and new sessions after them keep working. Each held
    // session reads the sshd's banner, waits for the test, then answers
    // with its own banner and reads the sshd's key exchange offer.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut child = host
            .command(&[
                "ip",
                "netns",
                "exec",
                "agent",
                "timeout",
                "60",
                "bash",
                "-c",
                "exec 3<>/dev/tcp/10.231.0.1/30000; read -t 20 line <&3; echo \"$line\"
                 read -t 40 go
                 printf 'SSH-2.0-held\\r\\n' >&3
                 echo \"reply:$(timeout 5 head -c 32 <&3 | wc -c)\"",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        held.push((child, stdin));
    }
    within(Duration::from_secs(5), || {
        let status = common::gatectl::status_text(&host, "gate-alice.service");
        status.contains("4 active")
    })
    .expect("4 connections held");
    let excess = bash_in(
        &host,
        "agent",
        5,
        "exec 3<>/dev/tcp/10.231.0.1/30000; cat <&3; echo closed",
    );
    let excess_out = String::from_utf8_lossy(&excess.stdout);
    assert!(
        excess_out.starts_with("SSH-2.0-gatectl\r\n")
            && excess_out.contains("too many connections (the limit is 4)")
            && excess_out.ends_with("closed\n"),
        "the excess connection was served, or not told why: {}",
        text(&excess)
    );
    for (child, mut stdin) in held {
        writeln!(stdin, "go").unwrap();
        drop(stdin);
        let out = finish(child, "a held ssh session");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("SSH-2.0-") && stdout.contains("\nreply:32\n"),
            "a held session got its banner, then a round trip after the flood: {}",
            text(&out)
        );
    }
    let memory = host.run_ok(&[
        "systemctl",
        "show",
        "-p",
        "MemoryCurrent",
        "--value",
        "gate-alice.service",
    ]);
    let memory: u64 = memory
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("MemoryCurrent of the forwarder is {memory:?}: {e}"));
    assert!(memory < 64 * 1024 * 1024, "forwarder memory {memory}");
    ssh_via_gate(&host, &sshd, "alice", Some("agent"), "true").unwrap();
    gatectl_ok(&host, &["stop", "alice"]);
}

#[test]
fn races_and_interrupted_starts() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("e2e-races");
    host.write_file("/etc/gatectl/bottles/alice.toml", ALICE, 0o644);

    // Two starts of the same slug at once: one gate; the later caller
    // finds it running with the same manifest, and is told so.
    let a = common::gatectl::spawn_gatectl(&host, &["start", "alice"]);
    let b = finish(
        common::gatectl::spawn_gatectl(&host, &["start", "alice"]),
        "the second start",
    );
    let a = finish(a, "the first start");
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        text(&a),
        text(&b)
    );
    let said: Vec<String> = [&a, &b]
        .iter()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(':')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let mut said_sorted = said.clone();
    said_sorted.sort();
    assert_eq!(
        said_sorted,
        ["gate alice already running, unchanged", "gate alice running"],
        "one start brings the gate up, the other finds it: {said:?}"
    );
    ssh_via_gate(&host, &sshd, "alice", Some("agent"), "true").unwrap();

    // start racing stop: stop always succeeds, start succeeds or finds the
    // gate still running; afterwards either a working gate or nothing.
    for _ in 0..3 {
        let stop = common::gatectl::spawn_gatectl(&host, &["stop", "alice"]);
        let start = common::gatectl::spawn_gatectl(&host, &["start", "alice"]);
        let stop = finish(stop, "a stop racing a start");
        let start = finish(start, "a start racing a stop");
        assert!(stop.status.success(), "stop racing a start: {}", text(&stop));
        assert!(
            start.status.success()
                || (start.status.code() == Some(1)
                    && String::from_utf8_lossy(&start.stderr).contains("already running")),
            "start racing a stop: {}",
            text(&start)
        );
        if gatectl(&host, &["status", "alice"]).status.success() {
            ssh_via_gate(&host, &sshd, "alice", Some("agent"), "true").unwrap();
        } else {
            assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
        }
    }
    gatectl_ok(&host, &["stop", "alice"]);

    // gatectl start SIGKILLed at points spread over a start's duration: a
    // new start completes, and prune removes what a killed start left.
    // Timed inside the host, as `timeout` below counts: the round trip
    // into the host would shift every kill point late.
    // The shortest of three starts: a first start of a host (its table, its
    // drop-in) takes longer than the killed ones below, whose kill points
    // must fall within them.
    // Under load a whole sweep can miss (each start slower or faster than
    // the one measured): up to three sweeps, each timed anew.
    let mut pruned_something = 0;
    let mut start_takes = Duration::ZERO;
    for _sweep in 0..3 {
        if pruned_something > 0 {
            break;
        }
        start_takes = (0..3)
            .map(|_| {
                let nanos = host.run_ok(&[
                    "sh",
                    "-c",
                    &format!(
                        "s=$(date +%s%N); {} start alice >/dev/null; e=$(date +%s%N); echo $((e - s))",
                        common::gatectl::GATECTL
                    ),
                ]);
                gatectl_ok(&host, &["stop", "alice"]);
                Duration::from_nanos(nanos.trim().parse().expect("nanoseconds"))
            })
            .min()
            .unwrap();
        for percent in (5u32..100).step_by(10) {
            let delay = (start_takes * percent / 100).max(Duration::from_millis(2));
            let secs = format!("{:.3}", delay.as_secs_f64());
            host.exec(&[
                "timeout",
                "-s",
                "KILL",
                &secs,
                common::gatectl::GATECTL,
                "start",
                "alice",
            ]);
            let dry = gatectl_ok(&host, &["prune", "--dry-run"]);
            let real = gatectl_ok(&host, &["prune"]);
            assert_eq!(
                dry.replace("would remove", "removed")
                    .replace("nothing to prune", ""),
                real.replace("nothing to prune", ""),
                "dry run lists what prune removes"
            );
            if real.contains("removed ") {
                pruned_something += 1;
            }
            if !gatectl(&host, &["status", "alice"]).status.success() {
                assert_eq!(
                    leftovers(&host, "alice"),
                    Vec::<String>::new(),
                    "after a kill at {secs} s and prune"
                );
            }
            assert_eq!(
                gatectl_ok(&host, &["prune"]).trim(),
                "nothing to prune",
                "prune twice is harmless"
            );
            if !gatectl(&host, &["status", "alice"]).status.success() {
                gatectl_ok(&host, &["start", "alice"]);
            }
            ssh_via_gate(&host, &sshd, "alice", Some("agent"), "true").unwrap();
            // prune never touches a healthy gate.
            assert_eq!(gatectl_ok(&host, &["prune"]).trim(), "nothing to prune");
            gatectl_ok(&host, &["stop", "alice"]);
        }
    }
    assert!(
        pruned_something > 0,
        "no kill (a start takes {start_takes:?}) left anything for prune to remove"
    );

    // A gate whose units were stopped behind gatectl's back is pruned.
    gatectl_ok(&host, &["start", "alice"]);
    ssh_via_gate(&host, &sshd, "alice", Some("agent"), "true").unwrap();
    host.run_ok(&["systemctl", "kill", "--signal=KILL", "gate-alice.service"]);
    host.run_ok(&["systemctl", "stop", "gate-alice.socket", "gate-alice.service"]);
    let pruned = gatectl_ok(&host, &["prune"]);
    assert!(
        pruned.contains("removed netns gate-alice") && pruned.contains("removed record alice"),
        "{pruned}"
    );
    // With no gate left, prune also undoes what gatectl did to the host.
    assert!(pruned.contains("removed firewall table inet gatectl"), "{pruned}");
    assert!(
        pruned.contains("removed sysctl net.ipv4.ip_forward=1"),
        "{pruned}"
    );
    assert!(!host.run_ok(&["nft", "list", "tables"]).contains("gatectl"));
    assert_eq!(ip_forward(&host, None), "0");
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
}

#[test]
fn a_command_that_finds_every_work_slot_taken_says_so_and_waits_its_turn() {
    if !require_root() {
        return;
    }
    let (host, _sshd) = setup("e2e-slots");
    host.write_file("/etc/gatectl/bottles/alice.toml", ALICE, 0o644);
    // Every slot held, as by 16 commands at work: this process takes them
    // in the host's state directory, through the host's root.
    let state_dir = format!("/proc/{}/root/run/gatectl", host.pid());
    let held: Vec<_> = (0..gatectl::lock::WORK_SLOTS)
        .map(|_| gatectl::lock::take_work_slot(std::path::Path::new(&state_dir)).expect("take a work slot"))
        .collect();
    let mut start = common::gatectl::spawn_gatectl(&host, &["start", "alice"]);
    let stderr = start.stderr.take().expect("piped stderr");
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line);
        let _ = line_tx.send(line);
    });
    // A command that says nothing waits for ever: give it its slots back.
    let Ok(said) = line_rx.recv_timeout(Duration::from_secs(10)) else {
        drop(held);
        panic!("gatectl said nothing in 10 s while every work slot was taken");
    };
    assert_eq!(
        said.trim_end(),
        "gatectl: note: 16 gatectl commands are starting, stopping or reloading gates on this host; \
         waiting until one of them is done"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        start.try_wait().expect("poll gatectl"),
        None,
        "it did not wait for a slot"
    );
    assert!(
        !gatectl_ok(&host, &["list"]).contains("running"),
        "it started without a slot"
    );
    drop(held);
    let out = finish(start, "gatectl start");
    assert!(out.status.success(), "{}", text(&out));
    assert!(gatectl_ok(&host, &["list"]).contains("alice"));
    gatectl_ok(&host, &["stop", "alice"]);
}

#[test]
fn fifty_gates_start_in_parallel() {
    if !require_root() {
        return;
    }
    let (host, _sshd) = setup("e2e-fifty");
    for i in 0..50 {
        host.write_file(
            &format!("/etc/gatectl/bottles/g{i}.toml"),
            b"[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\n",
            0o644,
        );
    }
    let children: Vec<_> = (0..50)
        .map(|i| common::gatectl::spawn_gatectl(&host, &["start", &format!("g{i}")]))
        .collect();
    for c in children {
        let out = finish(c, "a parallel gatectl");
        assert!(out.status.success(), "{}", text(&out));
    }
    let list = gatectl_ok(&host, &["list", "--json"]);
    let mut addresses: Vec<&str> = list.lines().filter(|l| l.contains("\"address\"")).collect();
    let before = addresses.len();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), before, "addresses are distinct");
    assert_eq!(list.matches("\"state\": \"running\"").count(), 50, "{list}");
    for i in [0, 17, 49] {
        assert_eq!(
            connect(&host, None, &format!("10.231.0.{}", 2 * i + 1), 30000),
            Ok(()),
            "gate g{i}"
        );
    }
    let children: Vec<_> = (0..50)
        .map(|i| common::gatectl::spawn_gatectl(&host, &["stop", &format!("g{i}")]))
        .collect();
    for c in children {
        let out = finish(c, "a parallel gatectl");
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(leftovers(&host, "g0"), Vec::<String>::new());
    assert_eq!(host.run_ok(&["ip", "netns", "list"]).matches("gate-").count(), 0);
}

#[test]
fn gates_start_and_stop_while_systemd_runs_a_storm_of_other_jobs() {
    if !require_root() {
        return;
    }
    const GATES: usize = 30;
    let (host, _sshd) = setup("e2e-job-storm");
    // Every job systemd finishes is signalled to every subscriber, gatectl
    // included; a client that stops reading them stalls its own D-Bus calls.
    host.write_file(
        "/etc/systemd/system/storm@.target",
        b"[Unit]\nDescription=storm %i\n",
        0o644,
    );
    host.run_ok(&["systemctl", "daemon-reload"]);
    host.run_ok(&["systemctl", "start", "storm@0.target"]);
    let storms: Vec<_> = (0..4)
        .map(|_| {
            host.command(&[
                "sh",
                "-c",
                "units=$(seq -f storm@%g.target 1 200)
                 while [ ! -e /run/storm-done ]; do
                   systemctl start --no-block $units && systemctl stop --no-block $units &&
                     echo round >> /run/storm-rounds
                 done",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    for i in 0..GATES {
        host.write_file(
            &format!("/etc/gatectl/bottles/s{i}.toml"),
            b"[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\n",
            0o644,
        );
    }
    for round in 0..5 {
        for verb in ["start", "stop"] {
            let children: Vec<_> = (0..GATES)
                .map(|i| common::gatectl::spawn_gatectl(&host, &[verb, &format!("s{i}")]))
                .collect();
            for c in children {
                let out = finish(c, &format!("{verb} in round {round}"));
                assert!(out.status.success(), "{}", text(&out));
            }
        }
    }
    host.run_ok(&["touch", "/run/storm-done"]);
    for storm in storms {
        finish(storm, "the job storm");
    }
    let rounds = host.read_file("/run/storm-rounds").lines().count();
    assert!(
        rounds >= 4,
        "the storm ran {rounds} rounds of 200 starts and stops"
    );
    assert_eq!(host.run_ok(&["ip", "netns", "list"]).matches("gate-").count(), 0);
}
