//! `gatectl log [<slug>] [--follow] [--since TIME] [--json]`: the gates'
//! records from the journal: each connection (alias, upstream, bytes each
//! way, duration, how it ended) and the denied attempts.

use clap::Args;

use super::json::{self, Kind};
use super::{output, parse_slug, Outcome};
use crate::error::{Context, Result};
use crate::journal::{self, LogEvent, Query};
use crate::slug::Slug;

/// Arguments of `log`.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// The agent's slug; every gate's records when omitted.
    #[arg(value_parser = parse_slug)]
    pub slug: Option<Slug>,
    /// Keep printing records as they are written.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only records from this time on, as journalctl's --since takes it
    /// (e.g. "-1h", "today", "2026-12-07 05:00").
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Print JSON instead of text: one gatectl.log/1 object, or with
    /// --follow one per line, each with one event.
    #[arg(long)]
    pub json: bool,
}

/// Runs `log`.
pub fn run(args: LogArgs) -> Result<Outcome> {
    let query = Query {
        slug: args.slug,
        since: args.since,
        follow: args.follow,
    };
    if args.json && !args.follow {
        let mut events = Vec::new();
        journal::read(&query, |event| {
            events.push(event);
            Ok(())
        })?;
        json::print(Kind::Log, &output::Events { events: &events })?;
        return Ok(Outcome::Ok);
    }
    journal::read(&query, |event| print_event(&event, args.json))?;
    Ok(Outcome::Ok)
}

/// Prints one event as it comes: a text line, or a one-line JSON object.
fn print_event(event: &LogEvent, as_json: bool) -> Result<()> {
    use std::io::Write;
    let line = if as_json {
        json::to_line(
            Kind::Log,
            &output::Events {
                events: std::slice::from_ref(event),
            },
        )?
    } else {
        event.line()
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("writing to stdout")?;
    stdout.flush().context("writing to stdout")
}
