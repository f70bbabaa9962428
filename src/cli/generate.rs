//! `gatectl generate DIR` (hidden): writes the man pages and the shell
//! completions, generated from the clap definition of the command line, so
//! they cannot drift from it. `scripts/package` runs it on the freshly built
//! binary and puts the output in the .deb.
//!
//! A hidden subcommand rather than a build script: the clap definition lives
//! in the library's `cli` module, which a build script could only reach by
//! `include!`-ing half the crate; running the built binary documents exactly
//! the command line that ships.

use std::fs;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{format_pages, slug_completion, Cli, Outcome};
use crate::error::{Context, Result};
use crate::unit;

/// Section of the manual gatectl's pages go in: system administration.
pub const MAN_SECTION: &str = "8";

/// Arguments of `gatectl generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Directory to write into: man pages go to DIR/man, completions to
    /// DIR/completions (gatectl.bash, _gatectl, gatectl.fish).
    #[arg(value_name = "DIR")]
    pub out_dir: PathBuf,
}

/// Writes every man page and completion script under `args.out_dir`.
pub fn run(args: GenerateArgs) -> Result<Outcome> {
    let written = generate(&args.out_dir)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(Outcome::Ok)
}

/// Writes the man pages (`gatectl.8`, one `gatectl-<sub>.8` per visible
/// subcommand, and `gatectl.toml.5` and `gatectl-manifest.5` for the file
/// formats), the bash, zsh and fish completions and the forwarder's
/// hardening drop-in under `out_dir`; returns the paths written.
pub fn generate(out_dir: &Path) -> Result<Vec<PathBuf>> {
    let man_dir = out_dir.join("man");
    let completion_dir = out_dir.join("completions");
    for dir in [&man_dir, &completion_dir] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut written = Vec::new();

    let cmd = man_command();
    let formats = [format_pages::settings_page(), format_pages::manifest_page()]
        .into_iter()
        .map(|(name, text)| (name, text.into_bytes()));
    for (name, page) in man_pages(&cmd)?.into_iter().chain(formats) {
        let path = man_dir.join(name);
        fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = completion_command();
        let path = clap_complete::generate_to(shell, &mut cmd, "gatectl", &completion_dir)
            .with_context(|| format!("cannot write the {shell} completion"))?;
        let script = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let script = slug_completion::add_to(shell, &script)?;
        fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }

    // The forwarder's sandbox as a drop-in for every gate-*.service
    // (installed under /usr/lib/systemd/system/gate-.service.d/).
    let dropin = out_dir.join("systemd").join(unit::DROPIN);
    let dropin_dir = dropin.parent().expect("the drop-in has a directory");
    fs::create_dir_all(dropin_dir).with_context(|| format!("cannot create {}", dropin_dir.display()))?;
    fs::write(&dropin, unit::hardening_dropin())
        .with_context(|| format!("cannot write {}", dropin.display()))?;
    written.push(dropin);
    Ok(written)
}

