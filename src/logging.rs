//! Logging setup: structured journal entries when stderr is the journal (as
//! in a systemd unit), otherwise compact lines on stderr.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Prefix of the journal fields made from tracing fields: `slug` becomes
/// `GATE_SLUG`, so `journalctl GATE_SLUG=alice` finds one gate's events.
const JOURNAL_FIELD_PREFIX: &str = "GATE";

/// The `SYSLOG_IDENTIFIER` of journal entries (`journalctl -t gatectl`).
pub const SYSLOG_IDENTIFIER: &str = "gatectl";

/// Whether [`init`] chose the journal.
static TO_JOURNAL: AtomicBool = AtomicBool::new(false);

/// Installs the global logger.
///
/// Logs to the journal, with tracing fields as journal fields, when stderr
/// is the journal stream systemd set up (`JOURNAL_STREAM` names stderr's
/// device and inode) and the journal socket answers; otherwise logs to
/// stderr, without colours unless stderr is a terminal.
///
/// The level is info, or debug for gatectl's own events when `verbose`;
/// `RUST_LOG`, when set and valid, overrides both. Calling it again is a
/// no-op.
pub fn init(verbose: bool) {
    if stderr_is_journal() {
        if let Ok(journal) = tracing_journald::layer() {
            let journal = journal
                .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.to_string()))
                .with_syslog_identifier(SYSLOG_IDENTIFIER.to_string());
            let _ = tracing_subscriber::registry()
                .with(filter(verbose))
                .with(journal)
                .try_init();
            TO_JOURNAL.store(true, Ordering::Relaxed);
            return;
        }
    }
    let _ = tracing_subscriber::fmt()
        .compact()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter(verbose))
        .try_init();
}

/// Whether [`init`] installed the journal logger: the events of this
/// process go to the journal.
pub fn to_journal() -> bool {
    TO_JOURNAL.load(Ordering::Relaxed)
}

/// Runs `f` with its events going to the journal (with gatectl's field
/// prefix and identifier) whatever stderr is: for records that belong on
/// the journal even when a command runs in a terminal. Fails when the
/// journal's socket does not answer.
pub fn in_journal<T>(f: impl FnOnce() -> T) -> std::io::Result<T> {
    let journal = tracing_journald::layer()?
        .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.to_string()))
        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_string());
    let subscriber = tracing_subscriber::registry().with(journal);
    Ok(tracing::subscriber::with_default(subscriber, f))
}

/// `RUST_LOG` if set and valid, else the default for `verbose`.
fn filter(verbose: bool) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if verbose { "info,gatectl=debug" } else { "info" }))
}

/// Whether stderr is the journal stream systemd connected, as
/// `JOURNAL_STREAM` says (a child whose stderr was redirected elsewhere
/// inherits the variable but not the stream).
fn stderr_is_journal() -> bool {
    let Some((device, inode)) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|value| parse_journal_stream(&value))
    else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr()).is_ok_and(|stat| stat.st_dev == device && stat.st_ino == inode)
}

/// Parses `JOURNAL_STREAM`'s `DEVICE:INODE`.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (device, inode) = value.split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_journal_stream() {
        assert_eq!(parse_journal_stream("8:123456"), Some((8, 123456)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("8:x"), None);
        assert_eq!(parse_journal_stream(""), None);
    }
}
