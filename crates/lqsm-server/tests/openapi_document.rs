//! docs/openapi.json is complete enough to generate a typed client in another
//! language: every JSON response is a named schema, no object hides unnamed inside
//! another, and every field that is an enum in Rust lists its values. (That the file is
//! what the server serves is checked by the server's `checked_in` unit test.)
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_api as api;
use serde_json::Value;
use std::path::Path;

fn document() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn is_named(schema: &Value) -> bool {
    schema.get("$ref").is_some()
        || (schema["type"] == "array" && schema["items"].get("$ref").is_some())
}

/// Every place under `schema` where an object with its own properties is written
/// inline without a `title` (a generator would invent a name for it). Objects inside
/// an `allOf` that also references a named schema extend that schema, so they count
/// as part of it.
fn unnamed_objects(at: &str, schema: &Value, top: bool, out: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        return;
    };
    if !top && map.contains_key("properties") && !map.contains_key("title") {
        out.push(at.to_owned());
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            unnamed_objects(&format!("{at}.{name}"), prop, false, out);
        }
    }
    for key in ["items", "additionalProperties", "propertyNames"] {
        if let Some(inner) = map.get(key) {
            unnamed_objects(&format!("{at}[{key}]"), inner, false, out);
        }
    }
    for key in ["oneOf", "anyOf"] {
        for (i, inner) in map
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            unnamed_objects(&format!("{at}.{key}[{i}]"), inner, false, out);
        }
    }
    if let Some(parts) = map.get("allOf").and_then(Value::as_array) {
        let extends_a_named_schema = parts.iter().any(|p| p.get("$ref").is_some());
        for (i, inner) in parts.iter().enumerate() {
            // An extension of a named schema belongs to the schema being defined.
            unnamed_objects(
                &format!("{at}.allOf[{i}]"),
                inner,
                top && extends_a_named_schema,
                out,
            );
        }
    }
}

/// The enum values a property schema allows, following `$ref` and `oneOf` (an
/// optional enum is `oneOf: [null, $ref]`).
fn enum_values(doc: &Value, schema: &Value) -> Option<Vec<String>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        );
    }
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.strip_prefix("#/components/schemas/")?;
        return enum_values(doc, &doc["components"]["schemas"][name]);
    }
    schema
        .get("oneOf")
        .and_then(Value::as_array)?
        .iter()
        .find_map(|s| enum_values(doc, s))
}

fn wire_names<T: Copy + std::fmt::Display>(all: &[T]) -> Vec<String> {
    all.iter().map(ToString::to_string).collect()
}

#[test]
fn every_json_response_is_a_named_schema() {
    let doc = document();
    let mut inline = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let Some(responses) = operation.get("responses").and_then(Value::as_object) else {
                continue;
            };
            for (status, response) in responses {
                let Some(content) = response.get("content").and_then(Value::as_object) else {
                    continue; // No body (204).
                };
                for (media, body) in content {
                    if media == "application/json" && !is_named(&body["schema"]) {
                        inline.push(format!("{method} {path} {status}"));
                    }
                }
            }
        }
    }
    assert!(
        inline.is_empty(),
        "responses without a named schema: {inline:#?}"
    );
}

#[test]
fn no_schema_hides_an_unnamed_object() {
    let doc = document();
    let mut found = Vec::new();
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        unnamed_objects(name, schema, true, &mut found);
    }
    assert!(
        found.is_empty(),
        "inline objects without a name (give them a type or a `title`): {found:#?}"
    );
}

#[test]
fn fields_that_are_enums_in_rust_list_their_values() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let property = |schema: &str, field: &str| schemas[schema]["properties"][field].clone();
    let cases = [
        ("JobView", "state", wire_names(api::JobState::ALL)),
        (
            "AttemptView",
            "outcome",
            wire_names(api::AttemptOutcome::ALL),
        ),
        ("WorkerView", "state", wire_names(api::WorkerState::ALL)),
        ("QueueView", "state", wire_names(api::QueueState::ALL)),
        ("KillOrder", "reason", wire_names(api::KillReason::ALL)),
        (
            "RefusedReport",
            "reason",
            wire_names(api::RefusalReason::ALL),
        ),
        ("ErrorDetail", "code", wire_names(api::ErrorCode::ALL)),
    ];
    for (schema, field, expected) in cases {
        let found = enum_values(&doc, &property(schema, field));
        assert_eq!(found, Some(expected), "{schema}.{field}");
    }
    let keys =
        |field: &str| schemas["ClusterSummary"]["properties"][field]["propertyNames"].clone();
    assert_eq!(
        enum_values(&doc, &keys("jobs")),
        Some(wire_names(api::JobState::ALL)),
        "ClusterSummary.jobs keys"
    );
    assert_eq!(
        enum_values(&doc, &keys("workers")),
        Some(wire_names(api::WorkerState::ALL)),
        "ClusterSummary.workers keys"
    );
}

#[test]
fn no_string_field_named_like_a_closed_set_is_left_as_free_text() {
    // New fields named like these must be enums too; `reason` is free text on
    // JobView (the failure's message), so only the closed-set names are checked.
    let doc = document();
    let mut free = Vec::new();
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            continue;
        };
        for field in ["state", "outcome", "code"] {
            if let Some(prop) = props.get(field)
                && enum_values(&doc, prop).is_none()
            {
                free.push(format!("{name}.{field}"));
            }
        }
    }
    assert!(
        free.is_empty(),
        "closed sets written as free strings: {free:#?}"
    );
}
