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
pub mod scan;

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
    pub const TRUE: &[u8] = b"true";
    pub const FALSE: &[u8] = b"false";
}

/// The jelly forms the decoder knows, found by length first so dispatch is a jump and a compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    List,
    Tuple,
    Dictionary,
    Set,
    Frozenset,
    Unicode,
    None,
    Boolean,
    Reference,
    Dereference,
    Datetime,
    Date,
    Time,
    Timedelta,
    Decimal,
    Unpersistable,
    Persistent,
    /// Names code to import or call; refused by default, as Twisted's security does.
    Refused,
    /// Not a jelly builtin: a copyable type name, `remote`, ... — the hook's business.
    Other,
}

impl Tag {
    /// Whether the form holds other jelly values (or, `Other`, may: the hook's items).
    #[inline]
    pub fn holds_values(self) -> bool {
        matches!(
            self,
            Tag::List
                | Tag::Tuple
                | Tag::Dictionary
                | Tag::Set
                | Tag::Frozenset
                | Tag::Reference
                | Tag::Persistent
                | Tag::Other
        )
    }

    #[inline]
    pub fn classify(t: &[u8]) -> Tag {
        let is = |word: &[u8], tag: Tag| if t == word { tag } else { Tag::Other };
        match t.len() {
            3 => is(tag::SET, Tag::Set),
            4 => match t {
                tag::LIST => Tag::List,
                tag::NONE => Tag::None,
                tag::DATE => Tag::Date,
                tag::TIME => Tag::Time,
                _ => Tag::Other,
            },
            5 => match t {
                tag::TUPLE => Tag::Tuple,
                b"class" => Tag::Refused,
                _ => Tag::Other,
            },
            6 => match t {
                b"module" | b"method" => Tag::Refused,
                _ => Tag::Other,
            },
            7 => match t {
                tag::UNICODE => Tag::Unicode,
                tag::BOOLEAN => Tag::Boolean,
                tag::DECIMAL => Tag::Decimal,
                _ => Tag::Other,
            },
            8 => match t {
                tag::DATETIME => Tag::Datetime,
                b"function" | b"instance" | b"classobj" => Tag::Refused,
                _ => Tag::Other,
            },
            9 => match t {
                tag::FROZENSET => Tag::Frozenset,
                tag::REFERENCE => Tag::Reference,
                tag::TIMEDELTA => Tag::Timedelta,
                _ => Tag::Other,
            },
            10 => match t {
                tag::DICTIONARY => Tag::Dictionary,
                tag::PERSISTENT => Tag::Persistent,
                _ => Tag::Other,
            },
            11 => is(tag::DEREFERENCE, Tag::Dereference),
            13 => is(tag::UNPERSISTABLE, Tag::Unpersistable),
            _ => Tag::Other,
        }
    }
}

/// `v`'s allocation, emptied, as a `Vec` of another element type of the same layout: a walk's
/// stack, kept between calls (where the lifetimes its frames borrow for have ended) so that a
/// small message costs no allocation.
#[cfg_attr(not(feature = "python"), allow(dead_code))]
#[inline]
pub(crate) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    const { assert!(size_of::<T>() == size_of::<U>() && align_of::<T>() == align_of::<U>()) };
    v.clear();
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: the allocation was made for `capacity` elements of `T`, which is the same layout as
    // `capacity` elements of `U` (same size and alignment, checked above); the length is 0, so no
    // element is read as a `U`.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<U>(), 0, v.capacity()) }
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
    fn classify_every_tag() {
        let all = [
            (tag::LIST, Tag::List),
            (tag::TUPLE, Tag::Tuple),
            (tag::DICTIONARY, Tag::Dictionary),
            (tag::SET, Tag::Set),
            (tag::FROZENSET, Tag::Frozenset),
            (tag::UNICODE, Tag::Unicode),
            (tag::NONE, Tag::None),
            (tag::BOOLEAN, Tag::Boolean),
            (tag::REFERENCE, Tag::Reference),
            (tag::DEREFERENCE, Tag::Dereference),
            (tag::DATETIME, Tag::Datetime),
            (tag::DATE, Tag::Date),
            (tag::TIME, Tag::Time),
            (tag::TIMEDELTA, Tag::Timedelta),
            (tag::DECIMAL, Tag::Decimal),
            (tag::UNPERSISTABLE, Tag::Unpersistable),
            (tag::PERSISTENT, Tag::Persistent),
        ];
        for (word, t) in all {
            assert_eq!(Tag::classify(word), t);
        }
        for word in [&b"class"[..], b"module", b"function", b"method", b"instance", b"classobj"] {
            assert_eq!(Tag::classify(word), Tag::Refused);
        }
        for word in [&b"remote"[..], b"lists", b"", b"mod.Class", b"Set"] {
            assert_eq!(Tag::classify(word), Tag::Other);
        }
    }

    #[test]
    fn recycling_keeps_the_allocation() {
        let v: Vec<&'static str> = Vec::with_capacity(10);
        let ptr = v.as_ptr() as usize;
        let local = String::from("x");
        let mut w: Vec<&str> = recycle(v);
        assert_eq!((w.as_ptr() as usize, w.capacity()), (ptr, 10));
        w.push(&local);
        let back: Vec<&'static str> = recycle(w);
        assert_eq!((back.as_ptr() as usize, back.len()), (ptr, 0));
    }

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
