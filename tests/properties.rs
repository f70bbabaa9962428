//! Property tests over hostile input: manifest parsing and validation, the
//! gate plan, the agent's ssh config and the forwarder's argv.
//!
//! Generated manifests are arbitrary bytes and text, and structured TOML and
//! JSON built from a model whose values are drawn either from known-good pools
//! or from hostile ones (shell and ssh_config metacharacters, newlines,
//! control characters, unicode, huge and negative numbers, wrong types,
//! duplicate aliases, unknown keys, many entries). The properties:
//!
//! - nothing panics;
//! - a manifest is rejected with an error that names the offending field, and
//!   never blames a field whose value came from a known-good pool; a manifest
//!   made only of good values is accepted;
//! - every accepted manifest yields a plan whose names, ports and ssh config
//!   are well formed, and whose forwarder routes round-trip through
//!   `ForwardRoute` parsing.
//!
//! CI runs proptest's default of 256 cases per property (a few seconds). A
//! longer run: `PROPTEST_CASES=100000 cargo test --release --test properties`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gatectl::config::Settings;
use gatectl::forward::ForwardRoute;
use gatectl::manifest::{parse, Format, Manifest};
use gatectl::plan::{GateSpec, MAX_ENTRIES};
use gatectl::slug::Slug;
use gatectl::{ssh_config, unit};
use ipnet::Ipv4Net;
use proptest::prelude::*;
use proptest::sample::select;

/// Characters that mean something to a shell, to ssh_config or to a parser.
const HOSTILE_CHARS: &str = "[a-zA-Z0-9 \t\n\r\"'#%$;`|&<>*?!=\\\\/:,\\[\\]{}()@~^+\u{0}\u{7}\u{1b}\u{7f}\u{85}\u{a0}\u{2028}\u{feff}é日🦀-]";

/// Hand-picked hostile strings.
const NASTY: &[&str] = &[
    "",
    " ",
    "..",
    "../../etc/passwd",
    "-oProxyCommand=sh -c id",
    "a b",
    "a\nProxyCommand sh",
    "a\rb",
    "a\u{0}b",
    "%h",
    "%d",
    "${HOME}",
    "$(id)",
    "`id`",
    "a;rm -rf /",
    "a|b",
    "a&&b",
    "*",
    "a?",
    "!a",
    "\"quoted\"",
    "'q'",
    "#comment",
    "Host *",
    "999.1.1.1",
    "1.2.3",
    "0x7f.1",
    "[::1]",
    "fe80::1%eth0",
    "::ffff:1.2.3.4:22",
    "github.com.",
    ".github.com",
    "-github.com",
    "github-.com",
    "xn--nxasmq6b",
    "ünïcödé.example",
    "日本.example",
    "🦀",
    "\u{202e}gro.buhtig",
    "a\u{2028}b",
    "localhost",
    "/dev/zero",
    "/run/netns/../x",
    "/run/netns/a\nb",
];

/// A value of the model: what one manifest key holds.
#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    List(Vec<i64>),
}

/// One field of the model: its value and whether it came from a good pool.
#[derive(Debug, Clone)]
struct Field {
    val: Val,
    good: bool,
}

/// One `[[ssh]]` entry of the model.
#[derive(Debug, Clone)]
struct Entry {
    host: Option<Field>,
    hostname: Option<Field>,
    port: Option<Field>,
    user: Option<Field>,
    /// An unknown key (always an error).
    extra: Option<(String, i64)>,
}

/// A manifest model.
#[derive(Debug, Clone)]
struct Model {
    agent_netns: Option<Field>,
    /// An unknown top-level key (always ignored).
    top_extra: Option<(String, String)>,
    entries: Vec<Entry>,
}

fn good(val: Val) -> Field {
    Field { val, good: true }
}

fn bad(val: Val) -> Field {
    Field { val, good: false }
}

fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        select(NASTY).prop_map(str::to_string),
        proptest::string::string_regex(&format!("{HOSTILE_CHARS}{{0,24}}")).unwrap(),
        ".{0,40}",
        // Long: past every length limit.
        "[a-z.]{60,300}",
    ]
}

