//! Incremental splitting of a Twisted banana stream (`pb` or `none` dialect) into complete
//! top-level expressions.
//!
//! The framer validates every token and enforces the limits, but builds nothing: it hands each
//! complete expression to the caller as one contiguous slice, which a builder then walks. Every
//! byte is scanned once (a token cut by a chunk boundary is re-read from its header, at most 64
//! bytes, and a long string body is not rescanned while it arrives), so the cost is linear in the
//! input whatever the chunking — Twisted's decoder re-copies its buffer on every token and is
//! quadratic on large reads. When no partial expression is buffered, expressions are delivered
//! straight from the caller's chunk without copying.

use super::decode::{Skip, TokenReader};
use super::{BananaError, Dialect, ErrorKind, Limits};

/// Incremental decoder state for one direction of one connection.
pub struct Framer {
    dialect: Dialect,
    limits: Limits,
    /// The start of the current partial expression.
    held: Held,
    scan: ScanState,
}

/// The bytes of a stream a framer has not finished with, and its failure: the part both
/// framers (this one and foolscap's) share. A chunk is scanned straight from the caller's
/// buffer when nothing is held, else appended to what is; the scanner says how many bytes it
/// finished with, and the rest is kept.
#[derive(Default)]
pub(crate) struct Held {
    /// `buf[0]` is at stream offset `consumed`.
    buf: Vec<u8>,
    consumed: u64,
    failed: Option<BananaError>,
}

/// Why a scan stopped: the stream is broken, or the caller's callback failed.
pub(crate) enum ScanError<E> {
    Banana(BananaError),
    Callback(E),
}

impl<E: From<BananaError>> ScanError<E> {
    fn into_inner(self) -> E {
        match self {
            ScanError::Banana(b) => b.into(),
            ScanError::Callback(e) => e,
        }
    }
}

impl Held {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Stream offset of the next byte to be fed.
    pub fn offset(&self) -> u64 {
        self.consumed + self.buf.len() as u64
    }

    /// Count the stream from `offset` (its first bytes were read elsewhere). Only before
    /// anything is fed.
    pub fn start_at(&mut self, offset: u64) {
        assert!(self.buf.is_empty() && self.consumed == 0);
        self.consumed = offset;
    }

    /// Whether the stream has failed (every later feed returns the error).
    pub fn failed(&self) -> bool {
        self.failed.is_some()
    }

    /// The bytes held, to append to (see [`Self::append_with`]).
    pub fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Let go of the buffer: nothing more will be read.
    pub fn release(&mut self) {
        self.buf = Vec::new();
    }

    /// Append what `fill` appends to the bytes held, to be read by the next `feed` (where they
    /// come before its `data`); if `fill` fails, nothing is appended. This saves a copy for
    /// bytes made elsewhere (decrypted) that would otherwise go through a buffer of their own.
    pub fn append_with<E>(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        let before = self.buf.len();
        fill(&mut self.buf).inspect_err(|_| self.buf.truncate(before))
    }

    /// `scan(bytes, stream_offset_of_bytes)` over what is held followed by `data`; it returns
    /// how many bytes it finished with. After an error every later feed returns that error.
    pub fn feed<E: From<BananaError>>(
        &mut self,
        data: &[u8],
        scan: impl FnOnce(&[u8], u64) -> Result<usize, ScanError<E>>,
    ) -> Result<(), E> {
        if let Some(e) = &self.failed {
            return Err(e.clone().into());
        }
        let result = if self.buf.is_empty() {
            // Fast path: scan the caller's chunk in place and keep only the incomplete tail.
            let r = scan(data, self.consumed);
            if let Ok(done) = r {
                self.buf.extend_from_slice(&data[done..]);
                self.consumed += done as u64;
            }
            r
        } else {
            self.buf.extend_from_slice(data);
            let r = scan(&self.buf, self.consumed);
            if let Ok(done) = r {
                self.buf.drain(..done);
                self.consumed += done as u64;
            }
            r
        };
        result.map(|_| ()).map_err(|e| {
            // Whatever went wrong, the stream position is no longer trustworthy.
            self.failed = Some(match &e {
                ScanError::Banana(b) => b.clone(),
                ScanError::Callback(_) => BananaError::at(self.offset(), ErrorKind::Stopped),
            });
            e.into_inner()
        })
    }
}

