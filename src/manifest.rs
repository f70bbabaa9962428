//! The bottle manifest: the `ssh` entries an agent may reach, read from TOML
//! or JSON and validated before anything touches the host.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::alias::Alias;
use crate::error::{Context, Error, Result};

/// Largest manifest gatectl reads. A bottle manifest is a few KiB; anything
/// near this is a mistake or an attack.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Default upstream SSH port.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// A parsed and validated bottle manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// The agent's network namespace (name under /run/netns or a path), if any.
    pub agent_netns: Option<String>,
    /// Whether gatectl owns the agent's netns: creates it at start when it
    /// is missing (named by `agent_netns`, or `agent-<slug>`) and deletes
    /// it at stop (`own_agent_netns = true`).
    pub own_agent_netns: bool,
    /// The SSH hosts the agent may reach, in manifest order.
    pub ssh: Vec<SshEntry>,
    /// Top-level keys gatectl does not know, which it ignores.
    #[serde(skip)]
    pub unknown_keys: Vec<String>,
}

/// The top-level keys of a manifest.
pub const TOP_LEVEL_KEYS: [&str; 3] = ["agent_netns", "own_agent_netns", "ssh"];

/// The keys of an `ssh` entry (`HostName` is accepted for `Hostname`).
pub const ENTRY_KEYS: [&str; 4] = ["Host", "Hostname", "Port", "User"];

impl Manifest {
    /// A warning for each unknown top-level key that looks like one of
    /// gatectl's: the same but for case, or a quarter of its letters (at
    /// least one) off. A typo such as `agent_nets` would otherwise leave the
    /// agent unconfined without a word.
    pub fn warnings(&self) -> Vec<String> {
        self.unknown_keys
            .iter()
            .filter_map(|key| {
                let near = TOP_LEVEL_KEYS.into_iter().find(|known| {
                    strsim::damerau_levenshtein(&key.to_lowercase(), known) <= (known.len() / 4).max(1)
                })?;
                Some(format!(
                    "the manifest's key `{key}` is unknown and ignored; did you mean `{near}`?"
                ))
            })
            .collect()
    }
}

/// One declared SSH host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshEntry {
    /// The alias the agent's ssh uses (`Host`).
    pub alias: Alias,
    /// The real upstream: a DNS name or an IP literal (`Hostname`).
    pub hostname: String,
    /// The upstream port (`Port`).
    pub port: u16,
    /// The remote user (`User`), copied into the ssh config.
    pub user: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a manifest table (a JSON object) with an `ssh` list")]
struct RawManifest {
    #[serde(default)]
    agent_netns: Option<Loose>,
    #[serde(default)]
    own_agent_netns: Option<Loose>,
    #[serde(default)]
    ssh: Option<RawEntries>,
    /// Every other top-level key: ignored, but named in a warning when it
    /// looks like one of gatectl's.
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an ssh entry table")]
struct RawEntry {
    #[serde(rename = "Host", default)]
    host: Option<Loose>,
    #[serde(rename = "Hostname", alias = "HostName", default)]
    hostname: Option<Loose>,
    #[serde(rename = "Port", default)]
    port: Option<Loose>,
    #[serde(rename = "User", default)]
    user: Option<Loose>,
}

/// A value as written, whatever its type: a mistyped value reaches
/// validation, which names its field, instead of failing in serde with a
/// message that does not.
#[derive(Debug)]
enum Loose {
    Text(String),
    Int(i128),
    Float(f64),
    Bool(bool),
    Null,
    List,
    Table,
}

impl Loose {
    /// What kind of value this is, for "must be a string, not …".
    fn kind(&self) -> &'static str {
        match self {
            Loose::Text(_) => "a string",
            Loose::Int(_) => "an integer",
            Loose::Float(_) => "a fractional number",
            Loose::Bool(_) => "a boolean",
            Loose::Null => "null",
            Loose::List => "a list",
            Loose::Table => "a table",
        }
    }

    /// The string, or an error naming the type found instead.
    fn into_text(self) -> Result<String, String> {
        match self {
            Loose::Text(s) => Ok(s),
            other => Err(format!("must be a string, not {}", other.kind())),
        }
    }
}

