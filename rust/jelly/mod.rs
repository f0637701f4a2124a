//! Jelly: Twisted's object serialisation on top of banana.
//!
//! A jellied value is a bare int, float or byte string, or a banana list whose first element is a
//! type tag (`["list", ...]`, `["unicode", utf8]`, `["dictionary", [k, v], ...]`, ...). Shared and
//! cyclic containers are written once as `["reference", id, value]` and then `["dereference", id]`,
//! ids numbered in the order of their second sighting.
//!
//! Nothing here knows Python. [`decode`] reads jelly bytes in one pass and makes the values
//! through a [`decode::Build`]; [`encode`] writes jelly with a [`encode::Writer`], walking the
//! values through a [`encode::Walk`]. The `python` feature implements both for Python objects,
//! with a hook for the classes the broker layer adds (Referenceable, Copyable, Cacheable, ...).
//! Both walks keep their place on a heap stack, so no nesting depth can exhaust a thread's
//! native stack.

pub mod decode;
pub mod encode;
mod quick;
pub mod scan;
#[cfg(test)]
mod testing;

use crate::banana::BananaError;

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

    /// The tag a PB vocabulary word stands for, by its index (as [`Tag::classify`] would find it).
    #[inline]
    pub fn of_vocab(index: u8) -> Tag {
        match index {
            1 => Tag::None,
            2 | 6 | 7 | 9 => Tag::Refused,
            3 => Tag::Dereference,
            4 => Tag::Reference,
            5 => Tag::Dictionary,
            8 => Tag::List,
            10 => Tag::Persistent,
            11 => Tag::Tuple,
            12 => Tag::Unpersistable,
            _ => Tag::Other,
        }
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

/// Why jelly could not be read or written. `E` is the builder's or the walker's own error (a
/// Python exception in the bindings), passed on untouched.
#[derive(Debug, Clone, PartialEq)]
pub enum Error<E> {
    /// Malformed jelly, or a value jelly has no form for; `offset` is the stream offset of the
    /// offending list, when there is one.
    Invalid { message: String, offset: Option<u64> },
    /// Jelly the receiver's policy refuses: a tag that names code, or one nothing is registered for.
    Insecure { message: String, offset: Option<u64> },
    /// Received lists nested deeper than `limit` (`max_depth`).
    TooDeep { limit: usize, offset: u64 },
    /// A value to send nested deeper than `limit`: a receiver with the same limit would refuse it.
    TooDeepToSend { limit: usize },
    /// A value banana cannot carry (a string or list over [`crate::banana::SIZE_LIMIT`], an int too large).
    Banana(BananaError),
    /// From the builder or the walker.
    Other(E),
}

impl<E> Error<E> {
    /// Malformed jelly at stream offset `offset`.
    pub fn invalid(message: String, offset: u64) -> Error<E> {
        Error::Invalid { message, offset: Some(offset) }
    }

    /// A value that cannot be sent as jelly.
    pub fn unsendable(message: String) -> Error<E> {
        Error::Invalid { message, offset: None }
    }

    /// The stream offset the error names, if any.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Error::Invalid { offset, .. } | Error::Insecure { offset, .. } => *offset,
            Error::TooDeep { offset, .. } => Some(*offset),
            Error::Banana(e) => e.offset,
            Error::TooDeepToSend { .. } | Error::Other(_) => None,
        }
    }
}

impl<E> From<BananaError> for Error<E> {
    fn from(e: BananaError) -> Error<E> {
        Error::Banana(e)
    }
}

/// The message, with " at byte N" when the error has an offset (as Python's classes show it).
impl<E: std::fmt::Display> std::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Invalid { message, .. } | Error::Insecure { message, .. } => f.write_str(message)?,
            Error::TooDeep { limit, .. } => write!(f, "lists nested deeper than max_depth={limit}")?,
            Error::TooDeepToSend { limit } => write!(f, "cannot send values nested deeper than max_depth={limit}")?,
            Error::Banana(e) => return e.fmt(f),
            Error::Other(e) => return e.fmt(f),
        }
        match self.offset() {
            Some(o) => write!(f, " at byte {o}"),
            None => Ok(()),
        }
    }
}