/// Where scanning of the partial expression stands, relative to its first byte.
#[derive(Default)]
struct ScanState {
    /// Remaining element counts of the open lists, innermost last.
    stack: Vec<u64>,
    /// Offset of the next token to read.
    pos: usize,
    /// Do not rescan until the partial expression is at least this long (0: unknown).
    need: usize,
}

impl Framer {
    pub fn new(dialect: Dialect, limits: Limits) -> Framer {
        assert!(dialect != Dialect::Foolscap, "the framer splits Twisted banana streams");
        Framer { dialect, limits, held: Held::default(), scan: ScanState::default() }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Switch dialect between expressions (Twisted selects the dialect after the first one).
    pub fn set_dialect(&mut self, dialect: Dialect) {
        assert!(dialect != Dialect::Foolscap);
        self.dialect = dialect;
    }

    /// Continue a stream whose first `offset` bytes were read elsewhere (error offsets count
    /// from the stream's start). Only before anything is fed.
    pub fn start_at(&mut self, offset: u64) {
        self.held.start_at(offset);
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Change the limits between expressions (a negotiation raised them).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Bytes held for an incomplete expression.
    pub fn buffered(&self) -> usize {
        self.held.len()
    }

    /// Stream offset of the next byte to be fed.
    pub fn offset(&self) -> u64 {
        self.held.offset()
    }

    /// Feed a chunk; `on_expression(bytes, stream_offset)` is called for each complete top-level
    /// expression, in order. After an error the framer stays failed and returns that error again.
    pub fn feed<E: From<BananaError>>(
        &mut self,
        data: &[u8],
        mut on_expression: impl FnMut(&[u8], u64) -> Result<(), E>,
    ) -> Result<(), E> {
        let (dialect, limits, state) = (self.dialect, self.limits, &mut self.scan);
        self.held.feed(data, |bytes, base| scan(dialect, limits, state, bytes, base, &mut on_expression))
    }
}

/// Scan `data` (which starts at a expression boundary, stream offset `base`) from `state.pos`.
/// Returns how many bytes of complete expressions were delivered; `state` then describes the
/// incomplete remainder relative to its start.
fn scan<E>(
    dialect: Dialect,
    limits: Limits,
    state: &mut ScanState,
    data: &[u8],
    base: u64,
    on_expression: &mut impl FnMut(&[u8], u64) -> Result<(), E>,
) -> Result<usize, ScanError<E>> {
    if data.len() < state.need {
        return Ok(0);
    }
    let reader = TokenReader::new(data, base, dialect, limits);
    let mut start = 0usize;
    let mut pos = state.pos;
    while pos < data.len() {
        let end = match reader.skip(pos).map_err(ScanError::Banana)? {
            Skip::Incomplete { need } => {
                if need > 0 && pos - start + need > limits.max_message_size {
                    return Err(too_large(base, start, limits));
                }
                state.pos = pos - start;
                state.need = if need > 0 { pos - start + need } else { 0 };
                return Ok(start);
            }
            Skip::List(n, end) if n > 0 => {
                if state.stack.len() >= limits.max_depth {
                    let kind = ErrorKind::TooDeep { limit: limits.max_depth };
                    return Err(ScanError::Banana(BananaError::at(base + pos as u64, kind)));
                }
                state.stack.push(n);
                pos = end;
                continue;
            }
            Skip::List(_, end) | Skip::Atom(end) => end,
        };
        if end - start > limits.max_message_size {
            return Err(too_large(base, start, limits));
        }
        pos = end;
        // One element is complete: close every list it completes.
        loop {
            match state.stack.last_mut() {
                None => {
                    on_expression(&data[start..pos], base + start as u64).map_err(ScanError::Callback)?;
                    start = pos;
                    break;
                }
                Some(remaining) => {
                    *remaining -= 1;
                    if *remaining > 0 {
                        break;
                    }
                    state.stack.pop();
                }
            }
        }
    }
    state.pos = pos - start;
    state.need = 0;
    Ok(start)
}

fn too_large<E>(base: u64, start: usize, limits: Limits) -> ScanError<E> {
    let kind = ErrorKind::MessageTooLarge { limit: limits.max_message_size };
    ScanError::Banana(BananaError::at(base + start as u64, kind))
}

/// Check that `data` is exactly one complete expression.
pub fn exactly_one(data: &[u8], dialect: Dialect, limits: Limits) -> Result<(), BananaError> {
    let mut state = ScanState::default();
    let mut first_end: Option<u64> = None;
    let mut on_expr = |expr: &[u8], offset: u64| -> Result<(), BananaError> {
        match first_end {
            None => {
                first_end = Some(offset + expr.len() as u64);
                Ok(())
            }
            Some(end) => Err(BananaError::at(end, ErrorKind::TrailingData)),
        }
    };
    let done = scan(dialect, limits, &mut state, data, 0, &mut on_expr).map_err(ScanError::into_inner)?;
    match first_end {
        None => Err(BananaError::at(data.len() as u64, ErrorKind::Truncated)),
        Some(end) if done < data.len() => Err(BananaError::at(end, ErrorKind::TrailingData)),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::banana::tb;

    fn split(chunks: &[&[u8]], limits: Limits) -> Result<Vec<Vec<u8>>, BananaError> {
        let mut f = Framer::new(Dialect::Pb, limits);
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, |e: &[u8], _| -> Result<(), BananaError> {
                out.push(e.to_vec());
                Ok(())
            })?;
        }
        Ok(out)
    }

    #[test]
    fn splits_any_chunking() {
        let stream: Vec<u8> = [
            &[0x02, tb::LIST, 0x01, tb::INT, 0x02, tb::LIST, 0x00, tb::LIST, 0x03, tb::STRING][..],
            b"abc",
            &[0x05, tb::INT, tb::FLOAT, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        let whole = split(&[&stream], Limits::twisted()).unwrap();
        assert_eq!(whole.len(), 3);
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(split(&[a, b], Limits::twisted()).unwrap(), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(split(&bytes, Limits::twisted()).unwrap(), whole);
    }

    #[test]
    fn limits_are_enforced_on_headers() {
        let limits = Limits { max_message_size: 10, ..Limits::twisted() };
        // A 100-byte string is refused from its header alone.
        let e = split(&[&[100, tb::STRING]], limits).unwrap_err();
        assert_eq!(e.kind, ErrorKind::MessageTooLarge { limit: 10 });
        let limits = Limits { max_depth: 2, ..Limits::twisted() };
        let e = split(&[&[1, tb::LIST, 1, tb::LIST, 1, tb::LIST]], limits).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::TooDeep { limit: 2 }, Some(4)));
    }

    #[test]
    fn errors_are_sticky_and_carry_offsets() {
        let mut f = Framer::new(Dialect::Pb, Limits::twisted());
        let mut n = 0;
        let mut cb = |_: &[u8], _| -> Result<(), BananaError> {
            n += 1;
            Ok(())
        };
        let e = f.feed(&[0x01, tb::INT, 0x01, 0xff], &mut cb).unwrap_err();
        assert_eq!((e.kind.clone(), e.offset), (ErrorKind::InvalidTypeByte(0xff), Some(3)));
        assert_eq!(f.feed(&[0x01, tb::INT], &mut cb).unwrap_err(), e);
        assert_eq!(n, 1);
    }

    #[test]
    fn one_shot() {
        assert!(exactly_one(&[0, tb::LIST], Dialect::Pb, Limits::twisted()).is_ok());
        let e = exactly_one(&[1, tb::LIST], Dialect::Pb, Limits::twisted()).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::Truncated, Some(2)));
        let e = exactly_one(&[0, tb::LIST, 0], Dialect::Pb, Limits::twisted()).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::TrailingData, Some(2)));
        let e = exactly_one(&[0, tb::LIST, 0, tb::LIST], Dialect::Pb, Limits::twisted()).unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::TrailingData, Some(2)));
    }
}
