//! A gate's transient units: pure functions from a gate plan to the systemd
//! properties passed to `StartTransientUnit`, with their D-Bus types. The
//! socket unit `gate-<slug>.socket` holds the listening sockets; the
//! forwarder `gate-<slug>.service`, its auxiliary unit, is started by
//! systemd at the first connection and handed the sockets.
//!
//! The forwarder's sandbox ([`hardening`]) does not depend on the plan. It
//! is set twice: in the transient unit, and in a drop-in for every
//! `gate-*.service` ([`hardening_dropin`], shipped by the package and
//! written by `start` when missing). systemd 252 writes some transient
//! settings back wrongly (`RestrictNamespaces=yes` becomes an empty
//! assignment, i.e. `no`) and re-reads them at every `daemon-reload`; the
//! drop-in is read after the transient file, so it wins.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::LazyLock;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use zbus::zvariant::{OwnedValue, Signature, Type, Value};

use crate::config::Settings;
use crate::error::{Context, Result};
use crate::forward::routes_file::MOUNT;
use crate::forward::{ForwardRoute, RoutesFile};
use crate::plan::{GatePlan, MAX_ENTRIES};
use crate::state;

/// `AF_INET` as systemd's `IPAddressAllow=` wire format wants it.
const AF_INET: i32 = libc::AF_INET;
/// `AF_INET6`, likewise.
const AF_INET6: i32 = libc::AF_INET6;

/// One command line of `ExecStart=`: binary path, full argv, ignore-failure flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ExecCommand {
    /// Absolute path of the binary.
    pub path: String,
    /// The argument vector, argv\[0\] included. Never passed through a shell.
    pub argv: Vec<String>,
    /// Whether a failing exit status is ignored (never, here).
    pub ignore_failure: bool,
}

/// A typed unit property value, in the D-Bus shape systemd expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PropertyValue {
    /// `s`
    Str(String),
    /// `b`
    Bool(bool),
    /// `t`
    U64(u64),
    /// `u`
    U32(u32),
    /// `i`
    I32(i32),
    /// `as`
    Strings(Vec<String>),
    /// `a(sasb)`, for `ExecStart=`.
    Exec(Vec<ExecCommand>),
    /// `(bas)`: an allow (true) or deny (false) list, for
    /// `RestrictAddressFamilies=` and `SystemCallFilter=`.
    List {
        /// true: allow only these; false: deny these.
        allow: bool,
        /// The families or system call groups.
        items: Vec<String>,
    },
    /// `a(iayu)`, for `IPAddressAllow=`/`IPAddressDeny=`.
    Prefixes(#[schemars(with = "Vec<String>")] Vec<IpNet>),
    /// `a(ss)`: pairs of strings, for a socket unit's `Listen` (kind,
    /// address: (`Stream`, `10.231.0.1:30000`) for
    /// `ListenStream=10.231.0.1:30000`).
    Pairs(Vec<(String, String)>),
    /// `a(ssbt)`, for `BindReadOnlyPaths=`: source, destination, whether a
    /// missing source is ignored, mount flags.
    Binds(Vec<(String, String, bool, u64)>),
}

impl PropertyValue {
    /// The D-Bus signature of this value.
    pub fn signature(&self) -> &'static str {
        match self {
            PropertyValue::Str(_) => "s",
            PropertyValue::Bool(_) => "b",
            PropertyValue::U64(_) => "t",
            PropertyValue::U32(_) => "u",
            PropertyValue::I32(_) => "i",
            PropertyValue::Strings(_) => "as",
            PropertyValue::Exec(_) => "a(sasb)",
            PropertyValue::List { .. } => "(bas)",
            PropertyValue::Prefixes(_) => "a(iayu)",
            PropertyValue::Pairs(_) => "a(ss)",
            PropertyValue::Binds(_) => "a(ssbt)",
        }
    }

    /// The value as a D-Bus variant body.
    pub fn to_value(&self) -> Value<'static> {
        match self {
            PropertyValue::Str(s) => Value::from(s.clone()),
            PropertyValue::Bool(b) => Value::from(*b),
            PropertyValue::U64(n) => Value::from(*n),
            PropertyValue::U32(n) => Value::from(*n),
            PropertyValue::I32(n) => Value::from(*n),
            PropertyValue::Strings(v) => Value::from(v.clone()),
            PropertyValue::Exec(cmds) => Value::from(
                cmds.iter()
                    .map(|c| (c.path.clone(), c.argv.clone(), c.ignore_failure))
                    .collect::<Vec<_>>(),
            ),
            PropertyValue::List { allow, items } => Value::from((*allow, items.clone())),
            PropertyValue::Prefixes(prefixes) => Value::from(
                prefixes
                    .iter()
                    .map(|p| match p.addr() {
                        IpAddr::V4(a) => (AF_INET, a.octets().to_vec(), u32::from(p.prefix_len())),
                        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec(), u32::from(p.prefix_len())),
                    })
                    .collect::<Vec<_>>(),
            ),
            PropertyValue::Pairs(pairs) => Value::from(pairs.clone()),
            PropertyValue::Binds(binds) => Value::from(binds.clone()),
        }
    }
}

/// A named unit property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Property {
    /// systemd's property name, e.g. `ExecStart`.
    pub name: &'static str,
    /// Its value.
    pub value: PropertyValue,
}

fn prop(name: &'static str, value: PropertyValue) -> Property {
    Property { name, value }
}