fn hostile_value() -> impl Strategy<Value = Val> {
    prop_oneof![
        6 => hostile_string().prop_map(Val::Str),
        2 => any::<i64>().prop_map(Val::Int),
        1 => select(vec![-1i64, 0, 65536, 65535 * 2, i64::MIN, i64::MAX]).prop_map(Val::Int),
        1 => (-1e6f64..1e6).prop_map(Val::Float),
        1 => any::<bool>().prop_map(Val::Bool),
        1 => proptest::collection::vec(any::<i64>(), 0..3).prop_map(Val::List),
    ]
}

fn good_alias() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._-]{0,20}"
}

fn good_hostname() -> impl Strategy<Value = String> {
    prop_oneof![
        "([a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\\.){0,3}[a-z]([a-z0-9-]{0,6}[a-z0-9])?",
        any::<Ipv4Addr>().prop_map(|a| a.to_string()),
        any::<Ipv6Addr>().prop_map(|a| a.to_string()),
    ]
}

fn good_port() -> impl Strategy<Value = Val> {
    prop_oneof![
        (1i64..=65535).prop_map(Val::Int),
        (1u16..=65535).prop_map(|p| Val::Str(p.to_string())),
    ]
}

fn good_user() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9._-]{0,15}"
}

fn good_netns() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9._-]{0,20}",
        "/run/netns/[a-z0-9-]{1,12}",
        "/proc/[0-9]{1,5}/ns/net",
    ]
}

/// A field drawn from `good_pool` most of the time, else from the hostile pool.
fn field<S: Strategy<Value = Val> + 'static>(good_pool: S) -> BoxedStrategy<Field> {
    prop_oneof![
        7 => good_pool.prop_map(good),
        3 => hostile_value().prop_map(bad),
    ]
    .boxed()
}

fn optional(f: BoxedStrategy<Field>, absent_weight: u32) -> BoxedStrategy<Option<Field>> {
    prop_oneof![absent_weight => Just(None), 10 => f.prop_map(Some)].boxed()
}

fn unknown_key() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,8}".prop_filter("a known key", |k| {
        ![
            "Host",
            "Hostname",
            "HostName",
            "Port",
            "User",
            "ssh",
            "agent_netns",
        ]
        .contains(&k.as_str())
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        optional(field(good_alias().prop_map(Val::Str)), 1),
        optional(field(good_hostname().prop_map(Val::Str)), 1),
        optional(field(good_port()), 4),
        optional(field(good_user().prop_map(Val::Str)), 4),
        prop_oneof![20 => Just(None), 1 => (unknown_key(), any::<i64>()).prop_map(Some)],
    )
        .prop_map(|(host, hostname, port, user, extra)| Entry {
            host,
            hostname,
            port,
            user,
            extra,
        })
}

fn model() -> impl Strategy<Value = Model> {
    (
        optional(field(good_netns().prop_map(Val::Str)), 10),
        prop_oneof![3 => Just(None), 1 => (unknown_key(), hostile_string()).prop_map(Some)],
        prop_oneof![
            1 => Just(0usize),
            20 => 1usize..6,
            2 => 6usize..40,
        ]
        .prop_flat_map(|n| proptest::collection::vec(entry(), n)),
        // Duplicate aliases: copy an earlier entry's Host into a later one,
        // in another case.
        proptest::option::weighted(0.2, (any::<prop::sample::Index>(), any::<prop::sample::Index>())),
    )
        .prop_map(|(agent_netns, top_extra, mut entries, dup)| {
            if let (Some((a, b)), n) = (dup, entries.len()) {
                if n >= 2 {
                    let (a, b) = (a.index(n), b.index(n));
                    if let Some(Field {
                        val: Val::Str(s),
                        good,
                    }) = entries[a.min(b)].host.clone()
                    {
                        let copy = Val::Str(s.to_uppercase());
                        entries[a.max(b)].host = Some(Field { val: copy, good });
                    }
                }
            }
            Model {
                agent_netns,
                top_extra,
                entries,
            }
        })
}

