//! End to end, in a throwaway systemd host: what an operator sees of a
//! gate's traffic. `gatectl status` (text and `--json`) shows the
//! forwarder's live counters per gate and per entry, matching the bytes the
//! test sent; `systemctl status` shows the one-line summary. Every
//! connection has exactly one audit record in the journal, a burst of them
//! and those a stop cuts included.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use std::time::{Duration, Instant};

use std::process::Stdio;

use common::gatectl::{bash_in, gatectl_ok, install_unit, serve_echo, setup, ssh_via_gate, text, GATECTL};
use common::{finish, json_schema, require_root, TestHost};
use serde_json::Value;

/// Bytes the test sends through the echo entry (and gets back).
const SENT: u64 = 100_000;

/// `status alice --json`, once `ready` holds for its counters (they change
/// a moment after a client sees its connection close).
fn status_when(host: &TestHost, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: Value = serde_json::from_str(&gatectl_ok(host, &["status", "alice", "--json"])).unwrap();
        if ready(&status["counters"]) {
            return status;
        }
        assert!(Instant::now() < deadline, "counters never got there: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn entry<'a>(counters: &'a Value, alias: &str) -> &'a Value {
    counters["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["alias"] == alias)
        .unwrap_or_else(|| panic!("no entry {alias}: {counters:#}"))
}

#[test]
fn status_counts_connections_bytes_and_refusals_per_entry() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("observability");
    serve_echo(&host, Some("upstream"), "10.99.2.1", 7007);
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"agent_netns = \"agent\"\n\
          [[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\nUser = \"root\"\n\
          [[ssh]]\nHost = \"echo\"\nHostname = \"10.99.2.1\"\nPort = 7007\n\
          [[ssh]]\nHost = \"down\"\nHostname = \"10.99.2.1\"\nPort = 2222\n",
        0o644,
    );
    // The status of a gate whose forwarder has not started yet (as after it
    // exited for being idle).
    host.write_file(
        "/etc/gatectl/gatectl.toml",
        b"forwarder_prestart = false\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);
    let idle: Value = serde_json::from_str(&gatectl_ok(&host, &["status", "alice", "--json"])).unwrap();
    assert!(idle["counters"].is_null(), "no forwarder yet: {idle:#}");
    let text_idle = gatectl_ok(&host, &["status", "alice"]);
    assert!(text_idle.contains("traffic:   none yet"), "{text_idle}");

    // SENT bytes through the echo entry, half-closed, all of them back.
    let out = bash_in(
        &host,
        "agent",
        30,
        &format!("head -c {SENT} /dev/urandom | socat -t 10 - TCP:10.231.0.1:30001 | wc -c"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        SENT.to_string(),
        "{}",
        text(&out)
    );
    ssh_via_gate(&host, &sshd, "alice", Some("agent"), "true").unwrap();
    let refused = bash_in(
        &host,
        "agent",
        5,
        "exec 3<>/dev/tcp/10.231.0.1/30002; cat <&3 >/dev/null",
    );
    assert!(refused.status.success(), "{}", text(&refused));

    let status = status_when(&host, |c| c["active"] == 0 && c["total"] == 3);
    let counters = &status["counters"];
    let echo = entry(counters, "echo");
    assert_eq!(
        (
            &echo["total"],
            &echo["bytes_up"],
            &echo["bytes_down"],
            &echo["last_error"]
        ),
        (
            &Value::from(1),
            &Value::from(SENT),
            &Value::from(SENT),
            &Value::Null
        ),
        "{counters:#}"
    );
    let up = entry(counters, "up");
    assert_eq!(up["total"], 1, "{counters:#}");
    assert!(
        up["bytes_up"].as_u64().unwrap() > 1000,
        "an ssh session: {counters:#}"
    );
    let down = entry(counters, "down");
    let expected = "gatectl gate alice: upstream down (10.99.2.1:2222) refused the connection";
    assert_eq!(down["last_error"]["message"], expected, "{counters:#}");
    assert_eq!(counters["last_error"], down["last_error"]);
    assert_eq!(counters["refused"]["upstream"], 1, "{counters:#}");
    assert_eq!(
        counters["bytes_up"].as_u64().unwrap(),
        SENT + up["bytes_up"].as_u64().unwrap()
    );

    let report = gatectl_ok(&host, &["status", "alice"]);
    for line in [
        "  traffic:   0 active, 3 total connections,",
        "  refused:   1 (upstream 1)",
        "  last error: 20",
        expected,
        "    echo                      0      1   97.7 KiB   97.7 KiB  -",
    ] {
        assert!(report.contains(line), "{line:?} not in:\n{report}");
    }
    // The status line is refreshed once a second at most.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let summary = common::gatectl::status_text(&host, "gate-alice.service");
        if summary.contains("0 active, 3 total connections,") && summary.contains("1 refused (upstream 1)") {
            break;
        }
        assert!(Instant::now() < deadline, "{summary}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The same connections, one record each, from the journal.
    let log: Value = serde_json::from_str(&gatectl_ok(&host, &["log", "alice", "--json"])).unwrap();
    let events = log["events"].as_array().unwrap();
    let of = |alias: &str| -> Vec<&Value> { events.iter().filter(|e| e["alias"] == alias).collect() };
    let [echo] = of("echo")[..] else {
        panic!("one echo record: {log:#}")
    };
    assert_eq!(
        (
            &echo["kind"],
            &echo["outcome"],
            &echo["upstream"],
            &echo["bytes_up"],
            &echo["bytes_down"]
        ),
        (
            &Value::from("connection"),
            &Value::from("closed"),
            &Value::from("10.99.2.1:7007"),
            &Value::from(SENT),
            &Value::from(SENT)
        ),
        "{log:#}"
    );
    assert!(echo["duration_ms"].is_u64() && echo["slug"] == "alice", "{log:#}");
    let [down] = of("down")[..] else {
        panic!("one down record: {log:#}")
    };
    assert_eq!(
        (&down["outcome"], &down["upstream"]),
        (&Value::from("connect_failed"), &Value::Null)
    );
    assert!(down["error"].as_str().unwrap().contains("refused"), "{log:#}");
    assert_eq!(of("up").len(), 1, "{log:#}");
    let text_log = gatectl_ok(&host, &["log", "alice", "--since", "-1h"]);
    assert_eq!(text_log.lines().count(), 3, "{text_log}");
    assert!(
        text_log
            .lines()
            .any(|l| l.contains(" alice echo: ") && l.contains("-> 10.99.2.1:7007 closed after")),
        "{text_log}"
    );
    let future = gatectl_ok(&host, &["log", "--since", "+1h", "--json"]);
    assert!(future.contains("\"events\": []"), "{future}");

    // --follow prints each new record as it is written, one object a line.
    let follow = host
        .command(&[
            "timeout", "4", GATECTL, "log", "alice", "--follow", "--json", "--since", "now",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    bash_in(
        &host,
        "agent",
        5,
        "exec 3<>/dev/tcp/10.231.0.1/30002; cat <&3 >/dev/null",
    );
    let followed = finish(follow, "gatectl log --follow");
    let lines = String::from_utf8_lossy(&followed.stdout).into_owned();
    let [line] = lines.lines().collect::<Vec<_>>()[..] else {
        panic!("one line for one new record: {}", text(&followed))
    };
    json_schema::validate("gatectl log --follow --json", line);
    let record: Value = serde_json::from_str(line).unwrap();
    assert_eq!(record["events"][0]["alias"], "down", "{line}");

    // The counters' socket is abstract, so only the gate netns has it: root
    // entering it reads them, the agent's netns and the host's have none.
    let socket = "ABSTRACT-CONNECT:gatectl-forward-stats";
    let inside = host.run_ok(&["ip", "netns", "exec", "gate-alice", "socat", "-u", socket, "-"]);
    assert!(inside.starts_with("{\"active\":0,"), "{inside}");
    for netns in [&["ip", "netns", "exec", "agent"][..], &[]] {
        let argv = [netns, &["socat", "-u", socket, "-"]].concat();
        let out = host.exec(&argv);
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
            "{argv:?} reached the counters: {}",
            text(&out)
        );
    }
    gatectl_ok(&host, &["stop", "alice"]);
}

/// Parses Prometheus text on stdin with python3-prometheus-client's parser
/// (which raises on malformed input) and prints one `name{labels} value`
/// line per sample, labels sorted.
const PARSE_METRICS: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    assert family.documentation, family.name
    assert family.type in ("gauge", "counter"), family.type
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {int(s.value)}")
"#;

/// The samples of Prometheus `text` as the reference parser reads them.
fn parse_metrics(host: &TestHost, text: &str) -> String {
    let out = host.exec_with_input(&["python3", "-c", PARSE_METRICS], text.as_bytes());
    assert!(
        out.status.success(),
        "the metrics do not parse: {}\n{text}",
        crate::text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample `line_start` (`name{labels}`) in parsed samples.
fn sample(samples: &str, line_start: &str) -> u64 {
    samples
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {line_start}:\n{samples}"))
}

/// `attempts` connection attempts from the agent netns to a gate port that
/// is not a listener (each refused by the gate netns's table).
fn flood_closed_port(host: &TestHost, attempts: u32) {
    let script =
        format!("for i in $(seq {attempts}); do (exec 3<>/dev/tcp/10.231.0.1/31000) 2>/dev/null; done; true");
    let out = bash_in(host, "agent", 60, &script);
    assert!(out.status.success(), "{}", text(&out));
}

/// The denied records of alice in `gatectl log --json`.
fn denied_records(host: &TestHost) -> Vec<Value> {
    let log: Value = serde_json::from_str(&gatectl_ok(host, &["log", "alice", "--json"])).unwrap();
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "denied")
        .cloned()
        .collect()
}

#[test]
fn metrics_parse_and_denied_attempts_are_recorded_once_per_run() {
    if !require_root() {
        return;
    }
    let (host, sshd) = setup("metrics");
    host.write_file(
        "/etc/gatectl/gatectl.toml",
        b"metrics_path = \"/var/lib/gatectl-test/textfile/gatectl.prom\"\n",
        0o644,
    );
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\nUser = \"root\"\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);
    ssh_via_gate(&host, &sshd, "alice", Some("agent"), "true").unwrap();

    // A flood at a port that is no listener, and root in the gate netns
    // trying an undeclared port of the upstream.
    flood_closed_port(&host, 300);
    let egress = host.exec(&[
        "ip",
        "netns",
        "exec",
        "gate-alice",
        "timeout",
        "1",
        "bash",
        "-c",
        "exec 3<>/dev/tcp/10.99.2.1/2222",
    ]);
    assert!(
        !egress.status.success(),
        "an undeclared port was reached: {}",
        text(&egress)
    );

    let samples = parse_metrics(&host, &gatectl_ok(&host, &["metrics"]));
    assert_eq!(sample(&samples, "gatectl_gate_up{slug=\"alice\"}"), 1);
    assert_eq!(
        sample(&samples, "gatectl_gate_state{slug=\"alice\",state=\"running\"}"),
        1
    );
    assert_eq!(sample(&samples, "gatectl_forwarder_up{slug=\"alice\"}"), 1);
    assert_eq!(
        sample(&samples, "gatectl_connections_total{alias=\"up\",slug=\"alice\"}"),
        1
    );
    assert!(
        sample(
            &samples,
            "gatectl_transferred_bytes_total{alias=\"up\",direction=\"down\",slug=\"alice\"}"
        ) > 1000
    );
    assert_eq!(
        sample(
            &samples,
            "gatectl_refusals_total{reason=\"limit\",slug=\"alice\"}"
        ),
        0
    );
    let agent = sample(
        &samples,
        "gatectl_denied_packets_total{direction=\"agent\",slug=\"alice\"}",
    );
    assert!(agent >= 300, "{samples}");
    assert!(
        sample(
            &samples,
            "gatectl_denied_packets_total{direction=\"egress\",slug=\"alice\"}"
        ) >= 1
    );
    let resolved = sample(&samples, "gatectl_dns_resolved_timestamp_seconds{slug=\"alice\"}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        resolved <= now && resolved + 300 > now,
        "resolved at start: {resolved}, now {now}"
    );

    // One record for all of it; none for a run with nothing new; one more
    // for a second flood.
    let records = denied_records(&host);
    let [first] = &records[..] else {
        panic!("one denied record: {records:#?}")
    };
    assert_eq!(first["slug"], "alice");
    assert_eq!(first["denied_agent"], agent, "{first:#}");
    assert!(first["denied_egress"].as_u64().unwrap() >= 1, "{first:#}");
    // It names what was tried: the closed gate port, the undeclared pair.
    assert_eq!(
        first["denied_agent_ports"],
        serde_json::json!([31000]),
        "{first:#}"
    );
    assert_eq!(
        first["denied_egress_to"],
        serde_json::json!(["10.99.2.1:2222"]),
        "{first:#}"
    );
    let message = first["message"].as_str().unwrap();
    assert!(
        message.ends_with("; tried within the last hour: gate ports 31000; from inside 10.99.2.1:2222"),
        "{message}"
    );
    gatectl_ok(&host, &["metrics"]);
    assert_eq!(denied_records(&host).len(), 1);
    flood_closed_port(&host, 300);
    gatectl_ok(&host, &["metrics"]);
    gatectl_ok(&host, &["metrics"]);
    let records = denied_records(&host);
    assert_eq!(records.len(), 2, "{records:#?}");
    assert!(
        records[1]["denied_agent"].as_u64().unwrap() >= 300,
        "{records:#?}"
    );
    // 600 denied attempts left at most a handful of journal lines about alice.
    let lines = host.run_ok(&["journalctl", "--no-pager", "-o", "cat", "GATE_SLUG=alice"]);
    assert!(lines.lines().count() < 20, "{lines}");

    // The timer's service writes the file at metrics_path, readable by
    // node_exporter.
    install_unit(&host, "units/gatectl-metrics.service");
    install_unit(&host, "units/gatectl-metrics.timer");
    host.run_ok(&["systemctl", "daemon-reload"]);
    host.run_ok(&["systemctl", "start", "gatectl-metrics.service"]);
    let path = "/var/lib/gatectl-test/textfile/gatectl.prom";
    let mode = host.run_ok(&["stat", "-c", "%a", path]);
    assert_eq!(mode.trim(), "644");
    let samples = parse_metrics(&host, &host.read_file(path));
    assert_eq!(sample(&samples, "gatectl_gate_up{slug=\"alice\"}"), 1);
    host.run_ok(&["systemctl", "enable", "--now", "gatectl-metrics.timer"]);
    let timers = host.run_ok(&[
        "systemctl",
        "list-timers",
        "--all",
        "--no-pager",
        "gatectl-metrics.timer",
    ]);
    assert!(timers.contains("gatectl-metrics.service"), "{timers}");

    // A reload applies the gate netns's table anew, which zeroes its
    // counters: what was denied since the last run is recorded first.
    assert_eq!(denied_records(&host).len(), 2);
    flood_closed_port(&host, 20);
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\nUser = \"root\"\n\
          [[ssh]]\nHost = \"up2\"\nHostname = \"upstream.test\"\nPort = 2222\n",
        0o644,
    );
    gatectl_ok(&host, &["reload", "alice"]);
    let records = denied_records(&host);
    assert_eq!(records.len(), 3, "{records:#?}");
    assert!(records[2]["denied_agent"].as_u64().unwrap() >= 20, "{records:#?}");
    // What was denied after that is recorded by the stop, which takes the
    // table and its counters away; the counts kept go too.
    flood_closed_port(&host, 50);
    gatectl_ok(&host, &["stop", "alice"]);
    let records = denied_records(&host);
    assert_eq!(records.len(), 4, "{records:#?}");
    assert!(records[3]["denied_agent"].as_u64().unwrap() >= 50, "{records:#?}");
    assert!(records[3]["denied_agent"].as_u64().unwrap() < 70, "{records:#?}");
    assert_eq!(records[3]["denied_agent_ports"], serde_json::json!([31000]));
    assert!(host
        .exec(&["test", "-e", "/run/gatectl/denied/alice.json"])
        .status
        .code()
        .is_some_and(|c| c == 1));
}

/// Connections the audit test opens to a refusing upstream.
const BURST: usize = 300;

/// Sessions the audit test holds open when the gate stops.
const HELD: usize = 4;

/// gatectl's connection records of alice (`gatectl log --json`), once there
/// are `expected` of the `outcome` (or the deadline passed).
fn connection_records(host: &TestHost, outcome: &str, expected: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log: Value = serde_json::from_str(&gatectl_ok(host, &["log", "alice", "--json"])).unwrap();
        let records: Vec<Value> = log["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "connection" && e["outcome"] == outcome)
            .cloned()
            .collect();
        if records.len() >= expected || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_connection_is_recorded_once_and_a_stop_writes_the_last_records() {
    if !require_root() {
        return;
    }
    let (host, _sshd) = setup("audit");
    serve_echo(&host, Some("upstream"), "10.99.2.1", 7007);
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"agent_netns = \"agent\"\n\
          [[ssh]]\nHost = \"down\"\nHostname = \"10.99.2.1\"\nPort = 2222\n\
          [[ssh]]\nHost = \"echo\"\nHostname = \"10.99.2.1\"\nPort = 7007\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);

    // A burst of connections, 4 at a time, each refused by the upstream (the
    // gate tells the client so, then closes): one record each.
    let script = format!(
        "for j in 1 2 3 4; do (for i in $(seq {}); do \
           (exec 3<>/dev/tcp/10.231.0.1/30000; cat <&3 >/dev/null); done) & done; wait",
        BURST / 4
    );
    let out = bash_in(&host, "agent", 120, &script);
    assert!(out.status.success(), "{}", text(&out));
    let status = status_when(&host, |c| c["total"] == BURST && c["active"] == 0);
    assert_eq!(status["counters"]["refused"]["upstream"], BURST, "{status:#}");
    let records = connection_records(&host, "connect_failed", BURST);
    // No record twice either: what arrived late is counted too.
    std::thread::sleep(Duration::from_secs(1));
    let records_now = connection_records(&host, "connect_failed", BURST);
    assert_eq!(
        (records.len(), records_now.len()),
        (BURST, BURST),
        "one record per connection"
    );
    let mut peers: Vec<&str> = records.iter().map(|r| r["peer"].as_str().unwrap()).collect();
    peers.sort_unstable();
    peers.dedup();
    assert_eq!(peers.len(), BURST, "a record per client port");
    for record in &records {
        assert_eq!(
            (
                &record["slug"],
                &record["alias"],
                &record["upstream"],
                &record["bytes_up"]
            ),
            (
                &Value::from("alice"),
                &Value::from("down"),
                &Value::Null,
                &Value::from(0)
            ),
            "{record:#}"
        );
        assert!(
            record["peer"].as_str().unwrap().starts_with("10.231.0.0:"),
            "{record:#}"
        );
        assert!(record["duration_ms"].is_u64(), "{record:#}");
        assert!(
            record["error"].as_str().unwrap().contains("10.99.2.1:2222"),
            "{record:#}"
        );
        assert!(
            record["message"]
                .as_str()
                .unwrap()
                .starts_with("down: 10.231.0.0:"),
            "{record:#}"
        );
    }

    // Sessions open when the gate stops: each is recorded as aborted by the
    // stopping forwarder, which writes out its last records before it exits.
    let held = host
        .command(&[
            "ip",
            "netns",
            "exec",
            "agent",
            "bash",
            "-c",
            &format!(
                "for i in $(seq {HELD}); do (sleep 60 | socat - TCP:10.231.0.1:30001 >/dev/null) & done; wait"
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    status_when(&host, |c| c["active"] == HELD);
    gatectl_ok(&host, &["stop", "alice"]);
    let aborted = connection_records(&host, "aborted", HELD);
    assert_eq!(aborted.len(), HELD, "{aborted:#?}");
    assert!(
        aborted
            .iter()
            .all(|r| r["alias"] == "echo" && r["upstream"] == "10.99.2.1:7007"),
        "{aborted:#?}"
    );
    // (its sleeps end with the throwaway host)
    let mut held = held;
    let _ = held.kill();
    let _ = held.wait();
}
