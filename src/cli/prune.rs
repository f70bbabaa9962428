//! `gatectl prune [--dry-run]`: remove the leftovers of gates that are gone.

use clap::Args;

use super::json::{self, Kind};
use super::{block_on, output, Outcome};
use crate::error::Result;
use crate::gate::Host;
use crate::prune::Prune;

/// Arguments of `prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// List what would be removed, removing nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `prune`.
pub fn run(args: PruneArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let found = block_on(Prune { host: &host }.run(args.dry_run))?;
    if args.json {
        json::print(Kind::Prune, &output::Leftovers { leftovers: &found })?;
    } else {
        let verb = if args.dry_run { "would remove" } else { "removed" };
        for f in &found {
            println!("{verb} {} {}", f.kind.as_str(), f.name);
        }
        if found.is_empty() {
            println!("nothing to prune");
        }
    }
    Ok(Outcome::Ok)
}
