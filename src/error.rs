//! The one error type of gatectl, with context wrapping and a list variant
//! for best-effort teardown.

use std::fmt;

/// Everything that can go wrong in gatectl. Each message says what failed and
/// why; where there is a fix, the message ends with it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the user (slug, manifest, settings, flags). Nothing on
    /// the host was changed.
    #[error("{0}")]
    Invalid(String),
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What gatectl was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{context}: {source}")]
    Netlink {
        /// What gatectl was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A D-Bus call to systemd failed.
    #[error("{context}: {source}")]
    Dbus {
        /// What gatectl was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<zbus::Error>,
    },
    /// The host firewall (nftables) refused a change.
    #[error("{context}: {message}")]
    Firewall {
        /// What gatectl was doing.
        context: String,
        /// What nft said.
        message: String,
    },
    /// Something else went wrong; the message says what.
    #[error("{0}")]
    Failed(String),
    /// A step of `start` failed; everything it created has been rolled back.
    #[error("start failed at step \"{step}\": {source}{}", rollback_note(.rollback))]
    Start {
        /// The step that failed.
        step: &'static str,
        /// Why it failed.
        #[source]
        source: Box<Error>,
        /// Errors met while rolling back, if any.
        rollback: Vec<Error>,
    },
    /// Several independent steps failed (best-effort teardown).
    #[error("{}", ErrorList(.0))]
    List(Vec<Error>),
}

/// The fix of a start whose rollback was incomplete.
const STOP_THE_REST: &str = "run `gatectl stop` for this slug to remove the rest";

fn rollback_note(rollback: &[Error]) -> String {
    if rollback.is_empty() {
        "; everything it created was removed".to_string()
    } else {
        format!(
            "; rollback was incomplete ({}); {STOP_THE_REST}",
            ErrorList(rollback)
        )
    }
}

struct ErrorList<'a>(&'a [Error]);

impl fmt::Display for ErrorList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The `code` of an error object under `--json`: what kind of failure it
/// was, stable across versions of `gatectl.error/1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The command line is wrong (exit 2); nothing was read or changed.
    Usage,
    /// Bad input: slug, manifest, settings or flags, or a missing
    /// privilege. Nothing on the host was changed.
    Invalid,
    /// A system call or file operation failed.
    Io,
    /// A netlink request failed.
    Netlink,
    /// A D-Bus call to systemd failed.
    Dbus,
    /// The firewall (nftables) refused a change.
    Firewall,
    /// Something else failed; the message says what.
    Failed,
    /// A step of start failed; what it created was rolled back (the
    /// message says if the rollback was incomplete).
    Start,
    /// Several independent steps failed (best-effort teardown).
    Several,
}

/// The fix that ends `message`, when it has one: its last `; `-separated
/// clause (gatectl's messages say what failed, why, then the fix).
pub fn last_clause(message: &str) -> Option<String> {
    message
        .rsplit_once("; ")
        .map(|(_, fix)| fix.trim().to_string())
        .filter(|fix| !fix.is_empty())
}

/// The result type used throughout gatectl.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a description of what gatectl was doing to a lower-level error.
pub trait Context<T> {
    /// Wraps the error with `context`.
    fn context(self, context: impl Into<String>) -> Result<T>;
    /// Wraps the error with a lazily built context.
    fn with_context<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T>;
}

/// Errors that know how to carry a context string.
pub trait IntoContextError {
    /// Builds the gatectl error for this source and context.
    fn into_error(self, context: String) -> Error;
}

impl IntoContextError for std::io::Error {
    fn into_error(self, context: String) -> Error {
        Error::Io {
            context,
            source: self,
        }
    }
}

impl IntoContextError for nix::errno::Errno {
    fn into_error(self, context: String) -> Error {
        Error::Io {
            context,
            source: self.into(),
        }
    }
}

impl IntoContextError for rtnetlink::Error {
    fn into_error(self, context: String) -> Error {
        Error::Netlink {
            context,
            source: Box::new(self),
        }
    }
}

