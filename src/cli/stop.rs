//! `gatectl stop <slug>`: remove a gate; a gate that is gone is success.

use clap::Args;

use super::{block_on, parse_slug, Outcome};
use crate::error::Result;
use crate::gate::Host;
use crate::slug::Slug;
use crate::timings::Timings;

/// Arguments of `stop`.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// The agent's slug.
    #[arg(value_parser = parse_slug)]
    pub slug: Slug,
    /// Print how long each step took (on stderr).
    #[arg(long)]
    pub timings: bool,
}

/// Runs `stop`.
pub fn run(args: StopArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let mut timings = Timings::default();
    if !block_on(host.stop(&args.slug, &mut timings))? {
        eprintln!("gatectl: gate {} was not running; nothing to stop", args.slug);
    }
    if args.timings {
        eprint!("{}", timings.report());
    }
    Ok(Outcome::Ok)
}
