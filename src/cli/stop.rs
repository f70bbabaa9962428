//! `gatectl stop <slug>`: remove a gate; a gate that is gone is success.

use clap::Args;

use super::{block_on, parse_slug, Outcome};
use crate::error::Result;
use crate::gate::Host;
use crate::slug::Slug;

/// Arguments of `stop`.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// The agent's slug.
    #[arg(value_parser = parse_slug)]
    pub slug: Slug,
}

/// Runs `stop`.
pub fn run(args: StopArgs) -> Result<Outcome> {
    let host = Host::load()?;
    block_on(host.stop(&args.slug))?;
    Ok(Outcome::Ok)
}
