//! Typed cells: what a table source yields for each field, whatever the file format.

use std::fmt;

/// One field of a row. A source decides NULL once, at its edge: CSV text equal to one of the
/// declared [`NullValues`](crate::NullValues) (after trimming whitespace), and a Parquet NULL,
/// become [`Cell::Null`]; nothing downstream needs to know how NULL was spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// SQL `NULL`: a missing value. Never an identifier, never a group member's key text.
    Null,
    /// A typed integer (Parquet integer columns).
    Int(i64),
    /// A typed fixed-point number (Parquet `DECIMAL` columns).
    Decimal(Decimal),
    /// Text as it appears in the file (every non-NULL CSV field, Parquet string columns).
    Text(String),
}

impl Cell {
    /// Whether the cell is SQL `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }

    /// The cell as text (integers and decimals in their canonical notation), or `None` for
    /// `NULL`. A CSV field and a Parquet value that print the same compare and match the same.
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Cell::Null => None,
            Cell::Int(i) => Some(i.to_string().into()),
            Cell::Decimal(d) => Some(d.to_string().into()),
            Cell::Text(s) => Some(s.as_str().into()),
        }
    }
}

/// A fixed-point number: `units / 10^scale`, exactly (`12.50` is 1250 units of scale 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    /// The value in units of `10^-scale`.
    pub units: i128,
    /// Digits after the decimal point (at most [`Decimal::MAX_SCALE`]).
    pub scale: u8,
}

/// Why a text or a rescaling is not a decimal of the wanted scale.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// Not plain decimal notation (`-12.50`, `7`, `.5`).
    #[error("{0:?} is not a decimal number")]
    Syntax(String),
    /// More digits after the point than the declared scale (never rounded silently).
    #[error("{value} has more than {scale} digits after the decimal point")]
    TooPrecise {
        /// The value as written.
        value: String,
        /// The declared scale.
        scale: u8,
    },
    /// Beyond what 128 bits hold at this scale.
    #[error("{0} is too large")]
    Overflow(String),
}

impl Decimal {
    /// The largest scale handled (that of a Parquet `DECIMAL(38, 38)`).
    pub const MAX_SCALE: u8 = 38;

    /// Parses plain decimal notation into a decimal of exactly `scale` digits after the point
    /// (`"12.5"` at scale 2 is 1250 units). Fails rather than round when the text has more
    /// digits after the point than `scale` (trailing zeros excepted).
    pub fn parse(text: &str, scale: u8) -> Result<Decimal, DecimalError> {
        let t = text.trim();
        let syntax = || DecimalError::Syntax(text.to_owned());
        let (negative, digits) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction)
        {
            return Err(syntax());
        }
        let kept = fraction.trim_end_matches('0');
        if kept.len() > usize::from(scale) {
            return Err(DecimalError::TooPrecise {
                value: t.to_owned(),
                scale,
            });
        }
        let overflow = || DecimalError::Overflow(t.to_owned());
        let mut units: i128 = 0;
        for b in whole.bytes().chain(kept.bytes()) {
            units = units
                .checked_mul(10)
                .and_then(|u| u.checked_add(i128::from(b - b'0')))
                .ok_or_else(overflow)?;
        }
        let missing = u32::from(scale) - kept.len() as u32;
        units = 10i128
            .checked_pow(missing)
            .and_then(|p| units.checked_mul(p))
            .ok_or_else(overflow)?;
        Ok(Decimal {
            units: if negative { -units } else { units },
            scale,
        })
    }

    /// The same value at `scale` digits after the point; fails when digits would be lost or
    /// the value no longer fits.
    pub fn rescale(self, scale: u8) -> Result<Decimal, DecimalError> {
        if scale >= self.scale {
            let units = 10i128
                .checked_pow(u32::from(scale - self.scale))
                .and_then(|p| self.units.checked_mul(p))
                .ok_or_else(|| DecimalError::Overflow(self.to_string()))?;
            return Ok(Decimal { units, scale });
        }
        let divisor = 10i128.pow(u32::from(self.scale - scale));
        if self.units % divisor != 0 {
            return Err(DecimalError::TooPrecise {
                value: self.to_string(),
                scale,
            });
        }
        Ok(Decimal {
            units: self.units / divisor,
            scale,
        })
    }
}

impl fmt::Display for Decimal {
    /// Plain notation with exactly `scale` digits after the point: `12.50`, `-0.05`, `7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.units < 0 { "-" } else { "" };
        let digits = self.units.unsigned_abs().to_string();
        let scale = usize::from(self.scale);
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (whole, fraction) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{whole}.{fraction}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_exact_and_never_rounds() {
        let d = |units, scale| Decimal { units, scale };
        assert_eq!(Decimal::parse("12.50", 2), Ok(d(1250, 2)));
        assert_eq!(Decimal::parse("12.5", 2), Ok(d(1250, 2)));
        assert_eq!(Decimal::parse("12", 2), Ok(d(1200, 2)));
        assert_eq!(Decimal::parse(" .05 ", 2), Ok(d(5, 2)));
        assert_eq!(Decimal::parse("-3.10", 1), Ok(d(-31, 1)));
        assert_eq!(Decimal::parse("7", 0), Ok(d(7, 0)));
        assert!(matches!(
            Decimal::parse("12.505", 2),
            Err(DecimalError::TooPrecise { .. })
        ));
        for bad in ["", ".", "1e3", "12,5", "1.2.3", "--1", "NaN", "inf"] {
            assert!(
                matches!(Decimal::parse(bad, 2), Err(DecimalError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Decimal::parse(&"9".repeat(40), 2),
            Err(DecimalError::Overflow(_))
        ));
    }

    #[test]
    fn display_keeps_the_scale() {
        let d = |units, scale| Decimal { units, scale }.to_string();
        assert_eq!(d(1250, 2), "12.50");
        assert_eq!(d(5, 2), "0.05");
        assert_eq!(d(-5, 3), "-0.005");
        assert_eq!(d(42, 0), "42");
        assert_eq!(d(0, 2), "0.00");
    }

    #[test]
    fn rescale_refuses_to_lose_digits() {
        let d = |units, scale| Decimal { units, scale };
        assert_eq!(d(125, 1).rescale(3), Ok(d(12500, 3)));
        assert_eq!(d(1200, 2).rescale(0), Ok(d(12, 0)));
        assert!(d(1250, 2).rescale(0).is_err());
    }
}
