//! Cell and result values, and how they compare.
//!
//! Data arrives as CSV strings. A cell that is empty (or only whitespace) is SQL `NULL`. Two
//! strings compare numerically when both parse as numbers (integers exactly, otherwise as finite
//! decimals), and otherwise as strings (byte order). Filters, `ORDER BY` and the default row
//! order all use this one comparison.

use std::cmp::Ordering;
use std::fmt;

use cleanroom_data::Decimal;
use serde::Serialize;

fn decimal_text<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

fn decimal_f64(d: &Decimal) -> f64 {
    d.units as f64 / 10f64.powi(i32::from(d.scale))
}

/// Whether a CSV cell is SQL `NULL`: empty after trimming whitespace.
pub fn is_null(cell: &str) -> bool {
    cell.trim().is_empty()
}

enum Number {
    Integer(i128),
    Decimal(f64),
}

fn number(text: &str) -> Option<Number> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if let Ok(i) = t.parse::<i128>() {
        return Some(Number::Integer(i));
    }
    // Only plain decimal notation: digits, one dot, an exponent, a sign. This keeps words such
    // as "inf" or "NaN", which Rust would parse as floats, strings.
    if !t
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    t.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Number::Decimal)
}

fn as_f64(n: &Number) -> f64 {
    match *n {
        // Precision loss only for integers beyond 2^53 compared with decimals.
        Number::Integer(i) => i as f64,
        Number::Decimal(f) => f,
    }
}

/// Compares two non-NULL texts: numerically when both are numbers, else as strings.
pub fn compare_text(a: &str, b: &str) -> Ordering {
    match (number(a), number(b)) {
        (Some(Number::Integer(x)), Some(Number::Integer(y))) => x.cmp(&y),
        (Some(x), Some(y)) => as_f64(&x).total_cmp(&as_f64(&y)),
        _ => a.cmp(b),
    }
}

/// One value of a result row.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// SQL `NULL` (a NULL group key, or the average of no values).
    Null,
    /// A count or a sum.
    Integer(u64),
    /// A sum of a column with a declared scale, exact (serialized as its text, `"12.50"`, so
    /// no JSON reader turns it into a binary float).
    Decimal(#[serde(serialize_with = "decimal_text")] Decimal),
    /// An average.
    Float(f64),
    /// A dimension value, as it appears in the data.
    Text(String),
}

impl Value {
    /// Orders two non-NULL values of the same column: numbers numerically, texts with
    /// [`compare_text`]. A number sorts before a text (never needed within one column).
    pub(crate) fn compare_non_null(&self, other: &Value) -> Ordering {
        use Value::*;
        match (self, other) {
            (Integer(a), Integer(b)) => a.cmp(b),
            (Decimal(a), Decimal(b)) if a.scale == b.scale => a.units.cmp(&b.units),
            (Decimal(a), Decimal(b)) => decimal_f64(a).total_cmp(&decimal_f64(b)),
            (Decimal(a), Integer(b)) => decimal_f64(a).total_cmp(&(*b as f64)),
            (Integer(a), Decimal(b)) => (*a as f64).total_cmp(&decimal_f64(b)),
            (Decimal(a), Float(b)) => decimal_f64(a).total_cmp(b),
            (Float(a), Decimal(b)) => a.total_cmp(&decimal_f64(b)),
            (Integer(a), Float(b)) => (*a as f64).total_cmp(b),
            (Float(a), Integer(b)) => a.total_cmp(&(*b as f64)),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Text(a), Text(b)) => compare_text(a, b),
            (Text(_), _) => Ordering::Greater,
            (_, Text(_)) => Ordering::Less,
            (Null, _) | (_, Null) => Ordering::Equal,
        }
    }

    /// Orders two values, NULL first or last as asked, then ascending or descending.
    pub(crate) fn compare(&self, other: &Value, descending: bool, nulls_first: bool) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) if nulls_first => Ordering::Less,
            (Value::Null, _) => Ordering::Greater,
            (_, Value::Null) if nulls_first => Ordering::Greater,
            (_, Value::Null) => Ordering::Less,
            _ if descending => other.compare_non_null(self),
            _ => self.compare_non_null(other),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Decimal(d) => write!(f, "{d}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_numerically_and_words_as_strings() {
        assert_eq!(compare_text("9", "10"), Ordering::Less);
        assert_eq!(compare_text("9.5", "10"), Ordering::Less);
        assert_eq!(compare_text("-3", "2"), Ordering::Less);
        assert_eq!(compare_text("1e3", "999"), Ordering::Greater);
        assert_eq!(compare_text(" 7 ", "7"), Ordering::Equal);
        assert_eq!(compare_text("9", "10a"), Ordering::Greater);
        assert_eq!(compare_text("inf", "nan"), Ordering::Less);
        assert_eq!(compare_text("b", "a"), Ordering::Greater);
        assert_eq!(
            compare_text("170141183460469231731687303715884105727", "1"),
            Ordering::Greater
        );
    }

    #[test]
    fn null_is_empty_or_blank() {
        assert!(is_null(""));
        assert!(is_null("  \t"));
        assert!(!is_null("0"));
    }

    #[test]
    fn null_placement_follows_the_order_key() {
        let n = Value::Null;
        let one = Value::Integer(1);
        assert_eq!(n.compare(&one, false, false), Ordering::Greater);
        assert_eq!(n.compare(&one, false, true), Ordering::Less);
        assert_eq!(
            one.compare(&Value::Integer(2), true, true),
            Ordering::Greater
        );
        assert_eq!(
            Value::Float(1.5).compare(&Value::Integer(2), false, false),
            Ordering::Less
        );
    }
}
