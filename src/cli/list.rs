//! `gatectl list [--json]`: one line per gate on this host.

use clap::Args;

use super::{block_on, render, Outcome};
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
        render::json_list(render::Schema::Gates, "gates", &statuses)?;
    } else {
        print!("{}", render::list_table(&statuses));
    }
    Ok(Outcome::Ok)
}
