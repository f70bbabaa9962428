//! `gatectl metrics [--write]`: every gate's metrics in the Prometheus text
//! format, on stdout or into the file `metrics_path` names; as root it also
//! records in the journal what each gate netns's table denied since the
//! last run.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use clap::Args;

use super::{block_on, Outcome};
use crate::denied;
use crate::error::{Context, Result};
use crate::gate::{GateState, Host};
use crate::metrics::{self, GateMetrics};
use crate::net::firewall::gate::{Denied, Tried};
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
    let records = denied::Records::new(&host.settings.state_dir);
    let mut gates = Vec::new();
    let mut running: Vec<Slug> = Vec::new();
    for status in &statuses {
        let read = match (root, status.state, status.netns_present) {
            (true, GateState::Running | GateState::Broken, true) => host.denied(&status.slug),
            _ => Ok(None),
        };
        let denied = match read {
            Ok(Some((netns, now, tried))) => {
                record_denied(&records, &status.slug, netns, now, &tried);
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

/// Records in the journal what `slug`'s table denied since the last record
/// (nothing when nothing was), with the destinations tried within the last
/// hour, then keeps the counts as recorded.
fn record_denied(records: &denied::Records, slug: &Slug, netns: u64, now: Denied, tried: &Tried) {
    let (delta, keep) = denied::since(records.load(slug), netns, now);
    if delta.agent + delta.egress > 0 {
        let message = denied::message(slug, delta, tried);
        let (ports, pairs) = denied::tried_fields(tried);
        let logged = crate::logging::in_journal(|| {
            tracing::info!(
                slug = slug.as_str(),
                outcome = "denied",
                denied_agent = delta.agent,
                denied_egress = delta.egress,
                denied_agent_ports = ports.as_str(),
                denied_egress_to = pairs.as_str(),
                "{message}"
            );
        });
        if let Err(e) = logged {
            tracing::warn!(slug = %slug, error = %e, "cannot record denied attempts in the journal: {e}");
            return;
        }
    }
    if let Err(e) = records.save(slug, keep) {
        tracing::warn!(slug = %slug, error = %e, "cannot keep the denied counts recorded: {e}");
    }
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
