//! `gatectl plan <slug>`: a dry run of `start`, creating nothing.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::{parse_slug, render, Outcome};
use crate::error::Result;
use crate::gate::Host;
use crate::plan::GatePlan;
use crate::slug::Slug;
use crate::unit::{self, Property};

/// Arguments of `plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The agent's slug.
    #[arg(value_parser = parse_slug)]
    pub slug: Slug,
    /// Manifest to read instead of /etc/gatectl/bottles/SLUG.toml (or .json).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Put the agent's end in this network namespace (name or path).
    #[arg(long, value_name = "NAME|PATH")]
    pub agent_netns: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PlanOutput<'a> {
    #[serde(flatten)]
    plan: &'a GatePlan,
    unit_properties: Vec<Property>,
}

/// Runs `plan`.
pub fn run(args: PlanArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let manifest = host.manifest(&args.slug, args.manifest.as_deref())?;
    let index = host.next_index()?;
    let plan = host.plan(&args.slug, &manifest, args.agent_netns.as_deref(), index)?;
    let unit_properties = unit::properties(&plan, &host.settings);
    if args.json {
        render::json(&PlanOutput {
            plan: &plan,
            unit_properties,
        })?;
    } else {
        print!("{}", render::plan_text(&plan, &unit_properties));
    }
    Ok(Outcome::Ok)
}
