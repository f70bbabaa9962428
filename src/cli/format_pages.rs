//! The manual pages of gatectl's two file formats, in section 5:
//! gatectl.toml(5), the host settings, and gatectl-manifest(5), an agent's
//! manifest. Every setting and its default come from [`Settings`] itself,
//! and the tests hold the key lists to the parsers, so the pages cannot
//! drift from the code.

use crate::config::Settings;
use crate::manifest::{ENTRY_KEYS, TOP_LEVEL_KEYS};
use crate::plan::MAX_ENTRIES;

/// Each host setting with what it does, in the order the page lists them.
pub const SETTINGS: [(&str, &str); 16] = [
    (
        "internal_pool",
        "IPv4 pool of the internal /31s (agent end and gate). A gate whose agent has a netns \
         always takes the first /31 (the gate at its second address); an agent end in the host's \
         namespace takes the /31 of the gate's index, and then the pool must not overlap a host route.",
    ),
    (
        "egress_pool",
        "IPv4 pool of the egress /31s (host end and gate), one per gate by index, masqueraded on the \
         way out. It must not overlap a host route. With internal_pool it sets how many gates fit.",
    ),
    (
        "egress_pool6",
        "IPv6 pool of the egress /127s (host end and gate), one per gate by index. Only a gate with an \
         upstream that has an IPv6 address gets one, and only on a host with an IPv6 default route \
         (else such an upstream is reached over IPv4, or refused when it has IPv6 addresses only). It \
         must not overlap a host route. The default is a ULA prefix, masqueraded (see nat66).",
    ),
    (
        "nat66",
        "Whether the host masquerades egress_pool6 on the way out (NAT66). Set it to false when \
         egress_pool6 is a routed prefix of the host's that the network routes back to it: gates then \
         reach their upstreams from their own addresses.",
    ),
    (
        "base_port",
        "First listen port of a gate: entry i of a manifest listens on base_port + i.",
    ),
    (
        "bottles_dir",
        "Directory of the manifests: SLUG.toml or SLUG.json.",
    ),
    (
        "state_dir",
        "Runtime state: gate records (0600), index claims, locks, and the markers that say gatectl \
         turned IPv4 or IPv6 forwarding on. Keep it on a tmpfs such as /run, so a reboot clears it.",
    ),
    (
        "forwarder_binary",
        "The binary the forwarder unit runs (gatectl forward). It must be in a system path, since a \
         DynamicUser= unit cannot run files under /root. When the file does not set it, \
         /usr/bin/gatectl is used, or /usr/local/bin/gatectl if only that exists.",
    ),
    (
        "max_connections",
        "Most connections one gate's forwarder serves at once; the excess is refused with an SSH disconnect message.",
    ),
    (
        "connect_timeout_secs",
        "Timeout of each connection attempt to an upstream, in seconds.",
    ),
    (
        "forwarder_prestart",
        "Whether gatectl start has systemd start the gate's forwarder right away, without waiting for \
         it, so that the agent's first connection finds it running instead of waiting for its sandbox \
         to be set up. Skipped while another gate's forwarder is still starting, so that a burst of \
         starts does not slow itself down. When false (the default: it costs each start more than it \
         saves an agent that connects at once), the forwarder starts at the first connection.",
    ),
    (
        "forwarder_idle_secs",
        "A forwarder with no connection open or accepted for this many seconds exits, and systemd \
         starts it again at the next connection: an idle gate costs no process. A forwarder that \
         listens on a port gatectl reload added stays, since that port is its own socket. 0: \
         forwarders never exit for being idle; otherwise at least 5, so that a forwarder cannot reach \
         systemd's start limit (5 starts in 10 s) by exiting and starting again.",
    ),
    (
        "allow_link_local",
        "Whether an upstream may be a link-local address (169.254.0.0/16, fe80::/10), where cloud \
         metadata services live.",
    ),
    (
        "dns_refresh_min_secs",
        "The floor of the DNS refresh: gatectl\\-refresh.timer re-resolves a running gate's upstream \
         names when the TTL of their last answer runs out, but not sooner than this many seconds.",
    ),
    (
        "dns_refresh_max_secs",
        "The ceiling of the DNS refresh: a running gate's names are resolved again at least this often, \
         whatever their TTL.",
    ),
    (
        "metrics_path",
        "The file gatectl metrics \\-\\-write writes the gates' metrics to (Prometheus text), every \
         minute when gatectl\\-metrics.timer is enabled: a file in node_exporter's textfile collector \
         directory.",
    ),
];

