//! `gatectl start <slug>`: bring up an agent's gate.

use std::path::PathBuf;

use clap::Args;

use super::{block_on, parse_slug, Outcome};
use crate::error::Result;
use crate::gate::Host;
use crate::slug::Slug;

/// Arguments of `start`.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// The agent's slug: 1-32 of a-z, 0-9 and '-'.
    #[arg(value_parser = parse_slug)]
    pub slug: Slug,
    /// Manifest to read instead of /etc/gatectl/bottles/SLUG.toml (or .json).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Put the agent's end of the gate in this network namespace (a name
    /// under /run/netns or a path); overrides the manifest's agent_netns.
    #[arg(long, value_name = "NAME|PATH")]
    pub agent_netns: Option<String>,
}

/// Runs `start`.
pub fn run(args: StartArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let manifest = host.manifest(&args.slug, args.manifest.as_deref())?;
    let plan = block_on(host.start(&args.slug, &manifest, args.agent_netns.as_deref()))?;
    println!(
        "gate {} running: {} upstream(s) on {} ports {}-{}; `gatectl ssh-config {}` prints the agent's ssh config",
        plan.slug,
        plan.upstreams.len(),
        plan.gate_internal.address,
        plan.upstreams.first().map_or(0, |u| u.listen_port),
        plan.upstreams.last().map_or(0, |u| u.listen_port),
        plan.slug
    );
    Ok(Outcome::Ok)
}
