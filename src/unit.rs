//! A gate's transient units: pure functions from a gate plan to the systemd
//! properties passed to `StartTransientUnit`, with their D-Bus types. The
//! socket unit `gate-<slug>.socket` holds the listening sockets; the
//! forwarder `gate-<slug>.service`, its auxiliary unit, is started by
//! systemd at the first connection and handed the sockets.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Serialize;
use zbus::zvariant::Value;

use crate::config::Settings;
use crate::forward::ForwardRoute;
use crate::plan::{GatePlan, LINK_PREFIX_LEN};

/// `AF_INET` as systemd's `IPAddressAllow=` wire format wants it.
const AF_INET: i32 = libc::AF_INET;
/// `AF_INET6`, likewise.
const AF_INET6: i32 = libc::AF_INET6;

/// One command line of `ExecStart=`: binary path, full argv, ignore-failure flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecCommand {
    /// Absolute path of the binary.
    pub path: String,
    /// The argument vector, argv\[0\] included. Never passed through a shell.
    pub argv: Vec<String>,
    /// Whether a failing exit status is ignored (never, here).
    pub ignore_failure: bool,
}

/// An address prefix of `IPAddressAllow=`/`IPAddressDeny=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpPrefix {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix_len: u32,
}

/// A typed unit property value, in the D-Bus shape systemd expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    Prefixes(Vec<IpPrefix>),
    /// `a(ss)`, for a socket unit's `Listen`: (kind, address) pairs such as
    /// (`Stream`, `10.231.0.1:30000`) for `ListenStream=10.231.0.1:30000`.
    Listen(Vec<(String, String)>),
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
            PropertyValue::Listen(_) => "a(ss)",
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
                    .map(|p| match p.address {
                        IpAddr::V4(a) => (AF_INET, a.octets().to_vec(), p.prefix_len),
                        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec(), p.prefix_len),
                    })
                    .collect::<Vec<_>>(),
            ),
            PropertyValue::Listen(sockets) => Value::from(sockets.clone()),
        }
    }
}

/// A named unit property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// The argv of `gatectl forward` for this plan.
pub fn forwarder_argv(plan: &GatePlan, settings: &Settings) -> Vec<String> {
    let mut argv = vec![
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
    ];
    for u in &plan.upstreams {
        let route = ForwardRoute {
            listen_port: u.listen_port,
            alias: u.alias.clone(),
            upstreams: u.addresses.iter().map(|a| (*a, u.port).into()).collect(),
        };
        argv.push("--route".to_string());
        argv.push(route.to_string());
    }
    argv
}

/// Addresses the forwarder's sockets may talk to: the internal /31 and every
/// resolved upstream address.
pub fn allowed_prefixes(plan: &GatePlan) -> Vec<IpPrefix> {
    let mut allowed = vec![internal_prefix(plan)];
    for address in plan.upstreams.iter().flat_map(|u| &u.addresses) {
        let prefix = IpPrefix {
            address: *address,
            prefix_len: if address.is_ipv4() { 32 } else { 128 },
        };
        if !allowed.contains(&prefix) {
            allowed.push(prefix);
        }
    }
    allowed
}

/// Bytes of memory the forwarder may use: a base plus a per-connection share.
fn memory_max(settings: &Settings) -> u64 {
    32 * 1024 * 1024 + u64::from(settings.max_connections) * 256 * 1024
}