/// The file name and roff text of gatectl.toml(5).
pub fn settings_page() -> (String, String) {
    let defaults = toml::Table::try_from(Settings::default()).expect("the settings serialize");
    let mut text = header("gatectl.toml", "host settings of gatectl");
    text.push_str(
        ".SH SYNOPSIS\n\\fI/etc/gatectl/gatectl.toml\\fR\n.SH DESCRIPTION\n\
         The host settings of \\fBgatectl\\fR(8), in TOML. Every setting is optional; a missing \
         file means all defaults. The environment variable \\fBGATECTL_CONFIG\\fR names another \
         file. An unknown key is an error that names it.\n.SH SETTINGS\n",
    );
    for (key, what) in SETTINGS {
        let default = defaults.get(key).map(toml::Value::to_string).unwrap_or_default();
        text.push_str(&format!(
            ".TP\n\\fB{key}\\fR (default: {})\n{}\n",
            escape(&default),
            escape(what)
        ));
    }
    text.push_str(
        ".SH EXAMPLE\n.nf\ninternal_pool = \"10.231.0.0/16\"\negress_pool = \"10.232.0.0/16\"\n\
         max_connections = 64\n.fi\n.SH \"SEE ALSO\"\n\\fBgatectl\\fR(8), \\fBgatectl\\-manifest\\fR(5)\n",
    );
    ("gatectl.toml.5".into(), text)
}

/// The file name and roff text of gatectl-manifest(5).
pub fn manifest_page() -> (String, String) {
    let mut text = header("gatectl-manifest", "an agent's manifest for gatectl");
    text.push_str(&format!(
        ".SH SYNOPSIS\n\\fI/etc/gatectl/bottles/\\fR\\fISLUG\\fR\\fI.toml\\fR or \\fI.json\\fR\n\
         .SH DESCRIPTION\nWhich SSH hosts the agent \\fISLUG\\fR may reach through its gate, and \
         where the agent's end of the gate goes. A regular file of at most 1 MiB of UTF\\-8, TOML or \
         JSON by its extension, with 1 to {MAX_ENTRIES} \\fBssh\\fR entries. Everything is \
         validated before \\fBgatectl start\\fR changes anything.\n.SH \"TOP-LEVEL KEYS\"\n"
    ));
    for key in TOP_LEVEL_KEYS {
        text.push_str(&format!(".TP\n\\fB{key}\\fR\n{}\n", escape(top_level(key))));
    }
    text.push_str(
        "Other top-level keys are ignored, so a manifest may carry more than this; one that looks \
         like a key above (\\fBagent_nets\\fR) gets a warning.\n.SH \"SSH ENTRY KEYS\"\n",
    );
    for key in ENTRY_KEYS {
        text.push_str(&format!(".TP\n\\fB{key}\\fR\n{}\n", escape(entry(key))));
    }
    text.push_str(
        "Any other key in an entry is an error that names it.\n\
         .SH \"PORT MAPPING\"\nEntry \\fIi\\fR (from 0, in manifest order) listens on port \
         \\fBbase_port\\fR + \\fIi\\fR (30000 + \\fIi\\fR by default) of the gate's address; \
         \\fBgatectl ssh\\-config\\fR \\fISLUG\\fR prints the Host blocks. Reordering the entries \
         changes the mapping.\n\
         .SH EXAMPLE\n.nf\nown_agent_netns = true\n\n[[ssh]]\nHost = \"github\"\n\
         Hostname = \"github.com\"\nUser = \"git\"\n\n[[ssh]]\nHost = \"box\"\n\
         Hostname = \"198.51.100.4\"\nPort = 2222\n.fi\n\
         .SH \"SEE ALSO\"\n\\fBgatectl\\fR(8), \\fBgatectl.toml\\fR(5), \\fBssh_config\\fR(5)\n",
    );
    ("gatectl-manifest.5".into(), text)
}

