//! Host settings from `/etc/gatectl/gatectl.toml`: address pools, base port,
//! directories and forwarder limits. Every setting is optional.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

/// Where host settings live unless `GATECTL_CONFIG` names another file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gatectl/gatectl.toml";

/// First listen port of a gate; entry i listens on `base_port + i`.
pub const BASE_LISTEN_PORT: u16 = 30000;

/// The shortest idle period a forwarder may exit after: it then starts at
/// most three times in systemd's default start-limit interval (10 s; five
/// starts are allowed), leaving room for a restart after a failure.
pub const MIN_FORWARDER_IDLE_SECS: u32 = 5;

/// Where the forwarder binary is looked for, in order, when the settings
/// file does not set `forwarder_binary`: the Debian package's path, then a
/// hand install's. The first is also the default when neither exists.
pub const FORWARDER_BINARIES: [&str; 2] = ["/usr/bin/gatectl", "/usr/local/bin/gatectl"];

/// Host settings and their defaults (see `docs/architecture.md` for the
/// addresses and names they lead to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Pool of internal (agent ↔ gate) /31s.
    pub internal_pool: Ipv4Net,
    /// Pool of egress (gate ↔ host) /31s; masqueraded on the way out.
    pub egress_pool: Ipv4Net,
    /// Pool of IPv6 egress (gate ↔ host) /127s, one per gate by index, used
    /// when a gate has an IPv6 upstream and the host an IPv6 default route.
    pub egress_pool6: Ipv6Net,
    /// Whether the host masquerades `egress_pool6` (NAT66). Off when the
    /// pool is a routed prefix that the host's upstream routes back to it.
    pub nat66: bool,
    /// First listen port.
    pub base_port: u16,
    /// Directory of bottle manifests.
    pub bottles_dir: PathBuf,
    /// Runtime state: gate records and locks.
    pub state_dir: PathBuf,
    /// The binary the forwarder unit runs. Must be in a system path:
    /// a `DynamicUser=` unit cannot execute files under `/root`.
    pub forwarder_binary: PathBuf,
    /// Most connections one forwarder serves at once.
    pub max_connections: u32,
    /// Timeout of each connect attempt to an upstream, in seconds.
    pub connect_timeout_secs: u32,
    /// `start` has systemd start the gate's forwarder at once, without
    /// waiting for it, so the first connection finds it running (off by
    /// default: it costs each start, and a burst of starts, more than it
    /// saves an agent that connects at once; see BENCHMARKS.md).
    pub forwarder_prestart: bool,
    /// A forwarder with no connection for this many seconds exits; systemd
    /// starts it again at the next connection. 0: it never exits for that.
    pub forwarder_idle_secs: u32,
    /// Whether an upstream may be a link-local address (169.254.0.0/16,
    /// fe80::/10), where cloud metadata services live. Off by default.
    pub allow_link_local: bool,
    /// The DNS refresh re-resolves a running gate's names when their TTL
    /// runs out, but not sooner than this many seconds...
    pub dns_refresh_min_secs: u32,
    /// ...and not later.
    pub dns_refresh_max_secs: u32,
    /// The file `gatectl metrics --write` (and gatectl-metrics.timer)
    /// writes the metrics to: node_exporter's textfile collector directory.
    pub metrics_path: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            internal_pool: "10.231.0.0/16".parse().expect("valid default pool"),
            egress_pool: "10.232.0.0/16".parse().expect("valid default pool"),
            egress_pool6: "fd23:1:2::/48".parse().expect("valid default pool"),
            nat66: true,
            base_port: BASE_LISTEN_PORT,
            bottles_dir: PathBuf::from("/etc/gatectl/bottles"),
            state_dir: PathBuf::from("/run/gatectl"),
            forwarder_binary: PathBuf::from(FORWARDER_BINARIES[0]),
            max_connections: 256,
            connect_timeout_secs: 10,
            forwarder_prestart: false,
            forwarder_idle_secs: 60,
            allow_link_local: false,
            dns_refresh_min_secs: 30,
            dns_refresh_max_secs: 3600,
            metrics_path: PathBuf::from("/var/lib/prometheus/node-exporter/gatectl.prom"),
        }
    }
}

/// The first of [`FORWARDER_BINARIES`] that `exists`, else the first.
fn installed_forwarder_binary(exists: impl Fn(&Path) -> bool) -> PathBuf {
    let found = FORWARDER_BINARIES.into_iter().map(Path::new).find(|p| exists(p));
    found.unwrap_or(Path::new(FORWARDER_BINARIES[0])).to_path_buf()
}