fn to_json(v: &Val) -> serde_json::Value {
    match v {
        Val::Str(s) => s.clone().into(),
        Val::Int(n) => (*n).into(),
        Val::Float(x) => (*x).into(),
        Val::Bool(b) => (*b).into(),
        Val::List(l) => l.clone().into(),
    }
}

fn to_toml(v: &Val) -> toml::Value {
    match v {
        Val::Str(s) => s.clone().into(),
        Val::Int(n) => (*n).into(),
        Val::Float(x) => (*x).into(),
        Val::Bool(b) => (*b).into(),
        Val::List(l) => toml::Value::Array(l.iter().map(|n| (*n).into()).collect()),
    }
}

/// Keys and values of one table, in order.
type Pairs = Vec<(String, Val)>;

/// The model as (key, value) pairs: top level and per entry, in order.
fn pairs(m: &Model) -> (Pairs, Vec<Pairs>) {
    let mut top = Vec::new();
    if let Some(f) = &m.agent_netns {
        top.push(("agent_netns".to_string(), f.val.clone()));
    }
    let entries = m
        .entries
        .iter()
        .map(|e| {
            let mut kv = Vec::new();
            for (k, f) in [
                ("Host", &e.host),
                ("Hostname", &e.hostname),
                ("Port", &e.port),
                ("User", &e.user),
            ] {
                if let Some(f) = f {
                    kv.push((k.to_string(), f.val.clone()));
                }
            }
            if let Some((k, n)) = &e.extra {
                kv.push((k.clone(), Val::Int(*n)));
            }
            kv
        })
        .collect();
    (top, entries)
}

fn render_toml(m: &Model) -> String {
    let (top, entries) = pairs(m);
    let mut table = toml::Table::new();
    for (k, v) in top {
        table.insert(k, to_toml(&v));
    }
    if let Some((k, v)) = &m.top_extra {
        table.insert(k.clone(), v.clone().into());
    }
    let list: Vec<toml::Value> = entries
        .into_iter()
        .map(|kv| toml::Value::Table(kv.iter().map(|(k, v)| (k.clone(), to_toml(v))).collect()))
        .collect();
    if !list.is_empty() {
        table.insert("ssh".into(), toml::Value::Array(list));
    }
    toml::to_string(&table).expect("the model serialises as TOML")
}

fn render_json(m: &Model) -> String {
    let (top, entries) = pairs(m);
    let mut obj = serde_json::Map::new();
    for (k, v) in top {
        obj.insert(k, to_json(&v));
    }
    if let Some((k, v)) = &m.top_extra {
        obj.insert(k.clone(), v.clone().into());
    }
    let list: Vec<serde_json::Value> = entries
        .into_iter()
        .map(|kv| serde_json::Value::Object(kv.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()))
        .collect();
    obj.insert("ssh".into(), list.into());
    serde_json::Value::Object(obj).to_string()
}

/// Whether a rejection message has one of the forms that name what is wrong.
fn names_a_field(err: &str) -> bool {
    let named = [
        "ssh entry ",
        "agent_netns",
        "no ssh entries",
        "ssh must be a list",
        "unknown field `",
        "duplicate field `",
        "must be an object",
    ];
    let located = err.contains("(line ") || err.contains(" at line ");
    !err.contains('\n') && (named.iter().any(|n| err.contains(n)) || located)
}

