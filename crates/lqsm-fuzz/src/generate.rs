//! Structured random inputs for the request targets, driven by the server's own OpenAPI
//! document: a route and method it serves, its path and query parameters, and a body
//! built from the request schema (mostly valid, with a value of the wrong kind, a field
//! left out or an unknown one added now and then, so that both acceptance and every
//! refusal are reached). Kept in step with the API by construction: a new endpoint or
//! field is generated as soon as the document lists it.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Value, json};
use std::sync::OnceLock;
use utoipa::OpenApi;

/// One operation of the API.
struct Operation {
    method: &'static str,
    path: String,
    parameters: Vec<(String, String, Value)>,
    body: Option<Value>,
}

struct Document {
    schemas: Map<String, Value>,
    operations: Vec<Operation>,
    /// Every property name in the document, for unknown or misplaced fields.
    names: Vec<String>,
}

fn document() -> &'static Document {
    static DOCUMENT: OnceLock<Document> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let doc =
            serde_json::to_value(lqsm_server::jobserver::ApiDoc::openapi()).unwrap_or_default();
        let schemas = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut operations = Vec::new();
        for (path, item) in doc
            .get("paths")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            for method in ["get", "post", "patch", "delete", "put"] {
                let Some(op) = item.get(method) else { continue };
                let parameters = op
                    .get("parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        Some((
                            p.get("name")?.as_str()?.to_owned(),
                            p.get("in")?.as_str()?.to_owned(),
                            p.get("schema").cloned().unwrap_or(Value::Null),
                        ))
                    })
                    .collect();
                let body = op
                    .pointer("/requestBody/content/application~1json/schema")
                    .cloned();
                operations.push(Operation {
                    method: match method {
                        "get" => "GET",
                        "post" => "POST",
                        "patch" => "PATCH",
                        "delete" => "DELETE",
                        _ => "PUT",
                    },
                    path: path.clone(),
                    parameters,
                    body,
                });
            }
        }
        let mut names = Vec::new();
        collect_names(&doc, &mut names);
        names.sort();
        names.dedup();
        Document {
            schemas,
            operations,
            names,
        }
    })
}

fn collect_names(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                into.extend(props.keys().cloned());
            }
            for v in map.values() {
                collect_names(v, into);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_names(v, into)),
        _ => {}
    }
}

/// Strings the API gives meaning to: queue paths good and bad, handler names, ids,
/// cron lines, time zones, resource amounts, states.
const WORDS: &[&str] = &[
    "root",
    "root.a",
    "root.a.x",
    "root.b",
    "root.",
    ".root",
    "root..a",
    "root.a.x.y.z",
    "a",
    "",
    " ",
    "*",
    "root.*",
    "lqsm.noop",
    "tasks.add",
    "01900000-0000-7000-8000-000000000000",
    "0190a5c4-1c2d-7e3f-9a0b-1c2d3e4f5a6b",
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    "00000000-0000-0000-0000-000000000000",
    "not-a-uuid",
    "* * * * *",
    "0 0 * * *",
    "*/5 * * * * *",
    "61 * * * *",
    "UTC",
    "Europe/Paris",
    "Mars/Olympus",
    "1",
    "0.5",
    "1500m",
    "2Gi",
    "-1",
    "NaN",
    "pending",
    "running",
    "succeeded",
    "oldest",
    "newest",
    "all_succeeded",
    "priority_fifo",
    "fair_share",
    "best_fit",
    "accept_all",
    "cpu",
    "memory_mib",
    "gpu",
    "second",
    "minute",
    "hour",
    "\u{0}",
    "é\u{301}",
    "\u{202e}",
];

const INTEGERS: &[i128] = &[
    0,
    1,
    2,
    -1,
    3,
    7,
    60,
    100,
    101,
    1000,
    1001,
    65_535,
    4_294_967_295,
    4_294_967_296,
    9_007_199_254_740_993,
    9_223_372_036_854_775_807,
    -9_223_372_036_854_775_808,
    18_446_744_073_709_551_615,
    18_446_744_073_709_551_616,
];

const FLOATS: &[f64] = &[
    0.0, -0.0, 0.5, 1.0, 50.0, 99.999, 100.0, 100.5, -1.0, 1e-300, 1e300,
];

