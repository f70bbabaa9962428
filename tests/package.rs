//! The Debian package, end to end, following the README's Install section
//! literally (its code blocks are read from README.md at test time): build
//! the .deb and check it with lintian as the first block says, then in a
//! fresh throwaway systemd host run the second block line by line (install,
//! manifest, plan, `systemctl enable --now gatectl@alice`, the `Include`
//! line, alice's ssh confined in her netns through the gate). Then: verify
//! the units and the maintainer field, find the man pages, complete slugs in
//! bash, zsh and fish, run a gate through `systemctl start gatectl@demo` and
//! ssh through it, enable it, upgrade under a running gate, stop it, and
//! purge the package leaving nothing behind.
//!
//! The package is built into `<target>/tmp/package-build` (a target
//! directory of its own, so the nested cargo never waits for the outer
//! one's lock); set `GATECTL_DEB` to test a .deb built already instead.
//!
//! Needs root; skipped otherwise (fails under `CI`).

mod common;

use common::gatectl::{add_upstream_and_agent, connect, leftovers, text, unit_property};
use common::{require_root, ssh_args, SshFixture, TestHost};
use std::path::{Path, PathBuf};
use std::process::Command;

const DEB_IN_HOST: &str = "/root/gatectl.deb";
const UNIT_DIR: &str = "/usr/lib/systemd/system";
const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/gatectl@demo.service";
const RECONCILE_LINK: &str = "/etc/systemd/system/nftables.service.wants/gatectl-reconcile.service";
/// The link that enables the DNS refresh timer.
const REFRESH_LINK: &str = "/etc/systemd/system/timers.target.wants/gatectl-refresh.timer";

/// The code blocks of the README's Install section: the build block and
/// the host block.
fn readme_install_blocks() -> (String, String) {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Install\n")
        .nth(1)
        .expect("README.md has no Install section")
        .split("\n## ")
        .next()
        .unwrap();
    let blocks: Vec<String> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .collect();
    assert_eq!(
        blocks.len(),
        2,
        "README's Install: a build block and a host block"
    );
    (blocks[0].clone(), blocks[1].clone())
}

/// The .deb to test: `GATECTL_DEB` (checked by lintian), or the one the
/// README's build block builds and checks, run as it stands in the source
/// tree. The build goes to `<target>/tmp/package-build`.
fn build_deb(block: &str) -> PathBuf {
    if let Some(deb) = std::env::var_os("GATECTL_DEB") {
        lintian(Path::new(&deb));
        return PathBuf::from(deb);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-build");
    let script = format!("set -euo pipefail\n{block}printf '%s\\n' \"$deb\"\n");
    let out = Command::new("bash")
        .args(["-c", &script])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cannot run bash");
    assert!(
        out.status.success(),
        "README's build block failed: {}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the build block printed no path")
            .trim(),
    );
    assert!(deb.is_file(), "the build block built {}", deb.display());
    deb
}

/// The agent the README's host block names: a user `alice` with an ssh key
/// the upstream accepts and its host key in her known_hosts, as the README
/// asks; and `github`'s upstreams made reachable in the host (the example
/// manifest names github.com and build.example.net).
fn readme_agent(host: &TestHost, sshd: &SshFixture) {
    host.run_ok(&["useradd", "--create-home", "alice"]);
    host.run_ok(&["install", "-d", "-o", "alice", "-m", "700", "/home/alice/.ssh"]);
    host.run_ok(&[
        "install",
        "-o",
        "alice",
        "-m",
        "600",
        &sshd.identity,
        "/home/alice/.ssh/id_ed25519",
    ]);
    sshd.write_known_hosts(host, "/home/alice/.ssh/known_hosts", &["upstream.test"]);
    host.run_ok(&["chown", "alice", "/home/alice/.ssh/known_hosts"]);
}

/// The README's "then edit it": the example's upstreams become the test's
/// sshd (as root, whose key alice has).
const README_EDIT: &str = "sed -i -e 's/\"github.com\"/\"upstream.test\"/' \
     -e 's/\"build.example.net\"/\"upstream.test\"/' -e 's/User = \"git\"/User = \"root\"/' \
     /etc/gatectl/bottles/alice.toml";