impl IntoContextError for zbus::Error {
    fn into_error(self, context: String) -> Error {
        if matches!(&self, zbus::Error::InputOutput(e) if e.kind() == std::io::ErrorKind::TimedOut) {
            return Error::Failed(format!(
                "{context}: systemd did not answer in time; it may be overloaded or stuck: \
                 look at `systemctl status` and `journalctl -b -p warning`, then retry"
            ));
        }
        Error::Dbus {
            context,
            source: Box::new(self),
        }
    }
}

impl IntoContextError for zbus::fdo::Error {
    fn into_error(self, context: String) -> Error {
        Error::Dbus {
            context,
            source: Box::new(self.into()),
        }
    }
}

impl<T, E: IntoContextError> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into_error(context.into()))
    }

    fn with_context<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into_error(f().into()))
    }
}

impl Error {
    /// Builds an [`Error::Invalid`] from anything printable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }

    /// Builds an [`Error::Failed`] from anything printable.
    pub fn failed(message: impl Into<String>) -> Self {
        Error::Failed(message.into())
    }

    /// What kind of failure this is, for the error object of `--json`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Invalid(_) => ErrorCode::Invalid,
            Error::Io { .. } => ErrorCode::Io,
            Error::Netlink { .. } => ErrorCode::Netlink,
            Error::Dbus { .. } => ErrorCode::Dbus,
            Error::Firewall { .. } => ErrorCode::Firewall,
            Error::Failed(_) => ErrorCode::Failed,
            Error::Start { .. } => ErrorCode::Start,
            Error::List(_) => ErrorCode::Several,
        }
    }

    /// What to do about this error, when gatectl's message names it: the
    /// last `; `-separated clause of a message of gatectl's own (invalid
    /// input, or a failure it described), the cleanup an incomplete
    /// rollback leaves to do, or the fix of the first error of a list that
    /// has one. `None` for errors of the system (I/O, netlink, D-Bus, nft).
    pub fn fix(&self) -> Option<String> {
        match self {
            Error::Invalid(message) | Error::Failed(message) => last_clause(message),
            Error::Start { rollback, .. } if !rollback.is_empty() => Some(STOP_THE_REST.into()),
            Error::Start { source, .. } => source.fix(),
            Error::List(errors) => errors.iter().find_map(Error::fix),
            Error::Io { .. } | Error::Netlink { .. } | Error::Dbus { .. } | Error::Firewall { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fix_is_the_last_clause_of_gatectls_own_messages_or_the_cleanup_left_to_do() {
        let invalid = Error::invalid("alias \"\" is empty; an alias is 1 to 64 characters");
        assert_eq!(invalid.code(), ErrorCode::Invalid);
        assert_eq!(invalid.fix().as_deref(), Some("an alias is 1 to 64 characters"));
        assert_eq!(Error::failed("lock x is busy").fix(), None);
        let io = Err::<(), _>(std::io::Error::other("a; b"))
            .context("cannot read x")
            .unwrap_err();
        assert_eq!((io.code(), io.fix()), (ErrorCode::Io, None));
        let start = |rollback| Error::Start {
            step: "netns",
            source: Box::new(Error::invalid("bad; fix it")),
            rollback,
        };
        assert_eq!(start(vec![]).fix().as_deref(), Some("fix it"));
        assert_eq!(
            start(vec![Error::failed("x")]).fix().as_deref(),
            Some("run `gatectl stop` for this slug to remove the rest")
        );
        let list = Error::List(vec![Error::failed("x"), Error::failed("y; do z")]);
        assert_eq!(
            (list.code(), list.fix().as_deref()),
            (ErrorCode::Several, Some("do z"))
        );
    }

    #[test]
    fn a_dbus_call_that_timed_out_says_so_and_what_to_do() {
        let timed_out = zbus::Error::InputOutput(std::sync::Arc::new(std::io::ErrorKind::TimedOut.into()));
        let message = Err::<(), _>(timed_out)
            .context("cannot start gate-alice.socket")
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("cannot start gate-alice.socket: systemd did not answer in time")
                && message.contains("then retry"),
            "{message}"
        );
        let refused = zbus::Error::Failure("no".into());
        let message = Err::<(), _>(refused)
            .context("cannot start x")
            .unwrap_err()
            .to_string();
        assert!(!message.contains("did not answer"), "{message}");
    }
}