/// A random input for the request target: `METHOD /uri` and a body.
pub fn request(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let doc = document();
    if doc.operations.is_empty() {
        return Ok(Vec::new());
    }
    let op = u.choose(&doc.operations)?;
    let mut method = op.method;
    if u.ratio(1, 32)? {
        method = *u.choose(&["GET", "POST", "PATCH", "DELETE", "PUT"])?;
    }
    let mut path = op.path.clone();
    let mut query = Vec::new();
    for (name, place, schema) in &op.parameters {
        match place.as_str() {
            "path" => {
                let value = path_value(u, name)?;
                path = path.replace(&format!("{{{name}}}"), &value);
            }
            "query" if u.ratio(1, 2)? => {
                let value = match value(u, schema, 3)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                query.push(format!("{}={}", escape(name), escape(&value)));
            }
            _ => {}
        }
    }
    if u.ratio(1, 16)? {
        let name = u.choose(&doc.names)?;
        query.push(format!("{}={}", escape(name), escape(u.choose(WORDS)?)));
    }
    let uri = if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let body = match &op.body {
        Some(schema) if !u.ratio(1, 32)? => {
            serde_json::to_vec(&value(u, schema, 6)?).unwrap_or_default()
        }
        _ if u.ratio(1, 4)? => serde_json::to_vec(&wild(u, 3)?).unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut input = format!("{method} {uri}\n").into_bytes();
    input.extend(mangle(u, body)?);
    Ok(input)
}

/// A random input for the type target: a wire type's name and a body built from its
/// schema.
pub fn typed_body(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let name = *u.choose(crate::api::WIRE_TYPES)?;
    let schema = json!({ "$ref": format!("#/components/schemas/{name}") });
    let body = serde_json::to_vec(&value(u, &schema, 6)?).unwrap_or_default();
    let mut input = format!("{name}\n").into_bytes();
    input.extend(mangle(u, body)?);
    Ok(input)
}

/// Now and then breaks a body's bytes: cut short, a byte changed, one doubled.
fn mangle(u: &mut Unstructured<'_>, mut body: Vec<u8>) -> Result<Vec<u8>> {
    if !body.is_empty() && u.ratio(1, 20)? {
        match u.int_in_range(0..=2u8)? {
            0 => body.truncate(u.choose_index(body.len())?),
            1 => {
                let at = u.choose_index(body.len())?;
                body[at] = u.arbitrary()?;
            }
            _ => {
                let at = u.choose_index(body.len())?;
                body.insert(at, body[at]);
            }
        }
    }
    Ok(body)
}

fn path_value(u: &mut Unstructured<'_>, name: &str) -> Result<String> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => escape(&u.arbitrary::<String>()?),
        1..=3 if name == "id" => string(u, &json!({"format": "uuid"}))?,
        1..=3 if name == "path" => escape(crate::stub::QUEUES[u.choose_index(4)?]),
        _ => escape(u.choose(WORDS)?),
    })
}

/// Percent-escapes everything but unreserved characters.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn resolve(schema: &Value) -> &Value {
    match schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => document().schemas.get(name).unwrap_or(schema),
        None => schema,
    }
}

/// A value for `schema`: usually of its shape, sometimes of another.
fn value(u: &mut Unstructured<'_>, schema: &Value, depth: u32) -> Result<Value> {
    if depth == 0 || u.ratio(1, 24)? {
        return wild(u, depth.min(2));
    }
    let schema = resolve(schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(choices)) = schema.get(key)
            && !choices.is_empty()
        {
            let choice = u.choose(choices)?;
            return value(u, choice, depth - 1);
        }
    }
    if let Some(Value::Array(parts)) = schema.get("allOf") {
        let mut merged = Map::new();
        for part in parts {
            match value(u, part, depth - 1)? {
                Value::Object(map) => merged.extend(map),
                other if parts.len() == 1 => return Ok(other),
                _ => {}
            }
        }
        return Ok(Value::Object(merged));
    }
    if let Some(Value::Array(options)) = schema.get("enum")
        && !options.is_empty()
    {
        return Ok(u.choose(options)?.clone());
    }
    let kind = match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(types)) if !types.is_empty() => {
            u.choose(types)?.as_str().unwrap_or("null").to_owned()
        }
        _ if schema.get("properties").is_some() => "object".to_owned(),
        _ => return wild(u, depth.min(2)),
    };
    Ok(match kind.as_str() {
        "object" => object(u, schema, depth)?,
        "array" => {
            let items = schema.get("items").cloned().unwrap_or(Value::Null);
            let n = u.int_in_range(0..=3u8)?;
            let mut out = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                out.push(value(u, &items, depth - 1)?);
            }
            Value::Array(out)
        }
        "string" => Value::String(string(u, schema)?),
        "integer" => integer(u)?,
        "number" => number(u)?,
        "boolean" => Value::Bool(u.arbitrary()?),
        _ => Value::Null,
    })
}

