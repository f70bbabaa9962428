"""The part of bot-bottle's `claude_bottle` package that gatectl's backend
needs: `ssh_gate` (vendored verbatim, see ../README.md) and a stand-in for
`manifest` (only `Bottle` and its `ssh` entries)."""
