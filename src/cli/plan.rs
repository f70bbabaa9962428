//! `gatectl plan <slug>`: a dry run of `start`, creating nothing.

use clap::Args;

use super::json::{self, Kind};
use super::{output, render, GateArgs, Outcome};
use crate::error::Result;
use crate::gate::start::missing_agent_netns;
use crate::gate::Host;
use crate::unit;

/// Arguments of `plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The gate and its manifest.
    #[command(flatten)]
    pub gate: GateArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also print the units' properties as gatectl hands them to systemd
    /// (always in --json).
    #[arg(long, short)]
    pub verbose: bool,
}

/// Runs `plan`.
pub fn run(args: PlanArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let gate = &args.gate;
    let manifest = host.manifest(&gate.slug, gate.manifest.as_deref())?;
    let spec = host.spec(&gate.slug, &manifest, gate.agent_netns.as_deref())?;
    if let Some(path) = spec.agent_netns.as_deref().filter(|_| !spec.agent_netns_owned) {
        if let Some(missing) = missing_agent_netns(path) {
            return Err(missing);
        }
    }
    // A gate with a record keeps its index; a new one takes the next free.
    let (index, placement) = match host.records.load(&gate.slug) {
        Ok(Some(record)) => (record.plan.index, render::Placement::Current),
        _ => (host.next_index()?, render::Placement::Next),
    };
    let plan = spec.place(&host.settings, index)?;
    render::warnings(&manifest, &plan);
    let socket_properties = unit::socket_properties(&plan);
    let unit_properties = unit::properties(&plan, &host.settings);
    if args.json {
        json::print(
            Kind::Plan,
            &output::Plan {
                plan: &plan,
                socket_properties: &socket_properties,
                unit_properties: &unit_properties,
            },
        )?;
    } else {
        print!("{}", render::plan_text(&plan, placement, &host.settings));
        if args.verbose {
            print!(
                "{}",
                render::unit_properties_text(&plan, &socket_properties, &unit_properties)
            );
        }
    }
    Ok(Outcome::Ok)
}
