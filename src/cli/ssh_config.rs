//! `gatectl ssh-config <slug>`: the agent's ssh_config Host blocks.

use clap::Args;

use super::{parse_slug, Outcome};
use crate::error::{Error, Result};
use crate::gate::Host;
use crate::slug::Slug;
use crate::ssh_config;

/// Arguments of `ssh-config`.
#[derive(Args, Debug)]
pub struct SshConfigArgs {
    /// The agent's slug (its gate must have been started).
    #[arg(value_parser = parse_slug)]
    pub slug: Slug,
}

/// Runs `ssh-config`, from the running gate's record.
pub fn run(args: SshConfigArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let record = host.records.load(&args.slug)?.ok_or_else(|| {
        Error::failed(format!(
            "gate {} is not running, so it has no addresses yet; run `gatectl start {}` first",
            args.slug, args.slug
        ))
    })?;
    print!("{}", ssh_config::render(&record.plan));
    Ok(Outcome::Ok)
}