fn yes(name: &'static str) -> Property {
    prop(name, PropertyValue::Bool(true))
}

fn text(name: &'static str, value: &str) -> Property {
    prop(name, PropertyValue::Str(value.to_string()))
}

/// The argv of `gatectl forward` for this plan: its routes come from the
/// gate's routes file (see [`forward_routes`]), bound into its sandbox.
pub fn forwarder_argv(plan: &GatePlan, settings: &Settings) -> Vec<String> {
    vec![
        settings.forwarder_binary.display().to_string(),
        "forward".to_string(),
        "--slug".to_string(),
        plan.slug.to_string(),
        "--listen".to_string(),
        plan.gate_internal.address.to_string(),
        "--max-connections".to_string(),
        settings.max_connections.to_string(),
        "--connect-timeout".to_string(),
        settings.connect_timeout_secs.to_string(),
        "--routes-file".to_string(),
        RoutesFile::mounted_path().display().to_string(),
        "--idle-exit".to_string(),
        settings.forwarder_idle_secs.to_string(),
    ]
}

/// The forwarder's routes for this plan: one per upstream, on its listen
/// port, to its resolved addresses in order.
pub fn forward_routes(plan: &GatePlan) -> Vec<ForwardRoute> {
    plan.upstreams
        .iter()
        .map(|u| ForwardRoute {
            listen_port: u.listen_port,
            alias: u.alias.clone(),
            upstreams: u.addresses.iter().map(|a| (*a, u.port).into()).collect(),
        })
        .collect()
}

/// Addresses the forwarder's sockets may talk to: the internal /31 and every
/// resolved upstream address.
pub fn allowed_prefixes(plan: &GatePlan) -> Vec<IpNet> {
    let mut allowed = vec![internal_prefix(plan)];
    for address in plan.upstreams.iter().flat_map(|u| &u.addresses) {
        let prefix = IpNet::from(address.to_canonical());
        if !allowed.contains(&prefix) {
            allowed.push(prefix);
        }
    }
    allowed
}

/// The prefixes of an `IPAddressAllow=` value as systemd reports it
/// (`a(iayu)`); an entry that is no address is skipped.
pub fn prefixes_of(value: &OwnedValue) -> Vec<IpNet> {
    let Ok(entries) = value.try_clone().and_then(<Vec<(i32, Vec<u8>, u32)>>::try_from) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|(family, bytes, len)| {
            let address = match (family, bytes.len()) {
                (AF_INET, 4) => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
                (AF_INET6, 16) => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
                _ => return None,
            };
            IpNet::new(address, u8::try_from(len).ok()?).ok()
        })
        .collect()
}

/// The `IPAddressAllow=` property that adds `prefixes` to what a running
/// unit allows (set at run time, a list is added to).
pub fn allow_also(prefixes: Vec<IpNet>) -> Property {
    prop("IPAddressAllow", PropertyValue::Prefixes(prefixes))
}

/// journald's rate limit on the forwarder's messages, its audit records
/// included: [`LOG_RATE_LIMIT_BURST`] per this interval (journald's default
/// interval). Beyond it journald drops the gate's messages until the
/// interval ends and then logs how many (`Suppressed N messages from
/// gate-<slug>.service`); the forwarder's counters still count every
/// connection. See docs/security.md, "What is logged and where".
const LOG_RATE_LIMIT_INTERVAL_USEC: u64 = 30_000_000;

/// The messages the forwarder may log per [`LOG_RATE_LIMIT_INTERVAL_USEC`]:
/// three times journald's default, so that a burst of connections at the
/// forwarder's full speed for seconds is recorded in full, while a flood
/// kept up for longer costs the journal 1,000 records a second on average
/// (journald scales the burst up to 5 times with the free space of the
/// journal's file system, the same for every unit).
const LOG_RATE_LIMIT_BURST: u32 = 30_000;

/// Bytes of memory the forwarder may use: a base plus a per-connection share.
fn memory_max(settings: &Settings) -> u64 {
    32 * 1024 * 1024 + u64::from(settings.max_connections) * 256 * 1024
}

/// The full property list of the forwarder's transient unit, started from
/// the socket unit with the listening sockets as `LISTEN_FDS`: what the
/// plan decides, then the [`hardening`].
pub fn properties(plan: &GatePlan, settings: &Settings) -> Vec<Property> {
    let argv = forwarder_argv(plan, settings);
    let exec = ExecCommand {
        path: argv[0].clone(),
        argv,
        ignore_failure: false,
    };
    let netns_path = plan.netns_path();
    let [description, documentation] = described(plan, "");
    let mut properties = vec![
        description,
        documentation,
        prop("ExecStart", PropertyValue::Exec(vec![exec])),
        text("Type", "notify"),
        text("NotifyAccess", "main"),
        text("Restart", "on-failure"),
        prop("RestartUSec", PropertyValue::U64(200_000)),
        prop("TimeoutStopUSec", PropertyValue::U64(5_000_000)),
        text("CollectMode", "inactive-or-failed"),
        text("NetworkNamespacePath", &path_str(&netns_path)),
        prop("IPAddressAllow", PropertyValue::Prefixes(allowed_prefixes(plan))),
        // As many listening sockets as a gate may have entries (a reload may
        // add some), then two sockets and up to two splice pipes (two
        // descriptors each) per connection.
        prop(
            "LimitNOFILE",
            PropertyValue::U64(MAX_ENTRIES as u64 + u64::from(settings.max_connections) * 6 + 64),
        ),
        prop("MemoryMax", PropertyValue::U64(memory_max(settings))),
        prop(
            "LogRateLimitIntervalUSec",
            PropertyValue::U64(LOG_RATE_LIMIT_INTERVAL_USEC),
        ),
        prop("LogRateLimitBurst", PropertyValue::U32(LOG_RATE_LIMIT_BURST)),
    ];
    properties.extend(hardening().into_iter().map(|h| h.property));
    // Its own gate's routes directory, read-only, and nothing else of the
    // state directory (a second assignment adds to the list).
    let routes_dir = path_str(&state::routes_dir(&settings.state_dir, &plan.slug));
    properties.push(prop(
        "BindReadOnlyPaths",
        PropertyValue::Binds(vec![(routes_dir, MOUNT.to_string(), false, libc::MS_REC)]),
    ));
    properties
}

