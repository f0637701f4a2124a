//! Banana: the self-delimiting token encoding under both Twisted PB and foolscap.
//!
//! Every token is `HEADER TYPE [BODY]`: a header of 7-bit groups (least significant first, each byte
//! below 0x80), one type byte with the high bit set, and a body for strings and floats (and, in
//! foolscap, long integers). Twisted's PB dialects add LIST; foolscap replaces LIST with
//! OPEN/CLOSE/ABORT and adds ERROR/PING/PONG.

pub mod cursor;
pub mod decode;
pub mod encode;
pub mod framer;
pub mod tokenizer;
pub mod value;
pub mod vocab;

use num_bigint::BigInt;

pub use decode::{Token, TokenReader};
pub use encode::Encoder;
pub use framer::Framer;
pub use tokenizer::Tokenizer;
pub use value::Value;

/// Type bytes. 0x80..=0x87 are shared by Twisted and foolscap; 0x88.. are foolscap only.
pub mod tb {
    pub const LIST: u8 = 0x80;
    pub const INT: u8 = 0x81;
    pub const STRING: u8 = 0x82;
    pub const NEG: u8 = 0x83;
    pub const FLOAT: u8 = 0x84;
    pub const LONGINT: u8 = 0x85;
    pub const LONGNEG: u8 = 0x86;
    pub const VOCAB: u8 = 0x87;
    pub const OPEN: u8 = 0x88;
    pub const CLOSE: u8 = 0x89;
    pub const ABORT: u8 = 0x8A;
    pub const ERROR: u8 = 0x8D;
    pub const PING: u8 = 0x8E;
    pub const PONG: u8 = 0x8F;

    /// The name of a type byte, for messages.
    pub fn name(type_byte: u8) -> &'static str {
        match type_byte {
            LIST => "LIST",
            INT => "INT",
            STRING => "STRING",
            NEG => "NEG",
            FLOAT => "FLOAT",
            LONGINT => "LONGINT",
            LONGNEG => "LONGNEG",
            VOCAB => "VOCAB",
            OPEN => "OPEN",
            CLOSE => "CLOSE",
            ABORT => "ABORT",
            ERROR => "ERROR",
            PING => "PING",
            PONG => "PONG",
            _ => "?",
        }
    }
}

/// Twisted's `SIZE_LIMIT`: the longest list or string either side sends or accepts (640 KiB).
pub const SIZE_LIMIT: usize = 640 * 1024;
/// Twisted's and foolscap's default prefix limit: at most 64 header bytes (values below 2**448).
pub const PREFIX_LIMIT: usize = 64;
/// Largest magnitude a 64-byte header can carry is 2**448 - 1.
pub const MAX_INT_BITS: u64 = 7 * PREFIX_LIMIT as u64;
/// PB integers up to this magnitude go out as INT/NEG; larger ones as LONGINT/LONGNEG.
pub const PB_SMALL_INT_MAX: i64 = (1 << 31) - 1;
/// foolscap's ERROR token carries at most this many message bytes.
pub const FOOLSCAP_ERROR_LIMIT: usize = 1000;

/// The wire dialect of a banana stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Twisted PB's `pb` dialect: LIST tokens, the fixed 31-word PB vocabulary.
    Pb,
    /// Twisted's `none` dialect: LIST tokens and no vocabulary at all.
    NoVocab,
    /// foolscap: OPEN/CLOSE/ABORT sequences, ERROR/PING/PONG, foolscap's 25-word vocabulary and
    /// length-prefixed big-endian LONGINT/LONGNEG bodies.
    Foolscap,
}

impl Dialect {
    /// The bytes of an empty jelly dictionary, `["dictionary"]`, in this dialect.
    pub fn empty_dictionary(self) -> &'static [u8] {
        match self {
            Dialect::Pb => b"\x01\x80\x05\x87",
            _ => b"\x01\x80\x0a\x82dictionary",
        }
    }

    /// Parse the name used on the wire and in the Python API (`pb`, `none`, `foolscap`).
    pub fn from_name(name: &str) -> Option<Dialect> {
        match name {
            "pb" => Some(Dialect::Pb),
            "none" => Some(Dialect::NoVocab),
            "foolscap" => Some(Dialect::Foolscap),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Pb => "pb",
            Dialect::NoVocab => "none",
            Dialect::Foolscap => "foolscap",
        }
    }

    /// The word a VOCAB index stands for, or `None` if this dialect has no such word.
    pub fn vocab_word(self, index: u64) -> Option<&'static [u8]> {
        match self {
            Dialect::Pb => vocab::pb_word(index),
            Dialect::NoVocab => None,
            Dialect::Foolscap => vocab::foolscap_word(index),
        }
    }

    /// The VOCAB index an outgoing byte string is replaced by, if any.
    #[inline(always)]
    pub fn vocab_index(self, word: &[u8]) -> Option<u8> {
        match self {
            Dialect::Pb => vocab::pb_index(word),
            Dialect::NoVocab => None,
            Dialect::Foolscap => vocab::foolscap_index(word),
        }
    }
}

