//! `gatectl reload <slug>`: apply a changed manifest to a running gate.

use clap::Args;

use super::{block_on, render, GateArgs, Outcome};
use crate::error::Result;
use crate::gate::reload::Reloaded;
use crate::gate::Host;
use crate::lock;

/// Arguments of `reload`.
#[derive(Args, Debug)]
pub struct ReloadArgs {
    /// The gate and its manifest.
    #[command(flatten)]
    pub gate: GateArgs,
}

/// Runs `reload`.
pub fn run(args: ReloadArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let _slot = lock::take_work_slot(&host.settings.state_dir)?;
    let gate = args.gate;
    let manifest = host.manifest(&gate.slug, gate.manifest.as_deref())?;
    let spec = host.spec(&gate.slug, &manifest, gate.agent_netns.as_deref())?;
    match block_on(host.reload(&spec))? {
        Reloaded::Unchanged(plan) => {
            render::warnings(&manifest, &plan);
            println!("gate {} unchanged: it already runs this manifest", plan.slug);
        }
        Reloaded::Changed { plan, changes } => {
            render::warnings(&manifest, &plan);
            println!("gate {} reloaded: {} change(s)", plan.slug, changes.len());
            for change in &changes {
                println!("  {change}");
            }
        }
    }
    Ok(Outcome::Ok)
}
