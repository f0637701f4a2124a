//! foolscap's PB messages on top of the banana token layer: `call`, `answer` and `error`
//! sequences and the values inside them.
//!
//! 1. A [`MessageFramer`] is fed each received chunk and hands back every complete top-level
//!    sequence as one slice, plus the PING, PONG and ERROR tokens between (and inside) them.
//!    Everything that breaks the stream is found here: bad tokens, a CLOSE that loses sync, a
//!    top-level token that is not OPEN, the limits.
//! 2. [`quick::Quick`] builds the common messages from the framer's tokens as they are read
//!    (through [`framer::Receive`]), so each token is read once; any other message is left to
//!    [`decode::read_message`], which walks the framed sequence and builds its values through a
//!    [`decode::Build`] (Python objects in the `python` feature). Anything wrong inside a message
//!    (an unknown sequence type, a duplicate dict key, a reference to nothing, an ABORT) only
//!    discards that message, as foolscap's Violations do; the stream goes on.
//! 3. An [`encode::Writer`] writes outgoing sequences with foolscap's sender rules and owns the
//!    per-direction OPEN counter.
//!
//! Before any of that, a connection's [`negotiate::Negotiation`] runs the plaintext upgrade, TLS
//! and the hello and decision blocks, and hands the TLS session over to banana.

pub mod decode;
pub mod encode;
pub mod framer;
pub mod negotiate;
pub mod quick;

pub use framer::{Frame, MessageFramer};

use crate::banana;

/// Receive-side limits of a foolscap connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Token and nesting limits. foolscap itself bounds only headers (64 bytes); pbfast bounds
    /// strings, messages and nesting too, so one peer cannot take unbounded memory. Values are
    /// read and written with a heap stack of the sequences open, not by recursion, so no
    /// `max_depth` can exhaust a thread's native stack.
    pub banana: banana::Limits,
    /// Longest first index token of a sequence: foolscap's `maxIndexLength`, the longest type
    /// word it knows (`their-reference`, 15 bytes).
    pub max_index_length: usize,
    /// Longest copyable type name. foolscap uses the longest name in its copyable registry (30
    /// bytes in a stock Tub, `twisted.python.failure.Failure`); the registry here is the hook's,
    /// so the bound is a setting.
    pub max_copyable_name: usize,
}

impl Limits {
    /// The defaults: 16 MiB strings, 64 MiB messages, 500 nested sequences, 64-byte headers.
    pub const fn foolscap() -> Limits {
        Limits {
            banana: banana::Limits {
                max_element_size: 16 << 20,
                max_message_size: 64 << 20,
                max_depth: 500,
                max_header_length: banana::PREFIX_LIMIT,
            },
            max_index_length: 15,
            max_copyable_name: 200,
        }
    }
}

/// The vocabulary index of `unicode` (the type word of text).
pub(crate) const UNICODE: u8 = 8;

/// The longest header [`quick_header`] reads: 56 bits, so every INT, NEG and length it gives fits
/// in an `i64`, and far below any sensible `max_header_length`.
const QUICK_HEADER: usize = 8;

/// The type byte, header value and body offset of the token at `pos`, if its header is at most
/// [`QUICK_HEADER`] bytes and complete: the common tokens' header, read without the general
/// reader's checks (the caller falls back to [`banana::TokenReader`] on None). Object numbers
/// grow with every OPEN sent, so after a while most OPEN and CLOSE headers are 2-3 bytes long.
#[inline(always)]
pub(crate) fn quick_header(data: &[u8], pos: usize) -> Option<(u8, u64, usize)> {
    let mut value = 0u64;
    for i in 0..=QUICK_HEADER {
        let b = *data.get(pos + i)?;
        if b & 0x80 != 0 {
            return Some((b, value, pos + i + 1));
        }
        value |= u64::from(b) << (7 * i);
    }
    None
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::foolscap()
    }
}
