//! `gatectl status [<slug>] [--json]`: the state of one gate or of all.

use clap::Args;

use super::json::{self, Kind};
use super::{block_on, output, parse_slug, render, Outcome};
use crate::error::Result;
use crate::gate::{GateState, Host};
use crate::slug::Slug;
use crate::systemd::Systemd;

/// Arguments of `status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The agent's slug; all gates when omitted.
    #[arg(value_parser = parse_slug)]
    pub slug: Option<Slug>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `status`. Exits 3 when the gate (or any gate, without a slug) is
/// not running; with no gates at all, says "no gates" and exits 0.
pub fn run(args: StatusArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let statuses = block_on(async {
        let systemd = Systemd::connect().await?;
        match &args.slug {
            Some(slug) => Ok(vec![host.status(&systemd, slug).await?]),
            None => host.list(&systemd).await,
        }
    })?;
    if args.json {
        match &args.slug {
            Some(_) => json::print(Kind::Status, &statuses[0])?,
            None => json::print(Kind::Gates, &output::Gates { gates: &statuses })?,
        }
    } else if statuses.is_empty() {
        println!("no gates");
    } else {
        for s in &statuses {
            match s.state {
                GateState::Stopped => println!("{}", not_running(&host, &s.slug)),
                _ => print!("{}", render::status_text(s)),
            }
        }
    }
    // No gates at all is not a gate that fails to run.
    let all_running = statuses.iter().all(|s| s.state == GateState::Running);
    Ok(if all_running {
        Outcome::Ok
    } else {
        Outcome::NotRunning
    })
}

/// The line for a gate of which nothing exists: whether it has a manifest,
/// and so what starts it.
fn not_running(host: &Host, slug: &Slug) -> String {
    let manifest = ["toml", "json"]
        .into_iter()
        .map(|ext| host.settings.bottles_dir.join(format!("{slug}.{ext}")))
        .find(|path| path.exists());
    match manifest {
        Some(path) => format!(
            "gate {slug}: not running; its manifest is {}: `gatectl start {slug}` starts it",
            path.display()
        ),
        None => format!(
            "gate {slug}: not running, and {} has no manifest for it (write {slug}.toml there, or pass \
             --manifest FILE to start)",
            host.settings.bottles_dir.display()
        ),
    }
}