/// Checks a rejection of model `m` against the model: the error names a
/// field, and never one whose value came from a good pool (unless the alias
/// repeats an earlier one).
fn check_rejection(m: &Model, err: &str) -> Result<(), TestCaseError> {
    prop_assert!(names_a_field(err), "error names no field: {err:?}");
    if err.starts_with("agent_netns") {
        prop_assert!(
            !m.agent_netns.as_ref().unwrap().good,
            "good agent_netns blamed: {err}"
        );
        return Ok(());
    }
    let Some(rest) = err.strip_prefix("ssh entry ") else {
        if err.starts_with("no ssh entries") {
            prop_assert!(m.entries.is_empty(), "{err}");
        } else if let Some(key) = err
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            prop_assert!(
                m.entries
                    .iter()
                    .any(|e| e.extra.as_ref().is_some_and(|(k, _)| k == key)),
                "no entry has the unknown key blamed: {err}"
            );
        } else {
            prop_assert!(false, "a rejection the model cannot check: {err}");
        }
        return Ok(());
    };
    let n: usize = rest.split([' ', ':']).next().unwrap().parse().unwrap();
    let e = &m.entries[n - 1];
    let blamed = |f: &Option<Field>| f.as_ref().is_none_or(|f| !f.good);
    if rest.contains("(Host)") {
        let earlier: HashSet<String> = m.entries[..n - 1]
            .iter()
            .filter_map(|e| match &e.host {
                Some(Field { val: Val::Str(s), .. }) => Some(s.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        let dup = matches!(&e.host, Some(Field { val: Val::Str(s), .. }) if earlier.contains(&s.to_ascii_lowercase()));
        prop_assert!(blamed(&e.host) || dup, "good Host blamed: {err}");
    } else if rest.contains("(Hostname)") {
        prop_assert!(blamed(&e.hostname), "good Hostname blamed: {err}");
    } else if rest.contains("(Port)") {
        prop_assert!(blamed(&e.port), "good Port blamed: {err}");
    } else if rest.contains("(User)") {
        prop_assert!(blamed(&e.user), "good User blamed: {err}");
    } else {
        prop_assert!(rest.contains("must be a table"), "{err}");
    }
    Ok(())
}

/// Whether the model holds only good values, no unknown entry key, no
/// duplicate alias and at least one entry: then it must be accepted.
fn all_good(m: &Model) -> bool {
    let mut seen = HashSet::new();
    !m.entries.is_empty()
        && m.agent_netns.as_ref().is_none_or(|f| f.good)
        && m.entries.iter().all(|e| {
            let host_ok = match &e.host {
                Some(Field {
                    val: Val::Str(s),
                    good: true,
                }) => seen.insert(s.to_ascii_lowercase()),
                _ => false,
            };
            host_ok
                && e.hostname.as_ref().is_some_and(|f| f.good)
                && e.port.as_ref().is_none_or(|f| f.good)
                && e.user.as_ref().is_none_or(|f| f.good)
                && e.extra.is_none()
        })
}

/// A stand-in resolver: literals resolve to themselves, names to one to
/// three addresses derived from the name.
fn fake_resolve(host: &str) -> gatectl::Result<Vec<IpAddr>> {
    if let Ok(ip) = host.parse() {
        return Ok(vec![ip]);
    }
    let h = host
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    let mut out = vec![IpAddr::V4(Ipv4Addr::from(0xc000_0200 | (h & 0xff)))];
    if h % 3 > 0 {
        out.push(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, h as u16)));
    }
    if h % 3 > 1 {
        out.push(IpAddr::V4(Ipv4Addr::from(0xc633_6400 | (h >> 8 & 0xff))));
    }
    Ok(out)
}

