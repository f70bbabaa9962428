//! The `gatectl` binary: parse arguments, run the subcommand, map the outcome
//! to an exit code (0 ok, 1 error, 2 usage, 3 gate not running).

use std::process::ExitCode;

fn main() -> ExitCode {
    gatectl::cli::main()
}
