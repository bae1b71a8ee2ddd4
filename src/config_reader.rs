//! Reading the configuration JSON field by field, so that every error names the path of its
//! field (`negative_cache.capacity: ...`).

use crate::config::ConfigError;
use crate::json::Json as Value;

/// A JSON object at a known path, whose fields are read with their defaults.
pub struct Object<'a> {
    path: String,
    map: &'a [(String, Value)],
}

impl<'a> Object<'a> {
    /// `value` at `path` must be an object whose keys are all in `fields`.
    pub fn new(path: String, value: &'a Value, fields: &[&str]) -> Result<Object<'a>, ConfigError> {
        let Value::Object(map) = value else {
            return Err(invalid_type(path, value, "an object"));
        };
        if let Some((unknown, _)) = map.iter().find(|(key, _)| !fields.contains(&key.as_str())) {
            let expected: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
            return Err(ConfigError {
                field: join(&path, unknown),
                reason: format!(
                    "unknown field `{unknown}`, expected one of {}",
                    expected.join(", ")
                ),
            });
        }
        Ok(Object { path, map })
    }

    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The field's value; `None` when absent (a JSON `null` is returned as is).
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(invalid_type(self.path_of(key), other, "a boolean")),
        }
    }

    pub fn u64(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(value) => unsigned(self.path_of(key), value),
        }
    }

    pub fn u32(&self, key: &str, default: u32) -> Result<u32, ConfigError> {
        let value = self.u64(key, u64::from(default))?;
        u32::try_from(value).map_err(|_| ConfigError {
            field: self.path_of(key),
            reason: format!("must be at most {}, got {value}", u32::MAX),
        })
    }

    /// A string, or `None` when absent or `null`.
    pub fn optional_str(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(invalid_type(self.path_of(key), other, "a string")),
        }
    }

    /// An array's elements with their paths, or `None` when absent.
    pub fn array(&self, key: &str) -> Result<Option<Vec<(String, &'a Value)>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => elements(self.path_of(key), value).map(Some),
        }
    }

    /// A list of strings, or `None` when absent.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>, ConfigError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .into_iter()
            .map(|(path, value)| string(path, value))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// The object at `key`: absent → `Absent`, `null` → `Null`, else validated against `fields`.
    pub fn object(&self, key: &str, fields: &[&str]) -> Result<Nested<'a>, ConfigError> {
        match self.get(key) {
            None => Ok(Nested::Absent),
            Some(Value::Null) => Ok(Nested::Null),
            Some(value) => Object::new(self.path_of(key), value, fields).map(Nested::Present),
        }
    }

    /// Every field, in the document's order, for maps keyed by data (like `statuses`).
    pub fn entries(&self) -> impl Iterator<Item = (String, &'a String, &'a Value)> + '_ {
        self.map
            .iter()
            .map(move |(key, value)| (join(&self.path, key), key, value))
    }
}

pub enum Nested<'a> {
    Absent,
    Null,
    Present(Object<'a>),
}

/// The elements of an array at `path`, each with its own path (`path[3]`).
pub fn elements(path: String, value: &Value) -> Result<Vec<(String, &Value)>, ConfigError> {
    let Value::Array(items) = value else {
        return Err(invalid_type(path, value, "a list"));
    };
    Ok(items
        .iter()
        .enumerate()
        .map(|(index, item)| (format!("{path}[{index}]"), item))
        .collect())
}

pub fn string(path: String, value: &Value) -> Result<&str, ConfigError> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(invalid_type(path, other, "a string")),
    }
}

pub fn unsigned(path: String, value: &Value) -> Result<u64, ConfigError> {
    match value {
        Value::Unsigned(number) => Ok(*number),
        Value::OtherNumber => Err(ConfigError {
            field: path,
            reason: "must be a whole number of at least 0".to_string(),
        }),
        other => Err(invalid_type(path, other, "an unsigned integer")),
    }
}

/// `text` in double quotes with control characters escaped, so a configuration error stays
/// one log line whatever the configuration holds.
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn invalid_type(path: String, value: &Value, expected: &str) -> ConfigError {
    let found = match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Unsigned(_) | Value::OtherNumber => "a number".to_string(),
        Value::String(text) => format!("string {}", quoted(text)),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    };
    ConfigError {
        field: path,
        reason: format!("invalid type: {found}, expected {expected}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Value {
        Value::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn fields_are_read_with_defaults_and_paths() {
        let value = json(
            r#"{"a": true, "n": 7, "s": "x", "list": ["p", "q"], "inner": {"k": 1}, "gone": null}"#,
        );
        let object = Object::new(
            "root".into(),
            &value,
            &["a", "n", "s", "list", "inner", "gone", "missing"],
        )
        .unwrap();
        assert!(object.bool("a", false).unwrap());
        assert!(object.bool("missing", true).unwrap());
        assert_eq!(object.u32("n", 0).unwrap(), 7);
        assert_eq!(object.u64("missing", 9).unwrap(), 9);
        assert_eq!(object.optional_str("s").unwrap(), Some("x"));
        assert_eq!(object.optional_str("gone").unwrap(), None);
        assert_eq!(object.strings("list").unwrap(), Some(vec!["p", "q"]));
        assert!(matches!(object.object("gone", &[]).unwrap(), Nested::Null));
        assert!(matches!(
            object.object("missing", &[]).unwrap(),
            Nested::Absent
        ));
        let Nested::Present(inner) = object.object("inner", &["k"]).unwrap() else {
            panic!("inner is an object");
        };
        assert_eq!(inner.path_of("k"), "root.inner.k");
    }

    #[test]
    fn quoting_keeps_one_line() {
        assert_eq!(quoted("a b"), "\"a b\"");
        assert_eq!(quoted("x\ny\"z\\"), "\"x\\u{a}y\\\"z\\\\\"");
    }

    #[test]
    fn errors_name_the_field_and_what_was_found() {
        let value =
            json(r#"{"n": "many", "f": 1.5, "neg": -1, "big": 5000000000, "list": "x", "b": 1}"#);
        let object = Object::new(
            String::new(),
            &value,
            &["n", "f", "neg", "big", "list", "b"],
        )
        .unwrap();
        let cases = [
            (
                object.u32("n", 0).unwrap_err(),
                "n",
                "invalid type: string \"many\", expected an unsigned integer",
            ),
            (
                object.u32("f", 0).unwrap_err(),
                "f",
                "must be a whole number",
            ),
            (
                object.u32("neg", 0).unwrap_err(),
                "neg",
                "must be a whole number",
            ),
            (
                object.u32("big", 0).unwrap_err(),
                "big",
                "must be at most 4294967295",
            ),
            (
                object.strings("list").unwrap_err(),
                "list",
                "expected a list",
            ),
            (
                object.bool("b", false).unwrap_err(),
                "b",
                "invalid type: a number, expected a boolean",
            ),
        ];
        for (error, field, reason) in cases {
            assert_eq!(error.field, field);
            assert!(error.reason.contains(reason), "{}", error.reason);
        }
        let unknown = Object::new("x".into(), &json(r#"{"y": 1}"#), &["a", "b"])
            .err()
            .unwrap();
        assert_eq!(unknown.field, "x.y");
        assert_eq!(
            unknown.reason,
            "unknown field `y`, expected one of `a`, `b`"
        );
    }
}
