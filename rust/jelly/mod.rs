//! Jelly: Twisted's object serialisation on top of banana.
//!
//! A jellied value is a bare int, float or byte string, or a banana list whose first element is a
//! type tag (`["list", ...]`, `["unicode", utf8]`, `["dictionary", [k, v], ...]`, ...). Shared and
//! cyclic containers are written once as `["reference", id, value]` and then `["dereference", id]`,
//! ids numbered in the order of their second sighting.
//!
//! This module holds the rules that need no Python (tags, the text forms of dates); `encode` and
//! `decode` walk and build Python objects directly, in one pass over the bytes, with a hook for
//! the classes the broker layer adds (Referenceable, Copyable, Cacheable, ...).

#[cfg(feature = "python")]
pub mod decode;
#[cfg(feature = "python")]
pub mod encode;

/// Type tags, as they appear on the wire.
pub mod tag {
    pub const NONE: &[u8] = b"None";
    pub const BOOLEAN: &[u8] = b"boolean";
    pub const UNICODE: &[u8] = b"unicode";
    pub const LIST: &[u8] = b"list";
    pub const TUPLE: &[u8] = b"tuple";
    pub const DICTIONARY: &[u8] = b"dictionary";
    pub const SET: &[u8] = b"set";
    pub const FROZENSET: &[u8] = b"frozenset";
    pub const DATETIME: &[u8] = b"datetime";
    pub const DATE: &[u8] = b"date";
    pub const TIME: &[u8] = b"time";
    pub const TIMEDELTA: &[u8] = b"timedelta";
    pub const DECIMAL: &[u8] = b"decimal";
    pub const REFERENCE: &[u8] = b"reference";
    pub const DEREFERENCE: &[u8] = b"dereference";
    pub const UNPERSISTABLE: &[u8] = b"unpersistable";
    pub const PERSISTENT: &[u8] = b"persistent";
    pub const CLASS: &[u8] = b"class";
    /// Tags Twisted's default security refuses: they name code to import or call.
    pub const REFUSED: [&[u8]; 6] = [b"class", b"module", b"function", b"method", b"instance", b"classobj"];
    pub const TRUE: &[u8] = b"true";
    pub const FALSE: &[u8] = b"false";
}

/// Parse the space-separated decimal fields of a `datetime`/`date`/`time`/`timedelta` body,
/// accepting between `min` and `max` fields (as many as Python's constructor takes).
pub fn parse_fields(text: &[u8], min: usize, max: usize) -> Result<Vec<i64>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "date/time fields are not ASCII".to_owned())?;
    let fields: Vec<i64> = text
        .split_ascii_whitespace()
        .map(|f| f.parse::<i64>().map_err(|_| format!("bad date/time field {f:?}")))
        .collect::<Result<_, _>>()?;
    if fields.len() < min || fields.len() > max {
        let want = if min == max { format!("{min}") } else { format!("{min} to {max}") };
        return Err(format!("expected {want} date/time fields, got {}", fields.len()));
    }
    Ok(fields)
}

/// The body Twisted writes: the fields joined by single spaces.
pub fn format_fields(fields: &[i64]) -> String {
    let parts: Vec<String> = fields.iter().map(i64::to_string).collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_fields() {
        assert_eq!(parse_fields(b"2020 7 11 1 16 5 344", 3, 7).unwrap(), [2020, 7, 11, 1, 16, 5, 344]);
        assert_eq!(parse_fields(b"-1 5 7", 3, 3).unwrap(), [-1, 5, 7]);
        assert!(parse_fields(b"1 2", 3, 3).is_err());
        assert!(parse_fields(b"1 x 3", 3, 3).is_err());
        assert!(parse_fields(b"\xff", 3, 3).is_err());
        assert_eq!(format_fields(&[-1, 5, 7]), "-1 5 7");
    }
}