impl fmt::Display for Loose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loose::Text(s) => write!(f, "{s:?}"),
            Loose::Int(n) => write!(f, "{n}"),
            Loose::Float(x) => write!(f, "{x:?}"),
            Loose::Bool(b) => write!(f, "{b}"),
            Loose::Null | Loose::List | Loose::Table => f.write_str(self.kind()),
        }
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Loose, E> {
        Ok(Loose::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Loose, E> {
        Ok(Loose::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Loose, E> {
        Ok(Loose::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Loose, E> {
        Ok(Loose::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Loose, E> {
        Ok(i128::try_from(v).map_or(Loose::Float(v as f64), Loose::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Loose, E> {
        Ok(Loose::Float(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Loose, E> {
        Ok(Loose::Text(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Loose, E> {
        Ok(Loose::Text(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose::List)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Loose::Table)
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Loose, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

/// The `ssh` value: a list whose items are entry tables, or what was
/// written instead (reported by validation, naming `ssh`).
enum RawEntries {
    List(Vec<RawItem>),
    Other(Loose),
}

/// One item of the `ssh` list: an entry table, or the kind of value found.
enum RawItem {
    Entry(RawEntry),
    Other(Loose),
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = RawEntries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of ssh entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawEntries, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<RawItem>()? {
            items.push(item);
        }
        Ok(RawEntries::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawEntries, A::Error> {
        LooseVisitor.visit_map(map).map(RawEntries::Other)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawEntries, E> {
        LooseVisitor.visit_bool(v).map(RawEntries::Other)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawEntries, E> {
        LooseVisitor.visit_i64(v).map(RawEntries::Other)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawEntries, E> {
        LooseVisitor.visit_u64(v).map(RawEntries::Other)
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawEntries, E> {
        LooseVisitor.visit_i128(v).map(RawEntries::Other)
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawEntries, E> {
        LooseVisitor.visit_u128(v).map(RawEntries::Other)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawEntries, E> {
        LooseVisitor.visit_f64(v).map(RawEntries::Other)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawEntries, E> {
        LooseVisitor.visit_str(v).map(RawEntries::Other)
    }
}

impl<'de> Deserialize<'de> for RawEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawEntries, D::Error> {
        d.deserialize_any(EntriesVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = RawItem;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an ssh entry table")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawItem, A::Error> {
        RawEntry::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawItem::Entry)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawItem, A::Error> {
        LooseVisitor.visit_seq(seq).map(RawItem::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawItem, E> {
        LooseVisitor.visit_unit().map(RawItem::Other)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawItem, E> {
        LooseVisitor.visit_bool(v).map(RawItem::Other)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawItem, E> {
        LooseVisitor.visit_i64(v).map(RawItem::Other)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawItem, E> {
        LooseVisitor.visit_u64(v).map(RawItem::Other)
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawItem, E> {
        LooseVisitor.visit_i128(v).map(RawItem::Other)
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawItem, E> {
        LooseVisitor.visit_u128(v).map(RawItem::Other)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawItem, E> {
        LooseVisitor.visit_f64(v).map(RawItem::Other)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawItem, E> {
        LooseVisitor.visit_str(v).map(RawItem::Other)
    }
}

impl<'de> Deserialize<'de> for RawItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawItem, D::Error> {
        d.deserialize_any(ItemVisitor)
    }
}

/// The format of a manifest file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML (`.toml`).
    Toml,
    /// JSON (`.json`).
    Json,
}

impl Format {
    fn of(path: &Path) -> Result<Format> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Ok(Format::Toml),
            Some("json") => Ok(Format::Json),
            _ => Err(Error::invalid(format!(
                "manifest {}: unknown format; name it *.toml or *.json",
                path.display()
            ))),
        }
    }
}

/// Where the manifest of `slug` lives by default: `<dir>/<slug>.toml` or
/// `<dir>/<slug>.json`. Refuses when both or neither exist.
pub fn default_path(bottles_dir: &Path, slug: &str) -> Result<PathBuf> {
    let toml = bottles_dir.join(format!("{slug}.toml"));
    let json = bottles_dir.join(format!("{slug}.json"));
    match (toml.exists(), json.exists()) {
        (true, false) => Ok(toml),
        (false, true) => Ok(json),
        (true, true) => Err(Error::invalid(format!(
            "both {} and {} exist; remove one of them",
            toml.display(),
            json.display()
        ))),
        (false, false) => Err(Error::invalid(format!(
            "no manifest for \"{slug}\": neither {} nor {} exists; write one or pass --manifest FILE",
            toml.display(),
            json.display()
        ))),
    }
}

/// Reads and validates the manifest at `path`.
pub fn load(path: &Path) -> Result<Manifest> {
    let text = read_bounded(path)?;
    let format = Format::of(path)?;
    parse(&text, format).map_err(|e| Error::invalid(format!("manifest {}: {e}", path.display())))
}

/// Reads a regular file of at most [`MAX_MANIFEST_BYTES`], as UTF-8. A
/// symbolic link is resolved first; the type of the file it leads to is
/// checked before that file is opened (opening a FIFO releases a waiting
/// writer, opening a device can have side effects), the open follows no
/// further link and does not block, and the opened file is checked again
/// (it may have been swapped in between).
fn read_bounded(path: &Path) -> Result<String> {
    let missing = || {
        Error::invalid(format!(
            "manifest {} does not exist; check the path",
            path.display()
        ))
    };
    let io = |what: &str, e: std::io::Error| Error::Io {
        context: format!(
            "cannot {what} manifest {}; check the path and its permissions",
            path.display()
        ),
        source: e,
    };
    let real = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(),
        _ => io("resolve", e),
    })?;
    let not_regular = |meta: &std::fs::Metadata| {
        let t = meta.file_type();
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_file() {
            return Ok(());
        } else {
            "a FIFO, socket or device"
        };
        Err(Error::invalid(format!(
            "manifest {} is {what}, not a regular file; point --manifest at a .toml or .json file",
            path.display()
        )))
    };
    not_regular(&std::fs::symlink_metadata(&real).map_err(|e| io("stat", e))?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(&real)
        .with_context(|| {
            format!(
                "cannot open manifest {}; check the path and its permissions",
                path.display()
            )
        })?;
    not_regular(&file.metadata().map_err(|e| io("stat", e))?)?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(Error::invalid(format!(
            "manifest {} is larger than {} KiB; a bottle manifest is a few KiB, check the file",
            path.display(),
            MAX_MANIFEST_BYTES / 1024
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::invalid(format!(
            "manifest {} is not valid UTF-8 (byte {}); save it as UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Parses and validates manifest text. The error string names the offending
/// entry and field.
pub fn parse(text: &str, format: Format) -> Result<Manifest, String> {
    let raw: RawManifest = match format {
        Format::Toml => {
            toml::from_str(text).map_err(|e| e.message().to_string() + &toml_location(text, &e))?
        }
        Format::Json => {
            // serde would also take a struct from a JSON array (its fields by
            // position); a manifest is an object.
            if !text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
                return Err("a JSON manifest must be an object like {\"ssh\": [...]}; check the file".into());
            }
            serde_json::from_str(text).map_err(|e| e.to_string())?
        }
    };
    validate(raw)
}

fn toml_location(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

fn validate(raw: RawManifest) -> Result<Manifest, String> {
    let agent_netns = match raw.agent_netns {
        Some(ns) => {
            let ns = ns.into_text().map_err(|e| format!("agent_netns: {e}"))?;
            Some(validate_netns_ref(&ns).map_err(|e| format!("agent_netns: {e}"))?)
        }
        None => None,
    };
    let own_agent_netns = match raw.own_agent_netns {
        None | Some(Loose::Bool(false)) => false,
        Some(Loose::Bool(true)) => true,
        Some(other) => {
            return Err(format!(
                "own_agent_netns: must be true or false, not {}",
                other.kind()
            ))
        }
    };
    if let (true, Some(path)) = (
        own_agent_netns,
        agent_netns.as_deref().filter(|ns| ns.starts_with('/')),
    ) {
        return Err(format!(
            "own_agent_netns: gatectl owns only a named netns under /run/netns, not the path {path:?}; \
             give agent_netns a name, or leave it out for agent-<slug>"
        ));
    }
    let unknown_keys = raw.other.into_keys().collect();
    let entries = match raw.ssh {
        None => Vec::new(),
        Some(RawEntries::List(items)) => items,
        Some(RawEntries::Other(v)) => {
            return Err(format!(
                "ssh must be a list of entries, not {}; write each entry as an [[ssh]] table",
                v.kind()
            ))
        }
    };
    if entries.is_empty() {
        return Err("no ssh entries: add at least one [[ssh]] table with Host and Hostname".into());
    }
    let mut seen = HashSet::new();
    let mut ssh = Vec::with_capacity(entries.len());
    for (i, item) in entries.into_iter().enumerate() {
        let at = |field: &str| format!("ssh entry {} ({field})", i + 1);
        let e = match item {
            RawItem::Entry(e) => e,
            RawItem::Other(v) => {
                return Err(format!(
                    "ssh entry {}: must be a table with Host and Hostname, not {}",
                    i + 1,
                    v.kind()
                ))
            }
        };
        let text = |value: Option<Loose>, field: &str| -> Result<String, String> {
            value
                .ok_or_else(|| format!("{}: missing; every entry needs Host and Hostname", at(field)))?
                .into_text()
                .map_err(|m| format!("{}: {m}", at(field)))
        };
        let host = Alias::parse(&text(e.host, "Host")?).map_err(|m| format!("{}: {m}", at("Host")))?;
        if !seen.insert(host.as_str().to_ascii_lowercase()) {
            return Err(format!(
                "{}: alias {:?} is declared twice; give each entry its own Host",
                at("Host"),
                host.as_str(),
            ));
        }
        let hostname = text(e.hostname, "Hostname")?;
        validate_hostname(&hostname).map_err(|m| format!("{}: {m}", at("Hostname")))?;
        let port = match e.port {
            None => DEFAULT_SSH_PORT,
            Some(p) => parse_port(&p).map_err(|m| format!("{}: {m}", at("Port")))?,
        };
        let user = match e.user {
            None => None,
            Some(user) => {
                let user = user.into_text().map_err(|m| format!("{}: {m}", at("User")))?;
                validate_user(&user).map_err(|m| format!("{}: {m}", at("User")))?;
                Some(user)
            }
        };
        ssh.push(SshEntry {
            alias: host,
            hostname,
            port,
            user,
        });
    }
    Ok(Manifest {
        agent_netns,
        own_agent_netns,
        ssh,
        unknown_keys,
    })
}

fn parse_port(raw: &Loose) -> Result<u16, String> {
    let bad = || format!("port {raw} is not a number from 1 to 65535");
    let n: i128 = match raw {
        Loose::Int(n) => *n,
        Loose::Text(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 5 => {
            s.parse().map_err(|_| bad())?
        }
        Loose::Text(_) | Loose::Float(_) => return Err(bad()),
        other => {
            return Err(format!(
                "port must be a number from 1 to 65535 (an integer or a string of digits), not {}",
                other.kind()
            ))
        }
    };
    u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(bad)
}

/// Checks an upstream: an IPv4 or IPv6 literal, or a DNS name of letters,
/// digits and hyphens in dot-separated labels of at most 63 characters.
pub fn validate_hostname(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let fix = "give a DNS name (letters, digits, '-' and '.') or an IP address";
    if host.is_empty() || host.len() > 253 {
        return Err(format!("hostname {host:?} must be 1 to 253 characters; {fix}"));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!("hostname {host:?} contains {c:?}; {fix}"));
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
            return Err(format!("hostname {host:?} has an invalid label {label:?}; {fix}"));
        }
    }
    if host
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "hostname {host:?} is neither a valid IP address nor a DNS name; {fix}"
        ));
    }
    Ok(())
}

/// Checks a remote user name: 1–32 characters of letters, digits, `.`, `_`
/// and `-` (no ssh_config `%` tokens or spaces).
pub fn validate_user(user: &str) -> Result<(), String> {
    let ok = !user.is_empty()
        && user.len() <= 32
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !user.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "user {user:?} must be 1 to 32 characters of letters, digits, '.', '_' and '-'"
        ))
    }
}

/// Checks a network namespace reference: a name under /run/netns (no `/`)
/// or an absolute path without `..`.
pub fn validate_netns_ref(ns: &str) -> Result<String, String> {
    if ns.starts_with('/') {
        if ns.split('/').any(|c| c == "..") {
            return Err(format!("netns path {ns:?} must not contain '..'"));
        }
        if let Some(c) = ns.chars().find(|c| c.is_control()) {
            return Err(format!(
                "netns path {ns:?} contains {c:?}; give a path without control characters"
            ));
        }
        if ns.len() > 4096 {
            return Err(format!(
                "netns path is {} bytes long; give a path of at most 4096",
                ns.len()
            ));
        }
        return Ok(ns.to_string());
    }
    let ok = !ns.is_empty()
        && ns.len() <= 64
        && ns != "."
        && ns != ".."
        && ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(ns.to_string())
    } else {
        Err(format!(
            "netns {ns:?} is neither a name (letters, digits, '.', '_', '-') nor an absolute path"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Result<Manifest, String> {
        parse(text, Format::Toml)
    }

    #[test]
    fn parses_the_design_example() {
        let m = toml(
            r#"
            agent_netns = "agent-alice"
            other = "ignored"
            [[ssh]]
            Host = "github"
            Hostname = "github.com"
            Port = 22
            User = "git"
            [[ssh]]
            Host = "box"
            Hostname = "2001:db8::1"
            Port = "2222"
            "#,
        )
        .unwrap();
        assert_eq!(m.agent_netns.as_deref(), Some("agent-alice"));
        assert_eq!(m.ssh.len(), 2);
        assert_eq!(m.ssh[0].port, 22);
        assert_eq!(m.ssh[0].user.as_deref(), Some("git"));
        assert_eq!(m.ssh[1].port, 2222);
        assert_eq!(m.ssh[1].hostname, "2001:db8::1");
    }

    #[test]
    fn the_key_lists_are_the_keys_the_parser_knows() {
        let m = toml(
            "agent_netns = \"a\"\nown_agent_netns = true\nssh = [{ Host = \"h\", Hostname = \"x\", Port = 1, User = \"u\" }]\n",
        )
        .unwrap();
        assert_eq!(m.unknown_keys, Vec::<String>::new());
        let keys: Vec<&str> = ["agent_netns", "own_agent_netns", "ssh"].into();
        assert_eq!(keys, TOP_LEVEL_KEYS);
        let err = toml("ssh = [{ Host = \"h\", Hostname = \"x\", Nope = 1 }]\n").unwrap_err();
        for key in ENTRY_KEYS {
            assert!(err.contains(&format!("`{key}`")), "{err}");
        }
    }

    /// A bot-bottle manifest as bot-bottle writes it: sections of its own,
    /// nested tables and lists, even an `ssh` key deeper down. gatectl
    /// reads the top-level `ssh` entries and nothing else, and warns about
    /// none of the rest.
    const BOT_BOTTLE_MANIFEST: &str = r#"
name = "alice"
image = "ghcr.io/example/claude-bottle:2026.05"
description = "a coding agent with two git remotes"

[agent]
model = "claude-opus"
max_turns = 200
allowed_tools = ["Bash", "Edit", "Read"]

[agent.env]
GIT_AUTHOR_NAME = "Alice Bot"
HTTPS_PROXY = "http://pipelock:8888"

[[mounts]]
source = "/srv/work/alice"
target = "/work"
read_only = false

[[mounts]]
source = "/srv/cache"
target = "/cache"
read_only = true

[network]
egress = "pipelock"
ssh = false

[network.pipelock]
allow = ["api.example.com:443", "pypi.org:443"]
log = { level = "info", sink = "journal" }

[[ssh]]
Host = "github"
Hostname = "github.com"
Port = "22"

[[ssh]]
Host = "build"
Hostname = "192.0.2.10"
Port = "2222"

[limits]
memory = "4G"
cpus = 2.5
"#;

    #[test]
    fn a_bot_bottle_manifest_gives_its_ssh_entries_and_nothing_else() {
        let entry = |alias: &str, hostname: &str, port| SshEntry {
            alias: Alias::parse(alias).unwrap(),
            hostname: hostname.into(),
            port,
            user: None,
        };
        let want = Manifest {
            agent_netns: None,
            own_agent_netns: false,
            ssh: vec![
                entry("github", "github.com", 22),
                entry("build", "192.0.2.10", 2222),
            ],
            unknown_keys: [
                "agent",
                "description",
                "image",
                "limits",
                "mounts",
                "name",
                "network",
            ]
            .map(String::from)
            .into(),
        };
        let from_toml = toml(BOT_BOTTLE_MANIFEST).unwrap();
        assert_eq!(from_toml, want);
        assert_eq!(from_toml.warnings(), Vec::<String>::new());
        // The same manifest as JSON reads the same.
        let value: ::toml::Value = ::toml::from_str(BOT_BOTTLE_MANIFEST).unwrap();
        let from_json = parse(&serde_json::to_string(&value).unwrap(), Format::Json).unwrap();
        assert_eq!(from_json, want);
    }

    #[test]
    fn the_shipped_example_confines_its_agent() {
        let m = toml(include_str!("../examples/bottle.toml")).unwrap();
        assert!(m.own_agent_netns);
        assert_eq!(m.warnings(), Vec::<String>::new());
    }

    #[test]
    fn gatectl_may_own_the_agent_netns_by_name_only() {
        let entry = "[[ssh]]\nHost = \"a\"\nHostname = \"h.example\"\n";
        let owned = |top: &str| toml(&format!("{top}\n{entry}"));
        let m = owned("own_agent_netns = true").unwrap();
        assert_eq!((m.agent_netns, m.own_agent_netns), (None, true));
        let m = owned("agent_netns = \"agent-x\"\nown_agent_netns = true").unwrap();
        assert_eq!(
            (m.agent_netns.as_deref(), m.own_agent_netns),
            (Some("agent-x"), true)
        );
        assert!(!owned("").unwrap().own_agent_netns);
        for (top, want) in [
            (
                "agent_netns = \"/proc/1/ns/net\"\nown_agent_netns = true",
                "own_agent_netns: gatectl owns only a named netns under /run/netns, not the path \"/proc/1/ns/net\"; \
                 give agent_netns a name, or leave it out for agent-<slug>",
            ),
            ("own_agent_netns = \"yes\"", "own_agent_netns: must be true or false, not a string"),
        ] {
            assert_eq!(owned(top).unwrap_err(), want);
        }
    }

    #[test]
    fn a_typo_of_a_top_level_key_is_warned_about_and_others_are_not() {
        let entry = "[[ssh]]\nHost = \"a\"\nHostname = \"h.example\"\n";
        let m = toml(&format!(
            "agent_nets = \"agent-x\"\nAgent_Netns = \"y\"\ncomment = \"x\"\nenv = 1\n{entry}"
        ))
        .unwrap();
        assert_eq!(m.agent_netns, None);
        assert_eq!(
            m.warnings(),
            [
                "the manifest's key `Agent_Netns` is unknown and ignored; did you mean `agent_netns`?",
                "the manifest's key `agent_nets` is unknown and ignored; did you mean `agent_netns`?",
            ]
        );
        let m = parse(
            r#"{"ssh":[{"Host":"a","Hostname":"h"}],"owm_agent_netns":true}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(
            m.warnings(),
            ["the manifest's key `owm_agent_netns` is unknown and ignored; did you mean `own_agent_netns`?"]
        );
    }

    #[test]
    fn parses_json_and_defaults_the_port() {
        let m = parse(
            r#"{"ssh":[{"Host":"a","Hostname":"10.0.0.1"}],"env":{}}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(m.ssh[0].port, 22);
        assert_eq!(m.agent_netns, None);
    }

    #[test]
    fn rejects_bad_manifests_naming_the_field() {
        let entry = |extra: &str| format!("[[ssh]]\nHost = \"a\"\nHostname = \"h.example\"\n{extra}");
        let cases: Vec<(String, &str)> = vec![
            ("x = 1".into(), "no ssh entries"),
            ("ssh = []".into(), "no ssh entries"),
            (entry("Bogus = 1"), "unknown field `Bogus`"),
            (entry("Port = 0"), "ssh entry 1 (Port): port 0"),
            (entry("Port = 65536"), "port 65536"),
            (entry("Port = -1"), "port -1"),
            (entry("Port = \"22; rm\""), "port \"22; rm\""),
            (
                "[[ssh]]\nHost = \"a b\"\nHostname = \"h\"".into(),
                "ssh entry 1 (Host): alias \"a b\" contains ' '",
            ),
            ("[[ssh]]\nHost = \"*\"\nHostname = \"h\"".into(), "contains '*'"),
            (
                "[[ssh]]\nHost = \"a\"\nHostname = \"h;rm -rf /\"".into(),
                "(Hostname): hostname",
            ),
            (
                "[[ssh]]\nHost = \"a\"\nHostname = \"$(id)\"".into(),
                "contains '$'",
            ),
            (
                "[[ssh]]\nHost = \"a\"\nHostname = \"h\\nProxyCommand x\"".into(),
                "contains '\\n'",
            ),
            (
                "[[ssh]]\nHost = \"a\"\nHostname = \"-oProxyCommand=x\"".into(),
                "contains '='",
            ),
            ("[[ssh]]\nHost = \"a\"\nHostname = \"-h\"".into(), "invalid label"),
            (
                "[[ssh]]\nHost = \"a\"\nHostname = \"999.1.1.1\"".into(),
                "neither a valid IP",
            ),
            (
                "[[ssh]]\nHost = \"a\"\nHostname = \"h\"\n[[ssh]]\nHost = \"A\"\nHostname = \"h\"".into(),
                "ssh entry 2 (Host): alias \"A\" is declared twice",
            ),
            (entry("User = \"%d\""), "(User): user \"%d\""),
            ("agent_netns = \"../x\"\n".to_string() + &entry(""), "agent_netns"),
            (
                "agent_netns = 5\n".to_string() + &entry(""),
                "agent_netns: must be a string",
            ),
            (
                "[ssh]\nHost = \"a\"".into(),
                "ssh must be a list of entries, not a table",
            ),
            ("ssh = [1]".into(), "ssh entry 1: must be a table"),
            ("[[ssh]]\nHostname = \"h\"".into(), "ssh entry 1 (Host): missing"),
            ("[[ssh]]\nHost = \"a\"".into(), "ssh entry 1 (Hostname): missing"),
            (
                "[[ssh]]\nHost = 5\nHostname = \"h\"".into(),
                "ssh entry 1 (Host): must be a string",
            ),
            (entry("Port = 22.5"), "ssh entry 1 (Port): port 22.5 is not"),
            (entry("Port = true"), "ssh entry 1 (Port): port must be"),
            (
                entry("Port = 99999999999999999999"),
                "(Port): port 99999999999999999999",
            ),
            (
                entry("User = []"),
                "ssh entry 1 (User): must be a string, not a list",
            ),
        ];
        for (text, want) in cases {
            let err = toml(&text).unwrap_err();
            assert!(
                err.contains(want),
                "manifest {text:?}: error {err:?} lacks {want:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_json_shapes_naming_the_field() {
        let cases = [
            ("[]", "must be an object"),
            ("null", "must be an object"),
            ("", "must be an object"),
            (
                r#"{"ssh":[null]}"#,
                "ssh entry 1: must be a table with Host and Hostname, not null",
            ),
            (
                r#"{"ssh":[{"Host":"a","Hostname":"h","Port":1e20}]}"#,
                "(Port): port 1e20",
            ),
            (
                r#"{"ssh":[{"Host":"a","Host":"b","Hostname":"h"}]}"#,
                "duplicate field `Host`",
            ),
            (r#"{"ssh":{"Host":"a"}}"#, "ssh must be a list"),
            (
                r#"{"ssh":[{"Host":"a","Hostname":"h","Bogus":1}]}"#,
                "unknown field `Bogus`",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text, Format::Json).unwrap_err();
            assert!(
                err.contains(want),
                "manifest {text:?}: error {err:?} lacks {want:?}"
            );
        }
    }

    #[test]
    fn reading_refuses_non_regular_and_oversized_files() {
        let err = load(Path::new("/dev/zero.toml")).unwrap_err().to_string();
        assert_eq!(err, "manifest /dev/zero.toml does not exist; check the path");
        let dir = std::env::temp_dir().join(format!("gatectl-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("zero.toml");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let err = load(&link).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "manifest {} is a FIFO, socket or device, not a regular file; point --manifest at a .toml or .json file",
                link.display()
            )
        );
        let sub = dir.join("sub.toml");
        std::fs::create_dir_all(&sub).unwrap();
        let err = load(&sub).unwrap_err().to_string();
        assert!(
            err.ends_with("is a directory, not a regular file; point --manifest at a .toml or .json file"),
            "{err}"
        );
        // A FIFO is refused without being opened: a writer waiting for a
        // reader stays waiting.
        let fifo = dir.join("fifo.toml");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (opened, writer) = {
            let (tx, rx) = std::sync::mpsc::channel();
            let fifo = fifo.clone();
            let writer = std::thread::spawn(move || {
                let file = std::fs::OpenOptions::new().write(true).open(&fifo);
                tx.send(()).unwrap();
                drop(file);
            });
            (rx, writer)
        };
        let err = load(&fifo).unwrap_err().to_string();
        assert!(
            err.contains("is a FIFO, socket or device, not a regular file"),
            "{err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            opened.try_recv().is_err(),
            "reading the manifest released the FIFO's writer"
        );
        // Release it ourselves.
        drop(std::fs::File::open(&fifo).unwrap());
        writer.join().unwrap();
        let big = dir.join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_MANIFEST_BYTES + 10) as usize]).unwrap();
        let err = load(&big).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, b"\xff\xfe").unwrap();
        let err = load(&bad).unwrap_err().to_string();
        assert!(err.contains("not valid UTF-8"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
