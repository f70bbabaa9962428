//! Validation of gatectl's `--json` outputs against the JSON Schemas
//! committed under `schema/`, so that an output and its published schema
//! cannot drift apart: [`super::gatectl::gatectl`] validates every `--json`
//! output it runs.

use std::path::Path;

/// Panics unless `stdout` is one JSON object whose `schema` names a kind
/// with a committed schema (`gatectl.status/1` → `schema/gatectl.status-1.json`),
/// and the object is valid under it. `what` names the command for the
/// message.
pub fn validate(what: &str, stdout: &str) {
    let instance: serde_json::Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not one JSON document ({e}):\n{stdout}"));
    let id = instance["schema"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: the output has no \"schema\" field:\n{stdout}"));
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schema")
        .join(format!("{}.json", id.replace('/', "-")));
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{what}: no schema for {id} at {}: {e}", file.display()));
    let schema: serde_json::Value = serde_json::from_str(&text).expect("a committed schema is JSON");
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{}: not a valid JSON Schema: {e}", file.display()));
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: the output does not match {}:\n{}\noutput:\n{stdout}",
        file.display(),
        errors.join("\n")
    );
}
