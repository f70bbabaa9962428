//! Hostile input through the real binary, in one throwaway systemd host: a
//! table of bad slugs, manifests, files and settings. Each row runs `gatectl
//! start` (and `gatectl plan` where that reads the same input) and asserts
//! the exit code, that stderr names the problem and the fix, and that nothing
//! on the host changed: netns, links, nftables ruleset, `gate-*` units and
//! gatectl's state directory are the same before and after. A healthy gate
//! runs throughout, and some rows target its slug: a bad input for a running
//! gate must leave it running.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use common::gatectl::{gatectl, gatectl_ok, host_state, text, GATECTL};
use common::{require_root, TestHost};

/// Where rows put their input files inside the host.
const DIR: &str = "/root/hostile";

/// How a row prepares its manifest at `<DIR>/<row name>.<ext>`.
enum Input {
    /// No file (the row's arguments say everything).
    Nothing,
    /// A file with these bytes.
    File(Vec<u8>),
    /// A shell script run with `$M` set to the manifest path (fixtures only).
    Script(&'static str),
}

/// One bad input and what gatectl must say about it.
struct Row {
    /// Unique name; also the manifest's file name.
    name: &'static str,
    /// The manifest's extension.
    ext: &'static str,
    /// The manifest.
    input: Input,
    /// The slug to pass (may itself be the bad input).
    slug: String,
    /// Extra arguments after `--manifest FILE` (or instead of it, see `manifest_arg`).
    extra: Vec<&'static str>,
    /// Whether to pass `--manifest <file>`.
    manifest_arg: bool,
    /// Host settings (`GATECTL_CONFIG`) for this row only.
    settings: Option<&'static str>,
    /// Whether `plan` refuses it too (it does not open the agent netns).
    plan_refuses: bool,
    /// Expected exit code: 1 bad input, 2 usage.
    code: i32,
    /// Substrings stderr must contain: the problem and the fix.
    want: Vec<&'static str>,
}

/// A row with a TOML manifest `text`, started as slug `bob`, expected to
/// fail with exit 1 and stderr containing `want`.
fn toml_row(name: &'static str, text: &str, want: &[&'static str]) -> Row {
    Row {
        name,
        ext: "toml",
        input: Input::File(text.as_bytes().to_vec()),
        slug: "bob".into(),
        extra: vec![],
        manifest_arg: true,
        settings: None,
        plan_refuses: true,
        code: 1,
        want: want.to_vec(),
    }
}

/// A row whose bad input is the slug itself (a clap usage error, exit 2).
fn slug_row(name: &'static str, slug: String, want: &[&'static str]) -> Row {
    Row {
        slug,
        input: Input::Nothing,
        manifest_arg: false,
        code: 2,
        ..toml_row(name, "", want)
    }
}

/// An ssh entry with one extra line.
fn entry(extra: &str) -> String {
    format!("[[ssh]]\nHost = \"up\"\nHostname = \"192.0.2.1\"\n{extra}\n")
}

