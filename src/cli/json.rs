//! The JSON contract: every `--json` output is one object whose `schema`
//! field names its kind and version (`gatectl.status/1`), and each kind has
//! a JSON Schema (draft 2020-12), generated from the Rust types that print
//! it, committed under `schema/` and shipped in /usr/share/gatectl/schema/.
//!
//! Versioning: adding a field keeps the version; removing or renaming one,
//! or changing its type or meaning, bumps it. See docs/json.md.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};

use super::output;
use crate::error::{Error, Result};
use crate::gate::GateStatus;

/// The kinds of JSON output. A program reading gatectl's `--json` checks
/// `schema` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// One gate: `status SLUG --json`.
    Status,
    /// Every gate, under `gates`: `status --json`, `list --json`.
    Gates,
    /// A dry run of start: `plan SLUG --json`.
    Plan,
    /// The host's checks, under `findings`: `check --json`.
    Check,
    /// What prune removed (or would remove), under `leftovers`: `prune --json`.
    Prune,
    /// The gates' records from the journal, under `events`: `log --json`.
    Log,
    /// A failed command under `--json`.
    Error,
}

impl Kind {
    /// Every kind, in the order `gatectl schema` lists them.
    pub const ALL: [Kind; 7] = [
        Kind::Status,
        Kind::Gates,
        Kind::Plan,
        Kind::Check,
        Kind::Prune,
        Kind::Log,
        Kind::Error,
    ];

    /// The value of the output's `schema` field, e.g. `gatectl.status/1`.
    pub fn id(self) -> &'static str {
        match self {
            Kind::Status => "gatectl.status/1",
            Kind::Gates => "gatectl.gates/1",
            Kind::Plan => "gatectl.plan/1",
            Kind::Check => "gatectl.check/1",
            Kind::Prune => "gatectl.prune/1",
            Kind::Log => "gatectl.log/1",
            Kind::Error => "gatectl.error/1",
        }
    }

    /// The file of the kind's JSON Schema: its id with `/` as `-`, then
    /// `.json` (`gatectl.status-1.json`).
    pub fn file_name(self) -> String {
        format!("{}.json", self.id().replace('/', "-"))
    }

    /// The commands whose `--json` prints this kind.
    pub fn commands(self) -> &'static str {
        match self {
            Kind::Status => "status SLUG --json",
            Kind::Gates => "status --json, list --json",
            Kind::Plan => "plan SLUG --json",
            Kind::Check => "check --json",
            Kind::Prune => "prune [--dry-run] --json",
            Kind::Log => "log [SLUG] [--follow] --json",
            Kind::Error => "any --json command that fails",
        }
    }

    /// The kind's JSON Schema, as `gatectl schema` prints it.
    pub fn json_schema(self) -> Value {
        match self {
            Kind::Status => schema_of::<GateStatus>(self),
            Kind::Gates => schema_of::<output::Gates<'static>>(self),
            Kind::Plan => schema_of::<output::Plan<'static>>(self),
            Kind::Check => schema_of::<output::Findings<'static>>(self),
            Kind::Prune => schema_of::<output::Leftovers<'static>>(self),
            Kind::Log => schema_of::<output::Events<'static>>(self),
            Kind::Error => schema_of::<output::ErrorOutput>(self),
        }
    }
}

/// The schema of `T` as output `kind`: titled with the kind's id, with the
/// `schema` field first, and every field required (gatectl always prints
/// every field, `null` when it has no value).
fn schema_of<T: JsonSchema>(kind: Kind) -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    require_every_field(&mut schema);
    let root = schema.as_object_mut().expect("a struct's schema is an object");
    root.insert("title".into(), json!(kind.id()));
    let mut properties = serde_json::Map::new();
    properties.insert(
        "schema".into(),
        json!({
            "description": "The kind and version of this output. Adding a field keeps the version; removing or \
                            renaming one bumps it.",
            "const": kind.id()
        }),
    );
    if let Some(Value::Object(fields)) = root.remove("properties") {
        properties.extend(fields);
    }
    root.insert("properties".into(), Value::Object(properties));
    if let Some(Value::Array(required)) = root.get_mut("required") {
        required.insert(0, json!("schema"));
    }
    schema
}

/// Lists every property of every object schema in `value` as required.
fn require_every_field(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get("properties") {
                let names: Vec<Value> = properties.keys().map(|k| json!(k)).collect();
                map.insert("required".into(), Value::Array(names));
            }
            map.values_mut().for_each(require_every_field);
        }
        Value::Array(items) => items.iter_mut().for_each(require_every_field),
        _ => {}
    }
}

/// A JSON output: its `schema`, then the fields of `body` (an object).
#[derive(Serialize)]
struct Versioned<'a, T: Serialize> {
    schema: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// `body` as output `kind`: pretty JSON, `schema` first.
pub fn to_text(kind: Kind, body: &impl Serialize) -> Result<String> {
    let versioned = Versioned {
        schema: kind.id(),
        body,
    };
    serde_json::to_string_pretty(&versioned).map_err(|e| Error::failed(format!("cannot encode JSON: {e}")))
}

/// `body` as output `kind` on one line (for a stream of objects, as `log
/// --follow --json` prints them).
pub fn to_line(kind: Kind, body: &impl Serialize) -> Result<String> {
    let versioned = Versioned {
        schema: kind.id(),
        body,
    };
    serde_json::to_string(&versioned).map_err(|e| Error::failed(format!("cannot encode JSON: {e}")))
}

/// Prints `body` as output `kind` on stdout.
pub fn print(kind: Kind, body: &impl Serialize) -> Result<()> {
    println!("{}", to_text(kind, body)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_json_output_starts_with_its_schema() {
        let gates = output::Gates { gates: &[] };
        assert_eq!(
            to_text(Kind::Gates, &gates).unwrap(),
            "{\n  \"schema\": \"gatectl.gates/1\",\n  \"gates\": []\n}"
        );
    }

    /// The schemas under `schema/` are the ones the types generate: a
    /// change to an output type that is not also committed there fails
    /// here. To update them: `cargo run -- schema KIND > schema/FILE`.
    #[test]
    fn committed_schemas_are_the_generated_ones() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut want: Vec<String> = Kind::ALL.iter().map(|k| k.file_name()).collect();
        want.sort();
        assert_eq!(files, want, "one file per kind in {}", dir.display());
        for kind in Kind::ALL {
            let committed = std::fs::read_to_string(dir.join(kind.file_name())).unwrap();
            let generated = serde_json::to_string_pretty(&kind.json_schema()).unwrap() + "\n";
            assert!(
                committed == generated,
                "schema/{} differs from what the types generate; if the change is meant, run \
                 `cargo run -- schema {} > schema/{}` (and bump the version for a removal or rename)",
                kind.file_name(),
                format!("{kind:?}").to_lowercase(),
                kind.file_name()
            );
        }
    }

    #[test]
    fn every_field_is_documented_and_required() {
        fn walk(value: &Value, path: &str) {
            if let Some(Value::Object(properties)) = value.get("properties") {
                for (name, field) in properties {
                    assert!(
                        field.get("description").is_some(),
                        "{path}.{name} has no description: {field}"
                    );
                }
                let required = value["required"].as_array().unwrap();
                assert_eq!(required.len(), properties.len(), "{path}");
            }
            if let Value::Object(map) = value {
                for (key, child) in map {
                    walk(child, &format!("{path}/{key}"));
                }
            }
        }
        for kind in Kind::ALL {
            walk(&kind.json_schema(), kind.id());
        }
    }
}
