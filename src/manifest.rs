//! The bottle manifest: the `ssh` entries an agent may reach, read from TOML
//! or JSON and validated before anything touches the host.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// The SSH hosts the agent may reach, in manifest order.
    pub ssh: Vec<SshEntry>,
}

/// One declared SSH host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshEntry {
    /// The alias the agent's ssh uses (`Host`).
    pub alias: String,
    /// The real upstream: a DNS name or an IP literal (`Hostname`).
    pub hostname: String,
    /// The upstream port (`Port`).
    pub port: u16,
    /// The remote user (`User`), copied into the ssh config.
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(default)]
    agent_netns: Option<String>,
    #[serde(default)]
    ssh: Option<Vec<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    #[serde(rename = "Host")]
    host: String,
    #[serde(rename = "Hostname", alias = "HostName")]
    hostname: String,
    #[serde(rename = "Port", default)]
    port: Option<RawPort>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

impl fmt::Display for RawPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawPort::Number(n) => write!(f, "{n}"),
            RawPort::Text(s) => write!(f, "{s:?}"),
        }
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
    let format = Format::of(path)?;
    let text = read_bounded(path)?;
    parse(&text, format).map_err(|e| Error::invalid(format!("manifest {}: {e}", path.display())))
}

/// Reads a regular file of at most [`MAX_MANIFEST_BYTES`], as UTF-8.
fn read_bounded(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).with_context(|| {
        format!(
            "cannot open manifest {}; check the path and its permissions",
            path.display()
        )
    })?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat manifest {}", path.display()))?;
    if !meta.is_file() {
        return Err(Error::invalid(format!(
            "manifest {} is not a regular file; point --manifest at a .toml or .json file",
            path.display()
        )));
    }
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
        Format::Json => serde_json::from_str(text).map_err(|e| e.to_string())?,
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
        Some(ns) => Some(validate_netns_ref(&ns).map_err(|e| format!("agent_netns: {e}"))?),
        None => None,
    };
    let entries = raw.ssh.unwrap_or_default();
    if entries.is_empty() {
        return Err("no ssh entries: add at least one [[ssh]] table with Host and Hostname".into());
    }
    let mut seen = HashSet::new();
    let mut ssh = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let at = |field: &str| format!("ssh entry {} ({field})", i + 1);
        validate_alias(&e.host).map_err(|m| format!("{}: {m}", at("Host")))?;
        if !seen.insert(e.host.to_ascii_lowercase()) {
            return Err(format!(
                "{}: alias {:?} is declared twice; give each entry its own Host",
                at("Host"),
                e.host
            ));
        }
        validate_hostname(&e.hostname).map_err(|m| format!("{}: {m}", at("Hostname")))?;
        let port = match e.port {
            None => DEFAULT_SSH_PORT,
            Some(p) => parse_port(&p).map_err(|m| format!("{}: {m}", at("Port")))?,
        };
        if let Some(user) = &e.user {
            validate_user(user).map_err(|m| format!("{}: {m}", at("User")))?;
        }
        ssh.push(SshEntry {
            alias: e.host,
            hostname: e.hostname,
            port,
            user: e.user,
        });
    }
    Ok(Manifest { agent_netns, ssh })
}

fn parse_port(raw: &RawPort) -> Result<u16, String> {
    let bad = || format!("port {raw} is not a number from 1 to 65535");
    let n: i64 = match raw {
        RawPort::Number(n) => *n,
        RawPort::Text(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 5 => {
            s.parse().map_err(|_| bad())?
        }
        RawPort::Text(_) => return Err(bad()),
    };
    u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(bad)
}

/// Checks an ssh_config `Host` alias: 1–64 characters of letters, digits,
/// `.`, `_` and `-`, starting with a letter or digit. No wildcards, spaces or
/// other ssh_config syntax.
pub fn validate_alias(alias: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if alias.is_empty() || alias.len() > 64 {
        return Err(format!("alias {alias:?} must be 1 to 64 characters"));
    }
    if let Some(c) = alias.chars().find(|c| !ok_char(*c)) {
        return Err(format!(
            "alias {alias:?} contains {c:?}; use only letters, digits, '.', '_' and '-'"
        ));
    }
    if !alias.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("alias {alias:?} must start with a letter or digit"));
    }
    Ok(())
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
        if ns.split('/').any(|c| c == "..") || ns.contains('\0') {
            return Err(format!("netns path {ns:?} must not contain '..'"));
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
    fn reading_refuses_non_regular_and_oversized_files() {
        let err = load(Path::new("/dev/zero.toml")).unwrap_err().to_string();
        assert!(err.contains("cannot open manifest"), "{err}");
        let dir = std::env::temp_dir().join(format!("gatectl-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("zero.toml");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let err = load(&link).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
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
