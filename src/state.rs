//! Gate records under the state directory (`/run/gatectl/gates/<slug>.json`),
//! each with the seal of its gate netns table beside it (`<slug>.seal`).
//!
//! A record is written before the first side effect of `start` (so a crash
//! leaves something for `stop` to find) and removed last by
//! `stop`. It is a cache of the plan: `status` and `list` check the truth
//! with systemd and the kernel.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::atomic_file;
use crate::error::{Context, Error, Result};
use crate::net::firewall::gate::TableSeal;
use crate::plan::GatePlan;
use crate::slug::Slug;

/// What gatectl knows about one gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    /// The gate's plan, with resolved upstream addresses.
    pub plan: GatePlan,
    /// Whether `start` finished (false while it runs, or after it crashed).
    pub complete: bool,
    /// Upstream pairs the host allowlist may hold for this gate beyond its
    /// plan's: those of a change (`reload`, a DNS refresh) while it is
    /// applied, left here if it was interrupted. `stop` removes them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_pairs: Vec<SocketAddr>,
}

impl GateRecord {
    /// The record of `plan` with no change pending.
    pub fn new(plan: GatePlan, complete: bool) -> GateRecord {
        GateRecord {
            plan,
            complete,
            pending_pairs: Vec::new(),
        }
    }

    /// Every upstream pair the host allowlist may hold for this gate.
    pub fn allowlist(&self) -> Vec<SocketAddr> {
        let mut pairs: Vec<SocketAddr> = self.plan.upstream_pairs().collect();
        pairs.extend(&self.pending_pairs);
        pairs.sort_unstable();
        pairs.dedup();
        pairs
    }
}

/// The record store rooted at the state directory. Besides one record per
/// slug it keeps `indexes/<k>`, a symlink to the slug holding gate index k,
/// and `next-index`, where the search for a free index starts: allocating
/// an index creates one symlink (atomically, so two starts never get the
/// same index) instead of reading every record.
pub struct Records {
    state_dir: PathBuf,
    dir: PathBuf,
    indexes: PathBuf,
    hint: PathBuf,
}

impl Records {
    /// The store under `state_dir`.
    pub fn new(state_dir: &Path) -> Records {
        Records {
            state_dir: state_dir.to_path_buf(),
            dir: state_dir.join("gates"),
            indexes: state_dir.join("indexes"),
            hint: state_dir.join("next-index"),
        }
    }

