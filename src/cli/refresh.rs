//! `gatectl refresh`: re-resolve the upstream names of running gates whose
//! answers expired, and move them to new addresses in place (run by
//! `gatectl-refresh.timer`).

use clap::Args;

use super::{block_on, Outcome};
use crate::error::Result;
use crate::gate::Host;

/// Arguments of `refresh`.
#[derive(Args, Debug)]
pub struct RefreshArgs {
    /// Resolve every running gate's names now, whatever their TTL.
    #[arg(long)]
    pub force: bool,
}

/// Runs `refresh`: one line per changed name on stdout, one per answer
/// not used on stderr.
pub fn run(args: RefreshArgs) -> Result<Outcome> {
    let host = Host::load()?;
    for refreshed in block_on(host.refresh(args.force))? {
        for change in &refreshed.changes {
            println!("gate {}: {change}", refreshed.slug);
        }
        for warning in &refreshed.warnings {
            eprintln!("gatectl: warning: gate {}: {warning}", refreshed.slug);
        }
    }
    Ok(Outcome::Ok)
}