/// What a top-level manifest key does.
fn top_level(key: &str) -> &'static str {
    match key {
        "agent_netns" => {
            "The agent's network namespace: a name under /run/netns, or an absolute path. The agent's \
             end of the gate goes there as gate0, and the agent has no route but the gate's. It must \
             exist (unless own_agent_netns is set), and must not be the host's own namespace, a \
             gate's, or one whose gate0 belongs to another gate. Without it (and without \
             own_agent_netns) the agent's end stays in the host's namespace and the gate confines \
             nothing. --agent-netns overrides it."
        }
        "own_agent_netns" => {
            "true: gatectl owns the agent's netns, named by agent_netns or agent-SLUG: start creates \
             it when it is missing, stop deletes it, so the enabled unit gatectl@SLUG.service is all \
             a boot needs. It must be a name under /run/netns."
        }
        "ssh" => {
            "The list of SSH hosts the agent may reach: [[ssh]] tables in TOML, an array of objects in JSON."
        }
        _ => "",
    }
}

/// What a key of an `ssh` entry does.
fn entry(key: &str) -> &'static str {
    match key {
        "Host" => {
            "Required. The alias the agent's ssh uses: 1 to 64 letters, digits, '.', '_' and '-', \
             starting with a letter or digit, unique in the manifest regardless of case."
        }
        "Hostname" => {
            "Required (HostName is accepted too). The real upstream: a DNS name, resolved by start on \
             the host, or an IP literal. Each address must name a remote host: not in gatectl's \
             pools, not unspecified, broadcast, multicast or loopback, and not link-local unless \
             allow_link_local is set. An upstream with IPv6 addresses only needs an IPv6 default \
             route on the host."
        }
        "Port" => "The upstream's port, 1 to 65535 (an integer or a string of one); 22 by default.",
        "User" => "The remote user, copied into the ssh config; letters, digits, '.', '_' and '-'.",
        _ => "",
    }
}

/// The `.TH` line and NAME section of a section-5 page.
fn header(name: &str, what: &str) -> String {
    format!(
        ".TH {name} 5 \"\" \"gatectl {}\" \"gatectl manual\"\n.SH NAME\n{} \\- {what}\n",
        env!("CARGO_PKG_VERSION"),
        escape(name)
    )
}

/// `text` with roff's special characters escaped: backslashes, hyphens
/// (as minus signs), and a leading dot or quote.
fn escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_page_covers_every_setting_with_its_default() {
        let defaults = toml::Table::try_from(Settings::default()).unwrap();
        let documented: Vec<&str> = SETTINGS.iter().map(|(k, _)| *k).collect();
        let mut keys: Vec<&str> = defaults.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut sorted = documented.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, keys, "SETTINGS must list exactly the fields of Settings");
        let (name, page) = settings_page();
        assert_eq!(name, "gatectl.toml.5");
        for key in documented {
            assert!(
                page.contains(&format!(".TP\n\\fB{}\\fR (default: ", escape(key))),
                "{key}"
            );
        }
        assert!(page.contains("\\fBbase_port\\fR (default: 30000)"), "{page}");
    }

    #[test]
    fn the_manifest_page_covers_every_key_the_parser_knows() {
        let (name, page) = manifest_page();
        assert_eq!(name, "gatectl-manifest.5");
        for key in TOP_LEVEL_KEYS {
            assert!(!top_level(key).is_empty(), "{key} undocumented");
            assert!(page.contains(&format!("\\fB{}\\fR\n", escape(key))), "{key}");
        }
        for key in ENTRY_KEYS {
            assert!(!entry(key).is_empty(), "{key} undocumented");
            assert!(page.contains(&format!("\\fB{key}\\fR\n")), "{key}");
        }
        assert!(page.contains(&format!("1 to {MAX_ENTRIES}")));
    }
}