    /// When the DNS refresh is due for `slug`'s names, if it was scheduled.
    pub fn refresh_due(&self, slug: &Slug) -> Option<SystemTime> {
        let text = std::fs::read_to_string(self.refresh_path(slug)).ok()?;
        let secs: u64 = text.trim().parse().ok()?;
        Some(UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// When `slug`'s upstream names were last resolved (by start, reload or
    /// the DNS refresh): each of them schedules the next refresh, so it is
    /// when the schedule was last written.
    pub fn last_resolved(&self, slug: &Slug) -> Option<SystemTime> {
        std::fs::metadata(self.refresh_path(slug)).ok()?.modified().ok()
    }

    /// Schedules the DNS refresh of `slug`'s names at `due`.
    pub fn set_refresh_due(&self, slug: &Slug, due: SystemTime) -> Result<()> {
        let path = self.refresh_path(slug);
        let dir = path.parent().expect("the schedule has a directory");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let secs = due.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{secs}\n"))
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    fn refresh_path(&self, slug: &Slug) -> PathBuf {
        self.state_dir.join("dns").join(slug.as_str())
    }

    /// The directory of `slug`'s routes file.
    pub fn routes_dir(&self, slug: &Slug) -> PathBuf {
        routes_dir(&self.state_dir, slug)
    }

    fn path(&self, slug: &Slug) -> PathBuf {
        self.dir.join(format!("{slug}.json"))
    }

    fn seal_path(&self, slug: &Slug) -> PathBuf {
        self.dir.join(format!("{slug}.seal"))
    }

    /// Keeps the seal of `slug`'s gate netns table, written by whoever
    /// applied the table (start, reload, refresh, reconcile); 0600 like the
    /// record.
    pub fn save_seal(&self, slug: &Slug, seal: &TableSeal) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let body = serde_json::to_vec(seal)
            .map_err(|e| Error::failed(format!("cannot encode a table seal: {e}")))?;
        atomic_file::replace(&self.seal_path(slug), &body, 0o600)
    }

    /// The seal of `slug`'s gate netns table; `None` when there is none or
    /// it cannot be read (the table is then listed instead).
    pub fn seal(&self, slug: &Slug) -> Option<TableSeal> {
        serde_json::from_slice(&std::fs::read(self.seal_path(slug)).ok()?).ok()
    }

    fn claim_path(&self, index: u32) -> PathBuf {
        self.indexes.join(index.to_string())
    }

    /// Marks gate index `index` as held by `slug`, unless something holds
    /// it already: `false` then. Atomic, so concurrent claims of one index
    /// cannot both succeed.
    pub fn claim_index(&self, slug: &Slug, index: u32) -> Result<bool> {
        let link = self.claim_path(index);
        loop {
            match std::os::unix::fs::symlink(slug.as_str(), &link) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                // The directory goes when it is empty (any_index_claimed).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&self.indexes)
                        .with_context(|| format!("cannot create {}", self.indexes.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot write {}", link.display())),
            }
        }
    }

    /// Releases the claim of gate index `index`. The next allocation starts
    /// from it when it was the index handed out last, and from 0 when no
    /// claim is left. Needs no lock: a hint that a concurrent allocation
    /// changed meanwhile only makes the next search start elsewhere.
    pub fn release_index(&self, index: u32) -> Result<()> {
        let link = self.claim_path(index);
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", link.display())),
        }
        if !self.any_index_claimed() {
            self.set_index_hint(0)?;
        } else if self.index_hint() == index + 1 {
            self.set_index_hint(index)?;
        }
        Ok(())
    }

    /// Where the search for a free gate index starts: after the index
    /// handed out last (0 at first). Only a hint: the claims decide.
    pub fn index_hint(&self) -> u32 {
        std::fs::read_to_string(&self.hint)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Makes the next search for a free gate index start at `index`.
    pub fn set_index_hint(&self, index: u32) -> Result<()> {
        std::fs::write(&self.hint, index.to_string())
            .with_context(|| format!("cannot write {}", self.hint.display()))
    }

    /// Whether `index` is claimed.
    pub fn index_claimed(&self, index: u32) -> bool {
        self.claim_path(index).symlink_metadata().is_ok()
    }

    /// Whether any gate index is claimed. `false` means no gate exists,
    /// except one whose state directory entries were lost. Costs the same
    /// however many indexes are claimed: it asks the kernel to remove the
    /// claims directory, which succeeds only when it is empty (and
    /// [`Records::claim_index`] creates it again).
    pub fn any_index_claimed(&self) -> bool {
        match std::fs::remove_dir(&self.indexes) {
            Ok(()) => false,
            Err(e) => matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)),
        }
    }

    /// Releases every index held by `slug`: the one its record names, or,
    /// without a record that names an index `slug` holds, any found by
    /// reading every claim. (A claim a start made before it died, without
    /// writing its record, is found that way once the record is gone, e.g.
    /// by `gatectl prune`.)
    fn release_indexes(&self, slug: &Slug) -> Result<()> {
        if let Ok(Some(record)) = self.load(slug) {
            let index = record.plan.index;
            if self.holder(index).as_deref() == Some(slug.as_str()) {
                return self.release_index(index);
            }
        }
        for (index, holder) in self.index_holders() {
            if holder == slug.as_str() {
                self.release_index(index)?;
            }
        }
        Ok(())
    }

    /// The slug holding gate index `index`, if it is claimed.
    fn holder(&self, index: u32) -> Option<String> {
        let target = std::fs::read_link(self.claim_path(index)).ok()?;
        target.to_str().map(str::to_string)
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

    /// Writes `record` atomically (temporary file + rename). Records name
    /// every agent's upstreams: the directory is 0700 and each record 0600,
    /// readable by root only.
    pub fn save(&self, record: &GateRecord) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        // A directory an older gatectl created keeps its mode otherwise.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", self.dir.display()))?;
        let body = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::failed(format!("cannot encode record: {e}")))?;
        atomic_file::replace(&self.path(&record.plan.slug), &body, 0o600)
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

    /// Removes the record of `slug`, its routes directory, its DNS refresh
    /// schedule and its table seal, and releases its index; a missing
    /// record is success.
    pub fn remove(&self, slug: &Slug) -> Result<()> {
        self.release_indexes(slug)?;
        let routes = self.routes_dir(slug);
        match std::fs::remove_dir_all(&routes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", routes.display())),
        }
        for path in [self.refresh_path(slug), self.seal_path(slug), self.path(slug)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
            }
        }
        Ok(())
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
}

/// The directory of `slug`'s routes file (see
/// [`crate::forward::routes_file`]) under `state_dir`.
pub fn routes_dir(state_dir: &Path, slug: &Slug) -> PathBuf {
    state_dir.join("forward").join(slug.as_str())
}

/// The gate indexes below `capacity` in the order a free one is searched
/// for: from `hint` up, then wrapping around to 0.
pub fn probe_order(hint: u32, capacity: u32) -> impl Iterator<Item = u32> {
    let start = if hint < capacity { hint } else { 0 };
    (start..capacity).chain(0..start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::GateSpec;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gatectl-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn slug(s: &str) -> Slug {
        Slug::parse(s).unwrap()
    }

    /// The plan of gate b (one upstream, 192.0.2.1:22) at gate index 5.
    fn plan_of_b_at_5() -> GatePlan {
        let manifest = crate::manifest::parse(
            "[[ssh]]\nHost = \"up\"\nHostname = \"192.0.2.1\"\n",
            crate::manifest::Format::Toml,
        )
        .unwrap();
        let settings = crate::config::Settings::default();
        GateSpec::build(&slug("b"), &manifest, &settings, None, |h| {
            Ok(vec![h.parse().unwrap()])
        })
        .unwrap()
        .place(&settings, 5)
        .unwrap()
    }

    #[test]
    fn probing_starts_at_the_hint_and_wraps_around() {
        assert_eq!(probe_order(2, 5).collect::<Vec<_>>(), [2, 3, 4, 0, 1]);
        assert_eq!(probe_order(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
        // A hint past the capacity (the pools shrank) starts at 0.
        assert_eq!(probe_order(9, 3).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn an_index_is_claimed_once_and_released_by_its_record() {
        let dir = scratch("claims");
        let records = Records::new(&dir);
        assert!(!records.any_index_claimed());
        assert_eq!(records.index_hint(), 0);
        assert!(records.claim_index(&slug("a"), 4).unwrap());
        assert!(!records.claim_index(&slug("b"), 4).unwrap(), "held by a");
        assert!(records.claim_index(&slug("b"), 5).unwrap());
        assert!(records.any_index_claimed() && records.index_claimed(4) && !records.index_claimed(6));
        let mut holders = records.index_holders();
        holders.sort();
        assert_eq!(holders, [(4, "a".to_string()), (5, "b".to_string())]);

        assert!(records.claim_index(&slug("c"), 6).unwrap());
        records.set_index_hint(7).unwrap();

        // Without a record, a slug's claim is found among all claims. The
        // index handed out last is handed out again next.
        records.remove(&slug("c")).unwrap();
        assert!(!records.index_claimed(6));
        assert_eq!(records.index_hint(), 6);
        // Releasing an index handed out before leaves the hint alone.
        records.remove(&slug("a")).unwrap();
        assert!(!records.index_claimed(4) && records.index_claimed(5));
        assert_eq!(records.index_hint(), 6);

        // b has a record naming its index.
        let plan = plan_of_b_at_5();
        records.save(&GateRecord::new(plan, true)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("gates")), 0o700);
        assert_eq!(mode(&dir.join("gates/b.json")), 0o600);
        records.remove(&slug("b")).unwrap();
        assert!(!records.any_index_claimed() && records.load(&slug("b")).unwrap().is_none());
        // With no claim left, numbering starts over.
        assert_eq!(records.index_hint(), 0);
        assert!(records.claim_index(&slug("d"), 0).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_names_its_plans_pairs_and_those_of_a_pending_change() {
        let plan = plan_of_b_at_5();
        let settled = GateRecord::new(plan, true);
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(settled.allowlist(), [addr("192.0.2.1:22")]);
        // Written without the field, as an older gatectl did, and read back.
        let json = serde_json::to_value(&settled).unwrap();
        assert!(json.get("pending_pairs").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<GateRecord>(json).unwrap(), settled);

        let changing = GateRecord {
            pending_pairs: vec![addr("198.51.100.7:2222"), addr("192.0.2.1:22")],
            ..settled.clone()
        };
        assert_eq!(
            changing.allowlist(),
            [addr("192.0.2.1:22"), addr("198.51.100.7:2222")]
        );
        let json = serde_json::to_string(&changing).unwrap();
        assert_eq!(serde_json::from_str::<GateRecord>(&json).unwrap(), changing);
    }
}
