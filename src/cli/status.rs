//! `gatectl status [<slug>] [--json]`: the state of one gate or of all.

use clap::Args;

use super::{block_on, parse_slug, render, Outcome};
use crate::error::Result;
use crate::gate::{GateState, Host};
use crate::slug::Slug;
use crate::systemd::Systemd;

/// Arguments of `status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The agent's slug; all gates when omitted.
    #[arg(value_parser = parse_slug)]
    pub slug: Option<Slug>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `status`. Exits 3 when the gate (or any gate, without a slug) is
/// not running.
pub fn run(args: StatusArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let statuses = block_on(async {
        let systemd = Systemd::connect().await?;
        match &args.slug {
            Some(slug) => Ok(vec![host.status(&systemd, slug).await?]),
            None => host.list(&systemd).await,
        }
    })?;
    if args.json {
        match &args.slug {
            Some(_) => render::json(&statuses[0])?,
            None => render::json(&statuses)?,
        }
    } else {
        for s in &statuses {
            print!("{}", render::status_text(s));
        }
    }
    let all_running = !statuses.is_empty() && statuses.iter().all(|s| s.state == GateState::Running);
    Ok(if all_running {
        Outcome::Ok
    } else {
        Outcome::NotRunning
    })
}