/// The full property list of the forwarder's transient unit, started from
/// the socket unit with the listening sockets as `LISTEN_FDS`.
pub fn properties(plan: &GatePlan, settings: &Settings) -> Vec<Property> {
    let argv = forwarder_argv(plan, settings);
    let exec = ExecCommand {
        path: argv[0].clone(),
        argv,
        ignore_failure: false,
    };
    let netns_path = plan.netns_path();
    let [description, documentation] = described(plan, "");
    vec![
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
        // With NetworkNamespacePath= set, systemd joins that netns instead of
        // creating one; PrivateNetwork= states that the forwarder sees no
        // host interface (and systemd-analyze security scores it so).
        yes("PrivateNetwork"),
        yes("DynamicUser"),
        prop("CapabilityBoundingSet", PropertyValue::U64(0)),
        prop("AmbientCapabilities", PropertyValue::U64(0)),
        yes("NoNewPrivileges"),
        text("ProtectSystem", "strict"),
        text("ProtectHome", "yes"),
        yes("PrivateTmp"),
        yes("PrivateDevices"),
        yes("PrivateIPC"),
        yes("PrivateUsers"),
        yes("ProtectKernelTunables"),
        yes("ProtectKernelModules"),
        yes("ProtectKernelLogs"),
        yes("ProtectControlGroups"),
        yes("ProtectClock"),
        yes("ProtectHostname"),
        text("ProtectProc", "invisible"),
        text("ProcSubset", "pid"),
        prop("RestrictNamespaces", PropertyValue::U64(0)),
        yes("RestrictRealtime"),
        yes("RestrictSUIDSGID"),
        yes("LockPersonality"),
        yes("MemoryDenyWriteExecute"),
        prop("UMask", PropertyValue::U32(0o077)),
        prop(
            "RestrictAddressFamilies",
            PropertyValue::List {
                allow: true,
                items: vec!["AF_INET".into(), "AF_INET6".into(), "AF_UNIX".into()],
            },
        ),
        prop(
            "SystemCallFilter",
            PropertyValue::List {
                allow: true,
                items: vec!["@system-service".into()],
            },
        ),
        // A second assignment narrows the allow list (as in a unit file).
        prop(
            "SystemCallFilter",
            PropertyValue::List {
                allow: false,
                items: vec!["@privileged".into(), "@resources".into()],
            },
        ),
        prop("SystemCallErrorNumber", PropertyValue::I32(libc::EPERM)),
        prop(
            "SystemCallArchitectures",
            PropertyValue::Strings(vec!["native".into()]),
        ),
        deny_all(),
        prop("IPAddressAllow", PropertyValue::Prefixes(allowed_prefixes(plan))),
        // Two sockets and up to two splice pipes (two fds each) per connection.
        prop(
            "LimitNOFILE",
            PropertyValue::U64(u64::from(settings.max_connections) * 6 + 64),
        ),
        prop("TasksMax", PropertyValue::U64(16)),
        prop("MemoryMax", PropertyValue::U64(memory_max(settings))),
    ]
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
        prop("Listen", PropertyValue::Listen(listen)),
        text("NetworkNamespacePath", &path_str(&plan.netns_path())),
        text("CollectMode", "inactive-or-failed"),
        deny_all(),
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

/// `IPAddressDeny=any`, before an `IPAddressAllow=` that opens exceptions.
fn deny_all() -> Property {
    let any = |address: IpAddr| IpPrefix {
        address,
        prefix_len: 0,
    };
    prop(
        "IPAddressDeny",
        PropertyValue::Prefixes(vec![
            any(IpAddr::V4([0, 0, 0, 0].into())),
            any(IpAddr::V6([0u16; 8].into())),
        ]),
    )
}

/// The internal /31: the agent's address and the gate's.
fn internal_prefix(plan: &GatePlan) -> IpPrefix {
    IpPrefix {
        address: IpAddr::V4(plan.internal_net().network()),
        prefix_len: LINK_PREFIX_LEN.into(),
    }
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{parse, Format};
    use crate::slug::Slug;

    fn plan() -> GatePlan {
        let m = parse(
            "[[ssh]]\nHost = \"gh\"\nHostname = \"github.com\"\n[[ssh]]\nHost = \"v6\"\nHostname = \"2001:db8::5\"\nPort = 2200\n",
            Format::Toml,
        )
        .unwrap();
        let slug = Slug::parse("alice").unwrap();
        GatePlan::build(&slug, &m, &Settings::default(), 2, None, |h| {
            Ok(if h == "github.com" {
                vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()]
            } else {
                vec![h.parse().unwrap()]
            })
        })
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
            .filter(|n| *n != "SystemCallFilter")
            .collect();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            count,
            "no property but SystemCallFilter is set twice"
        );
    }

    #[test]
    fn exec_start_is_an_argument_vector_with_resolved_routes() {
        let props = properties(&plan(), &Settings::default());
        let PropertyValue::Exec(cmds) = &props.iter().find(|p| p.name == "ExecStart").unwrap().value else {
            panic!("ExecStart is not an exec list");
        };
        let argv = &cmds[0].argv;
        assert_eq!(cmds[0].path, argv[0]);
        assert_eq!(argv[1], "forward");
        let pos = argv.iter().position(|a| a == "--listen").unwrap();
        assert_eq!(argv[pos + 1], "10.231.0.5");
        let routes: Vec<_> = argv
            .windows(2)
            .filter(|w| w[0] == "--route")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            routes,
            [
                "30000,gh,192.0.2.10:22,[2001:db8::10]:22",
                "30001,v6,[2001:db8::5]:2200"
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
            &PropertyValue::Listen(vec![
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
            &PropertyValue::Prefixes(vec![IpPrefix {
                address: "10.231.0.4".parse().unwrap(),
                prefix_len: 31
            }])
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
        let allowed: Vec<String> = allowed_prefixes(&plan())
            .iter()
            .map(|p| format!("{}/{}", p.address, p.prefix_len))
            .collect();
        assert_eq!(
            allowed,
            [
                "10.231.0.4/31",
                "192.0.2.10/32",
                "2001:db8::10/128",
                "2001:db8::5/128"
            ]
        );
    }
}
