//! `gatectl ssh-config <slug>`: the agent's ssh_config Host blocks, or with
//! `--include` the path of the file gatectl keeps them in while the gate
//! runs.

use clap::Args;

use super::{parse_slug, Outcome};
use crate::error::{Error, Result};
use crate::gate::Host;
use crate::slug::Slug;
use crate::ssh_config;

/// Arguments of `ssh-config`.
#[derive(Args, Debug)]
pub struct SshConfigArgs {
    /// The agent's slug (its gate must have been started, unless --include
    /// is given).
    #[arg(value_parser = parse_slug)]
    pub slug: Slug,
    /// Print the path of the file that holds the gate's Host blocks while
    /// the gate runs, for an `Include` line in the agent's ~/.ssh/config;
    /// start writes it, stop removes it, so the blocks never go stale.
    #[arg(long)]
    pub include: bool,
}

/// Runs `ssh-config`, from the running gate's record.
pub fn run(args: SshConfigArgs) -> Result<Outcome> {
    let host = Host::load()?;
    if args.include {
        let path = host.ssh_includes.path(&args.slug);
        println!("{}", path.display());
        if !path.exists() {
            eprintln!(
                "gatectl: note: gate {} is not running, so {} does not exist yet: ssh skips the \
                 Include until `gatectl start {}` writes it",
                args.slug,
                path.display(),
                args.slug
            );
        }
        return Ok(Outcome::Ok);
    }
    let record = host.records.load(&args.slug)?.ok_or_else(|| {
        Error::failed(format!(
            "gate {} is not running, so it has no addresses yet; run `gatectl start {}` first",
            args.slug, args.slug
        ))
    })?;
    print!("{}", ssh_config::render(&record.plan));
    Ok(Outcome::Ok)
}
