//! `gatectl list [--json]`: one line per gate on this host.

use clap::Args;

use super::json::{self, Kind};
use super::{block_on, output, render, Outcome};
use crate::error::Result;
use crate::gate::Host;
use crate::systemd::Systemd;

/// Arguments of `list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `list`.
pub fn run(args: ListArgs) -> Result<Outcome> {
    let host = Host::load()?;
    let statuses = block_on(async {
        let systemd = Systemd::connect().await?;
        host.list(&systemd).await
    })?;
    if args.json {
        json::print(Kind::Gates, &output::Gates { gates: &statuses })?;
    } else {
        print!("{}", render::list_table(&statuses));
    }
    Ok(Outcome::Ok)
}
