//! The slug: the identifier of one agent's gate.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest slug accepted: one leading character plus 31 more.
pub const MAX_SLUG_LEN: usize = 32;

/// A validated slug, `[a-z0-9][a-z0-9-]{0,31}`. Safe to use in file names,
/// unit names, netns names and nftables identifiers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slug(String);

impl schemars::JsonSchema for Slug {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Slug".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An agent's slug: 1 to 32 of a-z, 0-9 and '-', starting with a letter or digit.",
            "type": "string",
            "pattern": "^[a-z0-9][a-z0-9-]{0,31}$"
        })
    }
}

impl Slug {
    /// Validates `raw` as a slug.
    pub fn parse(raw: &str) -> Result<Slug> {
        let fix = "a slug is 1 to 32 characters of a-z, 0-9 and '-', starting with a letter or digit";
        let Some(first) = raw.chars().next() else {
            return Err(Error::invalid(format!("invalid slug \"\": it is empty; {fix}")));
        };
        // Name every kind of problem at once: "NoSuch_Slug" has uppercase
        // letters and a '_', not only a bad first character.
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        let mut problems = Vec::new();
        if raw.chars().any(|c| c.is_ascii_uppercase()) {
            problems.push(format!(
                "it has uppercase letters (write {:?})",
                raw.to_ascii_lowercase()
            ));
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit() || first.is_ascii_uppercase()) {
            problems.push(format!("it starts with {first:?}"));
        }
        if let Some(bad) = raw
            .chars()
            .skip(1)
            .find(|c| !allowed(*c) && !c.is_ascii_uppercase() && *c != first)
        {
            problems.push(format!("it contains {bad:?}"));
        }
        if !problems.is_empty() {
            return Err(Error::invalid(format!(
                "invalid slug {raw:?}: {}; {fix}",
                problems.join(" and ")
            )));
        }
        // Every character is ASCII now: its length in bytes is its length
        // in characters.
        if raw.len() > MAX_SLUG_LEN {
            return Err(Error::invalid(format!(
                "invalid slug {raw:?}: it is {} characters long; {fix}",
                raw.len()
            )));
        }
        Ok(Slug(raw.to_string()))
    }

    /// The slug as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Implements the string conversions of a validated string newtype `$t`
/// (a tuple struct around a `String` with `$t::parse(&str) -> Result<$t>`):
/// [`Display`](std::fmt::Display), [`FromStr`](std::str::FromStr),
/// `TryFrom<String>` (which serde's `try_from` uses) and `From<$t> for
/// String`. Parsing always goes through `$t::parse`.
macro_rules! validated_string {
    ($t:ident) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(&self.0)
            }
        }

        impl TryFrom<String> for $t {
            type Error = crate::error::Error;
            fn try_from(raw: String) -> crate::error::Result<$t> {
                $t::parse(&raw)
            }
        }

        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.0
            }
        }

        impl std::str::FromStr for $t {
            type Err = crate::error::Error;
            fn from_str(raw: &str) -> crate::error::Result<$t> {
                $t::parse(raw)
            }
        }
    };
}
pub(crate) use validated_string;

validated_string!(Slug);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_slugs() {
        for ok in ["a", "alice", "0", "a-b-c", "x1234567890123456789012345678901"] {
            assert_eq!(Slug::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_invalid_slugs_naming_the_problem() {
        let cases = [
            ("", "empty"),
            ("-a", "starts with '-'"),
            ("Alice", "it has uppercase letters (write \"alice\")"),
            (
                "NoSuch_Slug",
                "invalid slug \"NoSuch_Slug\": it has uppercase letters (write \"nosuch_slug\") and it contains '_';",
            ),
            ("../etc", "it starts with '.' and it contains '/'"),
            ("a_b", "contains '_'"),
            ("a/b", "contains '/'"),
            ("a b", "contains ' '"),
            ("x12345678901234567890123456789012", "33 characters"),
            // Refused for a character, not for its bytes: 20 characters
            // are 40 bytes, beyond MAX_SLUG_LEN.
            (&"é".repeat(20), "starts with 'é'"),
            (&format!("a{}", "é".repeat(19)), "contains 'é'"),
            (&format!("{}é", "a".repeat(40)), "contains 'é'"),
        ];
        for (bad, why) in cases {
            let msg = Slug::parse(bad).unwrap_err().to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
            assert!(msg.contains("a-z, 0-9"), "{bad:?}: message names the fix: {msg}");
            if why != "33 characters" {
                assert!(!msg.contains("characters long"), "{bad:?}: {msg}");
            }
        }
    }
}