fn rows() -> Vec<Row> {
    const FIX_SLUG: &str = "a slug is 1 to 32 characters of a-z, 0-9 and '-'";
    const FIX_HOSTNAME: &str = "give a DNS name (letters, digits, '-' and '.') or an IP address";
    const FIX_ALIAS: &str = "use only letters, digits, '.', '_' and '-'";
    const FIX_PORT: &str = "is not a number from 1 to 65535";
    const FIX_FILE: &str = "point --manifest at a .toml or .json file";
    let mut rows = vec![
        // Slugs: refused by the argument parser, before anything is read.
        slug_row(
            "slug-traversal",
            "../../etc/passwd".into(),
            &["invalid slug \"../../etc/passwd\"", "starts with '.'", FIX_SLUG],
        ),
        slug_row(
            "slug-slash",
            "a/../../run".into(),
            &["invalid slug", "contains '/'", FIX_SLUG],
        ),
        slug_row(
            "slug-too-long",
            "a".repeat(33),
            &["invalid slug", "33 characters long", FIX_SLUG],
        ),
        slug_row(
            "slug-metachar",
            "a;rm -rf".into(),
            &["invalid slug", "contains ';'", FIX_SLUG],
        ),
        slug_row("slug-unicode", "ünï".into(), &["invalid slug", "starts with 'ü'", FIX_SLUG]),
        // Shell and ssh_config metacharacters.
        toml_row(
            "hostname-shell",
            "[[ssh]]\nHost = \"up\"\nHostname = \"h;rm -rf /\"\n",
            &["ssh entry 1 (Hostname)", "contains ';'", FIX_HOSTNAME],
        ),
        toml_row(
            "hostname-subst",
            "[[ssh]]\nHost = \"up\"\nHostname = \"$(id)\"\n",
            &["ssh entry 1 (Hostname)", "contains '$'", FIX_HOSTNAME],
        ),
        toml_row(
            "hostname-newline",
            "[[ssh]]\nHost = \"up\"\nHostname = \"h\\nProxyCommand sh -c id\"\n",
            &["ssh entry 1 (Hostname)", "contains '\\n'", FIX_HOSTNAME],
        ),
        toml_row(
            "hostname-option",
            "[[ssh]]\nHost = \"up\"\nHostname = \"-oProxyCommand=id\"\n",
            &["ssh entry 1 (Hostname)", "contains '='", FIX_HOSTNAME],
        ),
        toml_row(
            "host-wildcard",
            "[[ssh]]\nHost = \"*\"\nHostname = \"192.0.2.1\"\n",
            &["ssh entry 1 (Host)", "contains '*'", FIX_ALIAS],
        ),
        toml_row(
            "host-space",
            "[[ssh]]\nHost = \"up ProxyCommand\"\nHostname = \"192.0.2.1\"\n",
            &["ssh entry 1 (Host)", "contains ' '", FIX_ALIAS],
        ),
        toml_row(
            "host-token",
            "[[ssh]]\nHost = \"%h\"\nHostname = \"192.0.2.1\"\n",
            &["ssh entry 1 (Host)", "contains '%'", FIX_ALIAS],
        ),
        toml_row(
            "user-token",
            &entry("User = \"%d\""),
            &["ssh entry 1 (User)", "letters, digits, '.', '_' and '-'"],
        ),
        // Ports.
        toml_row("port-0", &entry("Port = 0"), &["ssh entry 1 (Port): port 0", FIX_PORT]),
        toml_row(
            "port-65536",
            &entry("Port = 65536"),
            &["ssh entry 1 (Port): port 65536", FIX_PORT],
        ),
        toml_row("port-negative", &entry("Port = -1"), &["ssh entry 1 (Port): port -1", FIX_PORT]),
        toml_row(
            "port-injection",
            &entry("Port = \"22; rm\""),
            &["ssh entry 1 (Port): port \"22; rm\"", FIX_PORT],
        ),
        toml_row(
            "port-float",
            &entry("Port = 22.5"),
            &["ssh entry 1 (Port): port 22.5", FIX_PORT],
        ),
        // Structure.
        toml_row(
            "duplicate-alias",
            "[[ssh]]\nHost = \"up\"\nHostname = \"192.0.2.1\"\n[[ssh]]\nHost = \"UP\"\nHostname = \"192.0.2.2\"\n",
            &["ssh entry 2 (Host)", "declared twice", "give each entry its own Host"],
        ),
        toml_row(
            "empty-ssh-list",
            "ssh = []\n",
            &["no ssh entries", "add at least one [[ssh]] table"],
        ),
        toml_row(
            "ssh-not-a-list",
            "[ssh]\nHost = \"up\"\nHostname = \"192.0.2.1\"\n",
            &["ssh must be a list of entries, not a table", "[[ssh]]"],
        ),
        toml_row(
            "unknown-entry-key",
            &entry("ProxyCommand = \"sh -c id\""),
            &["unknown field `ProxyCommand`", "expected one of"],
        ),
        toml_row(
            "wrong-type",
            "[[ssh]]\nHost = 5\nHostname = \"192.0.2.1\"\n",
            &["ssh entry 1 (Host): must be a string, not an integer"],
        ),
        toml_row(
            "toml-syntax",
            "[[ssh]]\nHost = \"up\nHostname = \"192.0.2.1\"\n",
            &["(line 2)"],
        ),
        toml_row(
            "agent-netns-traversal",
            &format!("agent_netns = \"../../proc/1/ns/net\"\n{}", entry("")),
            &["agent_netns", "neither a name", "nor an absolute path"],
        ),
        Row {
            ext: "json",
            ..toml_row("json-array", "[[\"agent\"], []]", &["must be an object", "{\"ssh\": [...]}"])
        },
        Row {
            ext: "yaml",
            ..toml_row("unknown-format", "ssh: []\n", &["unknown format", "name it *.toml or *.json"])
        },
        // An agent netns gatectl would own must be a name it may delete.
        toml_row(
            "own-agent-netns-path",
            &format!("agent_netns = \"/proc/1/ns/net\"\nown_agent_netns = true\n{}", entry("")),
            &[
                "own_agent_netns: gatectl owns only a named netns under /run/netns, not the path \"/proc/1/ns/net\"",
                "give agent_netns a name, or leave it out for agent-<slug>",
            ],
        ),
        toml_row(
            "own-agent-netns-not-bool",
            &format!("own_agent_netns = \"yes\"\n{}", entry("")),
            &["own_agent_netns: must be true or false, not a string"],
        ),
        // Upstreams that lead back into gatectl or the host, or to no host.
        toml_row(
            "upstream-internal-pool",
            "[[ssh]]\nHost = \"up\"\nHostname = \"10.231.0.1\"\n",
            &[
                "ssh entry 1 (up): upstream 10.231.0.1 is inside gatectl's internal_pool 10.231.0.0/16",
                "declare the real host's address",
            ],
        ),
        toml_row(
            "upstream-egress-pool",
            "[[ssh]]\nHost = \"up\"\nHostname = \"10.232.0.3\"\n",
            &["ssh entry 1 (up): upstream 10.232.0.3 is inside gatectl's egress_pool 10.232.0.0/16"],
        ),
        toml_row(
            "upstream-unspecified",
            "[[ssh]]\nHost = \"up\"\nHostname = \"0.0.0.0\"\n",
            &["ssh entry 1 (up): upstream 0.0.0.0 is an unspecified address, not a host"],
        ),
        toml_row(
            "upstream-unspecified-v6",
            "[[ssh]]\nHost = \"up\"\nHostname = \"::\"\n",
            &["ssh entry 1 (up): upstream :: is an unspecified address, not a host"],
        ),
        toml_row(
            "upstream-broadcast",
            "[[ssh]]\nHost = \"up\"\nHostname = \"255.255.255.255\"\n",
            &["upstream 255.255.255.255 is the broadcast address, not a host"],
        ),
        toml_row(
            "upstream-multicast",
            "[[ssh]]\nHost = \"up\"\nHostname = \"224.0.0.1\"\n",
            &["upstream 224.0.0.1 is a multicast address, not a host"],
        ),
        toml_row(
            "upstream-loopback",
            "[[ssh]]\nHost = \"up\"\nHostname = \"127.0.0.1\"\n",
            &[
                "upstream 127.0.0.1 is a loopback address",
                "declare one of the host's own addresses",
            ],
        ),
        toml_row(
            "upstream-loopback-name",
            "[[ssh]]\nHost = \"up\"\nHostname = \"localhost\"\n",
            &["ssh entry 1 (up): upstream localhost resolves to", "which is a loopback address"],
        ),
        toml_row(
            "upstream-metadata",
            "[[ssh]]\nHost = \"meta\"\nHostname = \"169.254.169.254\"\n",
            &[
                "ssh entry 1 (meta): upstream 169.254.169.254 is link-local",
                "set allow_link_local = true in /etc/gatectl/gatectl.toml",
            ],
        ),
        toml_row(
            "upstream-ipv6-only",
            "[[ssh]]\nHost = \"six\"\nHostname = \"2001:db8::5\"\n",
            &[
                "ssh entry 1 (six): upstream 2001:db8::5 has IPv6 addresses only, but this host has no IPv6 \
                 default route, so no gate could reach it",
                "declare a host name or address with IPv4",
            ],
        ),
        // More entries than a gate serves.
        toml_row(
            "too-many-entries",
            &(0..1025).map(|i| entry("").replace("\"up\"", &format!("\"up{i}\""))).collect::<String>(),
            &["1025 ssh entries: a gate serves at most 1024", "give the hosts to more than one agent"],
        ),
        // More entries than the port range allows.
        Row {
            settings: Some("base_port = 65530\n"),
            ..toml_row(
                "port-range",
                &(0..7).map(|i| entry("").replace("\"up\"", &format!("\"up{i}\""))).collect::<String>(),
                &[
                    "7 ssh entries from base port 65530 would need port 65536",
                    "declare fewer entries or lower base_port",
                ],
            )
        },
        // Files.
        toml_row(
            "invalid-utf8",
            "",
            &["is not valid UTF-8 (byte 22)", "save it as UTF-8"],
        ),
        Row {
            input: Input::Script("head -c 10485760 /dev/zero | tr '\\0' '#' > \"$M\""),
            ..toml_row("ten-mib", "", &["is larger than 1024 KiB", "check the file"])
        },
        Row {
            input: Input::Script("ln -s /dev/zero \"$M\""),
            ..toml_row(
                "symlink-dev-zero",
                "",
                &["is a FIFO, socket or device, not a regular file", FIX_FILE],
            )
        },
        Row {
            input: Input::Script("mkfifo \"$M\""),
            ..toml_row("fifo", "", &["is a FIFO, socket or device, not a regular file", FIX_FILE])
        },
        Row {
            input: Input::Script("mkdir \"$M\""),
            ..toml_row("directory", "", &["is a directory, not a regular file", FIX_FILE])
        },
        // Unreadable even for root: /proc/sys enforces its mode bits (0200)
        // on root too, so open(O_RDONLY) fails with EACCES.
        Row {
            input: Input::Script("test -f /proc/sys/vm/drop_caches && ln -s /proc/sys/vm/drop_caches \"$M\""),
            ..toml_row(
                "unreadable",
                "",
                &["cannot open manifest", "check the path and its permissions", "Permission denied"],
            )
        },
        Row {
            input: Input::Script("ln -s /nonexistent/bottle.toml \"$M\""),
            ..toml_row(
                "dangling-symlink",
                "",
                &["dangling-symlink.toml does not exist; check the path"],
            )
        },
        Row {
            manifest_arg: false,
            slug: "nobody".into(),
            ..toml_row(
                "no-manifest",
                "",
                &["no manifest for \"nobody\"", "write one or pass --manifest FILE"],
            )
        },
        // The agent's network namespace does not exist.
        Row {
            ..toml_row(
                "agent-netns-missing",
                &format!("agent_netns = \"no-such-agent\"\n{}", entry("")),
                &["agent netns /run/netns/no-such-agent does not exist; create it with `ip netns add no-such-agent`"],
            )
        },
        Row {
            extra: vec!["--agent-netns", "/run/netns/no-such-agent"],
            ..toml_row(
                "agent-netns-flag-missing",
                &entry(""),
                &["agent netns /run/netns/no-such-agent does not exist; create it with `ip netns add no-such-agent`"],
            )
        },
        // Namespaces an agent must not be given.
        Row {
            plan_refuses: false,
            ..toml_row(
                "agent-netns-host",
                &format!("agent_netns = \"/proc/1/ns/net\"\n{}", entry("")),
                &[
                    "agent netns /proc/1/ns/net is the host's own network namespace",
                    "give the agent a namespace of its own (`ip netns add agent-bob`)",
                ],
            )
        },
        toml_row(
            "agent-netns-gate-name",
            &format!("agent_netns = \"gate-alice\"\n{}", entry("")),
            &[
                "agent_netns gate-alice: names starting with gate- are gatectl's gate netns",
                "give the agent's netns another name (e.g. agent-bob)",
            ],
        ),
        // The same netns by another path: the netns itself is recognised.
        Row {
            plan_refuses: false,
            ..toml_row(
                "agent-netns-gate",
                &format!("agent_netns = \"/var/run/netns/gate-alice\"\n{}", entry("")),
                &[
                    "agent netns /var/run/netns/gate-alice is the network namespace of a gatectl gate",
                    "give the agent a namespace of its own (`ip netns add agent-bob`)",
                ],
            )
        },
        // gatectl owns (and deletes at stop) only a netns it created.
        Row {
            plan_refuses: false,
            input: Input::Script(
                "ip netns add spare && printf 'agent_netns = \"spare\"\\nown_agent_netns = true\\n\
                 [[ssh]]\\nHost = \"up\"\\nHostname = \"192.0.2.1\"\\n' > \"$M\"",
            ),
            ..toml_row(
                "own-agent-netns-existing",
                "",
                &[
                    "agent netns /run/netns/spare exists and gatectl did not create it for bob",
                    "remove own_agent_netns, or name a netns that does not exist yet",
                ],
            )
        },
        Row {
            plan_refuses: false,
            ..toml_row(
                "agent-netns-taken",
                &format!("agent_netns = \"agent\"\n{}", entry("")),
                &[
                    "agent netns /run/netns/agent already holds gate0, the agent end of gate alice",
                    "give this gate another one, or stop the gate that uses it",
                ],
            )
        },
        Row {
            extra: vec!["--agent-netns", "../x"],
            ..toml_row("agent-netns-flag-traversal", &entry(""), &["--agent-netns", "neither a name"])
        },
    ];
    // Invalid UTF-8 after 22 valid bytes.
    for row in &mut rows {
        if row.name == "invalid-utf8" {
            let mut bytes = b"[[ssh]]\nHost = \"up\"\nHo".to_vec();
            bytes.extend_from_slice(b"\xff\xfestname = \"192.0.2.1\"\n");
            row.input = Input::File(bytes);
        }
    }
    // Bad manifests for the slug of the running gate leave that gate alone.
    for name in [
        "hostname-shell",
        "port-injection",
        "duplicate-alias",
        "symlink-dev-zero",
    ] {
        rows.iter_mut().find(|r| r.name == name).unwrap().slug = "alice".into();
    }
    rows
}