/// One setting of the forwarder's sandbox: the property `StartTransientUnit`
/// takes, and the same setting as a unit file line, for the drop-in.
pub struct Hardening {
    /// The D-Bus property.
    pub property: Property,
    /// `Name=value`, as `systemd.exec(5)` writes it.
    pub line: String,
}

/// The forwarder's sandbox: everything of its unit that does not depend on
/// the plan. Read-only OS, no home, private /tmp, /dev and IPC, a dynamic
/// user without capabilities, the kernel and clock protected, a system call
/// filter, and of the host's `/run` only the journal and notify sockets:
/// no system D-Bus, no systemd or resolver socket to talk to.
///
/// `/run` is hidden by binding the empty [`FORWARDER_RUN`] over it, not by
/// `TemporaryFileSystem=/run`: before mounting a tmpfs there, systemd 252
/// unmounts every mount below `/run` one at a time, reading the whole mount
/// table again after each, and each named netns (`/run/netns/*`, gatectl's
/// and the agents') is such a mount. With 4,000 of them a forwarder took
/// about 2 minutes to start; with the bind, about 4 s (BENCHMARKS.md).
pub fn hardening() -> Vec<Hardening> {
    let on = |name: &'static str| Hardening {
        property: yes(name),
        line: format!("{name}=yes"),
    };
    let set = |name: &'static str, value: PropertyValue, line: &str| Hardening {
        property: prop(name, value),
        line: format!("{name}={line}"),
    };
    let word = |name: &'static str, value: &str| set(name, PropertyValue::Str(value.into()), value);
    // MS_REC: a bind in a unit file is recursive unless it says `norbind`,
    // so the transient unit and the drop-in state the same mount.
    let binds = std::iter::once((FORWARDER_RUN.to_string(), "/run".to_string(), false, libc::MS_REC))
        .chain(
            HOST_SOCKETS
                .iter()
                .map(|path| (path.to_string(), path.to_string(), false, libc::MS_REC)),
        )
        .collect();
    vec![
        // With NetworkNamespacePath= set, systemd joins that netns instead of
        // creating one; PrivateNetwork= states that the forwarder sees no
        // host interface (and systemd-analyze security scores it so).
        on("PrivateNetwork"),
        on("DynamicUser"),
        set("CapabilityBoundingSet", PropertyValue::U64(0), ""),
        set("AmbientCapabilities", PropertyValue::U64(0), ""),
        on("NoNewPrivileges"),
        word("ProtectSystem", "strict"),
        word("ProtectHome", "yes"),
        on("PrivateTmp"),
        on("PrivateDevices"),
        on("PrivateIPC"),
        on("PrivateUsers"),
        on("ProtectKernelTunables"),
        on("ProtectKernelModules"),
        on("ProtectKernelLogs"),
        on("ProtectControlGroups"),
        on("ProtectClock"),
        on("ProtectHostname"),
        word("ProtectProc", "invisible"),
        word("ProcSubset", "pid"),
        // No namespace type may be created (the flags of allowed types: none).
        set("RestrictNamespaces", PropertyValue::U64(0), "yes"),
        on("RestrictRealtime"),
        on("RestrictSUIDSGID"),
        on("LockPersonality"),
        on("MemoryDenyWriteExecute"),
        set("UMask", PropertyValue::U32(0o077), "0077"),
        set(
            "RestrictAddressFamilies",
            PropertyValue::List {
                allow: true,
                items: vec!["AF_INET".into(), "AF_INET6".into(), "AF_UNIX".into()],
            },
            "AF_INET AF_INET6 AF_UNIX",
        ),
        set(
            "SystemCallFilter",
            PropertyValue::List {
                allow: true,
                items: vec!["@system-service".into()],
            },
            "@system-service",
        ),
        // A second assignment narrows the allow list (as in a unit file).
        set(
            "SystemCallFilter",
            PropertyValue::List {
                allow: false,
                items: vec!["@privileged".into(), "@resources".into()],
            },
            "~@privileged @resources",
        ),
        set("SystemCallErrorNumber", PropertyValue::I32(libc::EPERM), "EPERM"),
        set(
            "SystemCallArchitectures",
            PropertyValue::Strings(vec!["native".into()]),
            "native",
        ),
        set(
            "BindReadOnlyPaths",
            PropertyValue::Binds(binds),
            &format!("{FORWARDER_RUN}:/run {}", HOST_SOCKETS.join(" ")),
        ),
        deny_all(),
        set("TasksMax", PropertyValue::U64(16), "16"),
    ]
}

