//! The alias: the name an agent's ssh knows one upstream host by (its
//! ssh_config `Host`), from the manifest to the forwarder's routes.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest alias accepted.
pub const MAX_ALIAS_LEN: usize = 64;

/// What an alias may be, ending every message that refuses one.
const FIX: &str = "an alias is 1 to 64 characters; use only letters, digits, '.', '_' and '-', \
                   and start with a letter or digit";

/// A validated alias, `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`: no wildcards,
/// spaces or other ssh_config syntax, and no `,`, so it is safe in an
/// ssh_config `Host` line and in a `gatectl forward --route`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Alias(String);

impl schemars::JsonSchema for Alias {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Alias".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The name the agent's ssh knows an upstream by (its ssh_config Host).",
            "type": "string",
            "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
        })
    }
}

impl Alias {
    /// Validates `raw` as an alias. The error names the first problem:
    /// emptiness, a character outside the set, a leading '.', '_' or '-',
    /// then the length.
    pub fn parse(raw: &str) -> Result<Alias> {
        let refuse = |why: String| Err(Error::invalid(format!("alias {raw:?} {why}; {FIX}")));
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let Some(first) = raw.chars().next() else {
            return refuse("is empty".to_string());
        };
        if let Some(bad) = raw.chars().find(|c| !allowed(*c)) {
            return refuse(format!("contains {bad:?}"));
        }
        if !first.is_ascii_alphanumeric() {
            return refuse(format!("starts with {first:?}"));
        }
        // Every character is ASCII now: its length in bytes is its length
        // in characters.
        if raw.len() > MAX_ALIAS_LEN {
            return refuse(format!("is {} characters long", raw.len()));
        }
        Ok(Alias(raw.to_string()))
    }

    /// The alias as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

crate::slug::validated_string!(Alias);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_aliases() {
        let longest = "x".repeat(MAX_ALIAS_LEN);
        for ok in [
            "a",
            "A",
            "0",
            "github",
            "my-host.example_1",
            "A.B-c_D",
            "a.",
            "a-",
            &longest,
        ] {
            assert_eq!(Alias::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_invalid_aliases_naming_the_problem() {
        let long = "a".repeat(MAX_ALIAS_LEN + 1);
        let cases = [
            ("", "alias \"\" is empty"),
            (".hidden", "alias \".hidden\" starts with '.'"),
            ("-oProxyCommand", "starts with '-'"),
            ("_a", "starts with '_'"),
            ("a b", "alias \"a b\" contains ' '"),
            ("*", "contains '*'"),
            ("%h", "contains '%'"),
            ("a,b", "contains ','"),
            ("a;rm", "contains ';'"),
            ("a\nb", "contains '\\n'"),
            ("héllo", "contains 'é'"),
            // Refused for a character, not for its bytes: 33 characters
            // are 66 bytes, beyond MAX_ALIAS_LEN.
            (&"é".repeat(33), "contains 'é'"),
            (&long, "is 65 characters long"),
        ];
        for (bad, why) in cases {
            let msg = Alias::parse(bad).unwrap_err().to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
            assert!(
                msg.ends_with("use only letters, digits, '.', '_' and '-', and start with a letter or digit"),
                "{bad:?}: message names the fix: {msg}"
            );
        }
    }

    #[test]
    fn round_trips_through_serde_and_from_str() {
        let alias: Alias = "github".parse().unwrap();
        assert_eq!(alias.to_string(), "github");
        let json = serde_json::to_string(&alias).unwrap();
        assert_eq!(json, "\"github\"");
        assert_eq!(serde_json::from_str::<Alias>(&json).unwrap(), alias);
        let refused = serde_json::from_str::<Alias>("\"a b\"").unwrap_err().to_string();
        assert!(refused.contains("contains ' '"), "{refused}");
    }
}
