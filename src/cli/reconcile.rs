//! `gatectl reconcile`: re-apply every running gate's firewall rules.
//!
//! Restarting nftables.service (or `nft flush ruleset`) removes the table
//! `inet gatectl`; `units/gatectl-reconcile.service` runs this afterwards.

use clap::Args;

use super::{block_on, Outcome};
use crate::error::Result;
use crate::gate::Host;

/// Arguments of `reconcile`.
#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// Print nothing on success.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `reconcile`.
pub fn run(args: ReconcileArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let applied = block_on(host.reconcile())?;
    if !args.quiet {
        let names: Vec<String> = applied.iter().map(|s| s.to_string()).collect();
        println!(
            "re-applied the firewall rules of {} running gate(s): {}",
            applied.len(),
            names.join(" ")
        );
    }
    Ok(Outcome::Ok)
}