/// The command line as the man pages describe it: clap's definition, with
/// the long description of gatectl(8) and without the `help` subcommand
/// (every page documents `--help` already). Built, so that subcommands know
/// their full names (`gatectl-start`).
pub fn man_command() -> clap::Command {
    let mut cmd = Cli::command()
        .long_about(DESCRIPTION)
        .disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The command line as the completions offer it: clap's definition without
/// the hidden subcommands (`forward`, `generate`), which clap_complete would
/// otherwise offer.
pub fn completion_command() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new("gatectl")
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .args(full.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd
}

/// The DESCRIPTION of gatectl(8).
const DESCRIPTION: &str = "\
gatectl gives each AI agent (a \"bottle\") an SSH egress gate: the agent reaches only \
the SSH hosts its manifest declares, and nothing else.

gatectl start SLUG creates a network namespace gate-SLUG, two veth pairs (one to the \
agent, one routed to the host), firewall rules that let the gate reach only its declared \
upstream address:port pairs (the nftables table inet gatectl, on the host and inside the \
gate netns), and a forwarder: the transient socket unit gate-SLUG.socket listens on one \
port per manifest entry (30000 + i, in manifest order) on the gate's internal address, \
and systemd starts the sandboxed forwarder gate-SLUG.service at the first connection. \
gatectl stop SLUG removes all of it. gatectl ssh-config SLUG prints the Host blocks \
the agent's ssh uses. The manifest's format is in gatectl-manifest(5), the host \
settings' in gatectl.toml(5).

A gate whose agent end is in an agent netns always has the gate address 10.231.0.1 \
(the internal pool's first /31: each netns is private), so the agent's ssh config stays \
right across restarts in any order and reboots; gatectl ssh-config SLUG --include names \
a file gatectl keeps current for an Include line. gatectl reload SLUG applies an edited \
manifest to a running gate without dropping the sessions of the entries that stayed \
(systemctl reload gatectl@SLUG runs it). gatectl-refresh.timer runs gatectl refresh \
every 15 seconds, which follows the upstream names of running gates: when the TTL of a \
name's last answer runs out (held between dns_refresh_min_secs and \
dns_refresh_max_secs), the gate moves to the new addresses in place.

The template unit gatectl@.service runs gatectl start and gatectl stop for a slug: \
systemctl enable --now gatectl@SLUG brings the gate up now and at every boot.

gatectl needs root, systemd as PID 1 with D-Bus, and nftables.";

/// The man pages of a built command: `(file name, roff text)` for the
/// command itself and for each subcommand that is not hidden.
pub fn man_pages(cmd: &clap::Command) -> Result<Vec<(String, Vec<u8>)>> {
    let mut pages = Vec::new();
    let top = man(cmd.clone());
    let mut text = render(&top)?;
    text.extend_from_slice(EXTRA_SECTIONS.as_bytes());
    pages.push((top.get_filename(), text));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = man(without_summary(sub.clone()));
        let mut text = render(&page)?;
        text.extend_from_slice(examples(sub.get_name()).as_bytes());
        text.extend_from_slice(b".SH \"SEE ALSO\"\n\\fBgatectl\\fR(8)\n");
        pages.push((page.get_filename(), text));
    }
    Ok(pages)
}

/// `cmd` whose long description no longer begins with its one-line
/// summary, which the page's NAME line already gives.
fn without_summary(cmd: clap::Command) -> clap::Command {
    let about = cmd.get_about().map(ToString::to_string);
    let long = cmd.get_long_about().map(ToString::to_string);
    match (about, long) {
        (Some(about), Some(long)) => match long.strip_prefix(&about) {
            Some(rest) if !rest.trim_start_matches(['.', ' ', '\n']).is_empty() => {
                let rest = rest.trim_start_matches(['.', ' ', '\n']).to_string();
                cmd.long_about(rest)
            }
            _ => cmd,
        },
        _ => cmd,
    }
}

/// The EXAMPLES section of the page of subcommand `name`, in roff.
fn examples(name: &str) -> String {
    let lines: &[(&str, &str)] = match name {
        "start" => &[
            (
                "gatectl start alice",
                "Start alice's gate from /etc/gatectl/bottles/alice.toml.",
            ),
            (
                "gatectl start bob \\-\\-manifest ./bob.toml \\-\\-agent\\-netns agent\\-bob",
                "Start bob's gate from another manifest, with its end in netns agent\\-bob.",
            ),
            (
                "systemctl enable \\-\\-now gatectl@alice",
                "The same at every boot, through the template unit.",
            ),
        ],
        "refresh" => &[
            (
                "gatectl refresh",
                "Follow the DNS of every running gate whose answers expired (what the timer runs).",
            ),
            (
                "gatectl refresh \\-\\-force",
                "Resolve every running gate's names now.",
            ),
        ],
        "reload" => &[
            (
                "gatectl reload alice",
                "Apply the edited /etc/gatectl/bottles/alice.toml to alice's running gate.",
            ),
            (
                "systemctl reload gatectl@alice",
                "The same, for a gate that gatectl@alice.service manages.",
            ),
        ],
        "stop" => &[(
            "gatectl stop alice",
            "Remove alice's gate; a gate that is gone is success.",
        )],
        "status" => &[
            (
                "gatectl status alice",
                "The state of alice's gate; exit 3 if it is not running.",
            ),
            ("gatectl status \\-\\-json", "Every gate, as JSON."),
        ],
        "list" => &[("gatectl list", "One line per gate.")],
        "metrics" => &[
            (
                "gatectl metrics",
                "Every gate's metrics in the Prometheus text format.",
            ),
            (
                "systemctl enable \\-\\-now gatectl\\-metrics.timer",
                "Write them every minute to metrics_path, for node_exporter's textfile collector.",
            ),
        ],
        "log" => &[
            (
                "gatectl log alice \\-\\-since \\-1h",
                "alice's connections and denied attempts of the last hour.",
            ),
            (
                "gatectl log \\-\\-follow \\-\\-json",
                "Every gate's records as they come, one JSON object per line.",
            ),
        ],
        "plan" => &[
            (
                "gatectl plan alice",
                "What gatectl start alice would create and change.",
            ),
            (
                "gatectl plan alice \\-\\-verbose",
                "The same, with the units' properties.",
            ),
        ],
        "prune" => &[
            (
                "gatectl prune \\-\\-dry\\-run",
                "What prune would remove, removing nothing.",
            ),
            ("gatectl prune", "Remove it."),
        ],
        "reconcile" => &[(
            "nft flush ruleset; gatectl reconcile",
            "Bring every gate's rules back after a flush.",
        )],
        "check" => &[(
            "gatectl check",
            "Whether this host can run gates, each problem with its fix.",
        )],
        "schema" => &[
            (
                "gatectl schema",
                "List the kinds of JSON output and their versions.",
            ),
            (
                "gatectl schema status > status.json",
                "The JSON Schema of status SLUG \\-\\-json, to validate it with any validator.",
            ),
        ],
        "ssh\\-config" | "ssh-config" => &[
            (
                "echo \"Include $(gatectl ssh\\-config alice \\-\\-include)\" >> ~alice/.ssh/config",
                "Give alice's ssh the Host blocks of her gate, kept current by gatectl: present while the gate runs, gone when it stops.",
            ),
            (
                "gatectl ssh\\-config alice",
                "Print the blocks, e.g. to append them to a config once.",
            ),
        ],
        _ => &[],
    };
    let mut text = String::from(".SH EXAMPLES\n");
    for (command, what) in lines {
        text.push_str(&format!(".TP\n\\fB{command}\\fR\n{what}\n"));
    }
    text
}

fn man(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .section(MAN_SECTION)
        .manual("gatectl manual")
        .source(concat!("gatectl ", env!("CARGO_PKG_VERSION")))
}

fn render(man: &clap_mangen::Man) -> Result<Vec<u8>> {
    let mut text = Vec::new();
    man.render(&mut text).context("cannot render a man page")?;
    Ok(text)
}

/// Sections of gatectl(8) that clap does not know: files, exit status,
/// see also. Plain roff.
const EXTRA_SECTIONS: &str = r#".SH FILES
.TP
\fI/etc/gatectl/gatectl.toml\fR
Host settings (address pools, base port, directories, forwarder limits); every setting is optional.
The environment variable \fBGATECTL_CONFIG\fR names another file.
.TP
\fI/etc/gatectl/bottles/\fR\fISLUG\fR\fI.toml\fR, \fI/etc/gatectl/bottles/\fR\fISLUG\fR\fI.json\fR
The manifest of agent \fISLUG\fR: its \fBssh\fR entries (\fBHost\fR, \fBHostname\fR, \fBPort\fR, \fBUser\fR)
and optionally \fBagent_netns\fR or \fBown_agent_netns\fR; see \fBgatectl\-manifest\fR(5). An example is in \fI/usr/share/doc/gatectl/examples/\fR.
.TP
\fI/run/gatectl/\fR
Runtime state: one record per running gate, and locks.
.TP
\fI/run/gatectl/ssh_config/\fR\fISLUG\fR\fI.conf\fR
The ssh_config Host blocks of the gate of \fISLUG\fR while it runs, for an \fBInclude\fR line in the agent's \fI~/.ssh/config\fR (\fBgatectl ssh\-config \-\-include\fR \fISLUG\fR prints the path): \fBstart\fR writes it, \fBstop\fR removes it, \fBreconcile\fR rewrites it.
.TP
\fI/usr/lib/systemd/system/gatectl@.service\fR
Template unit: \fBsystemctl enable \-\-now gatectl@\fR\fISLUG\fR starts the gate of \fISLUG\fR now and at every boot.
.TP
\fI/usr/lib/systemd/system/gatectl\-reconcile.service\fR
Runs \fBgatectl reconcile\fR whenever nftables.service starts, reloads or restarts, which flushes the ruleset: the firewall rules of every running gate come back.
.SH "JSON OUTPUT"
With \fB\-\-json\fR, \fBstatus\fR, \fBlist\fR, \fBplan\fR, \fBcheck\fR and \fBprune\fR print one JSON object
on standard output whose field \fBschema\fR names its kind and version, e.g. \fBgatectl.status/1\fR.
Every field is always present (\fBnull\fR when it has no value).
\fBgatectl schema\fR \fIKIND\fR prints the JSON Schema of a kind; the same files are in \fI/usr/share/gatectl/schema/\fR.
.PP
Versioning: adding a field keeps the version, so a program must ignore fields it does not know;
removing or renaming a field, or changing its type or meaning, bumps the version (\fBgatectl.status/2\fR).
.PP
Errors: under \fB\-\-json\fR, a command that fails prints a \fBgatectl.error/1\fR object on standard output
instead of its error line on standard error: \fBcode\fR (usage, invalid, io, netlink, dbus, firewall, failed,
start, several), \fBmessage\fR (the line it would have printed) and \fBfix\fR (or \fBnull\fR).
The exit status is unchanged. Warnings and notes stay on standard error, as text.
\fBcheck \-\-json\fR with a failed check prints its findings only, and exits 1.
.SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
Error; one line on standard error says what failed and why, then the fix where there is one
(under \fB\-\-json\fR, a \fBgatectl.error/1\fR object on standard output).
.TP
\fB2\fR
Usage error (under \fB\-\-json\fR, a \fBgatectl.error/1\fR object with code \fBusage\fR on standard output).
.TP
\fB3\fR
\fBstatus\fR of a gate that is not running.
.SH "SEE ALSO"
\fBgatectl.toml\fR(5), \fBgatectl\-manifest\fR(5), \fBsystemctl\fR(1), \fBsystemd.unit\fR(5), \fBip\-netns\fR(8), \fBnft\fR(8), \fBssh_config\fR(5)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subcommand_page_describes_more_than_its_name_and_has_examples() {
        let cmd = man_command();
        for (name, page) in man_pages(&cmd).unwrap().iter().skip(1) {
            let page = String::from_utf8_lossy(page);
            let description = page
                .split(".SH DESCRIPTION\n")
                .nth(1)
                .unwrap_or_else(|| panic!("{name} has no DESCRIPTION"));
            let name_line = page.split(".SH NAME\n").nth(1).unwrap().lines().next().unwrap();
            let summary = name_line.split(" \\- ").nth(1).unwrap();
            assert!(
                !description.starts_with(summary),
                "{name}: DESCRIPTION repeats NAME"
            );
            let examples = page
                .split(".SH EXAMPLES\n")
                .nth(1)
                .unwrap_or_else(|| panic!("{name}: no EXAMPLES"));
            assert!(examples.starts_with(".TP\n"), "{name}: EXAMPLES is empty");
        }
    }

    #[test]
    fn pages_cover_every_visible_subcommand_and_no_hidden_one() {
        let cmd = man_command();
        let pages = man_pages(&cmd).unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "gatectl.8",
            "gatectl-start.8",
            "gatectl-stop.8",
            "gatectl-status.8",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        assert!(!names
            .iter()
            .any(|n| n.contains("forward") || n.contains("generate")));
        let top = String::from_utf8(pages[0].1.clone()).unwrap();
        assert!(top.starts_with(".ie"), "{top}");
        assert!(top.contains(".TH gatectl 8"), "{top}");
        assert!(top.contains("gatectl\\-start(8)"), "{top}");
        assert!(top.contains(".SH \"EXIT STATUS\""), "{top}");
    }

    #[test]
    fn writes_pages_and_completions() {
        let dir = std::env::temp_dir().join(format!("gatectl-generate-{}", std::process::id()));
        let written = generate(&dir).unwrap();
        for want in [
            "man/gatectl.8",
            "completions/gatectl.bash",
            "completions/_gatectl",
            "completions/gatectl.fish",
        ] {
            assert!(written.contains(&dir.join(want)), "{written:?}");
        }
        let bash = fs::read_to_string(dir.join("completions/gatectl.bash")).unwrap();
        assert!(bash.contains(" start reload refresh stop status "), "{bash}");
        for hidden in ["forward", "generate"] {
            for file in ["gatectl.bash", "_gatectl", "gatectl.fish"] {
                let text = fs::read_to_string(dir.join("completions").join(file)).unwrap();
                assert!(!text.contains(hidden), "{file} offers {hidden}:\n{text}");
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
