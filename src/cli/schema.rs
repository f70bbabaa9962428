//! `gatectl schema [<kind>]`: the JSON Schema of one kind of `--json`
//! output, or the list of kinds.

use clap::Args;

use super::json::Kind;
use super::Outcome;
use crate::error::{Error, Result};

/// Arguments of `schema`.
#[derive(Args, Debug)]
pub struct SchemaArgs {
    /// The kind of output; lists the kinds when omitted.
    #[arg(value_enum)]
    pub kind: Option<Kind>,
}

/// Runs `schema`.
pub fn run(args: SchemaArgs) -> Result<Outcome> {
    match args.kind {
        Some(kind) => {
            let text = serde_json::to_string_pretty(&kind.json_schema())
                .map_err(|e| Error::failed(format!("cannot encode JSON: {e}")))?;
            println!("{text}");
        }
        None => print!("{}", kinds()),
    }
    Ok(Outcome::Ok)
}

/// One line per kind: its name, its `schema` value, the commands printing it.
fn kinds() -> String {
    Kind::ALL
        .iter()
        .map(|kind| format!("{:<7} {:<17} {}\n", name(*kind), kind.id(), kind.commands()))
        .collect()
}

/// The name `gatectl schema` takes for `kind`.
fn name(kind: Kind) -> String {
    clap::ValueEnum::to_possible_value(&kind)
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_listed_with_their_schema_and_commands() {
        assert_eq!(
            kinds(),
            "status  gatectl.status/1  status SLUG --json\n\
             gates   gatectl.gates/1   status --json, list --json\n\
             plan    gatectl.plan/1    plan SLUG --json\n\
             check   gatectl.check/1   check --json\n\
             prune   gatectl.prune/1   prune [--dry-run] --json\n\
             log     gatectl.log/1     log [SLUG] [--follow] --json\n\
             error   gatectl.error/1   any --json command that fails\n"
        );
    }
}