/// Runs the README's host block in `host`, line by line as root, with `deb`
/// naming the package there, and the edit after the line that says so.
fn follow_readme_on_host(host: &TestHost, block: &str) {
    let mut edited = false;
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let script = format!("set -euo pipefail; deb={DEB_IN_HOST}; {line}");
        let out = host.exec(&["bash", "-c", &script]);
        assert!(out.status.success(), "README line `{line}`: {}", text(&out));
        if line.contains("# then edit it") {
            host.sh_ok(README_EDIT);
            edited = true;
        }
    }
    assert!(
        edited,
        "the README's host block no longer says where to edit the manifest"
    );
}

/// lintian on the .deb (it only reads the file): no error, no warning.
fn lintian(deb: &Path) {
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .expect("cannot run lintian (apt-get install lintian; scripts/install-deps does)");
    assert!(out.status.success(), "lintian: {}", text(&out));
}

/// An upstream netns running sshd (named `upstream.test` in /etc/hosts), an
/// isolated agent netns, and dpkg as on a plain Debian host: no
/// policy-rc.d, no path-exclude of man pages (some images drop them).
fn setup(host: &TestHost) -> SshFixture {
    host.sh_ok(
        "rm -f /usr/sbin/policy-rc.d; \
         for f in /etc/dpkg/dpkg.cfg.d/*; do \
           if grep -q '^path-exclude' \"$f\"; then rm -f \"$f\"; fi; \
         done",
    );
    add_upstream_and_agent(host)
}