/// Whether an ssh_config value is one token made only of what a valid
/// alias, host name, address, port or user holds: ASCII letters and digits,
/// `.`, `_`, `-`, and `:` (IPv6). Nothing ssh_config or a shell interprets.
fn clean_token(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

/// Whether a gate on a host with `settings` may not be given upstream
/// `address` (the policy, restated): an address in either pool, of
/// 0.0.0.0/8, broadcast, multicast, loopback or link-local.
fn refused_upstream(address: IpAddr, settings: &Settings) -> bool {
    match address.to_canonical() {
        IpAddr::V4(v4) => {
            settings.internal_pool.contains(&v4)
                || settings.egress_pool.contains(&v4)
                || v4.octets()[0] == 0
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_loopback()
                || v4.is_link_local()
        }
        IpAddr::V6(v6) => {
            settings.egress_pool6.contains(&v6)
                || v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || v6.segments()[0] & 0xffc0 == 0xfe80
        }
    }
}

/// Checks every property of a plan built from accepted manifest `m`.
fn check_plan(
    m: &Manifest,
    settings: &Settings,
    slug: &Slug,
    index: u32,
    cli_ns: Option<&str>,
) -> Result<(), TestCaseError> {
    let built =
        GateSpec::build(slug, m, settings, cli_ns, fake_resolve).and_then(|spec| spec.place(settings, index));
    let last = u32::from(settings.base_port) + m.ssh.len() as u32 - 1;
    // The first entry refused for its addresses, in manifest order: for a
    // refused address (an upstream with IPv6 addresses only is a matter
    // of the host's routes, decided after the plan).
    let refused = m.ssh.iter().enumerate().find_map(|(i, e)| {
        let addresses = fake_resolve(&e.hostname).expect("the fake resolver always answers");
        addresses
            .iter()
            .find(|a| refused_upstream(**a, settings))
            .map(|address| (i, address.to_string()))
    });
    // What a refusal must say, checked in the order the plan checks.
    let expected: Option<Vec<String>> = if m.ssh.len() > MAX_ENTRIES {
        Some(vec![format!(
            "{} ssh entries: a gate serves at most {MAX_ENTRIES}",
            m.ssh.len()
        )])
    } else if last > 65535 {
        Some(vec![
            format!("would need port {last}"),
            "lower base_port".to_string(),
        ])
    } else if let Some((i, why)) = refused {
        Some(vec![
            format!("ssh entry {} ({}): upstream ", i + 1, m.ssh[i].alias),
            why,
        ])
    } else if index >= capacity(settings) {
        Some(vec![
            format!("gate index {index} does not fit the address pools"),
            "enlarge internal_pool and egress_pool".to_string(),
        ])
    } else {
        None
    };
    let plan = match (built, expected) {
        (Err(e), Some(fragments)) => {
            let e = e.to_string();
            for fragment in fragments {
                prop_assert!(e.contains(&fragment), "{e:?} lacks {fragment:?}");
            }
            return Ok(());
        }
        (Err(e), None) => return Err(TestCaseError::fail(format!("plan refused: {e}"))),
        (Ok(_), Some(fragments)) => {
            return Err(TestCaseError::fail(format!(
                "plan accepted, expected {fragments:?}"
            )))
        }
        (Ok(p), None) => p,
    };

    // Names.
    prop_assert_eq!(&plan.netns, &format!("gate-{slug}"));
    prop_assert_eq!(&plan.unit, &format!("gate-{slug}.service"));
    for link in [
        &plan.agent_link,
        &plan.gate_internal,
        &plan.gate_egress,
        &plan.host_egress,
    ] {
        prop_assert!(
            !link.name.is_empty()
                && link.name.len() <= 15
                && link.name.bytes().all(|b| b.is_ascii_alphanumeric()),
            "bad link name {:?}",
            link.name
        );
    }
    let want_ns = cli_ns.map(str::to_string).or(m.agent_netns.clone());
    prop_assert_eq!(plan.agent_link.name == "gate0", want_ns.is_some());
    prop_assert_eq!(&plan.host_egress.name, &format!("gte{index}"));

    // Addresses: the index's /31 of each pool, except that a gate with an
    // agent netns always takes the internal pool's first.
    let internal_index = if want_ns.is_some() { 0 } else { index };
    prop_assert_eq!(
        u32::from(plan.agent_link.address),
        u32::from(settings.internal_pool.network()) + 2 * internal_index
    );
    prop_assert_eq!(
        u32::from(plan.host_egress.address),
        u32::from(settings.egress_pool.network()) + 2 * index
    );
    for (pool, end) in [
        (settings.internal_pool, &plan.agent_link),
        (settings.internal_pool, &plan.gate_internal),
        (settings.egress_pool, &plan.host_egress),
        (settings.egress_pool, &plan.gate_egress),
    ] {
        prop_assert!(
            pool.contains(&end.address),
            "{} {} outside {}",
            end.name,
            end.address,
            pool
        );
    }
    prop_assert_eq!(
        u32::from(plan.gate_internal.address),
        u32::from(plan.agent_link.address) + 1
    );
    prop_assert_eq!(
        u32::from(plan.gate_egress.address),
        u32::from(plan.host_egress.address) + 1
    );

    // Ports: base + i, distinct, in manifest order.
    prop_assert_eq!(plan.upstreams.len(), m.ssh.len());
    let mut ports = HashSet::new();
    for (i, (u, e)) in plan.upstreams.iter().zip(&m.ssh).enumerate() {
        prop_assert_eq!(u32::from(u.listen_port), u32::from(settings.base_port) + i as u32);
        prop_assert!(ports.insert(u.listen_port));
        prop_assert!(u.port != 0);
        prop_assert_eq!(
            (&u.alias, &u.host, u.port, &u.user),
            (&e.alias, &e.hostname, e.port, &e.user)
        );
        prop_assert!(!u.addresses.is_empty());
    }

    // ssh config: a comment, then one well-formed Host block per entry.
    let text = ssh_config::render(&plan);
    let mut lines = text.lines();
    prop_assert!(lines.next().unwrap().starts_with("# gatectl gate "));
    let mut blocks: Vec<Vec<(String, String)>> = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (indent, body) = match line.strip_prefix("    ") {
            Some(body) => (true, body),
            None => (false, line),
        };
        let tokens: Vec<&str> = body.split(' ').collect();
        prop_assert_eq!(tokens.len(), 2, "line {:?} is not `Key Value`", line);
        prop_assert!(clean_token(tokens[1]), "value {:?} in line {:?}", tokens[1], line);
        if indent {
            prop_assert!(!blocks.is_empty(), "option before any Host: {:?}", line);
            blocks
                .last_mut()
                .unwrap()
                .push((tokens[0].into(), tokens[1].into()));
        } else {
            prop_assert_eq!(tokens[0], "Host");
            blocks.push(vec![("Host".into(), tokens[1].into())]);
        }
    }
    prop_assert_eq!(blocks.len(), m.ssh.len());
    for (block, u) in blocks.iter().zip(&plan.upstreams) {
        let mut want = vec![
            ("Host".to_string(), u.alias.to_string()),
            ("HostName".to_string(), plan.gate_internal.address.to_string()),
            ("Port".to_string(), u.listen_port.to_string()),
            ("HostKeyAlias".to_string(), u.host.clone()),
        ];
        if let Some(user) = &u.user {
            want.push(("User".to_string(), user.clone()));
        }
        prop_assert_eq!(block, &want);
    }

    // The forwarder's argv: plain strings; each route round-trips.
    let argv = unit::forwarder_argv(&plan, settings);
    prop_assert!(
        argv.iter().all(|a| !a.is_empty() && !a.contains('\0')),
        "{argv:?}"
    );
    let routes = unit::forward_routes(&plan);
    prop_assert_eq!(routes.len(), plan.upstreams.len());
    for (r, u) in routes.iter().zip(&plan.upstreams) {
        prop_assert_eq!(r.listen_port, u.listen_port);
        prop_assert_eq!(&r.alias, &u.alias);
        let want: Vec<_> = u
            .addresses
            .iter()
            .map(|a| std::net::SocketAddr::new(*a, u.port))
            .collect();
        prop_assert_eq!(&r.upstreams, &want);
        prop_assert_eq!(r.to_string().parse::<ForwardRoute>().unwrap(), r.clone());
    }
    // The unit's property list builds and every value converts to D-Bus.
    for p in unit::properties(&plan, settings) {
        let _ = p.value.to_value();
    }
    Ok(())
}

