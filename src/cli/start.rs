//! `gatectl start <slug>`: bring up an agent's gate.

use clap::Args;

use super::{block_on, render, GateArgs, Outcome};
use crate::error::Result;
use crate::gate::start::Started;
use crate::gate::Host;
use crate::lock;
use crate::timings::Timings;

/// Arguments of `start`.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// The gate and its manifest.
    #[command(flatten)]
    pub gate: GateArgs,
    /// Print how long each step took (on stderr).
    #[arg(long)]
    pub timings: bool,
}

/// Runs `start`.
pub fn run(args: StartArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let mut timings = Timings::default();
    let _slot = lock::take_work_slot(&host.settings.state_dir)?;
    timings.mark("wait for a work slot");
    let gate = args.gate;
    let manifest = host.manifest(&gate.slug, gate.manifest.as_deref())?;
    let spec = host.spec(&gate.slug, &manifest, gate.agent_netns.as_deref())?;
    timings.mark("read the manifest, resolve and check the upstreams");
    let (plan, how) = match block_on(host.start(&spec, &mut timings))? {
        Started::New(plan) => (plan, "running"),
        Started::Unchanged(plan) => (plan, "already running, unchanged"),
    };
    if args.timings {
        eprint!("{}", timings.report());
    }
    render::warnings(&manifest, &plan);
    println!(
        "gate {} {how}: {} upstream(s) on {} ports {}-{}; `gatectl ssh-config {}` prints the agent's ssh config",
        plan.slug,
        plan.upstreams.len(),
        plan.gate_internal.address,
        plan.upstreams.first().map_or(0, |u| u.listen_port),
        plan.upstreams.last().map_or(0, |u| u.listen_port),
        plan.slug
    );
    Ok(Outcome::Ok)
}