/// The pbfast extension that lifts Twisted's 640 KiB limit on one string or list: between two
/// peers that announced it, an element may be as long as a whole message (`max_message_size`),
/// and neither sends a message longer than its own `max_message_size`.
pub const LARGE: &str = "large";

/// Receive-side limits of one decoder. Violations are reported as [`ErrorKind`]s naming the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest list (element count) or string (bytes) accepted; checked on the header, before
    /// anything is buffered. Twisted: 655360.
    pub max_element_size: usize,
    /// Largest top-level expression in bytes. Twisted has no such limit; this keeps one hostile
    /// message from holding unbounded memory.
    pub max_message_size: usize,
    /// Deepest list (or OPEN) nesting accepted.
    pub max_depth: usize,
    /// Longest header in bytes. Twisted and foolscap: 64.
    pub max_header_length: usize,
}

impl Limits {
    /// Twisted-compatible defaults for the PB dialects.
    pub const fn twisted() -> Limits {
        Limits {
            max_element_size: SIZE_LIMIT,
            max_message_size: 64 * 1024 * 1024,
            max_depth: 1000,
            max_header_length: PREFIX_LIMIT,
        }
    }
}

impl Limits {
    /// The limits with a peer that speaks [`LARGE`]: an element may be as long as a message
    /// (unless `max_element_size` was set: `element_size_set`).
    pub fn for_large(self, element_size_set: bool) -> Limits {
        if element_size_set {
            return self;
        }
        Limits { max_element_size: self.max_element_size.max(self.max_message_size), ..self }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::twisted()
    }
}

/// A decoded integer: machine-sized when it fits, arbitrary precision otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integer {
    Small(i64),
    Big(BigInt),
}

impl Integer {
    /// Normalise: use `Small` whenever the value fits an `i64`.
    pub fn from_big(b: BigInt) -> Integer {
        match i64::try_from(&b) {
            Ok(v) => Integer::Small(v),
            Err(_) => Integer::Big(b),
        }
    }

    pub fn to_big(&self) -> BigInt {
        match self {
            Integer::Small(v) => BigInt::from(*v),
            Integer::Big(b) => b.clone(),
        }
    }
}

/// What went wrong while decoding or encoding banana.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// A header ran past `max_header_length` bytes.
    HeaderTooLong { limit: usize },
    /// A LIST header declared more elements than `max_element_size`.
    ListTooLong { len: String, limit: usize },
    /// A STRING (or foolscap LONGINT/ERROR) header declared a body longer than allowed.
    StringTooLong { len: String, limit: usize },
    /// One top-level expression grew beyond `max_message_size` bytes.
    MessageTooLarge { limit: usize },
    /// Lists nested deeper than `max_depth`.
    TooDeep { limit: usize },
    /// A type byte this dialect does not define.
    InvalidTypeByte(u8),
    /// A VOCAB index with no word in this dialect's table.
    UnknownVocab(String),
    /// A VOCAB token in the `none` dialect.
    VocabNotAllowed,
    /// A LIST token on a foolscap stream.
    ListInFoolscap,
    /// A foolscap CLOSE whose id is not the innermost open sequence.
    CloseMismatch { expected: Option<u64>, got: u64 },
    /// A foolscap token other than OPEN, PING, PONG or ERROR outside every sequence.
    NotAtTopLevel(u8),
    /// The input ended inside an expression (one-shot decoding only).
    Truncated,
    /// Bytes were left after the one expression of a one-shot decode.
    TrailingData,
    /// An integer beyond ±(2**448 - 1) was given to the encoder.
    IntTooLarge,
    /// A list or string over the encoder's limit was given to it: Twisted's `SIZE_LIMIT`
    /// (`setting` None), or a setting's (between pbfast peers that speak [`LARGE`]).
    TooLongToSend { what: &'static str, len: usize, limit: usize, setting: Option<&'static str> },
    /// A message longer than the setting `max_message_size` was to be sent (between pbfast
    /// peers that speak [`LARGE`]).
    MessageTooLargeToSend { len: usize, limit: usize },
    /// A foolscap open-id, vocab index or similar header value that does not fit 64 bits.
    HeaderValueTooLarge,
    /// A value of a type banana has no token for (given to the encoder).
    Unsendable(String),
    /// The decoder already failed; a stream cannot be resynchronised after an error.
    Stopped,
}