/// A gate holds at most 1024 entries, and they must fit below port 65536:
/// 1024 entries from base port 64512 end at 65535; one more entry, or one
/// port higher, is refused with the setting to change.
#[test]
fn a_gate_holds_1024_entries_up_to_port_65535() {
    let slug = Slug::parse("many").unwrap();
    for (n, base_port, refusal) in [
        (1024usize, 64512u16, None),
        (1025, 30000, Some("1025 ssh entries: a gate serves at most 1024")),
        (
            1024,
            64513,
            Some("would need port 65536; declare fewer entries or lower base_port"),
        ),
    ] {
        let entries: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"Host":"h{i}","Hostname":"10.0.{}.{}"}}"#,
                    i / 250,
                    i % 250 + 1
                )
            })
            .collect();
        let m = parse(&format!(r#"{{"ssh":[{}]}}"#, entries.join(",")), Format::Json).unwrap();
        let settings = Settings {
            base_port,
            ..Settings::default()
        };
        let built = GateSpec::build(&slug, &m, &settings, None, fake_resolve)
            .and_then(|spec| spec.place(&settings, 0));
        match (built, refusal) {
            (Ok(plan), None) => assert_eq!(plan.upstreams.last().unwrap().listen_port, 65535),
            (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{e}"),
            (built, want) => panic!(
                "{n} entries from {base_port}: {:?}, expected {want:?}",
                built.err()
            ),
        }
    }
}

/// How many gates the pools of `settings` hold: /31s in the smaller pool,
/// computed here independently of `Settings::capacity`.
fn capacity(settings: &Settings) -> u32 {
    let pairs = |pool: Ipv4Net| 2u32.pow(31 - u32::from(pool.prefix_len()));
    pairs(settings.internal_pool).min(pairs(settings.egress_pool))
}

/// An address pool: the default, any /16 to /31 (down to a single gate),
/// or a large one.
fn pool(default: &'static str) -> impl Strategy<Value = Ipv4Net> {
    let net = |(address, len): (u32, u8)| Ipv4Net::new(Ipv4Addr::from(address), len).unwrap().trunc();
    prop_oneof![
        3 => Just(default.parse().unwrap()),
        3 => (any::<u32>(), 16u8..=31).prop_map(net),
        1 => (any::<u32>(), 30u8..=31).prop_map(net),
        1 => (any::<u32>(), 8u8..16).prop_map(net),
    ]
}

/// Host settings: base port, both address pools and the connection limit
/// vary, the edges of each range included.
fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![
            3 => Just(30000u16),
            1 => 1u16..=65535,
            1 => 65500u16..=65535,
        ],
        pool("10.231.0.0/16"),
        pool("10.232.0.0/16"),
        prop_oneof![3 => Just(256u32), 1 => 1u32..=4096],
    )
        .prop_map(
            |(base_port, internal_pool, egress_pool, max_connections)| Settings {
                base_port,
                internal_pool,
                egress_pool,
                max_connections,
                ..Settings::default()
            },
        )
}

