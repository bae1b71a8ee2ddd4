//! Reading the configuration JSON into the `raw` types, with what the derived deserializers
//! cannot say by themselves:
//! - objects only: serde_json also fills a struct from an array, field by field, which no one
//!   means and the schema does not allow;
//! - whole numbers called that, not `u64`;
//! - a map keyed by data that refuses a repeated key (serde_json keeps the last one silently);
//! - a credential source naming exactly one kind (the derived externally tagged enum reports
//!   a second key as a JSON syntax error, "expected value");
//! - errors as `ConfigError`: the field's path from `serde_path_to_error`, and serde's reason
//!   without the line and column (the path says where).

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor,
};
use serde_path_to_error::{Path, Segment, Track};

use super::raw::{self, Credential};
use super::ConfigError;

/// Reads the document, which must be one JSON object.
pub fn from_json(json: &[u8]) -> Result<raw::Config, ConfigError> {
    let mut reader = serde_json::Deserializer::from_slice(json);
    let mut track = Track::new();
    let config = ObjectOnly::<raw::Config>(PhantomData, "a JSON object")
        .deserialize(serde_path_to_error::Deserializer::new(
            &mut reader,
            &mut track,
        ))
        .and_then(|config| reader.end().map(|()| config));
    config.map_err(|error| match error.classify() {
        serde_json::error::Category::Data => {
            let reason = error.to_string();
            let position = format!(" at line {} column {}", error.line(), error.column());
            let reason = reason.strip_suffix(&position).unwrap_or(&reason);
            ConfigError::new(field_path(&track.path()), reason)
        }
        _ => ConfigError::new("", format!("not valid JSON: {error}")),
    })
}

/// The path as the configuration names a field: `negative_cache.statuses.401.key[0]`.
fn field_path(path: &Path) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Unknown => text.push_str(".?"),
        }
    }
    text
}

/// `T` (a derived struct) from a JSON object and nothing else; `expecting` names what it is.
struct ObjectOnly<T>(PhantomData<T>, &'static str);

impl<T> Clone for ObjectOnly<T> {
    fn clone(&self) -> Self {
        ObjectOnly(PhantomData, self.1)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.1)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for ObjectOnly<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_map(self)
    }
}

fn an_object<T>() -> ObjectOnly<T> {
    ObjectOnly(PhantomData, "an object")
}

/// For `deserialize_with`: a section, which must be an object (`null` too is refused: leaving
/// the section out gives its defaults).
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    an_object().deserialize(d)
}

/// For `deserialize_with`: an object, or `null` for `None` (turned off).
pub fn nullable_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    d.deserialize_option(NullOr(an_object::<T>()))
}

/// For `deserialize_with` on a field whose absence means something else than `null`: present,
/// it is `Some(Some(object))` or `Some(None)` for `null`; absent, the field's default applies.
pub fn given_nullable_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    nullable_object(d).map(Some)
}

/// For `deserialize_with`: a list of objects.
pub fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(ListOf(an_object::<T>()))
}

/// For `deserialize_with`: a whole number.
pub fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Whole.deserialize(d)
}

/// For `deserialize_with`: a list of whole numbers.
pub fn whole_numbers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    d.deserialize_seq(ListOf(Whole))
}

#[derive(Clone, Copy)]
struct Whole;

impl Visitor<'_> for Whole {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
        Ok(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
        u64::try_from(value).map_err(|_| E::invalid_value(Unexpected::Signed(value), &self))
    }
}

impl<'de> DeserializeSeed<'de> for Whole {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_u64(self)
    }
}

/// `null` for `None`, else what `S` reads.
struct NullOr<S>(S);

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for NullOr<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// A list whose elements `S` reads.
struct ListOf<S>(S);

impl<'de, S: DeserializeSeed<'de> + Clone> Visitor<'de> for ListOf<S> {
    type Value = Vec<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(self.0.clone())? {
            items.push(item);
        }
        Ok(items)
    }
}

/// An object keyed by data (statuses), in the document's order: each value an object, a key
/// given twice refused, `null` read as empty.
#[derive(Debug, Clone, Default)]
pub struct Keyed<T>(pub Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Keyed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_option(KeyedVisitor(PhantomData))
    }
}

struct KeyedVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for KeyedVisitor<T> {
    type Value = Keyed<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Keyed<T>, E> {
        Ok(Keyed(Vec::new()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Keyed<T>, E> {
        Ok(Keyed(Vec::new()))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Keyed<T>, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keyed<T>, A::Error> {
        let mut entries: Vec<(String, T)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if entries.iter().any(|(seen, _)| *seen == key) {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            let value = map.next_value_seed(an_object::<T>())?;
            entries.push((key, value));
        }
        Ok(Keyed(entries))
    }
}

/// The kinds of credential source, as the keys that name them.
#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum CredentialKind {
    Header,
    Cookie,
    Query,
    PathSegment,
}

const ONE_CREDENTIAL_KIND: &str = "must name exactly one of header, cookie, query, path_segment";

impl<'de> Deserialize<'de> for Credential {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(CredentialVisitor)
    }
}

struct CredentialVisitor;

impl<'de> Visitor<'de> for CredentialVisitor {
    type Value = Credential;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object naming one of header, cookie, query, path_segment")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Credential, A::Error> {
        let Some(kind) = map.next_key::<CredentialKind>()? else {
            return Err(de::Error::custom(ONE_CREDENTIAL_KIND));
        };
        let credential = match kind {
            CredentialKind::Header => Credential::Header(map.next_value()?),
            CredentialKind::Cookie => Credential::Cookie(map.next_value()?),
            CredentialKind::Query => Credential::Query(map.next_value()?),
            CredentialKind::PathSegment => Credential::PathSegment(map.next_value_seed(Whole)?),
        };
        if map.next_key::<CredentialKind>()?.is_some() {
            return Err(de::Error::custom(ONE_CREDENTIAL_KIND));
        }
        Ok(credential)
    }
}

#[cfg(feature = "schema")]
mod schema {
    use super::Keyed;
    use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
    use serde::ser::{Serialize, SerializeMap, Serializer};
    use std::borrow::Cow;

    impl<T: JsonSchema> JsonSchema for Keyed<T> {
        fn inline_schema() -> bool {
            true
        }

        fn schema_name() -> Cow<'static, str> {
            format!("Keyed_{}", T::schema_name()).into()
        }

        fn json_schema(generator: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "type": ["object", "null"],
                "additionalProperties": generator.subschema_for::<T>(),
            })
        }
    }

    impl<T: Serialize> Serialize for Keyed<T> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            for (key, value) in &self.0 {
                map.serialize_entry(key, value)?;
            }
            map.end()
        }
    }
}
