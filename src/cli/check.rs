//! `gatectl check [--json]`: whether this host can run gates, one line per
//! check; exits 1 if any check fails.

use clap::Args;

use super::json::{self, Kind};
use super::{block_on, output, render, Outcome};
use crate::check::{check_host, Verdict};
use crate::error::{Error, Result};

/// Arguments of `check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `check`: exits 1 if a check failed (under `--json`, with the
/// findings as the only output).
pub fn run(args: CheckArgs) -> Result<Outcome> {
    let findings = block_on(async { Ok(check_host().await) })?;
    let failed = findings.iter().filter(|f| f.verdict == Verdict::Fail).count();
    if args.json {
        json::print(Kind::Check, &output::Findings { findings: &findings })?;
        // The findings are the answer: a failed check is in them, not in
        // a second (error) document.
        return Ok(if failed > 0 { Outcome::Failed } else { Outcome::Ok });
    }
    print!("{}", render::check_table(&findings));
    if failed > 0 {
        return Err(Error::failed(format!(
            "{failed} check(s) failed; each names its fix above"
        )));
    }
    Ok(Outcome::Ok)
}