/// A gate index for `settings`: anywhere in `0..32768`, or at the edge of
/// the pools (the last index that fits, or the first that does not).
fn index_for(settings: &Settings, anywhere: u32, edge: Option<bool>) -> u32 {
    match edge {
        Some(fits) => capacity(settings) - u32::from(fits),
        None => anywhere,
    }
}

fn slug() -> impl Strategy<Value = Slug> {
    "[a-z0-9][a-z0-9-]{0,31}".prop_map(|s| Slug::parse(&s).expect("a generated slug is valid"))
}

fn either_format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Toml), Just(Format::Json)]
}

proptest! {
    /// Arbitrary bytes, read as a manifest in either format: no panic, and
    /// every rejection says where or what.
    #[test]
    fn arbitrary_text_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), format in either_format()) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(err) = parse(&text, format) {
            prop_assert!(names_a_field(&err), "{:?}: {:?}", text, err);
        }
    }

    /// Arbitrary text built from TOML/JSON punctuation and manifest keys.
    #[test]
    fn manifest_shaped_text_never_panics(
        parts in proptest::collection::vec(
            prop_oneof![
                select(vec!["[[ssh]]\n", "[ssh]\n", "Host = ", "Hostname = ", "Port = ", "User = ",
                    "agent_netns = ", "\"", "'", "\n", "=", "{", "}", "[", "]", ",", ":", "\"ssh\"",
                    "\"Host\"", "\"Port\"", "null", "true", "1e400", "-1", "65536", "\"\\u0000\""])
                    .prop_map(str::to_string),
                hostile_string(),
            ],
            0..30),
        format in either_format(),
    ) {
        let text = parts.concat();
        if let Err(err) = parse(&text, format) {
            prop_assert!(names_a_field(&err), "{:?}: {:?}", text, err);
        }
    }

    /// Structured manifests of good and hostile values, as TOML and JSON:
    /// both formats agree, rejections blame a bad field, all-good manifests
    /// are accepted, and accepted ones give well-formed plans.
    #[test]
    fn structured_manifests_are_accepted_or_blamed_correctly(
        m in model(),
        settings in settings(),
        slug in slug(),
        anywhere in 0u32..32768,
        edge in proptest::option::weighted(0.3, any::<bool>()),
        cli_ns in proptest::option::weighted(0.1, "[a-z][a-z0-9-]{0,10}"),
    ) {
        let index = index_for(&settings, anywhere, edge);
        let toml_text = render_toml(&m);
        let json_text = render_json(&m);
        let from_toml = parse(&toml_text, Format::Toml);
        let from_json = parse(&json_text, Format::Json);
        prop_assert_eq!(from_toml.is_ok(), from_json.is_ok(), "TOML {:?} vs JSON {:?}", from_toml, from_json);
        match (from_toml, from_json) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(&a, &b);
                check_plan(&a, &settings, &slug, index, cli_ns.as_deref())?;
            }
            (Err(a), Err(b)) => {
                prop_assert!(!all_good(&m), "an all-good manifest was refused: {}\n{}", a, toml_text);
                check_rejection(&m, &a)?;
                check_rejection(&m, &b)?;
            }
            _ => unreachable!(),
        }
    }

    /// Many entries: accepted by the manifest, and the plan either fits the
    /// port range or says which setting to change.
    #[test]
    fn many_entries_fit_the_port_range_or_are_refused(
        n in prop_oneof![8 => 1usize..80, 1 => 80usize..2000],
        settings in settings(),
        slug in slug(),
        edge in proptest::option::weighted(0.5, any::<bool>()),
    ) {
        let index = index_for(&settings, 0, edge);
        let text: String = (0..n)
            .map(|i| format!("[[ssh]]\nHost = \"h{i}\"\nHostname = \"10.{}.{}.1\"\n", i / 256, i % 256))
            .collect();
        let m = parse(&text, Format::Toml).unwrap();
        prop_assert_eq!(m.ssh.len(), n);
        check_plan(&m, &settings, &slug, index, None)?;
    }

    /// Slugs: accepted exactly when they match `[a-z0-9][a-z0-9-]{0,31}`;
    /// a refusal names the rule.
    #[test]
    fn slugs_are_accepted_exactly_when_well_formed(raw in prop_oneof![
        "[a-z0-9-]{0,40}",
        hostile_string(),
        select(vec!["../etc", "..", ".", "a/b", "gate-a", "a\u{0}", "A"]).prop_map(str::to_string),
    ]) {
        let well_formed = !raw.is_empty()
            && raw.len() <= 32
            && !raw.starts_with('-')
            && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        match Slug::parse(&raw) {
            Ok(s) => {
                prop_assert!(well_formed, "{:?} accepted", raw);
                prop_assert_eq!(s.as_str(), raw.as_str());
            }
            Err(e) => {
                prop_assert!(!well_formed, "{:?} refused: {}", raw, e);
                let msg = e.to_string();
                prop_assert!(msg.starts_with("invalid slug") && msg.contains("a-z, 0-9"), "{}", msg);
            }
        }
    }
}
