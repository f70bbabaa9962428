//! Slug completion for the bash, zsh and fish scripts that clap_complete
//! writes: `gatectl start|plan <TAB>` offers the manifests in
//! /etc/gatectl/bottles, `gatectl stop|status|reload|ssh-config|log <TAB>` the gates
//! that exist (their netns `gate-<slug>`, which any user may list). Added to
//! the generated scripts, so everything else stays generated.

use clap_complete::Shell;

use crate::error::{Error, Result};

/// The subcommands whose slug names a manifest in /etc/gatectl/bottles.
const MANIFEST_COMMANDS: [&str; 2] = ["start", "plan"];

/// The subcommands whose slug names a gate that exists.
const GATE_COMMANDS: [&str; 5] = ["stop", "status", "reload", "ssh-config", "log"];

/// `script`, the completion clap_complete wrote for `shell`, with slug
/// completion added.
pub fn add_to(shell: Shell, script: &str) -> Result<String> {
    match shell {
        Shell::Bash => Ok(format!("{script}{}", fill(BASH, "|"))),
        Shell::Fish => Ok(format!("{script}{}", fill(FISH, " "))),
        Shell::Zsh => zsh(script),
        _ => Ok(script.to_string()),
    }
}

/// `template` with its command lists filled in, joined by `separator`.
fn fill(template: &str, separator: &str) -> String {
    template
        .replace("@MANIFEST_COMMANDS@", &MANIFEST_COMMANDS.join(separator))
        .replace("@GATE_COMMANDS@", &GATE_COMMANDS.join(separator))
}

/// clap's zsh function, renamed so that `_gatectl` (the name `#compdef`
/// autoloads and the script's last lines call) is the wrapper that
/// completes slugs and otherwise hands over to it.
fn zsh(script: &str) -> Result<String> {
    const CLAP_FUNCTION: &str = "\n_gatectl() {\n";
    const DISPATCH: &str = "\nif [ \"$funcstack[1]\" = \"_gatectl\" ]; then\n";
    if script.matches(CLAP_FUNCTION).count() != 1 || script.matches(DISPATCH).count() != 1 {
        return Err(Error::failed(
            "the zsh completion from clap_complete no longer has one `_gatectl() {` function and one \
             `$funcstack` dispatch, so slug completion cannot wrap it; adapt \
             src/cli/slug_completion.rs to the new clap_complete",
        ));
    }
    let renamed = script.replacen(CLAP_FUNCTION, "\n_gatectl_clap() {\n", 1);
    let wrapper = fill(ZSH, "|");
    Ok(renamed.replacen(DISPATCH, &format!("{wrapper}{DISPATCH}"), 1))
}

/// Appended to the bash completion: a wrapper that completes the slug
/// argument and otherwise hands over to clap's `_gatectl`.
const BASH: &str = r#"
# Slugs: from the manifests for @MANIFEST_COMMANDS@, from the gates that
# exist (their netns gate-<slug>) for @GATE_COMMANDS@.
_gatectl_slugs() {
    case $1 in
        manifests)
            local f
            for f in /etc/gatectl/bottles/*.toml /etc/gatectl/bottles/*.json; do
                [[ -e $f ]] || continue
                f=${f##*/}
                printf '%s\n' "${f%.*}"
            done
            ;;
        gates)
            ip netns list 2>/dev/null | sed -n 's/^gate-\([a-z0-9-]*\).*/\1/p'
            ;;
    esac
}

_gatectl_with_slugs() {
    local cur=${COMP_WORDS[COMP_CWORD]}
    if [[ $COMP_CWORD -eq 2 && $cur != -* ]]; then
        local source=
        case ${COMP_WORDS[1]} in
            @MANIFEST_COMMANDS@) source=manifests ;;
            @GATE_COMMANDS@) source=gates ;;
        esac
        if [[ -n $source ]]; then
            mapfile -t COMPREPLY < <(compgen -W "$(_gatectl_slugs "$source")" -- "$cur")
            return 0
        fi
    fi
    _gatectl "$@"
}
complete -F _gatectl_with_slugs -o bashdefault -o default gatectl
"#;

/// Inserted before the zsh script's last lines: the wrapper `_gatectl`
/// that completes the slug argument and otherwise hands over to clap's
/// function, renamed `_gatectl_clap`.
const ZSH: &str = r#"
# Slugs: from the manifests for @MANIFEST_COMMANDS@, from the gates that
# exist (their netns gate-<slug>) for @GATE_COMMANDS@.
(( $+functions[_gatectl_slugs] )) ||
_gatectl_slugs() {
    local -a slugs
    case $1 in
        manifests) slugs=(/etc/gatectl/bottles/*.(toml|json)(N:t:r)) ;;
        gates) slugs=(${(f)"$(ip netns list 2>/dev/null | sed -n 's/^gate-\([a-z0-9-]*\).*/\1/p')"}) ;;
    esac
    local expl
    _wanted slugs expl slug compadd -a slugs
}

_gatectl() {
    if (( CURRENT == 3 )) && [[ $words[CURRENT] != -* ]]; then
        case $words[2] in
            @MANIFEST_COMMANDS@) _gatectl_slugs manifests; return ;;
            @GATE_COMMANDS@) _gatectl_slugs gates; return ;;
        esac
    fi
    _gatectl_clap "$@"
}
"#;

/// Appended to the fish completion: the same slugs for the same
/// subcommands.
const FISH: &str = r#"
# Slugs: from the manifests for @MANIFEST_COMMANDS@, from the gates that
# exist (their netns gate-<slug>) for @GATE_COMMANDS@.
complete -c gatectl -n "__fish_seen_subcommand_from @MANIFEST_COMMANDS@" -f -a "(path basename /etc/gatectl/bottles/*.toml /etc/gatectl/bottles/*.json 2>/dev/null | string replace -r '\.(toml|json)\$' '')"
complete -c gatectl -n "__fish_seen_subcommand_from @GATE_COMMANDS@" -f -a "(ip netns list 2>/dev/null | string match -rg '^gate-([a-z0-9-]+)')"
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::generate::completion_command;

    #[test]
    fn every_command_named_is_a_subcommand_with_a_slug() {
        let cmd = completion_command();
        for name in MANIFEST_COMMANDS.iter().chain(&GATE_COMMANDS) {
            let sub = cmd
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("no subcommand {name}"));
            assert!(
                sub.get_positionals().any(|a| a.get_id() == "slug"),
                "{name} takes no slug"
            );
        }
    }

    #[test]
    fn zsh_wraps_clap_function_and_refuses_an_unknown_shape() {
        let clap = "#compdef gatectl\n\n_gatectl() {\n}\n\nif [ \"$funcstack[1]\" = \"_gatectl\" ]; then\n    _gatectl \"$@\"\nfi\n";
        let script = add_to(Shell::Zsh, clap).unwrap();
        assert!(script.contains("\n_gatectl_clap() {\n}\n"), "{script}");
        let wrapper = script.find("\n_gatectl() {\n").expect(&script);
        assert!(wrapper < script.find("\nif [ \"$funcstack").unwrap(), "{script}");
        assert!(
            script.contains("start|plan) _gatectl_slugs manifests"),
            "{script}"
        );
        assert!(
            script.contains("stop|status|reload|ssh-config|log) _gatectl_slugs gates"),
            "{script}"
        );
        let err = add_to(Shell::Zsh, "#compdef gatectl\n").unwrap_err();
        assert!(
            err.to_string().contains("adapt src/cli/slug_completion.rs"),
            "{err}"
        );
    }
}