/// The [`hardening`] settings with the canonical text of the value each
/// sets, made once per process.
fn hardening_canonical() -> &'static [(Hardening, String)] {
    static HARDENING: LazyLock<Vec<(Hardening, String)>> = LazyLock::new(|| {
        hardening()
            .into_iter()
            .map(|h| {
                let text = canonical(&h.property.value.to_value());
                (h, text)
            })
            .collect()
    });
    &HARDENING
}

/// The properties of a forwarder unit that [`sandbox_drift`] checks, read
/// from systemd's answer to `GetAll` (`a{sv}`): the names of
/// [`hardening`]; the unit's other ~300 properties are skipped unparsed,
/// which is most of what `check` spent per gate.
#[derive(Debug, Default)]
pub struct SandboxProperties(pub HashMap<String, OwnedValue>);

impl Type for SandboxProperties {
    const SIGNATURE: &'static Signature = <HashMap<String, OwnedValue> as Type>::SIGNATURE;
}

impl<'de> Deserialize<'de> for SandboxProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        /// Keeps the properties a sandbox check reads.
        struct Wanted;
        impl<'de> Visitor<'de> for Wanted {
            type Value = SandboxProperties;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a dictionary of unit properties")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<SandboxProperties, A::Error> {
                let mut kept = HashMap::new();
                while let Some(name) = map.next_key::<&str>()? {
                    if hardening_canonical().iter().any(|(h, _)| h.property.name == name) {
                        kept.insert(name.to_string(), map.next_value::<OwnedValue>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(SandboxProperties(kept))
            }
        }
        deserializer.deserialize_map(Wanted)
    }
}

/// The [`hardening`] settings that `properties` (systemd's live view of the
/// forwarder unit) no longer has as gatectl set them, as `Name=value`
/// (what systemd holds) for a message. `SystemCallFilter=` is read back as
/// the expanded list of system calls, so it is checked for being an allow
/// list without the privileged calls instead.
pub fn sandbox_drift(properties: &HashMap<String, OwnedValue>) -> Vec<String> {
    let mut drift = Vec::new();
    for (h, wanted) in hardening_canonical() {
        let name = h.property.name;
        let actual: Option<&Value<'static>> = properties.get(name).map(|v| &**v);
        let holds = match actual {
            None => false,
            // The empty /run first; the gate's routes directory is bound
            // too, at its mount point.
            Some(actual) if name == "BindReadOnlyPaths" => {
                let binds = binds_of(actual);
                binds.contains(&(FORWARDER_RUN.to_string(), "/run".to_string()))
                    && binds.iter().all(|(source, destination)| {
                        HOST_SOCKETS.contains(&destination.as_str())
                            || destination == MOUNT
                            || (destination == "/run" && source == FORWARDER_RUN)
                    })
            }
            Some(actual) if name == "SystemCallFilter" => allows_without_privileged(actual),
            Some(actual) => *wanted == canonical(actual),
        };
        if !holds && !drift.iter().any(|d: &String| d.starts_with(&format!("{name}="))) {
            let shown = actual.map(canonical).unwrap_or_else(|| "(absent)".into());
            drift.push(format!("{name}={shown} (gatectl sets {})", h.line));
        }
    }
    drift
}

/// Whether a `SystemCallFilter=` value (`(bas)`, the list expanded to
/// system calls) is an allow list with `read` and without a call of
/// @privileged or @resources (`reboot`, `setrlimit`). Read in place: the
/// list has some 400 names, and `check` reads it for every gate.
fn allows_without_privileged(value: &Value<'_>) -> bool {
    match value {
        Value::Value(inner) => allows_without_privileged(inner),
        Value::Structure(filter) => match filter.fields() {
            [Value::Bool(true), Value::Array(calls)] => {
                let has = |call: &str| {
                    calls
                        .iter()
                        .any(|c| matches!(c, Value::Str(name) if name.as_str() == call))
                };
                has("read") && !has("reboot") && !has("setrlimit")
            }
            _ => false,
        },
        _ => false,
    }
}

/// The (source, destination) pairs of a `BindReadOnlyPaths=` value
/// (`a(ssbt)`); an unreadable entry is an empty pair, which no check takes.
fn binds_of(value: &Value<'_>) -> Vec<(String, String)> {
    let Value::Array(array) = value else {
        return match value {
            Value::Value(inner) => binds_of(inner),
            _ => vec![(String::new(), String::new())],
        };
    };
    array
        .iter()
        .map(|bind| match bind {
            Value::Structure(fields) => match (fields.fields().first(), fields.fields().get(1)) {
                (Some(Value::Str(source)), Some(Value::Str(destination))) => {
                    (source.to_string(), destination.to_string())
                }
                _ => (String::new(), String::new()),
            },
            _ => (String::new(), String::new()),
        })
        .collect()
}

