//! `gatectl metrics [--write]`: every gate's metrics in the Prometheus text
//! format, on stdout or into the file `metrics_path` names; as root it also
//! records in the journal what each gate netns's table denied since the
//! last run.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use clap::Args;

use super::{block_on, Outcome};
use crate::error::{Context, Result};
use crate::gate::{GateState, Host};
use crate::lock;
use crate::metrics::{self, GateMetrics};
use crate::slug::Slug;
use crate::systemd::Systemd;

/// Arguments of `metrics`.
#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// Write the metrics to the file metrics_path names in the host
    /// settings (replaced atomically, mode 0644) instead of stdout.
    #[arg(long)]
    pub write: bool,
}

/// Runs `metrics`.
pub fn run(args: MetricsArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let statuses = block_on(async {
        let systemd = Systemd::connect().await?;
        host.list(&systemd).await
    })?;
    let root = nix::unistd::geteuid().is_root();
    let records = &host.denied;
    let mut gates = Vec::new();
    let mut running: Vec<Slug> = Vec::new();
    for status in &statuses {
        let readable =
            root && matches!(status.state, GateState::Running | GateState::Broken) && status.netns_present;
        // The gate's lock, held while its counters are read and recorded. A
        // start, stop or reload holding it leaves the gate to the next run
        // (a stop takes the last record itself), with its counts kept.
        let held = if readable {
            lock::try_lock_slug(&host.settings.state_dir, &status.slug)
                .ok()
                .flatten()
        } else {
            None
        };
        if readable && held.is_none() {
            running.push(status.slug.clone());
        }
        let read = match held {
            Some(_) => crate::gate::denied(&status.slug),
            None => Ok(None),
        };
        let denied = match read {
            Ok(Some((netns, now, tried))) => {
                records.record(&status.slug, netns, now, &tried);
                running.push(status.slug.clone());
                Some(now)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(slug = %status.slug, error = %e, "cannot read what gate {} denied: {e}", status.slug);
                None
            }
        };
        let resolved_at = host
            .records
            .last_resolved(&status.slug)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        gates.push(GateMetrics {
            status,
            denied,
            resolved_at,
        });
    }
    if root {
        records.keep_only(&running);
    }
    let text = metrics::render(&gates);
    if args.write {
        write_atomically(&host.settings.metrics_path, &text)?;
    } else {
        print!("{text}");
    }
    Ok(Outcome::Ok)
}

/// Replaces `path` with `text`: written beside it, then renamed over it, so
/// a reader never sees half a file.
fn write_atomically(path: &std::path::Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create {}; set metrics_path in the host settings to a writable place",
                dir.display()
            )
        })?;
    }
    let partial = path.with_extension("prom.partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&partial)
        .with_context(|| {
            format!(
                "cannot write {}; create its directory or set metrics_path in the host settings",
                partial.display()
            )
        })?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot replace {}", path.display()))
}