/// A banana error with the absolute byte offset (from the start of the stream) where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct BananaError {
    pub offset: Option<u64>,
    pub kind: ErrorKind,
}

impl BananaError {
    pub fn at(offset: u64, kind: ErrorKind) -> BananaError {
        BananaError { offset: Some(offset), kind }
    }

    pub fn local(kind: ErrorKind) -> BananaError {
        BananaError { offset: None, kind }
    }

    /// The name of the configurable limit that was hit, if a limit was hit.
    pub fn limit_name(&self) -> Option<&'static str> {
        match self.kind {
            ErrorKind::HeaderTooLong { .. } => Some("max_header_length"),
            ErrorKind::ListTooLong { .. } | ErrorKind::StringTooLong { .. } => Some("max_element_size"),
            ErrorKind::MessageTooLarge { .. } | ErrorKind::MessageTooLargeToSend { .. } => Some("max_message_size"),
            ErrorKind::TooLongToSend { setting, .. } => setting,
            ErrorKind::TooDeep { .. } => Some("max_depth"),
            _ => None,
        }
    }
}

impl std::fmt::Display for BananaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ErrorKind::HeaderTooLong { limit } => write!(f, "header longer than {limit} bytes")?,
            ErrorKind::ListTooLong { len, limit } => {
                write!(f, "list of {len} elements exceeds max_element_size={limit}")?
            }
            ErrorKind::StringTooLong { len, limit } => {
                write!(f, "string of {len} bytes exceeds max_element_size={limit}")?
            }
            ErrorKind::MessageTooLarge { limit } => write!(f, "expression larger than max_message_size={limit} bytes")?,
            ErrorKind::TooDeep { limit } => write!(f, "lists nested deeper than max_depth={limit}")?,
            ErrorKind::InvalidTypeByte(b) => write!(f, "invalid type byte 0x{b:02x}")?,
            ErrorKind::UnknownVocab(i) => write!(f, "unknown VOCAB index {i}")?,
            ErrorKind::VocabNotAllowed => write!(f, "VOCAB token in the 'none' dialect")?,
            ErrorKind::ListInFoolscap => write!(f, "LIST token on a foolscap stream (old banana peer?)")?,
            ErrorKind::CloseMismatch { expected: Some(e), got } => {
                write!(f, "CLOSE({got}) does not match the innermost OPEN({e})")?
            }
            ErrorKind::CloseMismatch { expected: None, got } => write!(f, "CLOSE({got}) with no open sequence")?,
            ErrorKind::NotAtTopLevel(b) => {
                write!(f, "{} token at the top level (only OPEN, PING, PONG and ERROR may be there)", tb::name(*b))?
            }
            ErrorKind::Truncated => write!(f, "input ends inside an expression")?,
            ErrorKind::TrailingData => write!(f, "trailing bytes after the expression")?,
            ErrorKind::IntTooLarge => write!(f, "int is too large to send (limit is ±(2**448 - 1))")?,
            ErrorKind::TooLongToSend { what, len, limit, setting: None } => {
                write!(f, "{what} is too long to send ({len} > {limit})")?
            }
            ErrorKind::TooLongToSend { what, len, limit, setting: Some(setting) } => {
                write!(f, "{what} of {len} bytes is too long to send: the limit is {setting}={limit}")?
            }
            ErrorKind::MessageTooLargeToSend { len, limit } => {
                write!(f, "message of {len} bytes is too large to send: the limit is max_message_size={limit}")?
            }
            ErrorKind::HeaderValueTooLarge => write!(f, "header value does not fit in 64 bits")?,
            ErrorKind::Unsendable(msg) => write!(f, "{msg}")?,
            ErrorKind::Stopped => write!(f, "decoder stopped by an earlier error")?,
        }
        if let Some(o) = self.offset {
            write!(f, " at byte {o}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BananaError {}

/// A byte string (a type tag, a name) for messages: its text when printable, else its repr.
pub fn show(t: &[u8]) -> String {
    match std::str::from_utf8(t) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("'{s}'"),
        _ => format!("{:?}", String::from_utf8_lossy(t)),
    }
}
