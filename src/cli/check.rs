//! `gatectl check [--json]`: whether this host can run gates, one line per
//! check; exits 1 if any check fails.

use clap::Args;

use super::{block_on, render, Outcome};
use crate::check::{check_host, Verdict};
use crate::error::{Error, Result};

/// Arguments of `check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `check`.
pub fn run(args: CheckArgs) -> Result<Outcome> {
    let findings = block_on(async { Ok(check_host().await) })?;
    if args.json {
        render::json_list(render::Schema::Check, "findings", &findings)?;
    } else {
        print!("{}", render::check_table(&findings));
    }
    let failed = findings.iter().filter(|f| f.verdict == Verdict::Fail).count();
    if failed > 0 {
        return Err(Error::failed(format!(
            "{failed} check(s) failed; each names its fix above"
        )));
    }
    Ok(Outcome::Ok)
}
