//! The JSON Schema of the plugin configuration, generated from the types it is read into, with
//! their bounds and defaults. `make schema` writes it to schema/negcache.schema.json.

use super::raw;

/// The schema, pretty-printed, as committed.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(raw::Config);
    format!("{:#}\n", schema.as_value())
}
