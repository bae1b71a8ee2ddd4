//! Prints the JSON Schema of the plugin configuration (`make schema`).

fn main() {
    print!("{}", negcache::config::schema_json());
}