/// Runs a command through the gate of `demo` from the agent's netns.
fn ssh_through_gate(host: &TestHost, sshd: &SshFixture, command: &str) -> String {
    let config = host.run_ok(&["gatectl", "ssh-config", "demo"]);
    host.write_file("/root/agent/ssh_config", config.as_bytes(), 0o600);
    let argv = ssh_args(
        Some("agent"),
        Some("/root/agent/ssh_config"),
        &sshd.identity,
        "/root/agent/known_hosts",
        "up",
        command,
    );
    let out = host.exec(&argv);
    assert!(
        out.status.success(),
        "ssh through the gate failed: {}\nsshd log:\n{}",
        text(&out),
        sshd.log_text(host)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The completions bash offers for `line` (ending where the cursor is),
/// from the function bash-completion loads for gatectl on demand.
fn bash_complete(host: &TestHost, line: &str) -> Vec<String> {
    let script = r#"
        source /usr/share/bash-completion/bash_completion
        _completion_loader gatectl
        spec=$(complete -p gatectl) || { echo "no completion for gatectl" >&2; exit 1; }
        fn=$(sed -E 's/.* -F ([^ ]+) .*/\1/' <<<"$spec")
        COMP_LINE=$1
        COMP_POINT=${#COMP_LINE}
        read -r -a COMP_WORDS <<<"$COMP_LINE"
        [[ $COMP_LINE == *' ' ]] && COMP_WORDS+=('')
        COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
        "$fn" gatectl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = host.run_ok(&["bash", "-c", script, "complete", line]);
    let mut words: Vec<String> = out.split_whitespace().map(String::from).collect();
    words.sort();
    words
}

/// The words zsh's completion offers for `line`, sorted: an interactive zsh
/// in a pseudo-terminal (zpty) loads the completion from its default
/// fpath, where the package puts it, and completes `line<TAB>`; a compadd
/// wrapper records every match offered, and a hook run after the
/// completion says when it is over (keys typed before would abort it).
fn zsh_complete(host: &TestHost, line: &str) -> Vec<String> {
    let script = r#"
        export GATECTL_MATCHES=$(mktemp)
        zmodload zsh/zpty
        zpty z zsh -f -i
        zpty -w z 'autoload -Uz compinit; compinit -u -D'  # -D: no dump file
        zpty -w z 'compadd() {
            if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return; fi
            local -a hits; builtin compadd -O hits "$@"
            (( $#hits )) && print -rl -- $hits >> $GATECTL_MATCHES
            builtin compadd "$@"
        }'
        zpty -w z 'completed() { print -r -- "<completed>" >> $GATECTL_MATCHES; }; comppostfuncs=(completed)'
        zpty -w z "print -r -- '<ready>'"
        zpty -r -m z _ '*<ready>*<ready>*'
        zpty -n -w z "$1"$'\t'
        for i in {1..600}; do
            while zpty -rt z _; do :; done  # drain the terminal, so zsh never blocks writing to it
            grep -qx '<completed>' $GATECTL_MATCHES && break
            sleep 0.1
        done
        zpty -w z $'\C-u'"print -r -- '<done>'"
        zpty -r -m z _ '*<done>*<done>*'
        zpty -d z
        grep -qx '<completed>' $GATECTL_MATCHES || { echo "zsh never finished completing" >&2; exit 1; }
        grep -vx '<completed>' $GATECTL_MATCHES
        rm -f $GATECTL_MATCHES
    "#;
    let out = host.run_ok(&["zsh", "-c", script, "complete", line]);
    let mut words: Vec<String> = out.split_whitespace().map(String::from).collect();
    words.sort();
    words.dedup();
    words
}

/// The words fish's completion offers for `line`, sorted.
fn fish_complete(host: &TestHost, line: &str) -> Vec<String> {
    let out = host.run_ok(&["fish", "-c", &format!("complete -C '{line}'")]);
    let mut words: Vec<String> = out
        .lines()
        .filter_map(|l| l.split('\t').next())
        .map(String::from)
        .collect();
    words.sort();
    words
}

#[test]
fn deb_installs_runs_a_gate_upgrades_and_purges_clean() {
    if !require_root() {
        return;
    }
    let (build_block, host_block) = readme_install_blocks();
    let deb = build_deb(&build_block);

    let host = TestHost::boot("package");
    let sshd = setup(&host);
    host.install_binary(&deb, DEB_IN_HOST);

    // Install as the README says, up to alice's ssh through her gate.
    readme_agent(&host, &sshd);
    let accepted = |host: &TestHost| sshd.log_text(host).matches("Accepted publickey").count();
    let before = accepted(&host);
    follow_readme_on_host(&host, &host_block);
    assert_eq!(
        accepted(&host),
        before + 1,
        "alice's ssh did not reach the upstream"
    );
    // alice is confined: through the gate her ssh runs commands upstream,
    // and nothing else is reachable from her netns.
    let out = host.exec(&[
        "ip",
        "netns",
        "exec",
        "agent-alice",
        "runuser",
        "-u",
        "alice",
        "--",
        "ssh",
        "-o",
        "BatchMode=yes",
        "github",
        "echo alice-through-her-gate; hostname -I",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("alice-through-her-gate") && stdout.contains("10.99.2.1"),
        "alice's ssh through her gate: {}",
        text(&out)
    );
    let direct = connect(&host, Some("agent-alice"), "10.99.2.1", 22);
    assert!(direct.is_err(), "alice reaches the upstream around her gate");
    // Her gate goes, and its Host blocks with it.
    host.run_ok(&["systemctl", "disable", "--now", "gatectl@alice.service"]);
    assert_eq!(leftovers(&host, "alice"), Vec::<String>::new());
    assert!(!host
        .exec(&["test", "-e", "/run/gatectl/ssh_config/alice.conf"])
        .status
        .success());
    // The maintainer is the project, not a placeholder (README.Debian).
    let maintainer = host.run_ok(&["dpkg-query", "-W", "-f", "${Maintainer}", "gatectl"]);
    assert_eq!(maintainer, "gatectl developers <gatectl@gatectl.invalid>");
    let placeholders = host.exec(&["zgrep", "-r", "example.org", "/usr/share/doc/gatectl"]);
    assert!(
        placeholders.stdout.is_empty(),
        "placeholder contact in the docs: {}",
        text(&placeholders)
    );
    // Every installed file matches the package's md5sums.
    let out = host.exec(&["dpkg", "--verify", "gatectl"]);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "dpkg --verify: {}",
        text(&out)
    );
    assert!(host
        .run_ok(&["test", "-s", "/var/lib/dpkg/info/gatectl.md5sums"])
        .is_empty());
    let status = host.run_ok(&["dpkg-query", "-W", "-f", "${Status} ${Version}", "gatectl"]);
    assert!(status.starts_with("install ok installed"), "{status}");
    for path in [
        "/usr/bin/gatectl",
        "/etc/gatectl/gatectl.toml",
        "/usr/lib/tmpfiles.d/gatectl.conf",
    ] {
        host.run_ok(&["test", "-f", path]);
    }
    for dir in ["/etc/gatectl/bottles", "/run/gatectl"] {
        host.run_ok(&["test", "-d", dir]);
    }
    let conffiles = host.run_ok(&["dpkg-query", "-W", "-f", "${Conffiles}", "gatectl"]);
    assert!(conffiles.contains("/etc/gatectl/gatectl.toml"), "{conffiles}");
    // The template is not enabled, and no gate started; the reconcile unit
    // is enabled (it runs when nftables.service starts).
    let wants = host.exec(&["test", "-e", WANTS_LINK]);
    assert!(!wants.status.success(), "the install enabled gatectl@demo");
    host.run_ok(&["test", "-L", RECONCILE_LINK]);
    // The DNS refresh timer is enabled and running.
    host.run_ok(&["test", "-L", REFRESH_LINK]);
    assert_eq!(
        unit_property(&host, "gatectl-refresh.timer", "ActiveState"),
        "active"
    );
    assert_eq!(leftovers(&host, "demo"), Vec::<String>::new());

    // The installed units pass systemd-analyze verify (which also checks
    // that ExecStart's binary and Documentation's man page exist).
    let template = format!("{UNIT_DIR}/gatectl@.service");
    let out = host.exec(&["systemd-analyze", "verify", &template]);
    assert!(out.status.success(), "verify {template}: {}", text(&out));
    assert!(out.stderr.is_empty(), "verify {template}: {}", text(&out));
    let out = host.exec(&["systemd-analyze", "verify", "gatectl@demo.service"]);
    assert!(
        out.status.success(),
        "verify gatectl@demo.service: {}",
        text(&out)
    );
    assert!(
        out.stderr.is_empty(),
        "verify gatectl@demo.service: {}",
        text(&out)
    );
    for unit in [
        "gatectl-reconcile.service",
        "gatectl-refresh.service",
        "gatectl-refresh.timer",
    ] {
        let path = format!("{UNIT_DIR}/{unit}");
        let out = host.exec(&["systemd-analyze", "verify", &path]);
        assert!(out.status.success(), "verify {path}: {}", text(&out));
        assert!(out.stderr.is_empty(), "verify {path}: {}", text(&out));
    }
    let exec_start = unit_property(&host, "gatectl@demo.service", "ExecStart");
    assert!(
        exec_start.contains("argv[]=/usr/bin/gatectl start demo"),
        "{exec_start}"
    );

    // The man page and the bash completion.
    let man = host.run_ok(&["man", "-w", "gatectl"]);
    assert_eq!(man.trim(), "/usr/share/man/man8/gatectl.8.gz");
    let page = host.run_ok(&["sh", "-c", "MANWIDTH=80 man 8 gatectl-start 2>&1"]);
    assert!(page.contains("--manifest"), "{page}");
    // The file formats have their pages in section 5, and every page
    // renders without a warning.
    for (page, path) in [
        ("gatectl.toml", "/usr/share/man/man5/gatectl.toml.5.gz"),
        ("gatectl-manifest", "/usr/share/man/man5/gatectl-manifest.5.gz"),
    ] {
        assert_eq!(host.run_ok(&["man", "-w", "5", page]).trim(), path);
    }
    let warnings = host.run_ok(&[
        "sh",
        "-c",
        "for f in /usr/share/man/man5/gatectl*.5.gz /usr/share/man/man8/gatectl*.8.gz; do \
         LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l \"$f\" 2>&1 >/dev/null; done",
    ]);
    assert_eq!(warnings, "", "the man pages render with warnings");
    // The threat model, reliability and architecture notes ship with it.
    for doc in [
        "README.Debian",
        "security.md",
        "reliability.md",
        "architecture.md",
        "json.md",
    ] {
        host.run_ok(&["test", "-s", &format!("/usr/share/doc/gatectl/{doc}")]);
    }
    // The JSON Schemas ship, each the same as `gatectl schema` prints.
    for kind in ["status", "gates", "plan", "check", "prune", "error"] {
        host.run_ok(&[
            "sh",
            "-c",
            &format!("gatectl schema {kind} | cmp - /usr/share/gatectl/schema/gatectl.{kind}-1.json"),
        ]);
    }
    assert_eq!(bash_complete(&host, "gatectl st"), ["start", "status", "stop"]);
    assert_eq!(zsh_complete(&host, "gatectl st"), ["start", "status", "stop"]);
    let all = bash_complete(&host, "gatectl ");
    assert!(all.contains(&"ssh-config".to_string()), "{all:?}");
    assert!(!all.iter().any(|w| w == "forward" || w == "generate"), "{all:?}");

    // A gate through the template unit: a real ssh reaches a real sshd.
    host.write_file(
        "/etc/gatectl/bottles/demo.toml",
        b"agent_netns = \"agent\"\n[[ssh]]\nHost = \"up\"\nHostname = \"upstream.test\"\nUser = \"root\"\n",
        0o644,
    );
    // Slugs complete: manifests for start, existing gates for stop.
    assert_eq!(bash_complete(&host, "gatectl start "), ["alice", "demo"]);
    assert_eq!(bash_complete(&host, "gatectl stop "), Vec::<String>::new());
    assert_eq!(zsh_complete(&host, "gatectl start "), ["alice", "demo"]);
    assert_eq!(zsh_complete(&host, "gatectl plan d"), ["demo"]);
    assert_eq!(zsh_complete(&host, "gatectl status "), Vec::<String>::new());
    assert_eq!(fish_complete(&host, "gatectl plan "), ["alice", "demo"]);
    host.run_ok(&["systemctl", "start", "gatectl@demo.service"]);
    assert_eq!(
        unit_property(&host, "gatectl@demo.service", "ActiveState"),
        "active"
    );
    assert_eq!(bash_complete(&host, "gatectl stop "), ["demo"]);
    assert_eq!(fish_complete(&host, "gatectl status "), ["demo"]);
    assert_eq!(zsh_complete(&host, "gatectl stop "), ["demo"]);
    assert_eq!(unit_property(&host, "gate-demo.socket", "ActiveState"), "active");
    let out = ssh_through_gate(&host, &sshd, "echo hello-through-the-package; hostname -I");
    assert_eq!(unit_property(&host, "gate-demo.service", "ActiveState"), "active");
    assert!(
        out.contains("hello-through-the-package") && out.contains("10.99.2.1"),
        "{out}"
    );
    // The forwarder runs the packaged binary.
    let forwarder = unit_property(&host, "gate-demo.service", "ExecStart");
    assert!(forwarder.contains("path=/usr/bin/gatectl"), "{forwarder}");

    // Enable: the wants link of multi-user.target.
    host.run_ok(&["systemctl", "enable", "gatectl@demo.service"]);
    // (/lib/systemd/system/gatectl@.service on a merged-/usr host, where
    // /lib is a link to /usr/lib.)
    let link = host.run_ok(&["readlink", "-f", WANTS_LINK]);
    assert_eq!(link.trim(), format!("{UNIT_DIR}/gatectl@.service"));

    // An upgrade (the same package over itself) leaves the gate running:
    // same forwarder process, still passing ssh; and it re-applies the
    // gates' rules as the new version writes them (here: a gate netns
    // table that an older version would have written differently is gone).
    let pid = unit_property(&host, "gate-demo.service", "MainPID");
    assert_ne!(pid, "0");
    let gate_table = [
        "ip",
        "netns",
        "exec",
        "gate-demo",
        "nft",
        "list",
        "table",
        "inet",
        "gatectl",
    ];
    host.run_ok(&[
        "ip",
        "netns",
        "exec",
        "gate-demo",
        "nft",
        "delete",
        "table",
        "inet",
        "gatectl",
    ]);
    let out = host.exec(&["dpkg", "-i", DEB_IN_HOST]);
    assert!(out.status.success(), "dpkg -i (upgrade): {}", text(&out));
    let out = host.exec(&gate_table);
    assert!(
        out.status.success(),
        "the upgrade did not reconcile the gate: {}",
        text(&out)
    );
    assert_eq!(
        unit_property(&host, "gatectl@demo.service", "ActiveState"),
        "active"
    );
    assert_eq!(unit_property(&host, "gate-demo.service", "ActiveState"), "active");
    assert_eq!(unit_property(&host, "gate-demo.service", "MainPID"), pid);
    let out = ssh_through_gate(&host, &sshd, "echo still-through-the-gate");
    assert!(out.contains("still-through-the-gate"), "{out}");
    host.run_ok(&["test", "-L", WANTS_LINK]);
    host.run_ok(&["test", "-L", RECONCILE_LINK]);

    // Stop removes everything of the gate.
    host.run_ok(&["systemctl", "stop", "gatectl@demo.service"]);
    assert_eq!(
        unit_property(&host, "gatectl@demo.service", "ActiveState"),
        "inactive"
    );
    assert_eq!(leftovers(&host, "demo"), Vec::<String>::new());

    // Purge, with the gate running again: no gate, no unit, no file left.
    host.run_ok(&["systemctl", "start", "gatectl@demo.service"]);
    assert_eq!(unit_property(&host, "gate-demo.socket", "ActiveState"), "active");
    let files = host.run_ok(&["dpkg-query", "-L", "gatectl"]);
    let out = host.exec(&["dpkg", "--purge", "gatectl"]);
    assert!(out.status.success(), "dpkg --purge: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("gatectl: purge removes the manifest /etc/gatectl/bottles/demo.toml\n"),
        "purge names the manifests it deletes: {}",
        text(&out)
    );
    assert_eq!(leftovers(&host, "demo"), Vec::<String>::new());
    let units = host.run_ok(&[
        "systemctl",
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        "gatectl@*",
    ]);
    assert!(units.trim().is_empty(), "units left after purge: {units}");
    // (list-unit-files exits 1 when nothing matches.)
    let unit_files = host.exec(&["systemctl", "list-unit-files", "--no-legend", "gatectl@*"]);
    let unit_files = String::from_utf8_lossy(&unit_files.stdout);
    assert!(
        unit_files.trim().is_empty(),
        "unit files left after purge: {unit_files}"
    );
    let status = host.exec(&["dpkg-query", "-W", "-f", "${Status}", "gatectl"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "dpkg still knows gatectl: {status}"
    );
    // Every file of the package is gone, and so is every directory that was
    // the package's alone; shared directories (/usr/bin, ...) stay.
    let mut left = Vec::new();
    for path in files.lines().map(str::trim).filter(|p| p.starts_with('/')) {
        let is_dir = host.exec(&["test", "-d", path]).status.success();
        let exists = host.exec(&["test", "-e", path]).status.success()
            || host.exec(&["test", "-L", path]).status.success();
        if exists && (!is_dir || path.contains("gatectl")) {
            left.push(path.to_string());
        }
    }
    for path in [
        "/etc/gatectl",
        "/run/gatectl",
        WANTS_LINK,
        RECONCILE_LINK,
        REFRESH_LINK,
    ] {
        if host.exec(&["test", "-e", path]).status.success()
            || host.exec(&["test", "-L", path]).status.success()
        {
            left.push(path.to_string());
        }
    }
    assert_eq!(left, Vec::<String>::new(), "left after purge");
    let tables = host.run_ok(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("gatectl"),
        "the purge leaves no nftables table of gatectl: {tables}"
    );

    // Without a running systemd (as in a chroot: no /run/systemd/system),
    // install and purge still succeed, and only touch files.
    let out = host.exec(&[
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs none /run/systemd && dpkg -i /root/gatectl.deb && dpkg --purge gatectl",
    ]);
    assert!(
        out.status.success(),
        "install and purge without systemd: {}",
        text(&out)
    );
    assert!(!host.exec(&["test", "-e", "/etc/gatectl"]).status.success());
}