/// A D-Bus value as text, with the items of every array sorted and without
/// repeats, so values that differ only in order compare equal, and a list
/// that both the transient unit and the drop-in set (systemd appends the
/// two) compares equal to one of them.
fn canonical(value: &Value<'_>) -> String {
    match value {
        Value::Value(inner) => canonical(inner),
        Value::Array(array) => {
            let mut items: Vec<String> = array.iter().map(canonical).collect();
            items.sort();
            items.dedup();
            format!("[{}]", items.join(","))
        }
        Value::Structure(structure) => {
            let fields: Vec<String> = structure.fields().iter().map(canonical).collect();
            format!("({})", fields.join(","))
        }
        Value::Str(text) => format!("{:?}", text.as_str()),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// The empty directory bound read-only over the forwarder's `/run`; systemd
/// makes the mount points of the binds below it ([`HOST_SOCKETS`], the
/// routes directory) in it, which leaves it a skeleton of empty files and
/// directories. Root's, 0755; [`ensure_hardening_dropin`] makes it.
pub const FORWARDER_RUN: &str = "/run/gatectl-forward-run";

/// journald's socket for the native protocol, which the forwarder writes
/// its audit records to (bound into its sandbox: [`HOST_SOCKETS`]).
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The host sockets the forwarder may see under its empty `/run`: the
/// journal (its audit records and stdout) and the notify socket
/// (`READY=1`, `STATUS=`).
pub const HOST_SOCKETS: [&str; 3] = [
    JOURNAL_SOCKET,
    "/run/systemd/journal/stdout",
    "/run/systemd/notify",
];

/// The name of the drop-in that carries the [`hardening`] for every
/// `gate-*.service`.
pub const DROPIN: &str = "gate-.service.d/gatectl-hardening.conf";

/// The drop-in the package ships under `/usr/lib/systemd/system`.
pub const PACKAGED_DROPIN_DIR: &str = "/usr/lib/systemd/system";

/// Where `start` writes the drop-in when the packaged one is missing or
/// differs (e.g. gatectl installed by hand).
pub const RUNTIME_DROPIN_DIR: &str = "/run/systemd/system";

/// The text of the drop-in [`DROPIN`].
pub fn hardening_dropin() -> String {
    let mut text = String::from(
        "# The sandbox of every gatectl forwarder (gate-<slug>.service), written by\n\
         # gatectl; `gatectl start` sets the same in the transient unit. This\n\
         # copy is read again at every daemon-reload, so a setting systemd wrote\n\
         # back wrongly into /run/systemd/transient cannot weaken the sandbox.\n\
         # gate-*.service units are gatectl's: see gatectl(8).\n[Service]\n",
    );
    for h in hardening() {
        text.push_str(&h.line);
        text.push('\n');
    }
    text
}

/// Makes sure systemd finds the hardening drop-in at its next reload:
/// when the packaged copy is missing or differs, writes one under
/// [`RUNTIME_DROPIN_DIR`] (a runtime copy overrides the packaged one).
/// Also makes [`FORWARDER_RUN`], without which a forwarder does not start.
/// Returns whether it wrote the drop-in.
pub fn ensure_hardening_dropin() -> Result<bool> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(FORWARDER_RUN)
        .with_context(|| format!("cannot create {FORWARDER_RUN}"))?;
    let wanted = hardening_dropin();
    let packaged = Path::new(PACKAGED_DROPIN_DIR).join(DROPIN);
    let runtime = Path::new(RUNTIME_DROPIN_DIR).join(DROPIN);
    let holds = |path: &Path| std::fs::read_to_string(path).is_ok_and(|text| text == wanted);
    if holds(&runtime) || (holds(&packaged) && !runtime.exists()) {
        return Ok(false);
    }
    let dir = runtime.parent().expect("the drop-in has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = runtime.with_extension("conf.tmp");
    std::fs::write(&tmp, wanted).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &runtime).with_context(|| format!("cannot write {}", runtime.display()))?;
    Ok(true)
}

/// The properties of the gate's socket unit: systemd creates one listening
/// socket per upstream on the internal address, inside the gate netns, and
/// starts the forwarder unit (an auxiliary unit of the same
/// `StartTransientUnit` call) at the first connection, handing it the
/// sockets. Accepted connections stay in this unit's cgroup, so its IP
/// allowlist is the internal /31 only.
pub fn socket_properties(plan: &GatePlan) -> Vec<Property> {
    let listen = plan
        .upstreams
        .iter()
        .map(|u| {
            let address = SocketAddr::new(plan.gate_internal.address.into(), u.listen_port);
            ("Stream".to_string(), address.to_string())
        })
        .collect();
    let [description, documentation] = described(plan, ": listening sockets");
    vec![
        description,
        documentation,
        prop("Listen", PropertyValue::Pairs(listen)),
        text("NetworkNamespacePath", &path_str(&plan.netns_path())),
        text("CollectMode", "inactive-or-failed"),
        deny_all().property,
        prop(
            "IPAddressAllow",
            PropertyValue::Prefixes(vec![internal_prefix(plan)]),
        ),
    ]
}

/// `Description=` (the gate's, then `what`) and `Documentation=` of one of
/// the gate's units.
fn described(plan: &GatePlan, what: &str) -> [Property; 2] {
    [
        text(
            "Description",
            &format!("gatectl SSH egress gate for {}{what}", plan.slug),
        ),
        prop(
            "Documentation",
            PropertyValue::Strings(vec!["man:gatectl(8)".into()]),
        ),
    ]
}

/// `IPAddressDeny=any` (0.0.0.0/0 and ::/0), before an `IPAddressAllow=`
/// that opens exceptions.
fn deny_all() -> Hardening {
    let any: Vec<IpNet> = vec![
        "0.0.0.0/0".parse().expect("valid"),
        "::/0".parse().expect("valid"),
    ];
    Hardening {
        property: prop("IPAddressDeny", PropertyValue::Prefixes(any)),
        line: "IPAddressDeny=any".into(),
    }
}

/// The internal /31: the agent's address and the gate's.
fn internal_prefix(plan: &GatePlan) -> IpNet {
    IpNet::V4(plan.internal_net())
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{parse, Format};
    use crate::plan::GateSpec;
    use crate::slug::Slug;

    #[test]
    fn sandbox_properties_keep_what_the_check_reads_and_skip_the_rest() {
        use zbus::zvariant::serialized::Context;
        use zbus::zvariant::{to_bytes, LE};
        let mut all: HashMap<&str, Value> = HashMap::new();
        all.insert("TasksMax", Value::U64(16));
        all.insert("ProtectSystem", Value::from("strict"));
        // ExecStart as systemd sends it: an array of structures, skipped.
        let exec = [(
            "/usr/bin/gatectl",
            vec!["gatectl", "forward"],
            false,
            0u64,
            0u64,
            0u64,
            0u64,
            0u32,
            0i32,
            0i32,
        )];
        all.insert("ExecStart", Value::from(&exec[..]));
        all.insert("Environment", Value::from(vec!["A=1"]));
        all.insert("StatusText", Value::from("ready"));
        let bytes = to_bytes(Context::new_dbus(LE, 0), &all).unwrap();
        let (kept, _): (SandboxProperties, _) = bytes.deserialize().unwrap();
        let mut names: Vec<&str> = kept.0.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["ProtectSystem", "TasksMax"]);
        assert_eq!(u64::try_from(&kept.0["TasksMax"]).unwrap(), 16);
    }

    fn plan() -> GatePlan {
        let m = parse(
            "[[ssh]]\nHost = \"gh\"\nHostname = \"github.com\"\n[[ssh]]\nHost = \"dual\"\nHostname = \"dual.example\"\nPort = 2200\n",
            Format::Toml,
        )
        .unwrap();
        let slug = Slug::parse("alice").unwrap();
        let settings = Settings::default();
        GateSpec::build(&slug, &m, &settings, None, |h| {
            Ok(if h == "github.com" {
                vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()]
            } else {
                vec!["2001:db8::5".parse().unwrap(), "198.51.100.5".parse().unwrap()]
            })
        })
        .unwrap()
        .place(&settings, 2)
        .unwrap()
    }

    #[test]
    fn every_value_has_the_dbus_type_systemd_expects() {
        let expected = [
            ("ExecStart", "a(sasb)"),
            ("Type", "s"),
            ("NotifyAccess", "s"),
            ("Restart", "s"),
            ("RestartUSec", "t"),
            ("CollectMode", "s"),
            ("NetworkNamespacePath", "s"),
            ("DynamicUser", "b"),
            ("CapabilityBoundingSet", "t"),
            ("ProtectSystem", "s"),
            ("ProtectHome", "s"),
            ("RestrictNamespaces", "t"),
            ("RestrictAddressFamilies", "(bas)"),
            ("SystemCallFilter", "(bas)"),
            ("SystemCallArchitectures", "as"),
            ("IPAddressAllow", "a(iayu)"),
            ("IPAddressDeny", "a(iayu)"),
            ("LimitNOFILE", "t"),
            ("MemoryMax", "t"),
            ("LogRateLimitIntervalUSec", "t"),
            ("LogRateLimitBurst", "u"),
            ("TasksMax", "t"),
            ("UMask", "u"),
        ];
        let props = properties(&plan(), &Settings::default());
        for (name, sig) in expected {
            let p = props
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(p.value.signature(), sig, "{name}");
            assert_eq!(
                p.value.to_value().value_signature().to_string(),
                sig,
                "{name} variant"
            );
        }
        for p in &props {
            assert_eq!(
                p.value.to_value().value_signature().to_string(),
                p.value.signature(),
                "{}",
                p.name
            );
        }
        let mut names: Vec<_> = props
            .iter()
            .map(|p| p.name)
            .filter(|n| !["SystemCallFilter", "BindReadOnlyPaths"].contains(n))
            .collect();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            count,
            "no property but SystemCallFilter and BindReadOnlyPaths is set twice"
        );
    }

    #[test]
    fn exec_start_is_an_argument_vector_reading_the_bound_routes_file() {
        let props = properties(&plan(), &Settings::default());
        let PropertyValue::Exec(cmds) = &props.iter().find(|p| p.name == "ExecStart").unwrap().value else {
            panic!("ExecStart is not an exec list");
        };
        let argv = &cmds[0].argv;
        assert_eq!(cmds[0].path, argv[0]);
        assert_eq!(argv[1], "forward");
        let after = |flag: &str| &argv[argv.iter().position(|a| a == flag).unwrap() + 1];
        assert_eq!(after("--listen"), "10.231.0.5");
        assert_eq!(after("--routes-file"), "/run/gatectl-forward/routes.json");
        assert!(!argv.contains(&"--route".to_string()), "{argv:?}");
        let binds: Vec<_> = props
            .iter()
            .filter_map(|p| match &p.value {
                PropertyValue::Binds(binds) if p.name == "BindReadOnlyPaths" => Some(binds.clone()),
                _ => None,
            })
            .flatten()
            .map(|(source, destination, ..)| (source, destination))
            .collect();
        assert!(
            binds.contains(&("/run/gatectl/forward/alice".into(), "/run/gatectl-forward".into())),
            "{binds:?}"
        );
        let routes: Vec<String> = forward_routes(&plan()).iter().map(ToString::to_string).collect();
        assert_eq!(
            routes,
            [
                "30000,gh,192.0.2.10:22,[2001:db8::10]:22",
                "30001,dual,[2001:db8::5]:2200,198.51.100.5:2200"
            ]
        );
    }

    #[test]
    fn the_socket_unit_listens_on_the_internal_address_one_port_per_upstream() {
        let plan = plan();
        let props = socket_properties(&plan);
        let find = |name: &str| &props.iter().find(|p| p.name == name).unwrap().value;
        assert_eq!(
            find("Listen"),
            &PropertyValue::Pairs(vec![
                ("Stream".into(), "10.231.0.5:30000".into()),
                ("Stream".into(), "10.231.0.5:30001".into()),
            ])
        );
        assert_eq!(find("Listen").to_value().value_signature().to_string(), "a(ss)");
        assert_eq!(
            find("NetworkNamespacePath"),
            &PropertyValue::Str("/run/netns/gate-alice".into())
        );
        // Accepted connections are charged to the socket unit: only the
        // internal /31 may talk to them.
        assert_eq!(
            find("IPAddressAllow"),
            &PropertyValue::Prefixes(vec!["10.231.0.4/31".parse().unwrap()])
        );
        for p in &props {
            assert_eq!(
                p.value.to_value().value_signature().to_string(),
                p.value.signature(),
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn ip_allowlist_is_the_internal_net_and_the_upstreams() {
        let allowed: Vec<String> = allowed_prefixes(&plan()).iter().map(IpNet::to_string).collect();
        assert_eq!(
            allowed,
            [
                "10.231.0.4/31",
                "192.0.2.10/32",
                "2001:db8::10/128",
                "2001:db8::5/128",
                "198.51.100.5/32"
            ]
        );
    }

    #[test]
    fn the_deny_covers_every_address_of_both_families_on_both_units() {
        let plan = plan();
        let deny = PropertyValue::Prefixes(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]);
        for (unit, props) in [
            ("forwarder", properties(&plan, &Settings::default())),
            ("socket", socket_properties(&plan)),
        ] {
            let found: Vec<&PropertyValue> = props
                .iter()
                .filter(|p| p.name == "IPAddressDeny")
                .map(|p| &p.value)
                .collect();
            assert_eq!(found, [&deny], "{unit}");
            // The wire form systemd reads: (AF_INET, 0.0.0.0, 0), (AF_INET6, ::, 0).
            assert_eq!(
                found[0].to_value(),
                Value::from(vec![
                    (AF_INET, vec![0u8; 4], 0u32),
                    (AF_INET6, vec![0u8; 16], 0u32)
                ])
            );
        }
    }

    #[test]
    fn the_dropin_states_every_hardening_setting_the_transient_unit_gets() {
        let text = hardening_dropin();
        let props = properties(&plan(), &Settings::default());
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines[0], "[Service]");
        let hardening = hardening();
        assert_eq!(lines.len(), hardening.len() + 1);
        for (h, line) in hardening.iter().zip(&lines[1..]) {
            assert_eq!(h.line, *line);
            assert!(
                props.contains(&h.property),
                "{} is not in the transient unit",
                h.property.name
            );
        }
        for line in [
            "RestrictNamespaces=yes",
            "DynamicUser=yes",
            "CapabilityBoundingSet=",
            "IPAddressDeny=any",
            "BindReadOnlyPaths=/run/gatectl-forward-run:/run /run/systemd/journal/socket \
             /run/systemd/journal/stdout /run/systemd/notify",
            "SystemCallFilter=~@privileged @resources",
        ] {
            assert!(lines.contains(&line), "{line} missing from\n{text}");
        }
        // Nothing in it depends on one gate.
        for plan_specific in [
            "ExecStart",
            "NetworkNamespacePath",
            "IPAddressAllow",
            "LimitNOFILE",
        ] {
            assert!(!text.contains(plan_specific), "{plan_specific} in the drop-in");
        }
    }

    /// systemd's live view of a forwarder exactly as gatectl set it, with
    /// each list setting of the drop-in appended to the transient unit's,
    /// and the system call filter expanded as systemd reports it.
    fn live_with_dropin() -> HashMap<String, OwnedValue> {
        let mut live = HashMap::new();
        for h in hardening() {
            let value = match h.property.value {
                PropertyValue::Pairs(pairs) => PropertyValue::Pairs([pairs.clone(), pairs].concat()),
                PropertyValue::Binds(binds) => PropertyValue::Binds([binds.clone(), binds].concat()),
                PropertyValue::List { allow: true, .. } if h.property.name == "SystemCallFilter" => {
                    PropertyValue::List {
                        allow: true,
                        items: vec!["read".into(), "write".into()],
                    }
                }
                other => other,
            };
            let value = OwnedValue::try_from(value.to_value()).unwrap();
            live.entry(h.property.name.to_string()).or_insert(value);
        }
        live
    }

    #[test]
    fn settings_repeated_by_the_dropin_are_no_drift_and_a_changed_one_is() {
        let mut live = live_with_dropin();
        assert_eq!(sandbox_drift(&live), Vec::<String>::new());
        live.insert(
            "TasksMax".into(),
            OwnedValue::try_from(PropertyValue::U64(100).to_value()).unwrap(),
        );
        assert_eq!(sandbox_drift(&live), ["TasksMax=100 (gatectl sets TasksMax=16)"]);
    }

    #[test]
    fn allowed_prefixes_read_back_as_systemd_reports_them() {
        let prefixes = allowed_prefixes(&plan());
        let reported = OwnedValue::try_from(allow_also(prefixes.clone()).value.to_value()).unwrap();
        assert_eq!(prefixes_of(&reported), prefixes);
        assert_eq!(prefixes.len(), 5, "{prefixes:?}");
        let not_a_list = OwnedValue::try_from(Value::from(7u32)).unwrap();
        assert_eq!(prefixes_of(&not_a_list), Vec::<IpNet>::new());
    }

    #[test]
    fn the_routes_bind_is_no_drift_and_another_bind_is() {
        let bind = |destination: &str| {
            let mut live = live_with_dropin();
            let PropertyValue::Binds(mut binds) = hardening()
                .into_iter()
                .find(|h| h.property.name == "BindReadOnlyPaths")
                .unwrap()
                .property
                .value
            else {
                panic!("not binds")
            };
            binds.push(("/run/gatectl/forward/alice".into(), destination.into(), false, 0));
            live.insert(
                "BindReadOnlyPaths".into(),
                OwnedValue::try_from(PropertyValue::Binds(binds).to_value()).unwrap(),
            );
            sandbox_drift(&live)
        };
        assert_eq!(bind(MOUNT), Vec::<String>::new());
        let drift = bind("/run/dbus");
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert!(
            drift[0].starts_with("BindReadOnlyPaths=[") && drift[0].contains("/run/dbus"),
            "{drift:?}"
        );
    }

    #[test]
    fn the_system_call_filter_must_stay_an_allow_list_without_privileged_calls() {
        let with_filter = |allow: bool, calls: &[&str]| {
            let mut live = live_with_dropin();
            let filter = PropertyValue::List {
                allow,
                items: calls.iter().map(|c| c.to_string()).collect(),
            };
            live.insert(
                "SystemCallFilter".into(),
                OwnedValue::try_from(filter.to_value()).unwrap(),
            );
            sandbox_drift(&live)
        };
        assert_eq!(
            with_filter(true, &["read", "write", "openat"]),
            Vec::<String>::new()
        );
        for (allow, calls) in [
            (false, &["reboot"][..]),
            (true, &["read", "reboot"][..]),
            (true, &["read", "setrlimit"][..]),
            (true, &["write"][..]),
            (true, &[][..]),
        ] {
            let drift = with_filter(allow, calls);
            assert_eq!(drift.len(), 1, "{allow} {calls:?}: {drift:?}");
            assert!(drift[0].starts_with("SystemCallFilter="), "{drift:?}");
        }
    }

    #[test]
    fn run_must_stay_bound_to_the_empty_directory() {
        let with_binds = |binds: Vec<(String, String, bool, u64)>| {
            let mut live = live_with_dropin();
            live.insert(
                "BindReadOnlyPaths".into(),
                OwnedValue::try_from(PropertyValue::Binds(binds).to_value()).unwrap(),
            );
            sandbox_drift(&live)
        };
        let sockets: Vec<_> = HOST_SOCKETS
            .iter()
            .map(|p| (p.to_string(), p.to_string(), false, libc::MS_REC))
            .collect();
        // Without the empty /run, the forwarder would see the host's.
        let drift = with_binds(sockets.clone());
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert!(
            drift[0].contains("gatectl sets BindReadOnlyPaths=/run/gatectl-forward-run:/run"),
            "{drift:?}"
        );
        // The host's /run bound in its place is no better.
        let mut host_run = sockets.clone();
        host_run.insert(0, ("/run".into(), "/run".into(), false, libc::MS_REC));
        assert_eq!(with_binds(host_run).len(), 1);
        let mut as_set = sockets;
        as_set.insert(0, (FORWARDER_RUN.into(), "/run".into(), false, libc::MS_REC));
        assert_eq!(with_binds(as_set), Vec::<String>::new());
    }

    #[test]
    fn the_descriptor_limit_counts_the_listening_sockets() {
        let plan = plan();
        let settings = Settings::default();
        let limit = properties(&plan, &settings)
            .into_iter()
            .find(|p| p.name == "LimitNOFILE")
            .unwrap();
        assert_eq!(limit.value, PropertyValue::U64(1024 + 256 * 6 + 64));
    }

    #[test]
    fn the_sandbox_as_set_shows_no_drift_and_each_weakening_is_named() {
        assert_eq!(sandbox_drift(&live_with_dropin()), Vec::<String>::new());

        let mut weakened = live_with_dropin();
        // `RestrictNamespaces=no`: every namespace type allowed.
        let every_namespace = 0x7e02_0000u64;
        weakened.insert(
            "RestrictNamespaces".into(),
            OwnedValue::try_from(Value::from(every_namespace)).unwrap(),
        );
        let drift = sandbox_drift(&weakened);
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert!(
            drift[0].starts_with("RestrictNamespaces=2114060288 (gatectl sets RestrictNamespaces=yes)"),
            "{drift:?}"
        );

        let mut missing = live_with_dropin();
        missing.remove("IPAddressDeny");
        let drift = sandbox_drift(&missing);
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert!(drift[0].starts_with("IPAddressDeny=(absent)"), "{drift:?}");
    }
}
