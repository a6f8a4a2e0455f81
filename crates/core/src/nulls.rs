//! `null` in a request body means "unset": the field's default applies, as
//! when it is left out. Generated clients send an unset optional field as
//! `null`; serde's `#[serde(default)]` alone would refuse it.

use serde::{Deserialize, Deserializer};

/// Reads a field whose `null` is its default: use with
/// `#[serde(default, deserialize_with = "null_as_default")]`.
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "null_as_default")]
        urgent: bool,
        #[serde(default, deserialize_with = "null_as_default")]
        names: Vec<String>,
    }

    #[test]
    fn null_and_absent_read_as_the_default_and_values_as_given() {
        for text in [r#"{}"#, r#"{"urgent":null,"names":null}"#] {
            let body: Body = serde_json::from_str(text).unwrap();
            assert!(!body.urgent && body.names.is_empty(), "{text}");
        }
        let body: Body = serde_json::from_str(r#"{"urgent":true,"names":["a"]}"#).unwrap();
        assert!(body.urgent);
        assert_eq!(body.names, ["a"]);
        assert!(serde_json::from_str::<Body>(r#"{"urgent":"yes"}"#).is_err());
    }
}
