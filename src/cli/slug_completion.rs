//! Slug completion for the bash and fish scripts that clap_complete writes:
//! `gatectl start|plan <TAB>` offers the manifests in
//! /etc/gatectl/bottles, `gatectl stop|status|reload|ssh-config <TAB>` the gates
//! that exist (their netns `gate-<slug>`, which any user may list). Appended
//! to the generated scripts, so everything else stays generated.

/// Appended to the bash completion: a wrapper that completes the slug
/// argument and otherwise hands over to clap's `_gatectl`.
pub const BASH: &str = r#"
# Slugs: from the manifests for start and plan, from the gates that exist
# (their netns gate-<slug>) for stop, status, reload and ssh-config.
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
            start|plan) source=manifests ;;
            stop|status|reload|ssh-config) source=gates ;;
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

/// Appended to the fish completion: the same slugs for the same
/// subcommands.
pub const FISH: &str = r#"
# Slugs: from the manifests for start and plan, from the gates that exist
# (their netns gate-<slug>) for stop, status, reload and ssh-config.
complete -c gatectl -n "__fish_seen_subcommand_from start plan" -f -a "(path basename /etc/gatectl/bottles/*.toml /etc/gatectl/bottles/*.json 2>/dev/null | string replace -r '\.(toml|json)\$' '')"
complete -c gatectl -n "__fish_seen_subcommand_from stop status reload ssh-config" -f -a "(ip netns list 2>/dev/null | string match -rg '^gate-([a-z0-9-]+)')"
"#;
