//! Gate records under the state directory (`/run/gatectl/gates/<slug>.json`).
//!
//! A record is written before the first side effect of `start` (so a crash
//! leaves something for `stop` to find) and removed last by
//! `stop`. It is a cache of the plan: `status` and `list` check the truth
//! with systemd and the kernel.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::plan::GatePlan;
use crate::slug::Slug;

/// What gatectl knows about one gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    /// The gate's plan, with resolved upstream addresses.
    pub plan: GatePlan,
    /// Whether `start` finished (false while it runs, or after it crashed).
    pub complete: bool,
}

/// The record store rooted at the state directory. Besides one record per
/// slug it keeps `indexes/<k>`, a symlink to the slug holding gate index k,
/// so allocating an index reads a directory, not every record.
pub struct Records {
    dir: PathBuf,
    indexes: PathBuf,
}

impl Records {
    /// The store under `state_dir`.
    pub fn new(state_dir: &Path) -> Records {
        Records {
            dir: state_dir.join("gates"),
            indexes: state_dir.join("indexes"),
        }
    }

    fn path(&self, slug: &Slug) -> PathBuf {
        self.dir.join(format!("{slug}.json"))
    }

    /// Marks gate index `index` as held by `slug`. Call it under the
    /// allocation lock, after checking the index is free.
    pub fn claim_index(&self, slug: &Slug, index: u32) -> Result<()> {
        std::fs::create_dir_all(&self.indexes)
            .with_context(|| format!("cannot create {}", self.indexes.display()))?;
        let link = self.indexes.join(index.to_string());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(slug.as_str(), &link)
            .with_context(|| format!("cannot write {}", link.display()))
    }

    /// Releases every index held by `slug`.
    fn release_indexes(&self, slug: &Slug) -> Result<()> {
        for (index, holder) in self.index_holders() {
            if holder == slug.as_str() {
                let link = self.indexes.join(index.to_string());
                match std::fs::remove_file(&link) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("cannot remove {}", link.display())),
                }
            }
        }
        Ok(())
    }

    /// Every claimed index and the slug holding it.
    pub fn index_holders(&self) -> Vec<(u32, String)> {
        let Ok(entries) = std::fs::read_dir(&self.indexes) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let e = e.ok()?;
                let index = e.file_name().to_str()?.parse().ok()?;
                let holder = std::fs::read_link(e.path()).ok()?.to_str()?.to_string();
                Some((index, holder))
            })
            .collect()
    }

    /// Writes `record` atomically (temporary file + rename).
    pub fn save(&self, record: &GateRecord) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.path(&record.plan.slug);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::failed(format!("cannot encode record: {e}")))?;
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&body)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The record of `slug`, if any. A corrupt record is reported, not ignored.
    pub fn load(&self, slug: &Slug) -> Result<Option<GateRecord>> {
        let path = self.path(slug);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::failed(format!(
                    "gate record {} is corrupt ({e}); run `gatectl stop {slug}` to clean up the gate",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Removes the record of `slug` and releases its index; a missing
    /// record is success.
    pub fn remove(&self, slug: &Slug) -> Result<()> {
        self.release_indexes(slug)?;
        let path = self.path(slug);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    /// Slugs that have a record, sorted.
    pub fn slugs(&self) -> Vec<Slug> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut slugs: Vec<Slug> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                Slug::parse(name.strip_suffix(".json")?).ok()
            })
            .collect();
        slugs.sort();
        slugs
    }

    /// Every readable record.
    pub fn all(&self) -> Vec<GateRecord> {
        self.slugs()
            .iter()
            .filter_map(|s| self.load(s).ok().flatten())
            .collect()
    }

    /// Gate indexes in use: claimed ones, and those of records (a record
    /// written by an older gatectl may have no claim).
    pub fn used_indexes(&self) -> BTreeSet<u32> {
        let mut used: BTreeSet<u32> = self.index_holders().into_iter().map(|(i, _)| i).collect();
        if used.len() < self.slugs().len() {
            used.extend(self.all().iter().map(|r| r.plan.index));
        }
        used
    }
}

/// The lowest index not in `used` (and below `capacity`), if any.
pub fn lowest_free_index(used: &BTreeSet<u32>, capacity: u32) -> Option<u32> {
    (0..capacity).find(|i| !used.contains(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_index_fills_gaps() {
        let used: BTreeSet<u32> = [0, 1, 3].into_iter().collect();
        assert_eq!(lowest_free_index(&used, 10), Some(2));
        assert_eq!(lowest_free_index(&BTreeSet::new(), 10), Some(0));
        let full: BTreeSet<u32> = (0..4).collect();
        assert_eq!(lowest_free_index(&full, 4), None);
    }
}
