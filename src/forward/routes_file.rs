//! The routes file of a gate: what its forwarder serves. `gatectl start`
//! writes it, `gatectl reload` and the DNS refresh rewrite it, and the
//! forwarder reads it when it starts and again at `SIGHUP`, so a running gate
//! takes new routes without a restart (and without dropping a session).
//!
//! On the host it is `<state_dir>/forward/<slug>/routes.json` (the file
//! 0644 in a 0755 directory, under `forward`, 0700); the forwarder's
//! unit binds that directory read-only at [`MOUNT`], so each forwarder sees
//! its own gate's file and nothing else of the state directory.
//!
//! ```json
//! {"generation": 2, "routes": [{"listen_port": 30000, "alias": "github", "upstreams": ["192.0.2.10:22"]}]}
//! ```
//!
//! `generation` grows by one at every rewrite. The forwarder shows the
//! generation it serves in its `STATUS=` line, which is how `gatectl reload`
//! learns that the forwarder applied a file.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::route::ForwardRoute;
use crate::error::{Context, Error, Result};

/// Where the forwarder sees its gate's routes directory.
pub const MOUNT: &str = "/run/gatectl-forward";

/// The file's name inside the directory.
pub const FILE_NAME: &str = "routes.json";

/// The contents of a routes file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesFile {
    /// Grows by one at every rewrite; shown in the forwarder's status.
    pub generation: u64,
    /// The routes, in the manifest's order.
    pub routes: Vec<ForwardRoute>,
}

impl RoutesFile {
    /// The path the forwarder reads, inside its sandbox.
    pub fn mounted_path() -> PathBuf {
        Path::new(MOUNT).join(FILE_NAME)
    }

    /// Reads the file at `path`. The error names the file and the problem.
    pub fn read(path: &Path) -> Result<RoutesFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the routes file {}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::invalid(format!(
                "the routes file {} is not valid ({e}); restart the gate to rewrite it",
                path.display()
            ))
        })
    }

    /// Reads the file in the gate's routes directory `dir` on the host, or
    /// `None` if there is none.
    pub fn read_in(dir: &Path) -> Result<Option<RoutesFile>> {
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            return Ok(None);
        }
        RoutesFile::read(&path).map(Some)
    }

    /// Writes the file into the gate's routes directory `dir` on the host,
    /// creating the directory, and replacing an earlier file atomically
    /// (a reader sees the old file or the new one, whole).
    pub fn write_in(&self, dir: &Path) -> Result<()> {
        // The parent (`forward`) is root's alone, as the records are: the
        // forwarder reaches its own directory through its bind mount only.
        if let Some(parent) = dir.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", parent.display()))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(dir)
            .or_else(|e| if dir.is_dir() { Ok(()) } else { Err(e) })
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
        let text = serde_json::to_vec(self)
            .map_err(|e| Error::failed(format!("cannot serialize the routes: {e}")))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gatectl-routes-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = scratch("round-trip");
        let gate = dir.join("forward/alice");
        assert_eq!(RoutesFile::read_in(&gate).unwrap(), None);
        let mut file = RoutesFile {
            generation: 1,
            routes: vec!["30000,github,192.0.2.10:22,[2001:db8::1]:22".parse().unwrap()],
        };
        file.write_in(&gate).unwrap();
        assert_eq!(RoutesFile::read_in(&gate).unwrap().as_ref(), Some(&file));
        file.generation = 2;
        file.routes.push("30001,gitlab,192.0.2.11:22".parse().unwrap());
        file.write_in(&gate).unwrap();
        assert_eq!(RoutesFile::read_in(&gate).unwrap(), Some(file));
        let names: Vec<_> = std::fs::read_dir(&gate)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME], "no temporary file is left");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_file_is_named_with_its_fix() {
        let dir = scratch("bad");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE_NAME), "{\"generation\": 1}").unwrap();
        let error = RoutesFile::read_in(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(dir).unwrap();
        assert!(
            error.contains("routes.json is not valid (missing field `routes`"),
            "{error}"
        );
        assert!(error.contains("restart the gate"), "{error}");
    }
}