impl Settings {
    /// The settings file: `GATECTL_CONFIG` or [`DEFAULT_CONFIG_PATH`].
    pub fn path() -> PathBuf {
        std::env::var_os("GATECTL_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }

    /// Loads the settings from [`Settings::path`]; a missing file means all
    /// defaults. Unless the file sets `forwarder_binary`, it is the first of
    /// [`FORWARDER_BINARIES`] that exists on this machine.
    pub fn load() -> Result<Settings> {
        let path = Settings::path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read host settings {}", path.display())),
        };
        Settings::parse_installed(&text, |p| p.exists())
            .map_err(|e| Error::invalid(format!("host settings {}: {e}", path.display())))
    }

    /// Parses and checks settings text. What it does not set keeps its
    /// [`Default`], which does not depend on the machine.
    pub fn parse(text: &str) -> Result<Settings, String> {
        let settings: Settings = toml::from_str(text).map_err(|e| e.message().to_string())?;
        settings.check()?;
        Ok(settings)
    }

    /// [`Settings::parse`], then, unless `text` sets `forwarder_binary`, the
    /// first of [`FORWARDER_BINARIES`] that `exists`.
    fn parse_installed(text: &str, exists: impl Fn(&Path) -> bool) -> Result<Settings, String> {
        #[derive(Deserialize)]
        struct ForwarderBinary {
            forwarder_binary: Option<PathBuf>,
        }
        let mut settings = Settings::parse(text)?;
        let set: ForwarderBinary = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if set.forwarder_binary.is_none() {
            settings.forwarder_binary = installed_forwarder_binary(exists);
        }
        Ok(settings)
    }

    fn check(&self) -> Result<(), String> {
        for (name, pool) in [
            ("internal_pool", self.internal_pool),
            ("egress_pool", self.egress_pool),
        ] {
            if pool.prefix_len() > 30 {
                return Err(format!("{name} {pool} is too small; give a /30 or larger pool"));
            }
            if pool.network() != pool.addr() {
                return Err(format!(
                    "{name} {pool} has host bits set; did you mean {}?",
                    pool.trunc()
                ));
            }
        }
        if self.internal_pool.contains(&self.egress_pool) || self.egress_pool.contains(&self.internal_pool) {
            return Err(format!(
                "internal_pool {} and egress_pool {} overlap; give them disjoint ranges",
                self.internal_pool, self.egress_pool
            ));
        }
        let pool6 = self.egress_pool6;
        if pool6.prefix_len() > 126 {
            return Err(format!(
                "egress_pool6 {pool6} is too small; give a /126 or larger pool"
            ));
        }
        if pool6.network() != pool6.addr() {
            return Err(format!(
                "egress_pool6 {pool6} has host bits set; did you mean {}?",
                pool6.trunc()
            ));
        }
        if self.base_port == 0 {
            return Err("base_port must be from 1 to 65535".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if self.connect_timeout_secs == 0 {
            return Err("connect_timeout_secs must be at least 1".into());
        }
        if (1..MIN_FORWARDER_IDLE_SECS).contains(&self.forwarder_idle_secs) {
            return Err(format!(
                "forwarder_idle_secs must be 0 (never exit) or at least {MIN_FORWARDER_IDLE_SECS}: a forwarder \
                 that exits and starts again more often could reach systemd's start limit (5 starts in 10 s), \
                 which fails the gate's socket unit"
            ));
        }
        if !self.forwarder_binary.is_absolute() {
            return Err("forwarder_binary must be an absolute path".into());
        }
        if self.dns_refresh_min_secs == 0 || self.dns_refresh_min_secs > self.dns_refresh_max_secs {
            return Err(format!(
                "dns_refresh_min_secs ({}) must be at least 1 and at most dns_refresh_max_secs ({})",
                self.dns_refresh_min_secs, self.dns_refresh_max_secs
            ));
        }
        Ok(())
    }

    /// How many gates the pools hold: one /31 of each IPv4 pool and one
    /// /127 of `egress_pool6` per gate.
    pub fn capacity(&self) -> u32 {
        let pairs = |p: Ipv4Net| 1u32 << (32 - u32::from(p.prefix_len()) - 1);
        let host_bits6 = 128 - u32::from(self.egress_pool6.prefix_len()) - 1;
        let pairs6 = if host_bits6 >= 32 {
            u32::MAX
        } else {
            1u32 << host_bits6
        };
        pairs(self.internal_pool).min(pairs(self.egress_pool)).min(pairs6)
    }

    /// Checks that `forwarder_binary` is an executable file. systemd runs it
    /// only at a gate's first connection, so `start` checks it first.
    pub fn check_forwarder_binary(&self) -> Result<()> {
        let path = &self.forwarder_binary;
        let problem = match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => Some("is not a regular file".to_string()),
            Ok(_) => nix::unistd::access(path, nix::unistd::AccessFlags::X_OK)
                .err()
                .map(|e| format!("is not executable ({e})")),
            Err(e) => Some(format!("cannot be read ({e})")),
        };
        match problem {
            None => Ok(()),
            Some(problem) => Err(Error::invalid(format!(
                "the forwarder binary {} {problem}; install gatectl there or set \
                 forwarder_binary in {DEFAULT_CONFIG_PATH}",
                path.display()
            ))),
        }
    }

    /// How long the DNS refresh keeps an answer valid for `ttl`: the TTL,
    /// held between the floor and the ceiling of the settings.
    pub fn dns_refresh_after(&self, ttl: Duration) -> Duration {
        let floor = Duration::from_secs(self.dns_refresh_min_secs.into());
        let ceiling = Duration::from_secs(self.dns_refresh_max_secs.into());
        ttl.clamp(floor, ceiling)
    }

    /// The connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let s = Settings::parse("").unwrap();
        assert_eq!(s.base_port, 30000);
        assert_eq!(s.internal_pool.to_string(), "10.231.0.0/16");
        assert_eq!(s.capacity(), 32768);
        assert_eq!(s.egress_pool6.to_string(), "fd23:1:2::/48");
        assert!(s.nat66);
        let small6 = Settings::parse("egress_pool6 = \"fd00::/120\"").unwrap();
        assert_eq!(small6.capacity(), 128);
    }

    #[test]
    fn defaults_do_not_depend_on_the_machine() {
        assert_eq!(
            Settings::default().forwarder_binary,
            Path::new("/usr/bin/gatectl")
        );
        assert_eq!(Settings::parse("").unwrap(), Settings::default());
    }

    #[test]
    fn loading_finds_the_installed_forwarder_unless_the_file_names_one() {
        let both: &[&str] = &["/usr/bin/gatectl", "/usr/local/bin/gatectl"];
        let local: &[&str] = &["/usr/local/bin/gatectl"];
        let cases = [
            ("", both, "/usr/bin/gatectl"),
            ("", local, "/usr/local/bin/gatectl"),
            ("", &[], "/usr/bin/gatectl"),
            ("base_port = 31000", local, "/usr/local/bin/gatectl"),
            (
                "forwarder_binary = \"/usr/bin/gatectl\"",
                local,
                "/usr/bin/gatectl",
            ),
            ("forwarder_binary = \"/opt/gatectl\"", both, "/opt/gatectl"),
        ];
        for (text, present, want) in cases {
            let exists = |p: &Path| present.iter().any(|q| p == Path::new(q));
            let settings = Settings::parse_installed(text, exists).unwrap();
            assert_eq!(
                settings.forwarder_binary,
                Path::new(want),
                "{text:?} with {present:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_settings() {
        for (text, want) in [
            ("internal_pool = \"10.231.0.1/16\"", "host bits"),
            ("egress_pool = \"10.231.128.0/17\"", "overlap"),
            ("internal_pool = \"10.0.0.0/31\"", "too small"),
            ("base_port = 0", "base_port"),
            (
                "egress_pool6 = \"fd23:1:2::1/48\"",
                "egress_pool6 fd23:1:2::1/48 has host bits",
            ),
            (
                "egress_pool6 = \"fd23:1:2::/127\"",
                "egress_pool6 fd23:1:2::/127 is too small",
            ),
            ("bogus = 1", "unknown field `bogus`"),
            (
                "forwarder_idle_secs = 4",
                "forwarder_idle_secs must be 0 (never exit) or at least 5",
            ),
            (
                "dns_refresh_min_secs = 0",
                "dns_refresh_min_secs (0) must be at least 1",
            ),
            (
                "dns_refresh_min_secs = 60\ndns_refresh_max_secs = 30",
                "must be at least 1 and at most dns_refresh_max_secs (30)",
            ),
        ] {
            let err = Settings::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn the_packaged_settings_file_shows_every_setting_with_its_default() {
        let text = include_str!("../examples/gatectl.toml");
        let shown: String = text
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .filter(|line| line.contains(" = "))
            .map(|line| format!("{line}\n"))
            .collect();
        let shown: toml::Table = toml::from_str(&shown).unwrap();
        let defaults = toml::Table::try_from(Settings::default()).unwrap();
        assert_eq!(shown, defaults);
        assert_eq!(
            Settings::parse(text),
            Ok(Settings::default()),
            "every line is a comment"
        );
    }

    #[test]
    fn the_dns_refresh_follows_the_ttl_between_floor_and_ceiling() {
        let settings = Settings::default();
        let after = |secs| settings.dns_refresh_after(Duration::from_secs(secs)).as_secs();
        assert_eq!(after(0), 30);
        assert_eq!(after(300), 300);
        assert_eq!(after(86_400), 3600);
    }
}
