//! JSON the API carries without looking inside: function arguments travel from the
//! submitter to the worker as the text the submitter sent, checked once to be JSON,
//! never parsed into a tree and written out again on the way.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// A JSON value kept as its text (any JSON: an object, an array, a number, `null`...).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// JSON `null`.
    pub fn null() -> Self {
        Self::from_value(&serde_json::Value::Null)
    }

    /// The compact text of `value`.
    pub fn from_value(value: &serde_json::Value) -> Self {
        // A `Value` always serialises (its map keys are strings).
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => Self(raw),
            Err(_) => Self::null(),
        }
    }

    /// Checks that `text` is JSON and keeps it as it is.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.to_owned()).map(Self)
    }

    /// Text already checked to be JSON (by a deserialiser or [`RawJson::parse`]).
    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Self(raw)
    }

    /// The checked text, to carry on without parsing it.
    pub fn into_raw(self) -> Box<RawValue> {
        self.0
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The value, parsed (for a handler that works on a tree).
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl Default for RawJson {
    fn default() -> Self {
        Self::null()
    }
}

impl From<serde_json::Value> for RawJson {
    fn from(value: serde_json::Value) -> Self {
        Self::from_value(&value)
    }
}

/// Equal when the texts are: `{"a":1}` and `{ "a": 1 }` differ, as they do on the wire.
impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_keep_the_text_they_arrived_as() {
        let text = r#"{"b": 1, "a": [1.50, "x"]}"#;
        let raw: RawJson = serde_json::from_str(text).expect("json");
        assert_eq!(raw.as_str(), text);
        #[derive(Serialize)]
        struct Carrier<'a> {
            args: &'a RawJson,
        }
        let out = serde_json::to_string(&Carrier { args: &raw }).expect("out");
        assert_eq!(out, format!(r#"{{"args":{text}}}"#));
        assert_eq!(
            raw.to_value().expect("parses"),
            serde_json::json!({"a": [1.5, "x"], "b": 1})
        );
        assert!(RawJson::parse("{not json").is_err());
        assert_eq!(RawJson::default().as_str(), "null");
    }
}
