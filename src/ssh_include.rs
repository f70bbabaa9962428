//! The ssh_config file gatectl keeps for each running gate
//! (`/run/gatectl/ssh_config/<slug>.conf`), meant for an `Include` line in
//! the agent's `~/.ssh/config`: `start` writes it, `stop` (and `prune`)
//! remove it, `reconcile` writes it again for every running gate. It lives
//! exactly as long as the gate, under the state directory (a tmpfs), so
//! after a reboot it comes back only when `gatectl@<slug>` starts the gate,
//! and never names an address that no running gate has; ssh skips an
//! `Include` that matches no file.
//!
//! Written atomically (temporary file + rename) by callers holding the
//! slug lock, so ssh never reads half a file and two gatectl commands
//! never interleave their writes.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::atomic_file;
use crate::error::{Context, Result};
use crate::plan::GatePlan;
use crate::slug::Slug;
use crate::ssh_config;

/// The includes under one state directory.
pub struct SshIncludes {
    dir: PathBuf,
}

impl SshIncludes {
    /// The includes under `state_dir`.
    pub fn new(state_dir: &Path) -> SshIncludes {
        SshIncludes {
            dir: state_dir.join("ssh_config"),
        }
    }

    /// The include of `slug`'s gate, whether or not it exists now.
    pub fn path(&self, slug: &Slug) -> PathBuf {
        self.dir.join(format!("{slug}.conf"))
    }

    /// Writes the include of the gate in `plan`, atomically. The agent's
    /// ssh runs as the agent's user, so the file is world-readable (0644),
    /// like the output of `gatectl ssh-config`.
    pub fn write(&self, plan: &GatePlan) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let body = format!(
            "# kept current by gatectl while gate \"{}\" runs; edits are lost\n{}",
            plan.slug,
            ssh_config::render(plan)
        );
        atomic_file::replace(&self.path(&plan.slug), body.as_bytes(), 0o644)
    }

    /// Removes the include of `slug`; a missing one is success.
    pub fn remove(&self, slug: &Slug) -> Result<()> {
        let path = self.path(slug);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::manifest::{parse, Format};
    use crate::plan::GateSpec;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn write_replaces_the_file_readable_by_all_and_remove_is_idempotent() {
        let state = std::env::temp_dir().join(format!("gatectl-ssh-include-{}", std::process::id()));
        let includes = SshIncludes::new(&state);
        let slug = Slug::parse("alice").unwrap();
        let m = parse(
            "[[ssh]]\nHost = \"box\"\nHostname = \"192.0.2.9\"\n",
            Format::Toml,
        )
        .unwrap();
        let settings = Settings::default();
        let plan = GateSpec::build(&slug, &m, &settings, None, |_| {
            Ok(vec!["192.0.2.9".parse().unwrap()])
        })
        .unwrap()
        .place(&settings, 0)
        .unwrap();
        let path = includes.path(&slug);
        assert_eq!(path, state.join("ssh_config/alice.conf"));
        includes.write(&plan).unwrap();
        includes.write(&plan).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# kept current by gatectl while gate \"alice\" runs"),
            "{text}"
        );
        assert!(text.ends_with(&ssh_config::render(&plan)), "{text}");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(state.join("ssh_config")).unwrap().collect();
        assert_eq!(names.len(), 1, "a temporary file is left: {names:?}");
        includes.remove(&slug).unwrap();
        assert!(!path.exists());
        includes.remove(&slug).unwrap();
        std::fs::remove_dir_all(&state).unwrap();
    }
}
