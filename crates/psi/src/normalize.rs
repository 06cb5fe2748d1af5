//! Identifier normalization: the same person must produce the same bytes on both sides.
//!
//! Each identifier column declares one [`Normalization`]. Normalization runs before hashing, on
//! each party's side, so both parties must declare the same one (the collaboration file fixes it).
//! An identifier that is empty after normalization is never matched: tables skip and count it.

use std::fmt;
use std::str::FromStr;

/// How a raw identifier is canonicalized before it is hashed to the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Normalization {
    /// Trim surrounding whitespace and lowercase (Unicode-aware).
    Email,
    /// Keep digits only; a leading `+` stays and a leading `00` becomes `+`. Spaces, dots,
    /// dashes and parentheses are dropped; any other character makes the identifier invalid.
    Phone,
    /// Trim surrounding whitespace only.
    Trim,
    /// Use the bytes as they are.
    #[default]
    None,
}

/// A normalization name that is not one of `email`, `phone`, `trim`, `none`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown normalization {0:?}: expected one of email, phone, trim, none")]
pub struct UnknownNormalization(pub String);

impl Normalization {
    /// Every normalization, in the order they are documented.
    pub const ALL: [Normalization; 4] = [Self::Email, Self::Phone, Self::Trim, Self::None];

    /// The name used in collaboration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Trim => "trim",
            Self::None => "none",
        }
    }

    /// Canonicalize `raw`. Returns `None` when nothing is left to match on (empty, or for
    /// `phone` a value with no digits or with characters that do not belong in a number).
    pub fn apply(self, raw: &str) -> Option<String> {
        let out = match self {
            Self::Email => raw.trim().to_lowercase(),
            Self::Trim => raw.trim().to_owned(),
            Self::None => raw.to_owned(),
            Self::Phone => normalize_phone(raw)?,
        };
        (!out.is_empty()).then_some(out)
    }
}

fn normalize_phone(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let (mut out, rest) = if let Some(rest) = raw.strip_prefix('+') {
        (String::from("+"), rest)
    } else if let Some(rest) = raw.strip_prefix("00") {
        (String::from("+"), rest)
    } else {
        (String::new(), raw)
    };
    for c in rest.chars() {
        match c {
            '0'..='9' => out.push(c),
            ' ' | '.' | '-' | '(' | ')' | '\t' => {}
            _ => return None,
        }
    }
    (out.len() > usize::from(out.starts_with('+'))).then_some(out)
}

impl FromStr for Normalization {
    type Err = UnknownNormalization;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| UnknownNormalization(s.to_owned()))
    }
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Normalization::{self, *};

    #[test]
    fn email_trims_and_lowercases() {
        assert_eq!(
            Email.apply("  Alice@Example.COM \t").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(Email.apply("   "), Option::None);
    }

    #[test]
    fn phone_keeps_digits_and_plus() {
        assert_eq!(
            Phone.apply("+1 (555) 010-9999").as_deref(),
            Some("+15550109999")
        );
        assert_eq!(
            Phone.apply("0044 20.7946.0000").as_deref(),
            Some("+442079460000")
        );
        assert_eq!(Phone.apply("555 0100").as_deref(), Some("5550100"));
        assert_eq!(Phone.apply("+"), Option::None);
        assert_eq!(Phone.apply(" - "), Option::None);
        assert_eq!(Phone.apply("555-CALL-NOW"), Option::None);
    }

    #[test]
    fn trim_and_none() {
        assert_eq!(Trim.apply("  Id-7 ").as_deref(), Some("Id-7"));
        assert_eq!(None.apply("  Id-7 ").as_deref(), Some("  Id-7 "));
        assert_eq!(None.apply(""), Option::None);
    }

    #[test]
    fn names_round_trip() {
        for n in Normalization::ALL {
            assert_eq!(n.name().parse::<Normalization>().unwrap(), n);
        }
        assert!("EMAIL".parse::<Normalization>().is_err());
    }
}