/// Everything a bad input must not change.
struct Snapshot {
    state: String,
}

fn snapshot(host: &TestHost) -> Snapshot {
    Snapshot {
        state: host_state(host),
    }
}

/// What changed between two snapshots, if anything.
fn changes(before: &Snapshot, after: &Snapshot) -> Option<String> {
    (before.state != after.state).then(|| first_difference(&before.state, &after.state))
}

/// The first line where two snapshots differ, for the failure message.
fn first_difference(before: &str, after: &str) -> String {
    let (b, a): (Vec<_>, Vec<_>) = (before.lines().collect(), after.lines().collect());
    for i in 0..b.len().max(a.len()) {
        if b.get(i) != a.get(i) {
            return format!("before: {:?}\nafter:  {:?}", b.get(i), a.get(i));
        }
    }
    String::new()
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    if !require_root() {
        return;
    }
    let host = TestHost::boot("hostile-input");
    host.install_binary(std::path::Path::new(env!("CARGO_BIN_EXE_gatectl")), GATECTL);
    host.add_netns("agent");
    host.run_ok(&["mkdir", "-p", "/etc/gatectl/bottles", DIR]);

    // A healthy gate, running throughout.
    host.write_file(
        "/etc/gatectl/bottles/alice.toml",
        b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"up\"\nHostname = \"192.0.2.1\"\n",
        0o644,
    );
    gatectl_ok(&host, &["start", "alice"]);

    let mut failures = Vec::new();
    for row in rows() {
        let path = format!("{DIR}/{}.{}", row.name, row.ext);
        match &row.input {
            Input::Nothing => {}
            Input::File(bytes) => host.write_file(&path, bytes, 0o644),
            Input::Script(script) => {
                host.run_ok(&["env", &format!("M={path}"), "sh", "-c", script]);
            }
        }
        let settings = row.settings.map(|text| {
            let settings = format!("{DIR}/{}.settings.toml", row.name);
            host.write_file(&settings, text.as_bytes(), 0o644);
            format!("GATECTL_CONFIG={settings}")
        });
        let commands: &[&str] = if row.plan_refuses {
            &["start", "plan"]
        } else {
            &["start"]
        };
        for command in commands {
            let before = snapshot(&host);
            // `timeout`: a FIFO or a device must never make gatectl wait.
            let mut argv = vec!["timeout", "20", "env"];
            argv.extend(settings.as_deref());
            argv.extend([GATECTL, command, &row.slug]);
            if row.manifest_arg {
                argv.extend(["--manifest", &path]);
            }
            argv.extend(&row.extra);
            let out = host.exec(&argv);
            let after = snapshot(&host);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let what = format!("row {} ({command})", row.name);
            if out.status.code() != Some(row.code) {
                failures.push(format!("{what}: want exit {}, got {}", row.code, text(&out)));
            }
            for want in &row.want {
                if !stderr.contains(want) {
                    failures.push(format!("{what}: stderr lacks {want:?}: {stderr:?}"));
                }
            }
            if row.code == 1 && stderr.trim_end().lines().count() != 1 {
                failures.push(format!("{what}: the error is not one line: {stderr:?}"));
            }
            if !out.stdout.is_empty() {
                failures.push(format!("{what}: printed to stdout: {}", text(&out)));
            }
            if let Some(change) = changes(&before, &after) {
                failures.push(format!("{what}: the host changed:\n{change}"));
            }
        }
    }

    // The healthy gate is still running and whole.
    let status = gatectl(&host, &["status", "alice"]);
    if status.status.code() != Some(0) {
        failures.push(format!("gate alice is no longer running: {}", text(&status)));
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    gatectl_ok(&host, &["stop", "alice"]);
}