/// `v`'s allocation, emptied, as a `Vec` of another element type of the same layout (or a new,
/// empty `Vec` if the layouts differ): a walk's stack, kept between calls (where the lifetimes its
/// frames borrow for have ended) so that a small message costs no allocation.
#[inline]
pub(crate) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    if size_of::<T>() != size_of::<U>() || align_of::<T>() != align_of::<U>() {
        return Vec::new();
    }
    v.clear();
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: the allocation was made for `capacity` elements of `T`, which is the same layout as
    // `capacity` elements of `U` (same size and alignment, checked above); the length is 0, so no
    // element is read as a `U`.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<U>(), 0, v.capacity()) }
}

/// The bytes that start a dictionary's pair whose key is the str `utf8` in the common shape: the
/// pair's list header, then `["unicode", utf8]` as [`crate::banana::cursor::Cursor::unicode`]
/// reads it (in `PairStart::ROOM` bytes, zero after its length); None for a key too long for it.
pub fn pair_start(utf8: &[u8]) -> Option<PairStart> {
    const HEAD: &[u8] = b"\x02\x80\x02\x80\x07\x82unicode";
    let len = HEAD.len() + 2 + utf8.len();
    if len > PairStart::ROOM {
        return None;
    }
    let mut bytes = [0; PairStart::ROOM];
    bytes[..HEAD.len()].copy_from_slice(HEAD);
    bytes[HEAD.len()] = utf8.len() as u8;
    bytes[HEAD.len() + 1] = crate::banana::tb::STRING;
    bytes[HEAD.len() + 2..len].copy_from_slice(utf8);
    Some(PairStart { bytes, len })
}

/// See [`pair_start`].
#[derive(Clone, Copy)]
pub struct PairStart {
    pub bytes: [u8; PairStart::ROOM],
    pub len: usize,
}

impl PairStart {
    /// Room for the start of a pair whose key has up to 25 bytes.
    pub const ROOM: usize = 40;
}

/// `v.push(item)`, inlined into the caller so that the item is built where it goes: a frame,
/// passed to an outlined `push`, would be built on the native stack and then copied, its
/// copy waiting on the narrow stores that built it.
#[inline(always)]
pub(crate) fn push_in_place<T>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() {
        v.reserve(1);
    }
    // SAFETY: there is room for one more element (reserved above); it is written before the
    // length covers it.
    unsafe {
        v.as_mut_ptr().add(v.len()).write(item);
        v.set_len(v.len() + 1);
    }
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
    use crate::banana::{show, Dialect};

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
    fn vocabulary_tags_classify_alike() {
        for (i, word) in crate::banana::vocab::PB_VOCAB.iter().enumerate().skip(1) {
            assert_eq!(Tag::of_vocab(i as u8), Tag::classify(word), "{}", show(word));
        }
    }

    #[test]
    fn errors_show_their_offset() {
        let e: Error<String> = Error::invalid("bad".into(), 7);
        assert_eq!((e.to_string(), e.offset()), ("bad at byte 7".into(), Some(7)));
        let e: Error<String> = Error::TooDeepToSend { limit: 3 };
        assert_eq!((e.to_string(), e.offset()), ("cannot send values nested deeper than max_depth=3".into(), None));
        assert_eq!(
            Error::<String>::TooDeep { limit: 3, offset: 1 }.to_string(),
            "lists nested deeper than max_depth=3 at byte 1"
        );
        assert_eq!(Error::Other("x".to_string()).to_string(), "x");
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
    fn a_pair_start_is_what_the_writer_writes() {
        for key in ["id", "", "é", "a key of 25 bytes exactly"] {
            let mut w = encode::Writer::new(Dialect::Pb, encode::Buffers::default());
            w.open_pairs().unwrap();
            w.pair();
            w.text(key.as_bytes()).unwrap();
            let start = pair_start(key.as_bytes()).expect("fits");
            assert_eq!(&start.bytes[..start.len], w.output(), "{key:?}");
            assert!(start.bytes[start.len..].iter().all(|&b| b == 0));
        }
        assert!(pair_start(&[b'x'; 26]).is_none());
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
