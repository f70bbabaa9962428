//! `gatectl plan <slug>`: a dry run of `start`, creating nothing.

use clap::Args;
use serde::Serialize;

use super::{render, GateArgs, Outcome};
use crate::error::Result;
use crate::gate::Host;
use crate::plan::GatePlan;
use crate::unit::{self, Property};

/// Arguments of `plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The gate and its manifest.
    #[command(flatten)]
    pub gate: GateArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PlanOutput<'a> {
    #[serde(flatten)]
    plan: &'a GatePlan,
    socket_properties: Vec<Property>,
    unit_properties: Vec<Property>,
}

/// Runs `plan`.
pub fn run(args: PlanArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let gate = &args.gate;
    let manifest = host.manifest(&gate.slug, gate.manifest.as_deref())?;
    let spec = host.spec(&gate.slug, &manifest, gate.agent_netns.as_deref())?;
    let plan = spec.place(&host.settings, host.next_index()?)?;
    render::warnings(&manifest, &plan);
    let socket_properties = unit::socket_properties(&plan);
    let unit_properties = unit::properties(&plan, &host.settings);
    if args.json {
        render::json(&PlanOutput {
            plan: &plan,
            socket_properties,
            unit_properties,
        })?;
    } else {
        print!(
            "{}",
            render::plan_text(&plan, &socket_properties, &unit_properties)
        );
    }
    Ok(Outcome::Ok)
}