fn object(u: &mut Unstructured<'_>, schema: &Value, depth: u32) -> Result<Value> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut out = Map::new();
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, prop) in props {
            let keep = if required.contains(&name.as_str()) {
                !u.ratio(1, 24)?
            } else {
                u.ratio(1, 2)?
            };
            if keep {
                out.insert(name.clone(), value(u, prop, depth - 1)?);
            }
        }
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        for _ in 0..u.int_in_range(0..=2u8)? {
            let key = string(u, &Value::Null)?;
            out.insert(key, value(u, extra, depth - 1)?);
        }
    }
    if u.ratio(1, 24)? {
        let name = u.choose(&document().names)?.clone();
        out.insert(name, wild(u, 1)?);
    }
    Ok(Value::Object(out))
}

fn string(u: &mut Unstructured<'_>, schema: &Value) -> Result<String> {
    if schema.get("format").and_then(Value::as_str) == Some("uuid") && u.ratio(3, 4)? {
        // Mostly time-ordered ids (what the server requires of job ids), some others.
        let mut bytes: [u8; 16] = u.arbitrary()?;
        if u.ratio(3, 4)? {
            bytes[6] = 0x70 | (bytes[6] & 0x0f);
            bytes[8] = 0x80 | (bytes[8] & 0x3f);
        }
        return Ok(uuid::Uuid::from_bytes(bytes).to_string());
    }
    Ok(match u.int_in_range(0..=3u8)? {
        0 => u.arbitrary::<String>()?,
        1 => "x".repeat(usize::from(u.arbitrary::<u8>()?) * 17),
        _ => (*u.choose(WORDS)?).to_owned(),
    })
}

fn integer(u: &mut Unstructured<'_>) -> Result<Value> {
    let n = if u.ratio(1, 2)? {
        *u.choose(INTEGERS)?
    } else {
        i128::from(u.arbitrary::<i16>()?)
    };
    // Past i64 and u64, the text is all JSON can carry.
    Ok(i64::try_from(n)
        .map(Value::from)
        .or_else(|_| u64::try_from(n).map(Value::from))
        .unwrap_or_else(|_| serde_json::from_str(&n.to_string()).unwrap_or(Value::Null)))
}

fn number(u: &mut Unstructured<'_>) -> Result<Value> {
    if u.ratio(1, 3)? {
        return integer(u);
    }
    let f = if u.ratio(1, 2)? {
        *u.choose(FLOATS)?
    } else {
        f64::from(u.arbitrary::<i16>()?) / 8.0
    };
    Ok(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number))
}

/// Any JSON value, of any shape.
fn wild(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    Ok(
        match u.int_in_range(0..=if depth == 0 { 4 } else { 6u8 })? {
            0 => Value::Null,
            1 => Value::Bool(u.arbitrary()?),
            2 => integer(u)?,
            3 => number(u)?,
            4 => Value::String(string(u, &Value::Null)?),
            5 => {
                let mut out = Vec::new();
                for _ in 0..u.int_in_range(0..=3u8)? {
                    out.push(wild(u, depth - 1)?);
                }
                Value::Array(out)
            }
            _ => {
                let mut out = Map::new();
                for _ in 0..u.int_in_range(0..=3u8)? {
                    let key = u.choose(&document().names)?.clone();
                    out.insert(key, wild(u, depth - 1)?);
                }
                Value::Object(out)
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_the_operations_and_their_bodies() {
        let doc = document();
        assert!(
            doc.operations.len() > 20,
            "{} operations",
            doc.operations.len()
        );
        assert!(
            doc.operations
                .iter()
                .any(|op| op.path == "/v1/jobs" && op.method == "POST" && op.body.is_some())
        );
        assert!(doc.names.iter().any(|n| n == "queue"));
    }

    #[test]
    fn generated_requests_name_a_route_of_the_api() {
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut u = Unstructured::new(&noise);
        let input = request(&mut u).expect("enough bytes");
        let raw = crate::api::RawRequest::parse(&input);
        assert!(raw.uri.starts_with('/'), "{}", raw.uri);
    }
}
